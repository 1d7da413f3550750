"""W2S quality benchmark: raw, tuned Gaussian, regression (CARE-like), DDPM single sample, DDPM-avg.

Run after benchmarks/train_w2s.sh has trained both models into WORKDIR:

    python benchmarks/quality_w2s.py WORKDIR [--samples 15] [--fields 6] [--out docs/results/quality_w2s.json]

Evaluation set: the W2S validation split (fields 061-080, 3 channels each), the centred 256x256
crop of the first --fields fields (one 256² patch per image; the paper reports medians over
256² patches). The Gaussian filter's sigma is tuned on the same crops of the *training* split.
Every image is percentile-normalised on its own before scoring (the release was
contrast-stretched per image). Both models run through `bigrestore run`'s real path (Dask,
tiles and blending) with the run defaults (tile: twice the model's training patch), so the DDPM-avg row is
what a user gets; the report holds the samples curve (mean of the first k of N samples).
The steps-vs-quality curve of the samplers is benchmarks/sampler_w2s.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import tifffile
import torch

from bigrestore.evaluate.scoring import evaluate
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image
from bigrestore.model.files import load_model
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import RunSettings, run_settings

CROP = 256
METRICS = ("mae", "psnr", "nrmse", "pearson", "ms_ssim", "resolution_ratio")
META = ImageMeta("tcyx", (1.0, 1.0, 1.0, 1.0), (0.0,) * 4, (None,) * 4, ("ch0", "ch1", "ch2"))


def centre_crops(path: Path) -> np.ndarray:
    """(fields, 3, 256, 256) centred crops of a W2S stack, float32."""
    stack = tifffile.imread(path)
    y0 = (stack.shape[-2] - CROP) // 2
    x0 = (stack.shape[-1] - CROP) // 2
    return stack[..., y0 : y0 + CROP, x0 : x0 + CROP].astype(np.float32)


def save(path: Path, data: np.ndarray) -> Path:
    write_image(path, data.astype(np.float32), META, overwrite=True)
    return path


def restored(
    work: Path, name: str, source: Path, model: Path, workers: int, **settings
) -> tuple[Path, float]:
    """Run `bigrestore run` (the real tiled, Dask path) and return the output store and its seconds."""
    out = work / f"{name}.restored.zarr"
    result = restore(
        source,
        out,
        model=model,
        settings=run_settings(**settings),
        overwrite=True,
        cluster=ClusterSpec(workers=workers, threads_per_worker=1),
    )
    return out, result.seconds


def table(result, methods: list[str]) -> str:
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    best = result.best()
    for m in methods:
        cells = []
        for metric in METRICS:
            value = result.summary[m].get(metric, {}).get("median", float("nan"))
            text = (
                f"{value:.4f}"
                if metric in ("pearson", "ms_ssim", "nrmse", "mae")
                else f"{value:.2f}"
            )
            cells.append(f"**{text}**" if best.get(metric) == m else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument(
        "--samples", type=int, default=15, help="Samples per tile N (the paper's 15)."
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="Dask workers, one torch thread each (the result does not depend on it).",
    )
    parser.add_argument(
        "--fields", type=int, default=6, help="Validation fields used (of 20), 3 channels each."
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/quality_w2s.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    work = args.work
    bench = work / "quality"
    bench.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    low = centre_crops(args.data / "w2s/val_low.tif")[: args.fields]
    high = centre_crops(args.data / "w2s/val_high.tif")[: args.fields]
    tlow, thigh = (
        centre_crops(args.data / "w2s/train_low.tif"),
        centre_crops(args.data / "w2s/train_high.tif"),
    )
    paths = {
        name: save(bench / f"{name}.zarr", arr)
        for name, arr in (("raw", low), ("gt", high), ("train_raw", tlow), ("train_gt", thigh))
    }

    ddpm_dir, reg_dir = work / "model_diffusion", work / "model_regression"
    n_images = low.shape[0] * low.shape[1]
    reg_out, seconds = restored(bench, "regression", paths["raw"], reg_dir, args.workers, batch=16)
    timings["regression s/image"] = seconds / n_images
    defaults = RunSettings().sampling
    avg_out, seconds = restored(
        bench,
        "ddpm",
        paths["raw"],
        ddpm_dir,
        args.workers,
        samples=args.samples,
        save_samples=True,
        batch=16,
    )
    sampler = f"{defaults.sampler} eta {defaults.eta:g}, {defaults.steps} {defaults.spacing} steps"
    timings[f"DDPM ({sampler}) x {args.samples} samples s/image"] = seconds / n_images

    names = ["regression (CARE-like)", "DDPM single sample", f"DDPM-avg (N={args.samples})"]
    result = evaluate(
        [reg_out / "mean", avg_out / "samples" / "00.zarr", avg_out / "mean"],
        paths["gt"],
        names=names,
        raw=paths["raw"],
        val_for_sigma=(paths["train_raw"], paths["train_gt"]),
        samples=avg_out / "samples",
        std=avg_out / "std",
        entropy=avg_out / "entropy",
        patch=CROP,
        report_dir=work / "quality_report",
        model_dir=ddpm_dir,
        overwrite=True,
    )
    methods = list(result.methods)
    record = {
        "command": "benchmarks/train_w2s.sh WORK 40 && python benchmarks/quality_w2s.py WORK",
        "machine": {
            "cpu_count": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
        },
        "images": n_images,
        "sampler": sampler,
        "evaluation": result.to_dict(),
        "table": table(result, methods),
        "timings": timings,
        "models": {
            "diffusion": load_model(ddpm_dir)[1].get("provenance", {}),
            "regression": load_model(reg_dir)[1].get("provenance", {}),
        },
    }
    args.out.write_text(json.dumps(record, indent=2, default=str))
    print(record["table"])
    print(json.dumps({"timings": timings}, indent=2))


if __name__ == "__main__":
    main()
