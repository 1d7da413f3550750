"""Honest quality on held-out data: raw, the strongest Gaussian filter, and a model's DDPM-avg.

    python benchmarks/quality_heldout.py WORK --model MODEL [--set SETDIR] [--samples 8] [--steps 8]
        [--w2s-fields 20]   (--w2s-fields 0: only the synthetic sets) [--tile T --overlap O]
    [--normalise-per plane|volume]

Held-out sets (no source image of them is in the bundled model's training data):
  * W2S validation fields 061-080 (real pairs), 256² centre crops, 3 channels each;
  * the held-out test splits of benchmarks/make_training_set.py SETDIR: cells3d z 50-59, DSB
    rows 384-511, CTC frames 25-29, degraded with the documented model (bigrestore.train.degrade)
    at random photon levels, 256² centre crops.
Every method is scored the same way: median PSNR and MS-SSIM after a least-squares intensity
fit (a·x + b) of the method's image to the ground truth, with the ground truth mapped by its
1st / 99.8th percentiles to [0, 1] (data range 1). The Gaussian is the strongest classic
baseline: for every image the sigma (0.5-16 px, bigrestore.evaluate.baselines.SIGMA_GRID) that
maximises the fitted PSNR against that image's own ground truth — it uses the answer, so it is
an upper bound of a Gaussian filter. DDPM-avg is the real `bigrestore run` path (tiles,
blending, the run's settings). Each set is restored as one stack (its crops along t); with the
run's default levels (``normalise_per`` plane) every crop is scaled by its own percentiles, as
it would be restored alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tifffile
from scipy.ndimage import gaussian_filter

from bigrestore.evaluate.baselines import SIGMA_GRID
from bigrestore.evaluate.metrics import fit_linear, ms_ssim, psnr
from bigrestore.io.images import open_image
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import run_settings

from report import finish, markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CROP = 256


def unit(gt: np.ndarray) -> np.ndarray:
    low, high = np.percentile(gt, [1.0, 99.8])
    return (gt.astype(np.float64) - low) / max(high - low, 1e-12)


def scores(pred: np.ndarray, gt01: np.ndarray) -> tuple[float, float]:
    a, b = fit_linear(pred.astype(np.float64), gt01)
    fitted = a * pred + b
    return psnr(fitted, gt01, 1.0), ms_ssim(np.clip(fitted, 0, 1), np.clip(gt01, 0, 1), 1.0)


def best_gaussian(raw: np.ndarray, gt01: np.ndarray) -> tuple[float, float, float]:
    results = [(scores(gaussian_filter(raw.astype(np.float64), s), gt01), s) for s in SIGMA_GRID]
    (p, m), sigma = max(results, key=lambda r: r[0][0])
    return p, m, float(sigma)


def centre(a: np.ndarray) -> np.ndarray:
    y0, x0 = (a.shape[-2] - CROP) // 2, (a.shape[-1] - CROP) // 2
    return a[..., y0 : y0 + CROP, x0 : x0 + CROP]


def held_out_sets(
    set_dir: Path | None, w2s_fields: int = 20
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (low, high) stacks of 2D crops (n, CROP, CROP); the first ``w2s_fields`` of the
    W2S validation fields (0: none, only the synthetic sets)."""
    sets = {}
    if w2s_fields > 0:
        low = tifffile.imread(DATA / "w2s" / "val_low.tif")[:w2s_fields]
        high = tifffile.imread(DATA / "w2s" / "val_high.tif")[:w2s_fields]
        sets["W2S validation (real)"] = (
            centre(low).reshape(-1, CROP, CROP),
            centre(high).reshape(-1, CROP, CROP),
        )
    for name in ("cells3d_test", "dsb_test", "ctc_test"):
        if set_dir is None or not (set_dir / f"{name}_low.zarr").exists():
            continue
        lo = np.asarray(open_image(set_dir / f"{name}_low.zarr").data.compute())
        hi = np.asarray(open_image(set_dir / f"{name}_high.zarr").data.compute())
        if lo.shape[-2] < CROP:  # DSB's held-out band is 128 rows: keep it whole
            sets[f"{name} (synthetic)"] = (lo[..., :, :CROP], hi[..., :, :CROP])
        else:
            sets[f"{name} (synthetic)"] = (centre(lo), centre(hi))
    return sets


