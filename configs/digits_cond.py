"""Class-conditional digits for classifier-free guidance: the embedded default plus labels.

model.num_classes = 10 gives the network a class embedding with an 11th, "null" row; during
training a fraction training.class_dropout of the labels is replaced by the null label, so one
network learns both s(x, t | y) and s(x, t). sampling.guidance_scale is the CFG weight w
((1 + w) s(x, t | y) - w s(x, t); 0 = plain conditional) and sampling.class_labels the classes
to sample (empty: 0, 1, ..., 9 cycled over the batch).
"""

from score_sde.configs.digits import get_config as get_digits_config


def get_config():
    config = get_digits_config()
    config.model.num_classes = 10
    config.training.class_dropout = 0.1
    config.sampling.guidance_scale = 1.0
    config.sampling.class_labels = ()
    return config
