"""Export the best schedule of each study as a `skipsearch.schedules/v1` document.

Reads the storage only. Each entry carries its baseline and the proxy's noise estimate, so a
consuming tool (and the user) can tell a real gain from seed noise. The output path is checked
before anything is read, and the file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import URL

from ..errors import StudyError
from ..fileio import check_output_path
from ..steps import EDM_SIGMA_MAX, EDM_SIGMA_MIN
from ..schedule import SkipSchedule
from ..schedule_file import (
    GUIDANCE_KEY,
    GUIDE_NAME_KEY,
    GUIDE_SHA_KEY,
    GUIDE_TUNED_KEY,
    ScheduleDocument,
    ScheduleEntry,
    dump_schedules,
    entry_from_schedule,
)
from ..solvers import SOLVERS
from ._config import StudyConfig
from ._summary import StudySummary, study_summaries
from .storage import StudyStore

__all__ = ["export_schedules", "schedule_entry"]


def schedule_entry(summary: StudySummary) -> ScheduleEntry:
    """The study's best schedule: the confirmed best once its confirmation is done (with the
    `confirmed` block), else the search's best."""
    c = summary.config
    confirmation = summary.confirmation if summary.confirmed else None
    confirmed = None
    if confirmation is not None:
        best, base = confirmation.best, confirmation.baseline
        assert best is not None
        rho, sigma_range, params, trial = best.rho, best.sigma_range, best.params, best.source_trial
        search_value = best.search_value
        if base is not None and best.gain is not None and best.gain_interval is not None:
            confirmed = {
                "seeds": list(confirmation.seeds), "samples": confirmation.samples, "value": best.value,
                "interval": list(best.interval), "baseline": base.value, "baseline_interval": list(base.interval),
                "gain": best.gain, "gain_interval": list(best.gain_interval), "significant": bool(best.significant),
                "fid_infinity": best.fid_infinity, "resamples": confirmation.resamples,
            }
    else:
        rho, sigma_range, params, trial = summary.best_rho, summary.best_sigma_range, summary.best_params, summary.best_trial
        search_value = summary.best
    assert rho is not None and search_value is not None
    return entry_from_schedule(
        SkipSchedule(rho, sigma_range),
        model_name=c.model_name,
        model_family=c.model,
        model_sha256=c.checkpoint_sha256 or None,
        solver=c.solver,
        nfe=c.nfe,
        sigma_min=_tidy(summary.sigmas[-2]) if summary.sigmas and len(summary.sigmas) >= 3 else EDM_SIGMA_MIN,
        sigma_max=_tidy(summary.sigmas[0]) if summary.sigmas else EDM_SIGMA_MAX,
        time_exponent=c.time_exponent,
        params=dict(params),
        score={"metric": "proxy-fid", "value": search_value, "samples": c.samples, "features": c.features,
               "reference_sha256": c.reference_sha256 or None, "seed_start": c.seed_start,
               "noise": summary.noise, "significant": summary.significant},
        baseline={"value": summary.baseline} if summary.baseline is not None else None,
        study={"name": summary.name, "trial": trial, "trials_complete": summary.complete},
        solver_params=_solver_params(c),
        sigmas=summary.sigmas,
        sites=summary.site_info,
        confirmed=confirmed,
    )


def _tidy(sigma: float) -> float:
    """A grid end as recorded: the σ the study's grid actually reached (EDM's, unless the network's σ
    range clamped it), without the last bits of rounding the grid formula adds (80.00000000000004)."""
    return float(f"{sigma:.12g}")


def _solver_params(c: StudyConfig) -> dict[str, object]:
    """The solver's own settings, and autoguidance's when the study used it: a consumer must guide
    the same way (same guide, same strength, schedule on the guide or not) to see the same gain."""
    params: dict[str, object] = dict(SOLVERS.lookup(c.solver).params)
    if c.guide:
        params.update({GUIDE_NAME_KEY: Path(c.guide).stem, GUIDE_SHA_KEY: c.guide_sha256 or None,
                       GUIDANCE_KEY: c.guidance, GUIDE_TUNED_KEY: c.tune_guide})
    return params


def export_schedules(
    store: StudyStore | str | URL | None,
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    nfe: Sequence[int] | None = None,
) -> tuple[ScheduleDocument, list[StudySummary]]:
    out = check_output_path(path)
    summaries = study_summaries(StudyStore.of(store).storage, model=model, nfe=nfe)
    entries = [schedule_entry(s) for s in summaries if s.best_rho is not None and s.best is not None]
    if not entries:
        what = "matching studies" if model or nfe else "studies"
        raise StudyError(f"no {what} with a completed trial to export; run `skipsearch launch` or see `skipsearch status`")
    return dump_schedules(entries, out), summaries
