"""A score function that counts its calls (tests of how many score evaluations a sampler makes)."""

import jax


def counting(score_fn):
    """score_fn plus a host-side call counter (one tick per batched evaluation)."""
    calls = [0]

    def tick():
        calls[0] += 1

    def wrapped(x, t):
        jax.debug.callback(tick)
        return score_fn(x, t)

    return wrapped, calls
