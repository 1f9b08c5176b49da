"""Data parallelism on 8 CPU devices gives the one-device result for the same global batch."""

import jax
import numpy as np
import pytest

from score_sde import losses, models, parallel, sde_lib, train
from score_sde.data import get_data_scaler, get_dataset
from tests import driver_configs

STEPS = 3


@pytest.fixture(scope="module")
def setup():
    assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
    config = driver_configs.tiny({"training.batch_size": 16})
    sde, _ = sde_lib.get_sde(config)
    model = models.get_model(config)
    optimizer = losses.get_optimizer(config)
    step_fn = losses.get_step_fn(config, sde, model, optimizer, train=True)
    init = jax.device_get(jax.jit(lambda r: losses.init_train_state(r, config, model, optimizer))(
        jax.random.PRNGKey(0)))
    ds = get_dataset(config, "train", process_index=0, process_count=1)
    batches = [ds.batch(i) for i in range(STEPS)]
    return config, step_fn, init, batches


def _run(setup, n_devices, steps_per_call, use_scan=None):
    config, step_fn, init, batches = setup
    mesh = parallel.make_mesh(jax.devices()[:n_devices])
    call = train.make_train_call(step_fn, mesh, get_data_scaler(config), use_scan)
    state = parallel.replicate(init, mesh)
    losses_seen = []
    for start in range(0, STEPS, steps_per_call):
        chunk = batches[start:start + steps_per_call]
        stacked = {k: np.stack([b[k] for b in chunk]) for k in chunk[0]}
        state, step_losses = call(state, parallel.shard_batch(stacked, mesh, leading_axes=1))
        losses_seen += list(np.asarray(step_losses))
    return jax.device_get(state), np.asarray(losses_seen)


@pytest.fixture(scope="module")
def run(setup):
    """(n_devices, steps_per_call) -> (final state, losses), each computed once."""
    cache = {}

    def get(n_devices, steps_per_call, use_scan=None):
        key = n_devices, steps_per_call, use_scan
        if key not in cache:
            cache[key] = _run(setup, *key)
        return cache[key]

    return get


def _assert_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)


def test_eight_devices_equal_one_device(setup, run):
    one_state, one_losses = run(1, 1)
    eight_state, eight_losses = run(8, 1)
    assert int(eight_state.step) == STEPS
    np.testing.assert_allclose(eight_losses, one_losses, rtol=2e-5)
    _assert_close(eight_state.params, one_state.params)
    _assert_close(eight_state.ema_params, one_state.ema_params)
    # and the batch really was split: each device held 2 of the 16 examples
    mesh = parallel.make_mesh()
    x = parallel.shard_batch({"image": setup[3][0]["image"]}, mesh)["image"]
    assert {s.data.shape[0] for s in x.addressable_shards} == {2}


@pytest.mark.parametrize("use_scan", [False, True])
def test_several_steps_per_call_equal_single_steps(run, use_scan):
    """n_jitted_steps: unrolled (the CPU default) or a lax.scan (accelerators)."""
    single, single_losses = run(8, 1)
    several, several_losses = run(8, STEPS, use_scan)
    np.testing.assert_allclose(several_losses, single_losses, rtol=2e-5)
    _assert_close(several.params, single.params)
