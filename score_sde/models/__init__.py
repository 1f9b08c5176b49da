"""Score networks. `get_model(config)` builds the network named by `config.model.name`.

Importing this package registers every network: 'ncsnpp' (NCSN++ / DDPM++), 'ddpm',
'ncsnv2_64' / 'ncsnv2_128' / 'ncsnv2_256', 'small_unet' and 'mlp' (small CPU models), and
the noise-conditional classifiers 'wrn_classifier' and 'mlp_classifier'.
"""

from score_sde.models import classifier, ddpm, ncsnpp, ncsnv2, small  # noqa: F401  (registers)
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
