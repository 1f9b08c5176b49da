"""Forward SDEs of score-based generative models (Song et al., ICLR 2021).

Every SDE maps data x_0 to a Gaussian marginal x_t = alpha(t) * x_0 + sigma(t) * eps.
Conventions: `t` is a per-example vector of shape (B,); every result broadcasts over the
trailing (data) dims of `x`. SDE objects are frozen dataclasses: hashable, immutable, and
safe to close over (or pass as static arguments) under `jax.jit`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_mul(a: Array, x: Array) -> Array:
    """Multiply per-example values `a` of shape (B,) into `x` of shape (B, ...)."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def _sum_except_batch(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _standard_normal_logp(z: Array, scale: float) -> Array:
    d = np.prod(z.shape[1:])
    return -0.5 * d * np.log(2 * np.pi * scale**2) - _sum_except_batch(z**2) / (2 * scale**2)


class SDE(abc.ABC):
    """dx = f(x, t) dt + g(t) dw on t in [0, T], with N discretisation steps."""

    N: int

    @property
    def T(self) -> float:
        return 1.0

    @abc.abstractmethod
    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift f(x, t) (shape of x) and diffusion g(t) (shape (B,))."""

    @abc.abstractmethod
    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """alpha(t), sigma(t) of the perturbation kernel p_0t(x_t | x_0) = N(alpha x_0, sigma^2)."""

    @abc.abstractmethod
    def t_from_log_snr(self, log_snr: Array) -> Array:
        """Inverse of lambda(t) = log(alpha(t) / sigma(t)), used to build solver time grids."""

    def t_from_sigma(self, sigma: Array) -> Array:
        """The time whose noise level sigma(t) / alpha(t) is `sigma` (EDM's sigma)."""
        return self.t_from_log_snr(-jnp.log(sigma))

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean (shape of x) and std (shape (B,)) of p_0t(x_t | x_0 = x)."""
        alpha, sigma = self.marginal_coeffs(t)
        return batch_mul(alpha, x), sigma

    def log_snr(self, t: Array) -> Array:
        alpha, sigma = self.marginal_coeffs(t)
        return jnp.log(alpha) - jnp.log(sigma)

    @abc.abstractmethod
    def prior_sampling(self, rng: Array, shape: tuple[int, ...]) -> Array:
        """A sample of the prior p_T, of the given (batched) shape."""

    @abc.abstractmethod
    def prior_logp(self, z: Array) -> Array:
        """log p_T(z) per example, shape (B,)."""

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """x_{i+1} = x_i + f_i + G_i z_i; Euler-Maruyama unless a subclass knows better."""
        dt = 1.0 / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * np.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or the probability-flow ODE) driven by `score_fn`."""
        return ReverseSDE(self, score_fn, probability_flow)

    def discrete_index(self, t: Array) -> Array:
        """Index of the discrete (DDPM/SMLD) noise level that continuous time t falls on.

        Truncates like the published code (so a grid linspace(T, eps, N) visits N-1, ..., 0), with a
        small tolerance so that float32 round-off just below an integer does not drop a level.
        """
        return jnp.floor(t * (self.N - 1) / self.T + 1e-4).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """dx = [f - g^2 score] dt + g dw_bar, or the ODE dx = [f - g^2 score / 2] dt."""

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def N(self) -> int:
        return self.forward.N

    @property
    def _weight(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - batch_mul(diffusion**2 * self._weight, score)
        return drift, jnp.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        f, G = self.forward.discretize(x, t)
        rev_f = f - batch_mul(G**2 * self._weight, self.score_fn(x, t))
        return rev_f, jnp.zeros_like(G) if self.probability_flow else G


def _check_positive(name: str, **values: float) -> None:
    for field, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}: {field} must be > 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
    """Variance-preserving SDE; its discretisation is DDPM's Markov chain."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def __post_init__(self):
        _check_positive("VPSDE", beta_min=self.beta_min, beta_max=self.beta_max, N=self.N)
        if self.beta_max < self.beta_min:
            raise ValueError(f"VPSDE: beta_max ({self.beta_max}) < beta_min ({self.beta_min})")

    @property
    def discrete_betas(self) -> np.ndarray:
        return np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.discrete_betas)

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_mean_coeff(self, t: Array) -> Array:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sde(self, x, t):
        beta_t = self.beta(t)
        return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t)

    def marginal_coeffs(self, t):
        log_alpha = self._log_mean_coeff(t)
        return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))

    def t_from_log_snr(self, log_snr):
        # alpha^2 = sigmoid(2 lambda); solve the quadratic log alpha(t) = 0.5 log sigmoid(2 lambda).
        log_alpha = 0.5 * jax.nn.log_sigmoid(2.0 * log_snr)
        return _solve_log_mean_coeff(self.beta_min, self.beta_max, log_alpha)

    def prior_sampling(self, rng, shape):
        return jax.random.normal(rng, shape)

    def prior_logp(self, z):
        return _standard_normal_logp(z, 1.0)

    def discretize(self, x, t):
        """DDPM: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z."""
        idx = self.discrete_index(t)
        beta = jnp.asarray(self.discrete_betas, jnp.float32)[idx]
        f = batch_mul(jnp.sqrt(1.0 - beta), x) - x
        return f, jnp.sqrt(beta)


def _solve_log_mean_coeff(beta_min: float, beta_max: float, log_alpha: Array) -> Array:
    """t >= 0 with -0.25 t^2 (b1 - b0) - 0.5 t b0 = log_alpha."""
    a = 0.25 * (beta_max - beta_min)
    b = 0.5 * beta_min
    if a == 0:
        return -log_alpha / b
    # Numerically stable root of a t^2 + b t + log_alpha = 0.
    return 2.0 * (-log_alpha) / (b + jnp.sqrt(b**2 - 4.0 * a * log_alpha))


@dataclasses.dataclass(frozen=True)
class subVPSDE(SDE):
    """Sub-VP SDE: variance bounded by the VP SDE's, better likelihoods."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def __post_init__(self):
        _check_positive("subVPSDE", beta_min=self.beta_min, beta_max=self.beta_max, N=self.N)
        if self.beta_max < self.beta_min:
            raise ValueError(f"subVPSDE: beta_max ({self.beta_max}) < beta_min ({self.beta_min})")

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_mean_coeff(self, t: Array) -> Array:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sde(self, x, t):
        beta_t = self.beta(t)
        discount = -jnp.expm1(4.0 * self._log_mean_coeff(t))
        return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t * discount)

    def marginal_coeffs(self, t):
        log_alpha = self._log_mean_coeff(t)
        return jnp.exp(log_alpha), -jnp.expm1(2.0 * log_alpha)

    def t_from_log_snr(self, log_snr):
        # lambda = log(alpha / (1 - alpha^2)); with u = alpha: e^-lambda u = 1 - u^2.
        c = jnp.exp(-log_snr)
        alpha = 2.0 / (c + jnp.sqrt(c**2 + 4.0))
        return _solve_log_mean_coeff(self.beta_min, self.beta_max, jnp.log(alpha))

    def prior_sampling(self, rng, shape):
        return jax.random.normal(rng, shape)

    def prior_logp(self, z):
        return _standard_normal_logp(z, 1.0)


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE; its discretisation is SMLD's (NCSN) noise ladder."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def __post_init__(self):
        _check_positive("VESDE", sigma_min=self.sigma_min, sigma_max=self.sigma_max, N=self.N)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"VESDE: sigma_max ({self.sigma_max}) <= sigma_min ({self.sigma_min})")

    @property
    def discrete_sigmas(self) -> np.ndarray:
        return np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))

    def sigma(self, t: Array) -> Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        g = self.sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
        return jnp.zeros_like(x), g

    def marginal_coeffs(self, t):
        return jnp.ones_like(t), self.sigma(t)

    def t_from_log_snr(self, log_snr):
        return (-log_snr - np.log(self.sigma_min)) / np.log(self.sigma_max / self.sigma_min)

    def prior_sampling(self, rng, shape):
        return jax.random.normal(rng, shape) * self.sigma_max

    def prior_logp(self, z):
        return _standard_normal_logp(z, self.sigma_max)

    def discretize(self, x, t):
        """SMLD: x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z."""
        idx = self.discrete_index(t)
        sigmas = jnp.asarray(self.discrete_sigmas, jnp.float32)
        sigma = sigmas[idx]
        adjacent = jnp.where(idx == 0, 0.0, sigmas[jnp.maximum(idx - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)


@dataclasses.dataclass(frozen=True)
class EDMSDE(SDE):
    """EDM's SDE (Karras et al. 2022): time is the noise level, sigma(t) = t on [0, sigma_max].

    dx = sqrt(2 t) dw, so x_t = x_0 + t z; T = sigma_max and sampling stops at sigma_min (the
    eps that `get_sde` returns). The prior is N(0, sigma_max^2 I).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    N: int = 1000

    def __post_init__(self):
        _check_positive("EDMSDE", sigma_min=self.sigma_min, sigma_max=self.sigma_max, N=self.N)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"EDMSDE: sigma_max ({self.sigma_max}) <= sigma_min "
                             f"({self.sigma_min})")

    @property
    def T(self) -> float:
        return float(self.sigma_max)

    def sigma(self, t: Array) -> Array:
        return t

    def t_from_sigma(self, sigma: Array) -> Array:
        return sigma

    def sde(self, x, t):
        return jnp.zeros_like(x), jnp.sqrt(2.0 * t)

    def marginal_coeffs(self, t):
        return jnp.ones_like(t), t

    def t_from_log_snr(self, log_snr):
        return jnp.exp(-log_snr)

    def prior_sampling(self, rng, shape):
        return jax.random.normal(rng, shape) * self.sigma_max

    def prior_logp(self, z):
        return _standard_normal_logp(z, self.sigma_max)

    def discretize(self, x, t):
        """x_{i+1} = x_i + sqrt(t^2 - (t - T/N)^2) z: the exact variance step of dt = T / N."""
        prev = jnp.maximum(t - self.T / self.N, 0.0)
        return jnp.zeros_like(x), jnp.sqrt(t**2 - prev**2)


SDES = {"vpsde": VPSDE, "subvpsde": subVPSDE, "vesde": VESDE, "edm": EDMSDE}


def get_sde(config) -> tuple[SDE, float]:
    """The SDE named by `config.training.sde` and its sampling epsilon (smallest time)."""
    name = str(config.training.sde).lower()
    if name not in SDES:
        raise ValueError(
            f"config.training.sde={config.training.sde!r} is not a known SDE; "
            f"choose one of {sorted(SDES)}")
    m = config.model
    if name == "vesde":
        return VESDE(m.sigma_min, m.sigma_max, m.num_scales), 1e-5
    if name == "edm":
        return EDMSDE(m.sigma_min, m.sigma_max, m.num_scales), float(m.sigma_min)
    return SDES[name](m.beta_min, m.beta_max, m.num_scales), 1e-3
