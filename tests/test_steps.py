"""Searched σ steps: the warp, every solver on uneven steps, exact NFE, and the step parameters.

A steps space moves where the solver's evaluations fall; the solvers must then be right on any
descending σ list, not only on EDM's grid. Two independent checks: (1) step-by-step references
written here from k-diffusion's published update formulas (euler, heun, dpmpp_2m, dpmpp_3m in its
compat weighting, ipndm), run on random uneven lists with a nonlinear denoiser; (2) measured
convergence orders on warped grids for every solver (unipc has no short reference formula).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from skipsearch.parameters import STEP_PARAMS, default_step_params, rho_from_params, split_space, steps_from_params
from skipsearch.solvers import SOLVERS, dpmpp_2m, dpmpp_3m, euler, get_solver, heun, ipndm, solve
from skipsearch.steps import (
    EDM_SIGMA_MAX,
    EDM_SIGMA_MIN,
    MAX_NFE,
    MAX_WARP,
    TimeSteps,
    edm_sigma_list,
    edm_warped_sigma_list,
    warp_positions,
)
from skipsearch.errors import ScheduleError, SolverError

from test_solvers import ORDER_OVERSHOOT, ORDER_TOL, CountingDenoiser, Gaussian

# ----------------------------------------------------------------------------------------------
# The warp


@pytest.mark.parametrize("warp", [(1.0, 0.0), (0.0, 1.0), (-1.5, 2.0), (MAX_WARP, -MAX_WARP)])
def test_warp_is_monotone_and_keeps_both_ends(warp: tuple[float, float]) -> None:
    u = [i / 200 for i in range(201)]
    w = warp_positions(u, *warp)
    assert w[0] == 0.0 and w[-1] == 1.0
    assert all(b > a for a, b in zip(w, w[1:])), "a warp must keep the steps in order"
    sig = edm_warped_sigma_list(12, EDM_SIGMA_MIN, EDM_SIGMA_MAX, 7.0, warp)
    assert sig[0] == EDM_SIGMA_MAX and math.isclose(sig[-2], EDM_SIGMA_MIN) and sig[-1] == 0.0
    assert all(b < a for a, b in zip(sig, sig[1:]))


@pytest.mark.parametrize("exponent", [1.0, 7.0, 100.0])
def test_every_allowed_warp_gives_distinct_steps_up_to_the_largest_nfe(exponent: float) -> None:
    """The warp's extremes at every step count a study allows keep the σ list strictly decreasing
    in float64 (a solver divides by log(σ/σ_next)); the plain Kumaraswamy formula did not."""
    corners = [(x, y) for x in (-MAX_WARP, 0.0, MAX_WARP) for y in (-MAX_WARP, 0.0, MAX_WARP)]
    for n in (3, 10, 50, 200, MAX_NFE):
        for warp in corners:
            s = edm_warped_sigma_list(n, EDM_SIGMA_MIN, EDM_SIGMA_MAX, exponent, warp)
            assert all(b < a for a, b in zip(s, s[1:])), (n, warp)
    with pytest.raises(SolverError, match="same σ"):  # beyond the allowed range the guard says so
        edm_warped_sigma_list(MAX_NFE, EDM_SIGMA_MIN, EDM_SIGMA_MAX, 7.0, (4.0, -4.0))


def test_no_warp_is_edm_and_each_parameter_moves_steps_its_way() -> None:
    edm = edm_sigma_list(10)
    assert edm_warped_sigma_list(10, EDM_SIGMA_MIN, EDM_SIGMA_MAX, 7.0) == edm
    assert TimeSteps().sigma_list(10) == edm and TimeSteps().is_default
    high = edm_warped_sigma_list(10, EDM_SIGMA_MIN, EDM_SIGMA_MAX, 7.0, (1.0, 0.0))
    low = edm_warped_sigma_list(10, EDM_SIGMA_MIN, EDM_SIGMA_MAX, 7.0, (0.0, 1.0))
    # crowd_high > 0 gathers steps near σ_max: every interior step sits higher than EDM's
    assert all(h > e for h, e in zip(high[1:-2], edm[1:-2]))
    # crowd_low > 0 gathers steps near σ_min: every interior step sits lower
    assert all(lo < e for lo, e in zip(low[1:-2], edm[1:-2]))


def test_warp_bounds_are_enforced() -> None:
    with pytest.raises(SolverError, match="within"):
        TimeSteps(warp=(MAX_WARP + 0.5, 0.0))
    with pytest.raises(SolverError, match="within"):
        TimeSteps(warp=(float("nan"), 0.0))


def test_short_lists_ignore_the_warp() -> None:
    """One or two steps have no interior step to move: the warp cannot change them."""
    for n in (1, 2):
        assert TimeSteps(warp=(2.0, -2.0)).sigma_list(n) == edm_sigma_list(n)


# ----------------------------------------------------------------------------------------------
# Step parameters


def test_step_parameters_round_trip() -> None:
    assert split_space("steps") == (None, True)
    assert split_space("linear+steps") == ("linear", True)
    assert split_space("stages+steps") == ("stages", True)
    assert split_space("linear") == ("linear", False)
    with pytest.raises(ScheduleError, match="unknown search space"):
        split_space("window+steps")
    params = {"steps.exponent": 4.0, "steps.crowd_high": 0.5, "steps.crowd_low": -0.25}
    steps = steps_from_params("steps", params)
    assert (steps.time_exponent, steps.warp) == (4.0, (0.5, -0.25))
    assert steps_from_params("linear", params) == TimeSteps(), "a ρ-only space keeps the study's steps"
    assert steps_from_params("steps", default_step_params()).sigma_list(9) == edm_sigma_list(9)
    assert set(default_step_params()) == set(STEP_PARAMS)
    rho, window = rho_from_params("steps", params, [32, 16, 8])
    assert rho == [1.0, 1.0, 1.0] and window is None


# ----------------------------------------------------------------------------------------------
# References from k-diffusion's update formulas (written out here, step by step)

Den = Callable[[Tensor, float], Tensor]


def ref_euler(den: Den, x: Tensor, s: list[float]) -> Tensor:
    for i in range(len(s) - 1):
        d = (x - den(x, s[i])) / s[i]
        x = x + d * (s[i + 1] - s[i])
    return x


def ref_heun(den: Den, x: Tensor, s: list[float]) -> Tensor:
    for i in range(len(s) - 1):
        d = (x - den(x, s[i])) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = (x2 - den(x2, s[i + 1])) / s[i + 1]
            x = x + (d + d2) / 2 * dt
    return x


def ref_dpmpp_2m(den: Den, x: Tensor, s: list[float]) -> Tensor:
    t = [-math.log(v) if v > 0 else math.inf for v in s]
    old = None
    for i in range(len(s) - 1):
        d = den(x, s[i])
        h = t[i + 1] - t[i]
        if old is None or s[i + 1] == 0:
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * d
        else:
            r = (t[i] - t[i - 1]) / h
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old)
        old = d
    return x


def ref_dpmpp_3m_kdiffusion(den: Den, x: Tensor, s: list[float]) -> Tensor:
    """sample_dpmpp_3m_sde with eta = 0."""
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i in range(len(s) - 1):
        d = den(x, s[i])
        if s[i + 1] == 0:
            x = d
            continue
        h = math.log(s[i]) - math.log(s[i + 1])
        x = math.exp(-h) * x + (-math.expm1(-h)) * d
        phi_2 = math.expm1(-h) / h + 1
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (d - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi_2 * d1 - (phi_2 / h - 0.5) * d2
        elif h_1 is not None:
            x = x + phi_2 * (d - d_1) / (h_1 / h)
        d_1, d_2, h_1, h_2 = d, d_1, h, h_1
    return x


def ref_ipndm(den: Den, x: Tensor, s: list[float]) -> Tensor:
    buf: list[Tensor] = []
    for i in range(len(s) - 1):
        d = (x - den(x, s[i])) / s[i]
        order = min(4, i + 1)
        if order == 1:
            slope = d
        elif order == 2:
            slope = (3 * d - buf[-1]) / 2
        elif order == 3:
            slope = (23 * d - 16 * buf[-1] + 5 * buf[-2]) / 12
        else:
            slope = (55 * d - 59 * buf[-1] + 37 * buf[-2] - 9 * buf[-3]) / 24
        x = x + slope * (s[i + 1] - s[i])
        buf = (buf + [d])[-3:]
    return x


REFERENCES = {
    "euler": (euler, ref_euler),
    "heun": (heun, ref_heun),
    "dpmpp_2m": (dpmpp_2m, ref_dpmpp_2m),
    "dpmpp_3m (k-diffusion weights)": (functools.partial(dpmpp_3m, kdiffusion_compat=True), ref_dpmpp_3m_kdiffusion),
    "ipndm": (ipndm, ref_ipndm),
}


def nonlinear_denoiser(x: Tensor, sigma: float) -> Tensor:
    """Not a Gaussian's: D depends nonlinearly on x and σ, so no term of an update can hide."""
    return torch.tanh(x / (1.0 + sigma)) * (1.0 + 0.3 * math.sin(3.0 * math.log(sigma)))


