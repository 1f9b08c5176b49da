"""Inception-v3 for FID in Flax: the 2015-12-05 TensorFlow graph as pytorch-fid reproduces it.

Architecture facts (pytorch-fid's `fid_inception_v3()` on torchvision's Inception3): BasicConv2d is
conv (no bias) + BatchNorm (eps 1e-3) + ReLU; the Mixed_5b-d, 6b-e, 7b average pools exclude the
zero padding from the mean (count_include_pad=False); Mixed_7c pools with a 3x3 max pool instead;
the head gives 2048-d pool3 features and 1008 logits. Input: NHWC in [0, 1], any size, resized to
299x299 bilinearly with align_corners=False (PyTorch's `F.interpolate` convention, no
antialiasing), then mapped to [-1, 1].

Weights are never downloaded: `load_inception_variables(path)` reads either pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (needs torch, only for reading it) or a `.msgpack` written
by `save_inception_variables`. Convert once with

    python -m score_sde.metrics.inception pt_inception-2015-12-05-6726825d.pth inception.msgpack
"""

from __future__ import annotations

import argparse
import functools
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from score_sde import storage

__all__ = [
    "INCEPTION_SIZE",
    "InceptionV3FID",
    "convert_pytorch_fid_state_dict",
    "inception_feature_fn",
    "load_inception_variables",
    "resize_bilinear",
    "save_inception_variables",
]

INCEPTION_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008


def _interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of 1-D linear interpolation, align_corners=False as in PyTorch.

    The source coordinate scale * (dst + 0.5) - 0.5 uses a float32 scale and is rounded to float32
    once (as PyTorch's fused multiply-add does for float32 images), so the weights agree with
    PyTorch's to the last bit here (and to float32 rounding of the coordinate anywhere).
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = (scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0.astype(np.float32)
    mat = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(mat, (rows, i0), np.float32(1.0) - frac)
    np.add.at(mat, (rows, i1), frac)
    return mat


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of NHWC images to `size` = (H, W), matching PyTorch's
    `F.interpolate(mode='bilinear', align_corners=False)` (no antialiasing when downsampling)."""
    wh = _interpolation_matrix(x.shape[1], size[0])
    ww = _interpolation_matrix(x.shape[2], size[1])
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", wh, x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", ww, x, precision=hi)


def _pad(p: int | tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    ph, pw = (p, p) if isinstance(p, int) else p
    return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU."""

    features: int
    kernel: int | tuple[int, int]
    strides: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = (self.kernel, self.kernel) if isinstance(self.kernel, int) else self.kernel
        x = nn.Conv(
            self.features, kernel, strides=self.strides, padding=_pad(self.padding),
            use_bias=False, name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # TensorFlow's average pool ignores the zero padding.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=_pad(1), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(64, 1, name="branch1x1")(x)
        b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(384, 3, strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, 1, name="branch1x1")(x)
        b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, 3, strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, 3, strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (pool='avg', padding excluded) or Mixed_7c (pool='max', the FID graph's quirk)."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(320, 1, name="branch1x1")(x)
        b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ], axis=-1)
        bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ], axis=-1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=_pad(1))
        bp = BasicConv2d(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """FID Inception-v3: images (B, H, W, 3) in [0, 1] -> {'features': (B, 2048) pool3,
    'logits': (B, 1008)}. Variables: {'params', 'batch_stats'} named as torchvision's modules."""

    resize_input: bool = True
    normalize_input: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected NHWC RGB images (B, H, W, 3), got shape {x.shape}")
        x = x.astype(jnp.float32)
        if self.resize_input:
            x = resize_bilinear(x, (INCEPTION_SIZE, INCEPTION_SIZE))
        if self.normalize_input:
            x = 2.0 * x - 1.0
        x = BasicConv2d(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        features = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_LOGITS, name="fc")(features)
        return {"features": features, "logits": logits}


# --- weights -------------------------------------------------------------------------------------


def _variable_shapes() -> dict:
    shapes = jax.eval_shape(
        InceptionV3FID(resize_input=False).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32),
    )
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _check_variables(variables: Mapping, source: str) -> None:
    want = _flatten(_variable_shapes())
    got = {k: tuple(np.shape(v)) for k, v in _flatten(variables).items()}
    missing = sorted("/".join(k) for k in want.keys() - got.keys())
    unexpected = sorted("/".join(k) for k in got.keys() - want.keys())
    common = want.keys() & got.keys()
    wrong = sorted(f"{'/'.join(k)}: {got[k]} != {want[k]}" for k in common if got[k] != want[k])
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} is not an FID Inception-v3: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), wrong shapes {wrong[:5]}"
        )


