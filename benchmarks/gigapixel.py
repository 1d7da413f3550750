"""Proof at scale: a 1-gigapixel sparse uint16 slide restored end to end with flat memory, its
pyramids timed against a plain copy, then killed and resumed to the same bytes.

    python benchmarks/gigapixel.py WORK [--side 32768] [--workers 2] [--kill-at 0.5]

The engine is what is measured here, not the network, so the settings are the cheapest the
issue allows: a tiny random-weight v-model (8 base channels, 5 levels, so that the bottleneck's
attention on a 256-px tile sees 16², not 128², positions), 1 sample of 1 DDIM
step on 256-px tiles (overlap 32), 1024² chunks (one block each), background skipping on
(``auto``). Input: a ``--side``² uint16 slide (1.07 Gpx at the default), written chunk by
chunk with Dask and never held in memory: a dark coverslip (camera offset 100, read noise
sigma 3, a faint shot-noise background, gain 10) on which real W2S low-SNR fields (512²,
each square one field and channel) are pasted at about ``--fill`` of the area, in runs
of neighbouring squares as tissue lies on a slide.

1. ``bigrestore run`` (a subprocess, ``--workers`` x 1 thread) restores it uninterrupted;
   every second the resident memory of the driver (client and scheduler) and of the largest
   other process (nannies, workers) is sampled: peak, and peak while the first and the last
   quarter of the blocks ran (flat memory means those agree). Blocks per second come from the manifest's
   compute time; pyramids + NGFF metadata time is the manifest's total minus compute.
2. A plain copy of the same level-0 arrays (mean, std, entropy, skipped; Dask, same chunks
   and codec), for scale against the pyramid time.
3. The same command to a second output is killed with SIGKILL (the whole process group, no
   chance to clean up) once ``--kill-at`` of the blocks are done, then continued with
   ``--resume``.
4. Level 0 of mean, std, entropy and skipped of both outputs are compared chunk by chunk
   (SHA-256 of each chunk's values): bit-identical or not, and how many chunks differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
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
from scipy.ndimage import gaussian_filter

from bigrestore.devices import cpu_name
from bigrestore.io.meta import default_meta
from bigrestore.io.runstore import run_status
from bigrestore.io.write import write_image
from bigrestore.model.files import save_model
from bigrestore.model.unet import ConditionalUNet, UNetConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s"
FIELD = 512
CHUNK = 1024
OUTPUTS = ("mean", "std", "entropy", "skipped")
RUN_OPTIONS = [
    "--samples", "1", "--steps", "1", "--tile", "256", "--overlap", "32",
    "--chunk", str(CHUNK), "--threads-per-worker", "1", "--skip-background", "auto",
]  # fmt: skip


def tissue_squares(squares: int, fill: float, seed: int = 0) -> np.ndarray:
    """Which FIELD² squares hold tissue: a smoothed random field above its (1 - fill) quantile,
    so tissue comes in patches of neighbouring squares, as on a slide."""
    field = gaussian_filter(np.random.default_rng(seed).normal(size=(squares, squares)), 2.0)
    return field > np.quantile(field, 1.0 - fill)


def input_plane(work: Path, side: int, fill: float) -> tuple[Path, float]:
    """The sparse uint16 side² slide, written lazily (one CHUNK² block at a time); returns its
    path and the fraction of tissue squares."""
    fields = tifffile.imread(DATA / "val_low.tif").reshape(-1, FIELD, FIELD)  # 60 planes
    tissue = tissue_squares(side // FIELD, fill)

    def block(block_info=None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        rng = np.random.default_rng([y0, x0])  # the same bytes whichever worker writes it
        shape = (y1 - y0, x1 - x0)
        out = rng.poisson(2.0, shape) * 10.0 + 100.0 + rng.normal(0.0, 3.0, shape)
        for y in range(y0, y1, FIELD):
            for x in range(x0, x1, FIELD):
                if tissue[y // FIELD, x // FIELD]:
                    k = (y // FIELD * 7 + x // FIELD * 13) % len(fields)
                    out[y - y0 : y - y0 + FIELD, x - x0 : x - x0 + FIELD] += fields[k] * 10.0
        return np.clip(np.round(out), 0, 65535).astype(np.uint16)

    plane = da.map_blocks(block, dtype=np.uint16, chunks=((CHUNK,) * (side // CHUNK),) * 2)
    path = write_image(work / "giga.zarr", plane, default_meta("yx"), chunks=(CHUNK, CHUNK))
    return path, float(tissue.mean())


def tiny_model(work: Path) -> Path:
    """A seeded random-weight v-model: the engine's cost, not a restoration."""
    torch.manual_seed(0)
    config = UNetConfig(
        base_channels=8,
        channel_mult=(1, 1, 1, 1, 1),  # 5 levels: the bottleneck's attention sees 16² tokens
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


def rss(process: psutil.Process) -> tuple[int, int]:
    """(resident bytes of the driver process, of its largest descendant)."""
    driver, largest = process.memory_info().rss, 0
    for child in process.children(recursive=True):
        try:
            largest = max(largest, child.memory_info().rss)
        except psutil.Error:
            continue
    return driver, largest


def gib(values: list[int]) -> float | None:
    return round(max(values) / 2**30, 2) if values else None


def run(command: list[str], out: Path, kill_at: float | None) -> dict:
    """Run ``command``; sample memory and blocks done every second; SIGKILL the process group
    once ``kill_at`` of the blocks are done. Flatness: the peaks while the first quarter of the
    blocks ran against those while the last quarter ran."""
    started = time.perf_counter()
    child = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    process, samples, killed = psutil.Process(child.pid), [], False
    while child.poll() is None:
        time.sleep(1.0)
        try:
            memory = rss(process)
        except psutil.Error:
            continue
        status = run_status(out) if out.exists() else None
        if not status or not status["blocks"]:
            continue
        done = status["blocks_done"] / status["blocks"]
        samples.append((done, *memory))
        if kill_at is not None and done >= kill_at:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            killed = True
            break
    report = {
        "returncode": child.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "killed": killed,
        "blocks_done": (run_status(out) or {}).get("blocks_done"),
    }
    running = [s for s in samples if s[0] < 1.0]
    first = last = []
    if running:  # quarters of the progress this run made (a resumed run starts half-way)
        start, end = running[0][0], running[-1][0]
        first = [s for s in running if s[0] < start + (end - start) / 4]
        last = [s for s in running if s[0] >= end - (end - start) / 4]
    for k, name in enumerate(("driver", "largest_worker_or_nanny"), start=1):
        report[f"{name}_peak_rss_gib"] = gib([s[k] for s in samples])
        report[f"{name}_peak_rss_gib first / last quarter of blocks"] = [
            gib([s[k] for s in first]),
            gib([s[k] for s in last]),
        ]
    return report


def manifest_figures(out: Path) -> dict:
    manifest = zarr.open_group(str(out), mode="r").attrs["bigrestore"]
    compute, total = manifest["compute_seconds"], manifest["total_seconds"]
    return {
        "blocks": manifest["blocks"],
        "tiles": manifest["tiles_this_run"],
        "network_evaluations": manifest["network_evaluations_this_run"],
        "skipped_tiles": manifest["skipped_tiles_this_run"],
        "compute_seconds": compute,
        "blocks_this_run": manifest["blocks_this_run"],
        "blocks_per_second": round(manifest["blocks_this_run"] / compute, 3),
        "pyramids_and_metadata_seconds": round(total - compute, 1),
    }


def plain_copy_seconds(out: Path, work: Path) -> float:
    """Seconds to copy the level-0 arrays of every output with Dask (same chunks, same codec)."""
    started = time.perf_counter()
    for name in OUTPUTS:
        source = zarr.open_array(str(out / name / "0"), mode="r")
        target = zarr.create_array(
            str(work / "plain_copy" / name),
            shape=source.shape,
            chunks=source.chunks,
            dtype=source.dtype,
            compressors=source.compressors,
            overwrite=True,
        )
        da.store(da.from_zarr(source), target, lock=False)
    seconds = round(time.perf_counter() - started, 1)
    shutil.rmtree(work / "plain_copy")  # only its time is wanted; the disk is needed
    return seconds


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
    parser.add_argument("--fill", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-at", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.side % CHUNK:
        parser.error(f"--side must be a multiple of {CHUNK}")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source, tissue = input_plane(args.work, args.side, args.fill)
    report = {
        "cpu": cpu_name(),
        "command": " ".join(["python", "benchmarks/gigapixel.py", *(argv or sys.argv[1:])]),
        "input_gpx": round(args.side**2 / 1e9, 3),
        "tissue_fraction": round(tissue, 3),
        "input_write_seconds": round(time.perf_counter() - started, 1),
    }
    model = tiny_model(args.work)
    base = ["bigrestore", "run", str(source), "--model", str(model), *RUN_OPTIONS]
    base += ["--workers", str(args.workers)]
    whole, interrupted = args.work / "whole.zarr", args.work / "resumed.zarr"
    report["uninterrupted"] = run([*base, "-o", str(whole), "--overwrite"], whole, None)
    report["uninterrupted"].update(manifest_figures(whole))
    report["plain_copy_of_level0_seconds"] = plain_copy_seconds(whole, args.work)
    print(json.dumps(report), file=sys.stderr, flush=True)
    report["killed"] = run(
        [*base, "-o", str(interrupted), "--overwrite"], interrupted, args.kill_at
    )
    report["resumed"] = run([*base, "-o", str(interrupted), "--resume"], interrupted, None)
    report["resumed"].update(manifest_figures(interrupted))
    differing = {}
    for name in OUTPUTS:
        a = chunk_hashes(whole / name / "0")
        b = chunk_hashes(interrupted / name / "0")
        differing[name] = sum(x != y for x, y in zip(a, b, strict=True))
    report["chunks_compared_per_output"] = len(a)
    report["chunks_differing"] = differing
    report["bit_identical"] = not any(differing.values())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
