"""Published score_sde checkpoints load into our networks and give the published outputs.

Fixtures (tests/fixtures/published_checkpoints/, see its README): small networks in the
published msgpack format, with the published network's output on a fixed input.
"""

from __future__ import annotations

import copy
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.models import get_model
from score_sde.published import (
    load_published,
    load_published_state,
    params_from_state,
    published_step,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "published_checkpoints")

# fixture folder -> the shipped config of the same family
BASE_CONFIGS = {
    "ve_ncsnpp_fir_progressive": "ve.cifar10_ncsnpp_continuous",
    "vp_ddpmpp": "vp.cifar10_ddpmpp_continuous",
    "vp_ddpm": "vp.ddpm.cifar10",
}
TOLERANCE = 1e-5


def fixture_config(name: str):
    """The shipped config, with model.* and data.* overridden by the fixture's config.json."""
    config = importlib.import_module("configs." + BASE_CONFIGS[name]).get_config()
    with open(os.path.join(FIXTURES, name, "config.json")) as f:
        published = json.load(f)
    for section in ("model", "data"):
        for key, value in published[section].items():
            config[section][key] = tuple(value) if isinstance(value, list) else value
    return config


@pytest.fixture(scope="module", params=sorted(BASE_CONFIGS))
def fixture(request):
    name = request.param
    folder = os.path.join(FIXTURES, name)
    config = fixture_config(name)
    io = dict(np.load(os.path.join(folder, "io.npz")))
    return dict(name=name, folder=folder, config=config, io=io,
                state=load_published_state(os.path.join(folder, "checkpoint_26")))


def test_network_reproduces_published_output(fixture):
    params = load_published(os.path.join(fixture["folder"], "checkpoint_26"), fixture["config"])
    io = fixture["io"]
    out = get_model(fixture["config"]).apply({"params": params}, jnp.asarray(io["x"]),
                                             jnp.asarray(io["labels"]), train=False)
    diff = float(np.max(np.abs(np.asarray(out) - io["out"])))
    print(f"{fixture['name']}: max |ours - published| = {diff:.3g} "
          f"(max |published| = {np.abs(io['out']).max():.3g})")
    assert diff <= TOLERANCE


def test_directory_path_and_step(fixture):
    from_dir = load_published(fixture["folder"], fixture["config"])
    from_file = params_from_state(fixture["state"], fixture["config"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_dir, from_file)
    assert published_step(fixture["folder"]) == 1300000


def test_use_ema_false_loads_the_training_parameters(fixture):
    raw = params_from_state(fixture["state"], fixture["config"], use_ema=False)
    ema = params_from_state(fixture["state"], fixture["config"], use_ema=True)
    target = fixture["state"]["optimizer"]["target"]
    np.testing.assert_array_equal(raw["Conv_0"]["kernel"], target["Conv_0"]["kernel"])
    assert not np.array_equal(raw["Conv_0"]["kernel"], ema["Conv_0"]["kernel"])


def test_wrong_network_is_one_clear_error():
    config = fixture_config("vp_ddpmpp")
    config.model.nf = 32
    first = r"AttnBlockpp_0/GroupNorm_0/bias \(32,\) != \(64,\)"
    with pytest.raises(ValueError, match=r"nf=32.*wrong shape .*" + first):
        load_published(os.path.join(FIXTURES, "vp_ddpmpp"), config)


def test_missing_and_unexpected_parameters_are_named():
    config = fixture_config("vp_ddpmpp")
    state = copy.deepcopy(load_published_state(os.path.join(FIXTURES, "vp_ddpmpp")))
    del state["params_ema"]["AttnBlockpp_1"]["NIN_3"]
    state["params_ema"]["Mystery_0"] = {"kernel": np.zeros((3,))}
    with pytest.raises(ValueError) as info:
        params_from_state(state, config)
    message = str(info.value)
    assert "missing: AttnBlockpp_1/NIN_3/W, AttnBlockpp_1/NIN_3/b" in message
    assert "unexpected: Mystery_0/kernel" in message
    assert message.count("\n") == 0


def test_wrong_model_family_is_reported():
    config = fixture_config("vp_ddpm")
    with pytest.raises(ValueError, match=r"name='ddpm'.*missing: .*unexpected: "):
        load_published(os.path.join(FIXTURES, "vp_ddpmpp"), config)


def test_corrupted_file(tmp_path):
    bad = tmp_path / "checkpoint_3"
    bad.write_bytes(b"\x00 this is not msgpack \xff" * 10)
    with pytest.raises(ValueError, match="not a flax msgpack checkpoint"):
        load_published(str(bad), fixture_config("vp_ddpmpp"))


def test_state_without_ema_parameters():
    state = dict(load_published_state(os.path.join(FIXTURES, "vp_ddpmpp")))
    del state["params_ema"]
    with pytest.raises(ValueError, match="no 'params_ema'"):
        params_from_state(state, fixture_config("vp_ddpmpp"))


def test_missing_path():
    with pytest.raises(FileNotFoundError):
        load_published("/nonexistent/checkpoint_1", fixture_config("vp_ddpmpp"))
