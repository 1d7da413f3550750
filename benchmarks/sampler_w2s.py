"""Steps-vs-quality curve of the samplers on W2S validation crops (in-process, no Dask).

    python benchmarks/sampler_w2s.py MODEL [--crop 64] [--samples 4] [--precision fp32 bf16] [--out FILE.json]

For each sampler setting: PSNR (median over images) of the mean of the first k = 1..N samples
against the high-SNR target, the network calls per sample, and the seconds per sample per 64² tile on this
machine. Inputs are the centred crop of every second W2S validation field (3 channels each),
each plane normalised with its own percentiles exactly as `bigrestore run` does; PSNR is on
the model range mapped to [0, 1]. The noise is the position-keyed noise of `run`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy.ndimage import gaussian_filter

from bigrestore.devices import autocast_dtype, cpu_name
from bigrestore.diffusion.noise import TileKey
from bigrestore.diffusion.repeated import sample_repeated
from bigrestore.diffusion.samplers import SamplerSettings
from bigrestore.diffusion.schedule import Schedule
from bigrestore.intensity import percentile_stats, to_model
from bigrestore.model.files import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s"

# (label, sampler keyword arguments); steps are network calls per sample.
SETTINGS: list[tuple[str, dict]] = [
    ("ddim eta=0 quadratic", dict(sampler="ddim", eta=0.0, spacing="quadratic")),
    ("ddim eta=1 uniform", dict(sampler="ddim", eta=1.0, spacing="uniform")),
    ("ddim eta=1 quadratic", dict(sampler="ddim", eta=1.0, spacing="quadratic")),
    ("dpmpp_2m quadratic", dict(sampler="dpmpp_2m", spacing="quadratic")),
]
STEPS = (10, 20, 50)


def crops(crop: int) -> tuple[torch.Tensor, np.ndarray]:
    """Condition (B, 1, crop, crop) and target (B, 1, crop, crop) in model space."""
    low = tifffile.imread(DATA / "val_low.tif")
    high = tifffile.imread(DATA / "val_high.tif")
    y0 = (low.shape[-1] - crop) // 2
    conds, targets = [], []
    for f in range(0, low.shape[0], 2):
        for c in range(low.shape[1]):
            lo, hi = low[f, c].astype(np.float32), high[f, c].astype(np.float32)
            window = (slice(y0, y0 + crop), slice(y0, y0 + crop))
            conds.append(to_model(lo, percentile_stats(lo))[window])
            targets.append(to_model(hi, percentile_stats(hi))[window])
    return torch.from_numpy(np.stack(conds)[:, None]), np.stack(targets)[:, None]


def median_psnr(pred: np.ndarray, target: np.ndarray) -> float:
    a = np.clip((pred + 1) / 2, 0, 1)
    b = np.clip((target + 1) / 2, 0, 1)
    return float(np.median(10 * np.log10(1.0 / ((a - b) ** 2).mean(axis=(1, 2, 3)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--ancestral", action="store_true", help="also the 200-step sampler")
    parser.add_argument(
        "--settings",
        nargs="*",
        default=[label for label, _ in SETTINGS],
        help="which of the fast-sampler settings to run (default all; none: only --ancestral)",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["auto"],
        choices=["auto", "fp32", "bf16"],
        help="network arithmetic; several values run every setting once per precision, side by side",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    net, info = load_model(args.model)
    meta = info.meta
    schedule = Schedule.from_dict(meta["schedule"])
    cond, target = crops(args.crop)
    keys = [TileKey(0, 0, 0, 0, i, 0) for i in range(len(cond))]
    rows = [
        {"method": "raw input", "calls": 0, "psnr": median_psnr(cond.numpy(), target)},
        {
            "method": "gaussian sigma 2",
            "calls": 0,
            "psnr": median_psnr(np.stack([gaussian_filter(c, 2.0) for c in cond.numpy()]), target),
        },
    ]
    runs = [(label, kw, k) for label, kw in SETTINGS if label in args.settings for k in args.steps]
    if args.ancestral:
        runs.append(("ancestral", dict(sampler="ancestral"), None))
    runs = [(label, kw, k, p) for label, kw, k in runs for p in args.precision]
    for label, kw, k, precision in runs:
        autocast = autocast_dtype(precision, torch.device("cpu"))
        if len(args.precision) > 1:
            label = f"{label} {'bf16' if autocast else 'fp32'}"
        start = time.perf_counter()
        sampling = SamplerSettings(**{"steps": k, "clip_x0": True, **kw})
        result = sample_repeated(
            net,
            cond,
            keys,
            args.samples,
            schedule,
            sampling,
            max_batch=60,
            return_samples=True,
            autocast_dtype=autocast,
        )
        seconds = time.perf_counter() - start
        tiles = len(cond) * args.samples * (args.crop / 64) ** 2
        row = {
            "method": label,
            "calls": k or schedule.T,
            "psnr": median_psnr(result.mean.numpy(), target),
            # samples curve: PSNR of the mean of the first k samples, k = 1..N
            "psnr_by_samples": [
                median_psnr(result.samples[:k].mean(dim=0).numpy(), target)
                for k in range(1, args.samples + 1)
            ],
            "s_per_sample_tile64": seconds / tiles,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "model": str(args.model),
        "crop": args.crop,
        "images": len(cond),
        "samples": args.samples,
        "torch_threads": torch.get_num_threads(),
        "machine": cpu_name(),
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    for row in rows:
        curve = " ".join(f"{v:5.2f}" for v in row.get("psnr_by_samples", [row["psnr"]]))
        print(f"{row['method']:24s} {row['calls']:4d} calls  PSNR for N = 1..: {curve}")


if __name__ == "__main__":
    main()
