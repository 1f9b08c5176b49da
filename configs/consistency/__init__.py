"""Consistency-model configs (Song et al. 2023; Song & Dhariwal 2023) and their shared section."""

import ml_collections


def consistency_section(**values) -> ml_collections.ConfigDict:
    """config.consistency with every field (score_sde/consistency_losses.py) at its CD default,
    then `values`. CD reads num_levels, rho, distance, teacher_solver, target_ema, weighting,
    init_from_teacher, teacher_config; CT reads rho, distance, weighting, start_levels,
    max_levels, P_mean, P_std."""
    c = ml_collections.ConfigDict()
    c.num_levels = 18  # CD: N, the Karras grid's levels (CIFAR-10, Song et al. 2023)
    c.rho = 7.0
    c.distance = 'l2'  # 'l2', 'pseudo_huber' or 'lpips' (needs lpips_weights)
    c.lpips_weights = ''
    c.teacher_solver = 'heun'  # 'heun', or 'euler' (= DPM-Solver++ first order)
    c.target_ema = 0.0  # CD's target network mu; 0: stop-gradient of the student (CIFAR-10)
    # 'uniform' (CD), 'ict': 1 / (sigma_{n+1} - sigma_n), or 'auto': 'ict' with pseudo_huber
    # (iCT's pair; uniform pseudo-Huber CD is dominated by the sigma_max pair), else 'uniform'
    c.weighting = 'auto'
    c.init_from_teacher = True
    c.teacher_config = ''  # the teacher's config file; default teacher_workdir/config.json
    c.start_levels = 10  # CT: s0 of N's doubling curriculum (iCT)
    c.max_levels = 1280  # CT: s1
    c.P_mean = -1.1  # CT: log-normal level distribution (iCT)
    c.P_std = 2.0
    c.update(values)
    return c


def make_consistency(config, objective: str, **values) -> ml_collections.ConfigDict:
    """Turn an EDM-network config into a consistency model of `objective` ('cd' / 'ct'):
    EDM's SDE and inputs, the consistency sampler (1 step), no denoising loss in eval."""
    config.training.sde = 'edm'
    config.training.continuous = True
    config.training.objective = objective
    config.training.snapshot_sampling = False
    config.model.parameterization = 'edm'
    config.model.sigma_min = 0.002
    config.model.sigma_max = 80  # an int fits int and float fields
    config.sampling.method = 'consistency'
    config.sampling.nfe = 1
    config.eval.enable_loss = False
    config.consistency = consistency_section(**values)
    return config
