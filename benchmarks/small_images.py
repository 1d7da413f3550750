"""Images smaller than the default tile: the padded default tile against a tile of the image.

    python benchmarks/small_images.py WORK [--photons 10] [--out FILE.json]

The centre 128² of each held-out clean crop of benchmarks/photon_sweep.py (cells3d, DSB, CTC;
10 images), degraded at ``--photons`` by its 16-bit camera, is restored as one stack with the
run defaults: once with the default tile (twice the model's training patch, 256 for the bundled
model: each 128² plane is reflect-padded to it) and once with ``tile=128`` (the plane itself).
Each plane is scored by PSNR after a least-squares fit to its clean crop mapped to [0, 1]; the
table gives the median over the images, the wall time of each run, and the median difference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from photon_sweep import CAMERA, clean_crops
from saturation import fitted_psnr

from bigrestore.io.images import open_image
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import run_settings
from bigrestore.train.degrade import Degradation, degrade

from quality_heldout import unit
from report import finish, markdown_table

SIDE = 128


def small_crops() -> tuple[list[str], np.ndarray]:
    """Names and a (n, 128, 128) stack: each crop's centre columns, within its own rows."""
    names, stack, rows = clean_crops()
    x0 = (stack.shape[-1] - SIDE) // 2
    planes = []
    for plane, own in zip(stack, rows, strict=True):
        y0 = (own - SIDE) // 2
        planes.append(plane[y0 : y0 + SIDE, x0 : x0 + SIDE])
    return names, np.stack(planes)


def restored(work: Path, key: str, low: np.ndarray, **changes: object) -> tuple[np.ndarray, float]:
    """The mean of a run with the defaults (and ``changes``) on the stack; its wall seconds."""
    source = write_image(work / f"{key}.zarr", low, default_meta("tyx"), overwrite=True)
    out = work / f"{key}.restored.zarr"
    start = time.perf_counter()
    settings = run_settings(dtype="float32", **changes)
    restore(source, out, settings=settings, cluster=ClusterSpec(), overwrite=out.exists())
    seconds = time.perf_counter() - start
    return np.asarray(open_image(out / "mean").data.compute(), dtype=np.float64), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--photons", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    names, clean = small_crops()
    camera = Degradation(photons=args.photons, dtype="uint16", **CAMERA)
    rng = np.random.default_rng(1)
    low = np.stack([degrade(plane, camera, rng) for plane in clean])
    runs = {"default tile (256, padded)": {}, "tile 128 (the image)": {"tile": SIDE}}
    payload: dict = {"photons": args.photons, "images": names, "runs": {}}
    rows, per_image = [], {}
    for label, changes in runs.items():
        mean, seconds = restored(args.work, f"tile{changes.get('tile', 0)}", low, **changes)
        psnrs = [fitted_psnr(m.ravel(), unit(c).ravel()) for m, c in zip(mean, clean, strict=True)]
        per_image[label] = psnrs
        payload["runs"][label] = {"psnr": psnrs, "seconds": seconds}
        rows.append([label, f"{np.median(psnrs):.2f}", f"{seconds:.1f}"])
    first, second = per_image.values()
    difference = np.subtract(second, first)
    payload["median_difference"] = float(np.median(difference))
    rows.append(["tile 128 minus default", f"{np.median(difference):+.2f} (median per image)",
                 f"{payload['runs']['tile 128 (the image)']['seconds'] / payload['runs']['default tile (256, padded)']['seconds']:.2f}x"])  # fmt: skip
    header = ["run", "median PSNR (dB)", "wall seconds"]
    finish("small_images.py", argv, markdown_table(header, rows), args.out, payload)


if __name__ == "__main__":
    main(sys.argv[1:])
