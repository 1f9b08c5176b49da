"""The data's scale: estimated from the score (sampling.scale), stored with a run
(data_stats) and used by the samplers built from a config."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from score_sde import analytic, data_stats, sde_lib
from score_sde.sampling import get_sampler, get_sampler_from_config
from score_sde.sampling.scale import estimate_data_scale, scale_ladder

SDES = {"vp": (sde_lib.VPSDE(), 1e-3), "subvp": (sde_lib.subVPSDE(), 1e-3),
        "ve": (sde_lib.VESDE(0.01, 150.0), 1e-5), "edm": (sde_lib.EDMSDE(0.002, 80.0), 0.002)}


@pytest.mark.parametrize("spread", [0.05, 20.0])
@pytest.mark.parametrize("name", list(SDES))
def test_the_estimate_recovers_a_gaussian_scale(name, spread):
    """Gaussian data N(mu, s^2 I) (mean off zero): the estimate is within 15% of s on every
    SDE (measured: 4-16% on 2-D at these batch sizes; 512 examples of 8-D here)."""
    sde, eps = SDES[name]
    data = analytic.GaussianMixture.gaussian(np.full(8, 2.0 * spread), spread**2 * np.eye(8))
    est = estimate_data_scale(sde, data.perturbed_score_fn(sde), jax.random.PRNGKey(0),
                              (512, 8), eps)
    assert abs(float(est) / spread - 1.0) < 0.15


@pytest.fixture(scope="module")
def narrow():
    sde = sde_lib.VPSDE()
    data = analytic.GaussianMixture.gaussian(np.zeros(2), 0.05**2 * np.eye(2))
    return sde, data.perturbed_score_fn(sde)


def test_an_estimating_sampler_runs_under_jit_and_counts_its_pilot_call(narrow):
    """No data_scale: iPNDM spends one of its 10 calls on the estimate (nfe stays 10), picks
    the grid of a scale near 0.05 under jit, and samples the narrow data far better than the
    unit-scale grid does (data_scale=1.0: the old default, still reachable)."""
    sde, score = narrow
    est = get_sampler("ipndm", sde, (256, 2))
    old = get_sampler("ipndm", sde, (256, 2), data_scale=1.0)
    assert len(est.ts) == len(old.ts) - 1  # 9 steps + the pilot call
    x, nfe = jax.jit(lambda r: est(r, score))(jax.random.PRNGKey(1))
    x_old, nfe_old = jax.jit(lambda r: old(r, score))(jax.random.PRNGKey(1))
    assert int(nfe) == int(nfe_old) == 10
    assert abs(float(np.std(np.asarray(x))) / 0.05 - 1.0) < 0.15
    ladder = scale_ladder(sde, 1e-3)
    assert np.isclose(ladder, 1.0).any() and ladder.min() < 0.01 and ladder.max() > 152


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_bad_data_scale_gives_one_clear_error(bad):
    with pytest.raises(ValueError, match="data_scale must be a finite number > 0"):
        get_sampler("heun", sde_lib.VPSDE(), (2, 2), data_scale=bad)


def _config(method="ddim", centered=True):
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict({"centered": centered})
    config.sampling = ml_collections.ConfigDict({"method": method, "nfe": 6})
    return config


class _Pipeline:
    num_batches = None

    def __init__(self, images):
        self.images = images

    def batch(self, step):
        return {"image": self.images[8 * step:8 * step + 8]}


def test_stored_statistics_round_trip_and_place_the_config_samplers_grid(tmp_path):
    """A run's data_stats.json holds the scaled data's mean and spread; a sampler from a
    config that gives no data range takes that spread as data_scale; an image config keeps
    its range's scale (1 for [-1, 1]) with or without the file."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0.4, 0.6, size=(64, 4, 4, 1)).astype(np.float32)
    stats = data_stats.measure_dataset(_Pipeline(images), lambda x: 2.0 * x - 1.0, examples=32)
    assert stats["examples"] == 32 and stats["dim"] == 16
    want = np.sqrt(np.var((2.0 * images[:32] - 1.0).reshape(32, -1), axis=0, ddof=1).mean())
    np.testing.assert_allclose(stats["spread"], want, rtol=1e-6)
    assert data_stats.load(tmp_path) is None
    data_stats.record(tmp_path, stats)
    assert data_stats.load(tmp_path) == stats
    sde, config = sde_lib.VPSDE(), _config()
    no_range = _config(centered=None)
    got = get_sampler_from_config(no_range, sde, (2, 16), 1e-3, data_stats=stats).ts
    np.testing.assert_array_equal(
        got, get_sampler("ddim", sde, (2, 16), nfe=6, data_scale=stats["spread"]).ts)
    unit = get_sampler("ddim", sde, (2, 16), nfe=6, data_scale=1.0).ts
    for data in (stats, None):
        np.testing.assert_array_equal(
            get_sampler_from_config(config, sde, (2, 16), 1e-3, data_stats=data).ts, unit)
    (tmp_path / data_stats.FILE).write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="is not a 'score_sde data statistics' file"):
        data_stats.load(tmp_path)
