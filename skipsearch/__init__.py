"""skipsearch: find skip-coefficient schedules (Skip-Tuning) for few-step diffusion sampling.

The public API (DESIGN.md §6): load a network, list its skip sites, build a schedule, apply it,
sample with a few-step solver, score it, and read or write exported schedule files. Attributes are
imported on first use, so a tool that only reads a schedules file (`skipsearch.load_schedules`)
imports neither torch nor torch-fidelity. Everything else lives in its subpackage
(`skipsearch.search`, `skipsearch.metrics`, `skipsearch.models`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "load_network": "models.loading",
    "skip_sites": "skiptune",
    "skip_tuned": "skiptune",
    "SkipSchedule": "schedule",
    "SkipSite": "schedule",
    "sample": "sampling",
    "iter_samples": "sampling",
    "to_uint8": "sampling",
    "make_sigmas": "sampling",
    "score": "scoring",
    "score_steps": "scoring",
    "SOLVERS": "solvers",
    "load_schedules": "schedule_file",
    "dump_schedules": "schedule_file",
    "entry_from_schedule": "schedule_file",
    "ScheduleDocument": "schedule_file",
    "ScheduleEntry": "schedule_file",
    "SkipsearchError": "errors",
    "CheckpointError": "errors",
    "ScheduleError": "errors",
    "ScheduleFileError": "errors",
    "SolverError": "errors",
    "MetricError": "errors",
}

__all__ = [
    "load_network",
    "skip_sites",
    "skip_tuned",
    "SkipSchedule",
    "SkipSite",
    "sample",
    "iter_samples",
    "to_uint8",
    "make_sigmas",
    "score",
    "score_steps",
    "SOLVERS",
    "load_schedules",
    "dump_schedules",
    "entry_from_schedule",
    "ScheduleDocument",
    "ScheduleEntry",
    "SkipsearchError",
    "CheckpointError",
    "ScheduleError",
    "ScheduleFileError",
    "SolverError",
    "MetricError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'skipsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from .errors import CheckpointError, MetricError, ScheduleError, ScheduleFileError, SkipsearchError, SolverError
    from .models.loading import load_network
    from .sampling import iter_samples, make_sigmas, sample, to_uint8
    from .schedule import SkipSchedule, SkipSite
    from .schedule_file import ScheduleDocument, ScheduleEntry, dump_schedules, entry_from_schedule, load_schedules
    from .scoring import score, score_steps
    from .skiptune import skip_sites, skip_tuned
    from .solvers import SOLVERS
