"""What do levels per plane cost on a long time-lapse? `bigrestore run` reads the
percentiles of every plane before its first tile (docs/benchmarks.md section 22), where one
scale per volume reads a strided sample; this times both on the same input and sets them
beside the run that `bigrestore plan` estimates for it (plan itself reads no pixels, so its
wall time is shown only to confirm that it does not change).

The input: a (T, 512, 512) uint16 OME-Zarr time-lapse of real W2S low-light frames
(`../shared/data/w2s/val_low.tif`, 20 fields x 3 channels, repeated), dimmed along t as a
bleaching time-lapse is (x exp(-t / T)), one chunk per frame, pyramid as `bigrestore convert`
writes it.

    python benchmarks/plane_levels_cost.py [--work DIR] [--frames 1000] [--repeats 3]

Prints, for `--normalise-per plane` and `volume`, the median over the repeats (run
alternately) of the statistics alone (`bigrestore.run.levels.input_statistics`, in this
process) and of the wall time of `bigrestore plan --json` (imports and its speed probe
included), and the run time that plan estimates, so the statistics' share of a run is read
off in one line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from bigrestore.io.images import open_image
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image
from bigrestore.run.levels import input_statistics

W2S = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s" / "val_low.tif"
BIGRESTORE = [sys.executable, "-m", "bigrestore.cli"]


def time_lapse(path: Path, frames: int) -> Path:
    """A bleaching (frames, 512, 512) uint16 time-lapse of real W2S frames."""
    source = tifffile.imread(W2S).reshape(-1, 512, 512).astype(np.float32) * 64
    fade = np.exp(-np.arange(frames) / frames).astype(np.float32)
    data = np.stack([source[t % len(source)] * fade[t] for t in range(frames)])
    meta = ImageMeta(
        "tyx", (1.0, 0.1, 0.1), (0.0, 0.0, 0.0), ("second", "micrometer", "micrometer"), None,
        "bleaching W2S time-lapse",
    )  # fmt: skip
    return write_image(path, data.astype(np.uint16), meta, chunks=(1, 512, 512), overwrite=True)


def plan(path: Path, per: str) -> tuple[float, dict]:
    """Wall seconds of `bigrestore plan --json` (imports included) and its JSON."""
    start = time.perf_counter()
    done = subprocess.run(
        [*BIGRESTORE, "plan", str(path), "--normalise-per", per, "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return time.perf_counter() - start, json.loads(done.stdout)


def statistics_seconds(path: Path, per: str) -> float:
    """Seconds of the statistics alone (in this process): what `plan` and `run` read."""
    start = time.perf_counter()
    input_statistics(open_image(path), [0], 1.0, 99.8, per)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("plane-levels-cost"))
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    image = time_lapse(args.work / f"timelapse_{args.frames}.zarr", args.frames)
    print(f"input: {args.frames} x 512² uint16, written in {time.perf_counter() - start:.1f} s")
    walls: dict[str, list[float]] = {"plane": [], "volume": []}
    alone: dict[str, list[float]] = {"plane": [], "volume": []}
    estimates: dict[str, dict] = {}
    for _ in range(args.repeats):
        for per in walls:
            alone[per].append(statistics_seconds(image, per))
            seconds, planned = plan(image, per)
            walls[per].append(seconds)
            estimates[per] = planned["seconds"]
    result = {
        "frames": args.frames,
        "statistics_s": {per: [round(s, 3) for s in alone[per]] for per in alone},
        "statistics_median_s": {per: round(statistics.median(alone[per]), 3) for per in alone},
        "plan_wall_s": {per: [round(s, 2) for s in walls[per]] for per in walls},
        "plan_wall_median_s": {per: round(statistics.median(walls[per]), 2) for per in walls},
        "estimated_run_s": {per: estimates[per]["total"] for per in estimates},
    }
    extra = result["statistics_median_s"]["plane"] - result["statistics_median_s"]["volume"]
    result["plane_extra_s"] = round(extra, 2)
    result["plane_extra_ms_per_frame"] = round(1000 * extra / args.frames, 2)
    result["plane_extra_fraction_of_run"] = extra / result["estimated_run_s"]["plane"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
