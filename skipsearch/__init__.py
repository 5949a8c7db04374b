"""skipsearch: find skip-coefficient schedules (Skip-Tuning) for few-step diffusion sampling.

The public API (DESIGN.md §6): load a network, list its skip sites, build a schedule, apply it,
sample with a few-step solver, and read exported schedule files.
"""

from . import metrics  # registers the `skipsearch-digits` extractor with torch-fidelity
from .models.loading import CheckpointError, load_network
from .sampling import iter_samples, sample, to_uint8
from .schedule import ScheduleError, SkipSchedule, SkipSite
from .schedule_file import (
    ScheduleDocument,
    ScheduleEntry,
    ScheduleFileError,
    dump_schedules,
    entry_from_schedule,
    load_schedules,
)
from .scoring import score, score_steps
from .skiptune import skip_sites, skip_tuned
from .solvers import SOLVERS, SolverError

__version__ = "0.1.0"
__all__ = [
    "load_network",
    "CheckpointError",
    "skip_sites",
    "skip_tuned",
    "SkipSchedule",
    "SkipSite",
    "ScheduleError",
    "sample",
    "iter_samples",
    "to_uint8",
    "score",
    "score_steps",
    "SOLVERS",
    "SolverError",
    "load_schedules",
    "dump_schedules",
    "entry_from_schedule",
    "ScheduleDocument",
    "ScheduleEntry",
    "ScheduleFileError",
    "__version__",
]
