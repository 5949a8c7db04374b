"""One error hierarchy: every user-facing failure is a `SkipsearchError` whose message is one line.

The message says what is wrong and what to do; the CLI catches `SkipsearchError` once, prints it
in one red line and exits with code 2. The value-like errors also subclass `ValueError`, so code
written against the earlier API (`except ValueError`) keeps working.
"""

from __future__ import annotations

__all__ = [
    "SkipsearchError",
    "UsageError",
    "CheckpointError",
    "StructureError",
    "ScheduleError",
    "ScheduleFileError",
    "SolverError",
    "MetricError",
    "StudyError",
    "ConfigError",
    "StorageError",
    "NonFiniteSamples",
]


class SkipsearchError(Exception):
    """Base of every error skipsearch reports to a user (one line: what is wrong, what to do)."""


class UsageError(SkipsearchError, ValueError):
    """A combination of options or arguments that cannot work."""


class CheckpointError(SkipsearchError, ValueError):
    """A file that cannot be read as a network skipsearch supports, or an unknown model."""


class StructureError(CheckpointError):
    """The network does not have the encoder/decoder skip structure skip-tuning needs."""


class ScheduleError(SkipsearchError, ValueError):
    """A skip schedule that cannot be built or applied as given."""


class ScheduleFileError(SkipsearchError, ValueError):
    """A schedules file that cannot be read, trusted or written."""


class SolverError(SkipsearchError, ValueError):
    """A solver request that cannot be honoured (unknown name, impossible NFE, bad σ sequence)."""


class MetricError(SkipsearchError, ValueError):
    """Proxy FID cannot be computed as asked: features, weights or reference statistics."""


class StudyError(SkipsearchError, ValueError):
    """A study that cannot be created, joined or read as asked."""


class ConfigError(StudyError):
    """A study configuration that cannot run."""


class StorageError(SkipsearchError):
    """The study storage cannot be used: a bad URL, a missing or damaged database, an outage."""


class NonFiniteSamples(SkipsearchError):
    """Samples went NaN or infinite: the schedule (or the network) is broken at this recipe."""
