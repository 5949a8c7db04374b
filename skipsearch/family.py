"""One schedule for every NFE: a family fits a space's parameters as functions of NFE.

Studies at a few NFEs each find their best parameters; a family fits each parameter as
a + b·ln(NFE) through them and evaluates to a concrete schedule (ρ per site, σ window, σ steps) at
any NFE between the smallest and the largest studied, refusing one outside (FreeU's factors too,
in a `freeu` space). Why linear in ln(NFE):
the quantities these parameters act on move with the step size, which shrinks like 1/NFE, so their
optima drift smoothly in log NFE (Skip-Tuning's best ρ rises toward 1 that way); a straight line
through two or three studies is all that can be fitted without overfitting seed noise, and each
study's residual is recorded so a consumer can see how well the line holds. Evaluated values are
clamped to the search's own bounds.

Pure numbers: no torch, no Optuna (the σ list of an NFE needs the solver's step count, imported
when a family is evaluated for sampling).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ScheduleFileError
from .parameters import freeu_from_params, rho_from_params, split_space, steps_from_params
from .steps import EDM_SIGMA_MAX, EDM_SIGMA_MIN, EDM_TIME_EXPONENT, TimeSteps

__all__ = ["FIT", "ScheduleFamily", "fit_line"]

FIT = "linear-in-log-nfe"


def fit_line(nfes: Sequence[int], values: Sequence[float]) -> tuple[float, float]:
    """Least squares (intercept, slope) of values against ln(NFE); one study gives a constant."""
    xs = [math.log(n) for n in nfes]
    if len(set(xs)) < 2:
        return sum(values) / len(values), 0.0
    mx, my = sum(xs) / len(xs), sum(values) / len(values)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, values)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


@dataclass(frozen=True, kw_only=True)
class ScheduleFamily:
    """Parameters of one (model, solver, space) as lines in ln(NFE), fitted to studies' best."""

    model_family: str = "edm"
    model_name: str
    model_sha256: str | None = None
    solver: str
    space: str
    nfe_range: tuple[int, int]
    fit: dict[str, tuple[float, float]]  # parameter -> (intercept, slope)
    bounds: dict[str, tuple[float, float]]  # parameter -> the search's range (values are clamped to it)
    studies: list[dict[str, Any]]  # per study: name, nfe, params, confirmed, residuals
    sites: list[dict[str, Any]]  # per skip site: index, resolution, channels, block, encoder
    time_exponent: float = EDM_TIME_EXPONENT  # the studies' grid (for spaces that do not search the steps)
    sigma_min: float = EDM_SIGMA_MIN
    sigma_max: float = EDM_SIGMA_MAX
    solver_params: dict[str, Any] = field(default_factory=dict)
    conditioning: dict[str, Any] | None = None  # a pipeline's prompts and CFG scale, as in its studies' entries

    @property
    def label(self) -> str:
        return f"{self.model_name}/{self.solver}/nfe{self.nfe_range[0]}-{self.nfe_range[1]}"

    def covers(self, nfe: int) -> bool:
        return self.nfe_range[0] <= nfe <= self.nfe_range[1]

    def matches(self, model: str | None = None, solver: str | None = None) -> bool:
        if model is not None and model != self.model_name:
            if self.model_sha256 is None or model.lower() != self.model_sha256.lower():
                return False
        return solver is None or solver.lower() == self.solver.lower()

    def params_at(self, nfe: int) -> dict[str, float]:
        """The fitted parameters at `nfe` (clamped to the search's bounds); refused outside the range."""
        if not self.covers(nfe):
            lo, hi = self.nfe_range
            raise ScheduleFileError(f"family {self.label} was fitted to studies at NFE {lo}..{hi}; NFE {nfe} is "
                                    "outside it: search that NFE, or export a family whose studies span it")
        out = {}
        for name, (intercept, slope) in self.fit.items():
            value = intercept + slope * math.log(nfe)
            lo, hi = self.bounds.get(name, (-math.inf, math.inf))
            out[name] = min(max(value, lo), hi)
        return out

    def entry_fields(self, nfe: int) -> dict[str, Any]:
        """The concrete schedule at `nfe` (ρ per site, σ window, σ steps) as the fields of an exported
        entry (`ScheduleEntry(**fields)`; the file format builds it, the family knows none)."""
        from .solvers import get_solver  # the step count of an NFE (torch: evaluating is for sampling)

        params = self.params_at(nfe)
        rho, window = rho_from_params(self.space, params, [site.get("resolution") for site in self.sites])
        base = TimeSteps(self.sigma_min, self.sigma_max, self.time_exponent)
        steps = steps_from_params(self.space, params, base)
        num_steps = get_solver(self.solver).steps_for_nfe(nfe)
        sigmas = steps.sigma_list(num_steps)
        freeu = freeu_from_params(self.space, params)
        # the baseline a family's schedule is compared with is the studies': ρ = 1 on the grid's own steps
        grid = base.sigma_list(num_steps)
        baseline = {"sigmas": grid} if grid != sigmas else None
        return dict(
            model_family=self.model_family, model_name=self.model_name, model_sha256=self.model_sha256,
            solver=self.solver, nfe=nfe, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
            time_exponent=steps.time_exponent, warp=steps.warp if any(steps.warp) else None, rho=rho,
            sigma_range=window, params=params, solver_params=dict(self.solver_params), sigmas=sigmas, baseline=baseline,
            sites=[dict(site) for site in self.sites],
            study={"name": self.label, "family": FIT, "nfe_range": list(self.nfe_range)},
            freeu=freeu.as_kwargs() if freeu is not None else None,
            conditioning=dict(self.conditioning) if self.conditioning else None,
        )

    # -- the file ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        extra = {"conditioning": dict(self.conditioning)} if self.conditioning else {}
        return {
            "model": {"family": self.model_family, "name": self.model_name, "sha256": self.model_sha256},
            "solver": {"name": self.solver, "params": dict(self.solver_params), "sigma_min": self.sigma_min,
                       "sigma_max": self.sigma_max, "time_exponent": self.time_exponent},
            "space": self.space,
            "nfe_range": list(self.nfe_range),
            "fit": {"kind": FIT, "params": {name: {"intercept": a, "slope": b} for name, (a, b) in self.fit.items()}},
            "bounds": {name: list(pair) for name, pair in self.bounds.items()},
            "studies": [dict(study) for study in self.studies],
            "sites": [dict(site) for site in self.sites],
            **extra,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScheduleFamily:
        """A family from its (schema-checked) JSON; what the schema cannot say is checked here."""
        model, solver = data["model"], data["solver"]
        fit = {name: (float(v["intercept"]), float(v["slope"])) for name, v in data["fit"]["params"].items()}
        try:
            split_space(data["space"])
        except Exception:  # noqa: BLE001 - an unknown space is one line
            raise ScheduleFileError(f"family of {model['name']}: unknown space {data['space']!r}") from None
        lo, hi = (int(v) for v in data["nfe_range"])
        if lo > hi:
            raise ScheduleFileError(f"family of {model['name']}: nfe_range [{lo}, {hi}] is reversed")
        return cls(
            model_family=model["family"], model_name=model["name"], model_sha256=model.get("sha256"),
            solver=solver["name"], solver_params=dict(solver.get("params") or {}),
            sigma_min=float(solver.get("sigma_min", EDM_SIGMA_MIN)), sigma_max=float(solver.get("sigma_max", EDM_SIGMA_MAX)),
            time_exponent=float(solver.get("time_exponent", EDM_TIME_EXPONENT)), space=data["space"],
            nfe_range=(lo, hi), fit=fit, bounds={k: (float(a), float(b)) for k, (a, b) in data.get("bounds", {}).items()},
            studies=[dict(s) for s in data.get("studies", [])], sites=[dict(s) for s in data["sites"]],
            conditioning=dict(data["conditioning"]) if data.get("conditioning") else None,
        )
