"""Exact posteriors of linear-Gaussian observations, for tests and benchmarks (numpy, float64).

An observation z = H x0 + noise, noise ~ N(0, R), of a Gaussian prior x0 ~ N(mu, S) gives the
Gaussian posterior (Kalman's update, in covariance form so that R may be singular):

    K = S H^T (H S H^T + R)^{-1},  mean = mu + K (z - H mu),  cov = S - K H S,

and the evidence z ~ N(H mu, H S H^T + R). A Gaussian-mixture prior sum_k w_k N(mu_k, S_k)
gives a Gaussian-mixture posterior: each component updated as above, its weight multiplied by
its evidence N(z; H mu_k, H S_k H^T + R) and renormalised.

Posterior samplers are checked against two of these: p(x0 | y) for y = A x0 + sigma_y n
(`gaussian_posterior`, `mixture_posterior`) and, at a time t of an SDE with
x_t = alpha x0 + sigma eps, the posterior mean E[x0 | x_t, y] (`posterior_mean_given_xt`),
which a guided denoiser approximates. Vectors are flat (d,), observations (m,).
"""

from __future__ import annotations

import numpy as np

from score_sde.analytic import GaussianMixture


def _condition(mu, cov, h, z, noise_cov) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(posterior mean, posterior cov, evidence mean, evidence cov) of z = H x + N(0, R)."""
    mu, cov, h = (np.asarray(v, np.float64) for v in (mu, cov, h))
    s_h = cov @ h.T
    evidence = h @ s_h + np.asarray(noise_cov, np.float64)
    gain = np.linalg.solve(evidence, s_h.T).T  # S H^T (H S H^T + R)^{-1} (evidence symmetric)
    mean = mu + gain @ (np.asarray(z, np.float64) - h @ mu)
    post = cov - gain @ s_h.T
    return mean, 0.5 * (post + post.T), h @ mu, evidence


def gaussian_posterior(mean, cov, matrix, y, sigma_y: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), cov (d, d)) of x0 | y for x0 ~ N(mean, cov), y = matrix x0 + sigma_y n."""
    m = np.asarray(matrix).shape[0]
    post_mean, post_cov, _, _ = _condition(mean, cov, matrix, y, sigma_y**2 * np.eye(m))
    return post_mean, post_cov


def posterior_mean_given_xt(mean, cov, matrix, y, sigma_y: float, alpha: float, sigma: float,
                            x_t) -> np.ndarray:
    """E[x0 | x_t, y] (d,) for x0 ~ N(mean, cov), x_t = alpha x0 + sigma eps, y = matrix x0 +
    sigma_y n (eps, n independent standard normals): the exact conditional denoiser."""
    a = np.asarray(matrix, np.float64)
    d, m = a.shape[1], a.shape[0]
    h = np.concatenate([alpha * np.eye(d), a])
    noise = np.diag(np.concatenate([np.full(d, sigma**2), np.full(m, sigma_y**2)]))
    z = np.concatenate([np.asarray(x_t, np.float64), np.asarray(y, np.float64)])
    return _condition(mean, cov, h, z, noise)[0]


def _log_normal(z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    sign, logdet = np.linalg.slogdet(2.0 * np.pi * cov)
    diff = z - mean
    return float(-0.5 * (logdet + diff @ np.linalg.solve(cov, diff)))


def mixture_posterior(prior: GaussianMixture, matrix, y, sigma_y: float) -> GaussianMixture:
    """x0 | y for x0 ~ `prior` (a Gaussian mixture) and y = matrix x0 + sigma_y n: the
    Gaussian mixture of the updated components, reweighted by their evidence."""
    a = np.asarray(matrix, np.float64)
    y = np.asarray(y, np.float64).reshape(-1)
    noise = sigma_y**2 * np.eye(a.shape[0])
    means, covs, log_w = [], [], []
    for w, mu, cov in zip(prior.weights, prior.means, prior.covs, strict=True):
        post_mean, post_cov, ev_mean, ev_cov = _condition(mu, cov, a, y, noise)
        means.append(post_mean)
        covs.append(post_cov)
        log_w.append(np.log(w) + _log_normal(y, ev_mean, ev_cov))
    log_w = np.asarray(log_w)
    weights = np.exp(log_w - log_w.max())
    # components of negligible weight are kept with a floor (GaussianMixture needs w > 0)
    weights = np.maximum(weights / weights.sum(), 1e-300)
    return GaussianMixture(weights, np.stack(means), np.stack(covs), prior.event_shape)
