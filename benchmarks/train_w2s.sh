#!/usr/bin/env bash
# Train the two models compared in docs/benchmarks.md on the W2S training split, side by side:
# (a) the conditional DDPM and (b) the regression (CARE-like) baseline, same U-Net, same config,
# same wall-clock budget, one CPU thread each (run at the same time on a 2-core machine).
# Usage: benchmarks/train_w2s.sh WORKDIR [MINUTES]
set -euo pipefail
work=${1:?usage: benchmarks/train_w2s.sh WORKDIR [MINUTES]}
minutes=${2:-40}
here=$(cd "$(dirname "$0")/.." && pwd)
data=${BIGRESTORE_DATA:-$here/../shared/data}
mkdir -p "$work"
for q in low high; do
  [ -e "$work/w2s_train_$q.zarr" ] || bigrestore convert "$data/w2s/train_$q.tif" "$work/w2s_train_$q.zarr" --axes tcyx
  [ -e "$work/w2s_val_$q.zarr" ] || bigrestore convert "$data/w2s/val_$q.tif" "$work/w2s_val_$q.zarr" --axes tcyx
done
for objective in diffusion regression; do
  OMP_NUM_THREADS=1 bigrestore train --low "$work/w2s_train_low.zarr" --high "$work/w2s_train_high.zarr" \
    --config "$here/configs/cpu-small.yaml" --objective "$objective" --max-minutes "$minutes" \
    --out "$work/model_$objective" > "$work/train_$objective.log" 2>&1 &
done
wait
tail -n 3 "$work"/train_*.log
