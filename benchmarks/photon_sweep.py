"""Where the bundled model is a good start: its margin over the best Gaussian by photon level.

    python benchmarks/photon_sweep.py WORK [--model MODEL] [--photons 1 3 10 30 100 300 1000]

The held-out clean images of benchmarks/make_training_set.py (cells3d z 50-58 even, DSB rows
384-511 as two 128 x 256 crops, CTC frames 25, 27, 29; held out from the bundled model's
training: other planes, rows and frames of the same sources are in it) are degraded with the
documented camera model (bigrestore.train.degrade) at one fixed photon level at a time, as a
16-bit sCMOS-like camera would record them: gain 2 DU per photon, offset 100 DU, read noise
1.5 photons rms, background 1 photon per pixel, no blur. Levels outside the training set's photon range
(bigrestore.train.degrade.PHOTONS, [3, 100] for the bundled model) show how a model
extrapolates to darker and brighter microscopes than it was trained for.

Every level is restored as one TYX stack through `bigrestore run`'s own path (run defaults,
levels per plane) and scored as benchmarks/quality_heldout.py scores: median PSNR after a
least-squares fit against the ground truth mapped by its 1st / 99.8th percentiles to [0, 1],
beside the Gaussian whose sigma is chosen per image with the ground truth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import tifffile

from bigrestore.train.degrade import Degradation, degrade

from quality_heldout import CROP, centre, restore_stack, score_images
from report import finish, markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTONS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
#: The 16-bit camera of every level (units as in bigrestore.train.degrade).
CAMERA = {"background": 1.0, "read_noise": 1.5, "blur": 0.0, "gain": 2.0, "offset": 100.0}


def clean_crops() -> tuple[list[str], np.ndarray, list[int]]:
    """Names, a (n, 256, 256) float32 stack of the held-out test splits' clean crops, and the
    rows of each crop that are its own (the DSB band is 128 rows, padded for the stack)."""
    cells = tifffile.imread(DATA / "clean" / "cells3d_nuclei.tif")
    dsb = tifffile.imread(DATA / "clean" / "dsb2018_nuclei_2d.tif")
    ctc = tifffile.imread(DATA / "clean" / "ctc_timelapse_2d.tif")
    crops = {f"cells3d z{z}": centre(cells[z]) for z in range(50, 60, 2)}
    crops.update({f"dsb rows 384-511 x{x}": dsb[384:512, x : x + CROP] for x in (0, CROP)})
    crops.update({f"ctc t{t}": centre(ctc[t, :510, :510]) for t in (25, 27, 29)})
    # One stack needs one plane shape: the DSB band is padded by reflection to 256 rows, and
    # only its own rows are scored.
    stack = [
        np.pad(c, ((0, CROP - c.shape[0]), (0, 0)), mode="reflect") if c.shape[0] < CROP else c
        for c in crops.values()
    ]
    return list(crops), np.stack(stack).astype(np.float32), [c.shape[0] for c in crops.values()]


def sweep_level(
    work: Path,
    photons: float,
    names: list[str],
    clean: np.ndarray,
    rows: list[int],
    args: argparse.Namespace,
) -> dict:
    """One table row: the crops degraded at ``photons``, restored as one stack, scored."""
    rng = np.random.default_rng([int(photons * 10), args.seed])
    params = Degradation(photons=photons, dtype="uint16", **CAMERA)
    low = np.stack([degrade(plane, params, rng) for plane in clean])
    restored = restore_stack(work, f"photons_{photons:g}", low, args.model, args)

    def own(images: np.ndarray) -> list[np.ndarray]:
        """Each crop's own rows: the DSB band's padding is not scored."""
        return [image[:n] for image, n in zip(images, rows, strict=True)]

    scored = score_images(own(low), own(clean), own(restored))
    per = {k: [v[0] for v in scored[k]] for k in ("raw", "gaussian", "ddpm")}  # PSNR alone
    per["sigma"] = scored["sigma"]
    margins = [d - g for d, g in zip(per["ddpm"], per["gaussian"], strict=True)]
    return {
        "photons": photons,
        "images": len(names),
        **{f"{k}_psnr": statistics.median(per[k]) for k in ("raw", "gaussian", "ddpm")},
        "margin_median": statistics.median(margins),
        "better": sum(m > 0 for m in margins),
        "sigma_median": statistics.median(per["sigma"]),
        "per_image": {
            name: {k: round(per[k][i], 3) for k in ("raw", "gaussian", "ddpm")}
            for i, name in enumerate(names)
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--photons", type=float, nargs="+", default=list(PHOTONS))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    names, clean, rows_of = clean_crops()
    rows = []
    for photons in args.photons:
        rows.append(sweep_level(args.work, photons, names, clean, rows_of, args))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_image"}), file=sys.stderr)
    table = markdown_table(
        [
            "photons (1st-99.8th pct)",
            "images",
            "raw",
            "best Gaussian",
            "DDPM-avg",
            "margin",
            "images better",
        ],
        [
            [
                f"{r['photons']:g}",
                r["images"],
                f"{r['raw_psnr']:.2f}",
                f"{r['gaussian_psnr']:.2f}",
                f"{r['ddpm_psnr']:.2f}",
                f"{r['ddpm_psnr'] - r['gaussian_psnr']:+.2f}",
                f"{r['better']} of {r['images']}",
            ]
            for r in rows
        ],
    )
    finish("photon_sweep.py", argv, table, args.work / "photon_sweep.json", rows)


if __name__ == "__main__":
    main()
