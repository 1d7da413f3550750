#!/usr/bin/env bash
# Train two models side by side on a lent GPU (issue 18), from sources carried there:
#   bundled  continues the bundled model (configs/cpu-generalist-p128.yaml: 1.41 M parameters,
#            128² patches), so the result fits the repository as the bundled one does;
#   wide     the same recipe 40 channels wide (configs/gpu-wide-p128.yaml: 3.91 M parameters,
#            about 2.8x the cost per pixel), from scratch: is the margin on real W2S data held
#            back by the network's width?
# One small network leaves an H200 mostly idle (docs/benchmarks.md section 21), so the two legs
# share it, and the loader processes take half the cores each. Both are scored, calibrated and
# bundled here with the commands of docs/benchmarks.md sections 20 and 22.
#
#   here, once:  benchmarks/gpu_wheels.sh && python benchmarks/gpu_data.py pack-train --fields 24
#   there:       run(command="bash benchmarks/gpu_train.sh", carry=[".whl", "gpu_train"], timeout_s=600)
#   here, test:  benchmarks/gpu_train.sh          (no GPU: a few CPU steps; OUT defaults to ./gpu_train_out)
#
# Carried: the wheels (15 MiB), gpu_train/ (the clean stacks and W2S training fields 1-24,
# 36 MiB) and the checkout (about 9 MiB), within the device tool's 64 MiB. Steps, under one
# deadline of GPU_TRAIN_SECONDS (default 540):
#   install   the carried wheels into /tmp/bigrestore-site (skipped when importable)
#   set       benchmarks/make_training_set.py --data gpu_train --w2s-fields 24 (W2S pairs,
#             W2S highs degraded again, cells3d / DSB / CTC degraded; the CPU set's recipe, but
#             24 W2S fields of its 54, all that fits the carry limit)
#   probe     each leg: `bigrestore train` for 2 x 75 steps, both at once: the second epoch's
#             steps/s as they share (the first holds the start-up), and the start-up itself
#   train     each leg: 4 epochs whose steps fill the time left, less one start-up, at 85 % of
#             its probe's rate (GPU_TRAIN_STEPS: steps per epoch set by hand, no probe)
#             (the learning rate anneals over the planned steps, so a leg must end by itself,
#             not by --max-minutes)
# It brings back in $OUT: log.txt and, per leg, NAME/model.safetensors, NAME/model.json and
# NAME/metrics.csv (7 files; the wide model's 15.6 MB stays under the 16 MiB per file).
# Settings: GPU_TRAIN_BATCH (32), GPU_TRAIN_WORKERS (loader processes of both legs: cores - 2),
# GPU_TRAIN_FIELDS (24), GPU_TRAIN_SEED (6), GPU_TRAIN_CONFIG, GPU_TRAIN_WIDE_CONFIG,
# GPU_TRAIN_LEGS ("bundled wide"; one name trains that leg alone, on all the loader processes),
# GPU_TRAIN_INIT (the model the bundled leg starts from: bundled), GPU_TRAIN_STEPS (steps per
# epoch set by hand: no probe), GPU_TRAIN_PHOTONS (the synthetic images' photon range, e.g.
# "3 1000"; default: make_training_set.py's, the bundled model's 3-100; docs/benchmarks.md
# section 25: the bundled model loses to a Gaussian from about 100 photons up).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
OUT=${OUT:-$repo/gpu_train_out}
WORK=${GPU_WORK:-/tmp/bigrestore-gpu-train}
DEADLINE=${GPU_TRAIN_SECONDS:-540}
FIELDS=${GPU_TRAIN_FIELDS:-24}
SEED=${GPU_TRAIN_SEED:-6}
CONFIG=${GPU_TRAIN_CONFIG:-configs/cpu-generalist-p128.yaml}
WIDE_CONFIG=${GPU_TRAIN_WIDE_CONFIG:-configs/gpu-wide-p128.yaml}
LEGS=${GPU_TRAIN_LEGS:-bundled wide}
INIT=${GPU_TRAIN_INIT:-bundled}
STEPS=${GPU_TRAIN_STEPS:-}
PHOTONS=${GPU_TRAIN_PHOTONS:-}
. benchmarks/gpu_env.sh
mkdir -p "$OUT"
rm -rf "${WORK:?}"
mkdir -p "$WORK"
LOG=$OUT/log.txt
: >"$LOG"
SECONDS=0
say() { echo "[$SECONDS s] $*" | tee -a "$LOG"; }
read -r -a names <<<"$LEGS"
if [ -n "$PHOTONS" ]; then
  read -r -a range <<<"$PHOTONS"
  if [ "${#range[@]}" -ne 2 ]; then
    say "GPU_TRAIN_PHOTONS='$PHOTONS': expected two numbers, LOW HIGH (e.g. \"3 1000\")"
    exit 64
  fi
fi
for name in "${names[@]}"; do
  case $name in
    bundled | wide) ;;
    *) say "unknown leg '$name' in GPU_TRAIN_LEGS (expected: bundled, wide)"; exit 64 ;;
  esac
done

if wheels_missing; then
  say "install: the carried wheels"
  "${WHEEL_INSTALL[@]}" >>"$LOG" 2>&1 || { say "install failed"; exit 1; }
fi
if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  GPU=1 device=cuda batch=${GPU_TRAIN_BATCH:-32} probe_steps=150
  workers=${GPU_TRAIN_WORKERS:-$(($(nproc) - 2))}
else
  GPU=0 device=cpu batch=2 probe_steps=4 workers=${GPU_TRAIN_WORKERS:-1}
  say "no GPU visible to torch: a smoke test of a few CPU steps"
