"""The standard restoration benchmark's operators by name: `get_operator(name, image_shape)`.

Sizes are scaled to the image where the benchmark states them for 256 x 256 (the inpainting
box is half of each side). The blur kernels keep their 61 x 61 size on every image: on an
image smaller than the kernel it wraps around (circular convolution with the full kernel,
operators_fft.wrap_kernel). The motion kernel is kernels.motion_kernel's random trajectory,
deterministic by its seed. Data are on [-1, 1]; the benchmark's observation noise is
DEFAULT_SIGMA_Y (the posterior sampler takes sigma_y, the operator does not).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from score_sde.inverse.base import Operator, as_shape
from score_sde.inverse.kernels import gaussian_kernel, motion_kernel
from score_sde.inverse.masks import box_mask, kspace_line_mask, random_mask
from score_sde.inverse.operators import (
    AvgPoolOperator,
    ColorizationOperator,
    IdentityOperator,
    MaskOperator,
    bicubic_downsampling,
)
from score_sde.inverse.operators_fft import ConvolutionOperator, MRIOperator, PhaseRetrievalOperator
from score_sde.inverse.tomography import RadonOperator

DEFAULT_SIGMA_Y = 0.05


@dataclasses.dataclass(frozen=True)
class Preset:
    """build(image_shape, **params) -> Operator, with the preset's default params."""

    build: Callable[..., Operator]
    params: Mapping[str, Any]
    description: str


def _sr_bicubic(shape, *, factor):
    return bicubic_downsampling(shape, factor)


def _gaussian_blur(shape, *, size, std):
    return ConvolutionOperator(gaussian_kernel(size, std), shape, label=f"gaussian std {std}")


def _motion_blur(shape, *, size, intensity, seed):
    return ConvolutionOperator(motion_kernel(size, intensity, seed), shape,
                               label=f"motion intensity {intensity} seed {seed}")


def _box_inpaint(shape, *, size, top_left):
    return MaskOperator(box_mask(shape[:2], size, top_left), shape)


def _random_inpaint(shape, *, missing, seed):
    return MaskOperator(random_mask(shape[:2], missing, seed), shape)


def _mri(shape, *, acceleration, center_fraction, seed):
    return MRIOperator(kspace_line_mask(shape[:2], acceleration, center_fraction, seed), shape)


def _ct(shape, *, n_angles, cg_maxiter):
    return RadonOperator(shape, n_angles, cg_maxiter)


OPERATOR_PRESETS: Mapping[str, Preset] = MappingProxyType({
    "sr4_bicubic": Preset(_sr_bicubic, {"factor": 4}, "super-resolution x4, antialiased bicubic"),
    "sr2_avgpool": Preset(lambda shape, *, factor: AvgPoolOperator(shape, factor),
                          {"factor": 2}, "super-resolution x2, average pooling"),
    "gaussian_blur": Preset(_gaussian_blur, {"size": 61, "std": 3.0},
                            "Gaussian blur, 61x61 kernel, std 3.0, circular"),
    "motion_blur": Preset(_motion_blur, {"size": 61, "intensity": 0.5, "seed": 0},
                          "motion blur, 61x61 random-trajectory kernel, intensity 0.5, circular"),
    "box_inpaint": Preset(_box_inpaint, {"size": None, "top_left": None},
                          "inpainting of a centred box of half the side (128x128 on 256x256)"),
    "random_inpaint": Preset(_random_inpaint, {"missing": 0.7, "seed": 0},
                             "inpainting, 70% of the pixels missing at random"),
    "denoise": Preset(lambda shape: IdentityOperator(shape), {}, "denoising (identity)"),
    "colorize": Preset(lambda shape: ColorizationOperator(shape), {},
                       "colorization (grey = mean of the channels)"),
    "mri_x4": Preset(_mri, {"acceleration": 4.0, "center_fraction": 0.08, "seed": 0},
                     "single-coil MRI, x4 Cartesian column undersampling, 8% centre"),
    "ct_18": Preset(_ct, {"n_angles": 18, "cg_maxiter": 100}, "sparse-view CT, 18 angles"),
    "ct_23": Preset(_ct, {"n_angles": 23, "cg_maxiter": 100}, "sparse-view CT, 23 angles"),
    "phase_retrieval": Preset(lambda shape, *, oversampling: PhaseRetrievalOperator(
        shape, oversampling), {"oversampling": 2.0}, "Fourier phase retrieval, oversampling 2"),
})


def get_operator(name: str, image_shape: tuple[int, ...], **overrides) -> Operator:
    """The preset `name` for examples of `image_shape` (no batch axis, e.g. (H, W, C)), with
    any of its params overridden (e.g. get_operator('ct_18', shape, n_angles=30))."""
    if name not in OPERATOR_PRESETS:
        raise ValueError(f"unknown operator preset {name!r}; choose one of "
                         f"{sorted(OPERATOR_PRESETS)}")
    preset = OPERATOR_PRESETS[name]
    unknown = sorted(set(overrides) - set(preset.params))
    if unknown:
        raise ValueError(f"operator preset {name!r} takes params {sorted(preset.params)}; got "
                         f"unknown {unknown}")
    return preset.build(as_shape(image_shape), **{**preset.params, **overrides})
