"""Export the best schedule of each study as a `skipsearch.schedules/v1` document.

Reads the storage only. Each entry carries its baseline and the proxy's noise estimate, so a
consuming tool (and the user) can tell a real gain from seed noise. The output path is checked
before anything is read, and the file is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from ..errors import StudyError
from ..fileio import check_output_path
from ..family import ScheduleFamily, fit_line
from ..parameters import freeu_from_params, steps_from_params
from ..schedule import SkipSchedule, SkipSite
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
from ..steps import EDM_SIGMA_MAX, EDM_SIGMA_MIN, TimeSteps
from ._config import StudyConfig
from ._space import SPACES
from ._summary import StudySummary, study_summaries
from .storage import StudyStore

__all__ = ["export_schedules", "schedule_entry", "schedule_families"]


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
        search_value, sigmas = best.search_value, best.sigmas
        if base is not None and best.gain is not None and best.gain_interval is not None:
            confirmed = {
                "seeds": list(confirmation.seeds), "samples": confirmation.samples, "value": best.value,
                "interval": list(best.interval), "baseline": base.value, "baseline_interval": list(base.interval),
                "gain": best.gain, "gain_interval": list(best.gain_interval), "significant": bool(best.significant),
                "fid_infinity": best.fid_infinity, "resamples": confirmation.resamples,
            }
    else:
        rho, sigma_range, params, trial = summary.best_rho, summary.best_sigma_range, summary.best_params, summary.best_trial
        search_value, sigmas = summary.best, summary.best_sigmas
    assert rho is not None and search_value is not None
    sigmas = sigmas or summary.sigmas  # a trial's own steps (a steps space), else the study's
    steps = steps_from_params(c.space, params, TimeSteps(time_exponent=c.time_exponent))
    return entry_from_schedule(
        SkipSchedule(rho, sigma_range),
        model_name=c.model_name,
        model_family=c.model,
        model_sha256=c.checkpoint_sha256 or None,
        solver=c.solver,
        nfe=c.nfe,
        sigma_min=_tidy(sigmas[-2]) if sigmas and len(sigmas) >= 3 else EDM_SIGMA_MIN,
        sigma_max=_tidy(sigmas[0]) if sigmas else EDM_SIGMA_MAX,
        time_exponent=steps.time_exponent,
        warp=steps.warp if any(steps.warp) else None,
        params=dict(params),
        score={"metric": "proxy-fid", "value": search_value, "samples": c.samples, "features": c.features,
               "reference_sha256": c.reference_sha256 or None, "seed_start": c.seed_start,
               "noise": summary.noise, "significant": summary.significant},
        baseline=_baseline(summary, sigmas),
        study={"name": summary.name, "trial": trial, "trials_complete": summary.complete},
        solver_params=_solver_params(c),
        sigmas=sigmas,
        sites=summary.site_info,
        confirmed=confirmed,
        freeu=_freeu(c, params),
        conditioning=_conditioning(c),
    )


def _freeu(c: StudyConfig, params: dict[str, float]) -> dict[str, float] | None:
    freeu = freeu_from_params(c.space, params)
    return freeu.as_kwargs() if freeu is not None else None


def _conditioning(c: StudyConfig) -> dict[str, object] | None:
    """A pipeline's prompt set (count and sha256), negative prompt and CFG scale: what scored it."""
    if not c.prompts_sha256:
        return None
    return {"prompts": c.prompt_count, "prompts_sha256": c.prompts_sha256, "negative_prompt": c.negative_prompt,
            "cfg": c.cfg}


def _baseline(summary: StudySummary, sigmas: list[float] | None) -> dict[str, object] | None:
    """The baseline's score, and its own σ steps where the schedule's are searched ones: the untuned
    network is read against EDM's steps, which a consumer re-scoring the entry must use too."""
    if summary.baseline is None:
        return None
    if sigmas is not None and summary.sigmas is not None and list(sigmas) != list(summary.sigmas):
        return {"value": summary.baseline, "sigmas": list(summary.sigmas)}
    return {"value": summary.baseline}


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


def _bounds(config: StudyConfig, sites: list[SkipSite]) -> dict[str, tuple[float, float]]:
    dists = SPACES.lookup(config.space).distributions(config, sites)
    return {name: (float(d.low), float(d.high)) for name, d in dists.items()}  # type: ignore[attr-defined]


def schedule_families(summaries: Sequence[StudySummary]) -> list[ScheduleFamily]:
    """Per (model, solver, space and evaluation), the best parameters of its studies at two or
    more NFEs — confirmed where a confirmation is done, else the search's — fitted in ln(NFE)."""
    groups: dict[tuple[Any, ...], list[tuple[StudySummary, ScheduleEntry]]] = {}
    for s in summaries:
        if s.best_rho is None or s.best is None or not s.site_info:
            continue
        c = s.config
        key = (c.model_name, c.checkpoint_sha256, c.solver, c.space, c.time_exponent, c.guidance, c.tune_guide,
               c.prompts_sha256, c.negative_prompt, c.cfg)
        groups.setdefault(key, []).append((s, schedule_entry(s)))
    families = []
    for members in groups.values():
        members.sort(key=lambda m: m[0].config.nfe)
        nfes = [s.config.nfe for s, _ in members]
        if len(set(nfes)) < 2:
            continue
        first, entry = members[0]
        c = first.config
        names = list(members[0][1].params)
        fit = {name: fit_line(nfes, [float(e.params[name]) for _, e in members]) for name in names}
        studies = []
        for s, e in members:
            residuals = {name: float(e.params[name]) - (a + b * math.log(s.config.nfe)) for name, (a, b) in fit.items()}
            studies.append({"name": s.name, "nfe": s.config.nfe, "params": dict(e.params),
                            "confirmed": e.confirmed is not None, "residuals": residuals})
        sites = [SkipSite(int(x["index"]), x.get("resolution"), int(x["channels"]), "", "") for x in first.site_info]
        families.append(ScheduleFamily(
            model_family=c.model, model_name=c.model_name, model_sha256=c.checkpoint_sha256 or None,
            solver=c.solver, space=c.space, nfe_range=(nfes[0], nfes[-1]), fit=fit, bounds=_bounds(c, sites),
            studies=studies, sites=[dict(x) for x in first.site_info], time_exponent=c.time_exponent,
            sigma_min=entry.sigma_min or EDM_SIGMA_MIN, sigma_max=entry.sigma_max or EDM_SIGMA_MAX,
            solver_params=_solver_params(c), conditioning=_conditioning(c)))
    return families


def export_schedules(
    store: StudyStore | str | URL | None,
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    nfe: Sequence[int] | None = None,
    families: bool = False,
) -> tuple[ScheduleDocument, list[StudySummary]]:
    """The best schedule of each study (and with `families`, one family per (model, solver, space)
    studied at two or more NFEs), written atomically to `path`."""
    out = check_output_path(path)
    summaries = study_summaries(StudyStore.of(store).storage, model=model, nfe=nfe)
    entries = [schedule_entry(s) for s in summaries if s.best_rho is not None and s.best is not None]
    if not entries:
        what = "matching studies" if model or nfe else "studies"
        raise StudyError(f"no {what} with a completed trial to export; run `skipsearch launch` or see `skipsearch status`")
    fitted = schedule_families(summaries) if families else []
    if families and not fitted:
        raise StudyError("no family to fit: a family needs studies of one model, solver and space at two or more "
                         "NFEs (`skipsearch launch --nfe 6 10 14`)")
    return dump_schedules(ScheduleDocument(entries, families=fitted), out), summaries