def convert_pytorch_fid_state_dict(state_dict: Mapping[str, Any]) -> dict:
    """pytorch-fid's FID Inception state_dict (torch tensors or arrays) -> Flax variables.

    Conv weights (O, I, kh, kw) become kernels (kh, kw, I, O); the fc weight (out, in) becomes
    (in, out); BatchNorm weight/bias/running_mean/running_var become scale/bias/mean/var.
    """
    params: dict = {}
    stats: dict = {}

    def put(tree: dict, path: list[str], value: np.ndarray) -> None:
        for name in path[:-1]:
            tree = tree.setdefault(name, {})
        tree[path[-1]] = value

    for key, value in state_dict.items():
        *path, leaf = key.split(".")
        if leaf == "num_batches_tracked" or (path and path[0] == "AuxLogits"):
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arr = np.asarray(value, dtype=np.float32)
        if leaf == "weight" and arr.ndim == 4:
            put(params, [*path, "kernel"], arr.transpose(2, 3, 1, 0))
        elif leaf == "weight" and arr.ndim == 2:
            put(params, [*path, "kernel"], arr.T)
        elif leaf == "weight" and arr.ndim == 1:
            put(params, [*path, "scale"], arr)
        elif leaf == "bias":
            put(params, [*path, "bias"], arr)
        elif leaf == "running_mean":
            put(stats, [*path, "mean"], arr)
        elif leaf == "running_var":
            put(stats, [*path, "var"], arr)
        else:
            raise ValueError(f"unexpected entry {key!r} in the Inception state_dict")
    variables = {"params": params, "batch_stats": stats}
    _check_variables(variables, "the state_dict")
    return variables


def save_inception_variables(path: str | Path, variables: Mapping) -> None:
    """Write converted variables as flax msgpack (readable without torch)."""
    storage.write_bytes(path, serialization.msgpack_serialize(jax.device_get(dict(variables))))


def load_inception_variables(path: str | Path) -> dict:
    """Read FID Inception variables from pytorch-fid's `.pth` (needs torch) or a `.msgpack`."""
    path = storage.path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Inception weights not found at {path}. Nothing is downloaded: supply pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth or a .msgpack converted from it."
        )
    if path.suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs torch (pip install torch); or convert it once elsewhere "
                "with `python -m score_sde.metrics.inception IN.pth OUT.msgpack`"
            ) from e
        state_dict = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu",
                                weights_only=True)
        return convert_pytorch_fid_state_dict(state_dict)
    if path.suffix == ".msgpack":
        variables = serialization.msgpack_restore(path.read_bytes())
        _check_variables(variables, str(path))
        return variables
    raise ValueError(f"unknown Inception weights format {path.suffix!r}; use .pth or .msgpack")


# --- batched, shardable feature function ---------------------------------------------------------


def inception_feature_fn(
    variables: Mapping | str | Path,
    *,
    batch_size: int = 64,
    mesh: Mesh | None = None,
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """`fn(images (N, H, W, C)) -> {'features': (N, 2048), 'logits': (N, 1008)}` (numpy).

    Images are NHWC floats in [0, 1] (uint8 is divided by 255; one channel is repeated to RGB).
    They are processed in jitted chunks of `batch_size` (the last one padded, so each image size
    compiles once). With a `mesh`, each chunk is sharded along its 'data' axis and the weights
    are replicated; `batch_size` must then be a multiple of that axis' size. The mesh holds this
    process's devices: on several hosts each computes the features of its own images.
    """
    if isinstance(variables, str | Path):
        variables = load_inception_variables(variables)
    model = InceptionV3FID()

    def apply(v: Mapping, x: jax.Array) -> dict[str, jax.Array]:
        # Full float32 convolutions on GPU/TPU too (no TF32/bf16 passes): FID is sensitive.
        with jax.default_matmul_precision("highest"):
            return model.apply(v, x)

    if mesh is not None:
        if "data" not in mesh.axis_names:
            raise ValueError(f"mesh needs a 'data' axis, has {mesh.axis_names}")
        if batch_size % mesh.shape["data"]:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of the mesh 'data' axis size "
                f"{mesh.shape['data']}"
            )
        replicated = NamedSharding(mesh, PartitionSpec())
        sharded = NamedSharding(mesh, PartitionSpec("data"))
        variables = jax.device_put(variables, replicated)
        apply = jax.jit(apply, in_shardings=(replicated, sharded), out_shardings=sharded)
    else:
        variables = jax.device_put(variables)
        apply = jax.jit(apply)

    def fn(images: np.ndarray) -> dict[str, np.ndarray]:
        x = _to_rgb_unit(images)
        n = x.shape[0]
        if n == 0:
            raise ValueError("no images given")
        outs: dict[str, list[np.ndarray]] = {"features": [], "logits": []}
        for start in range(0, n, batch_size):
            chunk = x[start : start + batch_size]
            valid = chunk.shape[0]
            if valid < batch_size:
                chunk = np.concatenate(
                    [chunk, np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)]
                )
            out = apply(variables, chunk)
            for k in outs:
                outs[k].append(np.asarray(out[k])[:valid])
        return {k: np.concatenate(v) for k, v in outs.items()}

    return fn


def _to_rgb_unit(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {x.shape}")
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


@functools.lru_cache(maxsize=2)
def cached_inception_feature_fn(path: str, batch_size: int = 64) -> Callable:
    """`inception_feature_fn` for a weights file, loaded once per process."""
    return inception_feature_fn(path, batch_size=batch_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert pytorch-fid's Inception .pth into a Flax .msgpack (needs torch)."
    )
    parser.add_argument("pth", type=Path, help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("out", type=Path, help="output .msgpack")
    args = parser.parse_args(argv)
    save_inception_variables(args.out, load_inception_variables(args.pth))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
