"""The samplers' config adapter (score_sde.sampling.from_config): the front door re-exports it,
and config.sampling.data_noise_range follows one stated rule (issue 24, item 6)."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from score_sde import sampling, sde_lib
from score_sde.sampling import from_config
from score_sde.sampling.grids import image_noise_range

EPS = 1e-3
DIGITS_RANGE = image_noise_range(True, 8, 1)  # (0.002, 11.55)


def test_the_front_door_re_exports_the_adapter():
    for name in from_config.__all__:
        assert getattr(sampling, name) is getattr(from_config, name), name
        assert name in sampling.__all__


@pytest.mark.parametrize("sde,ends", [
    (sde_lib.VPSDE(), 1),       # levels 0.01..152: the range's top end only (T -> 11.55)
    (sde_lib.subVPSDE(), 2),    # levels 1e-4..152: both ends lie beyond the range
    (sde_lib.VESDE(0.01, 5.0), 0),  # levels inside the range: no end steps
])
def test_a_range_fits_a_budget_of_one_step_more_than_its_end_steps(sde, ends):
    assert not from_config.data_range_fits(sde, DIGITS_RANGE, EPS, ends)
    assert from_config.data_range_fits(sde, DIGITS_RANGE, EPS, ends + 1)


def _config(nfe: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.sampling = ml_collections.ConfigDict(dict(method="dpm_solver++", nfe=nfe,
                                                     data_noise_range=True))
    config.data = ml_collections.ConfigDict(dict(image_size=8, num_channels=1, centered=True))
    return config


@pytest.mark.parametrize("nfe,ranged", [(2, False), (3, True), (6, True)])
def test_the_data_range_is_used_exactly_when_the_budget_fits_it(nfe, ranged):
    """sub-VP, DPM-Solver++ (one step per score call): 2 steps cannot hold the range's two end
    steps and one inside, so the default grid over the SDE's range is kept; from 3 on, the
    'logsnr' grid over the data's range."""
    sde = sde_lib.subVPSDE()
    got = sampling.get_sampler_from_config(_config(nfe), sde, (3, 2), EPS).ts
    options = {"grid": "logsnr", "sigma_range": DIGITS_RANGE} if ranged else {}
    want = sampling.get_sampler("dpm_solver++", sde, (3, 2), eps=EPS, nfe=nfe, data_scale=1.0,
                                **options).ts
    np.testing.assert_array_equal(got, want)
    assert from_config.data_range_fits(sde, DIGITS_RANGE, EPS, nfe) == ranged


def test_a_data_range_outside_the_sdes_noise_levels_is_one_clear_error():
    """It used to fall back to the default grid without a word; now it names the field."""
    sde = sde_lib.VESDE(20.0, 50.0)  # noise levels 20..50, above the digits' 0.002..11.55
    with pytest.raises(ValueError, match=r"^config.sampling.data_noise_range: the data's noise "
                                         r"range .* lies outside the SDE's noise levels"):
        sampling.get_sampler_from_config(_config(6), sde, (3, 2), EPS)
    config = _config(6)
    config.sampling.data_noise_range = False  # off: the SDE's own range, no error
    sampling.get_sampler_from_config(config, sde, (3, 2), EPS)
