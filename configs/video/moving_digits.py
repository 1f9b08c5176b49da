"""The embedded video default: moving digits (one 8x8 sklearn digit bouncing on a 16x16 canvas,
8 frames), the factorised space-time U-Net with masked conditioning, EDM's SDE and
preconditioning; sized to train on 2 CPU cores in under a quarter of an hour.

EDM rather than VP with noise prediction: the canvas is mostly black, and a noise-predicting
network's small errors in each frame's mean at the highest noise levels are multiplied by
sigma / alpha (~150 at t = T) into whole frames sampled white or black (measured: the VP run of
this config gave such frames with every sampler); EDM's c_skip / c_out bound that error.

    python -m score_sde.main --config configs/video/moving_digits.py --workdir runs/video \\
        --mode train
    ... --mode predict      (given the first 4 frames of test clips, the next 4)
"""

from score_sde.configs.video.default_video_configs import get_default_configs


def get_config():
    config = get_default_configs()

    training = config.training
    training.batch_size = 8  # clips: 64 frames a step
    training.n_iters = 2000
    training.snapshot_freq = 1000
    training.log_freq = 50
    training.eval_freq = 500
    training.snapshot_freq_for_preemption = 500
    training.snapshot_sampling = True

    data = config.data
    data.dataset = 'moving_digits'
    data.image_size = 16  # the canvas
    data.num_frames = 8
    data.num_channels = 1
    data.num_digits = 1
    data.motion = 'bounce'  # or 'random': velocity redrawn at the walls
    data.max_speed = 2
    data.train_clips = 20000
    data.test_clips = 256
    data.clip_seed = 0
    data.num_workers = 0

    training.sde = 'edm'
    training.P_mean = -1.2
    training.P_std = 1.2

    model = config.model
    model.parameterization = 'edm'
    model.sigma_min = 0.002
    model.sigma_max = 80
    # The pixels' std in [-1, 1] of 2,000 training clips (x / 16 * 2 - 1): 0.46 (mean -0.85).
    model.sigma_data = 0.46
    model.nf = 32
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (4,)
    model.temporal_resolutions = (8, 4)
    model.dropout = 0.0

    evaluate = config.eval
    evaluate.batch_size = 64
    evaluate.num_samples = 64
    evaluate.end_ckpt = 3

    config.sampling.num_samples = 64
    config.sampling.batch_size = 16
    config.video.num_clips = 16
    return config
