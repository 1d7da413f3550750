"""Grain left in a restoration: the high-pass std of the restored mean per 64² block.

    python benchmarks/tile_grain.py --run D=WORK_D --run E=WORK_E [--w2s-fields 5] [--crop 4]
        [--figure docs/img/w2s_tile_grain.png]

Each WORK is a directory that `benchmarks/quality_heldout.py WORK --model MODEL --w2s-fields N`
filled (its W2S.restored.zarr holds the restored means of the W2S crops, in order). Each mean
is fitted to its ground truth (least squares, as quality_heldout scores), its high-pass part is
taken (the image minus its Gaussian blur of 2 px), and the std of that part is measured in
every 64² block, as a ratio to the same block's std in the ground truth (whose own fine
texture and residual noise set the scale). A restoration that keeps the input's grain in one
tile shows it as blocks with a ratio near or above 1; a clean one stays well below. Printed
per run: the largest ratio over all crops (and where), the median ratio, the PSNR of
``--crop`` and the median PSNR; the figure shows
``--crop`` restored by every run beside its ground truth, on one display range.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from bigrestore.evaluate.figures import new_figure
from bigrestore.evaluate.metrics import psnr
from bigrestore.intensity import fit_line
from bigrestore.io.images import open_image

from quality_heldout import held_out_sets, unit
from report import finish, markdown_table

BLOCK = 64


def block_grain(image: np.ndarray) -> np.ndarray:
    """High-pass std of ``image`` (2D, sides a multiple of BLOCK) in every BLOCK² block."""
    fine = image - gaussian_filter(image, 2.0)
    ny, nx = image.shape[0] // BLOCK, image.shape[1] // BLOCK
    return fine.reshape(ny, BLOCK, nx, BLOCK).std(axis=(1, 3))


def fitted_means(work: Path, truths: list[np.ndarray]) -> list[np.ndarray]:
    """The restored means of a quality_heldout W2S run, each fitted to its ground truth."""
    means = np.asarray(
        open_image(work / "W2S.restored.zarr" / "mean").data.compute(), dtype=np.float64
    )
    if means.shape[0] != len(truths):
        raise SystemExit(f"{work}: {means.shape[0]} restored crops, expected {len(truths)}")
    fitted = []
    for mean, truth in zip(means, truths, strict=True):
        a, b = fit_line(mean, truth)
        fitted.append(a * mean + b)
    return fitted


def save_figure(path: Path, crop: int, images: dict[str, np.ndarray]) -> None:
    """One panel per image of the crop, all on the ground truth's display range."""
    lo, hi = np.percentile(images["truth"], [0.5, 99.5])
    fig = new_figure(3.2 * len(images), 3.5)
    for k, (name, image) in enumerate(images.items()):
        ax = fig.add_subplot(1, len(images), k + 1)
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(f"{name}, crop {crop}", fontsize=9)
        ax.set_axis_off()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=WORK (repeat)")
    parser.add_argument("--w2s-fields", type=int, default=5)
    parser.add_argument("--crop", type=int, default=4, help="crop shown and scored alone")
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the rows")
    args = parser.parse_args(argv)
    _, high = held_out_sets(None, args.w2s_fields)["W2S validation (real)"]
    truths = [unit(h) for h in high]
    truth_grain = np.stack([block_grain(t) for t in truths])
    rows = []
    shown = {}
    for entry in args.run:
        name, _, work = entry.partition("=")
        means = fitted_means(Path(work), truths)
        grain = np.stack([block_grain(m) for m in means]) / truth_grain
        where = np.unravel_index(int(grain.argmax()), grain.shape)
        psnrs = [psnr(m, t, 1.0) for m, t in zip(means, truths, strict=True)]  # already fitted
        rows.append(
            {
                "run": name,
                "max": float(grain.max()),
                "where": f"crop {where[0]}, block ({where[1]}, {where[2]})",
                "median": float(np.median(grain)),
                "crop_psnr": psnrs[args.crop],
                "psnr_median": statistics.median(psnrs),
            }
        )
        shown[name] = means[args.crop]
    shown["truth"] = truths[args.crop]
    if args.figure:
        save_figure(args.figure, args.crop, shown)
    table = markdown_table(
        [
            "run",
            "largest block grain / truth's (where)",
            "median block grain / truth's",
            f"crop {args.crop} PSNR",
            "median PSNR",
        ],
        [
            [
                r["run"],
                f"{r['max']:.2f} ({r['where']})",
                f"{r['median']:.2f}",
                f"{r['crop_psnr']:.2f}",
                f"{r['psnr_median']:.2f}",
            ]
            for r in rows
        ],
    )
    finish("tile_grain.py", argv, table, args.out, rows)


if __name__ == "__main__":
    main()
