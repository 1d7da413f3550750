"""Paper-quality mean and uncertainty at a tenth of the network evaluations: one table.

    python benchmarks/few_evaluations.py --eps MODEL --v MODEL --fast MODEL [--crops 24] [--out FILE.json]

Rows: the reference (today's default before this benchmark: eps-model, DDIM eta 1, 50 uniform
steps, 15 samples = 750 evaluations per tile), the paper's setting (ancestral, 200 steps, 15
samples), and each direction of the issue at several evaluation budgets:
  1. v-prediction (the `v` objective) with DDIM eta 1 at 4-16 steps and 4-15 samples, and the
     deterministic DPM-Solver++(2M);
  2. starting from an estimate (sampler `estimate`: one call, diffused to t0, K-1 steps);
  3. Fast-DDPM (an eps-model trained on the 10 timesteps it is sampled on);
  5. antithetic noise pairs.
(Direction 4, fewer duplicated tile pixels, is an engine property: its figures come from the
planner, printed below the table.) The three models were trained with equal budgets:
configs/cpu-small.yaml, 10,000 steps of 16 patches of 64² on the W2S training split, bf16.

Inputs: the centre 128² crop of W2S validation fields (3 channels each, `--crops` images),
each image normalised with its own percentiles as `run` does; one 128² tile per image (the
default tile), noise keyed by position as in `run`. Scores: each method's mean is fitted to the
ground truth by least squares (a·x + b, as `evaluate` does) before PSNR and MS-SSIM (data range
1 on the [0, 1]-mapped target); "single" is the PSNR of sample 0 alone; "z²" is the mean of
((truth - fitted mean) / (a·std))² over all pixels (1 = calibrated std, > 1 overconfident) and
"cov90" the fraction of pixels within ±1.645 fitted std (0.90 if Gaussian and calibrated).
Medians over images. Times are this machine's (its CPU is printed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from bigrestore.devices import autocast_dtype, cpu_name
from bigrestore.diffusion.noise import TileKey
from bigrestore.diffusion.repeated import sample_repeated
from bigrestore.diffusion.samplers import SamplerSettings
from bigrestore.evaluate.metrics import fit_linear, ms_ssim, psnr
from bigrestore.intensity import percentile_stats, to_model
from bigrestore.model.files import load_model
from bigrestore.run.plan import plan_cost, plan_tasks
from bigrestore.run.settings import run_settings
from bigrestore.run.tiling import TileGrid

from report import command_line, finish, markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s"

# (label, model key, sampler settings, samples N)
ROWS: list[tuple[str, str, dict[str, Any], int]] = [
    ("reference: eps, DDIM eta 1, 50 steps", "eps", dict(steps=50), 15),
    ("paper: eps, ancestral, 200 steps", "eps", dict(sampler="ancestral", steps=None), 15),
    ("eps, DDIM eta 1, 10 steps", "eps", dict(steps=10), 7),
    ("eps, DDIM eta 1, 5 steps", "eps", dict(steps=5), 15),
    ("v, one call (first estimate)", "v", dict(steps=1), 1),
    ("v, DDIM eta 1, 4 steps", "v", dict(steps=4), 15),
    ("v, DDIM eta 1, 8 steps", "v", dict(steps=8), 8),
    ("v, DDIM eta 1, 8 steps", "v", dict(steps=8), 4),
    ("v, DDIM eta 1, 16 steps", "v", dict(steps=16), 4),
    ("v, DDIM eta 1, 25 steps", "v", dict(steps=25), 3),
    ("v, DDIM eta 1, 50 steps", "v", dict(steps=50), 4),
    (
        "v, DPM-Solver++(2M), 8 steps",
        "v",
        dict(sampler="dpmpp_2m", steps=8, spacing="quadratic"),
        8,
    ),
    ("v, estimate, t0 25, 8 calls", "v", dict(sampler="estimate", steps=8, start=25), 8),
    ("v, estimate, t0 50, 8 calls", "v", dict(sampler="estimate", steps=8, start=50), 8),
    ("v, estimate, t0 100, 8 calls", "v", dict(sampler="estimate", steps=8, start=100), 8),
    ("v, DDIM eta 1, 8 steps, antithetic", "v", dict(steps=8, antithetic=True), 8),
    ("Fast-DDPM (eps, 10 trained steps)", "fast", dict(steps=10), 7),
    ("Fast-DDPM (eps, 10 trained steps)", "fast", dict(steps=10), 15),
]


def crops(n_images: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Conditions (B, 1, size, size) in model space and targets (B, size, size) in [0, 1]."""
    low, high = tifffile.imread(DATA / "val_low.tif"), tifffile.imread(DATA / "val_high.tif")
    y0 = (low.shape[-1] - size) // 2
    window = (slice(y0, y0 + size), slice(y0, y0 + size))
    conds, targets = [], []
    for f in range(low.shape[0]):
        for c in range(low.shape[1]):
            if len(conds) == n_images:
                break
            lo, hi = low[f, c].astype(np.float32), high[f, c].astype(np.float32)
            conds.append(to_model(lo, percentile_stats(lo))[window])
            targets.append((to_model(hi, percentile_stats(hi))[window] + 1.0) / 2.0)
    return torch.from_numpy(np.stack(conds)[:, None]), np.stack(targets)


