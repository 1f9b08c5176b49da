"""UCF-101 at its published shape: 64x64 RGB, 16 frames, unconditional generation (Video
Diffusion Models' setting) with the space-time DDPM++ network; masked conditioning stays
available for prediction. Data: tfds 'ucf101' prepared in array_record format."""

from score_sde.configs.video.default_video_configs import ddpmpp_64, get_default_configs


def get_config():
    config = ddpmpp_64(get_default_configs(), channels=3, frames=16)
    config.data.dataset = 'ucf101'
    config.data.random_flip = True
    config.video.p_unconditional = 0.5
    config.video.p_past = 0.4
    config.video.p_past_future = 0.1
    config.video.predict_mask = 'past:4'
    config.video.interpolate_mask = 'past_future:2,2'
    return config
