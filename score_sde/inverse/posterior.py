"""Posterior samplers by name: `get_posterior_sampler(method, sde, operator, shape, *, sigma_y,
nfe, **options) -> sample(rng, score_fn, y) -> (x, nfe)`.

The observation is y = A(x) + sigma_y * n with n ~ N(0, I), x of shape (batch, *input_shape) =
`shape`, y of shape (batch, *observation_shape). A method is registered where it is defined
(`@register_posterior(name, needs=...)`), with the operator capabilities it needs
(base.require refuses the others with one line). `sample` is jit-compatible, loops on device
(lax.scan / fori_loop) and lays the batch out with `sharding=` like the samplers.

NFE convention. `nfe` is a budget of network passes and the returned nfe is the count spent:
one forward evaluation of score_fn is 1; a product with the network's Jacobian is one more
pass, counted 1 (a reverse-mode vjp or a forward-mode tangent, both with respect to the input
only, cost about one forward pass); a forward pass recomputed by `jax.checkpoint` in a
backward pass is 1 more. A method takes as many steps as its budget buys (never more), so
methods are compared at equal cost. Products with the operator are not counted.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import jax
import numpy as np

from score_sde.inverse.base import Operator, require
from score_sde.registry import Registry
from score_sde.sde_lib import SDE, ScoreFn

Array = jax.Array
PosteriorSampler = Callable[[Array, ScoreFn, Array], tuple[Array, Array]]
# Options every factory takes from get_posterior_sampler, besides its own.
CALLER_OPTIONS = ("sigma_y", "nfe", "eps", "sharding")


@dataclasses.dataclass(frozen=True)
class PosteriorSpec:
    """A registered method: its factory, the capabilities it needs, its own options."""

    factory: Callable[..., PosteriorSampler]
    needs: tuple[str, ...]
    options: tuple[str, ...]
    forwards_options: bool  # unknown options go on to a solver (the guided methods)


POSTERIOR_METHODS: Registry[PosteriorSpec] = Registry("posterior method", field="method")


def register_posterior(name: str, *, needs: tuple[str, ...] = (),
                       forwards_options: bool = False):
    """Decorator: make `factory(sde, operator, shape, *, sigma_y, nfe, eps, sharding,
    **options) -> sample(rng, score_fn, y) -> (x, nfe)` the method `name`; `needs` lists the
    operator capabilities (base.CAPABILITIES) it requires."""

    def wrap(factory):
        params = inspect.signature(factory).parameters
        own = tuple(p for p in params if p not in ("sde", "operator", "shape", *CALLER_OPTIONS)
                    and params[p].kind is inspect.Parameter.KEYWORD_ONLY)
        return PosteriorSpec(factory, tuple(needs), own, forwards_options)

    return POSTERIOR_METHODS.register(name, wrap)


def check_sigma_y(sigma_y: float | Array) -> None:
    """One line unless sigma_y >= 0 (a traced value is not checked)."""
    if isinstance(sigma_y, jax.core.Tracer):
        return
    value = np.asarray(sigma_y, np.float64)
    if value.ndim or not np.isfinite(value) or value < 0:
        raise ValueError(f"sigma_y must be a finite number >= 0 (the observation noise's std, in "
                         f"the data's units), got {sigma_y!r}")


def check_value_range(value_range) -> tuple[float, float]:
    """(lo, hi) as floats, or one line unless value_range is two finite numbers lo < hi."""
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be (lo, hi), the data's range (e.g. (-1, 1)), got "
                         f"{value_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be (lo, hi) with finite lo < hi, got {value_range!r}")
    return lo, hi


def default_method(operator: Operator, sigma_y: float) -> str:
    """The method a driver uses when none is named, by what the operator offers: 'ddrm' with an
    SVD (ahead on most tasks of the digits benchmark at one pass per step:
    benchmarks/pages/restore_digits.md), else 'pigdm' for a linear operator (the closed-form
    guidance through CG; clipped to the data's range by the driver), else 'daps' (forward
    only), or 'dps' for a noise-free nonlinear observation (DAPS needs sigma_y > 0)."""
    if operator.has_svd:
        return "ddrm"
    if operator.is_linear:
        return "pigdm"
    return "daps" if float(sigma_y) > 0 else "dps"


def with_value_range(method: str, options: dict, value_range) -> dict:
    """options with value_range (the data's (lo, hi)) where `method` takes one and options do
    not set it: what a driver passes for image data."""
    if "value_range" in POSTERIOR_METHODS.lookup(method).options:
        options = {"value_range": value_range, **options}
    return options


def check_shape(operator: Operator, shape: tuple[int, ...]) -> tuple[int, ...]:
    """shape as a tuple of ints, or one line unless it is (batch, *operator.input_shape)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(operator.input_shape) + 1 or shape[1:] != tuple(operator.input_shape):
        inner = ", ".join(map(str, operator.input_shape))
        raise ValueError(f"shape {shape} must be (batch, {inner}) for {operator!r}")
    return shape


def get_posterior_sampler(method: str, sde: SDE, operator: Operator, shape: tuple[int, ...], *,
                          sigma_y: float, nfe: int, eps: float = 1e-3, sharding=None,
                          **options) -> PosteriorSampler:
    """The posterior sampler `method` (POSTERIOR_METHODS) for batches of `shape`.

    sigma_y >= 0: the observation noise's std; nfe: the budget of network passes (module
    docstring); eps: the smallest time (the SDE's sampling eps); sharding: the batch layout
    (e.g. NamedSharding(mesh, P('data'))); options: the method's own (and, for the guided
    methods, its solver's: score_sde.inverse.guidance).
    """
    spec = POSTERIOR_METHODS.lookup(method)
    check_sigma_y(sigma_y)
    shape = check_shape(operator, shape)
    if int(nfe) < 1:
        raise ValueError(f"{method}: nfe must be >= 1 (a budget of network passes), got {nfe}")
    for capability in spec.needs:
        require(operator, capability, method=method)
    unknown = sorted(set(options) - set(spec.options))
    if unknown and not spec.forwards_options:
        raise ValueError(f"posterior method {method!r} has no option(s) {unknown}; its options: "
                         f"{list(spec.options)}")
    inner = spec.factory(sde, operator, shape, sigma_y=sigma_y, nfe=int(nfe), eps=eps,
                         sharding=sharding, **options)

    def sample(rng: Array, score_fn: ScoreFn, y: Array) -> tuple[Array, Array]:
        y = operator.check_observation(y)
        if y.shape[0] != shape[0]:
            raise ValueError(f"y has a batch of {y.shape[0]}; the sampler was built for "
                             f"{shape[0]}")
        return inner(rng, score_fn, y)

    sample.method = method
    return sample
