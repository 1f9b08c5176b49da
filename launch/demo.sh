#!/usr/bin/env bash
# The embedded demo on a CPU: train the small U-Net on scikit-learn's digits (8x8), then draw a
# grid of samples. Writes $WORKDIR/loss.png and $WORKDIR/eval/samples_step_<N>/grid.png.
# Extra arguments go to both commands, e.g. `bash launch/demo.sh --config.training.n_iters=200`.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${WORKDIR:-runs/digits}
python -m score_sde.main --config configs/digits.py --workdir "$WORKDIR" --mode train "$@"
python -m score_sde.main --config configs/digits.py --workdir "$WORKDIR" --mode sample "$@"
echo "Loss curve: $WORKDIR/loss.png"
echo "Samples:    $(ls -t "$WORKDIR"/eval/samples_step_*/grid.png | head -n 1)"
