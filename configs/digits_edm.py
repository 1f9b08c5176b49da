"""The embedded default with EDM (Karras et al. 2022): the network, batch and step count of
configs/digits.py, EDM's preconditioning, loss (ln sigma ~ N(-1.2, 1.2^2)) and SDE
(sigma in [0.002, 80]), sampled with EDM's Heun at 35 NFE on the rho = 7 grid.
"""

from score_sde.configs.digits import get_config as get_digits_config


def get_config():
    config = get_digits_config()

    training = config.training
    training.sde = 'edm'
    training.continuous = True
    training.P_mean = -1.2
    training.P_std = 1.2

    sampling = config.sampling
    sampling.method = 'heun'  # nfe 35 by default; not set here, the adaptive ODE reads nfe too
    sampling.grid = 'karras'
    sampling.exponential = False  # EDM's own Heun step (Algorithm 2), as published

    model = config.model
    model.parameterization = 'edm'
    model.sigma_min = 0.002
    model.sigma_max = 80
    # Standard deviation of all pixels of the digits training split in the model's range [-1, 1]
    # (1,437 images x 64 pixels, x / 16 * 2 - 1): 0.752. Measured with
    #   x = datasets.digits_source('train').images / 16 * 2 - 1; x.std()
    model.sigma_data = 0.75

    return config
