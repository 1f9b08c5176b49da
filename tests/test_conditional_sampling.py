"""Sample mode of class-conditional models: labels from the config, classifier-free guidance."""

import jax
import numpy as np
import pytest

from configs.tiny import get_config
from score_sde import inference, models, parallel, sampling, sde_lib


def _config(guidance_scale, class_labels=(3, 7)):
    config = get_config()
    config.model.num_classes = 10
    config.sampling.guidance_scale = guidance_scale
    config.sampling.class_labels = class_labels
    config.sampling.method = "ddim"
    config.sampling.nfe = 4
    return config


def test_class_labels_cycle_and_are_checked():
    labels = sampling.class_labels_from_config
    np.testing.assert_array_equal(labels(_config(1.0), 5), [3, 7, 3, 7, 3])
    np.testing.assert_array_equal(labels(_config(1.0, ()), 3), [0, 1, 2])
    assert labels(_config(1.0, ()), 3, every_class_by_default=False) is None  # editing modes
    for every_class in (True, False):
        with pytest.raises(ValueError, match="config.sampling.class_labels"):
            labels(_config(1.0, (10,)), 4, every_class_by_default=every_class)
    assert labels(get_config(), 4) is None


def test_guidance_scale_changes_samples_not_their_cost():
    mesh = parallel.make_mesh(jax.devices()[:1])
    results = {}
    for w in (0.0, 3.0):
        config = _config(w)
        sde, eps = sde_lib.get_sde(config)
        model = models.get_model(config)
        params = models.init_model(jax.random.PRNGKey(0), config)
        # Non-zero output layers, so that the class embedding reaches the score.
        params = jax.tree.map(lambda p: p + 0.05, params)
        sampler = inference.ConfigSampler(config, sde, eps, model, mesh, n=4)
        results[w] = sampler(params, jax.random.PRNGKey(1))
    (x0, nfe0), (x3, nfe3) = results[0.0], results[3.0]
    assert x0.shape == (4, 8, 8, 1) and nfe0 == nfe3 == 4
    assert float(np.abs(np.asarray(x0) - np.asarray(x3)).max()) > 1e-3
