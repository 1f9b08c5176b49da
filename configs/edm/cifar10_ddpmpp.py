"""EDM (Karras et al. 2022) on CIFAR-10: DDPM++ with EDM's preconditioning, loss and SDE.

EDM's published unconditional CIFAR-10 DDPM++ settings (NVlabs/edm train.py: --cond=0
--arch=ddpmpp --precond=edm) without the augmentation pipeline: 128 channels, channel
multipliers (2, 2, 2), 4 residual blocks per level, attention at 16x16, positional noise
embedding, dropout 0.13; Adam lr 1e-3 (betas 0.9, 0.999, eps 1e-8) warmed up over 10 Mimg,
no gradient clipping; batch 512 for 200 Mimg; EMA half-life 0.5 Mimg;
sigma in [0.002, 80], sigma_data = 0.5, ln sigma ~ N(-1.2, 1.2^2); sampled with EDM's
deterministic Heun at 35 NFE on the rho = 7 grid (published FID 1.97 with augmentation).
Differences that remain: this DDPM++ is score_sde's (BigGAN up/down residual blocks, skip
rescale), not EDM's SongUNet re-implementation, and EDM's EMA ramp-up (half-life at most
5% of the images seen) is approximated by config.model.ema_warmup.
"""

from score_sde.configs.vp.cifar10_ddpmpp_continuous import get_config as get_ddpmpp_config


def get_config():
    config = get_ddpmpp_config()

    training = config.training
    training.sde = 'edm'
    training.continuous = True
    training.batch_size = 512
    training.n_iters = 390_625  # 200 Mimg / 512
    training.reduce_mean = False  # EDM sums the loss over pixels
    training.P_mean = -1.2
    training.P_std = 1.2

    sampling = config.sampling
    sampling.method = 'heun'  # nfe 35 by default; not set here, the adaptive ODE reads nfe too
    sampling.grid = 'karras'
    sampling.exponential = False  # EDM's own Heun step (Algorithm 2), as published

    data = config.data
    data.centered = True  # [-1, 1]
    data.random_flip = False  # EDM's --xflip default

    model = config.model
    model.parameterization = 'edm'
    model.sigma_data = 0.5
    model.sigma_min = 0.002
    model.sigma_max = 80
    model.ch_mult = (2, 2, 2)
    model.num_res_blocks = 4
    model.dropout = 0.13
    model.embedding_type = 'positional'
    model.ema_rate = 0.5 ** (512 / 500_000)  # half-life 0.5 Mimg at batch 512: 0.99929
    model.ema_warmup = True

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 19_531  # 10 Mimg / 512
    optim.grad_clip = -1.  # none

    return config
