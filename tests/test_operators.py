"""Restoration operators (score_sde.inverse) checked against dense linear algebra.

Every operator is built on a tiny image (8x8 or smaller, so n <= 192) and its dense matrix is
read off by applying forward to the identity basis; the functions it serves (adjoint, pinv,
solve_normal, the SVD's U, Ut, V, Vt) are read off the same way and compared with numpy's
dense results. One jitted probe per operator computes everything (compile time dominates),
which also checks that every method runs under jax.jit. Float32 throughout: tolerances are a
few 1e-6 relative unless stated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.controllable import color_basis
from score_sde.inverse import (
    DEFAULT_SIGMA_Y,
    OPERATOR_PRESETS,
    AvgPoolOperator,
    ConvolutionOperator,
    MatrixOperator,
    MRIOperator,
    PhaseRetrievalOperator,
    bicubic_downsampling,
    bicubic_matrix,
    box_mask,
    get_operator,
    kspace_line_mask,
    kspace_point_mask,
    motion_kernel,
    random_mask,
    require,
)

RHO = 0.3
TOL = 1e-5


def _build(name: str):
    rng = np.random.default_rng(0)
    return {
        "matrix": lambda: MatrixOperator(rng.normal(size=(6, 12)), input_shape=(2, 2, 3)),
        "denoise": lambda: get_operator("denoise", (4, 4, 2)),
        "box_inpaint": lambda: get_operator("box_inpaint", (8, 8, 1)),
        "random_inpaint": lambda: get_operator("random_inpaint", (8, 8, 3)),
        "colorize": lambda: get_operator("colorize", (4, 4, 3)),
        "avgpool_x4": lambda: AvgPoolOperator((8, 8, 2), 4),
        "bicubic_x2": lambda: bicubic_downsampling((8, 6, 2), 2),
        # the 61x61 kernel is larger than the image: it wraps (circular convolution)
        "gaussian_blur": lambda: get_operator("gaussian_blur", (8, 8, 1)),
        "motion_blur": lambda: get_operator("motion_blur", (7, 6, 2), size=5),  # odd side
        "mri_points": lambda: MRIOperator(kspace_point_mask((7, 8), 3, 0.25, seed=1),
                                          (7, 8, 2)),
        "ct": lambda: get_operator("ct_18", (8, 8, 1), n_angles=12),  # full column rank
    }[name]()


LINEAR = ["matrix", "denoise", "box_inpaint", "random_inpaint", "colorize", "avgpool_x4",
          "bicubic_x2", "gaussian_blur", "motion_blur", "mri_points", "ct"]
WITH_SVD = [n for n in LINEAR if n != "ct"]
# condition numbers below ~10 (the Gaussian blur's is ~1e9 on 8x8: pinv depends on rcond)
WELL_POSED = [n for n in LINEAR if n != "gaussian_blur"]


def _basis(n: int, shape: tuple[int, ...]) -> jax.Array:
    return jnp.eye(n, dtype=jnp.float32).reshape((n,) + shape)


def _columns(v) -> np.ndarray:
    """Outputs on a basis (n, ...) -> the dense matrix whose columns they are."""
    v = np.asarray(v, np.float64)
    return v.reshape(v.shape[0], -1).T


@functools.cache
def _operator(name):
    return _build(name)


@functools.cache
def _dense(name) -> np.ndarray:
    op = _operator(name)
    return _columns(jax.jit(op.forward)(_basis(op.input_size, op.input_shape)))


def _random(op, seed=1, batch=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch,) + op.input_shape).astype(np.float32)
    y = rng.normal(size=(batch,) + op.observation_shape).astype(np.float32)
    return x, y


def _rhos(n: int) -> np.ndarray:
    """A per-example rho for a batch of n basis vectors: 0.3, 0.6, 0.9, 0.3, ..."""
    return (RHO * (1 + np.arange(n) % 3)).astype(np.float32)


@functools.cache
def _probe(name) -> dict[str, np.ndarray]:
    """Every function the operator serves, applied to the basis vectors (so each is a dense
    matrix), and the same for MatrixOperator(its dense matrix): one jit per operator."""
    op = _operator(name)
    mat = MatrixOperator(_dense(name), op.input_shape, op.observation_shape)
    n, m = op.input_size, op.observation_size
    e_n, e_m = _basis(n, op.input_shape), _basis(m, op.observation_shape)

    def run():
        out = {"At": op.adjoint(e_m), "P": op.pinv(e_m), "S": op.solve_normal(e_n, _rhos(n)),
               "mat_At": mat.adjoint(e_m), "mat_P": mat.pinv(e_m),
               "mat_S": mat.solve_normal(e_n, _rhos(n))}
        if op.has_svd:
            out.update(U=op.U(jnp.eye(m)), V=op.V(jnp.eye(n)), Vt=op.Vt(e_n), Ut=op.Ut(e_m))
        return out

    return {k: _columns(v) for k, v in jax.jit(run)().items()}


def _close(actual, expected, tol=TOL):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


def _apply(name: str, x: np.ndarray) -> np.ndarray:
    """forward(x) for a batch, through the operator's dense matrix."""
    op = _operator(name)
    y = np.asarray(x, np.float64).reshape(x.shape[0], -1) @ _dense(name).T
    return y.reshape((x.shape[0],) + op.observation_shape)


