"""Defaults shared by the video configs: the digits defaults plus the clip fields.

config.data.num_frames is the clip length T the network trains on; config.model.name
'spacetime' (an image U-Net over the frames plus temporal attention) or 'video_concat' (frames
stacked on the channels); config.video holds the masked-conditioning training mix, the
guidance and the masks and roll-out of --mode predict / interpolate (score_sde/video/).
"""

import ml_collections

from score_sde.configs.default_digits_configs import get_default_configs as digits_defaults


def video_section() -> ml_collections.ConfigDict:
    video = ml_collections.ConfigDict()
    # Training masks (score_sde/video/masks.py): nothing given / the first k <= max_past frames
    # / the first k and the last m <= max_future frames. p_unconditional is also the mask
    # dropout that classifier-free guidance over the mask needs.
    video.p_unconditional = 0.3
    video.p_past = 0.5
    video.p_past_future = 0.2
    video.max_past = 4
    video.max_future = 2
    # Independent frames appended to each clip (joint image-video training; 'spacetime').
    video.joint_image_frames = 0
    # Sampling: classifier-free guidance over the mask (mask-conditioned models), or
    # reconstruction guidance of this weight (models trained without masks).
    video.guidance_scale = 0.0
    video.reconstruction_guidance = 0.0
    # --mode predict / interpolate: the given frames (masks.py forms), how many clips, and
    # the roll-out to rollout_frames frames (0: one block) with rollout_context carried frames.
    video.predict_mask = 'past:4'
    video.interpolate_mask = 'past_future:2,2'
    video.num_clips = 16
    video.rollout_frames = 0
    video.rollout_context = 4
    return video


def get_default_configs() -> ml_collections.ConfigDict:
    config = digits_defaults()
    config.video = video_section()

    training = config.training
    training.sde = 'vpsde'
    training.continuous = True
    training.class_dropout = 0.0

    sampling = config.sampling
    sampling.method = 'dpm_solver++'
    sampling.nfe = 30
    sampling.predictor = 'euler_maruyama'
    sampling.corrector = 'none'

    model = config.model
    model.name = 'spacetime'
    model.image_model = 'small_unet'
    model.temporal_resolutions = (8, 4)
    model.temporal_heads = 4
    model.temporal_max_distance = 16
    model.mask_conditioning = True
    model.remat = False
    return config


def ddpmpp_64(config: ml_collections.ConfigDict, channels: int, frames: int
              ) -> ml_collections.ConfigDict:
    """The published-shape 64x64 setting: DDPM++ blocks (NCSN++ family, VP SDE) as the
    space-time network's image part, temporal attention at 16 and 8, remat, batch 64."""
    training = config.training
    training.sde = 'vpsde'  # the published DDPM++ setting: VP, noise prediction
    training.batch_size = 64
    training.n_iters = 1300001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 5000
    training.snapshot_freq_for_preemption = 5000
    training.snapshot_sampling = True

    data = config.data
    data.image_size = 64
    data.num_channels = channels
    data.num_frames = frames
    data.random_flip = False
    data.num_workers = -1

    model = config.model
    model.name = 'spacetime'
    model.image_model = 'ncsnpp'
    model.ema_rate = 0.9999
    model.ema_warmup = False
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.temporal_resolutions = (16, 8)
    model.temporal_heads = 4
    model.dropout = 0.1
    model.resamp_with_conv = True
    model.fir = False
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'none'
    model.progressive_input = 'none'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.conv_size = 3
    model.remat = True

    config.optim.lr = 2e-4
    config.optim.warmup = 5000
    config.eval.batch_size = 64
    config.eval.num_samples = 256
    config.sampling.nfe = 50
    config.sampling.batch_size = 64
    config.video.num_clips = 64
    return config
