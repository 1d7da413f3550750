"""Network speed by precision and memory layout, and the training step, on this machine's CPU.

    python benchmarks/precision_speed.py [--model DIR] [--threads 1 2] [--out FILE.json]

Why: `bigrestore run --precision auto` and training pick bf16 autocast where the CPU computes
bf16 natively (AMX / AVX512-BF16), and the U-Net runs its activations channels-last. This
measures what each choice is worth: milliseconds per 64² tile for one network call (batch 32,
inference mode) in fp32 and bf16, NCHW and NHWC, and patches/s of a training step (forward,
backward, AdamW; batch 16 of 64²). Medians of 7 timed repeats after 3 warm-ups, variants
interleaved repeat by repeat so drift in machine load hits all alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bigrestore.devices import cpu_name, native_bf16
from bigrestore.model.files import load_model
from bigrestore.run.settings import bundled_model_path

from report import command_line, finish, markdown_table

VARIANTS = [("fp32", "nchw"), ("fp32", "nhwc"), ("bf16", "nchw"), ("bf16", "nhwc")]


def call(
    net: torch.nn.Module,
    precision: str,
    batch: tuple[torch.Tensor, ...],
    train: bool,
    optimizer: torch.optim.Optimizer | None,
) -> None:
    cond, y, ab = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = net(cond, y, ab)
    if train:
        loss = (out.float() - y).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=bundled_model_path())
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    net, _ = load_model(args.model)
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, ...]:
        side = net.config.train_resolution
        return (
            torch.randn(n, 1, side, side, generator=gen),
            torch.randn(n, 1, side, side, generator=gen),
            torch.rand(n, generator=gen) * 0.98 + 0.01,
        )

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for mode, n in (("inference", 32), ("training", 16)):
            data = batch(n)
            train = mode == "training"
            optimizer = torch.optim.AdamW(net.parameters(), lr=0.0) if train else None
            net.train(train)
            times: dict[tuple[str, str], list[float]] = {v: [] for v in VARIANTS}
            ctx = torch.enable_grad() if train else torch.inference_mode()
            with ctx:
                for v in VARIANTS:  # warm-up: oneDNN builds its kernels for each variant
                    net.channels_last = v[1] == "nhwc"
                    for _ in range(3):
                        call(net, v[0], data, train, optimizer)
                for _ in range(args.repeats):
                    for v in VARIANTS:
                        net.channels_last = v[1] == "nhwc"
                        start = time.perf_counter()
                        call(net, v[0], data, train, optimizer)
                        times[v].append(time.perf_counter() - start)
            net.channels_last = True
            base = statistics.median(times[("fp32", "nchw")])
            for (precision, layout), ts in times.items():
                med = statistics.median(ts)
                row = {
                    "threads": threads,
                    "mode": mode,
                    "precision": precision,
                    "layout": layout,
                    "batch": n,
                    "median_s": med,
                    "speedup_vs_fp32_nchw": base / med,
                }
                row["value"] = (
                    f"{1000 * med / n:.2f} ms/tile"
                    if mode == "inference"
                    else f"{n / med:.1f} patches/s"
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {
        "command": command_line("precision_speed.py", argv),
        "model": str(args.model),
        "cpu": cpu_name(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "torch": torch.__version__,
        "rows": rows,
    }
    table = markdown_table(
        ["threads", "mode", "precision", "layout", "value", "speed-up vs fp32 NCHW"],
        [
            [
                r["threads"],
                r["mode"],
                r["precision"],
                r["layout"],
                r["value"],
                f"{r['speedup_vs_fp32_nchw']:.2f}x",
            ]
            for r in rows
        ],
    )
    finish("precision_speed.py", argv, table, args.out, report)


if __name__ == "__main__":
    main()
