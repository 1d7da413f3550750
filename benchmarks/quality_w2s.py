"""W2S quality benchmark: raw, tuned Gaussian, regression (CARE-like), DDPM single sample, DDPM-avg.

Run after benchmarks/train_w2s.sh has trained both models into WORKDIR:

    python benchmarks/quality_w2s.py WORKDIR [--samples 15] [--out docs/benchmarks.md]

Evaluation set: the W2S validation split (fields 061-080, 3 channels), the centred 256x256 crop
of every image (60 patches of 256², one per image; the paper reports medians over 256²
patches). The Gaussian filter's sigma is tuned on the same crops of the *training* split.
Every image is percentile-normalised on its own before scoring (the release was
contrast-stretched per image). DDPM samples are drawn with the position-keyed noise of
`bigrestore run` (one 256² tile per image), so DDPM-avg here equals what `run` produces on
these crops with the same seed and settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from bigrestore.checkpoint import load_model
from bigrestore.diffusion import Schedule, predict_regression, sample_repeated
from bigrestore.evaluate import evaluate
from bigrestore.io.ome import ImageMeta, write_image
from bigrestore.metrics import ms_ssim, normalize_percentile, psnr
from bigrestore.normalize import from_model, percentile_stats, to_model
from bigrestore.rng import TileKey

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


def normalised(low: np.ndarray, p_low: float, p_high: float) -> tuple[np.ndarray, list]:
    """Per-image model-space inputs (n, 1, 256, 256) and their statistics."""
    planes = low.reshape(-1, CROP, CROP)
    stats = [percentile_stats(p, p_low, p_high) for p in planes]
    cond = np.stack([to_model(p, s) for p, s in zip(planes, stats, strict=True)])[:, None]
    return cond, stats


def diffusion_samples(
    net, spec, cond: np.ndarray, n: int, sampler: str, steps: int | None, seed: int = 0, batch: int = 16
) -> tuple[np.ndarray, float]:
    """(n_samples, planes, 256, 256) model-space samples, and seconds per image."""
    schedule = Schedule.from_dict(spec["schedule"])
    keys = [TileKey(seed, i // 3, i % 3, 0, 0, 0) for i in range(cond.shape[0])]
    started = time.perf_counter()
    out = []
    with torch.inference_mode():
        for start in range(0, cond.shape[0], 4):
            result = sample_repeated(
                net, torch.from_numpy(cond[start : start + 4]), keys[start : start + 4], n, schedule,
                sampler=sampler, steps=steps, max_batch=batch, return_samples=True,
            )
            out.append(result.samples[:, :, 0].numpy())
    return np.concatenate(out, axis=1), (time.perf_counter() - started) / cond.shape[0]


def to_intensity(values: np.ndarray, stats: list) -> np.ndarray:
    """Model space → each image's own input intensity scale (per-image, as W2S needs)."""
    return np.stack([from_model(v, s) for v, s in zip(values, stats, strict=True)])


def score(pred_model: np.ndarray, gt_planes: np.ndarray) -> dict[str, float]:
    """Median PSNR / MS-SSIM over images, each image percentile-normalised (as `evaluate`)."""
    psnrs, msssims = [], []
    for p, g in zip(pred_model, gt_planes, strict=True):
        pn, gn = normalize_percentile(p), normalize_percentile(g)
        psnrs.append(psnr(pn, gn, 1.0))
        msssims.append(ms_ssim(pn, gn, 1.0))
    return {"psnr": float(np.median(psnrs)), "ms_ssim": float(np.median(msssims))}


