"""Operators through the 2-D FFT of the first two axes: blur, MRI, phase retrieval.

Inputs are real (H, W, *rest) per example (NHWC images: rest = (C,)); every trailing entry is
transformed alike. FFTs are unitary ("ortho") unless said otherwise.

The SVDs are real. A real image's spectrum is Hermitian, X(-k) = conj X(k), so the real
orthonormal Fourier basis has one coordinate per self-conjugate frequency (k = -k: the DC and
Nyquist rows/columns' crossings), sqrt(2) Re X(k) and sqrt(2) Im X(k) for one representative
k of every other pair {k, -k} (the smaller row-major index), H * W coordinates in all
(`RealFourierBasis`). Circular convolution by a real kernel with DFT K scales the pair's
coordinates by |K(k)| and rotates them by arg K(k): singular values |K(k)|, V = the real
Fourier basis, U = V followed by the all-pass filter K / |K| (1 where K = 0).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from score_sde.inverse.base import (
    PINV_RCOND,
    Array,
    Operator,
    SVDOperator,
    as_shape,
    operator_dataclass,
    per_example,
)

_AXES = (1, 2)
SELF, RE, IM = 0, 1, 2  # the parts of a real Fourier coordinate


def _spatial(shape) -> tuple[int, ...]:
    shape = as_shape(shape)
    if len(shape) < 2 or min(shape[:2]) < 1:
        raise ValueError(f"input_shape must be (H, W, *rest), got {shape}")
    return shape


def conjugate_index(height: int, width: int) -> np.ndarray:
    """For each row-major frequency index of an (H, W) DFT, the index of its negative."""
    rows, cols = np.divmod(np.arange(height * width), width)
    return ((-rows) % height) * width + (-cols) % width


def fourier_frequencies(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The standard coordinate list (frequency, part) of the real Fourier basis: the
    self-conjugate frequencies (SELF), then every pair's representative as RE, then as IM,
    each in row-major order."""
    k = np.arange(height * width)
    conj = conjugate_index(height, width)
    own, rep = k[conj == k], k[k < conj]
    freq = np.concatenate([own, rep, rep])
    part = np.repeat([SELF, RE, IM], [own.size, rep.size, rep.size])
    return freq, part


class RealFourierBasis:
    """The real orthonormal Fourier basis of an (H, W) grid, coordinates in a given order.

    `coefficients(X)` maps the (Hermitian) unitary spectrum X (B, H, W, *rest) to the
    coordinates (B, H * W * R), ordered (coordinate, rest); `spectrum(z)` is its inverse.
    """

    def __init__(self, height: int, width: int, freq: np.ndarray, part: np.ndarray):
        hw, conj = height * width, conjugate_index(height, width)
        std_freq, std_part = fourier_frequencies(height, width)
        if freq.shape != std_freq.shape or not np.array_equal(
                np.sort(3 * freq + part), np.sort(3 * std_freq + std_part)):
            raise ValueError("RealFourierBasis: (freq, part) must permute the standard list")
        j, half = np.arange(freq.size), np.sqrt(0.5)
        self.shape = (height, width)
        self.coef_src = 2 * freq + (part == IM)  # into the (re, im)-interleaved spectrum
        self.coef_w = np.where(part == SELF, 1.0, np.sqrt(2.0)).astype(np.float32)
        spec_src, spec_w = np.zeros(2 * hw, np.int64), np.zeros(2 * hw)
        for sel, dest, w in ((part == SELF, 2 * freq, 1.0), (part == RE, 2 * freq, half),
                             (part == RE, 2 * conj[freq], half),
                             (part == IM, 2 * freq + 1, half),
                             (part == IM, 2 * conj[freq] + 1, -half)):
            spec_src[dest[sel]], spec_w[dest[sel]] = j[sel], w
        self.spec_src, self.spec_w = spec_src, spec_w.astype(np.float32)

    def coefficients(self, spectrum: Array) -> Array:
        b, rest = spectrum.shape[0], spectrum.shape[3:]
        s = spectrum.reshape((b, -1, 1) + rest)
        interleaved = jnp.concatenate([s.real, s.imag], axis=2).reshape((b, -1) + rest)
        w = self.coef_w.reshape((-1,) + (1,) * len(rest))
        return (interleaved[:, self.coef_src] * w).reshape(b, -1)

    def spectrum(self, z: Array, rest: tuple[int, ...]) -> Array:
        b = z.shape[0]
        z = z.reshape((b, -1) + rest)
        w = self.spec_w.reshape((-1,) + (1,) * len(rest))
        s = (z[:, self.spec_src] * w).reshape((b, -1, 2) + rest)
        return (s[:, :, 0] + 1j * s[:, :, 1]).reshape((b,) + self.shape + rest)