# ------------------------------------------------------------------ every linear operator


@pytest.mark.parametrize("name", LINEAR)
def test_adjoint_is_the_transpose(name):
    op, p, a = _operator(name), _probe(name), _dense(name)
    _close(p["At"], a.T)
    x, y = (v.reshape(v.shape[0], -1) for v in _random(op))
    _close(np.sum((x @ a.T) * y, axis=1), np.sum(x * (y @ p["At"].T), axis=1))  # <Ax,y>=<x,A^T y>


@pytest.mark.parametrize("name", LINEAR)
def test_pinv_satisfies_a_pinv_a_equals_a(name):
    a = _dense(name)
    _close(a @ _probe(name)["P"] @ a, a, 1e-4 if name == "ct" else TOL)  # CT: CG, float32


@pytest.mark.parametrize("name", WELL_POSED)
def test_pinv_is_the_minimum_norm_solution(name):
    """Against numpy's dense pseudo-inverse (which also fixes the null-space component);
    CT's pinv is conjugate gradients in float32 (measured 4e-5)."""
    _close(_probe(name)["P"], np.linalg.pinv(_dense(name)), 3e-4 if name == "ct" else TOL)


@pytest.mark.parametrize("name", LINEAR)
def test_solve_normal_against_a_dense_solve(name):
    op, a = _operator(name), _dense(name)
    lam, q = np.linalg.eigh(a.T @ a)
    ref = q @ (q.T / (lam[:, None] + _rhos(op.input_size)[None]))  # column j: rho_j
    _close(_probe(name)["S"], ref, 1e-4 if name == "ct" else TOL)


@pytest.mark.parametrize("name", LINEAR)
def test_matrix_operator_of_the_dense_matrix_behaves_alike(name):
    op, p = _operator(name), _probe(name)
    _close(p["mat_At"], p["At"])
    _close(p["mat_S"], p["S"], 1e-4 if name == "ct" else TOL)
    if name in WELL_POSED:
        _close(p["mat_P"], p["P"], 3e-4 if name == "ct" else TOL)
    if op.has_svd:
        mat = MatrixOperator(_dense(name))
        s = np.pad(op.singular_values, (0, mat.singular_values.size - op.singular_values.size))
        _close(np.sort(s)[::-1], mat.singular_values)


@pytest.mark.parametrize("name", WITH_SVD)
def test_svd_reconstructs_a_with_orthonormal_factors(name):
    op, p, a = _operator(name), _probe(name), _dense(name)
    u, v, s = p["U"], p["V"], op.singular_values
    m, n, r = op.observation_size, op.input_size, s.size
    assert s.shape == (r,) and r <= min(m, n) and np.all(s >= 0)
    _close(u.T @ u, np.eye(m))
    _close(v.T @ v, np.eye(n))
    _close(u[:, :r] * s @ v[:, :r].T, a)
    _close(p["Vt"], v.T)  # Vt and Ut are the transposes (inverses) of V and U
    _close(p["Ut"], u.T)


def test_blur_pinv_is_the_svd_pinv_with_the_same_cut_off():
    """The Gaussian blur's pinv (closed form through the FFT) drops the singular values
    <= rcond * max: it equals V diag(1/s, kept) U^T from its own SVD functions."""
    op, p = _operator("gaussian_blur"), _probe("gaussian_blur")
    s = op.singular_values.astype(np.float64)
    inv = np.where(s > op.rcond * s.max(), 1 / np.where(s > 0, s, 1), 0)
    _close(p["P"], p["V"][:, : s.size] * inv @ p["U"][:, : s.size].T, 1e-4)


# ------------------------------------------------------------------------ the operators


