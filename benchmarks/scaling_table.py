"""Quality against network width and training minutes on this machine: the scaling table.

    python benchmarks/scaling_table.py SETDIR WORK [--width 16:1800 --width 24:800]
        [--epochs 2] [--w2s-fields 5]

For each ``--width W:S`` a copy of configs/cpu-generalist.yaml with W base channels (and W
channels per attention head) and ``--epochs`` epochs of S steps is trained on the generalist
set SETDIR (benchmarks/make_training_set.py; the same weighted pairs as
benchmarks/train_bundled.sh). The widths train side by side, one process per core
(OMP_NUM_THREADS=1, torch threads 1), so their minutes are comparable. Choose S so that the
widths take about the same minutes: the table then reads as quality per CPU-minute.

Two lengths per width come from one run: the end of epoch 1 and the end of the last epoch
(the learning rate is cosine-annealed over the whole run, so epoch 1 is not annealed: it is
what the same minutes give mid-run, a slight underestimate of a run planned that short).
Quality columns:
  * validation MAE: the trainer's own validation (EMA weights, the run's sampler, DDIM 8
    steps x 4 samples, on the held-out 10 % of the training stores);
  * held-out W2S PSNR of the final model: DDPM-avg with the run defaults by the real `run`
    path on the centre crops of the first ``--w2s-fields`` W2S validation fields (3
    channels each), after a least-squares fit, against the per-image best Gaussian
    (benchmarks/quality_heldout.py's scoring).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from bigrestore.devices import cpu_name
from bigrestore.model.files import parameter_count, read_model

from quality_heldout import held_out_sets, score_set
from report import finish, markdown_table

HERE = Path(__file__).resolve().parents[1]
PAIRS = (("w2s_train", 0.35), ("w2s_synth", 0.15), ("cells3d_train", 0.2), ("dsb_train", 0.1))
PAIRS += (("ctc_train", 0.2),)


def width_config(work: Path, width: int, steps: int, epochs: int) -> Path:
    config = yaml.safe_load((HERE / "configs" / "cpu-generalist.yaml").read_text())
    config["model"]["base_channels"] = width
    config["model"]["channels_per_head"] = width
    config.update(epochs=epochs, steps_per_epoch=steps, time_budget_minutes=None)
    path = work / f"width{width}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_command(set_dir: Path, config: Path, out: Path) -> list[str]:
    command = ["bigrestore", "train"]
    for name, weight in PAIRS:
        command += ["--low", str(set_dir / f"{name}_low.zarr")]
        command += ["--high", str(set_dir / f"{name}_high.zarr"), "--weight", str(weight)]
    return [*command, "--config", str(config), "--out", str(out), "--overwrite"]


def epoch_rows(model_dir: Path) -> list[dict]:
    with open(model_dir / "metrics.csv") as handle:
        return [row for row in csv.DictReader(handle) if row["complete"] == "True"]


def held_out_w2s(work: Path, model: Path, fields: int) -> dict:
    name = "W2S validation (real)"
    low, high = held_out_sets(None, fields)[name]
    settings = argparse.Namespace(samples=8, steps=8)
    row = score_set(work, name, low, high, model, settings)
    return {
        "images": row["images"],
        "ddpm_psnr": round(row["ddpm_psnr"], 2),
        "gaussian_psnr": round(row["gaussian_psnr"], 2),
        "seconds": row["seconds"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set_dir", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--width", action="append", default=None, help="W:STEPS_PER_EPOCH")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--w2s-fields", type=int, default=5)
    args = parser.parse_args(argv)
    widths = [tuple(map(int, w.split(":"))) for w in args.width or ["16:1800", "24:800"]]
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs = {}
    for width, steps in widths:
        out = args.work / f"model_w{width}"
        log = open(args.work / f"train_w{width}.log", "w")  # noqa: SIM115 - closed below
        command = train_command(
            args.set_dir, width_config(args.work, width, steps, args.epochs), out
        )
        runs[width] = (out, subprocess.Popen(command, env=env, stdout=log, stderr=log), log)
    for width, (_, process, log) in runs.items():
        if process.wait() != 0:
            sys.exit(f"training width {width} failed: see {log.name}")
        log.close()
    rows = []
    for width, (out, _, _) in runs.items():
        info = read_model(out)
        epochs = epoch_rows(out)
        for row in epochs:
            rows.append(
                {
                    "width": width,
                    "parameters": parameter_count(info.unet),
                    "steps": int(row["step"]),
                    "minutes": round(float(row["wall_s"]) / 60, 1),
                    "val_mae": round(float(row["val_mae"]), 4),
                }
            )
        rows[-1]["w2s_heldout"] = held_out_w2s(args.work, out, args.w2s_fields)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    def w2s_score(row: dict) -> str:
        held = row.get("w2s_heldout")
        return f"{held['ddpm_psnr']:.2f} / {held['gaussian_psnr']:.2f}" if held else "—"

    table = markdown_table(
        [
            "base channels",
            "parameters",
            "steps",
            "minutes (1 core)",
            "validation MAE",
            "W2S held-out DDPM-avg / best Gaussian (dB)",
        ],
        [
            [
                r["width"],
                f"{r['parameters'] / 1e6:.2f} M",
                r["steps"],
                r["minutes"],
                f"{r['val_mae']:.4f}",
                w2s_score(r),
            ]
            for r in rows
        ],
    )
    payload = {"cpu": cpu_name(), "rows": rows}
    finish("scaling_table.py", argv, table, args.work / "scaling_table.json", payload)


if __name__ == "__main__":
    main()
