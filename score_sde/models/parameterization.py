"""What a network's input and output mean: one object per (SDE, output convention).

A parameterisation owns everything that turns a raw network `F(input, labels)` into the
quantities of the model, for sampling and for training alike, so the two cannot drift:

  network_output(model_fn, x, t)   F(c_in(t) x, labels(t)): the noise input the network sees
  score / x0 / eps(output, x, t)   the output converted to the score, the data prediction
                                   E[x_0 | x_t] and the noise prediction
  target(x0, noise, x_t, t)        the output the loss regresses on at x_t = alpha x0 + sigma noise
  loss_weight(t, weighting)        its per-example weight, in output space
  coeffs(t)                        (alpha, sigma) of the noise level the network was trained at
  sample_t(rng, n, eps)            the loss's distribution of training times

Every convention here is linear in the output, score = a(t) F + b(t) x, so a DSM loss weighted
by w(t) on |score - true score|^2 is w a^2 |F - target|^2 ("sigma2": w = sigma^2, the published
losses; "likelihood": w = g^2, Song et al. 2021 eq. 7). The published score_sde conventions
(see models/utils.py) are kept bit-for-bit; EDM (Karras et al. 2022) adds input/skip/output
scalings and its own loss ("edm": lambda(sigma) |D - x0|^2, a log-normal sigma).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sde_lib
from score_sde.sde_lib import batch_mul

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
WEIGHTINGS = ("sigma2", "likelihood", "edm")


@dataclasses.dataclass(frozen=True)
class Parameterization(abc.ABC):
    """Base class: published-style networks (c_in = 1), linear output -> score map."""

    sde: sde_lib.SDE

    # -- the network's inputs -------------------------------------------------------------
    @abc.abstractmethod
    def labels(self, t: Array) -> Array:
        """The noise-level input of the network at times t (B,)."""

    def input_scale(self, t: Array) -> Array:
        """c_in(t): the network sees c_in x."""
        return jnp.ones_like(t)

    def network_output(self, model_fn: ModelFn, x: Array, t: Array) -> Array:
        """The raw output F(c_in x, labels(t)) of `model_fn(x, labels)`."""
        return model_fn(batch_mul(self.input_scale(t), x), self.labels(t))

    # -- the noise level ------------------------------------------------------------------
    def coeffs(self, t: Array) -> tuple[Array, Array]:
        """(alpha, sigma) of x_t = alpha x_0 + sigma z at the level the network is trained on."""
        return self.sde.marginal_coeffs(t)

    def sample_t(self, rng: Array, n: int, eps: float) -> Array:
        """Training times of the loss: t ~ U(eps, T)."""
        return jax.random.uniform(rng, (n,), minval=eps, maxval=self.sde.T)

    # -- the output -----------------------------------------------------------------------
    @abc.abstractmethod
    def score_scale(self, t: Array) -> Array:
        """a(t) in score = a F + b x (per example): d score / d output."""

    def score(self, output: Array, x: Array, t: Array) -> Array:
        return batch_mul(self.score_scale(t), output)

    def x0(self, output: Array, x: Array, t: Array) -> Array:
        """E[x_0 | x_t = x] by Tweedie: (x + sigma^2 score) / alpha."""
        alpha, sigma = self.coeffs(t)
        return batch_mul(1.0 / alpha, x + batch_mul(sigma**2, self.score(output, x, t)))

    def eps(self, output: Array, x: Array, t: Array) -> Array:
        """E[z | x_t = x] = -sigma score."""
        return batch_mul(-self.coeffs(t)[1], self.score(output, x, t))

    # -- the loss -------------------------------------------------------------------------
    @abc.abstractmethod
    def target(self, x0: Array, noise: Array, x_t: Array, t: Array) -> Array:
        """The output the loss regresses on (its minimiser is the posterior mean of this)."""

    def loss_weight(self, t: Array, weighting: str) -> Array:
        """Per-example weight on |output - target|^2 that makes the DSM loss with `weighting`."""
        a = self.score_scale(t)
        if weighting == "sigma2":
            return (self.coeffs(t)[1] * a) ** 2
        if weighting == "likelihood":
            return (self.sde.sde(jnp.zeros((t.shape[0], 1)), t)[1] * a) ** 2
        raise ValueError(f"loss weighting {weighting!r} is not defined for "
                         f"{type(self).__name__}; use one of {WEIGHTINGS[:2]}")

    def default_weighting(self) -> str:
        return "sigma2"


@dataclasses.dataclass(frozen=True)
class EpsilonPrediction(Parameterization):
    """VP / sub-VP, continuous t: labels 999 t, the network predicts eps (score = -F / sigma)."""

    def labels(self, t):
        return t * 999

    def score_scale(self, t):
        return -1.0 / self.coeffs(t)[1]

    def target(self, x0, noise, x_t, t):
        return noise


@dataclasses.dataclass(frozen=True)
class DDPMDiscrete(EpsilonPrediction):
    """VP, discrete (DDPM): labels (N - 1) t, levels from the alpha_bar table at the index t
    falls on (the same tolerant truncation as `sde.discretize`), training t on i / (N - 1)."""

    def labels(self, t):
        return t * (self.sde.N - 1)

    def coeffs(self, t):
        abar = np.asarray(self.sde.alphas_cumprod)
        idx = self.sde.discrete_index(t)
        return (jnp.asarray(np.sqrt(abar), jnp.float32)[idx],
                jnp.asarray(np.sqrt(1.0 - abar), jnp.float32)[idx])

    def sample_t(self, rng, n, eps):
        """t = i / (N - 1), i uniform: the level index is exactly i, the label (N - 1) t is i
        up to float32 rounding (1 ulp)."""
        idx = jax.random.randint(rng, (n,), 0, self.sde.N)
        return idx.astype(jnp.float32) / (self.sde.N - 1)


@dataclasses.dataclass(frozen=True)
class ScorePrediction(Parameterization):
    """VE, continuous t: labels sigma(t), the network predicts the score (any 1/sigma output
    scaling is inside the network, config.model.scale_by_sigma, as published)."""

    def labels(self, t):
        return self.coeffs(t)[1]

    def score_scale(self, t):
        return jnp.ones_like(t)

    def target(self, x0, noise, x_t, t):
        return -batch_mul(1.0 / self.coeffs(t)[1], noise)


@dataclasses.dataclass(frozen=True)
class SMLDDiscrete(ScorePrediction):
    """VE, discrete (SMLD / NCSN): labels are ladder indices counted from sigma_max (label 0),
    levels from the discrete sigma ladder."""

    def labels(self, t):
        return jnp.round((self.sde.T - t) * (self.sde.N - 1)).astype(jnp.int32)

    def coeffs(self, t):
        sigmas = jnp.asarray(self.sde.discrete_sigmas, jnp.float32)
        return jnp.ones_like(t), sigmas[self.sde.discrete_index(t)]

    def sample_t(self, rng, n, eps):
        label = jax.random.randint(rng, (n,), 0, self.sde.N)
        return self.sde.T - label.astype(jnp.float32) / (self.sde.N - 1)


@dataclasses.dataclass(frozen=True)
class EDM(Parameterization):
    """Karras et al. (2022) preconditioning for SDEs with alpha = 1 (EDM's, VE):

    D(x; s) = c_skip x + c_out F(c_in x, c_noise), c_skip = sd^2 / (s^2 + sd^2),
    c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4;
    loss lambda(s) |D - x0|^2 with lambda = (s^2 + sd^2) / (s sd)^2, ln s ~ N(P_mean, P_std^2).
    sd = sigma_data, the data's standard deviation.
    """

    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2

    def __post_init__(self):
        if not self.sigma_data > 0:
            raise ValueError(f"config.model.sigma_data must be > 0, got {self.sigma_data!r}")
        if not isinstance(self.sde, (sde_lib.EDMSDE, sde_lib.VESDE)):
            raise ValueError(
                f"EDM preconditioning needs an SDE with alpha(t) = 1 ('edm' or 'vesde'), got "
                f"{type(self.sde).__name__}")

    def _sigma(self, t: Array) -> Array:
        return self.coeffs(t)[1]

    def scalings(self, t: Array) -> tuple[Array, Array, Array]:
        """(c_skip, c_out, c_in) at times t."""
        s, sd = self._sigma(t), self.sigma_data
        norm = s**2 + sd**2
        return sd**2 / norm, s * sd * jax.lax.rsqrt(norm), jax.lax.rsqrt(norm)

    def labels(self, t):
        return jnp.log(self._sigma(t)) / 4

    def input_scale(self, t):
        return self.scalings(t)[2]

    def x0(self, output, x, t):
        c_skip, c_out, _ = self.scalings(t)
        return batch_mul(c_skip, x) + batch_mul(c_out, output)

    def score_scale(self, t):
        return self.scalings(t)[1] / self._sigma(t) ** 2

    def score(self, output, x, t):
        # (D - x) / sigma^2 (alpha = 1) with (c_skip - 1) / sigma^2 = -1 / (s^2 + sd^2) in closed
        # form: no cancellation of D - x at small sigma in float32.
        s2 = self._sigma(t) ** 2
        return batch_mul(-1.0 / (s2 + self.sigma_data**2), x) + batch_mul(
            self.score_scale(t), output)

    def sample_t(self, rng, n, eps):
        """sigma = t, ln sigma ~ N(P_mean, P_std^2); eps is not used."""
        log_sigma = self.P_mean + self.P_std * jax.random.normal(rng, (n,))
        return self._t_from_sigma(jnp.exp(log_sigma))

    def _t_from_sigma(self, sigma: Array) -> Array:
        if isinstance(self.sde, sde_lib.EDMSDE):
            return sigma
        return self.sde.t_from_log_snr(-jnp.log(sigma))

    def target(self, x0, noise, x_t, t):
        c_skip, c_out, _ = self.scalings(t)
        return batch_mul(1.0 / c_out, x0 - batch_mul(c_skip, x_t))

    def loss_weight(self, t, weighting):
        if weighting != "edm":
            return super().loss_weight(t, weighting)
        s, sd = self._sigma(t), self.sigma_data
        lam = (s**2 + sd**2) / (s * sd) ** 2
        return lam * self.scalings(t)[1] ** 2

    def default_weighting(self) -> str:
        return "edm"


PARAMETERIZATIONS = ("auto", "edm")


def get_parameterization(sde: sde_lib.SDE, continuous: bool = True, kind: str = "auto",
                         sigma_data: float = 0.5, P_mean: float = -1.2,
                         P_std: float = 1.2) -> Parameterization:
    """The parameterisation of a network trained on `sde`.

    kind 'auto': the published convention of the SDE (VP/sub-VP eps, DDPM, VE score, SMLD;
    EDM for the EDM SDE); 'edm': EDM preconditioning (alpha = 1 SDEs, continuous time).
    """
    kind = str(kind).lower()
    if kind not in PARAMETERIZATIONS:
        raise ValueError(f"config.model.parameterization={kind!r} is not known; "
                         f"choose one of {PARAMETERIZATIONS}")
    if kind == "edm" or isinstance(sde, sde_lib.EDMSDE):
        if not continuous:
            raise ValueError("EDM preconditioning is continuous-time: set "
                             "config.training.continuous=True")
        return EDM(sde, float(sigma_data), float(P_mean), float(P_std))
    if isinstance(sde, sde_lib.subVPSDE) or (isinstance(sde, sde_lib.VPSDE) and continuous):
        return EpsilonPrediction(sde)
    if isinstance(sde, sde_lib.VPSDE):
        return DDPMDiscrete(sde)
    if isinstance(sde, sde_lib.VESDE):
        return ScorePrediction(sde) if continuous else SMLDDiscrete(sde)
    raise ValueError(f"no parameterisation for SDE {type(sde).__name__}; "
                     "use VPSDE, subVPSDE, VESDE or EDMSDE")


def from_config(config, sde: sde_lib.SDE, continuous: bool | None = None) -> Parameterization:
    """`get_parameterization` with config.model.parameterization / sigma_data and
    config.training.continuous (unless given) / P_mean / P_std (EDM's published values when
    absent)."""
    m, tr = config.model, config.training
    if continuous is None:
        continuous = bool(tr.get("continuous", True))
    param = get_parameterization(sde, continuous,
                                m.get("parameterization", "auto"), m.get("sigma_data", 0.5),
                                tr.get("P_mean", -1.2), tr.get("P_std", 1.2))
    if isinstance(param, EDM):
        _check_edm_network(m)
    return param


def _check_edm_network(m) -> None:
    """EDM feeds c_noise = ln(sigma) / 4 (any sign) to a network that outputs F, not a score."""
    if str(m.get("name", "")).startswith("ncsn") and m.get("name") != "ncsnpp":
        raise ValueError(f"config.model.name={m.name!r} takes noise-level indices; EDM "
                         "preconditioning needs a continuous-time network (ncsnpp, ddpm, "
                         "small_unet, mlp)")
    if m.get("embedding_type", "positional") != "positional":
        raise ValueError("EDM preconditioning feeds ln(sigma) / 4 to the network: set "
                         "config.model.embedding_type='positional' (the fourier embedding "
                         "takes the log of its input)")
    if m.get("scale_by_sigma", False):
        raise ValueError("EDM preconditioning scales the output itself: set "
                         "config.model.scale_by_sigma=False")
