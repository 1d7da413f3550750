"""Proof at scale: a 1-gigapixel plane restored with flat memory, then killed and resumed to the
same bytes.

    python benchmarks/gigapixel.py WORK [--side 32768] [--workers 2] [--kill-at 0.5]

The engine is what is measured here, not the network, so the settings are small: a tiny
random-weight v-model (8 base channels, 2 levels), 2 samples of 1 DDIM step on 64-px tiles
(overlap 16), 1024² chunks (one block each). Input: a ``--side``² uint8 plane (1.07 Gpx at the
default) tiled from the real W2S validation fields (each 512² square one field and channel,
so no two neighbours repeat), written chunk by chunk with Dask, never held in memory.

1. ``bigrestore run`` (a subprocess, ``--workers`` x 1 thread) restores it uninterrupted; the
   peak resident memory of the whole process tree (driver, scheduler, nanny, workers) is
   sampled every second, and by worker over time (first and last tenth of the run).
2. The same command to a second output is killed with SIGKILL (the whole process group, no
   chance to clean up) once ``--kill-at`` of the blocks are done, then continued with
   ``--resume``.
3. Level 0 of mean, std and entropy of both outputs are compared chunk by chunk (SHA-256 of
   each chunk's values): bit-identical or not, and how many chunks differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import psutil
import tifffile
import torch
import zarr

from bigrestore.devices import cpu_name
from bigrestore.io.meta import default_meta
from bigrestore.io.runstore import run_status
from bigrestore.io.write import write_image
from bigrestore.model.files import save_model
from bigrestore.model.unet import ConditionalUNet, UNetConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s"
FIELD = 512
CHUNK = 1024
RUN_OPTIONS = [
    "--samples", "2", "--steps", "1", "--tile", "64", "--overlap", "16",
    "--chunk", str(CHUNK), "--threads-per-worker", "1", "--skip-background", "off",
]  # fmt: skip


def input_plane(work: Path, side: int) -> Path:
    """The uint8 side² plane of W2S fields, written lazily (one 1024² chunk at a time)."""
    fields = tifffile.imread(DATA / "val_low.tif").reshape(-1, FIELD, FIELD)  # 60 planes

    def block(block_info=None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        out = np.empty((y1 - y0, x1 - x0), np.uint8)
        for y in range(y0, y1, FIELD):
            for x in range(x0, x1, FIELD):
                k = (y // FIELD * 7 + x // FIELD * 13) % len(fields)
                out[y - y0 : y - y0 + FIELD, x - x0 : x - x0 + FIELD] = fields[k]
        return out

    plane = da.map_blocks(block, dtype=np.uint8, chunks=((CHUNK,) * (side // CHUNK),) * 2)
    return write_image(work / "giga.zarr", plane, default_meta("yx"), chunks=(CHUNK, CHUNK))


def tiny_model(work: Path) -> Path:
    """A seeded random-weight v-model: the engine's cost, not a restoration."""
    torch.manual_seed(0)
    config = UNetConfig(
        base_channels=8,
        channel_mult=(1, 2),
        blocks_per_level=1,
        attn_resolutions=(),
        train_resolution=32,
        channels_per_head=8,
    )
    spec = {
        "objective": "v",
        "schedule": {"T": 200, "s": 0.008},
        "normalization": {
            "method": "percentile",
            "p_low": 1.0,
            "p_high": 99.8,
            "target": {"low": 0.0, "high": 255.0},
        },
    }
    save_model(work / "tiny_model", ConditionalUNet(config), spec)
    return work / "tiny_model"


def tree_rss(process: psutil.Process) -> tuple[int, list[int]]:
    """(resident bytes of the process and all its descendants, of each descendant)."""
    parts = []
    for p in [process, *process.children(recursive=True)]:
        try:
            parts.append(p.memory_info().rss)
        except psutil.Error:
            continue
    return sum(parts), parts


def run(command: list[str], out: Path, kill_at: float | None) -> dict:
    """Run ``command``; sample memory every second; SIGKILL the group at ``kill_at`` of blocks."""
    started = time.perf_counter()
    child = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    process, peaks, killed = psutil.Process(child.pid), [], False
    while child.poll() is None:
        time.sleep(1.0)
        try:
            total, parts = tree_rss(process)
        except psutil.Error:
            continue
        peaks.append((time.perf_counter() - started, total, max(parts, default=0)))
        status = run_status(out) if kill_at is not None and out.exists() else None
        if status and status["blocks"] and status["blocks_done"] >= kill_at * status["blocks"]:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            killed = True
            break
    seconds = time.perf_counter() - started
    tenth = max(1, len(peaks) // 10)
    return {
        "returncode": child.returncode,
        "seconds": round(seconds, 1),
        "killed": killed,
        "blocks_done": (run_status(out) or {}).get("blocks_done"),
        "peak_tree_rss_gib": round(max(p[1] for p in peaks) / 2**30, 2) if peaks else None,
        "largest_process_rss_gib, first / last tenth": [
            round(max(p[2] for p in peaks[:tenth]) / 2**30, 2),
            round(max(p[2] for p in peaks[-tenth:]) / 2**30, 2),
        ]
        if peaks
        else None,
    }


def chunk_hashes(path: Path) -> list[str]:
    array = zarr.open_array(str(path), mode="r")
    hashes = []
    for y in range(0, array.shape[-2], CHUNK):
        for x in range(0, array.shape[-1], CHUNK):
            values = np.ascontiguousarray(array[..., y : y + CHUNK, x : x + CHUNK])
            hashes.append(hashlib.sha256(values.tobytes()).hexdigest())
    return hashes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--side", type=int, default=32768)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-at", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.side % CHUNK:
        parser.error(f"--side must be a multiple of {CHUNK}")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source = input_plane(args.work, args.side)
    write_seconds = time.perf_counter() - started
    model = tiny_model(args.work)
    base = ["bigrestore", "run", str(source), "--model", str(model), *RUN_OPTIONS]
    base += ["--workers", str(args.workers)]
    whole, interrupted = args.work / "whole.zarr", args.work / "resumed.zarr"
    report = {"input_gpx": args.side**2 / 1e9, "input_write_seconds": round(write_seconds, 1)}
    report["uninterrupted"] = run([*base, "-o", str(whole), "--overwrite"], whole, None)
    print(json.dumps(report), file=sys.stderr, flush=True)
    report["killed"] = run(
        [*base, "-o", str(interrupted), "--overwrite"], interrupted, args.kill_at
    )
    report["resumed"] = run([*base, "-o", str(interrupted), "--resume"], interrupted, None)
    differing = {}
    for name in ("mean", "std", "entropy"):
        a = chunk_hashes(whole / name / "0")
        b = chunk_hashes(interrupted / name / "0")
        differing[name] = sum(x != y for x, y in zip(a, b, strict=True))
    report["chunks_compared"] = len(a)
    report["chunks_differing"] = differing
    report["bit_identical"] = not any(differing.values())
    report["cpu"] = cpu_name()
    report["command"] = " ".join(["python", "benchmarks/gigapixel.py", *(argv or sys.argv[1:])])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
