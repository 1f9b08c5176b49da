"""Image restoration by posterior sampling: an observation is y = A(x) + sigma_y * noise.

Operators (forward, adjoint, pinv, (A^T A + rho I)^-1, SVD as functions; capabilities that a
method checks with `require`):
  base           the contract: Operator / LinearOperator / SVDOperator, capabilities, `require`
  operators      dense matrix, identity, masks (inpainting), colorization, average pooling,
                 separable resampling (antialiased bicubic)
  operators_fft  circular blur, single-coil MRI, phase retrieval (nonlinear)
  tomography     parallel-beam CT (discrete Radon transform)
  kernels, masks blur kernels; pixel and k-space sampling masks
  presets        the standard benchmark's operators by name: get_operator(name, image_shape)
  linalg         batched (per-example) inner products and conjugate gradients

Posterior samplers (score_sde.inverse.posterior):

    sample = get_posterior_sampler(method, sde, operator, shape, sigma_y=0.05, nfe=100,
                                   eps=eps, sharding=None, **options)
    x, nfe_used = jax.jit(lambda rng, y: sample(rng, score_fn, y))(rng, y)

  shape = (batch, *operator.input_shape); y: (batch, *operator.observation_shape), in the
  data's (scaled) range, e.g. [-1, 1]; score_fn(x, t) the model's score (get_score_fn) or a
  closed form; eps: the SDE's sampling eps (get_sde). nfe is a budget of network passes: a
  forward evaluation of score_fn is 1, a product with its Jacobian (vjp or jvp) 1 more, a
  forward recomputed by jax.checkpoint 1 more; a method takes the steps its budget buys and
  returns the passes it spent. POSTERIOR_METHODS names the methods:

  mmps   covariance-aware guided denoiser (TMPD / MMPS): exact on Gaussian data; linear
         operators; options cg_iters=6 (at most dim(y) are taken), data_scale,
         solver='dpm_solver++' (+ its options); 2 + CG steps passes per solver call
  pigdm  PiGDM: linear operators (closed form through the SVD, else CG); options data_scale,
         checkpoint=True, cg_iters, solver='ddim' (eta=1); 2 (+1 checkpoint) per call
  dps    DPS: any operator (forward only); options zeta=1.0 (the paper's, for 256 x 256
         images in [-1, 1]: scale it to the data), checkpoint, solver='ddim' (eta=1)
  ddrm   DDRM: operators with an SVD; options eta=0.85, eta_b=1, grid, data_scale; 1 per step
  daps   DAPS: any operator, no gradient through the network, sigma_y > 0; options
         ode_steps=1, langevin_steps=50, step_scale=0.5, grid, data_scale
  merge  the published replacement: MaskOperator / ColorizationOperator, sigma_y = 0 only;
         option solver='pc' (+ its options)
  tds    twisted SMC (TDS) with PiGDM's twist: linear operators, sigma_y > 0; options
         particles=16, ess_threshold=0.5, checkpoint, grid, data_scale, cg_iters; costs
         particles x (steps + 1) x 3 passes per sample (asymptotically exact in particles
         and steps; for low dimensions)

  The guided methods (mmps, pigdm, dps) are transforms of the data prediction that any
  fixed-step sampler runs (guidance.guided_score); data_scale is the data's spread (1 for
  [-1, 1] images, as the samplers' data_scale); value_range=(lo, hi), the data's range, clips
  their data prediction (None by default, so they stay exact on Gaussian data; on a trained
  network they need it: --mode restore passes the config's range, with_value_range; with no
  method named it takes default_method(operator, sigma_y): ddrm with an SVD, pigdm for other
  linear operators, daps (dps without noise) for nonlinear ones). A method that needs what
  the operator lacks is refused with one line; so are a wrong shape, a negative sigma_y, an
  unknown method or option, and a budget below one step's cost.
  exact          closed-form posteriors of linear-Gaussian observations (tests, benchmarks)

Reports (score_sde.inverse.report, imported on its own): the simple baselines of an observation
(A^+ y, bicubic upsampling, y itself) and PSNR / SSIM / LPIPS / digits FD of a restoration and
of the baselines against the truth: what --mode restore writes.
"""

# The posterior methods register themselves when imported.
from score_sde.inverse import daps, guidance, merge, smc, svd_methods  # noqa: F401
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
from score_sde.inverse.posterior import (
    POSTERIOR_METHODS,
    default_method,
    get_posterior_sampler,
    with_value_range,
)
from score_sde.inverse.presets import DEFAULT_SIGMA_Y, OPERATOR_PRESETS, Preset, get_operator
from score_sde.inverse.tomography import RadonOperator

__all__ = [
    "CAPABILITIES", "DEFAULT_SIGMA_Y", "OPERATOR_PRESETS", "POSTERIOR_METHODS", "PINV_RCOND",
    "AvgPoolOperator",
    "ColorizationOperator", "ConvolutionOperator", "IdentityOperator", "LinearOperator",
    "MRIOperator", "MaskOperator", "MatrixOperator", "Operator", "PhaseRetrievalOperator",
    "Preset", "RadonOperator", "RealFourierBasis", "SVDOperator", "SeparableOperator",
    "bicubic_downsampling", "bicubic_matrix", "box_mask", "gaussian_kernel", "get_operator",
    "default_method",
    "get_posterior_sampler",
    "with_value_range",
    "kspace_line_mask", "kspace_point_mask", "motion_kernel", "random_mask", "require",
    "wrap_kernel",
]