def test_matrix_operator_svd_is_numpys():
    a = np.random.default_rng(3).normal(size=(4, 6))
    op = MatrixOperator(a)
    assert op.input_shape == (6,) and op.observation_shape == (4,)
    np.testing.assert_allclose(op.singular_values, np.linalg.svd(a, compute_uv=False), 1e-6)
    with pytest.raises(ValueError, match="does not map input_shape"):
        MatrixOperator(a, input_shape=(5,))


def test_masks_are_seeded_and_scaled_to_the_image():
    m1, m2 = random_mask((16, 16), 0.7, seed=4), random_mask((16, 16), 0.7, seed=4)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(m1, random_mask((16, 16), 0.7, seed=5))
    assert (~m1).sum() == round(0.7 * 256)
    box = box_mask((256, 256))  # the benchmark's 128x128 centred box
    assert (~box).sum() == 128 * 128 and not box[64:192, 64:192].any() and box[63, :].all()
    op = get_operator("random_inpaint", (16, 16, 3), seed=4)
    np.testing.assert_array_equal(op.mask, m1)
    x = np.arange(16 * 16 * 3, dtype=np.float32).reshape(1, 16, 16, 3)
    np.testing.assert_array_equal(_operator("box_inpaint").observation_shape, (48, 1))
    np.testing.assert_array_equal(np.asarray(op.forward(x))[0], x[0][m1])


def _bicubic_reference(signal: np.ndarray, factor: int) -> np.ndarray:
    """1-D antialiased bicubic downsampling, written as a loop over output samples."""
    def keys(t, a=-0.5):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    out = []
    for i in range(len(signal) // factor):
        centre = (i + 0.5) * factor - 0.5
        taps = [(j, keys((j - centre) / factor)) for j in range(len(signal))]
        total = sum(w for _, w in taps)
        out.append(sum(w * signal[j] for j, w in taps) / total)
    return np.array(out)


def test_bicubic_filter_matches_a_reference_and_jax_image():
    for size, factor in ((16, 2), (16, 4), (32, 8)):
        d = bicubic_matrix(size, factor)
        np.testing.assert_allclose(d.sum(axis=1), 1.0, atol=1e-12)  # reproduces constants
        signal = np.random.default_rng(size + factor).normal(size=size)
        np.testing.assert_allclose(d @ signal, _bicubic_reference(signal, factor), atol=1e-12)
    # jax.image.resize(antialias=True) uses the same kernel and edge truncation
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 2)).astype(np.float32)
    op = bicubic_downsampling((16, 16, 2), 4)
    ref = jax.image.resize(x, (1, 4, 4, 2), "bicubic", antialias=True)
    np.testing.assert_allclose(jax.jit(op.forward)(x), ref, atol=1e-5)


def test_colorization_and_avgpool_are_means():
    op = _operator("colorize")
    x = np.asarray(_random(op)[0])
    np.testing.assert_allclose(_apply("colorize", x), x.mean(-1, keepdims=True), atol=1e-6)
    # its first V coordinate of a pixel is controllable's sqrt(C) * grey direction
    v = _probe("colorize")["V"][:, :16].T.reshape(16, 4, 4, 3)
    np.testing.assert_allclose(v[0, 0, 0], color_basis(3)[:, 0], atol=1e-6)
    op = _operator("avgpool_x4")
    x = np.asarray(_random(op)[0])
    ref = x.reshape(3, 2, 4, 2, 4, 2).mean(axis=(2, 4))
    assert op.singular_values.tolist() == [0.25] * 8  # 1 / sqrt(16) per block and channel
    np.testing.assert_allclose(_apply("avgpool_x4", x), ref, atol=1e-6)


