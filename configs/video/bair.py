"""BAIR robot pushing at its published shape: 64x64 RGB, 16 frames (1 given -> the next 15),
the space-time DDPM++ network with masked conditioning. Data: tfds 'bair_robot_pushing_small'
('image_main') prepared in array_record format (config.data.data_dir)."""

from score_sde.configs.video.default_video_configs import ddpmpp_64, get_default_configs


def get_config():
    config = ddpmpp_64(get_default_configs(), channels=3, frames=16)
    config.data.dataset = 'bair'
    config.video.max_past = 4
    config.video.predict_mask = 'past:1'
    config.video.interpolate_mask = 'past_future:1,1'
    config.video.rollout_context = 4
    return config
