"""How samples are drawn, as one value: solver, NFE, σ steps, precision, batch, guidance, CFG.

A `SamplingRecipe` is built once — from a study's config for its trials and confirmation, or from
an exported schedule entry for `score`, `sample` and the Python API — and handed down whole to the
sampler and the scorer, so a consumer of a schedule samples exactly the way the search that chose
it did. The value is pure data (no torch): reading a schedules file stays light. The networks a
recipe runs with besides the main one (an autoguidance guide, a VAE decoder) ride along as
attachments that take no part in comparisons.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import SolverError, UsageError
from .steps import TimeSteps

__all__ = ["PRECISIONS", "SamplingRecipe", "TimeSteps"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: half precision on a GPU, fp32 on the CPU

def _params_tuple(params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    items = params.items() if isinstance(params, Mapping) else (params or ())
    return tuple(sorted((str(k), v) for k, v in items))


@dataclass(frozen=True)
class SamplingRecipe:
    """Everything that decides which images a (network, schedule, seeds) gives, but the network,
    the schedule and the seeds.

    `guidance` g ≠ 1 runs EDM2's autoguidance D_guide + g·(D_net − D_guide), which needs the guide
    attached (`with_networks`); `guide_tuned` applies the schedule to the guide too. `precision`
    `auto` is resolved per device when sampling. `batch_size` never changes an image.
    """

    solver: str = "euler"
    nfe: int = 10
    solver_params: tuple[tuple[str, Any], ...] = ()
    steps: TimeSteps = TimeSteps()
    precision: str = "fp32"
    batch_size: int = 64
    guidance: float = 1.0
    guide_tuned: bool = False
    guide_sha256: str | None = None  # the guide the recipe was searched with, when it was guided
    cfg: float | None = None  # classifier-free guidance scale of a text-to-image pipeline (None: not one)
    prompts_sha256: str | None = None  # the prompt set a pipeline's schedule was searched with
    channels_last: bool | None = None  # None: where it pays (convolutions on a GPU)
    guide: Any = field(default=None, compare=False, repr=False)  # the guiding network (an nn.Module)
    decode: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)  # samples → uint8 images

    def __post_init__(self) -> None:
        object.__setattr__(self, "solver_params", _params_tuple(self.solver_params))
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, numbers.Integral):
            raise SolverError(f"NFE must be an integer, got {self.nfe!r}")
        object.__setattr__(self, "nfe", int(self.nfe))
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not (math.isfinite(self.guidance) and self.guidance > 0):
            raise UsageError(f"guidance must be finite and positive, got {self.guidance}")
        if self.cfg is not None and not (math.isfinite(self.cfg) and self.cfg > 0):
            raise UsageError(f"cfg must be finite and positive, got {self.cfg}")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.solver_params)

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0

    def with_(self, **changes: Any) -> SamplingRecipe:
        """A copy with some fields changed (attachments kept unless given)."""
        return replace(self, **changes)

    def with_networks(self, *, guide: Any = None, decode: Callable[[Any], Any] | None = None) -> SamplingRecipe:
        return replace(self, guide=guide if guide is not None else self.guide,
                       decode=decode if decode is not None else self.decode)

    def describe(self) -> str:
        guided = f", autoguidance g={self.guidance:g}" if self.guided else ""
        cfg = f", CFG {self.cfg:g}" if self.cfg is not None else ""
        return f"{self.solver} NFE {self.nfe}{guided}{cfg}"