def uneven_sigmas(seed: int, n: int) -> list[float]:
    """Random descending σ from 80 to ~0.002 with step ratios varying by 20×, then 0."""
    rng = random.Random(seed)
    logs = sorted((rng.uniform(math.log(0.002), math.log(80.0)) for _ in range(n - 2)), reverse=True)
    return [80.0] + [math.exp(v) for v in logs] + [0.002, 0.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(REFERENCES))
def test_solvers_match_kdiffusion_formulas_on_uneven_steps(name: str, seed: int) -> None:
    ours, ref = REFERENCES[name]
    s = uneven_sigmas(seed, 9)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 80.0
    got, want = ours(nonlinear_denoiser, x0, s), ref(nonlinear_denoiser, x0, s)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), (name, (got - want).abs().max().item())
    # and the warp's own lists
    w = TimeSteps(time_exponent=3.0, warp=(1.2, -0.8)).sigma_list(7)
    assert torch.allclose(ours(nonlinear_denoiser, x0, w), ref(nonlinear_denoiser, x0, w), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Convergence orders on warped grids (every solver, unipc included)

# Orders as on EDM's grid (test_solvers): a warp with crowds ≥ 0 is a smooth map of a uniform grid,
# so each method keeps its design order (ipndm: 2 on any non-uniform grid); N = 64..256 because the
# warped grids reach the asymptotic regime later than EDM's (dpmpp_3m: 2.5–2.7 over 32..128).
# A negative crowd gives the map an infinite slope at that end: steps there shrink like N^(−2^crowd),
# slower than 1/N, which lowers every method's measured order toward 1 (a property of the grid,
# not of a solver; the reference test above pins the formulas on such lists exactly). Those grids
# are asserted to converge at first order at least.
WARPED_ORDERS = {"euler": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3, "ipndm": 2, "unipc": 3}
SMOOTH_WARPS = [(1.0, 0.0, 7.0), (0.0, 1.0, 3.0), (1.0, 1.0, 7.0), (0.5, 0.5, 12.0)]
STEEP_WARPS = [(1.0, -1.0, 7.0), (-1.0, 1.0, 3.0), (-2.0, 0.0, 7.0)]
ORDER_STEPS = (64, 128, 256)


def measured_order(fn: Callable[..., Tensor], warp: tuple[float, float], exponent: float,
                   steps: tuple[int, ...] = ORDER_STEPS) -> tuple[list[float], float]:
    gauss = Gaussian.make(0.2, 1.5)
    lat = gauss.latents()
    errors = []
    for n in steps:
        s = edm_warped_sigma_list(n + 1, EDM_SIGMA_MIN, EDM_SIGMA_MAX, exponent, warp)[:-1]
        x0 = lat * EDM_SIGMA_MAX
        errors.append((fn(gauss.denoise, x0, s) - gauss.exact(x0, EDM_SIGMA_MAX, EDM_SIGMA_MIN)).abs().max().item())
    return errors, float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


def _ids(warps: list[tuple[float, float, float]]) -> list[str]:
    return [f"warp{w[0]:+g}{w[1]:+g}-exp{w[2]:g}" for w in warps]


@pytest.mark.parametrize("warp", SMOOTH_WARPS, ids=_ids(SMOOTH_WARPS))
@pytest.mark.parametrize("name", list(WARPED_ORDERS))
def test_convergence_order_on_warped_steps(name: str, warp: tuple[float, float, float]) -> None:
    errors, slope = measured_order(SOLVERS[name].fn, warp[:2], warp[2])
    order = WARPED_ORDERS[name]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert order - ORDER_TOL <= slope <= order + ORDER_OVERSHOOT, (name, warp, slope, errors)


@pytest.mark.parametrize("warp", STEEP_WARPS, ids=_ids(STEEP_WARPS))
@pytest.mark.parametrize("name", list(WARPED_ORDERS))
def test_convergence_on_steep_warps(name: str, warp: tuple[float, float, float]) -> None:
    errors, slope = measured_order(SOLVERS[name].fn, warp[:2], warp[2], steps=(32, 64, 128))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert slope >= 1 - ORDER_TOL, (name, warp, slope, errors)


def test_order_test_catches_a_wrong_coefficient() -> None:
    """The warped-grid order test is not blind: dpmpp_2m with 1/r instead of 1/(2r) falls below 2."""

    def wrong_2m(den: Den, x: Tensor, s: list[float]) -> Tensor:
        old, h_old = None, None
        for i in range(len(s) - 1):
            d = den(x, s[i])
            h = math.log(s[i] / s[i + 1])
            eff = d if old is None else d + (d - old) * (h / h_old)
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * eff
            old, h_old = d, h
        return x

    _, slope = measured_order(wrong_2m, (1.0, 1.0), 7.0)  # 1.21 (the right one: 2.03)
    assert slope < 2 - ORDER_TOL, slope


# ----------------------------------------------------------------------------------------------
# Exact NFE on searched steps


@pytest.mark.parametrize("name", list(SOLVERS))
def test_nfe_exact_on_warped_steps(name: str) -> None:
    spec = get_solver(name)
    lat = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for nfe in range(1, 13):
        if not spec.valid_nfe(nfe):
            continue
        sigmas = TimeSteps(time_exponent=4.0, warp=(0.7, -1.3)).sigma_list(spec.steps_for_nfe(nfe))
        den = CountingDenoiser()
        solve(name, den, lat, nfe, sigmas=sigmas)
        assert len(den.sigmas) == nfe, (name, nfe)
        assert set(den.sigmas) <= set(sigmas), "every evaluation falls on one of the given steps"
