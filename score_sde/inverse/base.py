"""The operator contract of image restoration: an observation is y = A(x) + sigma_y * noise.

An operator acts on a batch x of shape (B, *input_shape) and observes y of shape
(B, *observation_shape); every method works per example. sigma_y is not part of the operator
(the posterior sampler takes it); `degrade` draws an observation for a given sigma_y.

What an operator can do is a set of capabilities that a posterior sampler queries before it
builds anything (`require(operator, "svd", method="ddrm")`):

  linear        forward is linear (a nonlinear operator gives `forward` only)
  adjoint       `adjoint(y)` = A^T y: `jax.linear_transpose` of the batched forward (which
                acts per example) unless a subclass has a cheaper closed form
  pinv          `pinv(y)` = A^+ y, the minimum-norm least-squares solution
  solve_normal  `solve_normal(r, rho)` = (A^T A + rho I)^{-1} r, rho > 0 a scalar or (B,)
  svd           A = U diag(s) V^T as functions on flattened examples (never dense matrices):
                `Vt(x)` (B, *input_shape) -> (B, n), `V(z)` its inverse, `Ut(y)`
                (B, *observation_shape) -> (B, m), `U(z)` its inverse, and
                `singular_values` (r,) with r <= min(m, n): s[j] pairs Vt(x)[:, j] with
                Ut(y)[:, j] for j < r, so Ut(A x)[:, :r] = s * Vt(x)[:, :r] and
                Ut(A x)[:, r:] = 0; Vt(x)[:, r:] spans the null space (zero-padded
                convention: a function of z of length r is padded with n - r zeros before V).
                n, m are the flattened sizes; each operator states its ordering; singular
                values are not sorted and may contain zeros.

`iterative` names the capabilities served by an iterative solver (conjugate gradients) rather
than a closed form. Operators are immutable and hashable by identity, so they can be closed
over or passed as static arguments under `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# capability -> (what a method needs, what an operator without it is)
_NEEDS = {
    "linear": ("a linear operator", "is nonlinear (forward only)"),
    "adjoint": ("an operator with an adjoint", "has none"),
    "pinv": ("an operator with a pseudo-inverse", "has none"),
    "solve_normal": ("an operator with a solver of (A^T A + rho I) x = r", "has none"),
    "svd": ("an operator with an SVD", "has none"),
}
CAPABILITIES = tuple(_NEEDS)
LINEAR = frozenset({"linear", "adjoint"})
ALL = frozenset(CAPABILITIES)
# Singular values at or below PINV_RCOND * max(s) count as zero in `pinv`.
PINV_RCOND = 1e-6


# Operators are frozen dataclasses, hashable by identity (their numpy tables are not
# comparable), so they can be static jit arguments; repr is Operator's short description.
operator_dataclass = dataclasses.dataclass(frozen=True, eq=False, repr=False)


def as_shape(shape) -> tuple[int, ...]:
    """A shape as a tuple of Python ints."""
    return tuple(int(d) for d in shape)


def require(operator: Operator, capability: str, *, method: str) -> None:
    """Raise one line naming `method` and what `operator` lacks, unless it has `capability`."""
    if capability not in _NEEDS:
        raise ValueError(f"capability={capability!r} is not one of {list(CAPABILITIES)}")
    if capability not in operator.capabilities:
        need, lack = _NEEDS[capability]
        raise ValueError(f"{method} needs {need}; {operator!r} {lack}")


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def per_example(value: Array | float, ndim: int) -> Array:
    """A scalar, or a (B,) vector reshaped to (B, 1, ..., 1) of rank `ndim`."""
    value = jnp.asarray(value, jnp.float32)
    return value.reshape(value.shape + (1,) * (ndim - value.ndim)) if value.ndim else value


class Operator:
    """y = forward(x) on batches; the base of every operator (nonlinear: forward only).

    Subclasses set `input_shape`, `observation_shape` (tuples, no batch axis), their
    `capabilities`, and implement `_forward` (plus `_adjoint`, `_pinv`, ... for what they
    serve); the public methods check shapes and capabilities, then call those.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()
    iterative: ClassVar[frozenset[str]] = frozenset()
    input_shape: tuple[int, ...]
    observation_shape: tuple[int, ...]

    # ---------------------------------------------------------------- description, sizes

    def describe(self) -> str:
        """A short description for messages (the class name is added by repr)."""
        return f"{_shape_str(self.input_shape)} -> {_shape_str(self.observation_shape)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def _set(self, **values) -> None:
        """Set derived (static) attributes of a frozen dataclass at build time."""
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape, dtype=np.int64))

    @property
    def observation_size(self) -> int:
        return int(np.prod(self.observation_shape, dtype=np.int64))

    @property
    def is_linear(self) -> bool:
        return "linear" in self.capabilities

    @property
    def has_adjoint(self) -> bool:
        return "adjoint" in self.capabilities

    @property
    def has_pinv(self) -> bool:
        return "pinv" in self.capabilities

    @property
    def has_solve_normal(self) -> bool:
        return "solve_normal" in self.capabilities

    @property
    def has_svd(self) -> bool:
        return "svd" in self.capabilities

    # ----------------------------------------------------------------------- shape checks

    def _check(self, v: Array, shape: tuple[int, ...], what: str) -> Array:
        v = jnp.asarray(v)
        if v.ndim != len(shape) + 1 or tuple(v.shape[1:]) != tuple(shape):
            raise ValueError(f"{what} has shape {tuple(v.shape)}; {self!r} takes a batch of "
                             f"shape (B, {', '.join(map(str, shape))})")
        return v

    def check_input(self, x: Array) -> Array:
        """x as an array, or one line if its shape is not (B, *input_shape)."""
        return self._check(x, self.input_shape, "x")

    def check_observation(self, y: Array) -> Array:
        """y as an array, or one line if its shape is not (B, *observation_shape)."""
        return self._check(y, self.observation_shape, "y")

    # ------------------------------------------------------------------------ the methods

    def forward(self, x: Array) -> Array:
        """A(x): (B, *input_shape) -> (B, *observation_shape)."""
        return self._forward(self.check_input(x))

    def degrade(self, rng: Array, x: Array, sigma_y: float | Array) -> Array:
        """An observation forward(x) + sigma_y * N(0, I); sigma_y >= 0 (scalar or (B,))."""
        if not isinstance(sigma_y, jax.core.Tracer) and np.any(np.asarray(sigma_y) < 0):
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
        y = self.forward(x)
        noise = jax.random.normal(rng, y.shape, y.dtype)
        return y + per_example(sigma_y, y.ndim) * noise

    def adjoint(self, y: Array) -> Array:
        """A^T y: (B, *observation_shape) -> (B, *input_shape)."""
        require(self, "adjoint", method="adjoint")
        return self._adjoint(self.check_observation(y))

    def pinv(self, y: Array) -> Array:
        """A^+ y: the minimum-norm x minimising ||A x - y|| per example."""
        require(self, "pinv", method="pinv")
        return self._pinv(self.check_observation(y))

    def solve_normal(self, r: Array, rho: float | Array) -> Array:
        """(A^T A + rho I)^{-1} r per example; r of the input's shape, rho > 0 (scalar or (B,))."""
        require(self, "solve_normal", method="solve_normal")
        return self._solve_normal(self.check_input(r), rho)

    def Vt(self, x: Array) -> Array:
        """V^T x: (B, *input_shape) -> (B, n) in the operator's stated ordering."""
        require(self, "svd", method="Vt")
        return self._Vt(self.check_input(x))

    def V(self, z: Array) -> Array:
        """V z: (B, n) -> (B, *input_shape), the inverse of Vt."""
        require(self, "svd", method="V")
        return self._V(self._check(z, (self.input_size,), "z"))

    def Ut(self, y: Array) -> Array:
        """U^T y: (B, *observation_shape) -> (B, m) in the operator's stated ordering."""
        require(self, "svd", method="Ut")
        return self._Ut(self.check_observation(y))

    def U(self, z: Array) -> Array:
        """U z: (B, m) -> (B, *observation_shape), the inverse of Ut."""
        require(self, "svd", method="U")
        return self._U(self._check(z, (self.observation_size,), "z"))

    @property
    def singular_values(self) -> np.ndarray:
        """s (r,), float32, paired with the first r entries of Vt and Ut (not sorted)."""
        require(self, "svd", method="singular_values")
        return self._singular_values()

    # ------------------------------------------------------------------- implementations

    def _forward(self, x: Array) -> Array:
        raise NotImplementedError

    def _adjoint(self, y: Array) -> Array:
        """The transpose of the batched forward (which acts per example)."""
        spec = jax.ShapeDtypeStruct((y.shape[0],) + tuple(self.input_shape), y.dtype)
        return jax.linear_transpose(self._forward, spec)(y)[0]


