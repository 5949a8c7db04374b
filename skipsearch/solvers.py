"""Few-step solvers for the EDM probability-flow ODE, with exact and predictable NFE.

A *denoiser* is any callable ``denoise(x, sigma) -> D(x; σ)`` (data prediction, ``x`` of shape
[N, C, H, W], ``sigma`` a python float shared by the batch).  The ODE is EDM's

    dx/dσ = (x − D(x; σ)) / σ,

integrated from ``sigmas[0]`` down the given sequence.  Every solver has the signature
``fn(denoise, x, sigmas) -> x`` where ``x`` is already at σ = sigmas[0] (``latents·sigmas[0]``) and
``sigmas`` is any strictly decreasing sequence; it normally ends in 0 (EDM's convention), which is
what the NFE bookkeeping in `SolverSpec` assumes.  Taking σ explicitly (rather than a step count)
lets a search vary the time discretisation (``time_exponent``) together with the skip coefficients.

Why float64: EDM keeps the sampler state in float64 and casts only the network's input/output, so
the few large steps of a few-NFE sampler add no rounding of their own.  The solvers therefore
require a float64 ``x``, do all arithmetic in float64 (σ-dependent coefficients are python floats,
i.e. doubles), and cast only the denoiser output (``.to(torch.float64)``).

Why exact NFE: skip-coefficient searches compare samplers at a fixed budget of network
evaluations, so each solver's NFE for a given number of steps is fixed and known in advance
(`SolverSpec.nfe_for_steps` / `steps_for_nfe`); no solver spends an extra evaluation at the end.

The step to σ = 0 is special: there is no D(·; 0) to evaluate (so Heun cannot correct it) and
λ = −log σ = +∞ (so the exponential-integrator weights blow up).  Euler, Heun and the DPM-Solver++
variants take EDM's first-order final step there, x ← D(x; σ_{N−1}) (which is what the Euler step
x + (0 − σ)·d gives); UniPC takes the same step from its corrected point (see `unipc`); ipndm's
σ-space Adams–Bashforth step needs no special case.  With EDM's σ_min = 0.002 this step only
removes residual noise of size σ_min, so its low order costs nothing measurable.

The exponential-integrator solvers (DPM-Solver++, UniPC) work in λ = −log σ with step
h = log(σ_i/σ_{i+1}); for EDM's α = 1 their exact one-step identity is

    x(σ_next) = (σ_next/σ)·x(σ) + ∫ e^{−(λ_next − λ)} D(λ) dλ,

and they differ only in how the integral of D is approximated from past evaluations.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .errors import SolverError
from .steps import MAX_NFE, edm_sigma_list
from .registry import Registry

__all__ = [
    "Denoiser",
    "SolverError",
    "SolverSpec",
    "SOLVERS",
    "edm_sigmas",
    "euler",
    "heun",
    "dpmpp_2m",
    "dpmpp_3m",
    "ipndm",
    "unipc",
    "get_solver",
    "solve",
]

Denoiser = Callable[[Tensor, float], Tensor]
SigmaLike = Tensor | Sequence[float]
SolverFn = Callable[[Denoiser, Tensor, SigmaLike], Tensor]


# ----------------------------------------------------------------------------------------------
# Time discretisation


def edm_sigmas(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    time_exponent: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """EDM's σ sequence (`skipsearch.recipe.edm_sigma_list`) as a float64 tensor of num_steps + 1."""
    try:
        values = edm_sigma_list(num_steps, sigma_min, sigma_max, time_exponent)
    except SolverError as e:
        raise ValueError(str(e)) from None
    return torch.tensor(values, dtype=torch.float64, device=device)


