"""Where a model's W2S error lives: fine grain or large-scale brightness (the target-frame check).

    python benchmarks/target_frame.py WORK --model NAME=MODEL [--model NAME=MODEL ...] [--fields 1]

For the 256² centre crops of the first ``--fields`` W2S validation fields (3 channels each),
every model restores the crops through `bigrestore run`'s own path with the run defaults
(8 DDIM steps x 8 samples, tile 128, overlap 32). Its mean is fitted to the ground truth
(least squares, truth mapped by its 1st / 99.8th percentiles to [0, 1]) and the residual is
split into a fine part (residual minus its Gaussian blur, sigma 2 px) and a coarse part (the
blur). A network that has to guess each patch's brightness map (target_frame ``own`` on a
mixed training set) shows a large coarse part with steps at the 128-px tile borders; the
per-image best Gaussian (section 10's oracle) is printed beside it. ``MODEL`` ``bundled``
is the model bigrestore ships.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy.ndimage import gaussian_filter

from bigrestore.evaluate.metrics import fit_linear, psnr

from quality_heldout import DATA, best_gaussian, centre, restore_stack, unit
from report import finish, markdown_table

COARSE_SIGMA = 2.0


def residual_parts(mean: np.ndarray, gt01: np.ndarray) -> dict[str, float]:
    """PSNR of the fitted mean and the std of the fine and coarse parts of its residual."""
    a, b = fit_linear(mean.astype(np.float64), gt01)
    fitted = a * mean + b
    residual = fitted - gt01
    coarse = gaussian_filter(residual, COARSE_SIGMA)
    return {
        "psnr": psnr(fitted, gt01, 1.0),
        "fine_std": float((residual - coarse).std()),
        "coarse_std": float(coarse.std()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH or NAME=bundled")
    parser.add_argument("--fields", type=int, default=1)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    low = centre(tifffile.imread(DATA / "w2s" / "val_low.tif")[: args.fields]).reshape(-1, 256, 256)
    high = centre(tifffile.imread(DATA / "w2s" / "val_high.tif")[: args.fields])
    truths = [unit(h) for h in high.reshape(-1, 256, 256)]
    sampling = argparse.Namespace(samples=8, steps=8)  # the run defaults
    rows = [
        {
            "model": "best Gaussian (oracle)",
            "crops": [best_gaussian(lo, gt)[0] for lo, gt in zip(low, truths, strict=True)],
        }
    ]
    for entry in args.model:
        name, _, path = entry.partition("=")
        model = None if path == "bundled" else Path(path)
        means = restore_stack(args.work, name, low, model, sampling)
        parts = [residual_parts(m, gt) for m, gt in zip(means, truths, strict=True)]
        rows.append(
            {
                "model": name,
                "crops": [p["psnr"] for p in parts],
                "fine_std": [p["fine_std"] for p in parts],
                "coarse_std": [p["coarse_std"] for p in parts],
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    def residual_stds(row: dict) -> str:
        if "fine_std" not in row:
            return "—"
        return f"{np.mean(row['fine_std']):.4f} / {np.mean(row['coarse_std']):.4f}"

    table = markdown_table(
        ["model", "PSNR per crop (dB)", "mean", "fine / coarse residual std"],
        [
            [
                r["model"],
                " / ".join(f"{p:.2f}" for p in r["crops"]),
                f"{np.mean(r['crops']):.2f}",
                residual_stds(r),
            ]
            for r in rows
        ],
    )
    finish("target_frame.py", argv, table, args.work / "target_frame.json", rows)


if __name__ == "__main__":
    main()
