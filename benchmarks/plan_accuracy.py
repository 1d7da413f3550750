"""How good is `bigrestore plan`? Its figures on a 32k x 32k input, and its time estimate
against a measured `bigrestore run` with the same settings on a smaller real input.

1. A sparse 32768² uint16 OME-Zarr (the shape declared, a few W2S fields written as chunks,
   the rest absent): `plan` must print its figures in seconds (chunk census included).
2. A 1024² mosaic of W2S low-light fields (`../shared/data/w2s/val_low.tif`, (20, 3, 512, 512)
   uint8; channel 0 of frames 0-3 in a 2x2 mosaic): `plan --json`, then `run` with the same
   options; the estimate against the run's measured seconds (the manifest's total_seconds,
   cluster start to complete manifest, and the wall time of the whole command).

    python benchmarks/plan_accuracy.py [--work DIR] [--samples 2] [--steps 10] [--side 32768]

Prints the commands, both outputs and the ratio estimate / measured, and the load average
(the estimate is calibrated on the machine as it is loaded at the time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

from bigrestore.io.meta import ImageMeta
from bigrestore.io.ngff import write_metadata
from bigrestore.io.write import create_level0, write_image

W2S = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s" / "val_low.tif"
BIGRESTORE = [sys.executable, "-m", "bigrestore.cli"]


def w2s_fields(count: int) -> list[np.ndarray]:
    """Channel 0 of the first ``count`` W2S validation frames, uint16 (512², low light)."""
    frames = tifffile.imread(W2S)[:count, 0]
    return [frame.astype(np.uint16) * 64 for frame in frames]


def sparse_input(path: Path, side: int, fields: list[np.ndarray], chunk: int = 512) -> Path:
    """A ``side``² uint16 yx OME-Zarr of which only ``fields`` (one chunk each, along the
    diagonal) are stored: the shape is declared, every other chunk is absent."""
    meta = ImageMeta("yx", (0.1, 0.1), (0.0, 0.0), ("micrometer",) * 2, None, path.stem)
    shutil.rmtree(path, ignore_errors=True)
    array = create_level0(path, (side, side), np.uint16, "yx", (chunk, chunk))
    step = side // max(1, len(fields))
    for i, field in enumerate(fields):
        y = (i * step) // chunk * chunk
        array[y : y + chunk, y : y + chunk] = field[:chunk, :chunk]
    write_metadata(zarr.open_group(str(path), mode="a"), meta, 1, "0.5", np.uint16, (0, 4000))
    return path


def mosaic_input(path: Path, side: int = 1024) -> Path:
    """A ``side``² mosaic of real W2S fields, written as a plain OME-Zarr."""
    fields = w2s_fields((side // 512) ** 2)
    rows = [
        np.hstack(fields[r * (side // 512) : (r + 1) * (side // 512)]) for r in range(side // 512)
    ]
    meta = ImageMeta("yx", (0.1, 0.1), (0.0, 0.0), ("micrometer",) * 2, None, "w2s mosaic")
    return write_image(path, np.vstack(rows), meta, chunks=(512, 512), overwrite=True)


def descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(command: list[str]) -> tuple[float, str, int]:
    """Run ``command``; its wall seconds, stdout and the largest resident size that any one
    process below it reached (sampled every 0.5 s: the Dask workers)."""
    print("$", " ".join(command[2:] if command[:2] == BIGRESTORE[:2] else command), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max([peak] + [rss(p) for p in descendants(process.pid)])
        time.sleep(0.5)
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode:
        sys.exit(f"failed ({process.returncode}): {err[-2000:]}")
    return seconds, out, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("plan-accuracy"))
    parser.add_argument("--side", type=int, default=32768)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mosaic", type=int, default=1024)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}  (cores: {os.cpu_count()})")

    big = sparse_input(args.work / "sparse.zarr", args.side, w2s_fields(4))
    seconds, text, _ = timed([*BIGRESTORE, "plan", str(big), "--samples", "8", "--steps", "50"])
    print(text + f"(plan of the {args.side}² input took {seconds:.1f} s wall, imports included)\n")

    small = mosaic_input(args.work / "mosaic.zarr", args.mosaic)
    options = ["--samples", str(args.samples), "--steps", str(args.steps)]
    seconds, text, _ = timed([*BIGRESTORE, "plan", str(small), *options, "--json"])
    plan = json.loads(text)
    print(f"plan took {seconds:.1f} s; estimate {plan['seconds']}")
    out = args.work / "mosaic.restored.zarr"
    wall, text, peak = timed(
        [*BIGRESTORE, "run", str(small), "-o", str(out), "--overwrite", *options]
    )
    print(text)
    memory = plan["memory_per_worker"]["peak"]
    print(f"peak worker memory: measured {peak / 2**20:.0f} MiB (largest process below the run), "
          f"estimated {memory / 2**20:.0f} MiB")  # fmt: skip
    manifest = json.loads((out / "zarr.json").read_text())["attributes"]["bigrestore"]
    estimated = plan["seconds"]["total"]
    for name, measured in (("run total_seconds", manifest["total_seconds"]), ("run wall", wall)):
        print(f"{name:18s} measured {measured:7.1f} s  estimated {estimated:7.1f} s  "
              f"ratio {estimated / measured:.2f}")  # fmt: skip
    print(f"  compute: measured {manifest['compute_seconds']:.1f} s (cluster start + blocks), "
          f"estimated {plan['seconds']['startup'] + plan['seconds']['compute']:.1f} s")  # fmt: skip
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
