"""Background skipping on a sparse mosaic: evaluations saved, foreground identical. One table.

    python benchmarks/sparse_mosaic.py WORK [--side 1536] [--fill 0.25] [--model MODEL]

A slide-like mosaic: a ``--side``² dark field (camera offset 100, read noise sigma 3, shot
noise of a faint background of 2 photons, 16-bit, gain 10) on which real cells (the clean
cells3d nuclei planes, degraded with Poisson noise at a peak of 30 photons) are pasted as
256² fields on a regular grid, so that about ``--fill`` of the area holds tissue, the rest
coverslip. It is restored twice with the run defaults, ``--skip-background off`` and
``auto``, by the real `run` path (1 worker, 2 threads), and the table gives: network
evaluations and tiles skipped (from the manifests), wall time, the background fraction of
tiles, and whether every pixel that only foreground tiles cover is bit-identical (the
`skipped` output says which tiles were skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

from bigrestore.devices import cpu_name
from bigrestore.io.images import open_image
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import bundled_model_path, run_settings

from report import command_line, finish, markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clean"
FIELD = 256


def mosaic(side: int, fill: float, seed: int = 0) -> np.ndarray:
    """The uint16 mosaic described in the module docstring."""
    rng = np.random.default_rng(seed)
    image = rng.poisson(2.0, (side, side)) * 10.0 + 100.0 + rng.normal(0.0, 3.0, (side, side))
    nuclei = tifffile.imread(DATA / "cells3d_nuclei.tif").astype(np.float64)
    slots = [(y, x) for y in range(0, side, FIELD) for x in range(0, side, FIELD)]
    chosen = rng.choice(len(slots), size=max(1, round(fill * len(slots))), replace=False)
    for k, index in enumerate(sorted(chosen)):
        y, x = slots[index]
        plane = nuclei[(10 + 3 * k) % len(nuclei)]
        photons = plane / np.percentile(plane, 99.9) * 30.0
        image[y : y + FIELD, x : x + FIELD] += rng.poisson(photons) * 10.0
    return np.clip(np.round(image), 0, 65535).astype(np.uint16)


def restore_once(source: Path, out: Path, model: Path, mode: str) -> tuple[dict, float]:
    settings = run_settings(skip_background=mode, dtype="float32")
    cluster = ClusterSpec(workers=1, threads_per_worker=2)
    started = time.perf_counter()
    result = restore(source, out, model=model, settings=settings, cluster=cluster, overwrite=True)
    return result.manifest, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--side", type=int, default=1536)
    parser.add_argument("--fill", type=float, default=0.25)
    parser.add_argument("--model", type=Path, default=bundled_model_path())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    source = write_image(
        args.work / "mosaic.zarr",
        mosaic(args.side, args.fill),
        default_meta("yx"),
        chunks=(512, 512),
        overwrite=True,
    )
    runs = {}
    for mode in ("off", "auto"):
        runs[mode] = restore_once(source, args.work / f"{mode}.zarr", args.model, mode)
        print(mode, json.dumps({k: runs[mode][0][k] for k in ("background",)}), file=sys.stderr)
    (off, off_s), (auto, auto_s) = runs["off"], runs["auto"]
    skipped = np.asarray(open_image(args.work / "auto.zarr" / "skipped").data.compute())[..., :, :]
    foreground = skipped.reshape(args.side, args.side) == 0
    identical = {}
    for name in ("mean", "std"):
        a = np.asarray(zarr.open_array(str(args.work / "auto.zarr" / name / "0"), mode="r")[...])
        b = np.asarray(zarr.open_array(str(args.work / "off.zarr" / name / "0"), mode="r")[...])
        a, b = a.reshape(args.side, args.side), b.reshape(args.side, args.side)
        identical[name] = bool(np.array_equal(a[foreground], b[foreground]))
    tiles = off["tiles_this_run"]
    rows = {
        "tiles": tiles,
        "background tiles skipped": auto["skipped_tiles_this_run"],
        "background fraction of tiles": round(auto["skipped_tiles_this_run"] / tiles, 3),
        "evaluations, skip off": off["network_evaluations_this_run"],
        "evaluations, skip auto": auto["network_evaluations_this_run"],
        "evaluations saved": round(
            1 - auto["network_evaluations_this_run"] / off["network_evaluations_this_run"], 3
        ),
        "wall s, skip off / auto": f"{off_s:.0f} / {auto_s:.0f}",
        "foreground-only pixels bit-identical (mean, std)": identical,
        "foreground-only pixels": int(foreground.sum()),
    }
    report = {
        "command": command_line("sparse_mosaic.py", argv),
        "cpu": cpu_name(),
        "rows": rows,
        "background": auto["background"],
    }
    table = markdown_table(["quantity", "value"], list(rows.items()))
    finish("sparse_mosaic.py", argv, table, args.out, report)


if __name__ == "__main__":
    main()
