"""Tests for skipsearch.solvers: exact NFE, EDM-Heun equivalence, and measured convergence orders.

Run as a script (``python tests/test_solvers.py``) to print the table of measured orders.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

if __name__ == "__main__":  # allow `python tests/test_solvers.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skipsearch.solvers import (
    SOLVERS,
    SolverError,
    dpmpp_2m,
    dpmpp_3m,
    edm_sigmas,
    euler,
    get_solver,
    heun,
    ipndm,
    solve,
    unipc,
)

# ----------------------------------------------------------------------------------------------
# Helpers


class CountingDenoiser:
    """Records every call; returns a cheap contraction toward 0 (any D works for counting)."""

    def __init__(self) -> None:
        self.sigmas: list[float] = []

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        assert type(sigma) is float, type(sigma)
        assert x.dtype == torch.float64
        self.sigmas.append(sigma)
        return x / (1.0 + sigma * sigma)


@dataclass(frozen=True)
class Gaussian:
    """Data ~ N(μ, diag(s²)): exact denoiser and exact probability-flow ODE solution."""

    mu: Tensor
    std: Tensor

    @classmethod
    def make(cls, std_lo: float, std_hi: float, seed: int = 0) -> Gaussian:
        g = torch.Generator().manual_seed(seed)
        shape = (1, 3, 2, 2)  # a few independent dimensions, broadcast over the batch
        mu = torch.rand(shape, generator=g, dtype=torch.float64) * 3.0 - 1.5
        std = std_lo + (std_hi - std_lo) * torch.rand(shape, generator=g, dtype=torch.float64)
        return cls(mu, std)

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        var = self.std**2
        return (var * x + sigma**2 * self.mu) / (var + sigma**2)

    def exact(self, x0: Tensor, sigma0: float, sigma: float) -> Tensor:
        var = self.std**2
        return self.mu + (x0 - self.mu) * torch.sqrt((var + sigma**2) / (var + sigma0**2))

    def latents(self, batch: int = 4, seed: int = 1) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *self.mu.shape[1:]), generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# Convergence orders
#
# Setup.  The error is measured at σ_min with a σ sequence that *ends* at σ_min (N steps from
# σ_max to σ_min, no final step to 0).  Comparing at σ = 0 instead is not a convergence study:
# the step σ_min → 0 is first order (Euler / x ← D) and its length σ_min does not shrink with N,
# so it adds an N-independent error floor.
#
# Main grid = EDM's own (σ_max = 80, σ_min = 0.002, time_exponent = 7) with data std 0.2–1.5, so
# σ_max ≫ s as in practice.  The ODE contracts an error made at σ ≫ s by ≈ σ_end/σ, which hides
# the first-order warm-start steps of the multistep methods (asymptotically they cap dpmpp_3m at
# order 2; with σ_max = 10 it already drifts toward 2 by N = 256) — at N ≤ 128 all methods are in
# their design-order regime here.  Orders are least-squares slopes of log(error) vs log(N) over
# N = 32, 64, 128 (N = 16 is still pre-asymptotic for dpmpp_3m and unipc(3): local slopes ≈ 4–4.7).
#
# Tolerance.  Measured slopes on these grids are within 0.1 of the design order (table from
# `python tests/test_solvers.py`); the next term of the error expansion biases a 3-point fit by
# O(h), i.e. ~0.1 here.  We assert ≥ order − 0.3: loose enough to be platform-proof, tight enough
# that one wrong coefficient fails.  Checked by mutating solvers.py (orders measured by this
# harness): k-diffusion's halved D'' weight in dpmpp_3m 1.46, dpmpp_3m without the D'' term's
# shift to the current point 2.00, 2M with 1/r instead of 1/(2r) 1.32, Heun using only the second
# slope 1.16, UniPC without the corrector 2.07, UniPC with ρ = 0.4 instead of 0.5 1.16, UniPC with
# weights off by 5% 1.57; ipndm's AB4 coefficients perturbed (kept consistent) 1.61 and AB2's
# 0.78 in the quadrature test below.  Not detectable, by design: errors that are O(h) relative to
# the term they touch (e.g. r ↔ 1/r in 2M on a smooth grid) and coefficients used only in the
# damped warm-start steps.  An upper bound (≤ order + 0.6) catches a test that is accidentally
# exact or dominated by a lucky cancellation.
#
# ipndm.  Its Adams–Bashforth coefficients are the fixed uniform-step ones, so on a non-uniform
# σ grid the local error has an O(h·Δh) term (Δh = h_n − h_{n−1} = O(h²)): 2nd order on EDM's grid,
# which is what the Gaussian case expects.  The coefficients themselves are checked separately on
# a uniform σ grid with a pure quadrature ODE (D = x − σ·q(σ), so dx/dσ = q(σ)) whose q vanishes
# for σ ≥ 8: the Euler/AB2/AB3 warm-start steps are then exact and each max_order k must show
# order k.  (With the Gaussian on a uniform grid the warm-start error, which is asymptotically
# O(h²), and the AB4 error partly cancel, so local slopes there jump between 3 and 5.)

ORDER_TOL = 0.3
ORDER_OVERSHOOT = 0.6


@dataclass(frozen=True)
class OrderCase:
    label: str
    fn: Callable[..., Tensor]
    order: int  # expected order on this grid
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    time_exponent: float = 7.0
    steps: tuple[int, ...] = (32, 64, 128)
    std: tuple[float, float] = (0.2, 1.5)


ORDER_CASES: tuple[OrderCase, ...] = (
    OrderCase("euler", euler, 1),
    OrderCase("heun", heun, 2),
    OrderCase("dpmpp_2m", dpmpp_2m, 2),
    OrderCase("dpmpp_3m", dpmpp_3m, 3),
    OrderCase("ipndm", ipndm, 2),  # fixed AB coefficients on a non-uniform grid (see above)
    OrderCase("unipc", unipc, 3),
    OrderCase("unipc (max_order=3)", functools.partial(unipc, max_order=3), 4),
)


def measure_order(case: OrderCase) -> tuple[list[float], float]:
    """Max-abs errors at σ_min for each N, and the fitted slope −d log(err)/d log(N)."""
    gauss = Gaussian.make(*case.std)
    lat = gauss.latents()
    errors = []
    for n in case.steps:
        sigmas = edm_sigmas(n + 1, case.sigma_min, case.sigma_max, case.time_exponent)[:-1]
        x0 = lat * case.sigma_max
        x = case.fn(gauss.denoise, x0, sigmas)
        errors.append((x - gauss.exact(x0, case.sigma_max, case.sigma_min)).abs().max().item())
    slope = -np.polyfit(np.log(case.steps), np.log(errors), 1)[0]
    return errors, float(slope)


@pytest.mark.parametrize("case", ORDER_CASES, ids=[c.label for c in ORDER_CASES])
def test_convergence_order(case: OrderCase) -> None:
    errors, slope = measure_order(case)
    print(f"\n{case.label}: order {slope:.2f} (expected {case.order}); errors {['%.2e' % e for e in errors]}")
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] > 1e-13, "error at round-off level: the fit would be meaningless"
    assert case.order - ORDER_TOL <= slope <= case.order + ORDER_OVERSHOOT, (case.label, slope, errors)


QUAD_STEPS = (32, 64, 128)
QUAD_SIGMA_MAX, QUAD_SIGMA_MIN, QUAD_FLAT_ABOVE = 10.0, 0.5, 8.0


def measure_ipndm_quadrature(max_order: int) -> tuple[list[float], float]:
    """ipndm on dx/dσ = q(σ) = (8 − σ)₊⁵/100 over a uniform σ grid 10 → 0.5 (see comment above)."""

    def q(sigma: float) -> float:
        return max(QUAD_FLAT_ABOVE - sigma, 0.0) ** 5 / 100.0

    def denoise(x: Tensor, sigma: float) -> Tensor:
        return x - sigma * q(sigma)

    x0 = torch.full((1, 1, 1, 1), QUAD_SIGMA_MAX, dtype=torch.float64)
    exact = QUAD_SIGMA_MAX - (QUAD_FLAT_ABOVE - QUAD_SIGMA_MIN) ** 6 / 600.0
    errors = []
    for n in QUAD_STEPS:
        sigmas = edm_sigmas(n + 1, QUAD_SIGMA_MIN, QUAD_SIGMA_MAX, time_exponent=1.0)[:-1]
        assert float(sigmas[3]) >= QUAD_FLAT_ABOVE  # warm-start steps see q = 0
        errors.append(abs(ipndm(denoise, x0, sigmas, max_order=max_order).item() - exact))
    slope = -np.polyfit(np.log(QUAD_STEPS), np.log(errors), 1)[0]
    return errors, float(slope)


@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
def test_ipndm_adams_bashforth_orders_on_uniform_grid(max_order: int) -> None:
    errors, slope = measure_ipndm_quadrature(max_order)
    errs = ["%.2e" % e for e in errors]
    print(f"\nipndm(max_order={max_order}) uniform-grid quadrature: order {slope:.2f}; errors {errs}")
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert max_order - ORDER_TOL <= slope <= max_order + ORDER_OVERSHOOT, (max_order, slope, errors)


def test_registered_orders_are_covered() -> None:
    labels = {c.label: c.order for c in ORDER_CASES}
    for name, spec in SOLVERS.items():
        assert name in labels
        if name != "ipndm":  # ipndm's design order 4 holds on uniform grids only (see above)
            assert labels[name] == spec.order, name
    assert SOLVERS["ipndm"].order == 4


def _poly_lambda_case(coeffs: Sequence[float], sigmas: Sequence[float], x0: float) -> tuple[Callable, float]:
    """Denoiser D = p(λ), λ = −log σ, independent of x: the ODE dx/dλ = p(λ) − x has the exact
    solution x(λ₁) = e^{−(λ₁−λ₀)} x₀ + [e^{λ−λ₁}(p − p' + p'')]_{λ₀}^{λ₁}."""
    p = np.polynomial.Polynomial(coeffs)

    def denoise(x: Tensor, sigma: float) -> Tensor:
        return torch.full_like(x, float(p(-math.log(sigma))))

    l0, l1 = -math.log(sigmas[0]), -math.log(sigmas[-1])
    anti = p - p.deriv(1) + p.deriv(2)
    exact = math.exp(l0 - l1) * x0 + float(anti(l1)) - math.exp(l0 - l1) * float(anti(l0))
    return denoise, exact


@pytest.mark.parametrize(
    "label, fn",
    [("dpmpp_3m", dpmpp_3m), ("unipc(max_order=3)", functools.partial(unipc, max_order=3))],
)
def test_third_order_multistep_exact_for_quadratic_in_lambda(label: str, fn: Callable) -> None:
    """Once warmed up, a 3rd-order exponential integrator integrates D quadratic in λ exactly.

    Two tiny warm-up steps (h = 1e-3: their first/second-order errors are ~1e-7 and then damped by
    e^{−4.6}) followed by one long step (h ≈ 4.6).  This pins the weight of the D'' term directly:
    k-diffusion's halved weight (kdiffusion_compat=True) is off by O(1).
    """
    sigmas = [10.0, 10.0 * math.exp(-1e-3), 10.0 * math.exp(-2e-3), 0.1]
    denoise, exact = _poly_lambda_case([0.3, -0.7, 0.25], sigmas, x0=30.0)
    x0 = torch.full((1, 1, 1, 1), 30.0, dtype=torch.float64)
    err = abs(fn(denoise, x0, sigmas).item() - exact)
    assert err < 1e-5, (label, err)
    if label == "dpmpp_3m":
        err_kd = abs(dpmpp_3m(denoise, x0, sigmas, kdiffusion_compat=True).item() - exact)
        assert err_kd > 0.1, err_kd


# ----------------------------------------------------------------------------------------------
# Exact NFE and the registry


@pytest.mark.parametrize("name", list(SOLVERS))
def test_exact_nfe(name: str) -> None:
    spec = SOLVERS[name]
    lat = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for nfe in range(1, 13):
        if not spec.valid_nfe(nfe):
            continue
        den = CountingDenoiser()
        out = solve(name, den, lat, nfe, sigma_max=10.0)
        assert len(den.sigmas) == nfe, (name, nfe, den.sigmas)
        assert out.dtype == torch.float64 and out.shape == lat.shape
        steps = spec.steps_for_nfe(nfe)
        assert spec.nfe_for_steps(steps) == nfe
        assert set(den.sigmas) <= set(edm_sigmas(steps, sigma_max=10.0).tolist()[:-1])
        assert den.sigmas[0] == float(edm_sigmas(steps, sigma_max=10.0)[0]) and 0.0 not in den.sigmas


def test_nfe_bookkeeping() -> None:
    assert [SOLVERS["heun"].valid_nfe(n) for n in range(0, 6)] == [False, True, False, True, False, True]
    assert SOLVERS["heun"].steps_for_nfe(1) == 1 and SOLVERS["heun"].steps_for_nfe(9) == 5
    assert SOLVERS["heun"].nfe_for_steps(5) == 9
    for name in ("euler", "dpmpp_2m", "dpmpp_3m", "ipndm", "unipc"):
        assert SOLVERS[name].steps_for_nfe(7) == 7 and SOLVERS[name].valid_nfe(1)
        assert not SOLVERS[name].valid_nfe(0)
        with pytest.raises(SolverError, match="NFE >= 1"):
            SOLVERS[name].steps_for_nfe(0)
    assert not SOLVERS["euler"].valid_nfe(2.0) and not SOLVERS["euler"].valid_nfe(True)
    with pytest.raises(SolverError):
        SOLVERS["euler"].nfe_for_steps(0)


def test_heun_even_nfe_names_both_neighbours() -> None:
    with pytest.raises(SolverError) as err:
        SOLVERS["heun"].steps_for_nfe(10)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == "heun needs an odd NFE (2·steps − 1); nearest valid: 9 or 11"
    with pytest.raises(SolverError, match="nearest valid: 1 or 3"):
        solve("heun", CountingDenoiser(), torch.zeros(1, 1, 1, 1), 2)


def test_unknown_solver() -> None:
    with pytest.raises(SolverError) as err:
        get_solver("dpm++2m")
    assert isinstance(err.value, ValueError)
    for name in SOLVERS:
        assert name in str(err.value)
    with pytest.raises(SolverError):
        solve("nope", CountingDenoiser(), torch.zeros(1, 1, 1, 1), 3)


def test_solve_checks_given_sigmas() -> None:
    lat = torch.zeros(1, 1, 1, 1)
    den = CountingDenoiser()
    sig = edm_sigmas(5, time_exponent=3.0)
    solve("heun", den, lat, 9, sigmas=sig)
    assert len(den.sigmas) == 9
    with pytest.raises(SolverError, match="needs 5 entries"):
        solve("euler", den, lat, 4, sigmas=sig)
    with pytest.raises(SolverError, match="end in 0"):
        solve("euler", den, lat, 4, sigmas=[4.0, 3.0, 2.0, 1.0, 0.5])


def test_input_validation() -> None:
    den = CountingDenoiser()
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    for bad in ([1.0, 2.0, 0.0], [1.0, 0.0, 0.0], [1.0], [1.0, -0.5], [float("nan"), 0.0]):
        with pytest.raises(SolverError):
            euler(den, x, bad)
    with pytest.raises(SolverError, match="float64"):
        heun(den, x.float(), [1.0, 0.0])
    with pytest.raises(SolverError, match="shape"):
        euler(lambda x, s: x[0], torch.zeros(2, 1, 1, 1, dtype=torch.float64), [1.0, 0.0])
    with pytest.raises(SolverError):
        ipndm(den, x, [1.0, 0.0], max_order=5)
    with pytest.raises(SolverError):
        unipc(den, x, [1.0, 0.0], max_order=4)


def test_step_to_zero_is_the_denoised_sample() -> None:
    """One step σ_max → 0 is x ← D(x; σ_max) for every solver (exactly so for the data-prediction
    ones; Euler-type ones up to rounding of x + (0 − σ)(x − D)/σ)."""
    gauss = Gaussian.make(0.5, 1.0)
    lat = gauss.latents()
    expected = gauss.denoise(lat * 80.0, 80.0)
    for name in SOLVERS:
        out = solve(name, gauss.denoise, lat, 1)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_sequence_types_and_float32_denoiser() -> None:
    """Tensor and list σ sequences give identical results; a float32 denoiser output is upcast."""
    gauss = Gaussian.make(0.5, 1.0)
    x0 = gauss.latents() * 20.0
    sig = edm_sigmas(6, sigma_max=20.0)

    def den32(x: Tensor, sigma: float) -> Tensor:
        return gauss.denoise(x, sigma).float()

    for name, spec in SOLVERS.items():
        a = spec.fn(den32, x0, sig)
        b = spec.fn(den32, x0, sig.tolist())
        assert a.dtype == torch.float64
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------
# EDM equivalence


def _numpy_edm_sigmas(n: int, sigma_min: float, sigma_max: float, time_exponent: float) -> np.ndarray:
    if n == 1:
        return np.array([sigma_max, 0.0])
    i = np.arange(n, dtype=np.float64)
    a, b = sigma_max ** (1.0 / time_exponent), sigma_min ** (1.0 / time_exponent)
    t = (a + i / (n - 1) * (b - a)) ** time_exponent
    return np.append(t, 0.0)


@pytest.mark.parametrize(
    "n, sigma_min, sigma_max, time_exponent",
    [(1, 0.002, 80.0, 7.0), (2, 0.002, 80.0, 7.0), (5, 0.002, 80.0, 7.0), (18, 0.002, 80.0, 7.0),
     (10, 0.01, 10.0, 1.0), (7, 0.05, 3.0, 2.5)],
)
def test_edm_sigmas_matches_numpy(n: int, sigma_min: float, sigma_max: float, time_exponent: float) -> None:
    got = edm_sigmas(n, sigma_min, sigma_max, time_exponent)
    assert got.dtype == torch.float64 and got.shape == (n + 1,)
    ref = _numpy_edm_sigmas(n, sigma_min, sigma_max, time_exponent)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-14, atol=0)
    # Like EDM's, the end points go through (σ^(1/ρ))^ρ and the interpolation, so they equal
    # σ_max / σ_min only up to rounding relative to σ_max.
    assert math.isclose(float(got[0]), sigma_max, rel_tol=1e-14) and got[-1] == 0.0
    assert math.isclose(float(got[-2]), sigma_max if n == 1 else sigma_min, rel_tol=0, abs_tol=1e-14 * sigma_max)
    assert bool((got[1:] < got[:-1]).all())


def test_edm_sigmas_validation() -> None:
    for kwargs in (
        dict(num_steps=0), dict(num_steps=2.5), dict(num_steps=True), dict(num_steps=4, sigma_min=0.0),
        dict(num_steps=4, sigma_min=1.0, sigma_max=1.0), dict(num_steps=4, time_exponent=0.0),
        dict(num_steps=4, sigma_max=float("inf")),
    ):
        with pytest.raises(ValueError):
            edm_sigmas(**kwargs)


def _toy_net(x: Tensor, sigma: float) -> Tensor:
    """Nonlinear in x and σ, evaluated in float32 like a network."""
    x32 = x.float()
    c = 1.0 / math.sqrt(sigma**2 + 0.25)
    return (0.6 * torch.tanh(x32 * c) + 0.3 * torch.sin(1.7 * x32 * c) * math.exp(-sigma)).float()


def _edm_heun_reference(net: Callable, latents: Tensor, t_steps: Tensor) -> Tensor:
    """Straight transcription of the description of EDM's deterministic sampler: x_0 = latents·t_0
    in float64; each step Euler to t_{i+1} with d = (x − D(x; t_i))/t_i, and for every step except
    the last a second evaluation at t_{i+1} and the average of the two slopes."""
    num_steps = len(t_steps) - 1
    x = latents.to(torch.float64) * t_steps[0]
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        d_cur = (x - net(x, float(t_cur)).to(torch.float64)) / t_cur
        x_next = x + (t_next - t_cur) * d_cur
        if i < num_steps - 1:
            d_prime = (x_next - net(x_next, float(t_next)).to(torch.float64)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    return x


@pytest.mark.parametrize("nfe, time_exponent", [(1, 7.0), (3, 7.0), (9, 7.0), (35, 7.0), (11, 3.0)])
def test_heun_matches_edm_reference(nfe: int, time_exponent: float) -> None:
    lat = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(nfe))
    steps = SOLVERS["heun"].steps_for_nfe(nfe)
    t_steps = edm_sigmas(steps, time_exponent=time_exponent)
    ref = _edm_heun_reference(_toy_net, lat, t_steps)
    out = solve("heun", _toy_net, lat, nfe, time_exponent=time_exponent)
    # Same float64 operations in the same order (0.5·d + 0.5·d' equals (d + d')/2 exactly in
    # binary floating point, and a python float σ multiplies like EDM's 0-dim float64 tensor).
    assert torch.equal(out, ref), (out - ref).abs().max()


# ----------------------------------------------------------------------------------------------
# Script entry: table of measured orders


def main() -> None:
    print(f"{'solver':<24} {'expected':>8} {'measured':>9}   errors at N = steps")
    for case in ORDER_CASES:
        errors, slope = measure_order(case)
        grid = (
            f"σ {case.sigma_max:g}→{case.sigma_min:g}, time_exponent {case.time_exponent:g}, "
            f"data std {case.std[0]:g}–{case.std[1]:g}"
        )
        errs = ", ".join(f"{n}: {e:.2e}" for n, e in zip(case.steps, errors))
        print(f"{case.label:<24} {case.order:>8} {slope:>9.2f}   {errs}  ({grid})")
    kd = OrderCase("dpmpp_3m (k-diffusion)", functools.partial(dpmpp_3m, kdiffusion_compat=True), 2)
    errors, slope = measure_order(kd)  # informational: k-diffusion's halved D'' term
    errs = ", ".join(f"{n}: {e:.2e}" for n, e in zip(kd.steps, errors))
    print(f"{kd.label:<24} {'(2)':>8} {slope:>9.2f}   {errs}  (kdiffusion_compat=True, same grid)")
    for k in (1, 2, 3, 4):
        errors, slope = measure_ipndm_quadrature(k)
        errs = ", ".join(f"{n}: {e:.2e}" for n, e in zip(QUAD_STEPS, errors))
        label = f"ipndm (max_order={k})"
        print(f"{label:<24} {k:>8} {slope:>9.2f}   {errs}  (uniform σ grid, quadrature dx/dσ = q(σ))")


if __name__ == "__main__":
    main()
