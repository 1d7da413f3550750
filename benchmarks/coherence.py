"""Coherent time-lapses and z-stacks: independent vs shared sampling noise along t / z.

    python benchmarks/coherence.py WORKDIR [--model MODEL] [--samples 8] [--steps 8]

Data: real frames from ../shared/data/clean — the Cell Tracking Challenge time-lapse (frames
25-29 plus 20 more, TYX, 8-bit) and the cells3d nuclei stack (slices 40-59, ZYX, 16-bit) —
degraded with the documented Poisson-Gaussian model (bigrestore.train.degrade) at one photon
level per stack (the same camera for every frame, as in a real acquisition). Each is restored
by `bigrestore run` twice: independent noise per frame/slice, and `--shared-noise t` / `z`.

Scores, medians over frames: PSNR of the mean after a least-squares fit to the clean frame;
flicker = mean |x[k+1] - x[k]| of the output over the same for the clean truth (1 = as smooth
as the truth; the raw input's value is printed for scale); second difference likewise; and
the std's calibration, the share of pixels within ±1.645 fitted std (0.90 if calibrated).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import tifffile

from bigrestore.evaluate.metrics import fit_linear, psnr
from bigrestore.io.images import open_image
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import run_settings
from bigrestore.train.degrade import Degradation, clean01, degrade

from report import finish, markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clean"


def stacks(planes: int = 25) -> dict[str, tuple[str, np.ndarray, Degradation]]:
    """The two stacks, each cut to its first ``planes`` frames / slices."""
    ctc = tifffile.imread(DATA / "ctc_timelapse_2d.tif")[5:30, :256, :256][:planes]
    cells = tifffile.imread(DATA / "cells3d_nuclei.tif")[40:60, :, :][:planes]
    return {
        "time-lapse (CTC, t)": ("tyx", ctc, Degradation(8.0, 1.0, 1.0, 0.0, 1.0, 0.0, "uint8")),
        "z-stack (cells3d, z)": (
            "zyx",
            cells,
            Degradation(12.0, 1.0, 1.0, 0.0, 4.0, 100.0, "uint16"),
        ),
    }


def flicker(x: np.ndarray, order: int = 1) -> float:
    return float(np.mean(np.abs(np.diff(x.astype(np.float64), n=order, axis=0))))


def score(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    fitted, zs, psnrs = [], [], []
    t01 = np.stack([clean01(t) for t in truth])
    for m, s, t in zip(mean, std, t01, strict=True):
        a, b = fit_linear(m, t)
        fitted.append(a * m + b)
        psnrs.append(psnr(a * m + b, t, 1.0))
        zs.append(np.mean(np.abs(t - (a * m + b)) <= 1.645 * abs(a) * s))
    out = np.stack(fitted)
    return {
        "psnr": statistics.median(psnrs),
        "flicker": flicker(out) / flicker(t01),
        "flicker2": flicker(out, 2) / flicker(t01, 2),
        "cov90": float(np.median(zs)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--planes", type=int, default=25, help="frames / slices per stack")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for name, (axes, clean, params) in stacks(args.planes).items():
        low = np.stack([degrade(p, params, rng) for p in clean])
        source = write_image(args.work / f"{axes}.zarr", low, default_meta(axes), overwrite=True)
        t01 = np.stack([clean01(t) for t in clean])
        raw01 = np.stack([clean01(r) for r in low])
        base = {"stack": name, "raw flicker": flicker(raw01) / flicker(t01)}
        for shared in ("none", axes[0]):
            out = args.work / f"{axes}.{shared}.zarr"
            settings = run_settings(
                samples=args.samples, steps=args.steps, shared_noise=shared, dtype="float32"
            )
            restore(
                source,
                out,
                model=args.model,
                settings=settings,
                cluster=ClusterSpec(),
                overwrite=out.exists(),
            )
            mean, std = (open_image(out / n).data.compute() for n in ("mean", "std"))
            row = {
                **base,
                "noise": "independent" if shared == "none" else f"shared along {shared}",
                **score(mean, std, clean),
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    table = markdown_table(
        [
            "stack",
            "sampling noise",
            "PSNR",
            "flicker (1 = truth)",
            "2nd difference",
            "cov 90%",
            "raw flicker",
        ],
        [
            [
                r["stack"],
                r["noise"],
                f"{r['psnr']:.2f}",
                f"{r['flicker']:.2f}",
                f"{r['flicker2']:.2f}",
                f"{r['cov90']:.3f}",
                f"{r['raw flicker']:.2f}",
            ]
            for r in rows
        ],
    )
    finish("coherence.py", argv, table, args.work / "coherence.json", rows)


if __name__ == "__main__":
    main()