def _circular_reference(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """y[p] = sum_d k[d] x[p - d] with periodic indices, d the offset from the centre."""
    h, w = x.shape[1:3]
    y = np.zeros_like(x, np.float64)
    ch, cw = kernel.shape[0] // 2, kernel.shape[1] // 2
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            y += kernel[i, j] * np.roll(x, (i - ch, j - cw), axis=(1, 2))
    return y


def test_blur_is_circular_convolution_even_with_a_kernel_larger_than_the_image():
    for name in ("gaussian_blur", "motion_blur"):
        op = _operator(name)
        x = np.asarray(_random(op)[0])
        _close(_apply(name, x), _circular_reference(x, op.kernel))
    assert _operator("gaussian_blur").kernel.shape == (61, 61)


def test_motion_kernel_is_seeded_normalised_and_straight_without_shake():
    k = motion_kernel(61, 0.5, seed=3)
    np.testing.assert_array_equal(k, motion_kernel(61, 0.5, seed=3))
    assert not np.array_equal(k, motion_kernel(61, 0.5, seed=4))
    assert k.shape == (61, 61) and k.min() >= 0 and abs(k.sum() - 1) < 1e-12
    line = motion_kernel(31, 0.0, seed=3)  # intensity 0: a straight path through the centre
    rows, cols = np.indices(line.shape) - 15
    pts = np.stack([rows.ravel(), cols.ravel()])
    cov = (pts * line.ravel()) @ pts.T
    eig = np.linalg.eigvalsh(cov)
    assert eig[0] < 0.01 * eig[1] and eig[1] > 50  # thin and long (~ length^2 / 12 = 75)


def test_mri_observes_the_sampled_unitary_fft_as_re_im_pairs():
    op = _operator("mri_points")
    x = np.asarray(_random(op)[0])
    kspace = np.fft.fft2(x, axes=(1, 2), norm="ortho").reshape(3, -1, 2)[:, op.mask.ravel()]
    np.testing.assert_allclose(_apply("mri_points", x),
                               np.stack([kspace.real, kspace.imag], -1), atol=1e-5)
    # the layouts the real SVD distinguishes are all present: s = 1 and 1 / sqrt(2), and a
    # left null space (Im of self-conjugate points, antisymmetric parts of sampled pairs)
    s = op.singular_values
    assert np.any(np.isclose(s, 1.0)) and np.any(np.isclose(s, np.sqrt(0.5)))
    assert s.size < op.observation_size


def test_kspace_line_mask_samples_whole_columns_with_the_centre():
    mask = kspace_line_mask((32, 32), acceleration=4, center_fraction=0.125, seed=0)
    columns = mask[0]
    assert np.all(mask == columns) and columns.sum() == 8
    centred = np.fft.fftshift(columns)
    assert centred[14:18].all()  # the 4 lowest frequencies around DC (index 16)
    assert kspace_point_mask((32, 32), 4, 0.125).sum() == 256
    op = get_operator("mri_x4", (32, 32, 1))
    assert op.observation_shape == (32 * 8, 1, 2)


def test_ct_projects_column_and_row_sums():
    """theta = 0 integrates along rows (column sums), theta = pi/2 along columns; the 8x8
    image lies on the 12 detector bins at an integer offset of 2, so the samples are exact."""
    op = _operator("ct")
    x = np.asarray(_random(op)[0])[..., 0]
    sino = _apply("ct", x[..., None])[..., 0]
    assert op.observation_shape == (12, 12, 1)
    np.testing.assert_allclose(sino[:, 0, 2:10], x.sum(axis=1), atol=1e-5)
    np.testing.assert_allclose(sino[:, 6, 2:10], x.sum(axis=2), atol=1e-4)
    np.testing.assert_allclose(sino[:, :, [0, 1, 10, 11]][:, [0, 6]], 0.0, atol=1e-5)
    assert op.iterative == {"pinv", "solve_normal"} and not op.has_svd


# ------------------------------------------------------------- nonlinear: phase retrieval


def test_phase_retrieval_is_the_oversampled_fourier_magnitude():
    op = get_operator("phase_retrieval", (4, 4, 1))
    assert op.observation_shape == (8, 8, 1) and not op.is_linear and not op.capabilities
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 1)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    ref = np.abs(np.fft.fft2(padded, axes=(1, 2), norm="ortho"))
    y = ref.astype(np.float32)
    # a guidance gradient at x = 0 (every DFT entry 0) is finite: 0, not NaN
    loss = lambda v: jnp.sum((op.forward(v) - y) ** 2)
    forward, grad = jax.jit(lambda v: (op.forward(v), jax.grad(loss)(0.0 * v)))(x)
    np.testing.assert_allclose(forward, ref, atol=1e-5)
    assert np.all(np.isfinite(grad))
    for method, call in (("adjoint", lambda: op.adjoint(y)), ("pinv", lambda: op.pinv(y)),
                         ("Vt", lambda: op.Vt(x)), ("U", lambda: op.U(y)),
                         ("solve_normal", lambda: op.solve_normal(x, 1.0)),
                         ("singular_values", lambda: op.singular_values)):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"{method} needs ") and "\n" not in message
        assert "PhaseRetrievalOperator(oversampling 2.0, 4x4x1 -> 8x8x1)" in message
    assert PhaseRetrievalOperator((5, 3), 1.5).observation_shape == (8, 4)  # round(1.5 * d)


# ------------------------------------------------------------------------- the contract


