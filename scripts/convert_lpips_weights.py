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
import sys

import numpy as np

from score_sde import lpips


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
        params = lpips.from_torch_state_dicts(read_state_dict(args.vgg),
                                              read_state_dict(args.lin))
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    lpips.save_weights(args.out, params)
    lpips.load_weights(args.out)  # the file reads back
    print(f"wrote {args.out}: VGG16 (13 convolutions) + LPIPS v0.1 lin weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
