#!/usr/bin/env bash
# The GPU check of issue 17: install bigrestore on a bare GPU machine from carried wheels, run the
# GPU tests, and measure the GPU path end to end. Writes $OUT/summary.json and $OUT/summary.md
# (plus steps.log, throughput.json, smi.csv, train_metrics.csv, train_steps.csv: 7 files, within
# the device tool's 8). docs/gpu.md says how to run it with the device tool; in short:
#
#   here, once:  benchmarks/gpu_wheels.sh && python benchmarks/gpu_data.py pack
#   there:       run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "gpu_data"], timeout_s=600)
#   here, test:  benchmarks/gpu_check.sh          (no GPU: skips the GPU steps; OUT defaults to ./gpu_out)
#
# Steps, each under its own timeout, the summary rewritten after every step. The nominal limits
# (right) add up to 575 s, but install and env took 2 and 13 s on the first GPU run
# (2026-11-30, an H200), so about 535 s in practice; a deadline of GPU_CHECK_SECONDS=540 s
# shrinks or skips the last steps when earlier ones ran long, and time left over by quick
# steps goes to the 4096² run (up to 200 s), the throughput benchmark (up to 90 s) and the
# training (up to --max-minutes 3). On that machine every `bigrestore run` spent about 15 s
# before its first tile (Dask, CUDA and the model starting), and the tests' four runs took 60
# s, which is what the limits of tests, compare and workers allow for:
#   install     the carried wheels into /tmp/bigrestore-site (skipped when importable)    25 s
#   env         GPU, driver, torch/CUDA, the auto network batch of the bundled model     15 s
#   tests       python -m pytest -q tests/test_gpu.py                                     90 s
#   data        gpu_data/w2s_val.npz -> TIFFs -> OME-Zarr (bigrestore convert)             25 s
#   compare     crop 256² (one 256² tile), 2 samples, batch 2 (one call per step, no
#               padding): --device cpu --precision fp32 vs --gpus 1 at fp32 and at the
#               default precision (max |diff|, PSNR of the means)                  50+35+35 s
#   workers     1024² mosaic, default settings: --gpus 1 (one worker) and --workers 2
#               (LocalCluster workers on a 1-GPU machine all pick cuda:0, so no code change
#               is needed for N workers on one GPU); bytes compared                  45+45 s
#   big         4096² mosaic, default settings, the fastest worker count of "workers"     60 s
#   throughput  benchmarks/gpu_throughput.py (FLOP/s by batch, auto batch, NCHW and CUDA
#               graph variants; torch.compile recompiled for a minute on the first run and
#               is left to a run of its own: --variants compile)                          50 s
#   train       configs/paper.yaml (validation shrunk to 4 patches x 1 sample) on the W2S
#               pairs, --max-minutes 3 when the time is there                            100 s
# GPU_CHECK_STEPS=tests,data,... runs only the steps named (env always; compare, workers, big and
# train need data), e.g. for a rerun after a fix; GPU_CHECK_SECONDS=300 for a shorter one.
# The 1024² and 4096² runs pass --batch AUTO, the batch bigrestore.run.batching picks on this
# GPU (what the CLI's default would pick too; given explicitly, the bytes do not depend on the
# free memory). GPU utilisation and memory are sampled by
# nvidia-smi every 500 ms during the runs. Without a GPU the script says so, runs the CPU-side
# steps small (tests, data at 1024², a CPU-vs-CPU compare, throughput --quick, a short
# cpu-small training) and still writes the summary.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
OUT=${OUT:-$repo/gpu_out}
WORK=${GPU_WORK:-/tmp/bigrestore-gpu-check}
DEADLINE=${GPU_CHECK_SECONDS:-540}
RESERVE=10
. benchmarks/gpu_env.sh
mkdir -p "$OUT" "$WORK/logs"
rm -rf "${WORK:?}"/* "$OUT/steps.log" "$OUT/smi.csv"
mkdir -p "$WORK/logs"
export OUT WORK
BR=("$PYTHON" -m bigrestore.cli)
: >"$WORK/steps.tsv"
: >"$WORK/compare.tsv"
SECONDS=0

summarize() { # summary.json + summary.md from everything measured so far (gpu_data.py)
  timeout 60 "$PYTHON" "$repo/benchmarks/gpu_data.py" summarize --work "$WORK" --out "$OUT" \
    >"$WORK/logs/summary.log" 2>&1 || cat "$WORK/logs/summary.log" >>"$OUT/steps.log"
}

step() { # step NAME LIMIT CMD...: run CMD under timeout, log, record "name rc seconds limit"
  local name=$1 limit=$2 left start rc
  shift 2
  left=$((DEADLINE - SECONDS - RESERVE))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 8 ]; then
    printf '%s\tskipped\t0\t0\n' "$name" >>"$WORK/steps.tsv"
    echo "=== $name: skipped, out of time" >>"$OUT/steps.log"
    return 1
  fi
  start=$SECONDS
  echo "=== $name (limit ${limit}s, at ${start}s): $*" >>"$OUT/steps.log"
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log" >>"$OUT/steps.log"
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >>"$WORK/steps.tsv"
  echo "=== $name: exit $rc after $((SECONDS - start)) s" >>"$OUT/steps.log"
  summarize
  return "$rc"
}

want() { # want NAME: true unless GPU_CHECK_STEPS names other steps only
  [ -z "${GPU_CHECK_STEPS:-}" ] || [[ ",$GPU_CHECK_STEPS," == *",$1,"* ]]
}

clamp() { # clamp VALUE LOW HIGH
  local v=$1
  [ "$v" -lt "$2" ] && v=$2
  [ "$v" -gt "$3" ] && v=$3
  echo "$v"
}

skip() { # skip NAME REASON
  printf '%s\tskipped\t0\t0\t%s\n' "$1" "$2" >>"$WORK/steps.tsv"
  echo "=== $1: skipped ($2)" >>"$OUT/steps.log"
}

smi_pid=
run_case() { # run_case NAME LIMIT INPUT ARGS...: bigrestore run with GPU sampling around it
  local name=$1 limit=$2 input=$3 rc
  shift 3
  if [ "$GPU" = 1 ] && [ "$SMI" = 1 ]; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
      -lms 500 -f "$WORK/smi_$name.csv" >/dev/null 2>&1 &
    smi_pid=$!
  fi
  step "$name" "$limit" "${BR[@]}" run "$input" -o "$WORK/$name.zarr" --overwrite "$@"
  rc=$?
  if [ -n "$smi_pid" ]; then
    kill "$smi_pid" 2>/dev/null
    wait "$smi_pid" 2>/dev/null
    smi_pid=
    sed "s/^/$name, /" "$WORK/smi_$name.csv" >>"$OUT/smi.csv" 2>/dev/null
    summarize
  fi
  return "$rc"
}

# ------------------------------------------------------------------ install and environment
if wheels_missing; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    step install 25 "${WHEEL_INSTALL[@]}"
  else
    skip install "no .whl/ folder: run benchmarks/gpu_wheels.sh here and carry .whl"
  fi
fi
GPU=0
if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  GPU=1
fi
SMI=0
command -v nvidia-smi >/dev/null 2>&1 && SMI=1
export GPU
env_probe() {
  nvidia-smi 2>&1 | head -20
  "$PYTHON" - <<'EOF'
import json, os, platform
import torch
info = {"gpu": torch.cuda.is_available(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "cpus": os.cpu_count(), "auto_batch": None}
if info["gpu"]:
    from bigrestore.devices import autocast_dtype
    from bigrestore.model.files import load_model
    from bigrestore.run.batching import resolve_batch
    from bigrestore.run.settings import bundled_model_path
    device = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(device)
    info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    net, _ = load_model(bundled_model_path(), device=device)
    tile = 2 * net.config.train_resolution
    info["auto_batch"] = resolve_batch(None, net, tile, 1, device, autocast_dtype("auto", device))
    info["auto_batch_tile"] = tile
try:
    import subprocess
    q = "driver_version,name,memory.total,clocks.max.sm"
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as exc:
    info["nvidia_smi"] = f"not available: {exc}"
print(json.dumps(info))
open(os.path.join(os.environ["WORK"], "env.json"), "w").write(json.dumps(info))
EOF
}
export -f env_probe
step env 15 bash -c env_probe
AUTO=$("$PYTHON" -c 'import json,os; print(json.load(open(os.environ["WORK"]+"/env.json")).get("auto_batch") or 8)' 2>/dev/null || echo 8)
if [ "$GPU" = 1 ]; then echo "GPU found; network batch $AUTO" >>"$OUT/steps.log"; else
  echo "no GPU visible to torch: GPU steps are skipped, CPU steps run small" | tee -a "$OUT/steps.log"
fi

# ------------------------------------------------------------------ a. tests
want tests && step tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py

# ------------------------------------------------------------------ data
SIDE=4096
[ "$GPU" = 1 ] || SIDE=1024
make_data() { # unpack, then convert the five TIFFs in parallel
  "$PYTHON" benchmarks/gpu_data.py unpack --dest "$WORK/tif" --side "$SIDE" || return 1
  local pids=() rc=0 name
  for name in $(printf '%s\n' "mosaic_$SIDE" mosaic_1024 crop_256 train_low train_high | sort -u); do
    case $name in train_*) axes=tcyx ;; *) axes=yx ;; esac
    "$PYTHON" -m bigrestore.cli convert "$WORK/tif/$name.tif" "$WORK/$name.zarr" --axes "$axes" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}
export -f make_data
export SIDE
if ! want data; then
  :
elif [ -e gpu_data/w2s_val.npz ]; then
  step data 25 bash -c make_data
else
  skip data "no gpu_data/w2s_val.npz: run python benchmarks/gpu_data.py pack here and carry gpu_data"
fi

# ------------------------------------------------------------------ b. CPU vs GPU on the same tiles
crop=$WORK/crop_256.zarr
if [ -e "$crop" ] && want compare; then
  if [ "$GPU" = 1 ]; then
    run_case cpu256 50 "$crop" --samples 2 --device cpu --precision fp32 --workers 1 \
      --threads-per-worker "$(nproc)" --batch 2
    run_case gpu256_fp32 35 "$crop" --samples 2 --gpus 1 --precision fp32 --batch 2
    run_case gpu256 35 "$crop" --samples 2 --gpus 1 --batch 2
    printf 'cpu256\tgpu256_fp32\ncpu256\tgpu256\ngpu256_fp32\tgpu256\n' >>"$WORK/compare.tsv"
  else # the comparison's code path, on two CPU runs
    run_case cpu256 60 "$crop" --samples 1 --steps 2 --device cpu --workers 1
    run_case cpu256_again 60 "$crop" --samples 1 --steps 2 --device cpu --workers 1
    printf 'cpu256\tcpu256_again\n' >>"$WORK/compare.tsv"
  fi
fi

# ------------------------------------------------------------------ d. 1, 2, 4 workers on GPU 0
best=1
if ! want workers; then
  :
elif [ "$GPU" = 1 ] && [ -e "$WORK/mosaic_1024.zarr" ]; then
  run_case w1 45 "$WORK/mosaic_1024.zarr" --gpus 1 --batch "$AUTO"
  run_case w2 45 "$WORK/mosaic_1024.zarr" --workers 2 --batch "$AUTO"
  printf 'w1\tw2\n' >>"$WORK/compare.tsv"
  summarize
  best=$("$PYTHON" -c 'import json,os; print(json.load(open(os.environ["OUT"]+"/summary.json")).get("best_workers") or 1)' 2>/dev/null || echo 1)
else
  skip workers "no GPU"
fi

# ------------------------------------------------------------------ b. 4096², default settings
if ! want big; then
  :
elif [ "$GPU" = 1 ] && [ -e "$WORK/mosaic_$SIDE.zarr" ]; then
  limit=$(clamp $((DEADLINE - SECONDS - RESERVE - 60 - 100)) 60 200)
  if [ "$best" = 1 ]; then where=(--gpus 1); else where=(--workers "$best"); fi
  run_case big "$limit" "$WORK/mosaic_$SIDE.zarr" "${where[@]}" --batch "$AUTO"
else
  skip big "no GPU"
fi

# ------------------------------------------------------------------ c. throughput
if ! want throughput; then
  :
elif [ "$GPU" = 1 ]; then
  limit=$(clamp $((DEADLINE - SECONDS - RESERVE - 100)) 50 90)
  step throughput "$limit" "$PYTHON" benchmarks/gpu_throughput.py --out "$OUT/throughput.json" \
    --seconds 0.5 --variants nchw,cuda_graph
else
  step throughput 90 "$PYTHON" benchmarks/gpu_throughput.py --device cpu --quick --variants nchw \
    --seconds 0.2 --out "$OUT/throughput.json"
fi

# ------------------------------------------------------------------ e. training throughput
if ! want train; then
  :
elif [ -e "$WORK/train_low.zarr" ] && [ -e "$WORK/train_high.zarr" ]; then
  left=$((DEADLINE - SECONDS - RESERVE - 35))
  if [ "$GPU" = 1 ]; then
    base=configs/paper.yaml device=cuda per_epoch=500
    minutes=$("$PYTHON" -c "print(round(max(0.5, min(3.0, $left / 60)), 2))")
  else
    base=configs/cpu-small.yaml device=cpu per_epoch=4 minutes=0.15
  fi
  "$PYTHON" - "$base" "$WORK/train.yaml" "$per_epoch" <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config.update(val_patches=4, val_samples=1, steps_per_epoch=int(sys.argv[3]))
yaml.safe_dump(config, open(sys.argv[2], "w"))
EOF
  limit=$("$PYTHON" -c "print(int($minutes * 60 + 35))")
  step train "$limit" "${BR[@]}" train --low "$WORK/train_low.zarr" --high "$WORK/train_high.zarr" \
    --config "$WORK/train.yaml" --max-minutes "$minutes" --device "$device" --out "$WORK/train" \
    --overwrite
  cp "$WORK/train/metrics.csv" "$OUT/train_metrics.csv" 2>/dev/null
  cp "$WORK/train/steps.csv" "$OUT/train_steps.csv" 2>/dev/null
else
  skip train "no training data (data step)"
fi

summarize
cat "$OUT/summary.md" 2>/dev/null || echo "no summary: see $OUT/steps.log"
