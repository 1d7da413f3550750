"""Build the generalist training set of the bundled model: real W2S pairs plus realistic
degradations (bigrestore.train.degrade) of the clean images in ../shared/data.

    python benchmarks/make_training_set.py OUTDIR
    python benchmarks/make_training_set.py OUTDIR --data gpu_train --w2s-fields 24   # GPU kit

Writes OME-Zarr pairs (``*_low.zarr`` condition, ``*_high.zarr`` target, TYX or TCYX stacks
of independent planes) and ``OUTDIR/training_set.json``: every store, its split, the source
planes it holds and the degradation parameters of every synthetic plane. Splits share no
source image:

| source | training | calibration | held-out test |
| --- | --- | --- | --- |
| W2S train split (fields 001-060, real pairs) | fields 001-054 | fields 055-060 | (W2S val 061-080, not here) |
| W2S high images, degraded again | fields 001-054 | — | — |
| cells3d nuclei (60 z-slices, 16-bit confocal) | z 0-44 | — | z 50-59 |
| DSB2018 nuclei (512² 16-bit) | rows 0-383 | — | rows 384-511 |
| Cell Tracking Challenge time-lapse (30 frames, 8-bit) | frames 0-21 | — | frames 25-29 |

It also checks the degradation model against the real W2S low-SNR frames with one estimator
(bigrestore.train.degrade.poisson_gaussian_fit): photons between the 1st and 99.8th percentile
of the real frames vs of the synthetic ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile

from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.train.degrade import PHOTONS, degrade, poisson_gaussian_fit, random_degradation

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DRAWS = {"cells3d": 2, "dsb": 8, "ctc": 2}
TRAIN_FIELDS = 54  # W2S fields 001-054 train; 055-060 calibrate


def save_pair(out: Path, name: str, low: np.ndarray, high: np.ndarray, axes: str) -> dict[str, str]:
    meta = default_meta(axes)
    paths = {}
    for kind, data in (("low", low), ("high", high)):
        path = out / f"{name}_{kind}.zarr"
        chunks = tuple(
            1 if a in "tc" else min(256, n) for a, n in zip(axes, data.shape, strict=True)
        )
        write_image(path, data, meta, chunks=chunks, overwrite=True)
        paths[kind] = str(path)
    return paths


def synthetic(
    clean_planes: list[np.ndarray],
    draws: int,
    dtypes: tuple[str, ...],
    rng: np.random.Generator,
    photons: tuple[float, float] = PHOTONS,
):
    """Degraded copies of every plane: (low stack, high stack float32, parameters)."""
    lows, highs, params = [], [], []
    for plane in clean_planes:
        for _ in range(draws):
            p = random_degradation(rng, dtypes[int(rng.integers(len(dtypes)))], photons)
            lows.append(degrade(plane, p, rng).astype(np.uint16))
            highs.append(plane.astype(np.float32))
            params.append(p.to_dict())
    return np.stack(lows), np.stack(highs), params


def w2s_sets(
    out: Path,
    rng: np.random.Generator,
    data: Path,
    fields: int,
    photons: tuple[float, float] = PHOTONS,
) -> list[dict]:
    """W2S pairs of fields 1..``fields`` (at most 54) for training, 55-60 for calibration
    when the stacks hold them, and the training fields' high images degraded again."""
    low = tifffile.imread(data / "w2s" / "train_low.tif")
    high = tifffile.imread(data / "w2s" / "train_high.tif")
    n = min(fields, TRAIN_FIELDS, low.shape[0])
    sets = [
        {
            "name": "w2s_train",
            "split": "train",
            "source": f"W2S fields 001-{n:03d} (real)",
            **save_pair(out, "w2s_train", low[:n], high[:n], "tcyx"),
        }
    ]
    if low.shape[0] > TRAIN_FIELDS:
        sets.append(
            {
                "name": "w2s_calib",
                "split": "calibration",
                "source": f"W2S fields {TRAIN_FIELDS + 1:03d}-{low.shape[0]:03d} (real)",
                **save_pair(out, "w2s_calib", low[TRAIN_FIELDS:], high[TRAIN_FIELDS:], "tcyx"),
            }
        )
    planes = [high[f, c] for f in range(n) for c in range(3)]
    s_low, s_high, params = synthetic(planes, 1, ("uint8",), rng, photons)
    sets.append(
        {
            "name": "w2s_synth",
            "split": "train",
            "source": f"W2S high fields 001-{n:03d}, degraded",
            "params": params,
            **save_pair(out, "w2s_synth", s_low.astype(np.uint8), s_high, "tyx"),
        }
    )
    return sets


