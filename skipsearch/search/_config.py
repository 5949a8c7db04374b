"""Study configuration: presets, CLI overrides, and the fingerprint that keeps workers consistent.

A study is one (model, solver, NFE, evaluation config). Everything that changes a trial's score is
part of the fingerprint (checkpoint and reference contents included, by sha256); a worker whose
config differs is refused rather than silently mixing incomparable scores into one study. All
checks run here, before any storage, study or artifact is written.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import optuna

from ..errors import CheckpointError, ConfigError, UsageError
from ..recipe import SamplingRecipe
from ..steps import MAX_WARP, TimeSteps
from ..solvers import SOLVERS
from ._presets import load_preset
from ._samplers import PRUNERS, SAMPLERS, DistinctSampler, Vector, make_pruner, make_sampler
from ._space import SPACES

__all__ = ["StudyConfig", "RHO_MAX", "CURVE_MAX"]

CONFIG_VERSION = 1
RHO_MAX = 3.0  # ρ > 3 triples a skip: far outside anything Skip-Tuning or FreeU found useful
CURVE_MAX = 4.0  # γ = 4^curve spans 1/256 … 256 at the bound
MAX_SAMPLES = 1_000_000
CONFIRM_SEED_OFFSET = 100_000_000  # held-out seeds of the confirmation start here by default

# Fields that do not change a trial's score: a joining worker may differ in these.
OPERATIONAL = {"checkpoint", "features_weights", "reference", "batch_size", "trials", "artifacts", "enqueue_probes",
               "confirm_top", "guide", "vae", "report_features", "prompts"}


@dataclass(frozen=True)
class StudyConfig:
    model: str = "edm"  # family given on the command line
    model_name: str = "edm-digits"  # the name schedules are filed under
    checkpoint: str = "builtin:edm-digits"
    checkpoint_sha256: str = ""
    solver: str = "euler"
    nfe: int = 10
    time_exponent: float = 7.0
    samples: int = 1000
    fidelity: tuple[float, ...] = (0.25, 0.5, 1.0)
    seed_start: int = 0
    features: str = "skipsearch-digits"
    features_weights: str | None = None
    report_features: tuple[str, ...] = ()  # distances reported next to the objective (e.g. FD_DINOv2)
    reference: str = "builtin:edm-digits"
    reference_sha256: str = ""
    precision: str = "auto"  # auto: half precision on a GPU, fp32 on the CPU (see sampling.resolve_precision)
    guide: str | None = None  # autoguidance: the guiding network's checkpoint (this node's path)
    guide_sha256: str = ""
    guidance: float = 1.0  # D_guide + g·(D_net − D_guide); 1: no guidance
    tune_guide: bool = False  # apply each schedule to the guide too
    vae: str | None = None  # latent networks: the local VAE folder that decodes their samples
    prompts: str | None = None  # text-to-image pipelines: the prompts file (this node's path); seed s → prompt s mod P
    prompts_sha256: str = ""
    prompt_count: int = 0
    negative_prompt: str | None = None  # CFG's other branch (None: the empty prompt; SDXL: zero embeddings)
    cfg: float | None = None  # classifier-free guidance scale of a pipeline (None: not a pipeline)
    pipeline: str = ""  # sd1, sd2 or sdxl for a text-to-image pipeline (which FreeU factors were published)
    batch_size: int = 250
    space: str = "linear"
    rho_bounds: tuple[float, float] = (0.3, 1.1)
    curve_bounds: tuple[float, float] = (-2.0, 2.0)
    sigma_bounds: tuple[float, float] = (0.002, 80.0)
    exponent_bounds: tuple[float, float] = (2.0, 20.0)  # steps spaces: EDM's time exponent (7 is EDM's)
    crowd_bounds: tuple[float, float] = (-1.0, 1.0)  # steps spaces: log2 of the step warp's exponents (2x bunching)
    freeu_b_bounds: tuple[float, float] = (0.9, 1.8)  # freeu space: backbone factors b1, b2
    freeu_s_bounds: tuple[float, float] = (0.1, 1.2)  # freeu space: skip low-frequency factors s1, s2
    sampler: str = "gp"
    sampler_seed: int = 0
    pruner: str = "median"
    trials: int = 20
    enqueue_paper: bool = True
    enqueue_probes: bool = True
    confirm_top: int = 3  # best schedules re-scored on held-out seeds once the budget is spent (0: none)
    confirm_samples: int = 0  # 0: 4 × samples
    confirm_seed_start: int = CONFIRM_SEED_OFFSET  # held-out seeds, disjoint from the search's
    bootstrap: int = 200  # resamples for the confirmed intervals
    artifacts: str = "skipsearch-artifacts"
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self.validate()

    @property
    def study_name(self) -> str:
        return f"{self.model_name}/{self.solver}/nfe{self.nfe}"

    @property
    def steps(self) -> list[int]:
        """Sample counts at which FID is reported (the last is `samples`)."""
        return sorted({max(2, min(self.samples, round(f * self.samples))) for f in self.fidelity} | {self.samples})

    @property
    def seeds(self) -> range:
        return range(self.seed_start, self.seed_start + self.samples)

    @property
    def confirmation_seeds(self) -> range:
        n = self.confirm_samples or 4 * self.samples
        return range(self.confirm_seed_start, self.confirm_seed_start + n)

    @property
    def freeu_reference(self) -> dict[str, float]:
        """FreeU's published factors for this model (SD 1.x's for a network that is no pipeline)."""
        from ..schedule import FREEU_DEFAULTS

        return dict(FREEU_DEFAULTS.get(self.pipeline or "sd1", FREEU_DEFAULTS["sd1"]))

    @property
    def metric_name(self) -> str:
        return f"proxy FID ({self.samples} samples)"

    def make_sampler(self, trial_number: int, vector: Vector) -> DistinctSampler:
        """The sampler a worker uses for this study's trial `trial_number` (Optuna stores none: every
        worker rebuilds it the same way); `vector` maps parameters to what makes two trials differ."""
        return make_sampler(self, trial_number, vector)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self)

    def recipe(self) -> SamplingRecipe:
        """How every trial and confirmation of this study samples (precision still `auto` until a
        worker resolves it for its device; the guide is attached by the worker that loads it)."""
        return SamplingRecipe(
            solver=self.solver, nfe=self.nfe, solver_params=SOLVERS.lookup(self.solver).params,
            steps=TimeSteps(time_exponent=self.time_exponent), precision=self.precision, batch_size=self.batch_size,
            guidance=self.guidance, guide_tuned=self.tune_guide, guide_sha256=self.guide_sha256 or None,
            cfg=self.cfg, prompts_sha256=self.prompts_sha256 or None,
        )

    def validate(self) -> None:
        SPACES.lookup(self.space)
        SAMPLERS.lookup(self.sampler)
        PRUNERS.lookup(self.pruner)
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        if not 2 <= self.samples <= MAX_SAMPLES:
            raise ConfigError(f"--samples must be at least 2 (FID needs a covariance) and at most {MAX_SAMPLES:,}, got {self.samples}")
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if self.nfe < 1:
            raise ConfigError(f"--nfe must be at least 1, got {self.nfe}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.seed_start < 0:
            raise ConfigError(f"seeds must be non-negative, got {self.seed_start}")
        if self.confirm_top < 0 or self.confirm_samples < 0 or self.bootstrap < 20:
            raise ConfigError("confirmation needs confirm_top >= 0, confirm_samples >= 0 and bootstrap >= 20 resamples")
        held_out = self.confirmation_seeds
        if held_out.start < self.seeds.stop and self.seeds.start < held_out.stop:
            raise ConfigError(f"the confirmation seeds {held_out.start}..{held_out.stop - 1} overlap the search seeds "
                              f"{self.seeds.start}..{self.seeds.stop - 1}; held-out seeds must be disjoint")
        if not self.fidelity or not all(0 < f <= 1 for f in self.fidelity):
            raise ConfigError(f"fidelity steps are fractions of --samples in (0, 1], got {list(self.fidelity)}")
        for name, (lo, hi) in (("rho", self.rho_bounds), ("curve", self.curve_bounds), ("sigma", self.sigma_bounds),
                               ("exponent", self.exponent_bounds), ("crowd", self.crowd_bounds),
                               ("FreeU b", self.freeu_b_bounds), ("FreeU s", self.freeu_s_bounds)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"{name} bounds must be finite with low < high, got ({lo}, {hi})")
        lo, hi = self.rho_bounds
        if not (0 < lo and hi <= RHO_MAX):
            raise ConfigError(f"rho bounds must satisfy 0 < low < high <= {RHO_MAX:g}, got ({lo:g}, {hi:g})")
        if max(abs(c) for c in self.curve_bounds) > CURVE_MAX:
            raise ConfigError(f"curve bounds must lie within ±{CURVE_MAX:g} (γ = 4^curve), got {self.curve_bounds}")
        if self.sigma_bounds[0] <= 0:
            raise ConfigError(f"sigma bounds must be positive, got {self.sigma_bounds}")
        if not (1.0 <= self.exponent_bounds[0] and self.exponent_bounds[1] <= 100.0):
            raise ConfigError(f"exponent bounds must lie within [1, 100] (EDM's is 7), got {self.exponent_bounds}")
        if max(abs(c) for c in self.crowd_bounds) > MAX_WARP:
            raise ConfigError(f"crowd bounds must lie within ±{MAX_WARP:g} (2^crowd bunches steps), got {self.crowd_bounds}")
        for name, (lo, hi) in (("FreeU b", self.freeu_b_bounds), ("FreeU s", self.freeu_s_bounds)):
            if not (0 < lo and hi <= RHO_MAX):
                raise ConfigError(f"{name} bounds must satisfy 0 < low < high <= {RHO_MAX:g}, got ({lo:g}, {hi:g})")
        if not (math.isfinite(self.guidance) and 0 < self.guidance <= 20):
            raise ConfigError(f"--guidance must be in (0, 20], got {self.guidance}")
        if self.cfg is not None and not (math.isfinite(self.cfg) and 0 < self.cfg <= 50):
            raise ConfigError(f"--cfg must be in (0, 50], got {self.cfg}")
        if self.pipeline and not self.prompts:
            raise ConfigError("--prompts FILE is required for a text-to-image pipeline (one prompt a line, a JSON list "
                              "or a COCO captions file)")
        if self.guidance != 1.0 and not self.guide:
            raise ConfigError("--guidance needs --guide CHECKPOINT (the guiding network)")
        if self.tune_guide and not self.guide:
            raise ConfigError("--tune-guide needs --guide CHECKPOINT")
        SOLVERS.lookup(self.solver).steps_for_nfe(self.nfe)  # an impossible pair names the nearest valid NFEs

    def fingerprint(self) -> str:
        data = {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def differences(self, other: StudyConfig) -> list[str]:
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in OPERATIONAL and mine[k] != theirs.get(k)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown study setting(s): {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"bad study settings: {e}") from None

    def with_overrides(self, **overrides: Any) -> StudyConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_preset(
        cls,
        preset: str | None = None,
        *,
        nfe: list[int] | None = None,
        **overrides: Any,
    ) -> list[StudyConfig]:
        """One config per NFE: preset values, then the given overrides (None means "not given").

        Without a preset and a checkpoint, `--model edm` means the built-in demo preset. The model
        is resolved (an unknown one names the valid choices) and each (solver, NFE) pair checked
        here, before anything is written.
        """
        from ..target import BUILTIN_PREFIX, resolve_source, source_name

        checkpoint = overrides.get("checkpoint")
        given_model = overrides.get("model") or "edm"
        if preset is None and checkpoint is None and (given_model == "edm" or given_model.startswith(BUILTIN_PREFIX)):
            preset = "demo"  # `--model edm` (or a built-in) alone: the built-in demo
        data: dict[str, Any] = dict(load_preset(preset).settings) if preset else {
            "solver": "dpmpp_2m", "features": "inception-v3-compat", "reference": None,
        }
        model = overrides.get("model") or data.get("model") or "edm"
        preset_checkpoint = data.get("checkpoint")
        if checkpoint is None and preset_checkpoint and not str(preset_checkpoint).startswith(BUILTIN_PREFIX):
            if not Path(str(preset_checkpoint)).exists():
                raise UsageError(f"preset {preset!r} is for your own network: give --checkpoint FILE and --ref FILE")
            checkpoint = preset_checkpoint  # a preset of the user's own, naming a real file
        source = resolve_source(model, checkpoint)  # an unknown --model names the choices
        if not source.startswith(BUILTIN_PREFIX) and not Path(source).exists():
            raise CheckpointError(f"{source}: no such file; give --checkpoint an existing checkpoint file or folder")
        if not source.startswith(BUILTIN_PREFIX) and str(preset_checkpoint or "").startswith(BUILTIN_PREFIX):
            raise UsageError(f"preset {preset!r} is for the built-in model; for --checkpoint give --ref and --features")
        preset_nfe = data.pop("nfe", [10])
        preset_reference = data.get("reference")
        data.update({k: v for k, v in overrides.items() if v is not None})
        data["checkpoint"] = source
        data["model"] = "edm" if model.startswith(BUILTIN_PREFIX) else model
        for key in ("guide", "prompts"):  # a preset's placeholder file name means "give this option"
            if data.get(key) and overrides.get(key) is None and not Path(str(data[key])).is_file():
                raise UsageError(f"preset {preset!r} names {key} {data[key]}, which is not here: give --{key} FILE")
        data["model_name"] = overrides.get("model_name") or source_name(source)
        data.update(_conditioning(source, data, overrides))
        reference = data.get("reference")
        if reference is None:
            raise UsageError(
                "--ref is required for your checkpoint: an EDM fid-refs .npz, an EDM2 dataset-ref .pkl, or make one with "
                "`skipsearch reference`"
            )
        if reference == preset_reference and not str(reference).startswith(BUILTIN_PREFIX) and not Path(reference).is_file():
            raise UsageError(f"preset {preset!r} names reference {reference}, which is not here: give --ref FILE")
        nfes = nfe or (preset_nfe if isinstance(preset_nfe, list) else [preset_nfe])
        if len(set(nfes)) != len(nfes):
            raise UsageError(f"--nfe lists a value twice: {' '.join(map(str, nfes))}")
        return [cls.from_dict({**data, "nfe": int(n)}) for n in nfes]


def _conditioning(source: str, data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Prompts, negative prompt and CFG scale: required for a text-to-image pipeline, refused for any
    other network (one line each); the prompts file is read and fingerprinted here."""
    from ..prompts import read_prompts
    from ..target import pipeline_variant

    variant = pipeline_variant(source)
    name = Path(source).name
    if not variant:
        for key, option in (("prompts", "--prompts"), ("negative_prompt", "--negative-prompt"), ("cfg", "--cfg")):
            if overrides.get(key) is not None:
                raise UsageError(f"{option} is for text-to-image pipelines (a diffusers folder with model_index.json); "
                                 f"{name} is not one: it samples by class or unconditionally")
        return {}
    if not data.get("prompts"):
        raise UsageError(f"{name} is a text-to-image pipeline: give --prompts FILE (one prompt a line, a JSON list or a "
                         "COCO captions file)")
    prompts = read_prompts(data["prompts"], data.get("negative_prompt"))
    return {"pipeline": variant, "model": "diffusers", "prompts_sha256": prompts.sha256, "prompts": str(data["prompts"]),
            "prompt_count": len(prompts.texts),
            "cfg": float(data["cfg"]) if data.get("cfg") is not None else (5.0 if variant == "sdxl" else 7.5)}
