"""Moving MNIST at its published shape: 64x64 grey, 20 frames (10 given -> the next 10), the
space-time DDPM++ network with masked conditioning. Data: tfds 'moving_mnist' prepared in
array_record format (config.data.data_dir; see score_sde/data/clips.py)."""

from score_sde.configs.video.default_video_configs import ddpmpp_64, get_default_configs


def get_config():
    config = ddpmpp_64(get_default_configs(), channels=1, frames=20)
    config.data.dataset = 'moving_mnist'
    config.video.max_past = 10
    config.video.predict_mask = 'past:10'
    config.video.interpolate_mask = 'past_future:5,5'
    config.video.rollout_context = 10
    return config