def _fft(x: Array) -> Array:
    return jnp.fft.fft2(x, axes=_AXES, norm="ortho")


def _ifft_real(spectrum: Array) -> Array:
    return jnp.fft.ifft2(spectrum, axes=_AXES, norm="ortho").real


# ---------------------------------------------------------------------------------- blur


def wrap_kernel(kernel: np.ndarray, height: int, width: int) -> np.ndarray:
    """The kernel (centre at (kh // 2, kw // 2)) as an (H, W) circular filter, centre at [0, 0].

    Taps farther than the image from the centre wrap around (periodic summation): a kernel
    larger than the image is applied exactly as circular convolution with the full kernel.
    """
    kernel = np.asarray(kernel, np.float64)
    rows, cols = np.indices(kernel.shape)
    out = np.zeros((height, width))
    np.add.at(out, ((rows - kernel.shape[0] // 2) % height, (cols - kernel.shape[1] // 2) % width),
              kernel)
    return out


@operator_dataclass
class ConvolutionOperator(SVDOperator):
    """Blur: y = k (*) x, circular 2-D convolution (periodic boundary) of each trailing entry.

    The kernel may be larger than the image (wrap_kernel). forward, adjoint, pinv and
    solve_normal are closed forms through the FFT (pinv drops |K| <= rcond * max |K|). SVD in
    the real Fourier basis (module docstring): Vt(x) = the coordinates of x, ordered
    (coordinate, rest) with the coordinates as in fourier_frequencies; Ut(y) = those of y
    after the all-pass filter conj(K) / |K|; s = |K| at each coordinate's frequency.
    """

    kernel: np.ndarray
    input_shape: tuple[int, ...]
    label: str = "kernel"
    rcond: float = PINV_RCOND

    def __post_init__(self):
        kernel, shape = np.asarray(self.kernel, np.float64), _spatial(self.input_shape)
        if kernel.ndim != 2:
            raise ValueError(f"ConvolutionOperator: kernel must be 2-D, got {kernel.shape}")
        khat = np.fft.fft2(wrap_kernel(kernel, *shape[:2]))
        mag = np.abs(khat)
        phase = np.where(mag > 1e-30, khat / np.where(mag > 1e-30, mag, 1.0), 1.0)
        keep = mag > self.rcond * mag.max()
        pinv = np.where(keep, np.conj(khat) / np.where(keep, mag, 1.0) ** 2, 0.0)
        freq, part = fourier_frequencies(*shape[:2])
        expand = (slice(None), slice(None)) + (None,) * (len(shape) - 2)
        c64 = lambda v: v[expand].astype(np.complex64)
        self._set(input_shape=shape, observation_shape=shape, kernel=kernel, _khat=c64(khat),
                  _phase=c64(phase), _pinv_hat=c64(pinv),
                  _abs2=(mag**2)[expand].astype(np.float32),
                  _basis=RealFourierBasis(*shape[:2], freq, part),
                  _s=np.repeat(mag.reshape(-1)[freq], int(np.prod(shape[2:]))).astype(np.float32))

    def describe(self):
        return f"{self.kernel.shape[0]}x{self.kernel.shape[1]} {self.label}, {super().describe()}"

    def _filter(self, v, h):
        return _ifft_real(_fft(v) * h)

    def _forward(self, x):
        return self._filter(x, self._khat)

    def _adjoint(self, y):
        return self._filter(y, np.conj(self._khat))

    def _pinv(self, y):
        return self._filter(y, self._pinv_hat)

    def _solve_normal(self, r, rho):
        return _ifft_real(_fft(r) / (self._abs2 + per_example(rho, r.ndim)))

    def _Vt(self, x):
        return self._basis.coefficients(_fft(x))

    def _V(self, z):
        return _ifft_real(self._basis.spectrum(z, self.input_shape[2:]))

    def _Ut(self, y):
        return self._basis.coefficients(_fft(y) * np.conj(self._phase))

    def _U(self, z):
        return _ifft_real(self._basis.spectrum(z, self.input_shape[2:]) * self._phase)

    def _singular_values(self):
        return self._s


# ------------------------------------------------------------------------------------ MRI


def _mri_layout(mask: np.ndarray):
    """The real SVD of x -> (Re, Im) of the sampled unitary DFT entries (MRIOperator).

    Returns the Vt coordinate list (freq, part), the singular values (r,), and U^T as a sparse
    (rows, cols, vals) map on the observation flattened as (point, re/im).
    """
    height, width = mask.shape
    flat, conj = mask.reshape(-1), conjugate_index(height, width)
    k = np.arange(flat.size)
    pos = np.cumsum(flat) - 1  # observation index of a sampled frequency
    own, rep = conj == k, k < conj
    s1, s0 = k[own & flat], k[own & ~flat]
    p2 = k[rep & flat & flat[conj]]
    p1 = k[rep & (flat != flat[conj])]
    p0 = k[rep & ~flat & ~flat[conj]]
    freq = np.concatenate([s1, p2, p2, p1, p1, s0, p0, p0])
    part = np.repeat([SELF, RE, IM, RE, IM, SELF, RE, IM],
                     [s1.size, p2.size, p2.size, p1.size, p1.size, s0.size, p0.size, p0.size])
    s = np.concatenate([np.ones(s1.size + 2 * p2.size), np.full(2 * p1.size, np.sqrt(0.5))])
    seen = np.where(flat[p1], p1, conj[p1])  # the sampled one of a half-sampled pair
    sign = np.where(flat[p1], 1.0, -1.0)  # Im X(-k) = -Im X(k)
    re, im = lambda f: 2 * pos[f], lambda f: 2 * pos[f] + 1
    h, one = np.sqrt(0.5), np.ones
    g2 = conj[p2]
    # (cols, vals) per term, rows in order: S1 re | P2 a | P2 b | P1 a | P1 b | S1 im | P2 x2
    blocks = [[(re(s1), one(s1.size))],
              [(re(p2), h * one(p2.size)), (re(g2), h * one(p2.size))],
              [(im(p2), h * one(p2.size)), (im(g2), -h * one(p2.size))],
              [(re(seen), one(p1.size))], [(im(seen), sign)],
              [(im(s1), one(s1.size))],
              [(re(p2), h * one(p2.size)), (re(g2), -h * one(p2.size))],
              [(im(p2), h * one(p2.size)), (im(g2), h * one(p2.size))]]
    rows, cols, vals, start = [], [], [], 0
    for terms in blocks:
        n = terms[0][0].size
        for c, v in terms:
            rows.append(start + np.arange(n))
            cols.append(c)
            vals.append(v)
        start += n
    sparse = tuple(np.concatenate(a) for a in (rows, cols, vals))
    return freq, part, s, sparse


@operator_dataclass
class MRIOperator(SVDOperator):
    """Single-coil MRI: y = the sampled entries of the unitary 2-D DFT of x (k-space).

    mask: bool (H, W) in numpy FFT order (DC at [0, 0]; score_sde.inverse.masks), shared by
    the trailing axes. Complex k-space is stored as a trailing (re, im) axis: y has shape
    (m, *rest, 2) with m = mask.sum() sampled frequencies in row-major FFT order. adjoint =
    real part of the zero-filled inverse DFT (closed form).

    SVD (real, for real images; module docstring): with X(-k) = conj X(k), a sampled
    self-conjugate frequency observes its coordinate with s = 1 (its Im is always 0), a pair
    with both k and -k sampled observes its two coordinates with s = 1, a pair with one of
    them sampled with s = 1 / sqrt(2). Vt(x) = real Fourier coordinates ordered: sampled self,
    both-sampled pairs (Re then Im), half-sampled pairs (Re then Im), then the unobserved ones
    (self, Re, Im), each group row-major, (coordinate, rest); Ut(y) = the matching combinations
    of the observed (Re, Im) values, then the left null space (Im of self-conjugate points,
    the antisymmetric parts of both-sampled pairs).
    """

    mask: np.ndarray
    input_shape: tuple[int, ...]

    def __post_init__(self):
        mask, shape = np.asarray(self.mask, bool), _spatial(self.input_shape)
        if mask.shape != shape[:2]:
            raise ValueError(f"MRIOperator: mask shape {mask.shape} must be the first two axes "
                             f"of input_shape {shape}")
        freq, part, s, sparse = _mri_layout(mask)
        rest = int(np.prod(shape[2:], dtype=np.int64))
        self._set(mask=mask, input_shape=shape,
                  observation_shape=(int(mask.sum()),) + shape[2:] + (2,),
                  _sampled=np.flatnonzero(mask), _basis=RealFourierBasis(*shape[:2], freq, part),
                  _s=np.repeat(s, rest).astype(np.float32), _rows=sparse[0], _cols=sparse[1],
                  _vals=sparse[2].astype(np.float32), _rest=rest)

    def describe(self):
        return f"{self._sampled.size} of {self.mask.size} frequencies, {super().describe()}"

    def _forward(self, x):
        kspace = _fft(x).reshape((x.shape[0], -1) + self.input_shape[2:])[:, self._sampled]
        return jnp.stack([kspace.real, kspace.imag], axis=-1)

    def _adjoint(self, y):
        b, rest = y.shape[0], self.input_shape[2:]
        full = jnp.zeros((b, self.mask.size) + rest, jnp.complex64)
        full = full.at[:, self._sampled].set(y[..., 0] + 1j * y[..., 1])
        return _ifft_real(full.reshape((b,) + self.input_shape))

    def _pairs(self, y):  # (B, m, *rest, 2) -> (B, 2m, R), rows (point, re/im)
        return jnp.moveaxis(y.reshape(y.shape[:2] + (self._rest, 2)), -1, 2).reshape(
            y.shape[0], -1, self._rest)

    def _Ut(self, y):
        q = self._pairs(y)
        out = jnp.zeros_like(q).at[:, self._rows].add(self._vals[:, None] * q[:, self._cols])
        return out.reshape(y.shape[0], -1)

    def _U(self, z):
        z = z.reshape(z.shape[0], -1, self._rest)
        q = jnp.zeros_like(z).at[:, self._cols].add(self._vals[:, None] * z[:, self._rows])
        q = jnp.moveaxis(q.reshape(z.shape[0], -1, 2, self._rest), 2, -1)
        return q.reshape((-1,) + self.observation_shape)

    def _Vt(self, x):
        return self._basis.coefficients(_fft(x))

    def _V(self, z):
        return _ifft_real(self._basis.spectrum(z, self.input_shape[2:]))

    def _singular_values(self):
        return self._s


# ------------------------------------------------------------------------ phase retrieval


@operator_dataclass
class PhaseRetrievalOperator(Operator):
    """Fourier phase retrieval (nonlinear, forward only): y = |DFT(pad(x))|.

    The first two axes are zero-padded to round(oversampling * H) x round(oversampling * W)
    (the image centred, the odd pixel of padding after it) and the unitary DFT's magnitude
    is observed: (H, W, *rest) -> (round(o H), round(o W), *rest). JAX takes the magnitude's
    gradient as 0 where a DFT entry is exactly 0 (e.g. at x = 0): guidance stays finite.
    """

    input_shape: tuple[int, ...]
    oversampling: float = 2.0

    def __post_init__(self):
        shape = _spatial(self.input_shape)
        if self.oversampling < 1:
            raise ValueError(f"PhaseRetrievalOperator: oversampling must be >= 1, got "
                             f"{self.oversampling}")
        padded = tuple(round(self.oversampling * d) for d in shape[:2])
        pads = [((p - d) // 2, p - d - (p - d) // 2)
                for p, d in zip(padded, shape[:2], strict=True)]
        self._set(input_shape=shape, observation_shape=padded + shape[2:],
                  _pads=((0, 0), *pads) + ((0, 0),) * (len(shape) - 2))

    def describe(self):
        return f"oversampling {self.oversampling}, {super().describe()}"

    def _forward(self, x):
        return jnp.abs(_fft(jnp.pad(x, self._pads)))
