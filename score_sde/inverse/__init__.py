"""Image restoration by posterior sampling: an observation is y = A(x) + sigma_y * noise.

Operators (this package's first part; posterior samplers build on them):
  base           the contract: Operator / LinearOperator / SVDOperator, capabilities, `require`
  operators      dense matrix, identity, masks (inpainting), colorization, average pooling,
                 separable resampling (antialiased bicubic)
  operators_fft  circular blur, single-coil MRI, phase retrieval (nonlinear)
  tomography     parallel-beam CT (discrete Radon transform)
  kernels, masks blur kernels; pixel and k-space sampling masks
  presets        the standard benchmark's operators by name: get_operator(name, image_shape)
"""

# The posterior methods register themselves when imported.
from score_sde.inverse import daps, guidance, merge, svd_methods  # noqa: F401
from score_sde.inverse.base import (
                                    CAPABILITIES,
                                    PINV_RCOND,
                                    LinearOperator,
                                    Operator,
                                    SVDOperator,
                                    require,
)
from score_sde.inverse.kernels import gaussian_kernel, motion_kernel
from score_sde.inverse.masks import box_mask, kspace_line_mask, kspace_point_mask, random_mask
from score_sde.inverse.operators import (
                                    AvgPoolOperator,
                                    ColorizationOperator,
                                    IdentityOperator,
                                    MaskOperator,
                                    MatrixOperator,
                                    SeparableOperator,
                                    bicubic_downsampling,
                                    bicubic_matrix,
)
from score_sde.inverse.operators_fft import (
                                    ConvolutionOperator,
                                    MRIOperator,
                                    PhaseRetrievalOperator,
                                    RealFourierBasis,
                                    wrap_kernel,
)
from score_sde.inverse.posterior import POSTERIOR_METHODS, get_posterior_sampler
from score_sde.inverse.presets import DEFAULT_SIGMA_Y, OPERATOR_PRESETS, Preset, get_operator
from score_sde.inverse.tomography import RadonOperator

__all__ = [
    "CAPABILITIES", "DEFAULT_SIGMA_Y", "OPERATOR_PRESETS", "POSTERIOR_METHODS", "PINV_RCOND",
    "AvgPoolOperator",
    "ColorizationOperator", "ConvolutionOperator", "IdentityOperator", "LinearOperator",
    "MRIOperator", "MaskOperator", "MatrixOperator", "Operator", "PhaseRetrievalOperator",
    "Preset", "RadonOperator", "RealFourierBasis", "SVDOperator", "SeparableOperator",
    "bicubic_downsampling", "bicubic_matrix", "box_mask", "gaussian_kernel", "get_operator",
    "get_posterior_sampler",
    "kspace_line_mask", "kspace_point_mask", "motion_kernel", "random_mask", "require",
    "wrap_kernel",
]
