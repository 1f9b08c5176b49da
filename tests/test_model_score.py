"""A trained network's score in one place (models.utils.trained_score_fn), checked in closed
form with a stub network, and the renamed names of issue 24 item 4."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import inference, sde_lib
from score_sde.models import parameterization as param_lib
from score_sde.models import utils as model_utils
from tests.driver_configs import tiny

SDE = sde_lib.VPSDE()
X = jnp.ones((3, 2, 2, 1))
T = jnp.array([0.1, 0.5, 1.0])
NULL = 10  # the unconditional label of a 10-class network


class Stub(nn.Module):
    """output = labels + 1000 y (y: the class label, 0 without one), broadcast to x's shape;
    records the batch size of every call."""

    config: Any = None
    on_call: Any = None  # called with the batch size

    @nn.compact
    def __call__(self, x, labels, train=False, y=None):
        if self.on_call is not None:
            self.on_call(x.shape[0])
        out = labels if y is None else labels + 1000.0 * y
        return jnp.broadcast_to(out.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def _vp_score(y) -> np.ndarray:
    """VP continuous: score = -output / std, output = 999 t + 1000 y."""
    std = np.asarray(SDE.marginal_prob(X, T)[1])
    return -(999.0 * np.asarray(T) + 1000.0 * np.asarray(y, np.float64)) / std


def _first(score_fn) -> np.ndarray:
    return np.asarray(score_fn(X, T))[:, 0, 0, 0]


def test_plain_conditional_and_guided_scores_in_closed_form():
    labels = jnp.array([3, 9, 0])  # guided outputs far from 0: no float32 cancellation
    plain = model_utils.trained_score_fn(SDE, Stub(), {})
    np.testing.assert_allclose(_first(plain), _vp_score(0), rtol=1e-5)
    cond = model_utils.trained_score_fn(SDE, Stub(), {}, labels=labels)
    np.testing.assert_allclose(_first(cond), _vp_score(labels), rtol=1e-5)
    w, calls = 2.5, []
    guided = model_utils.trained_score_fn(SDE, Stub(on_call=calls.append), {}, labels=labels,
                                          guidance_scale=w, null_label=NULL)
    # (1 + w) s(x, t | y) - w s(x, t | null): the labels' output mixed with the null label's.
    np.testing.assert_allclose(_first(guided), _vp_score((1 + w) * labels - w * NULL),
                               rtol=1e-5)
    assert calls == [6]  # one network call on the doubled batch per score evaluation
    one_label = model_utils.trained_score_fn(SDE, Stub(), {}, labels=4)
    np.testing.assert_allclose(_first(one_label), _vp_score([4, 4, 4]), rtol=1e-5)


def test_guidance_without_the_null_label_is_one_clear_error():
    with pytest.raises(ValueError, match="needs null_label"):
        model_utils.trained_score_fn(SDE, Stub(), {}, labels=1, guidance_scale=1.0)


def test_the_parameterisation_is_resolved_once(monkeypatch):
    """From the network's config once when the score is built, not at every evaluation."""
    resolved = []
    from_config = param_lib.from_config
    monkeypatch.setattr(param_lib, "from_config",
                        lambda *a, **k: resolved.append(1) or from_config(*a, **k))
    config = tiny({"model.num_classes": NULL})
    score_fn = model_utils.trained_score_fn(SDE, Stub(config=config), {}, labels=1,
                                            guidance_scale=2.0, null_label=NULL)
    for _ in range(3):
        score_fn(X, T)
    assert resolved == [1]


def test_inference_reads_labels_and_guidance_as_the_config_says():
    """An unconditional config ignores labels; a conditional one guides with its num_classes
    as the null label."""
    labels, w = jnp.array([3, 9, 0]), 1.5
    plain = tiny()
    got = inference.model_score_fn(plain, SDE, Stub(config=plain), {}, labels, w)
    np.testing.assert_allclose(_first(got), _vp_score(0), rtol=1e-5)
    cond = tiny({"model.num_classes": NULL})
    got = inference.model_score_fn(cond, SDE, Stub(config=cond), {}, labels, w)
    np.testing.assert_allclose(_first(got), _vp_score((1 + w) * labels - w * NULL), rtol=1e-5)


@pytest.mark.parametrize("statement,new", [
    ("from score_sde.inference import Sampler", "score_sde.inference.ConfigSampler"),
    ("from score_sde.evaluate import Sampler", "score_sde.inference.ConfigSampler"),
    ("from score_sde.distillation import Teacher", "score_sde.distillation.TeacherModel"),
])
def test_renamed_names_fail_with_one_line_naming_the_new_one(statement, new):
    with pytest.raises(ImportError) as e:
        exec(statement, {})
    assert new in str(e.value) and "\n" not in str(e.value)
