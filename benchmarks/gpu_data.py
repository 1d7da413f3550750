"""The data that the GPU check (benchmarks/gpu_check.sh) carries to a machine without ../shared,
and the summary it brings back.

    python benchmarks/gpu_data.py pack                     # here: ../shared/data/w2s -> gpu_data/
    python benchmarks/gpu_data.py unpack --dest WORK       # there: gpu_data/ -> TIFFs in WORK
    python benchmarks/gpu_data.py summarize --work WORK --out OUT   # there: the check's summary
    python benchmarks/gpu_data.py pack-train --fields 24   # here: sources of a training set -> gpu_train/

``pack`` keeps the W2S validation split small: every low-SNR field (20 fields x 3 channels of
512² uint8) and the high-SNR targets of the first ``--train-fields`` fields, in one compressed
``gpu_data/w2s_val.npz`` (about 20 MiB; the device tool carries it with ``carry: ["gpu_data"]``).

``unpack`` writes what the check converts to OME-Zarr (``bigrestore convert``):

* ``mosaic_<side>.tif``: a YX uint8 mosaic of 512² W2S images, (side/512)² of them in
  (field, channel) order, the first ones repeated when the split holds fewer (the 4096² mosaic
  is 8 x 8 = 64 images from 60: fields 0-19 x channels 0-2, then 4 repeats). Every image keeps
  its native pixel size; the channels differ in brightness, and the run normalises with
  percentiles of the whole mosaic, as it would for any stitched slide;
* ``mosaic_1024.tif`` and ``crop_256.tif``: the mosaic's top-left corners (worker-count and
  CPU-vs-GPU comparisons);
* ``train_low.tif`` / ``train_high.tif``: (t, c, y, x) pairs of the first ``--train-fields``
  fields (throughput of ``bigrestore train``; these are validation fields, which is fine for a
  speed measurement and says nothing about quality).

``pack-train`` is for benchmarks/gpu_train.sh: the sources of the generalist training set
(benchmarks/make_training_set.py) in the layout of ../shared/data, small enough to carry: the
clean stacks whole (9.6 MiB) and the W2S training pairs of fields 1..``--fields`` only
(zlib TIFFs, about 1.1 MiB a field; all 54 would not fit beside the wheels in 64 MiB).

``summarize`` reads what gpu_check.sh left in WORK (steps, run stores and their manifests,
nvidia-smi samples, throughput.json, the training's CSVs) and writes OUT/summary.json and
OUT/summary.md; gpu_check.sh calls it after every step, so a check cut short still brings back
what it measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "w2s"
PACKED = REPO / "gpu_data" / "w2s_val.npz"
TRAIN_KIT = REPO / "gpu_train"
FIELD = 512


def mosaic(images: np.ndarray, side: int) -> np.ndarray:
    """A (side, side) mosaic of ``images`` (n, f, f) in row-major order, cycling through them
    when fewer than (side/f)² are given. ``side`` must be a multiple of the image side f."""
    n, f = images.shape[0], images.shape[-1]
    if side % f or n == 0:
        raise ValueError(f"side {side} must be a multiple of the image side {f} (and images > 0)")
    per_row = side // f
    order = [k % n for k in range(per_row * per_row)]
    rows = [
        np.concatenate([images[k] for k in order[r * per_row : (r + 1) * per_row]], axis=1)
        for r in range(per_row)
    ]
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def pack(source: Path, dest: Path, train_fields: int) -> dict:
    """Read the W2S validation TIFFs and write the compressed bundle the GPU check carries."""
    import tifffile

    low = tifffile.imread(source / "val_low.tif")
    high = tifffile.imread(source / "val_high.tif")
    if low.dtype != np.uint8 or low.ndim != 4 or low.shape[-1] != FIELD:
        raise ValueError(
            f"{source}/val_low.tif: expected (t, c, 512, 512) uint8, found {low.shape} {low.dtype}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dest, low=low, high=high[:train_fields])
    return {
        "packed": str(dest),
        "bytes": dest.stat().st_size,
        "low": low.shape,
        "high": high[:train_fields].shape,
    }


def pack_train(data: Path, dest: Path, fields: int) -> dict:
    """Copy the clean stacks and write W2S training fields 1..``fields`` into ``dest``."""
    import shutil

    import tifffile

    (dest / "w2s").mkdir(parents=True, exist_ok=True)
    (dest / "clean").mkdir(parents=True, exist_ok=True)
    for name in ("cells3d_nuclei.tif", "dsb2018_nuclei_2d.tif", "ctc_timelapse_2d.tif"):
        shutil.copyfile(data / "clean" / name, dest / "clean" / name)
    for name in ("train_low", "train_high"):
        stack = tifffile.imread(data / "w2s" / f"{name}.tif")[:fields]
        tifffile.imwrite(
            dest / "w2s" / f"{name}.tif", stack, compression="zlib", metadata={"axes": "TCYX"}
        )
    size = sum(f.stat().st_size for f in dest.rglob("*.tif"))
    return {"packed": str(dest), "fields": fields, "mib": round(size / 2**20, 1)}


def unpack(packed: Path, dest: Path, side: int) -> dict:
    """Write the mosaic, its corners and the training pairs as TIFFs into ``dest``."""
    import tifffile

    with np.load(packed) as bundle:
        low, high = bundle["low"], bundle["high"]
    dest.mkdir(parents=True, exist_ok=True)
    images = low.reshape(-1, FIELD, FIELD)  # (field, channel) order
    big = mosaic(images, side)
    written = {f"mosaic_{side}": big, "mosaic_1024": big[:1024, :1024], "crop_256": big[:256, :256]}
    paths = {}
    for name, array in written.items():
        paths[name] = str(dest / f"{name}.tif")
        tifffile.imwrite(paths[name], np.ascontiguousarray(array))
    fields = high.shape[0]
    for name, array in (("train_low", low[:fields]), ("train_high", high)):
        paths[name] = str(dest / f"{name}.tif")
        tifffile.imwrite(paths[name], array, metadata={"axes": "TCYX"})
    return paths


# ----------------------------------------------------------------------------- summary


def read_steps(work: Path) -> list[dict]:
    """The steps gpu_check.sh recorded: name, exit code (or "skipped"), seconds, limit, note."""
    rows = []
    path = work / "steps.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split("\t")
        parts += [""] * (5 - len(parts))
        name, rc, seconds, limit, note = parts[:5]
        rows.append(
            {"step": name, "exit": rc, "seconds": int(seconds or 0), "limit": int(limit or 0)}
            | ({"note": note} if note else {})
        )
    return rows


def gpu_samples(path: Path) -> dict:
    """Mean and max GPU utilisation (%) and max memory used (MiB) of nvidia-smi samples."""
    util, memory = [], []
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = [p.strip() for p in line.split(",")]
        try:
            util.append(float(parts[-2]))
            memory.append(float(parts[-1]))
        except (ValueError, IndexError):
            continue
    if not util:
        return {}
    busy = [u for u in util if u > 0] or [0.0]
    return {
        "samples": len(util),
        "gpu_util_mean": round(sum(util) / len(util), 1),
        "gpu_util_mean_busy": round(sum(busy) / len(busy), 1),
        "gpu_util_max": max(util),
        "memory_used_max_mib": max(memory),
    }


def run_record(work: Path, name: str, step: dict) -> dict:
    """What one ``bigrestore run`` of the check measured (its manifest, log, GPU samples)."""
    import re

    import zarr

    record: dict = {"run": name, "wall_seconds": step["seconds"], "exit": step["exit"]}
    group = zarr.open_group(str(work / f"{name}.zarr"), mode="r")
    manifest = dict(group.attrs.get("bigrestore", {}))
    record["side"] = group["mean"]["0"].shape[-1] if "mean" in group else None
    settings = manifest.get("settings", {})
    record.update(
        status=manifest.get("status"),
        ran_on=manifest.get("ran_on"),
        batch=settings.get("batch"),
        samples=settings.get("samples"),
        workers=manifest.get("cluster", {}).get("workers"),
        gpus=manifest.get("cluster", {}).get("gpus"),
    )
    if manifest.get("status") == "complete":
        compute = manifest["compute_seconds"] or float("nan")
        tiles, evaluations = manifest["tiles_this_run"], manifest["network_evaluations_this_run"]
        record.update(
            tiles=tiles,
            evaluations=evaluations,
            compute_seconds=compute,
            total_seconds=manifest.get("total_seconds"),
            tiles_per_s=round(tiles / compute, 2),
            evaluations_per_s=round(evaluations / compute, 1),
        )
    log = work / "logs" / f"{name}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    blocks = re.findall(r"after (\d+) of (\d+) blocks", text)
    tiles = re.findall(r"(\d+)/(\d+) \[", text)  # the progress bar counts tiles
    if manifest.get("status") != "complete" and (blocks or tiles):
        if blocks:
            record.update(blocks_done=int(blocks[-1][0]), blocks_total=int(blocks[-1][1]))
        done, total = map(int, (tiles or blocks)[-1])
        if tiles:
            record.update(tiles_done=done, tiles_total=total)
        if done:
            record["projected_full_seconds"] = round(step["seconds"] * total / done)
    return record | gpu_samples(work / f"smi_{name}.csv")


def mean_of(work: Path, name: str) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(str(work / f"{name}.zarr" / "mean" / "0"), mode="r")[...])


def comparison(work: Path, a: str, b: str) -> dict:
    """Bit-identity, max |difference| and PSNR (range of ``a``) of two runs' means."""
    x, y = mean_of(work, a).astype(np.float64), mean_of(work, b).astype(np.float64)
    if x.shape != y.shape:
        return {"a": a, "b": b, "error": f"shapes {x.shape} and {y.shape}"}
    mse = float(np.mean((x - y) ** 2))
    span = float(x.max() - x.min()) or 1.0
    return {
        "a": a,
        "b": b,
        "identical": bool(np.array_equal(x, y)),
        "max_abs_diff": float(np.abs(x - y).max()),
        "mean_abs_diff": float(np.abs(x - y).mean()),
        "psnr_db": "inf" if mse == 0 else round(10 * np.log10(span**2 / mse), 2),
        "range_of_a": span,
    }


