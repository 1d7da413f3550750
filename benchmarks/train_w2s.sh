#!/usr/bin/env bash
# Train the two models compared in docs/benchmarks.md on the W2S training split with
# configs/cpu-small.yaml: (a) the conditional DDPM and (b) the regression (CARE-like) baseline,
# same U-Net, same config, one after the other, each with all cores (2 torch threads here) and
# the config's time budget (40 min). Training both at once with one thread each ran at about
# 20 patches/s each (fp32), too slow to finish the preset in the budget.
# Usage: benchmarks/train_w2s.sh WORKDIR [MINUTES] [OBJECTIVES]   (OBJECTIVES default: "diffusion regression")
set -euo pipefail
work=${1:?usage: benchmarks/train_w2s.sh WORKDIR [MINUTES] [OBJECTIVES]}
minutes=${2:-40}
objectives=${3:-diffusion regression}
here=$(cd "$(dirname "$0")/.." && pwd)
data=${BIGRESTORE_DATA:-$here/../shared/data}
mkdir -p "$work"
for q in low high; do
  [ -e "$work/w2s_train_$q.zarr" ] || bigrestore convert "$data/w2s/train_$q.tif" "$work/w2s_train_$q.zarr" --axes tcyx
  [ -e "$work/w2s_val_$q.zarr" ] || bigrestore convert "$data/w2s/val_$q.tif" "$work/w2s_val_$q.zarr" --axes tcyx
done
for objective in $objectives; do
  start=$(date +%s)
  bigrestore train --low "$work/w2s_train_low.zarr" --high "$work/w2s_train_high.zarr" \
    --config "$here/configs/cpu-small.yaml" --objective "$objective" --max-minutes "$minutes" \
    --out "$work/model_$objective" > "$work/train_$objective.log" 2>&1
  echo "$objective: $(( $(date +%s) - start )) s wall"
  tail -c 400 "$work/train_$objective.log"; echo
done
