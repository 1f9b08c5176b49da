"""Registries: one helper, registration at the definition, config fields from signatures.

A toy sampler registered here (and removed after) goes through get_sampler,
get_sampler_from_config, the config-field declarations and the merge check without any table
being edited: adding a sampler is one decorated function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import controllable, sampling, sde_lib
from score_sde.models import layers
from score_sde.models import registry as model_registry
from score_sde.registry import Registry, UnknownNameError
from score_sde.sampling import correctors, grids, ode, predictors
from score_sde.sampling.common import prior_sample, projection_steps
from score_sde.sampling.registry import SAMPLERS, register_sampler

SHAPE = (3, 2)


# ------------------------------------------------------------------------------ the helper


def test_registry_registers_looks_up_and_names_the_choices():
    reg: Registry[int] = Registry("colour", field="config.colour")
    assert reg.register("red", wrap=len)("abc") == "abc"  # the decorated object comes back
    reg.register("blue")(7)
    assert (reg["red"], reg.lookup("blue"), reg.names(), list(reg)) == (
        3, 7, ["blue", "red"], ["red", "blue"])
    with pytest.raises(ValueError, match=r"^config.colour='green' is not a known colour; "
                                         r"choose one of \['blue', 'red'\]$"):
        reg.lookup("green")
    with pytest.raises(KeyError):  # a Mapping: .get and `in` behave as for a dict
        reg["green"]
    assert reg.get("green", 0) == 0 and "green" not in reg
    with pytest.raises(ValueError, match="colour named 'red' is already registered"):
        reg.register("red")(1)
    with pytest.raises(ValueError, match=r"^colour 'x' is unknown; choose one of"):
        Registry("colour").lookup("x")


def test_registry_views_are_live_and_monkeypatch_can_replace_entries(monkeypatch):
    reg: Registry[int] = Registry("number", entries={"one": 1, "two": 2})
    odd = reg.names_where(lambda n: n % 2 == 1)
    assert list(odd) == ["one"] and "two" not in odd and "nine" not in odd
    reg.register("three")(3)
    assert list(odd) == ["one", "three"] and len(odd) == 2
    monkeypatch.setitem(reg, "two", 5)
    assert "two" in odd
    monkeypatch.undo()
    assert reg["two"] == 2


@pytest.mark.parametrize("look_up,message", [
    (lambda: predictors.get_predictor("leapfrog"), "sampling.predictor='leapfrog' is not a "
     "known predictor; choose one of ['ancestral_sampling', 'euler_maruyama', 'none', "
     "'reverse_diffusion']"),
    (lambda: correctors.get_corrector("hmc"), "sampling.corrector='hmc' is not a known "
     "corrector; choose one of ['ald', 'langevin', 'none']"),
    (lambda: grids.get_time_grid("cosine", sde_lib.VPSDE(), 4, 1e-3), "grid='cosine' is not a "
     "known time grid; choose one of ['karras', 'logsnr', 'quadratic', 'uniform', "
     "'vp_quadratic', 'vp_uniform']"),
    (lambda: ode.get_ode_solver("rk4"), "solver='rk4' is not a known ODE solver; choose one of "
     "['bosh3', 'dopri5', 'dopri8', 'euler', 'heun', 'tsit5']"),
    (lambda: sampling.get_sampler("euler", sde_lib.VPSDE(), SHAPE), "sampler 'euler' is unknown;"
     " choose one of ['consistency', 'ddim', 'dpm_solver++', 'heun', 'ipndm', 'learned', 'ode',"
     " 'pc', 'unipc']"),
    (lambda: layers.get_act(ml_collections.ConfigDict({"model": {"nonlinearity": "GELU"}})),
     "config.model.nonlinearity='gelu' is not a known activation; choose one of ['elu', "
     "'lrelu', 'relu', 'swish']"),
], ids=["predictor", "corrector", "grid", "ode_solver", "sampler", "activation"])
def test_each_registry_gives_one_message_naming_field_name_and_choices(look_up, message):
    with pytest.raises(UnknownNameError) as err:
        look_up()
    assert str(err.value) == message


def test_model_registry_names_the_config_field():
    config = ml_collections.ConfigDict({"model": {"name": "resnet"}})
    with pytest.raises(ValueError, match=r"config.model.name='resnet' is not a known model; "
                                         r"choose one of \['ddpm', "):
        model_registry.get_model(config)
    with pytest.raises(ValueError, match="model named 'ddpm' is already registered"):
        model_registry.register_model("ddpm")(object)


# ------------------------------------------------------------------------- the samplers


def test_sampler_config_fields_are_its_keyword_options():
    """Option x is config.sampling.x, except the declared exceptions and caller options (the
    time array ts is a call option of every sampler, not a config field)."""
    exceptions = {"ode": {"solver": "ode_solver"}, "pc": {"nfe": None},
                  "learned": {"weights": None}}
    for name, spec in SAMPLERS.items():
        expected = {opt: {"ts": None, **exceptions.get(name, {})}.get(opt, opt)
                    for opt in spec.options if opt not in ("eps", "sharding")}
        assert dict(spec.config_fields) == {k: v for k, v in expected.items() if v}, name
    assert list(sampling.MERGE_SAMPLERS) == ["consistency", "ddim", "dpm_solver++", "heun",
                                             "ipndm", "learned", "pc", "unipc"]
    assert set(sampling.NEW_CONFIG_FIELDS) == {
        "nfe", "grid", "eta", "ode_solver", "rtol", "atol", "n_steps", "S_churn", "S_tmin",
        "S_tmax", "S_noise", "order", "sigma_range", "guidance_scale", "class_labels",
        "max_steps", "lower_order_final", "variant", "consistency_sigmas", "data_noise_range",
        "data_scale", "exponential", "analytic_first_step", "coefficients", "learn_steps",
        "learn_times"}
    assert (sampling.NEW_CONFIG_FIELDS["sigma_range"], sampling.NEW_CONFIG_FIELDS["S_tmax"],
            sampling.NEW_CONFIG_FIELDS["lower_order_final"]) == (tuple, float, bool)


def test_options_are_read_from_the_fields_of_the_signature():
    config = ml_collections.ConfigDict({"sampling": sampling.add_config_fields(
        ml_collections.ConfigDict({"method": "dpm_solver++", "noise_removal": True}))})
    config.sampling.update(nfe=9, lower_order_final=False, ode_solver="bosh3", eta=0.5)
    assert sampling.sampler_options_from_config(config) == (
        "dpm_solver++", {"nfe": 9, "lower_order_final": False})
    assert sampling.sampler_options_from_config(config, "ode") == (
        "ode", {"solver": "bosh3", "nfe": 9, "noise_removal": True})


@pytest.fixture
def toy():
    """A one-function sampler, registered for one test: x <- x + scale * score, `steps` times."""

    @register_sampler("toy", merges=True, fields={"scale": "toy_scale"})
    def toy_sampler(sde, shape, *, scale: float = 1.0, steps: int | None = None,
                    eps: float = 1e-3, sharding=None):
        n = steps or 2

        def sample(rng, score_fn, project=None):
            rng, proj = projection_steps(project, rng)
            x, _ = prior_sample(sde, rng, shape, sharding)
            for k in range(n):
                x = x + scale * score_fn(x, jnp.full((shape[0],), eps))
                x, _ = proj(x, x, eps, k)
            return x, jnp.asarray(n, jnp.int32)

        return sample

    yield toy_sampler
    del SAMPLERS["toy"]


def _toy_expected(scale: float, steps: int) -> np.ndarray:
    x, _ = prior_sample(sde_lib.VPSDE(), jax.random.PRNGKey(0), SHAPE)
    for _ in range(steps):
        x = x + scale * -x
    return np.asarray(x)


def test_a_decorated_function_is_a_sampler_with_config_fields(toy):
    sde, score_fn, rng = sde_lib.VPSDE(), (lambda x, t: -x), jax.random.PRNGKey(0)
    x, nfe = sampling.get_sampler("toy", sde, SHAPE, scale=0.25, steps=3)(rng, score_fn)
    np.testing.assert_array_equal(x, _toy_expected(0.25, 3))
    assert int(nfe) == 3
    with pytest.raises(ValueError, match=r"sampler 'toy' has no option\(s\) \['toy_scale'\]"):
        sampling.get_sampler("toy", sde, SHAPE, toy_scale=0.5)

    # Its fields are declared on new configs and read from them (toy_scale by its map).
    assert {"toy_scale": float, "steps": int}.items() <= sampling.new_config_fields().items()
    section = sampling.add_config_fields(ml_collections.ConfigDict({"method": "toy"}))
    assert section.toy_scale is None and section.steps is None
    config = ml_collections.ConfigDict({"sampling": section})
    x, nfe = sampling.get_sampler_from_config(config, sde, SHAPE, 1e-3)(rng, score_fn)
    np.testing.assert_array_equal(x, _toy_expected(1.0, 2))  # unset: its own defaults
    config.sampling.update(toy_scale=0.5, steps=4)
    x, nfe = sampling.get_sampler_from_config(config, sde, SHAPE, 1e-3)(rng, score_fn)
    np.testing.assert_array_equal(x, _toy_expected(0.5, 4))
    assert int(nfe) == 4


def test_a_registered_merging_sampler_serves_inpainting(toy):
    assert "toy" in sampling.MERGE_SAMPLERS and "toy" in controllable.MERGE_SAMPLERS
    sample = controllable.merging_sampler(sde_lib.VPSDE(), SHAPE, "toy", steps=1)
    pinned = lambda rng, x, x_mean, t: (jnp.ones_like(x), x_mean)  # noqa: E731
    x, _ = sample(jax.random.PRNGKey(0), lambda x, t: -x, pinned)
    np.testing.assert_array_equal(x, np.ones(SHAPE))
    with pytest.raises(ValueError, match="sampler='ode' cannot merge"):
        controllable.merging_sampler(sde_lib.VPSDE(), SHAPE, "ode")


def test_bad_registrations_are_refused():
    def no_type(sde, shape, *, width=None):
        return None

    with pytest.raises(ValueError, match="give option 'width' a one-type annotation"):
        register_sampler("bad_type", merges=False)(no_type)
    with pytest.raises(ValueError, match=r"fields names \['depth'\], which no_type does not"):
        register_sampler("bad_field", merges=False, fields={"depth": "d"})(no_type)
    with pytest.raises(ValueError, match="sampler named 'pc' is already registered"):
        register_sampler("pc", merges=True)(no_type)
    assert "bad_type" not in SAMPLERS and "bad_field" not in SAMPLERS
