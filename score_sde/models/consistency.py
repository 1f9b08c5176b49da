"""The consistency function of a network: f(x, sigma) = c_skip x + c_out F(c_in x, c_noise).

Consistency models (Song et al. 2023, appendix C; Song & Dhariwal 2023) map any point of a
probability-flow trajectory to its end at sigma_min. The skip and output scalings

    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)
    c_out = (sigma - sigma_min) sd / sqrt(sd^2 + sigma^2)

(sd = sigma_data) make f(x, sigma_min) = x exactly: c_out is the float 0 and c_skip the float 1
at sigma = sigma_min, whatever the network outputs. The network's inputs are EDM's
(c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4, from parameterization.EDM), so a
consistency model has the network of an EDM model and starts from its weights (distillation).
Time is the SDE's time; sigma is its noise level (t itself for the EDM SDE).

A consistency model has no score: `is_consistency_model(config)` says which configs train one
(config.training.objective 'cd' or 'ct'), and the modes that need a score refuse them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sde_lib
from score_sde.models import parameterization as param_lib
from score_sde.models import utils as mutils
from score_sde.sde_lib import batch_mul

Array = jax.Array
ConsistencyFn = Callable[[Array, Array], Array]
OBJECTIVES = ("dsm", "cd", "ct")  # denoising score matching; consistency distillation / training


def objective(config) -> str:
    """config.training.objective ('dsm' when absent), checked."""
    name = str(config.training.get("objective", "dsm") or "dsm").lower()
    if name not in OBJECTIVES:
        raise ValueError(f"config.training.objective={name!r} is not known; choose one of "
                         f"{OBJECTIVES}")
    return name


def is_consistency_model(config) -> bool:
    """Whether `config` trains a consistency model (objective 'cd' or 'ct')."""
    return objective(config) in ("cd", "ct")


def refuse_score_use(config, what: str) -> None:
    """One clear error when `what` (a mode or a sampler) needs the score of a consistency model."""
    if is_consistency_model(config):
        raise ValueError(
            f"{what} needs a score, and this is a consistency model "
            f"(config.training.objective={objective(config)!r}), which has none; sample it with "
            "--config.sampling.method=consistency (modes sample, eval with "
            "eval.enable_loss=False, inpaint, colorize, edit)")


@dataclasses.dataclass(frozen=True)
class Consistency:
    """The consistency parameterisation on an alpha = 1 SDE (EDM's or VE), see the module doc."""

    edm: param_lib.EDM
    sigma_min: float

    def __post_init__(self):
        if not self.sigma_min > 0:
            raise ValueError(f"config.model.sigma_min must be > 0, got {self.sigma_min!r}")

    @property
    def sde(self) -> sde_lib.SDE:
        return self.edm.sde

    def sigma(self, t: Array) -> Array:
        return self.edm.coeffs(t)[1]

    def scalings(self, t: Array) -> tuple[Array, Array]:
        """(c_skip, c_out) at times t (B,)."""
        s, sd = self.sigma(t), self.edm.sigma_data
        shifted = s - self.sigma_min
        c_skip = sd**2 / (shifted**2 + sd**2)
        c_out = shifted * sd * jax.lax.rsqrt(sd**2 + s**2)
        return c_skip, c_out

    def __call__(self, model_fn: mutils.ModelFn, x: Array, t: Array) -> Array:
        """f(x, t) of the raw network `model_fn(x, labels)`."""
        c_skip, c_out = self.scalings(t)
        output = self.edm.network_output(model_fn, x, t)
        return batch_mul(c_skip, x) + batch_mul(c_out, output)


def from_config(config, sde: sde_lib.SDE) -> Consistency:
    """The consistency parameterisation of config.model (sigma_min, sigma_data) on `sde`."""
    m = config.model
    if not isinstance(sde, sde_lib.EDMSDE):
        raise ValueError("a consistency model (config.training.objective 'cd' or 'ct') lives on "
                         f"EDM's SDE: set config.training.sde='edm' (got {type(sde).__name__})")
    edm = param_lib.EDM(sde, float(m.get("sigma_data", 0.5)))
    param_lib._check_edm_network(m)
    return Consistency(edm, float(m.sigma_min))


def get_consistency_fn(param: Consistency, model: nn.Module, params, train: bool = False,
                       rng: Array | None = None, labels: Array | None = None) -> ConsistencyFn:
    """`f(x, t) -> x at sigma_min` of a network: what the consistency sampler takes in place of
    a score function. `labels` (B,) go to class-conditional networks; `rng` drives dropout."""
    model_fn = mutils.get_model_fn(model, params, train=train, rng=rng, y=labels)
    return lambda x, t: param(model_fn, x, t)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """The n noise levels sigma_1 = sigma_min < ... < sigma_n = sigma_max of Karras et al.

    sigma_i = (sigma_min^(1/rho) + (i - 1) / (n - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho,
    the discretisation of both consistency papers (float64, ascending).
    """
    if n < 2:
        raise ValueError(f"a consistency discretisation needs N >= 2 levels, got {n}")
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (lo + ramp * (hi - lo)) ** rho
    sig[0], sig[-1] = sigma_min, sigma_max
    return sig


def karras_sigmas_traced(n: Array, size: int, sigma_min: float, sigma_max: float,
                         rho: float = 7.0) -> Array:
    """`karras_sigmas(n, ...)` for a traced n (the CT curriculum), padded to `size` entries
    (entries at i >= n repeat sigma_max)."""
    i = jnp.minimum(jnp.arange(size, dtype=jnp.float32), n - 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (lo + i / (n - 1) * (hi - lo)) ** rho
    return jnp.where(i == 0, sigma_min, jnp.where(i == n - 1, sigma_max, sig))
