"""Parallel-beam computed tomography: a discrete Radon transform (sparse-view CT)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from score_sde.inverse.base import (
    LINEAR,
    Array,
    LinearOperator,
    as_shape,
    operator_dataclass,
    per_example,
)
from score_sde.inverse.linalg import conjugate_gradients


def _bilinear(image: Array, rows: Array, cols: Array) -> Array:
    """image (B, H, W, R) sampled at (rows, cols) (any shape S): (B, *S, R), zero outside.

    Linear in the image (constant weights times validity), so its transpose is exact.
    """
    height, width = image.shape[1:3]
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    fr, fc = rows - r0, cols - c0
    dr, dc = jnp.array([0, 0, 1, 1]), jnp.array([0, 1, 0, 1])  # the four neighbours
    expand = (slice(None),) + (None,) * rows.ndim
    r = r0.astype(jnp.int32) + dr[expand]
    c = c0.astype(jnp.int32) + dc[expand]
    weight = (jnp.where(dr[expand] == 1, fr, 1 - fr) * jnp.where(dc[expand] == 1, fc, 1 - fc)
              * ((r >= 0) & (r < height) & (c >= 0) & (c < width)))
    values = image[:, jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)]
    return jnp.sum(weight[..., None] * values, axis=1)


@operator_dataclass
class RadonOperator(LinearOperator):
    """Parallel-beam CT: line integrals of x along n_angles directions theta_a = a * pi / n.

    Ray-driven with bilinear interpolation (equivalently: rotate by bilinear interpolation and
    sum): D = ceil(sqrt(H^2 + W^2)) detector bins and D samples per ray, both 1 pixel apart
    and centred on the image centre, so no pixel falls outside any projection. Detector bin s
    and ray position u sample the image at column (W-1)/2 + s cos(theta) - u sin(theta), row
    (H-1)/2 + s sin(theta) + u cos(theta) (zero outside); theta = 0 gives the column sums.
    (H, W, *rest) -> sinogram (n_angles, D, *rest), each trailing entry alike.

    No SVD. adjoint: jax.linear_transpose of forward (the back-projection). pinv and
    solve_normal: conjugate gradients per example on A^T A x = A^T y (from x = 0, which
    converges to the minimum-norm least-squares solution) and on (A^T A + rho I) x = r,
    at most cg_maxiter iterations, relative tolerance cg_tol: iterative, not closed forms.
    """

    input_shape: tuple[int, ...]
    n_angles: int = 23
    cg_maxiter: int = 100
    cg_tol: float = 1e-6

    capabilities = LINEAR | {"pinv", "solve_normal"}
    iterative = frozenset({"pinv", "solve_normal"})

    def __post_init__(self):
        shape = as_shape(self.input_shape)
        if len(shape) < 2 or min(shape[:2]) < 1 or int(self.n_angles) < 1:
            raise ValueError(f"RadonOperator: input_shape must be (H, W, *rest) and n_angles "
                             f">= 1, got {shape}, {self.n_angles}")
        bins = math.ceil(math.hypot(shape[0], shape[1]))
        self._set(input_shape=shape, n_angles=int(self.n_angles), _bins=bins,
                  observation_shape=(int(self.n_angles), bins) + shape[2:])

    def describe(self):
        return f"{self.n_angles} angles, {super().describe()}"

    @property
    def angles(self) -> np.ndarray:
        """The projection angles theta_a = a * pi / n_angles (radians)."""
        return np.arange(self.n_angles) * np.pi / self.n_angles

    def _sample_points(self) -> tuple[Array, Array]:
        """(rows, cols), each (n_angles, D bins, D ray samples)."""
        height, width = self.input_shape[:2]
        theta = jnp.asarray(self.angles, jnp.float32)[:, None, None]
        pos = jnp.arange(self._bins, dtype=jnp.float32) - (self._bins - 1) / 2
        s, u = pos[None, :, None], pos[None, None, :]
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        return (height - 1) / 2 + s * sin + u * cos, (width - 1) / 2 + s * cos - u * sin

    def _forward(self, x):
        b = x.shape[0]
        image = x.reshape(x.shape[:3] + (-1,))
        rows, cols = self._sample_points()
        return _bilinear(image, rows, cols).sum(axis=3).reshape((b,) + self.observation_shape)

    def _cg(self, rhs: Array, rho: float | Array) -> Array:
        rho = per_example(rho, rhs.ndim)
        normal = lambda v: self._adjoint(self._forward(v)) + rho * v
        return conjugate_gradients(normal, rhs, self.cg_maxiter, self.cg_tol)

    def _pinv(self, y):
        return self._cg(self._adjoint(y), 0.0)

    def _solve_normal(self, r, rho):
        return self._cg(r, rho)