def training(work: Path) -> dict:
    """Epoch rows of metrics.csv and a loss curve (at most 60 points) from steps.csv."""
    import csv

    out: dict = {}
    for key, name in (("epochs", "metrics.csv"), ("steps", "steps.csv")):
        path = work / "train" / name
        if path.exists():
            with open(path, newline="") as f:
                out[key] = list(csv.DictReader(f))
    steps = out.pop("steps", [])
    if steps:
        every = max(1, len(steps) // 60)
        out["loss_curve"] = [(int(r["step"]), float(r["loss"])) for r in steps[::every]]
        out["steps_done"] = int(steps[-1]["step"])
    return out


def best_workers(runs: dict) -> int | None:
    """The worker count of the fastest 1024² run (w1, w2, w4) that completed and exited 0: a
    run stopped by its step's limit has no compute time (or one from a run killed late)."""
    done = {
        int(name[1:]): record.get("compute_seconds", float("nan"))
        for name, record in runs.items()
        if name in ("w1", "w2", "w4") and str(record.get("exit")) == "0"
    }
    done = {w: s for w, s in done.items() if s == s}
    return min(done, key=done.get) if done else None


def summarize(work: Path, out: Path) -> dict:
    """summary.json and summary.md in ``out`` from what the check left in ``work``."""
    summary: dict = {"env": {}, "steps": read_steps(work), "runs": {}, "comparisons": []}
    env = work / "env.json"
    if env.exists():
        summary["env"] = json.loads(env.read_text())
    for step in summary["steps"]:
        if (work / f"{step['step']}.zarr" / "mean").exists():
            try:
                summary["runs"][step["step"]] = run_record(work, step["step"], step)
            except Exception as exc:  # one unreadable store must not lose the rest
                summary["runs"][step["step"]] = {"error": f"{type(exc).__name__}: {exc}"}
    pairs = work / "compare.tsv"
    for line in pairs.read_text().splitlines() if pairs.exists() else []:
        a, b = line.split("\t")
        if all(summary["runs"].get(n, {}).get("status") == "complete" for n in (a, b)):
            summary["comparisons"].append(comparison(work, a, b))
    summary["best_workers"] = best_workers(summary["runs"])
    throughput = out / "throughput.json"
    if throughput.exists():
        summary["throughput"] = json.loads(throughput.read_text())
    summary["training"] = training(work)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "summary.md").write_text(markdown(summary))
    return summary


