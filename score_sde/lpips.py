"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), VGG16 variant, in JAX: the perceptual distance of consistency distillation (Song et
al. 2023), computed from a weights file the user supplies (nothing is downloaded; no torch).

d(a, b) = sum_l mean_hw( sum_c w_lc (n_l(a) - n_l(b))_c^2 ), where n_l is the VGG16 feature map
at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 divided, at every pixel, by its channel norm
(+ 1e-10), and w_l >= 0 are LPIPS v0.1's learned 1x1 "lin" weights. Images are NHWC in [-1, 1];
the input scaling layer (x - SHIFT) / SCALE first maps them to VGG's ImageNet normalisation
(it equals ((x + 1) / 2 - mean) / std with the ImageNet mean and std, so LPIPS on [-1, 1] and
the consistency models' piq LPIPS on (x + 1) / 2 see the same network input). Pooling is VGG's
2 x 2 max pooling, as in LPIPS and in the JAX consistency-models code (CIFAR-10); the PyTorch
consistency-models code uses piq's LPIPS with replace_pooling=True (average pooling) instead.

Published practice for small images (openai/consistency_models): images whose side is below
256 are upsampled to 224 x 224 bilinearly (half-pixel centres, as torch's align_corners=False)
before LPIPS; `resize` does the same. Grayscale images are repeated to three channels.

The weights file (`.npz`, written by `save_weights` and scripts/convert_lpips_weights.py):
  layout                 the string LAYOUT
  conv{b}_{i}/kernel     (3, 3, C_in, C_out) float32, HWIO; VGG16's 13 convolutions,
  conv{b}_{i}/bias       (C_out,)           block b = 1..5, conv i within the block
  lin/{tap}              (C,) float32 >= 0  LPIPS's 1x1 weights of tap relu1_2 ... relu5_3
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = dict[str, np.ndarray]

LAYOUT = "score_sde-lpips-vgg16-v1"
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS's ScalingLayer (v0.1)
SCALE = (0.458, 0.448, 0.450)
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # VGG16
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")  # the last ReLU of each block
RESIZE, RESIZE_BELOW = 224, 256  # CM: side < 256 -> bilinear to 224
EPS = 1e-10  # LPIPS's normalize_tensor


def conv_names() -> list[tuple[str, int, int]]:
    """(name, C_in, C_out) of VGG16's 13 convolutions in order: conv1_1 ... conv5_3."""
    out, c_in = [], 3
    for b, widths in enumerate(BLOCKS, 1):
        for i, c_out in enumerate(widths, 1):
            out.append((f"conv{b}_{i}", c_in, c_out))
            c_in = c_out
    return out


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every array key of the weights file and its shape."""
    shapes = {}
    for name, c_in, c_out in conv_names():
        shapes[f"{name}/kernel"] = (3, 3, c_in, c_out)
        shapes[f"{name}/bias"] = (c_out,)
    for tap, widths in zip(TAPS, BLOCKS, strict=True):
        shapes[f"lin/{tap}"] = (widths[-1],)
    return shapes


def random_params(seed: int = 0) -> Params:
    """Weights of the right shapes (He-normal kernels, small biases, |normal| lin weights),
    for tests and for checking a pipeline before the real file is at hand."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in expected_shapes().items():
        if key.endswith("/kernel"):
            w = rng.normal(0.0, np.sqrt(2.0 / (9 * shape[2])), shape)
        elif key.endswith("/bias"):
            w = rng.normal(0.0, 0.01, shape)
        else:
            w = np.abs(rng.normal(0.0, 0.1, shape))
        out[key] = w.astype(np.float32)
    return out


def save_weights(path: str, params: Params) -> None:
    """Write `params` (keys of expected_shapes()) as the weights file at `path` (checked)."""
    from score_sde import storage

    _check(params, f"LPIPS weights for {path}")
    buf = io.BytesIO()
    np.savez(buf, layout=np.asarray(LAYOUT), **{k: np.asarray(params[k], np.float32)
                                              for k in expected_shapes()})
    storage.write_bytes(path, buf.getvalue())


def load_weights(path: str, field: str = "LPIPS weights file") -> Params:
    """The weights file at `path` (local or gs://), checked; one clear line naming `field`,
    the path and the offending key when it is missing, not an .npz, or has a wrong key."""
    from score_sde import storage

    where = f"{field}={str(path)!r}"
    p = storage.path(path)
    if not p.exists():
        raise FileNotFoundError(f"{where} does not exist; make it with "
                                "scripts/convert_lpips_weights.py (README, Consistency models)")
    try:
        with np.load(io.BytesIO(p.read_bytes()), allow_pickle=False) as f:
            params = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ValueError(f"{where} is not an .npz weights file ({type(e).__name__}); make it "
                         "with scripts/convert_lpips_weights.py") from None
    _check(params, where)
    return {k: np.asarray(params[k], np.float32) for k in expected_shapes()}


def _check(params: Params, where: str) -> None:
    layout = params.get("layout")
    if layout is not None and str(np.asarray(layout)) != LAYOUT:
        raise ValueError(f"{where}: key 'layout' is {str(np.asarray(layout))!r}, not {LAYOUT!r}")
    fix = "; convert the weights with scripts/convert_lpips_weights.py"
    for key, shape in expected_shapes().items():
        if key not in params:
            raise ValueError(f"{where}: missing key {key!r} (shape {shape}){fix}")
        got = tuple(np.shape(params[key]))
        if got != shape:
            raise ValueError(f"{where}: key {key!r} has shape {got}, expected {shape}{fix}")
        if not np.all(np.isfinite(params[key])):
            raise ValueError(f"{where}: key {key!r} has non-finite values{fix}")
        if key.startswith("lin/") and np.any(np.asarray(params[key]) < 0):
            raise ValueError(f"{where}: key {key!r} has negative weights (LPIPS's lin weights "
                             "are non-negative){fix}")


# ------------------------------------------------------------------------------ the network


def vgg_features(params: Params, x: Array) -> list[Array]:
    """VGG16's feature maps at TAPS for network inputs x (NHWC, already scaled): 3x3 'same'
    convolutions + ReLU, 2x2 max pooling between blocks."""
    taps, h = [], x
    names = iter(conv_names())
    for b, widths in enumerate(BLOCKS):
        if b:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                      "VALID")
        for _ in widths:
            name = next(names)[0]
            h = jax.lax.conv_general_dilated(h, jnp.asarray(params[f"{name}/kernel"]), (1, 1),
                                             "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(h + jnp.asarray(params[f"{name}/bias"]))
        taps.append(h)
    return taps


def unit_normalize(f: Array) -> Array:
    """f / (|f|_channels + EPS) per pixel; the norm's gradient is 0 (not NaN) where f = 0."""
    s = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    norm = jnp.where(s > 0, jnp.sqrt(jnp.where(s > 0, s, 1.0)), 0.0)
    return f / (norm + EPS)


def lpips(params: Params, a: Array, b: Array) -> Array:
    """LPIPS between images a and b (NHWC, 3 channels, in [-1, 1], no resizing): shape (B,)."""
    shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
    feats = vgg_features(params, (jnp.concatenate([a, b]) - shift) / scale)  # one pass, 2B
    total = jnp.zeros(a.shape[0], jnp.float32)
    for tap, f in zip(TAPS, feats, strict=True):
        n = unit_normalize(f)
        diff = jnp.square(n[: a.shape[0]] - n[a.shape[0]:])
        total = total + jnp.mean(diff @ jnp.asarray(params[f"lin/{tap}"]), axis=(1, 2))
    return total


def prepare(x: Array, centered: bool = True, resize: int | None = RESIZE) -> Array:
    """Model-range images -> LPIPS's input: [0, 1] data (centered=False) to 2 x - 1,
    grayscale repeated to 3 channels, and sides below RESIZE_BELOW upsampled bilinearly to
    resize x resize (None: no resizing)."""
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"config.consistency.distance='lpips' needs images (B, H, W, C) with "
                         f"C = 1 or 3; got data of shape {tuple(x.shape)}: use 'l2' or "
                         "'pseudo_huber'")
    if not centered:
        x = 2.0 * x - 1.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if resize is not None and min(x.shape[1:3]) < RESIZE_BELOW:
        x = jax.image.resize(x, (x.shape[0], resize, resize, 3), "bilinear", antialias=False)
    return x


def get_lpips_fn(params: Params, centered: bool = True, resize: int | None = RESIZE
                 ) -> Callable[[Array, Array], Array]:
    """`distance(a, b) -> (B,)`: LPIPS between model-range images (see `prepare`)."""
    params = jax.tree.map(jnp.asarray, params)

    def distance(a: Array, b: Array) -> Array:
        return lpips(params, prepare(a, centered, resize), prepare(b, centered, resize))

    return distance


# ------------------------------------------------------------ from the PyTorch files

# torchvision's vgg16().features indices of the 13 convolutions (ReLUs and pools between)
VGG_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _features_key(key: str) -> str | None:
    """'features.N.weight' / 'N.weight' / 'net.sliceK.N.weight' -> 'N.weight' (else None)."""
    m = re.fullmatch(r"(?:features\.|net\.slice\d\.)?(\d+)\.(weight|bias)", key)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def from_torch_state_dicts(vgg: Mapping[str, np.ndarray], lin: Mapping[str, np.ndarray]) -> Params:
    """The layout's arrays from the PyTorch state dicts (scripts/convert_lpips_weights.py reads
    the .pth files) given as numpy arrays: conv kernels
    (O, I, 3, 3) -> HWIO (3, 3, I, O); lin weights (1, C, 1, 1) -> (C,). One line naming the
    key that is missing."""
    feats = {k2: v for k, v in vgg.items() if (k2 := _features_key(k)) is not None}
    out = {}
    for (name, _, _), idx in zip(conv_names(), VGG_CONV_INDEX, strict=True):
        for part, src in (("kernel", f"{idx}.weight"), ("bias", f"{idx}.bias")):
            if src not in feats:
                raise KeyError(f"--vgg: no key features.{src} (VGG16 {name}.{part}); is it "
                               "torchvision's vgg16 state dict?")
            w = np.asarray(feats[src], np.float32)
            out[f"{name}/{part}"] = w.transpose(2, 3, 1, 0) if part == "kernel" else w
    for k, tap in enumerate(TAPS):
        src = next((s for s in (f"lin{k}.model.1.weight", f"lins.{k}.model.1.weight",
                                f"lin{k}.weight") if s in lin), None)
        if src is None:
            raise KeyError(f"--lin: no key lin{k}.model.1.weight (LPIPS lin of {tap}); is it "
                           "lpips/weights/v0.1/vgg.pth?")
        out[f"lin/{tap}"] = np.asarray(lin[src], np.float32).reshape(-1)
    return out
