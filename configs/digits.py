"""The embedded default: the small U-Net on 8x8 digits with the VP SDE, continuous time."""

from score_sde.configs.default_digits_configs import get_default_configs


def get_config():
    config = get_default_configs()

    training = config.training
    training.sde = 'vpsde'
    training.continuous = True
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'euler_maruyama'
    sampling.corrector = 'none'

    return config