def test_require_names_the_method_and_what_is_missing():
    ct = _operator("ct")
    with pytest.raises(ValueError) as err:
        require(ct, "svd", method="ddrm")
    assert str(err.value) == ("ddrm needs an operator with an SVD; "
                              "RadonOperator(12 angles, 8x8x1 -> 12x12x1) has none")
    require(ct, "pinv", method="pigdm")  # served (iteratively)
    pr = get_operator("phase_retrieval", (4, 4, 1))
    with pytest.raises(ValueError, match=r"^dps_linear needs a linear operator; "
                                         r"PhaseRetrievalOperator\(.*\) is nonlinear"):
        require(pr, "linear", method="dps_linear")
    with pytest.raises(ValueError, match=r"capability='inverse' is not one of \['linear'"):
        require(ct, "inverse", method="x")
    assert [n for n in LINEAR if not _operator(n).has_svd] == ["ct"]
    assert all(_operator(n).is_linear and _operator(n).has_pinv for n in LINEAR)


def test_shape_errors_are_one_line():
    op = _operator("gaussian_blur")
    for call, what in ((lambda: op.check_observation(np.zeros((2, 8, 7, 1))), "y"),
                       (lambda: op.adjoint(np.zeros((8, 8, 1))), "y"),
                       (lambda: op.forward(np.zeros((2, 8, 8, 3))), "x"),
                       (lambda: op.V(np.zeros((2, 63))), "z")):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value).startswith(f"{what} has shape ") and "\n" not in str(err.value)
        assert "takes a batch of shape (B, " in str(err.value)


def test_degrade_adds_scaled_noise_and_refuses_a_negative_sigma():
    op = _operator("colorize")
    x = np.asarray(_random(op)[0])
    rng = jax.random.key(0)
    degrade = jax.jit(op.degrade)
    y0, y = degrade(rng, x, 0.0), degrade(rng, x, DEFAULT_SIGMA_Y)
    np.testing.assert_allclose(y0, _apply("colorize", x), atol=1e-6)
    noise = (np.asarray(y) - np.asarray(y0)) / DEFAULT_SIGMA_Y
    assert abs(noise.std() - 1) < 0.15 and DEFAULT_SIGMA_Y == 0.05
    with pytest.raises(ValueError, match=r"^sigma_y must be >= 0, got -0.1$"):
        op.degrade(rng, x, -0.1)
    with pytest.raises(ValueError, match=r"^sigma_y must be >= 0, got \[ 0.1 -0.1  0.1\]$"):
        op.degrade(rng, x, np.array([0.1, -0.1, 0.1]))


def test_presets_build_and_unknown_names_are_refused():
    shapes = {name: get_operator(name, (8, 8, 3)).observation_shape for name in OPERATOR_PRESETS}
    assert shapes["sr4_bicubic"] == (2, 2, 3) and shapes["sr2_avgpool"] == (4, 4, 3)
    assert shapes["colorize"] == (8, 8, 1) and shapes["denoise"] == (8, 8, 3)
    assert shapes["random_inpaint"] == (round(0.3 * 64), 3) and shapes["ct_23"] == (23, 12, 3)
    assert shapes["phase_retrieval"] == (16, 16, 3)
    for name in ("ct_18", "ct_23", "phase_retrieval", "motion_blur"):  # traced, not compiled
        op = get_operator(name, (8, 8, 3))
        out = jax.eval_shape(op.forward, jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32))
        assert out.shape == (2,) + op.observation_shape
    with pytest.raises(ValueError, match=r"^unknown operator preset 'sr3'; choose one of "
                                         r"\['box_inpaint', 'colorize', "):
        get_operator("sr3", (8, 8, 3))
    with pytest.raises(ValueError, match=r"'gaussian_blur' takes params \['size', 'std'\]; "
                                         r"got unknown \['sigma'\]"):
        get_operator("gaussian_blur", (8, 8, 3), sigma=2.0)
    blur = get_operator("gaussian_blur", (8, 8, 3), size=5, std=1.0)
    assert isinstance(blur, ConvolutionOperator) and blur.kernel.shape == (5, 5)


def test_methods_run_under_jit_with_the_operator_static():
    op = _operator("box_inpaint")
    x, y = _random(op)

    @functools.partial(jax.jit, static_argnums=0)
    def restore(operator, y):
        return operator.pinv(y), operator.adjoint(y), operator.forward(operator.pinv(y))

    pinv, adj, again = restore(op, y)
    np.testing.assert_array_equal(pinv, adj)  # a mask's pinv is its adjoint (zero fill)
    np.testing.assert_array_equal(again, y)