def score(
    mean: np.ndarray, std: np.ndarray, sample0: np.ndarray, target: np.ndarray
) -> dict[str, float]:
    """Fitted PSNR / MS-SSIM of the mean, PSNR of one sample, and calibration of the std."""
    m, s0 = (mean + 1.0) / 2.0, (sample0 + 1.0) / 2.0
    a, b = fit_linear(m, target)
    fitted = a * m + b
    a0, b0 = fit_linear(s0, target)
    z = (target - fitted) / np.maximum(abs(a) * std / 2.0, 1e-6)
    return {
        "psnr": psnr(fitted, target, 1.0),
        "ms_ssim": ms_ssim(np.clip(fitted, 0, 1), target, 1.0),
        "single": psnr(a0 * s0 + b0, target, 1.0),
        "z2": float(np.mean(z**2)),
        "cov90": float(np.mean(np.abs(z) <= 1.645)),
    }


def run_row(
    net: Any, info: Any, cond: torch.Tensor, settings: SamplerSettings, n: int, batch: int
) -> tuple[list, float]:
    keys = [TileKey(0, 0, 0, 0, i, 0) for i in range(len(cond))]
    started = time.perf_counter()
    out = sample_repeated(
        net,
        cond,
        keys,
        n,
        info.schedule,
        settings,
        objective=info.objective,
        max_batch=batch,
        pad_batches=False,
        autocast_dtype=autocast_dtype("auto", torch.device("cpu")),
        return_samples=True,
    )
    return [
        out.mean.numpy(),
        out.std.numpy(),
        out.samples[0].numpy(),
    ], time.perf_counter() - started


def engine_cost() -> dict[str, float]:
    """Tile pixels per output pixel for a 2048² plane (128-px tiles, overlap 32, 512² blocks):
    with every block computing the tiles that touch it (before), and with each tile computed
    once by the block it starts in and shared (what `run` does now)."""
    settings = run_settings(tile=128, overlap=32, chunk=512)
    tasks, _ = plan_tasks("yx", (2048, 2048), [((0,), (0,))], settings)
    grid = TileGrid(2048, 2048, 128, 32, 4)
    duplicated = plan_cost(tasks, grid, 1, shared=False).tile_pixels_per_output_pixel
    shared = plan_cost(tasks, grid, 1).tile_pixels_per_output_pixel
    return {
        "per_block (before)": round(duplicated, 3),
        "shared border tiles (run)": round(shared, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=Path, required=True, help="eps-model (objective diffusion)")
    parser.add_argument("--v", type=Path, required=True, help="v-model (objective v)")
    parser.add_argument(
        "--fast", type=Path, required=True, help="eps-model trained on 10 timesteps"
    )
    parser.add_argument("--crops", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--only", nargs="*", help="labels (substrings) of the rows to run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cond, target = crops(args.crops, args.size)
    models = {key: load_model(getattr(args, key)) for key in ("eps", "v", "fast")}
    for key, (_, info) in models.items():
        print(f"{key}: {getattr(args, key)} objective {info.objective.name}", file=sys.stderr)
    rows = []
    for label, key, sampling, n in ROWS:
        if args.only and not any(o in label for o in args.only):
            continue
        net, info = models[key]
        settings = SamplerSettings(**sampling)
        (mean, std, sample0), seconds = run_row(net, info, cond, settings, n, args.batch)
        per_image = [
            score(mean[i, 0], std[i, 0], sample0[i, 0], target[i]) for i in range(len(target))
        ]
        row = {
            "method": f"{label}, N={n}",
            "evaluations_per_tile": n * settings.evaluations_per_sample(info.schedule),
            **{k: statistics.median(r[k] for r in per_image) for k in per_image[0]},
            "seconds": round(seconds, 1),
            "sampling": settings.model_dump(),
            "samples": n,
            "model": key,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report = {
        "command": command_line("few_evaluations.py", argv),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "crops": args.crops,
        "size": args.size,
        "engine_tile_pixels_per_output_pixel": engine_cost(),
        "rows": rows,
    }
    table = markdown_table(
        [
            "method",
            "evaluations / tile",
            "PSNR mean",
            "MS-SSIM",
            "PSNR 1 sample",
            "mean z²",
            "cov 90%",
            "s",
        ],
        [
            [
                r["method"],
                r["evaluations_per_tile"],
                f"{r['psnr']:.2f}",
                f"{r['ms_ssim']:.4f}",
                f"{r['single']:.2f}",
                f"{r['z2']:.2f}",
                f"{r['cov90']:.3f}",
                r["seconds"],
            ]
            for r in rows
        ],
    )
    table += (
        f"\n\nengine: tile pixels per output pixel {report['engine_tile_pixels_per_output_pixel']}"
    )
    threads = f"{report['torch_threads']} torch threads"
    finish("few_evaluations.py", argv, table, args.out, report, machine=threads)


if __name__ == "__main__":
    main()
