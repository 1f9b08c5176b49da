"""The noise range a config's image data gives the fixed-step samplers (issue 17, item 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import sde_lib
from score_sde.sampling import (
    DATA_RANGE_SAMPLERS,
    SAMPLERS,
    config_noise_range,
    get_sampler,
    get_sampler_from_config,
    get_time_grid,
)
from score_sde.sampling.grids import image_noise_range

SCORE = lambda x, t: -x  # noqa: E731  (any score: the tests compare samplers, not accuracy)


@pytest.mark.parametrize("centered,size,channels,expected", [
    (True, 32, 3, (0.002, 80.0)),                              # EDM's CIFAR-10 range
    (False, 32, 3, (0.001, 40.0)),                             # [0, 1]: half of it
    (True, 8, 1, (0.002, 80.0 * np.sqrt(64 / 3072))),          # digits: 11.55
    (True, 256, 3, (0.002, 640.0)),                            # 8x the side, 8x the top
])
def test_image_noise_range_is_edm_scaled_to_the_data(centered, size, channels, expected):
    np.testing.assert_allclose(image_noise_range(centered, size, channels), expected,
                               rtol=1e-12)


def _config(method: str, centered: bool | None = True, **sampling) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.sampling = ml_collections.ConfigDict(dict(method=method, **sampling))
    config.data = ml_collections.ConfigDict(dict(image_size=8, num_channels=1,
                                                 centered=centered))
    return config


def _draw(sample) -> np.ndarray:
    return np.asarray(sample(jax.random.PRNGKey(0), SCORE)[0])


def test_config_samplers_use_the_data_noise_range():
    """With sampling.data_noise_range (off by default), dpm_solver++ from a digits-like config
    ([-1, 1], 8 x 8 x 1) samples on the 'logsnr' grid of sigma_range = (0.002, 11.55); an
    explicit config.sampling.sigma_range or grid wins; PC keeps its published grid; a budget too
    small for the range's end steps falls back to the SDE's."""
    sde, shape, eps = sde_lib.VPSDE(), (3, 2), 1e-3
    derived = image_noise_range(True, 8, 1)

    def same(config, sde=sde, **options):
        got = _draw(get_sampler_from_config(config, sde, shape, eps))
        if "data_scale" in SAMPLERS.lookup(config.sampling.method).options:
            options.setdefault("data_scale", 1.0)  # the config's [-1, 1] data
        want = _draw(get_sampler(config.sampling.method, sde, shape, eps=eps, **options))
        np.testing.assert_array_equal(got, want)
        return got

    on = {"data_noise_range": True}
    plain = same(_config("dpm_solver++", nfe=4), nfe=4)  # off by default: the Python default
    ranged = same(_config("dpm_solver++", nfe=4, **on), nfe=4, grid="logsnr",
                  sigma_range=derived)
    assert np.abs(ranged - plain).max() > 1e-4  # the range changed the grid
    same(_config("dpm_solver++", nfe=4, sigma_range=(0.1, 5.0), **on), nfe=4,
         sigma_range=(0.1, 5.0))
    same(_config("ipndm", nfe=4, grid="karras", **on), nfe=4, grid="karras",
         sigma_range=derived)
    # UniPC (worse with a range at 5 NFE) and PC (the published grid) keep their own grids.
    assert "unipc" not in DATA_RANGE_SAMPLERS and "pc" not in DATA_RANGE_SAMPLERS
    assert config_noise_range(_config("dpm_solver++", centered=None)) is None  # no data scale
    # sub-VP reaches sigma 1e-4 < 0.002 and 152 > 11.55: 2 steps go to the range's two end
    # steps, none is left inside it.
    same(_config("dpm_solver++", nfe=2, **on), sde=sde_lib.subVPSDE(), nfe=2)


@pytest.mark.parametrize("name,plain", [("vp_uniform", "uniform"), ("vp_quadratic", "quadratic")])
def test_vp_grids_carry_the_vp_noise_levels_to_every_sde(name, plain):
    """On VP they are VP's own grids; on EDM's SDE (sigma 0.002..80, inside VP's range) the
    same spacing of VP time runs between VP's times of those two noise levels."""
    vp = sde_lib.VPSDE()
    np.testing.assert_allclose(get_time_grid(name, vp, 8, 1e-3),
                               get_time_grid(plain, vp, 8, 1e-3), atol=2e-7)
    edm = sde_lib.EDMSDE()
    sig = get_time_grid(name, edm, 8, 0.002).astype(np.float64)  # EDM: t = sigma
    t_vp = np.asarray(vp.t_from_log_snr(jnp.asarray(-np.log(sig), jnp.float32)), np.float64)
    u = (t_vp - t_vp[-1]) / (t_vp[0] - t_vp[-1])
    power = 1.0 if plain == "uniform" else 2.0
    np.testing.assert_allclose(u, np.linspace(1.0, 0.0, 9) ** power, atol=2e-4)
    assert sig[0] == np.float32(80.0) and sig[-1] == np.float32(0.002)


@pytest.mark.parametrize("name", ["vp_uniform", "vp_quadratic"])
def test_data_scale_puts_the_vp_grids_at_the_same_noise_relative_to_the_data(name):
    """Data s times wider: every point at s times the noise level. VE(0.01, 150) placed for
    s = 4 is VE(0.0025, 37.5) placed for unit data with its noise levels times 4; s = 1 (or
    None) is the unscaled grid exactly."""
    s = 4.0
    wide = get_time_grid(name, sde_lib.VESDE(0.01, 150.0), 10, 1e-5, data_scale=s)
    unit = get_time_grid(name, sde_lib.VESDE(0.01 / s, 150.0 / s), 10, 1e-5)
    sigma = lambda sde, ts: np.asarray(sde.marginal_coeffs(jnp.asarray(ts))[1])  # noqa: E731
    np.testing.assert_allclose(sigma(sde_lib.VESDE(0.01, 150.0), wide),
                               s * sigma(sde_lib.VESDE(0.01 / s, 150.0 / s), unit), rtol=2e-4)
    vp = sde_lib.VPSDE()
    np.testing.assert_array_equal(get_time_grid(name, vp, 10, 1e-3, data_scale=1.0),
                                  get_time_grid(name, vp, 10, 1e-3))
    assert not np.allclose(get_time_grid(name, vp, 10, 1e-3, data_scale=0.1),
                           get_time_grid(name, vp, 10, 1e-3), atol=1e-3)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_data_scale_gives_one_clear_error(bad):
    with pytest.raises(ValueError, match="data_scale must be a finite number > 0"):
        get_sampler("dpm_solver++", sde_lib.VPSDE(), (2, 2), nfe=5, data_scale=bad)


def test_config_samplers_place_their_grid_for_the_data_scale():
    """A config's image data gives the fixed-step samplers data_scale 1 ([-1, 1]: the grid
    VP's published one, unchanged) or 0.5 ([0, 1]); config.sampling.data_scale wins; without
    a data scale (nor a stored one) the sampler's default: the scale estimated from the score."""
    sde, shape, eps = sde_lib.VESDE(0.01, 348.0), (3, 2), 1e-5

    def ts(config, **options):
        got = get_sampler_from_config(config, sde, shape, eps).ts
        want = get_sampler(config.sampling.method, sde, shape, eps=eps, **options).ts
        np.testing.assert_array_equal(got, want)
        return got

    plain = ts(_config("ddim", nfe=6, centered=True), nfe=6, data_scale=1.0)
    half = ts(_config("ddim", nfe=6, centered=False), nfe=6, data_scale=0.5)
    assert not np.allclose(plain, half)
    ts(_config("unipc", nfe=6, centered=False, data_scale=3.0), nfe=6, data_scale=3.0)
    ts(_config("heun", nfe=7, centered=None), nfe=7)
