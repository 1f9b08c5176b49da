"""score_sde.lpips against the reference implementation (PyPI `lpips`, Zhang et al.'s package).

`lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=True)` loads the package's shipped v0.1 lin
weights (weights/v0.1/vgg.pth) onto a randomly initialised torchvision VGG16 (nothing is
downloaded). Its state dict is written the two ways users have the files (torchvision's
`features.N.*` VGG16 state dict, and the lpips package's own lin file), converted with
scripts/convert_lpips_weights.py, and the JAX distance is compared with the torch one on the
same random images:

  direct     64 x 64 RGB images in [-1, 1], no resizing: lpips.lpips vs LPIPS(a, b)
  cm_resize  32 x 32 RGB in [-1, 1] through get_lpips_fn (bilinear to 224, as the consistency
             models' code for sides < 256) vs F.interpolate(.., 224, 'bilinear') + LPIPS
  unit_range 16 x 16 grayscale in [0, 1] through get_lpips_fn(centered=False) vs the same
             images repeated to RGB, LPIPS(.., normalize=True) after the same upsampling
  gradient   d/da of sum_i LPIPS(a_i, b_i) (the direct case), JAX vs torch autograd
  cost       CPU seconds (process time) of LPIPS's value and gradient per image pair at 224

Tolerance: max relative difference 1e-4 (float32, 13 convolutions deep); the script exits 1 past
it. Results: benchmarks/results/lpips_reference.json.

    pip install --no-deps lpips      # torch (CPU) and torchvision must be importable
    nice -n 10 python benchmarks/lpips_reference.py

torchvision wheels built for CUDA cannot load their C operators on a CPU-only torch (`import
torchvision` fails); LPIPS needs only torchvision's pure-Python VGG16, so the script then
imports torchvision's model code without the package's operator registration.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import lpips as jlpips

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-4


def _import_lpips():
    """The PyPI lpips package (torchvision's model code without its C operators if needed)."""
    try:
        import torchvision  # noqa: F401
    except (RuntimeError, OSError, ImportError):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("torchvision")
        pkg = types.ModuleType("torchvision")
        pkg.__path__ = [os.path.dirname(spec.origin)]
        sys.modules["torchvision"] = pkg
        import torchvision.models
        pkg.models = torchvision.models
    import lpips
    return lpips


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/lpips_reference.json"))
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    lp = _import_lpips()
    torch.manual_seed(args.seed)
    ref = lp.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    sd = ref.state_dict()
    lin_file = Path(lp.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    with tempfile.TemporaryDirectory() as tmp:
        # torchvision's layout: features.N.{weight,bias} (from the LPIPS slices' modules)
        tv_sd = {f"features.{k.split('.', 2)[2]}": v for k, v in sd.items()
                 if k.startswith("net.slice")}
        torch.save(tv_sd, f"{tmp}/vgg16.pth")
        out = f"{tmp}/lpips_vgg.npz"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_lpips_weights.py"),
                        "--vgg", f"{tmp}/vgg16.pth", "--lin", str(lin_file), "--out", out],
                       check=True)
        params = jlpips.load_weights(out)

    rng = np.random.default_rng(args.seed)
    B = args.batch
    results = {"batch": B, "seed": args.seed, "rtol": RTOL, "lin_weights": str(lin_file)}

    def torch_d(a, b, **kw):
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # noqa
        return ref(t(a), t(b), **kw).reshape(-1).detach().numpy()

    # direct, and its gradient
    a = rng.uniform(-1, 1, (B, 64, 64, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
    want = torch_d(a, b)
    got = np.asarray(jax.jit(lambda a, b: jlpips.lpips(params, a, b))(a, b))
    results["direct"] = {"torch": want.tolist(), "jax": got.tolist(), "max_rel": _rel(got, want)}
    ta = torch.from_numpy(a.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    ref(ta, torch.from_numpy(b.transpose(0, 3, 1, 2).copy())).sum().backward()
    g_want = ta.grad.numpy().transpose(0, 2, 3, 1)
    g_got = np.asarray(jax.grad(lambda a: jlpips.lpips(params, a, jnp.asarray(b)).sum())(a))
    results["gradient"] = {"max_rel": _rel(g_got, g_want)}

    # the consistency models' practice: bilinear to 224 below 256
    a = rng.uniform(-1, 1, (B, 32, 32, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
    up = lambda x: F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),  # noqa
                                 size=224, mode="bilinear").numpy().transpose(0, 2, 3, 1)
    want = torch_d(up(a), up(b))
    got = np.asarray(jax.jit(jlpips.get_lpips_fn(params))(a, b))
    results["cm_resize"] = {"torch": want.tolist(), "jax": got.tolist(),
                            "max_rel": _rel(got, want)}

    # [0, 1] grayscale data (config.data.centered = False)
    a = rng.uniform(0, 1, (B, 16, 16, 1)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1).astype(np.float32)
    rgb = lambda x: np.repeat(up(x), 3, axis=-1)  # noqa: E731
    want = torch_d(rgb(a), rgb(b), normalize=True)
    got = np.asarray(jax.jit(jlpips.get_lpips_fn(params, centered=False))(a, b))
    results["unit_range"] = {"torch": want.tolist(), "jax": got.tolist(),
                             "max_rel": _rel(got, want)}

    # cost: process time of the jitted value and gradient at the CM resolution (224 x 224)
    fn = jlpips.get_lpips_fn(params)
    vg = jax.jit(jax.value_and_grad(lambda a, b: fn(a, b).sum()))
    a = rng.uniform(-1, 1, (B, 32, 32, 3)).astype(np.float32)
    jax.block_until_ready(vg(a, a[::-1]))
    times = []
    for _ in range(3):
        t0 = time.process_time()
        jax.block_until_ready(vg(a, a[::-1]))
        times.append(time.process_time() - t0)
    results["cpu_s_per_pair_value_and_grad_224"] = float(np.median(times)) / B

    worst = max(results[k]["max_rel"] for k in ("direct", "gradient", "cm_resize", "unit_range"))
    results["pass"] = bool(worst <= RTOL)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    for k in ("direct", "gradient", "cm_resize", "unit_range"):
        print(f"{k:>10}: max relative difference {results[k]['max_rel']:.2e}")
    print(f"cost: {results['cpu_s_per_pair_value_and_grad_224']:.2f} CPU s per image pair "
          "(value and gradient, 224 x 224)")
    print(f"{'PASS' if results['pass'] else 'FAIL'} (tolerance {RTOL:g}); wrote {args.out}")
    return 0 if results["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
