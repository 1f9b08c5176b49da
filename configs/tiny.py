"""The smallest useful config, for tests: digits-shaped data, a ~30k-parameter U-Net, few steps."""

from score_sde.configs.digits import get_config as get_digits_config


def get_config():
    config = get_digits_config()

    training = config.training
    training.batch_size = 8
    training.n_iters = 11
    training.snapshot_freq = 5
    training.log_freq = 2
    training.eval_freq = 5
    training.snapshot_freq_for_preemption = 5

    evaluate = config.eval
    evaluate.batch_size = 8
    evaluate.num_samples = 8
    evaluate.end_ckpt = 2

    model = config.model
    model.nf = 8
    model.num_scales = 50
    model.dropout = 0.

    optim = config.optim
    optim.warmup = 2

    return config
