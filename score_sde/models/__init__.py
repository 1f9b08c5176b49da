"""Score networks. `get_model(config)` builds the network named by `config.model.name`.

Importing this package registers every network: 'ncsnpp' (NCSN++ / DDPM++), 'ddpm',
'ncsnv2_64' / 'ncsnv2_128' / 'ncsnv2_256', 'small_unet' and 'mlp' (small CPU models), the
noise-conditional classifiers 'wrn_classifier' and 'mlp_classifier', and the clip networks
'spacetime' and 'video_concat' (models/video.py).
"""

from score_sde.models import (  # noqa: F401  (registers)
    classifier,
    ddpm,
    ncsnpp,
    ncsnv2,
    small,
    video,
)
from score_sde.models.registry import (
    count_params,
    get_model,
    init_model,
    input_shape,
    list_models,
    register_model,
)

__all__ = [
    "count_params",
    "get_model",
    "init_model",
    "input_shape",
    "list_models",
    "register_model",
]
