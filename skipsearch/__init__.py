"""skipsearch: find skip-coefficient schedules (Skip-Tuning) for few-step diffusion sampling."""

from .schedule import ScheduleError, SkipSchedule, SkipSite
from .skiptune import skip_sites, skip_tuned

__version__ = "0.1.0"
__all__ = ["SkipSchedule", "SkipSite", "ScheduleError", "skip_sites", "skip_tuned", "__version__"]
