"""UniPC and iPNDM against the exact probability-flow map of Gaussian data; the `ts`, `x_init`
and `return_path` API of the fixed-step samplers.

On Gaussian data N(mu, diag s^2) the probability-flow ODE maps x_a at time a to
x_b = alpha_b mu + sqrt(alpha_b^2 s^2 + sigma_b^2) (x_a - alpha_a mu) / sqrt(alpha_a^2 s^2 +
sigma_a^2) (an affine map), so a solver's own error is measured exactly and its order of
convergence is the slope of log error against log NFE.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import analytic, sde_lib
from score_sde.sampling import get_sampler

MU, S = np.array([0.7, -0.4]), np.array([0.5, 1.0])
N = 256
VP, EPS = sde_lib.VPSDE(), 1e-3


def gaussian_flow(sde, t_start: float, eps: float):
    """(score_fn, x at t_start, the exact flow of it at eps) for 2-D data N(MU, diag S^2)."""
    score_fn = analytic.GaussianMixture.gaussian(MU, np.diag(S**2)).perturbed_score_fn(sde)
    (a_s, s_s), (a_e, s_e) = ((float(v[0]) for v in sde.marginal_coeffs(jnp.full(1, t)))
                              for t in (t_start, eps))
    z = np.random.default_rng(0).normal(size=(N, 2))
    x_start = a_s * MU + np.sqrt(a_s**2 * S**2 + s_s**2) * z
    exact = a_e * MU + np.sqrt(a_e**2 * S**2 + s_e**2) * z
    return score_fn, jnp.asarray(x_start, jnp.float32), exact


def times_uniform_in(sde, variable: str, t_start: float, eps: float, n: int) -> np.ndarray:
    """n + 1 times from t_start to eps, equally spaced in lambda (log-SNR) or rho = sigma/alpha."""
    lam = np.asarray(sde.log_snr(jnp.asarray([t_start, eps])), np.float64)
    if variable == "lambda":
        pts = np.linspace(lam[0], lam[1], n + 1)
    else:
        pts = -np.log(np.linspace(np.exp(-lam[0]), np.exp(-lam[1]), n + 1))
    ts = np.asarray(sde.t_from_log_snr(jnp.asarray(pts, jnp.float32)), np.float64)
    ts[0], ts[-1] = t_start, eps
    return ts


def errors(name, nfes, variable, t_start, **options) -> np.ndarray:
    """RMS error of `name` at each NFE on the grid uniform in `variable`, from t_start."""
    score_fn, x_start, exact = gaussian_flow(VP, t_start, EPS)
    out = []
    for nfe in nfes:
        ts = times_uniform_in(VP, variable, t_start, EPS, nfe)
        sample = get_sampler(name, VP, x_start.shape, eps=EPS, ts=ts, **options)
        x, n = jax.jit(lambda r, x0, s=sample: s(r, score_fn, x_init=x0))(
            jax.random.PRNGKey(0), x_start)
        assert int(n) == nfe
        out.append(float(np.sqrt(np.mean((np.asarray(x) - exact) ** 2))))
    return np.asarray(out)


def slopes(errs, nfes) -> np.ndarray:
    return np.log(errs[:-1] / errs[1:]) / np.log(np.asarray(nfes[1:]) / np.asarray(nfes[:-1]))


# --- UniPC: UniP-p + UniC is of order p + 1 ---------------------------------------------------

# From T on a grid uniform in lambda, without lower_order_final (its last first-order step would
# cap the order at 2). Measured RMS errors (VP, 256 samples) and slopes:
#   p=1 bh1 @16/32/64: 2.5e-2 5.4e-3 1.2e-3 (2.2, 2.1)   bh2: 4.9e-2 1.3e-2 3.3e-3 (1.9, 2.0)
#   p=2 bh1 @16/32/64: 3.1e-2 3.5e-3 4.2e-4 (3.1, 3.1)   bh2: 1.2e-2 1.7e-3 2.2e-4 (2.8, 3.0)
#   p=3 bh1 = bh2 @8/16/32: 6.3e-2 2.0e-3 8.9e-5 (5.0, 4.5) (beyond 32 the float32 floor, ~1e-5)
# B(h) only enters through the fixed rho = 1/2 of UniP-2 and UniC-1, so at p = 3 the variants
# differ in the warm-start steps only. Tolerance: each slope >= p + 1 - 0.4.
UNIPC_NFES = {1: (16, 32, 64), 2: (16, 32, 64), 3: (8, 16, 32)}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_converges_at_order_p_plus_one(order, variant):
    nfes = UNIPC_NFES[order]
    errs = errors("unipc", nfes, "lambda", VP.T, order=order, variant=variant,
                  lower_order_final=False)
    assert np.all(slopes(errs, nfes) >= order + 1 - 0.4), errs


def test_unipc3_converges_at_order_four():
    # The fast member of the test above (measured slope 5.0 at 8 -> 16).
    nfes = (8, 16)
    errs = errors("unipc", nfes, "lambda", VP.T, order=3, lower_order_final=False)
    assert slopes(errs, nfes)[0] >= 3.6, errs


# --- iPNDM: Adams-Bashforth steps of order p in rho = sigma / alpha ---------------------------

# The published weights are those of equal steps, so the order shows on a grid uniform in rho
# (on a non-uniform grid they are of order 2: measured slope 2.0 for p = 2, 3, 4 on 'quadratic').
# From rho = 10 (x_init: the data perturbed there; a uniform rho grid from VP's rho_T = 156 would
# need hundreds of steps to resolve the data's scale), to eps. Measured RMS errors @10/20/40/80:
#   p=1: slope 1.0;  p=2: slope 1.9-2.0
#   p=3: 1.8e-1 5.6e-2 9.7e-3 9.0e-4 (1.7, 2.5, 3.4)
#   p=4: 1.5e-1 3.8e-2 2.6e-3 4.6e-4 (2.0, 3.9, 2.5)
# At these NFE the high orders are not yet in their asymptotic range (float64 numpy gives the
# same numbers: the error terms of the first-order warm start and of AB-p partly cancel), so
# the test checks the fitted slope over 20 -> 80 against p - 0.9 for p >= 3 and p - 0.3 below.
IPNDM_NFES = (20, 40, 80)


def rho_start_time(rho: float) -> float:
    return float(VP.t_from_log_snr(jnp.asarray([-np.log(rho)]))[0])


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_converges_at_its_order_on_a_uniform_rho_grid(order):
    errs = errors("ipndm", IPNDM_NFES, "rho", rho_start_time(10.0), order=order)
    fitted = np.polyfit(np.log(IPNDM_NFES), -np.log(errs), 1)[0]
    assert fitted >= order - (0.9 if order >= 3 else 0.3), (errs, fitted)


def test_ipndm4_converges_faster_than_second_order():
    nfes = (20, 80)
    errs = errors("ipndm", nfes, "rho", rho_start_time(10.0), order=4)
    assert slopes(errs, nfes)[0] >= 3.1, errs
