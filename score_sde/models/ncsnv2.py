"""NCSNv2 (Song & Ermon 2020): a RefineNet over a dilated ResNet, for the ve/ncsnv2 configs.

Three sizes, as published: 'ncsnv2_64' (images < 96px), 'ncsnv2_128' and 'ncsnv2_256'. Each
backbone stage is a (possibly downsampling or dilated) residual block followed by a plain one; the
RefineNet then fuses the stages from the deepest up. The network is noise-conditional only via
scale_by_sigma (output / sigma of the label's noise level), and takes SMLD noise indices.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde.models.layers import get_act, get_dtype, get_sigmas
from score_sde.models.ncsn_layers import (
    RefineBlock,
    ResidualBlock,
    get_normalization,
    ncsn_conv3x3,
)
from score_sde.models.registry import register_model

Array = jax.Array

# Per backbone stage (shallow to deep): channel multiplier and dilation (stage 0 never
# downsamples; a dilated 'down' block keeps the resolution). Refine features: deep to shallow.
ARCHITECTURES = {
    "ncsnv2_64": dict(mults=(1, 2, 2, 2), dilations=(1, 1, 2, 4), refine=(2, 2, 2, 1)),
    "ncsnv2_128": dict(mults=(1, 2, 2, 4, 4), dilations=(1, 1, 1, 2, 4),
                       refine=(4, 2, 2, 1, 1)),
    "ncsnv2_256": dict(mults=(1, 2, 2, 2, 4, 4), dilations=(1, 1, 1, 1, 2, 4),
                       refine=(4, 2, 2, 2, 1, 1)),
}


class NCSNv2(nn.Module):
    """NCSNv2 score network: (x NHWC, SMLD noise index (B,)) -> output shaped like x."""

    config: ml_collections.ConfigDict
    arch: str = "ncsnv2_64"

    @staticmethod
    def check_config(config) -> None:
        get_normalization(config)
        get_act(config)
        if get_dtype(config) != jnp.float32:
            raise ValueError(f"config.model.dtype={config.model.dtype!r} is not supported by "
                             f"config.model.name={config.model.name!r}; use 'float32'")

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False,
                 y: Array | None = None) -> Array:
        config = self.config
        m = config.model
        if y is not None or m.get("num_classes", 0):
            raise ValueError(f"config.model.name={m.name!r} has no class conditioning; "
                             "set config.model.num_classes = 0")
        spec = ARCHITECTURES[self.arch]
        nf, act, norm = m.nf, get_act(config), get_normalization(config)

        h = x if config.data.centered else 2 * x - 1.0
        h = ncsn_conv3x3(h, nf, stride=1, bias=True)
        layers = []
        for stage, (mult, dilation) in enumerate(zip(spec["mults"], spec["dilations"],
                                                     strict=True)):
            resample = "down" if stage > 0 else None
            h = ResidualBlock(mult * nf, norm, resample=resample, act=act, dilation=dilation)(h)
            h = ResidualBlock(mult * nf, norm, act=act, dilation=dilation)(h)
            layers.append(h)

        ref = None
        deepest_first = list(reversed(layers))
        for i, (layer, mult) in enumerate(zip(deepest_first, spec["refine"], strict=True)):
            inputs = [layer] if ref is None else [layer, ref]
            ref = RefineBlock(layer.shape[1:3], mult * nf, act=act,
                              interpolation=m.interpolation, start=i == 0,
                              end=i == len(layers) - 1)(inputs)

        h = ncsn_conv3x3(act(norm()(ref)), x.shape[-1])
        if m.scale_by_sigma:
            sigmas = get_sigmas(config)[labels.astype(jnp.int32)]
            h = h / sigmas.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return h


def _register(name: str) -> None:
    @register_model(name)
    class _Sized(NCSNv2):
        arch: str = name

    _Sized.__name__ = _Sized.__qualname__ = f"NCSNv2_{name.split('_')[1]}"


for _name in ARCHITECTURES:
    _register(_name)
