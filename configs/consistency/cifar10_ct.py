"""Improved consistency training (iCT) on CIFAR-10 with the published settings of Song &
Dhariwal (2023): pseudo-Huber distance (c = 0.03), weight 1 / (sigma_{n+1} - sigma_n),
log-normal levels (P_mean -1.1, P_std 2.0), N doubling from s0 = 10 to s1 = 1280 over 400k
iterations, no EMA target, dropout 0.3, batch 1024, RAdam lr 1e-4, EMA 0.99993; two-step
sampling at sigma = 0.821. Network: DDPM++ (cont.) of the score_sde release with EDM's inputs
(the paper's NCSN++ of EDM differs in details).
"""

from score_sde.configs.consistency import make_consistency
from score_sde.configs.vp.cifar10_ddpmpp_continuous import get_config as get_network_config


def get_config():
    config = make_consistency(get_network_config(), 'ct', distance='pseudo_huber',
                              weighting='ict', start_levels=10, max_levels=1280,
                              P_mean=-1.1, P_std=2.0)
    training = config.training
    training.batch_size = 1024
    training.n_iters = 400000
    training.snapshot_freq = 10000
    training.snapshot_freq_for_preemption = 5000
    model = config.model
    model.sigma_data = 0.5
    model.dropout = 0.3
    model.ema_rate = 0.99993
    optim = config.optim
    optim.optimizer = 'RAdam'
    optim.lr = 1e-4
    optim.warmup = 0
    optim.grad_clip = -1.
    config.sampling.consistency_sigmas = (0.821,)  # used with --config.sampling.nfe=2
    return config