def restore_stack(
    work: Path,
    name: str,
    low: np.ndarray,
    model: Path | None,
    args: argparse.Namespace,
    **changes: object,
) -> np.ndarray:
    """The mean of `bigrestore run` on a stack of crops (run defaults, ``args``' samples and
    steps, any other run settings in ``changes``)."""
    source = write_image(work / f"{name}.zarr", low, default_meta("tyx"), overwrite=True)
    out = work / f"{name}.restored.zarr"
    settings = run_settings(samples=args.samples, steps=args.steps, dtype="float32", **changes)
    restore(
        source, out, model=model, settings=settings, cluster=ClusterSpec(), overwrite=out.exists()
    )
    return np.asarray(open_image(out / "mean").data.compute())


def score_images(
    low: Iterable[np.ndarray], high: Iterable[np.ndarray], restored: Iterable[np.ndarray]
) -> dict[str, list]:
    """Per image: (PSNR, MS-SSIM) of the raw input ("raw"), the best Gaussian ("gaussian") and
    the restoration ("ddpm") against the high image, and the Gaussian's sigma ("sigma")."""
    per: dict[str, list] = {"raw": [], "gaussian": [], "ddpm": [], "sigma": []}
    for lo, hi, re in zip(low, high, restored, strict=True):
        gt01 = unit(hi)
        per["raw"].append(scores(lo, gt01))
        p, m, s = best_gaussian(lo, gt01)
        per["gaussian"].append((p, m))
        per["sigma"].append(s)
        per["ddpm"].append(scores(re, gt01))
    return per


def score_set(
    work: Path,
    name: str,
    low: np.ndarray,
    high: np.ndarray,
    model: Path | None,
    args: argparse.Namespace,
) -> dict:
    """One table row: medians of raw, best-Gaussian and DDPM-avg PSNR / MS-SSIM over a set."""
    started = time.perf_counter()
    chosen = {k: getattr(args, k, None) for k in ("tile", "overlap", "normalise_per")}
    changes = {k: v for k, v in chosen.items() if v is not None}  # None: the run's default
    restored = restore_stack(work, name.split()[0].replace("/", "_"), low, model, args, **changes)
    seconds = time.perf_counter() - started
    per = score_images(low, high, restored)
    return {
        "set": name,
        "images": len(low),
        "seconds": round(seconds, 1),
        **{
            f"{k}_psnr": statistics.median(v[0] for v in per[k])
            for k in ("raw", "gaussian", "ddpm")
        },
        **{
            f"{k}_msssim": statistics.median(v[1] for v in per[k])
            for k in ("raw", "gaussian", "ddpm")
        },
        "sigma_median": statistics.median(per["sigma"]),
        "per_image_psnr": {k: [round(v[0], 3) for v in per[k]] for k in ("gaussian", "ddpm")},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--set", dest="set_dir", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--w2s-fields", type=int, default=20, help="W2S validation fields used (0: none)"
    )
    parser.add_argument("--tile", type=int, default=None, help="default: the model's tile")
    parser.add_argument("--overlap", type=int, default=None, help="default: a quarter of the tile")
    parser.add_argument(
        "--normalise-per",
        choices=("plane", "volume"),
        default=None,
        help="default: the run's (plane: every crop at its own levels); volume: one scale for "
        "each set's whole stack, as before docs/benchmarks.md section 22",
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (low, high) in held_out_sets(args.set_dir, args.w2s_fields).items():
        rows.append(score_set(args.work, name, low, high, args.model, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = markdown_table(
        [
            "held-out set",
            "images",
            "raw",
            "best Gaussian (per image)",
            "bigrestore DDPM-avg",
            "margin",
            "MS-SSIM G / D",
        ],
        [
            [
                r["set"],
                r["images"],
                f"{r['raw_psnr']:.2f}",
                f"{r['gaussian_psnr']:.2f}",
                f"{r['ddpm_psnr']:.2f}",
                f"{r['ddpm_psnr'] - r['gaussian_psnr']:+.2f}",
                f"{r['gaussian_msssim']:.3f} / {r['ddpm_msssim']:.3f}",
            ]
            for r in rows
        ],
    )
    finish("quality_heldout.py", argv, table, args.work / "quality_heldout.json", rows)


if __name__ == "__main__":
    main()
