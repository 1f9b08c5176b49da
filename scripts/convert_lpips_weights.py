"""Convert the two public PyTorch files of LPIPS-VGG into the one .npz that score_sde reads
(score_sde/lpips.py describes the layout; the framework itself never needs torch):

  --vgg   torchvision's VGG16 ImageNet weights (vgg16-397923af.pth: keys features.N.*, or a
          state dict of `vgg16().features` with keys N.*, or of an `lpips.LPIPS` model with
          keys net.sliceK.N.*)
  --lin   the lpips package's linear layers, lpips/weights/v0.1/vgg.pth (keys
          linK.model.1.weight; may be the same file as --vgg when that is an LPIPS state dict)

    python scripts/convert_lpips_weights.py --vgg vgg16-397923af.pth \
        --lin lpips/weights/v0.1/vgg.pth --out lpips_vgg.npz

Needs torch (CPU is enough) only to read the .pth files.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping

import numpy as np

from score_sde import lpips

# torchvision's vgg16().features indices of the 13 convolutions (ReLUs and pools between)
VGG_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _features_key(key: str) -> str | None:
    """'features.N.weight' / 'N.weight' / 'net.sliceK.N.weight' -> 'N.weight' (else None)."""
    m = re.fullmatch(r"(?:features\.|net\.slice\d\.)?(\d+)\.(weight|bias)", key)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def convert(vgg: Mapping[str, np.ndarray], lin: Mapping[str, np.ndarray]) -> lpips.Params:
    """The layout's arrays from torch state dicts given as numpy arrays: conv kernels
    (O, I, 3, 3) -> HWIO (3, 3, I, O); lin weights (1, C, 1, 1) -> (C,). One line naming the
    key that is missing."""
    feats = {k2: v for k, v in vgg.items() if (k2 := _features_key(k)) is not None}
    out = {}
    for (name, _, _), idx in zip(lpips.conv_names(), VGG_CONV_INDEX, strict=True):
        for part, src in (("kernel", f"{idx}.weight"), ("bias", f"{idx}.bias")):
            if src not in feats:
                raise KeyError(f"--vgg: no key features.{src} (VGG16 {name}.{part}); is it "
                               "torchvision's vgg16 state dict?")
            w = np.asarray(feats[src], np.float32)
            out[f"{name}/{part}"] = w.transpose(2, 3, 1, 0) if part == "kernel" else w
    for k, tap in enumerate(lpips.TAPS):
        src = next((s for s in (f"lin{k}.model.1.weight", f"lins.{k}.model.1.weight",
                                f"lin{k}.weight") if s in lin), None)
        if src is None:
            raise KeyError(f"--lin: no key lin{k}.model.1.weight (LPIPS lin of {tap}); is it "
                           "lpips/weights/v0.1/vgg.pth?")
        out[f"lin/{tap}"] = np.asarray(lin[src], np.float32).reshape(-1)
    return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A .pth state dict (or a dict holding one under 'state_dict') as numpy arrays."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return {k: v.detach().cpu().numpy() for k, v in sd.items() if hasattr(v, "detach")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vgg", required=True, help="torchvision vgg16 state dict (.pth)")
    parser.add_argument("--lin", required=True, help="lpips weights/v0.1/vgg.pth")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    try:
        params = convert(read_state_dict(args.vgg), read_state_dict(args.lin))
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    lpips.save_weights(args.out, params)
    lpips.load_weights(args.out)  # the file reads back
    print(f"wrote {args.out}: VGG16 (13 convolutions) + LPIPS v0.1 lin weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
