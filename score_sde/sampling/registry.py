"""The sampler registry: `@register_sampler(name, merges=...)` at a sampler's definition.

A sampler factory `factory(sde, shape, *, option=default, ...) -> sample` is registered with
whether its `sample(rng, score_fn, project)` takes a per-step merge (a fixed-step sampler does;
inpainting and colorization need one). Its keyword options are its config: option `x` is read
from `config.sampling.x`, typed by its annotation. `fields` maps an option to a config field
of another name (the published `ode_solver` for the ODE's `solver`), or to None for an option
that is not read from the config. `eps` and `sharding` come from the caller, never the config.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping

import jax

from score_sde.registry import Registry
from score_sde.sde_lib import SDE, ScoreFn

Sampler = Callable[[jax.Array, ScoreFn], tuple[jax.Array, jax.Array]]
# Options the caller passes (the SDE's eps, the batch layout), never read from the config.
CALLER_OPTIONS = ("eps", "sharding")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its factory, whether it merges per step, its config fields.

    options: every keyword the factory takes; config_fields: option -> config.sampling field;
    field_types: config.sampling field -> the type it holds.
    """

    factory: Callable[..., Sampler]
    merges: bool
    options: tuple[str, ...]
    config_fields: Mapping[str, str]
    field_types: Mapping[str, type]


SAMPLERS: Registry[SamplerSpec] = Registry("sampler")
# The samplers that take a per-step merge (a live view: later registrations count).
MERGE_SAMPLERS = SAMPLERS.names_where(lambda spec: spec.merges)


def register_sampler(name: str, *, merges: bool,
                     fields: Mapping[str, str | None] | None = None):
    """Decorator: make `factory` the sampler `name` (see the module docstring)."""
    return SAMPLERS.register(name, lambda factory: _spec(name, factory, merges, fields or {}))


def _spec(name: str, factory: Callable[..., Sampler], merges: bool,
          fields: Mapping[str, str | None]) -> SamplerSpec:
    params = inspect.signature(factory).parameters
    options = tuple(p for p in params if p not in ("sde", "shape"))
    strange = sorted(set(fields) - set(options))
    if strange:
        raise ValueError(f"register_sampler({name!r}): fields names {strange}, which "
                         f"{factory.__name__} does not take; its options: {list(options)}")
    config_fields = {opt: fields.get(opt, opt) for opt in options if opt not in CALLER_OPTIONS}
    config_fields = {opt: field for opt, field in config_fields.items() if field is not None}
    try:
        hints = typing.get_type_hints(factory)
    except (NameError, TypeError):  # an annotation that does not resolve here: use defaults
        hints = {}
    field_types = {field: _field_type(name, opt, hints.get(opt), params[opt].default)
                   for opt, field in config_fields.items()}
    return SamplerSpec(factory, merges, options, config_fields, field_types)


def _field_type(name: str, option: str, hint, default) -> type:
    """The type of a config field from its option's annotation (None stripped), or default."""
    if hint is not None:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = args[0] if len(args) == 1 else None
        kind = typing.get_origin(hint) or hint
        if isinstance(kind, type):
            return kind
    if default is not inspect.Parameter.empty and default is not None:
        return type(default)
    raise ValueError(f"register_sampler({name!r}): give option {option!r} a one-type "
                     "annotation (e.g. `int | None`), or fields={option!r: None}")


def get_sampler(name: str, sde: SDE, shape: tuple[int, ...], **options) -> Sampler:
    """The sampler `name` for batches of `shape` (batch first); options are its keywords."""
    spec = SAMPLERS.lookup(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"sampler {name!r} has no option(s) {unknown}; its options: "
                         f"{list(spec.options)}")
    return spec.factory(sde, tuple(shape), **options)
