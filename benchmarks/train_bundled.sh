#!/usr/bin/env bash
# Train the bundled model: configs/cpu-generalist.yaml on the generalist set made by
# benchmarks/make_training_set.py SETDIR (W2S real pairs, W2S re-degraded, cells3d, DSB, CTC).
# Usage: benchmarks/train_bundled.sh SETDIR OUT [extra bigrestore train options, e.g. --resume]
#
# The bundled generalist model (MODEL_CARD.md) came from five legs, each starting from the
# previous leg's best epoch because a session's CPU time ends before 30,000 steps do:
#   benchmarks/train_bundled.sh SET A --epochs 12                       # stopped after epoch 1
#   benchmarks/train_bundled.sh SET B --init-from A --epochs 4 --seed 1  # stopped after epoch 1
#   benchmarks/train_bundled.sh SET C --init-from B --epochs 3 --seed 2  # all 3 epochs
#   benchmarks/train_bundled.sh SET D --init-from C --epochs 3 --seed 3  # all 3; best: epoch 2
#   benchmarks/train_bundled.sh SET E --init-from D --config configs/cpu-generalist-p128.yaml \
#       --seed 4                                                         # 128² patches; best: 4
# Legs A and B ran before the config set target_frame low (they used the targets' own
# percentiles); legs C-E trained in the low frame (docs/benchmarks.md sections 17, 19, 20).
# Leg E's epoch 4 was then continued on an H200 (benchmarks/gpu_train.sh: legs G1, G2; 4,304 steps
# of 32 patches of 128², docs/benchmarks.md section 23); G2 is the bundled model. Leg E itself:
# 17,500 steps of 16 patches of 64², then 5,000 steps
# of 8 patches of 128²; 20 + 20 + 54 + 62 + 68 = 224 wall-clock minutes on both cores (leg D
# shared them with benchmarks; alone, its 5,000 steps take about 35 minutes at 2.5 steps/s;
# leg E ran at 1.4 steps/s).
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
