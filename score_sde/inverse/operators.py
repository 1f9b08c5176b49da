"""Linear operators with a closed-form SVD in the pixel domain.

  MatrixOperator         a dense matrix on the flattened example (SVD by numpy at build)
  IdentityOperator       denoising
  MaskOperator           inpainting: the pixels where a mask is True are observed
  ColorizationOperator   grey = mean over the channels (score_sde.controllable's convention)
  AvgPoolOperator        super-resolution by f x f average pooling
  SeparableOperator      y = A_h X A_w^T per channel (bicubic_downsampling: antialiased bicubic)

Images are (H, W, C) per example (NHWC batches); where an operator makes sense for other
trailing shapes it says so. Every SVD ordering below is row-major over the axes named.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from score_sde.controllable import color_basis
from score_sde.inverse.base import (
    PINV_RCOND,
    Array,
    SVDOperator,
    as_shape,
    operator_dataclass,
    per_example,
)

# ------------------------------------------------------------------------- dense matrix


@operator_dataclass
class MatrixOperator(SVDOperator):
    """y = A x_flat for a dense (m, n) matrix A on the flattened example.

    input_shape defaults to (n,), observation_shape to (m,). SVD by numpy once at build
    (full U (m, m) and V (n, n)): Vt/Ut are the numpy orderings, singular values descending,
    r = min(m, n). For small problems and tests: the matrices are jit constants.
    """

    matrix: np.ndarray
    input_shape: tuple[int, ...] | None = None
    observation_shape: tuple[int, ...] | None = None
    rcond: float = PINV_RCOND

    def __post_init__(self):
        a = np.asarray(self.matrix, np.float64)
        if a.ndim != 2:
            raise ValueError(f"MatrixOperator: matrix must be 2-D (m, n), got shape {a.shape}")
        m, n = a.shape
        self._set(input_shape=as_shape(self.input_shape or (n,)),
                  observation_shape=as_shape(self.observation_shape or (m,)))
        if (self.observation_size, self.input_size) != (m, n):
            raise ValueError(f"MatrixOperator: matrix shape {a.shape} does not map input_shape "
                             f"{self.input_shape} to observation_shape {self.observation_shape}")
        u, s, vt = np.linalg.svd(a, full_matrices=True)
        self._set(_a=a.astype(np.float32), _u=u.astype(np.float32), _s=s.astype(np.float32),
                  _vt=vt.astype(np.float32))

    def _flat(self, v: Array) -> Array:
        return v.reshape(v.shape[0], -1)

    def _forward(self, x):
        return (self._flat(x) @ self._a.T).reshape((-1,) + self.observation_shape)

    def _adjoint(self, y):
        return (self._flat(y) @ self._a).reshape((-1,) + self.input_shape)

    def _Vt(self, x):
        return self._flat(x) @ self._vt.T

    def _V(self, z):
        return (z @ self._vt).reshape((-1,) + self.input_shape)

    def _Ut(self, y):
        return self._flat(y) @ self._u

    def _U(self, z):
        return (z @ self._u.T).reshape((-1,) + self.observation_shape)

    def _singular_values(self):
        return self._s


# ----------------------------------------------------------------------------- identity


@operator_dataclass
class IdentityOperator(SVDOperator):
    """y = x (denoising). SVD: U = V = flattening (row-major), s = ones(n)."""

    input_shape: tuple[int, ...]

    def __post_init__(self):
        shape = as_shape(self.input_shape)
        self._set(input_shape=shape, observation_shape=shape)

    def _forward(self, x):
        return x

    def _adjoint(self, y):
        return y

    def _pinv(self, y):
        return y

    def _solve_normal(self, r, rho):
        return r / (1.0 + per_example(rho, r.ndim))

    def _Vt(self, x):
        return x.reshape(x.shape[0], -1)

    def _V(self, z):
        return z.reshape((-1,) + self.input_shape)

    _Ut, _U = _Vt, _V

    def _singular_values(self):
        return np.ones(self.input_size, np.float32)


# ------------------------------------------------------------------------------- masks


@operator_dataclass
class MaskOperator(SVDOperator):
    """Inpainting: y = the entries of x where `mask` is True, all channels of each.

    mask: bool of shape input_shape[:k] (e.g. (H, W) for images (H, W, C)); it applies to the
    trailing axes input_shape[k:] alike. y: (m, *input_shape[k:]) with m = mask.sum(), the
    kept positions in row-major order (the adjoint fills the missing ones with zeros).
    SVD: s = ones(m * R) (R = prod(input_shape[k:])); Vt(x) = x over (position, trailing)
    with the kept positions first, then the missing ones (each row-major); Ut(y) = y flat.
    """

    mask: np.ndarray
    input_shape: tuple[int, ...]

    def __post_init__(self):
        mask = np.asarray(self.mask, bool)
        shape = as_shape(self.input_shape)
        if mask.ndim < 1 or mask.shape != shape[: mask.ndim]:
            raise ValueError(f"MaskOperator: mask shape {mask.shape} must be a leading part of "
                             f"input_shape {shape}")
        kept, missing = np.flatnonzero(mask), np.flatnonzero(~mask)
        order = np.concatenate([kept, missing])
        self._set(mask=mask, input_shape=shape, observation_shape=(kept.size,) + shape[mask.ndim:],
                  _kept=kept, _order=order, _inverse=np.argsort(order),
                  _positions=mask.size)

    def describe(self):
        return f"{self._kept.size} of {self.mask.size} positions kept, on {super().describe()}"

    def _positions_first(self, v):
        return v.reshape((v.shape[0], self._positions) + self.input_shape[self.mask.ndim:])

    def _forward(self, x):
        return self._positions_first(x)[:, self._kept]

    def _adjoint(self, y):
        out = jnp.zeros((y.shape[0], self._positions) + y.shape[2:], y.dtype)
        return out.at[:, self._kept].set(y).reshape((-1,) + self.input_shape)

    _pinv = _adjoint

    def _solve_normal(self, r, rho):
        m = self.mask.reshape(self.mask.shape + (1,) * (len(self.input_shape) - self.mask.ndim))
        return r / (m.astype(np.float32) + per_example(rho, r.ndim))

    def _Vt(self, x):
        return self._positions_first(x)[:, self._order].reshape(x.shape[0], -1)

    def _V(self, z):
        return self._positions_first(z)[:, self._inverse].reshape((-1,) + self.input_shape)

    def _Ut(self, y):
        return y.reshape(y.shape[0], -1)

    def _U(self, z):
        return z.reshape((-1,) + self.observation_shape)

    def _singular_values(self):
        return np.ones(self.observation_size, np.float32)


# ------------------------------------------------------------- means over groups of entries


class _GroupMeanOperator(SVDOperator):
    """y = the mean of each group of k entries of x (groups given by `_group`).

    Per group A_g = ones(k)^T / k = 1 * (1 / sqrt(k)) * (ones / sqrt(k))^T: the SVD is closed
    form, V_g = an orthogonal (k, k) basis whose first column is ones / sqrt(k)
    (score_sde.controllable.color_basis). Vt(x): first the G mean coordinates (group order),
    then the G * (k - 1) others ((group, basis column) row-major); s = full(G, 1 / sqrt(k));
    Ut(y) = y flat (its row-major order is the group order).
    """

    def _setup(self, group_size: int):
        self._set(_k=group_size, _groups=self.observation_size,
                  _basis=color_basis(group_size).astype(np.float32))

    def _group(self, x: Array) -> Array:  # (B, *input_shape) -> (B, G, k)
        raise NotImplementedError

    def _ungroup(self, g: Array) -> Array:  # (B, G, k) -> (B, *input_shape)
        raise NotImplementedError

    def _forward(self, x):
        return jnp.mean(self._group(x), axis=-1).reshape((-1,) + self.observation_shape)

    def _spread(self, y, scale):
        g = y.reshape(y.shape[0], self._groups, 1) * scale
        return self._ungroup(jnp.broadcast_to(g, g.shape[:2] + (self._k,)))

    def _adjoint(self, y):
        return self._spread(y, 1.0 / self._k)

    def _pinv(self, y):
        return self._spread(y, 1.0)

    def _Vt(self, x):
        c = self._group(x) @ self._basis
        return jnp.concatenate([c[..., 0], c[..., 1:].reshape(c.shape[0], -1)], axis=1)

    def _V(self, z):
        g = self._groups
        c = jnp.concatenate([z[:, :g, None], z[:, g:].reshape(-1, g, self._k - 1)], axis=-1)
        return self._ungroup(c @ self._basis.T)

    def _Ut(self, y):
        return y.reshape(y.shape[0], -1)

    def _U(self, z):
        return z.reshape((-1,) + self.observation_shape)

    def _singular_values(self):
        return np.full(self._groups, 1.0 / np.sqrt(self._k), np.float32)


@operator_dataclass
class ColorizationOperator(_GroupMeanOperator):
    """Grey = mean over the channels (last axis, C >= 2): (..., C) -> (..., 1).

    The groups are the pixels (row-major over the leading axes); see _GroupMeanOperator for
    the SVD: its first V coordinate of a pixel is x @ color_basis(C)[:, 0] = sqrt(C) * grey,
    the decoupled coordinates of score_sde.controllable's colorization.
    """

    input_shape: tuple[int, ...]

    def __post_init__(self):
        shape = as_shape(self.input_shape)
        if len(shape) < 1 or shape[-1] < 2:
            raise ValueError(f"ColorizationOperator: input_shape must end in C >= 2 channels, "
                             f"got {shape}")
        self._set(input_shape=shape, observation_shape=shape[:-1] + (1,))
        self._setup(shape[-1])

    def _group(self, x):
        return x.reshape(x.shape[0], self._groups, self._k)

    def _ungroup(self, g):
        return g.reshape((-1,) + self.input_shape)


@operator_dataclass
class AvgPoolOperator(_GroupMeanOperator):
    """Super-resolution by average pooling: the mean of each f x f block of the first two axes.

    (H, W, *rest) -> (H / f, W / f, *rest), f dividing H and W; the groups are the blocks in
    (block row, block column, *rest) row-major order, a block's entries row-major.
    """

    input_shape: tuple[int, ...]
    factor: int = 2

    def __post_init__(self):
        shape, f = as_shape(self.input_shape), int(self.factor)
        if f < 2 or len(shape) < 2 or shape[0] % f or shape[1] % f:
            raise ValueError(f"AvgPoolOperator: factor={self.factor} must be >= 2 and divide "
                             f"the first two axes of input_shape {shape}")
        self._set(input_shape=shape, factor=f,
                  observation_shape=(shape[0] // f, shape[1] // f) + shape[2:])
        self._setup(f * f)

    def describe(self):
        return f"factor {self.factor} on {super().describe()}"

    def _blocks(self, v):  # (B, H, W, *rest) -> (B, H/f, f, W/f, f, R)
        (h, w), f = self.observation_shape[:2], self.factor
        return v.reshape(v.shape[0], h, f, w, f, -1)

    def _group(self, x):
        b = self._blocks(x).transpose(0, 1, 3, 5, 2, 4)
        return b.reshape(x.shape[0], self._groups, self._k)

    def _ungroup(self, g):
        (h, w), f = self.observation_shape[:2], self.factor
        b = g.reshape(g.shape[0], h, w, -1, f, f).transpose(0, 1, 4, 2, 5, 3)
        return b.reshape((-1,) + self.input_shape)


# ------------------------------------------------------------------ separable resampling


def bicubic_matrix(size: int, factor: int, a: float = -0.5) -> np.ndarray:
    """The (size / factor, size) antialiased bicubic downsampling matrix of one axis.

    Output sample i sits at input coordinate c_i = (i + 1/2) * factor - 1/2 (pixel centres
    aligned); its weights are Keys' cubic (a = -0.5) stretched by `factor`,
    w_ij = k((j - c_i) / factor), taps outside [0, size) dropped and each row renormalised to
    sum 1 (the truncation convention of PIL and jax.image.resize(antialias=True)).
    """
    if factor < 1 or size % factor:
        raise ValueError(f"bicubic_matrix: factor={factor} must be >= 1 and divide size={size}")
    centres = (np.arange(size // factor) + 0.5) * factor - 0.5
    t = np.abs(np.arange(size)[None, :] - centres[:, None]) / factor
    w = np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                 np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))
    return w / w.sum(axis=1, keepdims=True)


@operator_dataclass
class SeparableOperator(SVDOperator):
    """y = A_h X A_w^T on the first two axes, for each trailing entry: (H, W, *rest) ->
    (o_h, o_w, *rest), with o_h <= H and o_w <= W.

    SVD from the per-axis SVDs A_h = U_h S_h V_h^T, A_w = U_w S_w V_w^T (numpy, full, at
    build): U = U_h (x) U_w, V = V_h (x) V_w, s_(k, l) = S_h[k] S_w[l]. Ut(y) = U_h^T Y U_w
    flat over (k, l, rest); Vt(x): Z = V_h^T X V_w, first the (k < o_h, l < o_w) block over
    (k, l, rest), then the remaining entries of Z in (k, l, rest) order; s over (k, l, rest).
    """

    matrix_h: np.ndarray
    matrix_w: np.ndarray
    input_shape: tuple[int, ...]
    label: str = "separable"
    rcond: float = PINV_RCOND

    def __post_init__(self):
        ah, aw = np.asarray(self.matrix_h, np.float64), np.asarray(self.matrix_w, np.float64)
        shape = as_shape(self.input_shape)
        if (len(shape) < 2 or ah.ndim != 2 or aw.ndim != 2 or ah.shape[1] != shape[0]
                or aw.shape[1] != shape[1] or ah.shape[0] > ah.shape[1]
                or aw.shape[0] > aw.shape[1]):
            raise ValueError(f"SeparableOperator: matrices {ah.shape}, {aw.shape} must be "
                             f"(o_h <= H, H), (o_w <= W, W) for input_shape {shape}")
        (uh, sh, vth), (uw, sw, vtw) = (np.linalg.svd(m, full_matrices=True) for m in (ah, aw))
        rest = int(np.prod(shape[2:], dtype=np.int64))
        top = np.zeros((shape[0], shape[1], rest), bool)
        top[: ah.shape[0], : aw.shape[0]] = True
        order = np.concatenate([np.flatnonzero(top), np.flatnonzero(~top)])
        s = sh[:, None, None] * sw[None, :, None] * np.ones(rest)
        f32 = lambda v: np.asarray(v, np.float32)
        self._set(input_shape=shape, observation_shape=(ah.shape[0], aw.shape[0]) + shape[2:],
                  _ah=f32(ah), _aw=f32(aw), _uh=f32(uh), _uw=f32(uw), _vh=f32(vth.T),
                  _vw=f32(vtw.T), _s=f32(s.reshape(-1)), _order=order,
                  _inverse=np.argsort(order), _rest=rest)

    def describe(self):
        return f"{self.label}, {super().describe()}"

    def _both(self, mh, mw, v, shape):
        """mh^T V mw per trailing entry: v (B, a, b, *rest) -> (B, mh.shape[1], mw.shape[1], R)."""
        v = v.reshape(v.shape[:3] + (self._rest,))
        return jnp.einsum("hk,wl,bhwr->bklr", mh, mw, v).reshape((-1,) + shape)

    def _forward(self, x):
        return self._both(self._ah.T, self._aw.T, x, self.observation_shape)

    def _adjoint(self, y):
        return self._both(self._ah, self._aw, y, self.input_shape)

    def _Vt(self, x):
        z = self._both(self._vh, self._vw, x, self.input_shape)
        return z.reshape(z.shape[0], -1)[:, self._order]

    def _V(self, z):
        z = z[:, self._inverse].reshape((-1,) + self.input_shape)
        return self._both(self._vh.T, self._vw.T, z, self.input_shape)

    def _Ut(self, y):
        return self._both(self._uh, self._uw, y, self.observation_shape).reshape(y.shape[0], -1)

    def _U(self, z):
        return self._both(self._uh.T, self._uw.T, z.reshape((-1,) + self.observation_shape),
                          self.observation_shape)

    def _singular_values(self):
        return self._s


def bicubic_downsampling(input_shape: tuple[int, ...], factor: int = 4) -> SeparableOperator:
    """Super-resolution by antialiased bicubic downsampling by `factor` of the first two axes:
    a SeparableOperator with bicubic_matrix on each axis (see both for conventions)."""
    shape = as_shape(input_shape)
    if len(shape) < 2:
        raise ValueError(f"bicubic_downsampling: input_shape needs two spatial axes, got {shape}")
    return SeparableOperator(bicubic_matrix(shape[0], factor), bicubic_matrix(shape[1], factor),
                             shape, label=f"bicubic x{factor}")
