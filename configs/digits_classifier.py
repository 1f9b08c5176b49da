"""Class-conditional digits plus a noise-conditional classifier for classifier guidance.

`config.classifier` is the classifier network (built by score_sde.models.classifier
.get_classifier), `config.classifier_training` its training loop (--mode train_classifier, saved
under workdir/classifier); sampling.classifier_scale is the guidance scale.
"""

import ml_collections

from score_sde.configs.digits_cond import get_config as get_cond_config


def get_config():
    config = get_cond_config()

    config.classifier = classifier = ml_collections.ConfigDict()
    classifier.name = 'wrn_classifier'
    classifier.nf = 32
    classifier.ch_mult = (1, 2)
    classifier.num_res_blocks = 1
    classifier.dropout = 0.0
    classifier.nonlinearity = 'swish'
    classifier.embedding_type = 'positional'
    classifier.fourier_scale = 16
    classifier.num_classes = 10
    classifier.ema_rate = 0.999

    config.classifier_training = ct = ml_collections.ConfigDict()
    ct.n_iters = 2000
    ct.batch_size = 64
    ct.log_freq = 100
    ct.snapshot_freq = 1000
    ct.eps = 1e-5

    config.sampling.classifier_scale = 1.0
    return config