fi
[ "$workers" -lt 1 ] && workers=1

say "set: make_training_set.py from gpu_train/ (W2S fields 1-$FIELDS, photons ${PHOTONS:-default})"
[ -e gpu_train/w2s/train_low.tif ] || { say "no gpu_train/: run benchmarks/gpu_data.py pack-train here and carry gpu_train"; exit 1; }
timeout $((DEADLINE / 3)) "$PYTHON" benchmarks/make_training_set.py "$WORK/set" --data gpu_train \
  --w2s-fields "$FIELDS" ${PHOTONS:+--photons "${range[@]}"} >>"$LOG" 2>&1 || { say "set failed"; exit 1; }
pairs=()
for entry in w2s_train:0.35 w2s_synth:0.15 cells3d_train:0.2 dsb_train:0.1 ctc_train:0.2; do
  name=${entry%%:*}
  pairs+=(--low "$WORK/set/${name}_low.zarr" --high "$WORK/set/${name}_high.zarr" --weight "${entry##*:}")
done

config() { # config SOURCE OUT.yaml EPOCHS STEPS_PER_EPOCH VAL_PATCHES VAL_SAMPLES WORKERS
  "$PYTHON" - "$@" "$batch" <<'EOF'
import sys, yaml
source, out, epochs, steps, patches, samples, workers, batch = sys.argv[1:]
config = yaml.safe_load(open(source))
config.update(epochs=int(epochs), steps_per_epoch=int(steps), val_patches=int(patches),
              val_samples=int(samples), batch=int(batch), workers=int(workers))
yaml.safe_dump(config, open(out, "w"))
EOF
}
train() { # train OUT CONFIG MINUTES [--init-from MODEL]
  local out=$1 cfg=$2 minutes=$3
  shift 3
  timeout -k 10 $(($(printf '%.0f' "$minutes") * 60 + 60)) "$PYTHON" -m bigrestore.cli train \
    "${pairs[@]}" --config "$cfg" "$@" --seed "$SEED" --device "$device" \
    --max-minutes "$minutes" --out "$out"
}
leg() { # leg NAME CONFIG WORKERS [--init-from MODEL]: probe, size the steps, train, bring back
  local name=$1 source=$2 workers=$3
  shift 3
  local log=$WORK/$name.log
  local left steps val samples minutes
  if [ -n "$STEPS" ]; then # steps set by hand (GPU_TRAIN_STEPS): no probe
    steps=$STEPS val=32 samples=4 left=$((DEADLINE - SECONDS - 45))
  else
    say "$name: probe, $probe_steps steps at batch $batch, $workers loader workers, on $device"
    config "$source" "$WORK/$name-probe.yaml" 2 $((probe_steps / 2)) 4 1 "$workers"
    local start=$SECONDS
    if ! train "$WORK/$name-probe" "$WORK/$name-probe.yaml" 2 "$@" >>"$log" 2>&1; then
      say "$name: probe failed"
      tail -5 "$log" | tee -a "$LOG"
      return 1
    fi
    # The rate of the second epoch alone: the first holds the start-up (about 25 s on the H200)
    # and the loaders' ramp, which made a one-epoch probe read a third of the real rate.
    local rate startup
    read -r rate startup < <("$PYTHON" -c "
import csv; first, second = list(csv.DictReader(open('$WORK/$name-probe/metrics.csv')))[-2:]
rate = (int(second['step']) - int(first['step'])) / (float(second['wall_s']) - float(first['wall_s']))
print(round(rate, 3), max(0, int(float(first['wall_s']) - int(first['step']) / rate)))")
    say "$name: probe $rate steps/s after a start-up of $startup s ($((SECONDS - start)) s in all)"
    left=$((DEADLINE - SECONDS - 45 - startup))
    [ "$left" -lt 30 ] && left=30
    if [ "$GPU" = 1 ]; then
      steps=$("$PYTHON" -c "print(max(4, int($rate * $left * 0.85) // 4))") val=32 samples=4
    else
      steps=2 val=4 samples=1
    fi
  fi
  minutes=$("$PYTHON" -c "print(round(max(0.5, ($DEADLINE - $SECONDS - 45) / 60), 2))")
  say "$name: train 4 epochs x $steps steps (batch $batch), at most $minutes min"
  config "$source" "$WORK/$name.yaml" 4 "$steps" "$val" "$samples" "$workers"
  train "$WORK/$name" "$WORK/$name.yaml" "$minutes" "$@" >>"$log" 2>&1
  say "$name: train exit $?"
  mkdir -p "$OUT/$name"
  for f in model.safetensors model.json metrics.csv; do
    cp "$WORK/$name/$f" "$OUT/$name/" 2>/dev/null || say "$name: no $f"
  done
  { echo "== $name: log tail"; tail -20 "$log"; } >>"$LOG" 2>/dev/null
}

# The two legs share the machine: the GPU, which one small network leaves mostly idle, and the
# loader processes, half the cores each. Both probe and train at the same time, so each
# measured rate is the rate it trains at.
each=$((workers / ${#names[@]}))
[ "$each" -lt 1 ] && each=1
for name in "${names[@]}"; do
  case $name in
    bundled) leg bundled "$CONFIG" "$each" --init-from "$INIT" & ;;
    wide) leg wide "$WIDE_CONFIG" "$each" & ;;
  esac
done
wait
for name in bundled wide; do
  if [ -e "$OUT/$name/metrics.csv" ]; then
    echo "== $name"
    cat "$OUT/$name/metrics.csv"
  fi
done
say "done"
