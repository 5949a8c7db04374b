"""The exported schedules file, `skipsearch.schedules/v1` (DESIGN.md §5): read, validate, write.

This is the contract with tools outside skipsearch, so reading is strict about meaning (format
version, shapes, finite numbers) and lenient about additions (unknown keys are ignored, minor
versions v1.N are accepted). Writing is atomic so a consumer never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from .errors import ScheduleFileError
from .family import ScheduleFamily
from .fileio import atomic_write
from .recipe import SamplingRecipe
from .steps import EDM_SIGMA_MAX, EDM_SIGMA_MIN, EDM_TIME_EXPONENT, TimeSteps
from .schedule import FreeU, ScheduleOrigin, SkipSchedule

__all__ = [
    "FORMAT",
    "FORMAT_V1_1",
    "FORMAT_V1_2",
    "FORMAT_V1_3",
    "ScheduleFamily",
    "SCHEMA_RESOURCE",
    "ScheduleFileError",
    "ScheduleEntry",
    "ScheduleDocument",
    "schema",
    "validate_document",
    "validate_entry",
    "load_schedules",
    "dump_schedules",
    "entry_from_schedule",
    "best_of",
]

FORMAT = "skipsearch.schedules/v1"
FORMAT_V1_1 = "skipsearch.schedules/v1.1"  # written when an entry uses the v1.1 keys; v1 and any v1.N are read
FORMAT_V1_2 = "skipsearch.schedules/v1.2"  # written when a file holds families or warped steps
FORMAT_V1_3 = "skipsearch.schedules/v1.3"  # written when an entry has FreeU factors or a pipeline's conditioning
SCHEMA_RESOURCE = "schedules-v1.schema.json"
_FORMAT_PREFIX = "skipsearch.schedules/"
# Autoguidance, recorded in solver.params: a consumer must guide the same way to see the same gain.
GUIDE_NAME_KEY, GUIDE_SHA_KEY, GUIDANCE_KEY, GUIDE_TUNED_KEY = "guide", "guide_sha256", "guidance", "guide_tuned"
_VERSION_RE = re.compile(r"v(\d+)(?:\.(\d+))?")
_MAJOR = 1
_MAX_MESSAGE_VALUE = 120  # long instance reprs in schema messages are cut so errors stay one line


# --------------------------------------------------------------------------------------------
# schema and validation


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The shipped JSON Schema, loaded from package data so it is the same file other tools get."""
    text = files("skipsearch").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=2)
def _validator(part: str) -> jsonschema.Draft202012Validator:
    root = schema()
    if part == "document":
        return jsonschema.Draft202012Validator(root)
    # A single entry: reuse the document's $defs so both checks share one definition.
    wrapper = {"$schema": root["$schema"], "$defs": root["$defs"], "$ref": f"#/$defs/{part}"}
    return jsonschema.Draft202012Validator(wrapper)


def _path(parts: Iterable[str | int], root: str = "$") -> str:
    out = root
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def _check_format(data: Any, source: str | None) -> None:
    """Version gate before the schema, so a v2 file gets 'upgrade', not a list of schema errors."""
    if not isinstance(data, Mapping):
        raise ScheduleFileError(
            f"{_where(source)}not a skipsearch schedules file: the top level is a {type(data).__name__}, "
            f"expected an object with \"format\": \"{FORMAT}\""
        )
    fmt = data.get("format")
    if not isinstance(fmt, str) or not fmt.startswith(_FORMAT_PREFIX):
        found = "no \"format\" key" if fmt is None else f"format {fmt!r}"
        raise ScheduleFileError(
            f"{_where(source)}not a skipsearch schedules file ({found}; expected \"{FORMAT}\"); "
            "write one with `skipsearch export`"
        )
    m = _VERSION_RE.fullmatch(fmt[len(_FORMAT_PREFIX):])
    if m is None:
        raise ScheduleFileError(
            f"{_where(source)}schedules file format {fmt!r} has an unrecognised version; expected \"{FORMAT}\""
        )
    major = int(m.group(1))
    if major > _MAJOR:
        raise ScheduleFileError(
            f"{_where(source)}schedules file format {fmt!r} is newer than this skipsearch understands "
            f"(v{_MAJOR}); upgrade skipsearch"
        )
    if major < _MAJOR:
        raise ScheduleFileError(
            f"{_where(source)}schedules file format {fmt!r} is older than this skipsearch reads (v{_MAJOR}); "
            "re-export it with `skipsearch export`"
        )


