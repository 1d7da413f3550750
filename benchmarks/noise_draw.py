"""Drawing the position-keyed noise of one network batch: per stream (as before) vs batched_noise.

    python benchmarks/noise_draw.py --out docs/results/noise_draw.json

On the H200 the sampling loop of the bundled model ran at 364 tile evaluations/s against the
network's 2,178 at batch 32: drawing the noise (numpy Philox + float64 Box-Muller on the CPU,
2.8 ms per 256² item and step) held the GPU back (docs/benchmarks.md, GPU section). This
measures, on this CPU, one draw for a batch laid out as a run lays it out (``--batch`` items:
tiles x ``--samples`` samples in antithetic pairs, tile-major), in ms per item and step:

* ``per stream``: every item's stream drawn on its own, one after the other (the code before
  batched_noise shared streams);
* ``batched_noise, N threads``: a pair's stream drawn once, distinct streams on N threads.

Each rate is the median of ``--repeats`` draws, all cases interleaved in one run; every draw
builds fresh streams, as each network batch of a run does. The values are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bigrestore.devices import usable_cores
from bigrestore.diffusion.noise import NoiseStream, TileKey, batched_noise
from bigrestore.diffusion.repeated import sample_stream

from report import finish, markdown_table


def batch_streams(batch: int, samples: int) -> list[NoiseStream]:
    """The streams of one network batch of a run: tile-major, antithetic pairs."""
    return [
        sample_stream(TileKey(0, 0, 0, 0, 192 * (item // samples), 0), item % samples, True)
        for item in range(batch)
    ]


def per_stream(streams: list[NoiseStream], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.stack([s.normal(shape) for s in streams]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    shape = (1, args.tile, args.tile)
    thread_counts = sorted({1, 2, usable_cores()})
    cases = {"per stream": lambda s: per_stream(s, shape)}
    for n in thread_counts:
        cases[f"batched_noise, {n} thread{'s' * (n > 1)}"] = lambda s, n=n: batched_noise(
            s, shape, "cpu", threads=n
        )
    reference = per_stream(batch_streams(args.batch, args.samples), shape)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, draw in cases.items():
            streams = batch_streams(args.batch, args.samples)
            start = time.perf_counter()
            values = draw(streams)
            seconds[name].append(time.perf_counter() - start)
            if not torch.equal(values, reference):
                raise SystemExit(f"{name}: values differ from per-stream draws")
    base = statistics.median(seconds["per stream"])
    rows, results = [], []
    for name, times in seconds.items():
        median = statistics.median(times)
        ms = median / args.batch * 1e3
        rows.append([name, f"{ms:.3f}", f"{base / median:.2f}x"])
        results.append({"case": name, "ms_per_item_step": ms, "speedup": base / median})
    table = markdown_table(["draw", "ms per item and step", "vs per stream"], rows)
    payload = {"settings": vars(args), "results": results, "values_equal": True}
    finish("noise_draw.py", argv, table, args.out, payload, f"{usable_cores()} usable cores")


if __name__ == "__main__":
    main()
