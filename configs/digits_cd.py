"""Consistency distillation of the EDM digits model (configs/digits_edm.py, the teacher:
--mode distill --teacher_workdir=DIR): its network, started from its weights, 18 Karras levels,
a Heun step of the teacher, target = stop-gradient of the student (mu = 0, as published for
CIFAR-10), lr 4e-4 (published CIFAR-10 CD; the others tried on digits were worse). Distance:
iCT's pseudo-Huber (c = 0.00054 sqrt(64)) with its weight 1 / (sigma_{n+1} - sigma_n)
(weighting 'auto'); --config.consistency.distance=l2 gives the published squared L2 with
uniform weights. 3,001 steps, within twice the teacher's training cost in CPU time
(measured: benchmarks/pages/consistency_digits.md). Sampled in 1 step
(--config.sampling.nfe=2 or 4 for more).
"""

from score_sde.configs.consistency import make_consistency
from score_sde.configs.digits_edm import get_config as get_edm_config


def get_config():
    config = make_consistency(get_edm_config(), 'cd', num_levels=18, distance='pseudo_huber',
                              teacher_solver='heun', target_ema=0.0, weighting='auto')
    training = config.training
    training.n_iters = 3001
    training.snapshot_freq = 1000
    training.snapshot_freq_for_preemption = 500
    config.eval.begin_ckpt = config.eval.end_ckpt = 3  # the last snapshot (step 3000)
    config.model.dropout = 0.  # published CD: no dropout
    config.optim.lr = 4e-4  # published CIFAR-10 CD
    config.optim.warmup = 0  # the student starts from a trained network
    return config
