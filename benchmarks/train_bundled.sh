#!/usr/bin/env bash
# Train the bundled model: configs/cpu-generalist.yaml on the generalist set made by
# benchmarks/make_training_set.py SETDIR (W2S real pairs, W2S re-degraded, cells3d, DSB, CTC).
# Usage: benchmarks/train_bundled.sh SETDIR OUT [extra bigrestore train options, e.g. --resume]
set -euo pipefail
set_dir=${1:?usage: benchmarks/train_bundled.sh SETDIR OUT}
out=${2:?usage: benchmarks/train_bundled.sh SETDIR OUT}
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
pairs=()
for entry in w2s_train:0.35 w2s_synth:0.15 cells3d_train:0.2 dsb_train:0.1 ctc_train:0.2; do
  name=${entry%%:*}; weight=${entry##*:}
  pairs+=(--low "$set_dir/${name}_low.zarr" --high "$set_dir/${name}_high.zarr" --weight "$weight")
done
exec bigrestore train "${pairs[@]}" --config "$here/configs/cpu-generalist.yaml" --out "$out" "$@"
