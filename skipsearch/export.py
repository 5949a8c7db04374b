"""Export the best schedule of each study as a `skipsearch.schedules/v1` document.

Reads the storage only. Each entry carries its baseline and the proxy's noise estimate, so a
consuming tool (and the user) can tell a real gain from seed noise.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from .schedule import SkipSchedule
from .schedule_file import ScheduleDocument, ScheduleEntry, dump_schedules, entry_from_schedule
from .search.config import StudyConfig
from .search.study import StudySummary, list_studies, summarize

__all__ = ["study_summaries", "export_entries", "export_schedules", "ExportError"]


class ExportError(ValueError):
    """Nothing (or nothing valid) to export."""


def study_summaries(
    storage: optuna.storages.BaseStorage, model: str | None = None, nfe: list[int] | None = None
) -> list[StudySummary]:
    out = []
    for name, config in list_studies(storage):
        if model is not None and model not in (config.model_name, config.model):
            continue
        if nfe and config.nfe not in nfe:
            continue
        out.append(summarize(optuna.load_study(study_name=name, storage=storage), config))
    return out


def _entry(summary: StudySummary) -> ScheduleEntry:
    c: StudyConfig = summary.config
    assert summary.best_rho is not None and summary.best is not None
    family = c.model if c.model != c.model_name else "edm"
    return entry_from_schedule(
        SkipSchedule(summary.best_rho, summary.best_sigma_range),
        model_name=c.model_name,
        model_family=family,
        model_sha256=c.checkpoint_sha256 or None,
        solver=c.solver,
        nfe=c.nfe,
        time_exponent=c.time_exponent,
        params=dict(summary.best_params),
        score={"metric": "proxy-fid", "value": summary.best, "samples": c.samples, "features": c.features,
               "reference_sha256": c.reference_sha256 or None, "seed_start": c.seed_start,
               "noise": summary.noise, "significant": summary.significant},
        baseline={"value": summary.baseline} if summary.baseline is not None else None,
        study={"name": summary.name, "trial": summary.best_trial, "trials_complete": summary.complete},
    )


def export_entries(summaries: list[StudySummary]) -> list[ScheduleEntry]:
    return [_entry(s) for s in summaries if s.best_rho is not None and s.best is not None]


def export_schedules(
    storage: optuna.storages.BaseStorage, path: str | Path, *, model: str | None = None, nfe: list[int] | None = None
) -> tuple[ScheduleDocument, list[StudySummary]]:
    summaries = study_summaries(storage, model, nfe)
    entries = export_entries(summaries)
    if not entries:
        what = "matching studies" if model or nfe else "studies"
        raise ExportError(f"no {what} with a completed trial to export; run `skipsearch launch` or `skipsearch status`")
    return dump_schedules(entries, path), summaries