def _sigma_list(sigmas: SigmaLike) -> list[float]:
    """Validate a σ sequence and return it as python floats (doubles) for the step arithmetic."""
    if isinstance(sigmas, Tensor):
        if sigmas.dim() != 1:
            raise SolverError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
        values = [float(v) for v in sigmas.detach().to("cpu", torch.float64).tolist()]
    else:
        try:
            values = [float(v) for v in sigmas]
        except (TypeError, ValueError):
            raise SolverError(f"sigmas must be a sequence of numbers, got {sigmas!r}") from None
    if len(values) < 2:
        raise SolverError(f"sigmas needs at least 2 entries (one step), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise SolverError(f"sigmas must be finite, got {values}")
    if values[-1] < 0.0 or any(v <= 0.0 for v in values[:-1]):
        raise SolverError(f"sigmas must be positive (only the last may be 0), got {values}")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise SolverError(f"sigmas must be strictly decreasing, got {values}")
    return values


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dtype != torch.float64:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise SolverError(f"solvers keep their state in float64; pass x.to(torch.float64) (got {got})")


def _eval(denoise: Denoiser, x: Tensor, sigma: float) -> Tensor:
    out = denoise(x, float(sigma))
    if not isinstance(out, Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise SolverError(f"denoiser returned {shape} for an input of shape {tuple(x.shape)}")
    return out.to(torch.float64)


def _phi(k: int, z: float) -> float:
    """φ_k(z) = Σ_j z^j/(j+k)!, the exponential-integrator weights (φ_0 = e^z).

    The textbook recursion φ_{k+1} = (φ_k − 1/k!)/z cancels catastrophically for the small steps
    of a convergence study (relative error ~ ε/|z|^k), so small |z| uses the power series.
    """
    if abs(z) < 0.5:
        term = 1.0 / math.factorial(k)
        total = term
        for j in range(1, 30):
            term *= z / (j + k)
            total += term
            if abs(term) < 1e-18 * abs(total):
                break
        return total
    value = math.exp(z)
    for j in range(k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


# ----------------------------------------------------------------------------------------------
# Solvers


def euler(denoise: Denoiser, x: Tensor, sigmas: SigmaLike) -> Tensor:
    """Euler in σ: one evaluation per step, first order.  NFE = N."""
    _check_x(x)
    s = _sigma_list(sigmas)
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        d = (x - _eval(denoise, x, sigma)) / sigma
        x = x + (sigma_next - sigma) * d
    return x


def heun(denoise: Denoiser, x: Tensor, sigmas: SigmaLike) -> Tensor:
    """EDM's deterministic 2nd-order sampler (Karras et al. 2022, Alg. 1 without churn).

    The trapezoidal correction needs D at σ_next, which does not exist for σ_next = 0, so the step
    to 0 stays an Euler step: NFE = 2N − 1 for sequences ending in 0 (2N if the last σ is > 0).
    """
    _check_x(x)
    s = _sigma_list(sigmas)
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        d = (x - _eval(denoise, x, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0.0:
            d_next = (x_next - _eval(denoise, x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * ((d + d_next) / 2)
        x = x_next
    return x


def dpmpp_2m(denoise: Denoiser, x: Tensor, sigmas: SigmaLike) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, one evaluation per step.

    D is extrapolated linearly in λ from the last two evaluations to the step's midpoint; the
    first step (no history) and the step to σ = 0 are first order.  NFE = N.
    """
    _check_x(x)
    s = _sigma_list(sigmas)
    prev: tuple[Tensor, float] | None = None  # (D, h) of the previous step
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        den = _eval(denoise, x, sigma)
        if sigma_next == 0.0:
            x = den
            break
        h = math.log(sigma / sigma_next)
        den_eff = den
        if prev is not None:
            den_prev, h_prev = prev
            # r = h_prev/h; D_eff = D + (D − D_prev)/(2r)
            den_eff = den + (den - den_prev) * (h / (2.0 * h_prev))
        x = (sigma_next / sigma) * x - math.expm1(-h) * den_eff
        prev = (den, h)
    return x


def dpmpp_3m(denoise: Denoiser, x: Tensor, sigmas: SigmaLike, *, kdiffusion_compat: bool = False) -> Tensor:
    """DPM-Solver++(3M), deterministic: a 3rd-order exponential-integrator multistep method.

    D(λ) around the current point is the quadratic through the last three evaluations (Newton
    form, in units of the current step h); the exact integral of e^{−(λ_next − λ)}·τ^n/n! is
    h·φ_{n+1}(−h)·h^n, so

        x_next = e^{−h}·x + hφ₁·D + hφ₂·(h D') + hφ₃·(h² D'').

    Warm start: orders 1, 2, 3 for the first three steps.  The step to σ = 0 returns D.  NFE = N.

    Note: h²D'' is *twice* the second divided difference in units of h.  k-diffusion's
    ``sample_dpmpp_3m_sde`` (and DPM-Solver's multistep 3rd-order update) multiply the divided
    difference itself by the same weight, which halves the D'' term and leaves the method
    second order; the factor 2 here is what makes the measured order 3 (see tests).
    ``kdiffusion_compat=True`` reproduces k-diffusion's weighting (``sample_dpmpp_3m_sde`` with
    eta = 0) for comparisons with published numbers; its damped D'' term can be the more accurate
    of the two at very few steps on EDM's grid, where the last λ-steps are long.
    """
    d2_weight = 1.0 if kdiffusion_compat else 2.0
    _check_x(x)
    s = _sigma_list(sigmas)
    hist: list[Tensor] = []  # D at the current and previous points, newest first
    steps: list[float] = []  # λ steps that led to those points, newest first
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        den = _eval(denoise, x, sigma)
        if sigma_next == 0.0:
            x = den
            break
        h = math.log(sigma / sigma_next)
        x = (sigma_next / sigma) * x + (-math.expm1(-h)) * den
        if hist:
            r0 = steps[0] / h
            slope0 = (den - hist[0]) / r0  # ≈ h·D' at the midpoint of the last step
            if len(hist) >= 2:
                r1 = steps[1] / h
                slope1 = (hist[0] - hist[1]) / r1
                second = (slope0 - slope1) / (r0 + r1)  # second divided difference ≈ h²D''/2
                first = slope0 + second * r0  # h·D' at the current point
                x = x + (h * _phi(2, -h)) * first + (h * _phi(3, -h)) * (d2_weight * second)
            else:
                x = x + (h * _phi(2, -h)) * slope0
        hist = [den] + hist[:1]
        steps = [h] + steps[:1]
    return x


_AB_COEFFS: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def ipndm(denoise: Denoiser, x: Tensor, sigmas: SigmaLike, *, max_order: int = 4) -> Tensor:
    """Improved PNDM (Zhang & Chen 2023): Adams–Bashforth in σ on d = (x − D)/σ.

    Uses the fixed (uniform-step) AB coefficients of orders 1..max_order as the history fills, as
    in the DEIS repository and diff-sampler.  They are 4th order only on a uniform σ grid: on a
    non-uniform grid such as EDM's the O(h·Δh) mismatch makes the method 2nd order (measured 2.07,
    see tests), and asymptotically the Euler warm-start step caps it at 2 on any grid, although
    that step is nearly exact at σ_max ≫ data std (x is almost linear in σ there).  Its appeal at
    few steps is a small error constant, not its order.  NFE = N (the step to 0 is an AB step).
    """
    if not 1 <= max_order <= len(_AB_COEFFS):
        raise SolverError(f"ipndm max_order must be in 1..{len(_AB_COEFFS)}, got {max_order}")
    _check_x(x)
    s = _sigma_list(sigmas)
    history: list[Tensor] = []  # d at the current and previous points, newest first
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        d = (x - _eval(denoise, x, sigma)) / sigma
        history = [d] + history[: max_order - 1]
        coeffs = _AB_COEFFS[len(history) - 1]
        slope = coeffs[0] * history[0]
        for c, d_old in zip(coeffs[1:], history[1:]):
            slope = slope + c * d_old
        x = x + (sigma_next - sigma) * slope
    return x


def _unipc_weights(h: float, rks: Sequence[float]) -> list[float]:
    """Weights ρ_k of UniPC's divided differences (bh2: B(h) = 1 − e^{−h} = hφ₁(−h)).

    Matching the Taylor expansion of the exact integral term by term gives, for n = 1..K,
        Σ_k ρ_k r_k^{n−1} = n!·φ_{n+1}(−h)/φ₁(−h),
    where r_k = (λ_k − λ_base)/h are the relative positions of the other evaluations (negative for
    past points, 1 for the corrector's new point).  Order-2 predictor and order-1 corrector use
    the simplified ρ = 1/2 of the UniPC paper (it satisfies the n = 1 condition to O(h)).
    """
    if len(rks) == 1:
        return [0.5]
    k = len(rks)
    phi1 = _phi(1, -h)
    mat = np.array([[r ** (n - 1) for r in rks] for n in range(1, k + 1)], dtype=np.float64)
    rhs = np.array([math.factorial(n) * _phi(n + 1, -h) / phi1 for n in range(1, k + 1)], dtype=np.float64)
    return [float(v) for v in np.linalg.solve(mat, rhs)]


def unipc(denoise: Denoiser, x: Tensor, sigmas: SigmaLike, *, max_order: int = 2) -> Tensor:
    """UniPC (Zhao et al. 2023), bh2, data prediction: UniP-p predictor + UniC corrector.

    Step i predicts x̃_{i+1} from the corrected x_i and the evaluations at earlier points; the
    evaluation at x̃_{i+1} (needed anyway for the next step) then feeds the corrector, which
    re-solves step i with that extra point and raises its order by one, for free: NFE = N.
    Predictor order min(max_order, i+1) (lower-order warm start); max_order = 2 gives a 3rd-order
    method, max_order = 3 a 4th-order one once warmed up.

    Step to σ = 0 (λ = ∞, where the λ-polynomial weights blow up): the first-order step
    x ← x_c − σ·(x̃ − D(x̃))/σ = D(x̃) + (x_c − x̃), i.e. the Euler step from the corrected point
    using the slope evaluated at the predicted point.  This keeps the last corrector's work (plain
    x ← D(x̃) would discard it) without a further evaluation.  A sequence ending at σ > 0 instead
    ends with an uncorrected predictor step, like UniPC/diff-sampler ending at σ_min.
    """
    if max_order not in (1, 2, 3):
        raise SolverError(f"unipc max_order must be 1, 2 or 3, got {max_order}")
    _check_x(x)
    s = _sigma_list(sigmas)
    lam = [math.inf if v == 0.0 else -math.log(v) for v in s]
    outs: list[Tensor] = []  # model outputs at points 0..i (at the predicted x̃_i for i ≥ 1)
    x_pred = x  # x̃_i, where D is evaluated
    x_base = x  # corrected x at the start of the previous step (the corrector re-solves that step)
    order_prev = 0  # predictor order of the previous step (the corrector reuses its history)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        den = _eval(denoise, x_pred, sigma)
        if i == 0:
            x_cur = x_pred
        else:
            # UniC for step i−1 → i: same history as its predictor plus the new point at r = 1.
            x_cur = _unipc_step(x_base, outs, lam, i - 1, order_prev, s, new_out=den)
        outs.append(den)
        if sigma_next == 0.0:
            return den + (x_cur - x_pred)
        order_prev = min(max_order, i + 1)
        x_pred = _unipc_step(x_cur, outs, lam, i, order_prev, s, new_out=None)
        x_base = x_cur
    return x_pred


def _unipc_step(
    x: Tensor,
    outs: list[Tensor],
    lam: list[float],
    base: int,
    order: int,
    s: list[float],
    new_out: Tensor | None,
) -> Tensor:
    """One UniP (new_out None) or UniC (new_out = D at the new point) step from point `base`."""
    h = lam[base + 1] - lam[base]
    m0 = outs[base]
    rks: list[float] = []
    diffs: list[Tensor] = []
    for j in range(1, order):  # past points base−1, …, base−order+1
        rk = (lam[base - j] - lam[base]) / h
        rks.append(rk)
        diffs.append((outs[base - j] - m0) / rk)
    if new_out is not None:
        rks.append(1.0)
        diffs.append(new_out - m0)
    b_h = -math.expm1(-h)  # hφ₁(−h) = 1 − σ_next/σ
    x_next = (s[base + 1] / s[base]) * x + b_h * m0
    if diffs:
        weights = _unipc_weights(h, rks)
        correction = weights[0] * diffs[0]
        for w, dd in zip(weights[1:], diffs[1:]):
            correction = correction + w * dd
        x_next = x_next + b_h * correction
    return x_next


# ----------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class SolverSpec:
    """A named solver and its NFE bookkeeping for σ sequences ending in 0.

    NFE = ``nfe_per_step``·steps − ``nfe_saved_at_end`` (Heun: 2 per step, but the step to σ = 0
    has no correction).  ``order`` is the global order the method is designed for once warmed up
    (ipndm: 4 on uniform σ grids, 2 on EDM's grid); lower-order warm-start steps cap the multistep
    methods at 2 (UniPC: 3) as N → ∞, but their errors are damped by ≈ data std/σ_max and did not
    show at N ≤ 128 on EDM's grid.  Measured orders: tests/test_solvers.py.
    """

    name: str
    fn: SolverFn
    order: int
    nfe_per_step: int = 1
    nfe_saved_at_end: int = 0
    params: dict[str, object] = field(default_factory=dict)  # the settings it runs with (exported with schedules)
    tunable: tuple[str, ...] = ()  # the params a recipe may change (keyword arguments of `fn`)

    def call_params(self, given: Mapping[str, object] | None) -> dict[str, object]:
        """The keyword arguments `fn` runs with for a recipe's solver params: tunable ones as given,
        descriptive ones (UniPC's variant) only at the value this implementation has."""
        out: dict[str, object] = {}
        for key, value in (given or {}).items():
            if key in self.tunable:
                out[key] = value
            elif key not in self.params:
                known = ", ".join(self.params) or "none"
                raise SolverError(f"{self.name} has no parameter {key!r} (its parameters: {known})")
            elif value != self.params[key]:
                raise SolverError(f"{self.name} runs with {key}={self.params[key]!r} only, not {value!r}")
        return out

    def nfe_for_steps(self, steps: int) -> int:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise SolverError(f"{self.name}: steps must be an integer >= 1, got {steps!r}")
        return self.nfe_per_step * int(steps) - self.nfe_saved_at_end

    def valid_nfe(self, nfe: int) -> bool:
        if isinstance(nfe, bool) or not isinstance(nfe, numbers.Integral):
            return False
        total = int(nfe) + self.nfe_saved_at_end
        return total >= self.nfe_per_step and total % self.nfe_per_step == 0

    def steps_for_nfe(self, nfe: int) -> int:
        if isinstance(nfe, bool) or not isinstance(nfe, numbers.Integral):
            raise SolverError(f"{self.name}: NFE must be an integer, got {nfe!r}")
        if nfe > MAX_NFE:
            raise SolverError(f"NFE {nfe} is more than skipsearch samples with (at most {MAX_NFE})")
        if self.valid_nfe(nfe):
            return (int(nfe) + self.nfe_saved_at_end) // self.nfe_per_step
        lowest = self.nfe_for_steps(1)
        if nfe < lowest:
            raise SolverError(f"{self.name} needs NFE >= {lowest}, got {nfe}")
        below = (int(nfe) + self.nfe_saved_at_end) // self.nfe_per_step
        if self.nfe_per_step == 2 and self.nfe_saved_at_end == 1:
            rule = "an odd NFE (2·steps − 1)"
        else:
            rule = f"an NFE of the form {self.nfe_per_step}·steps − {self.nfe_saved_at_end}"
        raise SolverError(
            f"{self.name} needs {rule}; nearest valid: {self.nfe_for_steps(below)} or {self.nfe_for_steps(below + 1)}"
        )


SOLVERS: Registry[SolverSpec] = Registry("solver", SolverError)
for _spec in (
    SolverSpec("euler", euler, order=1),
    SolverSpec("heun", heun, order=2, nfe_per_step=2, nfe_saved_at_end=1),
    SolverSpec("dpmpp_2m", dpmpp_2m, order=2),
    SolverSpec("dpmpp_3m", dpmpp_3m, order=3, params={"kdiffusion_compat": False}, tunable=("kdiffusion_compat",)),
    SolverSpec("ipndm", ipndm, order=4, params={"max_order": 4}, tunable=("max_order",)),
    SolverSpec("unipc", unipc, order=3, params={"max_order": 2, "variant": "bh2", "corrector": True},
               tunable=("max_order",)),
):
    SOLVERS.register(_spec.name, _spec)


def get_solver(name: str) -> SolverSpec:
    return SOLVERS.lookup(name)


def solve(
    solver: str,
    denoise: Denoiser,
    latents: Tensor,
    nfe: int,
    sigmas: SigmaLike | None = None,
    params: Mapping[str, object] | None = None,
    **grid: float,
) -> Tensor:
    """Sample with exactly `nfe` denoiser evaluations; returns float64 x at σ = 0.

    Uses EDM's σ sequence (`grid`: sigma_min, sigma_max, time_exponent) for the number of steps
    this NFE buys, or checks that the given `sigmas` have that length and end in 0 (the NFE
    bookkeeping assumes it). `params` are the solver's own settings (e.g. ipndm's max_order), as a
    recipe records them.
    """
    spec = get_solver(solver)
    steps = spec.steps_for_nfe(nfe)
    kwargs = spec.call_params(params)
    if sigmas is None:
        sig = edm_sigmas(steps, device=latents.device, **grid)
    else:
        sig = torch.as_tensor(sigmas, dtype=torch.float64)
        if sig.dim() != 1 or sig.numel() != steps + 1:
            raise SolverError(
                f"{spec.name} at NFE {nfe} takes {steps} steps, so sigmas needs {steps + 1} entries; "
                f"got shape {tuple(sig.shape)}"
            )
        if float(sig[-1]) != 0.0:
            raise SolverError(f"sigmas must end in 0 for solve() (NFE = {nfe} assumes it), got {float(sig[-1])}")
    x = latents.to(torch.float64) * float(sig[0])
    return spec.fn(denoise, x, sig, **kwargs)