def table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return lines + [""]


def markdown(summary: dict) -> str:
    env = summary["env"]
    lines = ["# GPU check", ""]
    if env:
        if env.get("gpu"):
            gpu = (
                f"{env.get('name')}, {env.get('memory_gib')} GiB, cuDNN {env.get('cudnn')}, "
                f"auto network batch {env.get('auto_batch')} ({env.get('auto_batch_tile')}² tiles)"
            )
        else:
            gpu = "no GPU visible to torch"
        lines += [
            f"{gpu}; torch {env.get('torch')}, CUDA {env.get('cuda')}, Python "
            f"{env.get('python')}, {env.get('cpus')} CPUs; nvidia-smi: {env.get('nvidia_smi')}",
            "",
        ]
    lines += ["## Steps", ""] + table(summary["steps"], ["step", "exit", "seconds", "limit"])
    columns = ["run", "side", "status", "ran_on", "workers", "batch", "samples", "tiles"]
    columns += ["evaluations"]
    columns += ["compute_seconds", "tiles_per_s", "evaluations_per_s", "gpu_util_mean"]
    columns += ["gpu_util_max", "memory_used_max_mib", "blocks_done", "tiles_done"]
    columns += ["projected_full_seconds"]
    lines += ["## Runs", ""] + table(list(summary["runs"].values()), columns)
    columns = ["a", "b", "identical", "max_abs_diff", "mean_abs_diff", "psnr_db", "range_of_a"]
    lines += ["## Comparisons of the means", ""] + table(summary["comparisons"], columns)
    lines += [f"fastest worker count on the 1024² mosaic: {summary.get('best_workers')}", ""]
    rows = []
    for name, model in summary.get("throughput", {}).get("models", {}).items():
        for row in model.get("rows", []) + model.get("variants", []):
            rows.append({"network": name, "tile": model.get("tile"), **row})
    for row in rows:
        for key, value in list(row.items()):
            row[key] = round(value, 3) if isinstance(value, float) else value
    columns = ["network", "tile", "batch", "variant", "network_tflops", "sampling_tflops"]
    columns += ["sampling_fraction_of_peak", "noise_ms_per_item_step", "prepare_seconds", "error"]
    lines += ["## Throughput (benchmarks/gpu_throughput.py)", ""] + table(rows, columns)
    epochs = summary["training"].get("epochs", [])
    columns = ["epoch", "step", "train_loss", "val_mae", "patches_per_s", "wall_s"]
    lines += ["## Training", ""] + table(epochs, columns)
    curve = summary["training"].get("loss_curve", [])
    if curve:
        lines += [
            "loss: " + ", ".join(f"{s}: {v:.4f}" for s, v in curve[:: max(1, len(curve) // 12)])
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("pack", help="../shared/data/w2s -> gpu_data/w2s_val.npz (run here)")
    p.add_argument("--source", type=Path, default=SOURCE)
    p.add_argument("--dest", type=Path, default=PACKED)
    p.add_argument("--train-fields", type=int, default=8)
    u = sub.add_parser("unpack", help="gpu_data/w2s_val.npz -> TIFFs (run on the GPU machine)")
    u.add_argument("--packed", type=Path, default=PACKED)
    u.add_argument("--dest", type=Path, required=True)
    u.add_argument("--side", type=int, default=4096)
    t = sub.add_parser("pack-train", help="training-set sources -> gpu_train/ (run here)")
    t.add_argument("--data", type=Path, default=SOURCE.parent)
    t.add_argument("--dest", type=Path, default=TRAIN_KIT)
    t.add_argument("--fields", type=int, default=24)
    m = sub.add_parser("summarize", help="the GPU check's summary (gpu_check.sh calls it)")
    m.add_argument("--work", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.step == "pack":
        result = pack(args.source, args.dest, args.train_fields)
    elif args.step == "pack-train":
        result = pack_train(args.data, args.dest, args.fields)
    elif args.step == "unpack":
        result = unpack(args.packed, args.dest, args.side)
    else:
        result = {"summary": str(summarize(args.work, args.out) and args.out / "summary.json")}
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