def clean_sets(
    out: Path, rng: np.random.Generator, data: Path, photons: tuple[float, float] = PHOTONS
) -> list[dict]:
    cells = tifffile.imread(data / "clean" / "cells3d_nuclei.tif")
    dsb = tifffile.imread(data / "clean" / "dsb2018_nuclei_2d.tif")
    ctc = tifffile.imread(data / "clean" / "ctc_timelapse_2d.tif")
    sources = {
        ("cells3d", "train"): [cells[z] for z in range(45)],
        ("cells3d", "test"): [cells[z] for z in range(50, 60)],
        ("dsb", "train"): [dsb[:384]],
        ("dsb", "test"): [dsb[384:]],
        ("ctc", "train"): [ctc[t, :510, :510] for t in range(22)],
        ("ctc", "test"): [ctc[t, :510, :510] for t in range(25, 30)],
    }
    sets = []
    for (name, split), planes in sources.items():
        low, high, params = synthetic(planes, DRAWS[name], ("uint8", "uint16"), rng, photons)
        label = f"{name}_{split}"
        sets.append(
            {
                "name": label,
                "split": split,
                "source": name,
                "params": params,
                **save_pair(out, label, low, high, "tyx"),
            }
        )
    return sets


def noise_check(
    rng: np.random.Generator, data: Path, fields: int, photons: tuple[float, float] = PHOTONS
) -> dict[str, list[float]]:
    """Photons between the 1st and 99.8th percentile: real W2S low frames vs synthetic ones
    made from the same fields' high images (same estimator)."""
    low = tifffile.imread(data / "w2s" / "train_low.tif")
    high = tifffile.imread(data / "w2s" / "train_high.tif")
    real, synth = [], []
    for f in range(0, min(fields, TRAIN_FIELDS, low.shape[0]), 3):
        for c in range(3):
            real.append(poisson_gaussian_fit(low[f, c], high[f, c])[2])
            made = degrade(high[f, c], random_degradation(rng, "uint8", photons), rng)
            synth.append(poisson_gaussian_fit(made, high[f, c])[2])
    return {"real": real, "synthetic": synth}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", type=Path, default=DATA, help="folder with w2s/ and clean/ (../shared/data)"
    )
    parser.add_argument(
        "--w2s-fields",
        type=int,
        default=TRAIN_FIELDS,
        help="W2S training fields to use, 1..N (at most 54; the GPU kit carries fewer)",
    )
    parser.add_argument(
        "--photons",
        type=float,
        nargs=2,
        default=list(PHOTONS),
        metavar=("LOW", "HIGH"),
        help="range of the photon levels drawn (log-uniform; default: the bundled model's, "
        "bigrestore.train.degrade.PHOTONS); section 25 of docs/benchmarks.md tried 3 1000",
    )
    args = parser.parse_args(argv)
    photons = (args.photons[0], args.photons[1])
    if not 0 < photons[0] <= photons[1]:
        parser.error(f"--photons: expected 0 < LOW <= HIGH, found {photons[0]:g} {photons[1]:g}")
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    sets = w2s_sets(args.out, rng, args.data, args.w2s_fields, photons) + clean_sets(
        args.out, rng, args.data, photons
    )
    check = noise_check(np.random.default_rng(args.seed + 1), args.data, args.w2s_fields, photons)
    summary = {
        k: [round(float(np.percentile(v, q)), 1) for q in (10, 50, 90)] for k, v in check.items()
    }
    record = {
        "command": " ".join(["python", "benchmarks/make_training_set.py", *(argv or sys.argv[1:])]),
        "photons_range": list(photons),
        "sets": sets,
        "noise_check_photons_p10_p50_p90": summary,
    }
    (args.out / "training_set.json").write_text(json.dumps(record, indent=1))
    for s in sets:
        print(f"{s['split']:12s} {s['name']:16s} {s['source']}")
    print(
        f"photons between p1 and p99.8 (10th / 50th / 90th percentile over images): real W2S {summary['real']}, "
        f"synthetic {summary['synthetic']}"
    )


if __name__ == "__main__":
    main()