def table(result, methods: list[str]) -> str:
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    best = result.best()
    for m in methods:
        cells = []
        for metric in METRICS:
            value = result.summary[m].get(metric, {}).get("median", float("nan"))
            text = f"{value:.4f}" if metric in ("pearson", "ms_ssim", "nrmse", "mae") else f"{value:.2f}"
            cells.append(f"**{text}**" if best.get(metric) == m else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--fast-sampler", default="dpmpp_2m")
    parser.add_argument("--fast-steps", type=int, default=10)
    parser.add_argument("--steps-curve", default="5,10,20,50")
    parser.add_argument("--ancestral-images", type=int, default=6)
    parser.add_argument("--fields", type=int, default=20, help="Validation fields used (all 20 by default).")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-w2s.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    work = args.work
    bench = work / "quality"
    bench.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    low = centre_crops(args.data / "w2s/val_low.tif")[: args.fields]
    high = centre_crops(args.data / "w2s/val_high.tif")[: args.fields]
    tlow, thigh = centre_crops(args.data / "w2s/train_low.tif"), centre_crops(args.data / "w2s/train_high.tif")
    paths = {name: save(bench / f"{name}.zarr", arr)
             for name, arr in (("raw", low), ("gt", high), ("train_raw", tlow), ("train_gt", thigh))}
    shape = low.shape

    ddpm, ddpm_spec = load_model(work / "model_diffusion")
    reg, reg_spec = load_model(work / "model_regression")
    ddpm.eval()
    reg.eval()
    norm = ddpm_spec["normalization"]
    cond, stats = normalised(low, norm["p_low"], norm["p_high"])

    started = time.perf_counter()
    with torch.inference_mode():
        reg_out = np.concatenate([predict_regression(reg, torch.from_numpy(cond[i : i + 8]))[:, 0].numpy()
                                  for i in range(0, cond.shape[0], 8)])
    timings["regression s/image"] = (time.perf_counter() - started) / cond.shape[0]
    paths["regression"] = save(bench / "regression.zarr", to_intensity(reg_out, stats).reshape(shape))

    samples, per_image = diffusion_samples(ddpm, ddpm_spec, cond, args.samples, args.fast_sampler, args.fast_steps)
    timings[f"DDPM {args.fast_sampler} {args.fast_steps} steps x {args.samples} samples s/image"] = per_image
    sample_dir = bench / "samples"
    sample_dir.mkdir(exist_ok=True)
    for k in range(args.samples):
        save(sample_dir / f"sample_{k:02d}.zarr", to_intensity(samples[k], stats).reshape(shape))
    paths["ddpm_single"] = save(bench / "ddpm_single.zarr", to_intensity(samples[0], stats).reshape(shape))
    paths["ddpm_avg"] = save(bench / "ddpm_avg.zarr", to_intensity(samples.mean(0), stats).reshape(shape))

    names = ["regression (CARE-like)", "DDPM single sample", f"DDPM-avg (N={args.samples})"]
    result = evaluate(
        [paths["regression"], paths["ddpm_single"], paths["ddpm_avg"]], paths["gt"], names=names,
        raw=paths["raw"], val_for_sigma=(paths["train_raw"], paths["train_gt"]), samples=sample_dir,
        patch=CROP, report_dir=work / "quality_report", model_dir=work / "model_diffusion", overwrite=True,
    )
    methods = list(result.methods)

    # Steps vs quality: the fast sampler at several step counts (mean of 1 and of 4 samples) and
    # DDIM, on all 60 images; the full ancestral sampler (T=200) on a subset, against the fast one.
    gt_planes = high.reshape(-1, CROP, CROP)
    curve = []
    for sampler, steps in [(args.fast_sampler, int(k)) for k in args.steps_curve.split(",")] + [("ddim", 10), ("ddim", 20)]:
        s, per = diffusion_samples(ddpm, ddpm_spec, cond, 4, sampler, steps, seed=1)
        for n in (1, 4):
            curve.append({"sampler": sampler, "steps": steps, "samples": n, **score(s[:n].mean(0), gt_planes),
                          "seconds_per_image_4_samples": round(per, 3)})
    subset = list(range(0, cond.shape[0], max(1, cond.shape[0] // args.ancestral_images)))[: args.ancestral_images]
    s_anc, per_anc = diffusion_samples(ddpm, ddpm_spec, cond[subset], 1, "ancestral", None, seed=1)
    s_fast, per_fast = diffusion_samples(ddpm, ddpm_spec, cond[subset], 1, args.fast_sampler, args.fast_steps, seed=1)
    subset_rows = {
        "images": len(subset),
        "ancestral (T=200), 1 sample": {**score(s_anc[0], gt_planes[subset]), "seconds_per_image": round(per_anc, 3)},
        f"{args.fast_sampler} ({args.fast_steps} steps), 1 sample": {
            **score(s_fast[0], gt_planes[subset]), "seconds_per_image": round(per_fast, 3)},
    }

    record = {
        "command": "benchmarks/train_w2s.sh WORK 40 && python benchmarks/quality_w2s.py WORK",
        "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                    "processor": platform.processor(), "torch": torch.__version__},
        "evaluation": result.to_dict(),
        "table": table(result, methods),
        "steps_curve": curve,
        "ancestral_vs_fast_subset": subset_rows,
        "timings": timings,
        "models": {"diffusion": ddpm_spec.get("provenance", {}), "regression": reg_spec.get("provenance", {})},
    }
    args.out.write_text(json.dumps(record, indent=2, default=str))
    print(record["table"])
    print(json.dumps({"steps_curve": curve, "subset": subset_rows, "timings": timings}, indent=2))


if __name__ == "__main__":
    main()
