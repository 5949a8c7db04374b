"""The note optuna-dashboard shows on a study's page: what it searches and what it found."""

from __future__ import annotations

import optuna

from ._study import study_config
from ..changes import format_change
from ._summary import summarize

__all__ = ["study_note", "update_study_note"]


def study_note(study: optuna.Study) -> str:
    config = study_config(study)
    if config is None:
        return ""
    s = summarize(study, config)
    lines = [
        f"## {s.name}",
        "",
        f"- model **{config.model_name}** (`{config.checkpoint}`), solver **{config.solver}**, **NFE {config.nfe}**",
        f"- objective: {config.metric_name} with `{config.features}` features, seeds {config.seed_start}…"
        f"{config.seed_start + config.samples - 1}",
        f"- search space `{config.space}`, ρ in [{config.rho_bounds[0]:g}, {config.rho_bounds[1]:g}], "
        f"sampler `{config.sampler}`, budget {s.budget}",
    ]
    if s.baseline is not None:
        lines.append(f"- baseline (ρ = 1): FID **{s.baseline:.3f}**")
    if s.best is not None and s.gain is not None:
        lines.append(f"- best: trial {s.best_trial}, FID **{s.best:.3f}** (FID {format_change(s.change)})")
    if s.noise is not None:
        lines.append(f"- seed noise of the proxy (baseline on a second seed set): ±{s.noise:.3f}")
    return "\n".join(lines) + "\n"


def update_study_note(study: optuna.Study) -> None:
    from optuna_dashboard import save_note

    note = study_note(study)
    if note:
        save_note(study, note)
