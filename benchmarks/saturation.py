"""What a saturated cell, or the fill around a stitched slide, does to the rest of its plane.

    python benchmarks/saturation.py WORK [--photons 10] [--out docs/results/saturation.json]

A held-out clean crop (DSB 2018, rows and columns 128-383) is degraded at ``--photons`` with
the 16-bit camera of benchmarks/photon_sweep.py (gain 2 DU per photon, offset 100 DU). A copy
has a disk of radius 14 px (about 1 % of the pixels) set to 65535, as an over-exposed cell
would be; a third has its left 100 columns (39 %) at 0, as the unacquired fill around a stitched
slide's tiles. All are restored with the run defaults (bundled model, `bigrestore run`'s own
path, the input's dtype) and scored outside the disk only: PSNR after a least-squares fit to
the clean crop mapped to [0, 1] by its 1st / 99.8th percentiles, the median background level
(input and mean, DU), and what the mean holds inside the disk (or the fill).

Run it on two checkouts to compare code: it uses nothing but the public `restore` API.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
from photon_sweep import CAMERA

from bigrestore.evaluate.metrics import psnr
from bigrestore.intensity import fit_line
from bigrestore.io.images import open_image
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import run_settings
from bigrestore.train.degrade import Degradation, degrade

from quality_heldout import unit
from report import finish, markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SATURATED = 65535


def fitted_psnr(values: np.ndarray, truth: np.ndarray) -> float:
    """PSNR of ``values`` after a least-squares fit to ``truth`` (both 1-D, truth in [0, 1])."""
    a, b = fit_line(values, truth)
    return psnr((a * values + b)[None], truth[None], 1.0)  # one row: the pixels kept


def restored_mean(work: Path, key: str, image: np.ndarray) -> np.ndarray:
    """The mean of `bigrestore run` (run defaults) on ``image``."""
    source = write_image(work / f"{key}.zarr", image, default_meta("yx"), overwrite=True)
    out = work / f"{key}.restored.zarr"
    restore(source, out, settings=run_settings(), cluster=ClusterSpec(), overwrite=out.exists())
    return np.asarray(open_image(out / "mean").data.compute(), dtype=np.float64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--photons", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    clean = tifffile.imread(DATA / "clean" / "dsb2018_nuclei_2d.tif")[128:384, 128:384]
    clean = clean.astype(np.float32)
    camera = Degradation(photons=args.photons, dtype="uint16", **CAMERA)
    low = degrade(clean, camera, np.random.default_rng(args.seed))
    yy, xx = np.mgrid[: low.shape[0], : low.shape[1]]
    r2 = (yy - 180) ** 2 + (xx - 70) ** 2
    disk = r2 < 14**2
    saturated = low.copy()
    saturated[disk] = SATURATED
    # an over-exposed cell with soft edges: a blob (sigma 8 px) far brighter than the image,
    # clipped by the camera; scored where it adds under 1 DU (beyond 40 px from its centre)
    blob = 200_000.0 * np.exp(-r2 / (2 * 8.0**2))
    cell = np.minimum(low + blob, SATURATED).astype(low.dtype)
    scored = r2 >= 40**2
    fill = np.zeros(low.shape, dtype=bool)
    fill[:, :100] = True  # the stitched slide's unacquired columns
    rows, payload = [], {"photons": args.photons, "disk_pixels": int(disk.sum()), "images": {}}
    payload["cell_pixels_saturated"] = int((cell == SATURATED).sum())
    images = {
        "plain": low,
        "disk": saturated,
        "cell": cell,
        "fill": np.where(fill, 0, low).astype(low.dtype),
    }
    means = {key: restored_mean(args.work, key, image) for key, image in images.items()}
    cases = (
        ("without the disk", "plain", ~disk),
        ("with a saturated disk", "disk", ~disk),
        ("without the cell (its scored pixels)", "plain", scored),
        ("with a saturated soft cell", "cell", scored),
        ("without the fill (its acquired pixels)", "plain", ~fill),
        ("with a zero fill (stitched slide)", "fill", ~fill),
    )
    for name, key, outside in cases:
        image, mean = images[key], means[key]
        inside = ~outside & (image == SATURATED) if key in ("disk", "cell") else ~outside
        truth = unit(clean)[outside]
        figures = {
            "raw_psnr_outside": fitted_psnr(image[outside].astype(np.float64), truth),
            "mean_psnr_outside": fitted_psnr(mean[outside], truth),
            "input_background": float(np.median(image[outside])),
            "mean_background": float(np.median(mean[outside])),
            "mean_in_disk": [float(mean[inside].min()), float(mean[inside].max())],
        }
        payload["images"][name] = figures
        rows.append(
            [
                name,
                f"{figures['raw_psnr_outside']:.2f}",
                f"{figures['mean_psnr_outside']:.2f}",
                f"{figures['input_background']:.0f} / {figures['mean_background']:.0f}",
                "{:.0f}-{:.0f}".format(*figures["mean_in_disk"]),
            ]
        )
    header = ["image", "raw PSNR outside", "mean PSNR outside", "background in / mean (DU)",
              "mean where saturated / fill (DU)"]  # fmt: skip
    finish("saturation.py", argv, markdown_table(header, rows), args.out, payload)
    print(json.dumps(payload["images"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
