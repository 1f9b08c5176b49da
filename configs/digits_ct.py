"""Improved consistency training (iCT, Song & Dhariwal 2023) on digits, from scratch, with the
network of configs/digits_edm.py: pseudo-Huber distance (c = 0.00054 sqrt(64)), weight
1 / (sigma_{n+1} - sigma_n), log-normal levels (P_mean -1.1, P_std 2), N doubling from 10 to
160 over the run's 5,000 steps (published 10 -> 1280 over 400k steps), no EMA target; the
training cost against the teacher's is measured in benchmarks/pages/consistency_digits.md.
Sampled in 1 step.
"""

from score_sde.configs.consistency import make_consistency
from score_sde.configs.digits_edm import get_config as get_edm_config


def get_config():
    config = make_consistency(get_edm_config(), 'ct', distance='pseudo_huber',
                              weighting='ict', start_levels=10, max_levels=160,
                              P_mean=-1.1, P_std=2.0)
    training = config.training
    training.n_iters = 5001
    training.snapshot_freq = 1000
    training.snapshot_freq_for_preemption = 500
    config.eval.begin_ckpt = config.eval.end_ckpt = 5  # the last snapshot (step 5000)
    config.model.dropout = 0.1
    return config
