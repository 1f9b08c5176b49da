"""Closed-form data distributions and their exact perturbed scores, for testing the math.

A Gaussian mixture p_0 = sum_k w_k N(mu_k, Sigma_k) stays a Gaussian mixture under every SDE
of `sde_lib`: with x_t = alpha(t) x_0 + sigma(t) eps,

    p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I).

So the score, log-density and component posterior of p_t are exact at every t, which turns
"the sampler works" into a number. Each covariance is eigendecomposed once (float64, host), so
alpha^2 Sigma_k + sigma^2 I = U_k diag(alpha^2 lambda_k + sigma^2) U_k^T needs no per-t
factorisation: everything below is pure jnp, jit- and vmap-friendly, float32, and takes the
per-example t of shape (B,) that the SDEs use.

Data may be flat (B, D) or image-shaped (B, *event_shape): it is flattened internally.
The module also holds two numpy distances between sample sets (Frechet, sliced Wasserstein)
used by the tests and the sampler benchmark.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sde_lib import SDE, batch_mul

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    """sum_k weights[k] N(means[k], covs[k]) over R^D, samples shaped (n, *event_shape).

    weights: (K,), positive (normalised here); means: (K, D); covs: (K, D, D) symmetric PSD
    (a singular covariance is fine for everything except `log_prob`/`score` at t = 0).
    """

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    event_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        w = np.asarray(self.weights, np.float64).reshape(-1)
        mu = np.asarray(self.means, np.float64)
        cov = np.asarray(self.covs, np.float64)
        if mu.ndim != 2 or cov.shape != (mu.shape[0], mu.shape[1], mu.shape[1]) or \
                w.shape != (mu.shape[0],):
            raise ValueError(
                f"GaussianMixture: need weights (K,), means (K, D), covs (K, D, D); got "
                f"{w.shape}, {mu.shape}, {cov.shape}")
        if np.any(w <= 0):
            raise ValueError(f"GaussianMixture: weights must be > 0, got {w}")
        shape = tuple(self.event_shape) if self.event_shape is not None else (mu.shape[1],)
        if int(np.prod(shape)) != mu.shape[1]:
            raise ValueError(f"GaussianMixture: event_shape {shape} does not hold D={mu.shape[1]}")
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        evals, evecs = np.linalg.eigh(cov)
        if np.any(evals < -1e-8 * np.max(np.abs(evals))):
            raise ValueError("GaussianMixture: covariances must be positive semi-definite")
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("weights", w / w.sum())
        set_("means", mu)
        set_("covs", cov)
        set_("event_shape", shape)
        # Diagonal covariances skip the eigenbasis rotation (O(K D) instead of O(K D^2) per x).
        diagonal = bool(np.all(cov == np.einsum("kii->ki", cov)[:, :, None] * np.eye(mu.shape[1])))
        if diagonal:
            evals, evecs = np.einsum("kii->ki", cov).copy(), None
        set_("_diagonal", diagonal)
        set_("_evals", np.clip(evals, 0.0, None))
        set_("_evecs", evecs)

    @classmethod
    def gaussian(cls, mean, cov, event_shape=None) -> GaussianMixture:
        """A single Gaussian N(mean, cov) as the one-component mixture."""
        mean = np.asarray(mean, np.float64).reshape(-1)
        return cls(np.ones(1), mean[None], np.asarray(cov, np.float64)[None], event_shape)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> np.ndarray:
        """Mixture mean, (D,) float64."""
        return self.weights @ self.means

    def cov(self) -> np.ndarray:
        """Mixture covariance, (D, D) float64."""
        m = self.mean()
        second = np.einsum("k,kij->ij", self.weights, self.covs + np.einsum(
            "ki,kj->kij", self.means, self.means))
        return second - np.outer(m, m)

    def sample(self, rng: Array, n: int) -> Array:
        """n samples, shape (n, *event_shape), float32."""
        k_rng, z_rng = jax.random.split(rng)
        k = jax.random.categorical(k_rng, jnp.log(jnp.asarray(self.weights, jnp.float32)),
                                   shape=(n,))
        z = jax.random.normal(z_rng, (n, self.dim))
        if self._diagonal:
            noise = jnp.asarray(np.sqrt(self._evals), jnp.float32)[k] * z
        else:
            root = jnp.asarray(self._evecs * np.sqrt(self._evals)[:, None, :], jnp.float32)
            noise = jnp.einsum("nij,nj->ni", root[k], z)
        x = jnp.asarray(self.means, jnp.float32)[k] + noise
        return x.reshape((n,) + self.event_shape)

    def perturbed(self, sde: SDE, t: float) -> GaussianMixture:
        """The exact marginal p_t at a scalar time t, as a new mixture."""
        alpha, sigma = (float(v[0]) for v in sde.marginal_coeffs(jnp.asarray([t], jnp.float32)))
        covs = alpha**2 * self.covs + sigma**2 * np.eye(self.dim)
        return GaussianMixture(self.weights, alpha * self.means, covs, self.event_shape)

    # --- per-component terms at time t -------------------------------------------------------

    def _components(self, x: Array, alpha: Array, sigma: Array) -> tuple[Array, Array, Array]:
        """log N_k(x) (B, K), whitened residual y/var (B, K, D) in eigenbasis, and var."""
        b = x.shape[0]
        x = x.reshape(b, -1).astype(jnp.float32)
        alpha = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (b,))
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (b,))
        mu = jnp.asarray(self.means, jnp.float32)
        lam = jnp.asarray(self._evals, jnp.float32)
        diff = x[:, None, :] - alpha[:, None, None] * mu[None]                  # (B, K, D)
        y = diff if self._diagonal else jnp.einsum("kde,bkd->bke", self._u(), diff)  # U_k^T diff
        var = alpha[:, None, None] ** 2 * lam[None] + sigma[:, None, None] ** 2  # (B, K, D)
        logn = -0.5 * jnp.sum(jnp.log(2 * np.pi * var) + y**2 / var, axis=-1)
        return logn, y / var, var

    def _log_joint(self, x: Array, alpha: Array, sigma: Array) -> tuple[Array, Array]:
        logn, white, _ = self._components(x, alpha, sigma)
        return jnp.log(jnp.asarray(self.weights, jnp.float32)) + logn, white

    def _score(self, x: Array, alpha: Array, sigma: Array) -> Array:
        log_joint, white = self._log_joint(x, alpha, sigma)
        resp = jax.nn.softmax(log_joint, axis=-1)                               # (B, K)
        if self._diagonal:
            score = -jnp.einsum("bkd,bk->bd", white, resp)
        else:
            score = -jnp.einsum("kde,bke,bk->bd", self._u(), white, resp)
        return score.reshape(x.shape)

    def _u(self, k: int | None = None) -> Array:
        """Eigenvectors U_k (all components, or component k), float32."""
        u = np.broadcast_to(np.eye(self.dim), self.covs.shape) if self._diagonal else self._evecs
        return jnp.asarray(u if k is None else u[k], jnp.float32)

    def _coeffs(self, sde: SDE, x: Array, t: Array) -> tuple[Array, Array]:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        return sde.marginal_coeffs(t)

    # --- the data distribution (t = 0, no noise) ---------------------------------------------

    def log_prob(self, x: Array) -> Array:
        """log p_0(x) per example, shape (B,); x is (B, D) or (B, *event_shape)."""
        log_joint, _ = self._log_joint(x, 1.0, 0.0)
        return jax.nn.logsumexp(log_joint, axis=-1)

    def score(self, x: Array) -> Array:
        """grad_x log p_0(x), shape of x."""
        return self._score(x, 1.0, 0.0)

    # --- the perturbed distribution p_t of an SDE --------------------------------------------

    def perturbed_score_fn(self, sde: SDE) -> Callable[[Array, Array], Array]:
        """The exact score_fn(x, t) = grad_x log p_t(x) of this data under `sde`."""
        return lambda x, t: self._score(x, *self._coeffs(sde, x, t))

    def perturbed_log_prob(self, sde: SDE, x: Array, t: Array) -> Array:
        """log p_t(x) per example, shape (B,); t is a scalar or (B,)."""
        log_joint, _ = self._log_joint(x, *self._coeffs(sde, x, t))
        return jax.nn.logsumexp(log_joint, axis=-1)

    def log_posterior(self, sde: SDE, x: Array, t: Array) -> Array:
        """log p(component k | x_t = x), shape (B, K): the exact classifier for guidance."""
        log_joint, _ = self._log_joint(x, *self._coeffs(sde, x, t))
        return jax.nn.log_softmax(log_joint, axis=-1)

    def posterior_mean(self, sde: SDE, x: Array, t: Array) -> Array:
        """E[x_0 | x_t = x] (Tweedie), shape of x: the ideal denoiser."""
        alpha, sigma = self._coeffs(sde, x, t)
        return batch_mul(1.0 / alpha, x + batch_mul(sigma**2, self._score(x, alpha, sigma)))

    def component_posterior(self, sde: SDE, x: Array, t: Array, k: int) -> tuple[Array, Array]:
        """Mean (B, D) and covariance (B, D, D) of p(x_0 | x_t = x, component k).

        Conditional Gaussian: with C = alpha^2 S + sigma^2 I, mean = mu + alpha S C^-1 (x - alpha
        mu) and cov = S - alpha^2 S C^-1 S, where S = Sigma_k (per example: t is per example).
        """
        alpha, sigma = self._coeffs(sde, x, t)
        b = x.shape[0]
        xf = x.reshape(b, -1)
        u = self._u(k)
        lam = jnp.asarray(self._evals[k], jnp.float32)
        mu = jnp.asarray(self.means[k], jnp.float32)
        var = alpha[:, None] ** 2 * lam + sigma[:, None] ** 2                   # (B, D)
        y = (xf - alpha[:, None] * mu) @ u
        mean = mu + (alpha[:, None] * lam * y / var) @ u.T
        post = lam - alpha[:, None] ** 2 * lam**2 / var                          # eigenvalues
        cov = jnp.einsum("de,be,fe->bdf", u, post, u)
        return mean, cov


# --- distances between sample sets (numpy, float64) --------------------------------------------


def _flat64(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(x.shape[0], -1)


def gaussian_frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2): squared W2 of two Gaussians."""
    w, v = np.linalg.eigh(np.atleast_2d(cov1))
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root1 @ np.atleast_2d(cov2) @ root1)
    trace = np.trace(cov1) + np.trace(cov2) - 2.0 * np.sum(np.sqrt(np.clip(cross, 0, None)))
    return float(np.sum((np.asarray(mu1) - np.asarray(mu2)) ** 2) + trace)


def frechet_distance(x, y) -> float:
    """Frechet distance between the Gaussian fits of two sample sets (n, ...) (the FID formula)."""
    x, y = _flat64(x), _flat64(y)
    cx = np.atleast_2d(np.cov(x, rowvar=False))
    cy = np.atleast_2d(np.cov(y, rowvar=False))
    return gaussian_frechet_distance(x.mean(0), cx, y.mean(0), cy)


def sliced_wasserstein(x, y, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (sqrt of the mean squared 1-D W2 over random directions).

    Unlike the Frechet distance it sees beyond second moments (e.g. mixture modes). Uses the
    first min(len(x), len(y)) samples of each set.
    """
    x, y = _flat64(x), _flat64(y)
    n = min(len(x), len(y))
    dirs = np.random.default_rng(seed).normal(size=(x.shape[1], n_projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    px, py = np.sort(x[:n] @ dirs, axis=0), np.sort(y[:n] @ dirs, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))
