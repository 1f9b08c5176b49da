"""'merge': the published replacement (Song et al. 2021, App. I), for inpainting and colorization.

After the prior draw and every step of a fixed-step sampler, the observed part of the state is
replaced by the observation perturbed to the current time (score_sde.controllable's merges
through the samplers' `project` hook). It needs the observation to be an exact part of x in an
orthogonal basis, so it serves a MaskOperator (the kept pixels) or a ColorizationOperator (the
grey coordinate of the channels), noise-free only (sigma_y = 0). It is the joint score with the
known part plugged in, not the posterior's score: biased without Langevin correctors
(tests/test_controllable.py measures it). NFE: the solver's score calls.
"""

from __future__ import annotations

import jax
import numpy as np

from score_sde.controllable import colorization_merge, inpainting_merge, merging_sampler
from score_sde.inverse.base import Operator
from score_sde.inverse.operators import ColorizationOperator, MaskOperator
from score_sde.inverse.posterior import register_posterior
from score_sde.sampling import MERGE_SAMPLERS, SAMPLERS
from score_sde.sde_lib import SDE

Array = jax.Array


def observation_merge(sde: SDE, operator: Operator, y: Array):
    """The samplers' project hook that merges y (a mask's kept pixels or a grey image)."""
    if isinstance(operator, ColorizationOperator):
        return colorization_merge(sde, y, operator.input_shape[-1])
    mask = np.asarray(operator.mask, np.float32)
    mask = mask.reshape(mask.shape + (1,) * (len(operator.input_shape) - mask.ndim))
    return inpainting_merge(sde, operator.adjoint(y), mask)


@register_posterior("merge", forwards_options=True)
def merge_sampler(sde: SDE, operator: Operator, shape, *, sigma_y: float, nfe: int, eps: float,
                  sharding=None, solver: str = "pc", **options):
    """The published merge on `solver` (default: PC with reverse diffusion and Langevin, the
    published inpainter) with nfe score calls; options go to the solver."""
    if not isinstance(operator, (MaskOperator, ColorizationOperator)):
        raise ValueError(f"merge needs a MaskOperator or ColorizationOperator (an exact part of "
                         f"x); {operator!r} is neither: use ddrm, pigdm, mmps, dps or daps")
    if isinstance(sigma_y, jax.core.Tracer) or float(sigma_y) != 0.0:
        raise ValueError(f"merge needs a noise-free observation (sigma_y = 0), got sigma_y="
                         f"{sigma_y}; use ddrm, pigdm, mmps, dps or daps for noisy ones")
    if solver not in MERGE_SAMPLERS:
        raise ValueError(f"merge: solver={solver!r} cannot merge at every step; choose one of "
                         f"{list(MERGE_SAMPLERS)}")
    unknown = sorted(set(options) - set(SAMPLERS.lookup(solver).options))
    if unknown:
        raise ValueError(f"merge: no option(s) {unknown}; the method's options: ['solver']; "
                         f"solver {solver!r}'s: {list(SAMPLERS.lookup(solver).options)}")
    sample = merging_sampler(sde, shape, solver, nfe=nfe, eps=eps, sharding=sharding, **options)

    def run(rng, score_fn, y):
        return sample(rng, score_fn, observation_merge(sde, operator, y))

    run.ts = sample.ts
    return run