class LinearOperator(Operator):
    """A linear operator: forward and adjoint (linear_transpose unless overridden)."""

    capabilities = LINEAR


class SVDOperator(LinearOperator):
    """A linear operator with an SVD; pinv and solve_normal follow from it.

    Subclasses implement `_Vt`, `_V`, `_Ut`, `_U` and `_singular_values`; `rcond` (an
    attribute, PINV_RCOND unless set) is the relative cut-off of `pinv`.
    """

    capabilities = ALL
    rcond: float = PINV_RCOND

    def _singular_values(self) -> np.ndarray:
        raise NotImplementedError

    def _pad(self, z: Array) -> Array:
        """(B, r) -> (B, n) with zeros for the null-space coordinates."""
        return jnp.pad(z, ((0, 0), (0, self.input_size - z.shape[1])))

    def _pinv(self, y: Array) -> Array:
        s = np.asarray(self._singular_values(), np.float64)
        keep = s > self.rcond * (s.max() if s.size else 0.0)
        inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0).astype(np.float32)
        return self._V(self._pad(self._Ut(y)[:, : s.size] * inv))

    def _solve_normal(self, r: Array, rho: float | Array) -> Array:
        s2 = np.zeros(self.input_size, np.float32)
        s = self._singular_values()
        s2[: s.size] = s.astype(np.float32) ** 2
        return self._V(self._Vt(r) / (s2 + per_example(rho, 2)))
