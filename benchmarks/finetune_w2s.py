"""Fine-tuning the bundled model on 5 pairs beats training from scratch on the same 5 pairs.

    python benchmarks/finetune_w2s.py [--steps 500] [--channel 1] [--crops 12] [--out FILE.json]

A user with a new microscope has a few pairs. Here: W2S training fields 001-005, one channel,
full 512² (5 pairs). Two runs of equal length and data:
  - "fine-tuned": ``bigrestore train --init-from bundled --config configs/finetune.yaml``
    (the bundled network, lr 2e-3);
  - "from scratch": the same preset without --init-from, at the from-scratch rate of
    configs/cpu-small.yaml (lr 8e-3) and the bundled model's architecture and objective.
Scored with the run defaults (DDIM eta 1, 8 uniform steps, 8 samples, one 128² tile per image)
on the centre 128² crops of W2S validation fields 061-... of the same channel, PSNR of the
mean after a least-squares fit to the avg400 truth (as ``evaluate``), median over crops; the
untouched bundled model is scored beside them. Note that the bundled model was trained on all
W2S training fields, these 5 among them: on W2S the comparison shows what starting from a
trained network buys on few pairs, not adaptation to an unseen microscope.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from bigrestore.devices import autocast_dtype, cpu_name
from bigrestore.diffusion.noise import TileKey
from bigrestore.diffusion.repeated import sample_repeated
from bigrestore.evaluate.metrics import fit_linear, psnr
from bigrestore.intensity import percentile_stats, to_model
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.model.files import load_model, read_model
from bigrestore.run.settings import RunSettings, bundled_model_path
from bigrestore.train import train
from bigrestore.train.config import TrainConfig
from bigrestore.train.init import adopt_model

from report import command_line, finish, markdown_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "w2s"


def five_pairs(work: Path, channel: int) -> tuple[Path, Path]:
    """W2S training fields 001-005 of one channel as a low/high OME-Zarr pair (t = field)."""
    paths = []
    for kind in ("low", "high"):
        data = tifffile.imread(DATA / f"train_{kind}.tif")[:5, channel : channel + 1]
        meta = default_meta("tcyx", (f"ch{channel}",))
        paths.append(write_image(work / f"{kind}.zarr", data, meta, chunks=(1, 1, 256, 256)))
    return paths[0], paths[1]


def held_out(channel: int, n: int, size: int = 128) -> tuple[torch.Tensor, np.ndarray]:
    """Conditions (model space) and [0, 1] targets: centre crops of W2S validation fields."""
    low = tifffile.imread(DATA / "val_low.tif")[:n, channel].astype(np.float32)
    high = tifffile.imread(DATA / "val_high.tif")[:n, channel].astype(np.float32)
    y0 = (low.shape[-1] - size) // 2
    window = (slice(y0, y0 + size), slice(y0, y0 + size))
    conds = [to_model(lo, percentile_stats(lo))[window] for lo in low]
    targets = [(to_model(hi, percentile_stats(hi))[window] + 1) / 2 for hi in high]
    return torch.from_numpy(np.stack(conds)[:, None]), np.stack(targets)


def score(model: Path, cond: torch.Tensor, target: np.ndarray) -> float:
    """Median fitted PSNR of the run defaults' mean (N samples of the default sampler)."""
    net, info = load_model(model)
    defaults = RunSettings()
    keys = [TileKey(0, 0, 0, 0, i, 0) for i in range(len(cond))]
    out = sample_repeated(
        net,
        cond,
        keys,
        defaults.samples,
        info.schedule,
        defaults.sampling,
        objective=info.objective,
        max_batch=64,
        pad_batches=False,
        autocast_dtype=autocast_dtype("auto", torch.device("cpu")),
    )
    values = []
    for mean, truth in zip(out.mean.numpy()[:, 0], target, strict=True):
        m = (mean + 1) / 2
        a, b = fit_linear(m, truth)
        values.append(psnr(a * m + b, truth, 1.0))
    return statistics.median(values)


def config(steps: int, lr: float) -> TrainConfig:
    """configs/finetune.yaml with ``steps`` (in epochs of 250) and ``lr``."""
    import yaml

    fields = yaml.safe_load((ROOT / "configs" / "finetune.yaml").read_text())
    fields.update(epochs=max(1, steps // 250), steps_per_epoch=min(250, steps), lr=lr)
    fields.update(time_budget_minutes=None)
    return TrainConfig.from_dict(fields)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--channel", type=int, default=1)
    parser.add_argument("--crops", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    bundled = bundled_model_path()
    start = read_model(bundled)
    cond, target = held_out(args.channel, args.crops)
    rows = [{"method": "bundled model, not fine-tuned", "psnr": score(bundled, cond, target)}]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        low, high = five_pairs(work, args.channel)
        runs = [("fine-tuned from the bundled model", 2e-3, bundled), ("from scratch", 8e-3, None)]
        for label, lr, init in runs:
            chosen = config(args.steps, lr)
            if init is None:  # the same network and objective as the bundled one
                chosen, _ = adopt_model(chosen, bundled)
            started = time.perf_counter()
            out = work / label.split()[0]
            train(chosen, [(low, high)], out, device="cpu", init_from=init)
            minutes = (time.perf_counter() - started) / 60
            rows.append(
                {"method": label, "psnr": score(out, cond, target), "minutes": round(minutes, 1)}
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    cpu = cpu_name()
    print(f"5 pairs: W2S train fields 001-005, channel {args.channel}; {args.steps} steps each")
    print(f"scored on {len(target)} W2S val crops of 128² (channel {args.channel}), run defaults")
    print(f"starting model: {bundled} ({start.objective.name}, {start.weights_sha256[:12]})")
    table = markdown_table(
        ["model", "PSNR (fitted, median)", "training minutes"],
        [[r["method"], f"{r['psnr']:.2f}", r.get("minutes", "-")] for r in rows],
    )
    payload = {"command": command_line("finetune_w2s.py", argv), "cpu": cpu, "rows": rows}
    threads = f"{torch.get_num_threads()} torch threads"
    finish("finetune_w2s.py", argv, table, args.out, payload, machine=threads)


if __name__ == "__main__":
    main()
