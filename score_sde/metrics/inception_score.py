"""Inception Score (Salimans et al., 2016): exp(E_x KL(p(y|x) || p(y))), over splits."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, xlogy

__all__ = ["inception_score"]


def inception_score(
    logits: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    num_splits: int = 10,
) -> tuple[float, float]:
    """Inception Score (mean, std over `num_splits` equal splits) from logits or probabilities.

    Give exactly one of `logits` (N, C) or `probs` (N, C, rows summing to 1). The score lies in
    [1, C]: 1 when every prediction equals the marginal, C for confident, balanced predictions.
    """
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits= or probs=")
    if logits is not None:
        logp = log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)
        p = np.exp(logp)
    else:
        p = np.asarray(probs, dtype=np.float64)
        if np.any(p < 0) or not np.allclose(p.sum(-1), 1.0, atol=1e-4):
            raise ValueError("probs must be non-negative with rows summing to 1")
        p = p / p.sum(-1, keepdims=True)
        logp = None
    if p.ndim != 2:
        raise ValueError(f"expected predictions of shape (N, C), got {p.shape}")
    n = p.shape[0]
    if not 1 <= num_splits <= n:
        raise ValueError(f"num_splits must be in [1, N={n}], got {num_splits}")
    scores = []
    for idx in np.array_split(np.arange(n), num_splits):
        part = p[idx]
        marginal = part.mean(axis=0, keepdims=True)
        # KL(p(y|x) || p(y)) with 0 log 0 = 0.
        if logp is not None:
            kl = np.sum(part * (logp[idx] - np.log(np.maximum(marginal, 1e-300))), axis=-1)
        else:
            kl = np.sum(xlogy(part, part) - xlogy(part, marginal), axis=-1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