def _schema_check(data: Any, part: str, root: str, source: str | None) -> None:
    error = best_match(_validator(part).iter_errors(data))
    if error is None:
        return
    message = error.message
    if len(message) > _MAX_MESSAGE_VALUE:
        message = message[:_MAX_MESSAGE_VALUE] + "…"
    raise ScheduleFileError(
        f"{_where(source)}{_path(error.absolute_path, root)}: {message} "
        f"(see the {SCHEMA_RESOURCE} schema shipped with skipsearch)"
    )


def _non_finite(value: Any, parts: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], float]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield parts, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _non_finite(v, (*parts, str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _non_finite(v, (*parts, i))


def _entry_label(entry: Mapping[str, Any], root: str) -> str:
    model = entry.get("model", {}).get("name", "?")
    solver = entry.get("solver", {})
    return f"{root} (model {model}, solver {solver.get('name', '?')}, nfe {solver.get('nfe', '?')})"


def _semantic_check(entry: Mapping[str, Any], root: str, source: str | None) -> None:
    """What JSON Schema cannot say: cross-field agreement and finite numbers."""
    label = _entry_label(entry, root)
    for parts, value in _non_finite(entry):
        raise ScheduleFileError(
            f"{_where(source)}{label}: {_path(parts, '').lstrip('.')} is {value}; every number must be finite"
        )
    count = entry["skips"]["count"]
    if len(entry["rho"]) != count:
        raise ScheduleFileError(
            f"{_where(source)}{label}: rho has {len(entry['rho'])} values but skips.count is {count}; "
            "one coefficient per skip site is required"
        )
    sigma_range = entry.get("sigma_range")
    if sigma_range is not None and not sigma_range[0] < sigma_range[1]:
        raise ScheduleFileError(
            f"{_where(source)}{label}: sigma_range [{sigma_range[0]}, {sigma_range[1]}] is empty; "
            "it must be [lo, hi] with lo < hi"
        )
    sites = entry.get("sites")
    if sites is not None and [site.get("index") for site in sites] != list(range(count)):
        raise ScheduleFileError(
            f"{_where(source)}{label}: sites must list indices 0..{count - 1} in order, one per rho value"
        )
    sigmas = entry["solver"].get("sigmas")
    if sigmas is not None and (sigmas[-1] != 0 or any(b >= a for a, b in zip(sigmas, sigmas[1:]))):
        raise ScheduleFileError(f"{_where(source)}{label}: solver.sigmas must decrease strictly and end in 0")
    confirmed = entry.get("confirmed")
    if confirmed is not None:
        for key in ("interval", "baseline_interval", "gain_interval"):
            pair = confirmed.get(key)
            if pair is not None and pair[0] > pair[1]:
                raise ScheduleFileError(f"{_where(source)}{label}: confirmed.{key} [{pair[0]}, {pair[1]}] is reversed")
    solver = entry["solver"]
    if "sigma_min" in solver and "sigma_max" in solver and not solver["sigma_min"] < solver["sigma_max"]:
        raise ScheduleFileError(
            f"{_where(source)}{label}: solver.sigma_min ({solver['sigma_min']}) must be below "
            f"solver.sigma_max ({solver['sigma_max']})"
        )


def _family_check(family: Mapping[str, Any], root: str, source: str | None) -> None:
    """What the schema cannot say of a family: finite numbers, a known space, ordered sites."""
    label = f"{root} (family of {family['model']['name']}, solver {family['solver']['name']})"
    for parts, value in _non_finite(family):
        raise ScheduleFileError(f"{_where(source)}{label}: {_path(parts, '').lstrip('.')} is {value}; "
                                "every number must be finite")
    lo, hi = family["nfe_range"]
    if lo > hi:
        raise ScheduleFileError(f"{_where(source)}{label}: nfe_range [{lo}, {hi}] is reversed")
    if [site.get("index") for site in family["sites"]] != list(range(len(family["sites"]))):
        raise ScheduleFileError(f"{_where(source)}{label}: sites must list indices 0..{len(family['sites']) - 1} in order")
    try:
        ScheduleFamily.from_json(family)
    except ScheduleFileError as e:
        raise ScheduleFileError(f"{_where(source)}{label}: {e}") from None


def validate_entry(data: Any, *, root: str = "$", source: str | None = None) -> None:
    """Check one schedule entry (schema + semantics); `root` names it in messages."""
    _schema_check(data, "entry", root, source)
    _semantic_check(data, root, source)


def validate_document(data: Any, *, source: str | None = None) -> None:
    """Raise ScheduleFileError naming the first problem; `source` (a file name) prefixes messages.

    Order: format version, then the shipped JSON Schema, then cross-field checks per entry.
    """
    _check_format(data, source)
    for i, entry in enumerate(data.get("schedules") or [] if isinstance(data.get("schedules"), list) else []):
        for parts, value in _non_finite(entry):  # before the schema: "rho[0] is inf" says more than a bound
            raise ScheduleFileError(f"{_where(source)}{_entry_label(entry, _path(('schedules', i)))}: "
                                    f"{_path(parts, '').lstrip('.')} is {value}; every number must be finite")
    _schema_check(data, "document", "$", source)
    created = data["created"]
    try:
        # Python < 3.11 does not parse a trailing Z; the schema pattern already fixed the shape.
        stamp = datetime.fromisoformat(re.sub(r"[Zz]$", "+00:00", created))
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is None:
        raise ScheduleFileError(
            f"{_where(source)}$.created: {created!r} is not an RFC 3339 date-time (e.g. 2026-11-27T12:00:00Z)"
        )
    for i, entry in enumerate(data["schedules"]):
        _semantic_check(entry, _path(("schedules", i)), source)
    for i, family in enumerate(data.get("families") or []):
        _family_check(family, _path(("families", i)), source)


# --------------------------------------------------------------------------------------------
# entries and documents


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _ordered(data: Mapping[str, Any] | None, first: Sequence[str]) -> dict[str, Any] | None:
    """Known keys in the documented order, then the rest as given: stable, readable output."""
    if data is None:
        return None
    out = {k: data[k] for k in first if k in data}
    out.update((k, v) for k, v in data.items() if k not in out)
    return out


@dataclass(frozen=True, kw_only=True)
class ScheduleEntry:
    """One exported schedule with the context needed to reuse it (model, solver, score).

    Construction only normalises types; values are checked by `validate_entry`, which
    `from_json` and `dump_schedules` run, so there is one rule set (the schema + semantics).
    """

    model_family: str = "edm"
    model_name: str
    model_sha256: str | None = None
    solver: str
    nfe: int
    sigma_min: float | None = 0.002
    sigma_max: float | None = 80.0
    time_exponent: float | None = 7.0
    rho: tuple[float, ...]
    sigma_range: tuple[float, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    score: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    study: dict[str, Any] | None = None
    solver_params: dict[str, Any] | None = None  # v1.1
    sigmas: tuple[float, ...] | None = None  # v1.1: descending, ending in 0
    warp: tuple[float, float] | None = None  # v1.2: the step warp of a steps space (None: EDM's grid)
    sites: list[dict[str, Any]] | None = None  # v1.1: per site: index, resolution, channels, block, encoder
    confirmed: dict[str, Any] | None = None  # v1.1: held-out re-score with intervals
    freeu: dict[str, float] | None = None  # v1.3: FreeU's factors, as `pipe.enable_freeu(**freeu)` takes them
    conditioning: dict[str, Any] | None = None  # v1.3: a pipeline's prompts (sha256, count), negative prompt, cfg

    def __post_init__(self) -> None:
        try:  # numpy integers from a study become plain ints; anything else is left for validation
            object.__setattr__(self, "nfe", operator.index(self.nfe))
        except TypeError:
            pass
        object.__setattr__(self, "rho", tuple(float(r) for r in self.rho))
        if self.sigma_range is not None:
            object.__setattr__(self, "sigma_range", tuple(float(s) for s in self.sigma_range))
        object.__setattr__(self, "params", dict(self.params or {}))
        for name in ("score", "baseline", "study", "solver_params", "confirmed", "freeu", "conditioning"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, dict(value))
        if self.sigmas is not None:
            object.__setattr__(self, "sigmas", tuple(float(v) for v in self.sigmas))
        if self.warp is not None:
            object.__setattr__(self, "warp", tuple(float(v) for v in self.warp))
        if self.sites is not None:
            object.__setattr__(self, "sites", [dict(site) for site in self.sites])

    @property
    def num_skips(self) -> int:
        return len(self.rho)

    @property
    def score_value(self) -> float | None:
        return None if self.score is None else self.score.get("value")

    @property
    def rank_value(self) -> float | None:
        """What ranks this entry: the confirmed (held-out) score when there is one, else the search's."""
        if self.confirmed is not None and self.confirmed.get("value") is not None:
            return float(self.confirmed["value"])
        return self.score_value

    @property
    def schedule(self) -> SkipSchedule:
        """The coefficients, with the network they were searched on (a consumer checks it)."""
        sites = None
        if self.sites is not None:
            sites = tuple((site.get("resolution"), int(site.get("channels", 0))) for site in self.sites)
        origin = ScheduleOrigin(self.label, self.model_name, self.model_sha256, sites)
        freeu = FreeU(**{k: float(v) for k, v in self.freeu.items()}) if self.freeu else None
        return SkipSchedule(self.rho, self.sigma_range, origin=origin, freeu=freeu)

    def recipe(self) -> SamplingRecipe:
        """How the search that chose this schedule sampled: solver and its parameters, NFE, the σ
        steps, autoguidance. `score`, `sample` and the Python API sample from this.

        A recorded σ list is used as it is; when the grid parameters are recorded beside it, the two
        must agree (an edit of one without the other would sample differently from either).
        """
        params = dict(self.solver_params or {})
        guidance = float(params.pop(GUIDANCE_KEY, 1.0))
        guide_tuned = bool(params.pop(GUIDE_TUNED_KEY, False))
        guide_sha256 = params.pop(GUIDE_SHA_KEY, None)
        params.pop(GUIDE_NAME_KEY, None)
        steps = TimeSteps(
            sigma_min=EDM_SIGMA_MIN if self.sigma_min is None else self.sigma_min,
            sigma_max=EDM_SIGMA_MAX if self.sigma_max is None else self.sigma_max,
            time_exponent=EDM_TIME_EXPONENT if self.time_exponent is None else self.time_exponent,
            sigmas=self.sigmas,
            warp=self.warp or (0.0, 0.0),
        )
        recorded_grid = None not in (self.sigma_min, self.sigma_max, self.time_exponent)
        if self.sigmas is not None and recorded_grid and not steps.agrees_with_grid():
            raise ScheduleFileError(
                f"schedule {self.label}: solver.sigmas do not follow from sigma_min {self.sigma_min:g}, sigma_max "
                f"{self.sigma_max:g} and time_exponent {self.time_exponent:g}; edit both together, or drop one"
            )
        from .solvers import get_solver  # the NFE bookkeeping (imports torch: a recipe is for sampling)

        try:
            steps_needed = get_solver(self.solver).steps_for_nfe(self.nfe) + 1
        except ValueError as e:
            raise ScheduleFileError(f"schedule {self.label}: {e}") from None
        if self.sigmas is not None and len(self.sigmas) != steps_needed:
            raise ScheduleFileError(f"schedule {self.label}: solver.sigmas has {len(self.sigmas)} entries but "
                                    f"{self.solver} at NFE {self.nfe} takes {steps_needed - 1} steps: it needs "
                                    f"{steps_needed}")
        conditioning = self.conditioning or {}
        try:
            return SamplingRecipe(solver=self.solver, nfe=self.nfe, solver_params=params, steps=steps,
                                  guidance=guidance, guide_tuned=guide_tuned, guide_sha256=guide_sha256,
                                  cfg=conditioning.get("cfg"), prompts_sha256=conditioning.get("prompts_sha256"))
        except ValueError as e:
            raise ScheduleFileError(f"schedule {self.label}: {e}") from None

    @property
    def label(self) -> str:
        return f"{self.model_name}/{self.solver}/nfe{self.nfe}"

    def baseline_recipe(self) -> SamplingRecipe:
        """How the untuned baseline was sampled: the entry's recipe, on the baseline's own σ steps
        where the schedule's steps were searched (the baseline is read on EDM's steps)."""
        recipe = self.recipe()
        sigmas = (self.baseline or {}).get("sigmas")
        if sigmas is None:
            return recipe
        return recipe.with_(steps=TimeSteps(recipe.steps.sigma_min, recipe.steps.sigma_max, sigmas=tuple(sigmas)))

    def matches(self, model: str | None = None, nfe: int | None = None, solver: str | None = None) -> bool:
        """`model` is the model name or its sha256; `solver` is compared case-insensitively."""
        if model is not None and model != self.model_name:
            if self.model_sha256 is None or model.lower() != self.model_sha256.lower():
                return False
        if nfe is not None and nfe != self.nfe:
            return False
        if solver is not None and solver.lower() != self.solver.lower():
            return False
        return True

    def check_num_skips(self, num_skips: int) -> None:
        """Refuse to apply this schedule to a network with a different number of skip sites."""
        if self.num_skips != num_skips:
            raise ScheduleFileError(
                f"wrong rho length for the model: schedule {self.label} has {self.num_skips} coefficients, "
                f"network has {num_skips} skip sites; use a schedule exported for this network"
            )

    def to_json(self) -> dict[str, Any]:
        solver: dict[str, Any] = {"name": self.solver, "nfe": self.nfe}
        for key in ("sigma_min", "sigma_max", "time_exponent"):
            if getattr(self, key) is not None:
                solver[key] = getattr(self, key)
        if self.solver_params is not None:
            solver["params"] = dict(self.solver_params)
        if self.warp is not None and any(self.warp):
            solver["warp"] = list(self.warp)
        if self.sigmas is not None:
            solver["sigmas"] = list(self.sigmas)
        extra: dict[str, Any] = {}
        if self.sites is not None:
            extra["sites"] = [dict(site) for site in self.sites]
        if self.confirmed is not None:
            extra["confirmed"] = _ordered(self.confirmed, ("seeds", "samples", "value", "interval", "baseline",
                                                          "baseline_interval", "gain", "gain_interval", "significant"))
        if self.freeu is not None:
            extra["freeu"] = _ordered(self.freeu, ("s1", "s2", "b1", "b2"))
        if self.conditioning is not None:
            extra["conditioning"] = _ordered(self.conditioning, ("prompts", "prompts_sha256", "negative_prompt", "cfg"))
        return {
            "model": {"family": self.model_family, "name": self.model_name, "sha256": self.model_sha256},
            "solver": solver,
            "skips": {"count": self.num_skips, "order": "outermost-first"},
            "rho": list(self.rho),
            "sigma_range": list(self.sigma_range) if self.sigma_range is not None else None,
            "params": dict(self.params),
            "score": _ordered(self.score, ("metric", "value", "samples", "features", "reference_sha256")),
            "baseline": _ordered(self.baseline, ("value",)),
            "study": _ordered(self.study, ("name", "trial", "trials_complete")),
            **extra,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, root: str = "$", source: str | None = None) -> ScheduleEntry:
        """Validate and parse one entry; unknown keys are ignored (forward compatibility)."""
        validate_entry(data, root=root, source=source)
        return cls._parse(data)

    @classmethod
    def _parse(cls, data: Mapping[str, Any]) -> ScheduleEntry:
        model, solver = data["model"], data["solver"]
        return cls(
            model_family=model["family"],
            model_name=model["name"],
            model_sha256=model.get("sha256"),
            solver=solver["name"],
            nfe=int(solver["nfe"]),  # the schema admits 19.0 as an integer
            sigma_min=_opt_float(solver.get("sigma_min")),
            sigma_max=_opt_float(solver.get("sigma_max")),
            time_exponent=_opt_float(solver.get("time_exponent")),
            rho=data["rho"],
            sigma_range=data.get("sigma_range"),
            params=data.get("params") or {},
            score=data.get("score"),
            baseline=data.get("baseline"),
            study=data.get("study"),
            solver_params=solver.get("params"),
            sigmas=solver.get("sigmas"),
            warp=solver.get("warp"),
            sites=data.get("sites"),
            confirmed=data.get("confirmed"),
            freeu=data.get("freeu"),
            conditioning=data.get("conditioning"),
        )


def best_of(entries: Sequence[ScheduleEntry]) -> ScheduleEntry:
    """The entry to use among several: the lowest confirmed (held-out) score where an entry has one,
    else the lowest search score; unscored entries last; ties: the first. The one ranking rule of
    every reader (`ScheduleDocument.entry`, `skipsearch sample`)."""
    if not entries:
        raise ScheduleFileError("no schedules to choose from")
    return min(entries, key=lambda e: (e.rank_value is None, e.rank_value if e.rank_value is not None else 0.0))


def _describe_filters(model: str | None, nfe: int | None, solver: str | None) -> str:
    given = [f"{k}={v!r}" for k, v in (("model", model), ("solver", solver), ("nfe", nfe)) if v is not None]
    return ", ".join(given) or "no filters"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ScheduleDocument:
    """A parsed schedules file; `best()` is what a consuming tool calls."""

    entries: list[ScheduleEntry]
    created: str = field(default_factory=_now)  # UTC, to the second
    source: str | None = None
    format: str = FORMAT  # as read; a written file says v1.1 or v1.2 when its contents need it
    families: list[ScheduleFamily] = field(default_factory=list)

    def select(
        self, model: str | None = None, nfe: int | None = None, solver: str | None = None
    ) -> list[ScheduleEntry]:
        """All entries matching every given filter, in file order; at an NFE no entry has, the
        families of that model and solver evaluated there (see `ScheduleFamily`)."""
        found = [e for e in self.entries if e.matches(model=model, nfe=nfe, solver=solver)]
        if nfe is None:
            return found
        have = {(e.model_name, e.solver) for e in found}
        for family in self.families:
            if family.matches(model=model, solver=solver) and (family.model_name, family.solver) not in have:
                if family.covers(nfe) or not found:
                    found.append(ScheduleEntry(**family.entry_fields(nfe)))  # outside its range: one line
        return found

    def entry(self, model: str | None = None, nfe: int | None = None, solver: str | None = None) -> ScheduleEntry:
        """The matching entry with the lowest score, the confirmed one where an entry has it (unscored
        entries last; ties: first in file)."""
        matches = self.select(model=model, nfe=nfe, solver=solver)
        if not matches:
            labels = {e.label for e in self.entries} | {f.label for f in self.families}
            available = ", ".join(sorted(labels)) or "none (the file has no schedules)"
            raise ScheduleFileError(
                f"{_where(self.source)}no schedule for {_describe_filters(model, nfe, solver)}; "
                f"available (model/solver/nfe): {available}"
            )
        metrics = sorted({e.score.get("metric") for e in matches if e.score is not None})
        if len(metrics) > 1:
            raise ScheduleFileError(
                f"{_where(self.source)}schedules for {_describe_filters(model, nfe, solver)} are scored with "
                f"different metrics ({', '.join(map(str, metrics))}) and cannot be ranked; give model, solver and nfe"
            )
        return best_of(matches)

    def best(self, model: str | None = None, nfe: int | None = None, solver: str | None = None) -> SkipSchedule:
        """The schedule to use for (model, nfe, solver); see `entry` for the ranking rule."""
        return self.entry(model=model, nfe=nfe, solver=solver).schedule

    def to_json(self) -> dict[str, Any]:
        entries = [e.to_json() for e in self.entries]
        v1_3 = any("freeu" in e or "conditioning" in e for e in entries)
        v1_2 = bool(self.families) or any("warp" in e["solver"] for e in entries)
        v1_1 = any("sites" in e or "confirmed" in e or {"params", "sigmas"} & set(e["solver"]) for e in entries)
        fmt = FORMAT_V1_3 if v1_3 else FORMAT_V1_2 if v1_2 else FORMAT_V1_1 if v1_1 else FORMAT
        out = {"format": fmt, "created": self.created, "schedules": entries}
        if self.families:
            out["families"] = [f.to_json() for f in self.families]
        return out

    @classmethod
    def from_json(cls, data: Any, *, source: str | None = None) -> ScheduleDocument:
        validate_document(data, source=source)
        return cls([ScheduleEntry._parse(e) for e in data["schedules"]], data["created"], source, data["format"],
                   [ScheduleFamily.from_json(f) for f in data.get("families") or []])


# --------------------------------------------------------------------------------------------
# files


def load_schedules(path: str | os.PathLike[str], *, num_skips: int | None = None) -> ScheduleDocument:
    """Read and validate a schedules file.

    `num_skips`, when given, requires every schedule in the file to have that many coefficients
    (for single-model files; otherwise call `entry(...).check_num_skips(k)` on the one you use).
    """
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScheduleFileError(
            f"schedules file {source} does not exist; create it with `skipsearch export -o {source}`"
        ) from None
    except UnicodeDecodeError as exc:
        raise ScheduleFileError(
            f"{source} is not valid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise ScheduleFileError(f"cannot read schedules file {source}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScheduleFileError(
            f"{source} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    doc = ScheduleDocument.from_json(data, source=source)
    if num_skips is not None:
        for e in doc.entries:
            e.check_num_skips(num_skips)
    return doc


def dump_schedules(
    entries: Iterable[ScheduleEntry] | ScheduleDocument,
    path: str | os.PathLike[str],
    *,
    created: str | None = None,
) -> ScheduleDocument:
    """Validate, then write atomically: temp file in the same directory, fsync, os.replace.

    Readers see either the old file or the complete new one, never a partial write; on any
    failure the existing file is untouched and the temp file is removed. `created` defaults to
    the document's own timestamp when given a ScheduleDocument, else to now (UTC).
    """
    if isinstance(entries, ScheduleDocument):
        doc = ScheduleDocument(list(entries.entries), created or entries.created, os.fspath(path),
                               families=list(entries.families))
    else:
        doc = ScheduleDocument(list(entries), created or _now(), os.fspath(path))
    data = doc.to_json()
    doc.format = data["format"]
    validate_document(data, source=f"refusing to write {doc.source}")
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ScheduleFileError(f"refusing to write {doc.source}: {exc}; use plain numbers and strings") from None

    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return doc


def entry_from_schedule(
    schedule: SkipSchedule,
    *,
    model_name: str,
    model_family: str = "edm",
    model_sha256: str | None = None,
    solver: str,
    nfe: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    time_exponent: float = 7.0,
    params: Mapping[str, Any] | None = None,
    score: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    study: Mapping[str, Any] | None = None,
    solver_params: Mapping[str, Any] | None = None,
    sigmas: Sequence[float] | None = None,
    sites: Sequence[Mapping[str, Any]] | None = None,
    confirmed: Mapping[str, Any] | None = None,
    warp: Sequence[float] | None = None,
    freeu: Mapping[str, float] | None = None,
    conditioning: Mapping[str, Any] | None = None,
) -> ScheduleEntry:
    """Wrap a searched SkipSchedule with the context an export needs."""
    return ScheduleEntry(
        model_family=model_family,
        model_name=model_name,
        model_sha256=model_sha256,
        solver=solver,
        nfe=nfe,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        time_exponent=time_exponent,
        rho=schedule.rho,
        sigma_range=schedule.sigma_range,
        params=dict(params or {}),
        score=None if score is None else dict(score),
        baseline=None if baseline is None else dict(baseline),
        study=None if study is None else dict(study),
        solver_params=None if solver_params is None else dict(solver_params),
        sigmas=None if sigmas is None else tuple(sigmas),
        sites=None if sites is None else [dict(site) for site in sites],
        confirmed=None if confirmed is None else dict(confirmed),
        warp=None if warp is None else tuple(warp),
        freeu=None if freeu is None else dict(freeu),
        conditioning=None if conditioning is None else dict(conditioning),
    )
