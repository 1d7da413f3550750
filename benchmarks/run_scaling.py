"""Scaling benchmark of ``bigrestore run``: engine overhead, worker speed-up, tile cost, worker memory.

Why: a run is worth scaling out only if the Dask engine (cluster start, block reads, blending,
zarr writes, pyramids) costs little next to the network, if workers add speed, and if a
worker's memory does not grow with the image. Everything below is measured side by side in
one invocation, with repeats interleaved so that drift in machine load hits every variant.

    python benchmarks/run_scaling.py --out /work/bench/run_scaling.json

Defaults: the bundled model (its architecture; tile and overlap from the model), DDIM with
4 samples x 6 steps, batch 8, output chunk (= block) 256, 1x input = one 512² W2S
validation field (channel 0, uint8), 16x input = a 4 x 4 mosaic of 16 fields (2048²),
3 repeats (estimated 7-10 minutes on an idle 2-core machine; it warns when the load
average says the machine is busy). ``--two-threads`` adds the model and a 1-worker run at
2 torch threads. Measured per repeat:

* ``model``: the pure in-process model time, ``sample_repeated`` called directly in this
  process on exactly the tiles (and keys, batch and sampler settings) that ``run`` computes,
  block by block, with the same torch thread count; tile preparation is not timed.
* ``restore``: wall time of ``bigrestore.run.restore.restore`` (LocalCluster, real Dask path), from
  the call to its return: input statistics, cluster start, blocks, pyramids, metadata.
* peak RSS of every Dask worker process (kernel high-water mark VmHWM, cross-checked by
  sampling RSS every 50 ms), for the 1x and the 16x input at 2 workers x 1 thread. These two
  runs use ``--memory-steps`` sampler steps (default 1): the step count changes run time, not
  what a block holds in memory (checked against the 1x timing runs, reported too).

Prints a markdown table, the settings and the command line; writes all raw numbers to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from bigrestore.devices import autocast_dtype, cpu_name
from bigrestore.diffusion.objectives import get_objective
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.model.files import load_model
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.plan import make_plan
from bigrestore.run.restore import restore
from bigrestore.run.settings import RunSettings, bundled_model_path, run_settings
from bigrestore.run.tasks import RunJob
from bigrestore.run.tiles import cut, normalise, read_tiles_region, sample_tiles
from bigrestore.run.tiling import TileGrid, plan_blocks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s" / "val_low.tif"


# ----------------------------------------------------------------------------- inputs


def make_inputs(workdir: Path, side: int, data: Path) -> tuple[Path, Path, str]:
    """1x (side²) and 16x ((4 side)²) uint8 YX OME-Zarr inputs; returns their paths and the source."""
    if data.exists():
        import tifffile

        stack = tifffile.imread(data)[:16, 0, :side, :side]  # 16 fields, channel 0
        source = f"{data} fields 0-15, channel 0"
    else:  # synthetic stand-in: Poisson noise on a smooth random field
        rng = np.random.default_rng(0)
        smooth = np.cumsum(np.cumsum(rng.normal(size=(16, side, side)), axis=1), axis=2)
        smooth = (smooth - smooth.min()) / np.ptp(smooth) * 40.0
        stack = np.clip(rng.poisson(smooth), 0, 255).astype(np.uint8)
        source = "synthetic Poisson noise (W2S file not found)"
    if stack.shape != (16, side, side):
        raise SystemExit(f"{data}: need 16 fields of at least {side}² pixels, found {stack.shape}")
    mosaic = stack.reshape(4, 4, side, side).transpose(0, 2, 1, 3).reshape(4 * side, 4 * side)
    meta = default_meta("yx")
    small = write_image(workdir / "in_1x.zarr", stack[0], replace(meta, name="1x"), overwrite=True)
    large = write_image(workdir / "in_16x.zarr", mosaic, replace(meta, name="16x"), overwrite=True)
    return small, large, source


# ----------------------------------------------------------------------------- the tiles run computes


def planned_tiles(
    shape: tuple[int, int], s: RunSettings, multiple: int
) -> tuple[TileGrid, list[Any]]:
    """The tile grid and, per output block, (block, origins of the tiles its tile task computes:
    those starting in it, each tile once), as ``run`` plans."""
    grid = TileGrid(shape[0], shape[1], s.tile, s.overlap, multiple)
    blocks = plan_blocks(shape[0], shape[1], s.chunk, s.chunk, s.chunks_per_block)
    return grid, [(b, grid.tiles_owned(*b.region)) for b in blocks]


def tile_cost(shape: tuple[int, int], s: RunSettings, multiple: int) -> dict[str, Any]:
    """Computed tile pixels per output pixel (each tile once: border tiles are shared)."""
    grid, per_block = planned_tiles(shape, s, multiple)
    computed = sum(len(origins) for _, origins in per_block)
    unique = len(grid.tiles())
    pixels = shape[0] * shape[1]
    return {
        "blocks": len(per_block),
        "tiles_computed": computed,
        "tiles_unique": unique,
        "tile_px_per_output_px": computed * s.tile**2 / pixels,
        "tile_px_per_output_px_unique_grid": unique * s.tile**2 / pixels,
    }


def model_inputs(
    path: Path, unused_output: Path, model: Path, s: RunSettings
) -> tuple[RunJob, list[Any]]:
    """The run's own plan and, per block, (task, owned tile origins, condition tiles), prepared
    by the tile stages that ``run`` uses (read_tiles_region, normalise, cut): each tile once,
    as the run's tile tasks compute them; nothing is written."""
    plan = make_plan(path, unused_output, model, s, None, None, "cpu", 1)
    grid = plan.job.grid
    prepared = []
    for task in plan.tasks:
        origins = grid.tiles_owned(*task.block.region)
        if not origins:
            continue
        region, ry0, rx0 = read_tiles_region(plan.job, task, grid, origins)
        tiles = cut(normalise(region, plan.job, task), grid, ry0, rx0, origins)
        prepared.append((task, origins, torch.from_numpy(tiles)))
    return plan.job, prepared


def model_seconds(net: torch.nn.Module, job: RunJob, prepared: list[Any], threads: int) -> float:
    """Wall time of the block stage ``sample_tiles`` alone (what a worker runs per block), in
    this process, ``threads`` torch threads."""
    torch.set_num_threads(threads)
    objective = get_objective(job.objective)
    autocast = autocast_dtype(
        job.settings.precision, torch.device("cpu")
    )  # as the workers resolve it
    task, origins, cond = prepared[0]
    sample_tiles(net, cond[:1], origins[:1], job, task, objective, autocast)  # warm-up
    started = time.perf_counter()
    for task, origins, cond in prepared:
        sample_tiles(net, cond, origins, job, task, objective, autocast)
    return time.perf_counter() - started


# ----------------------------------------------------------------------------- worker memory


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class WorkerMemory:
    """Polls the RSS of every Dask worker process of a run (attach it with restore's on_client)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.stats: dict[int, dict[str, int]] = {}
        self.client_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def attach(self, client: Any) -> None:
        self.client_at = time.perf_counter()
        self.pids = client.run(os.getpid)
        for pid in self.pids.values():
            rss = psutil.Process(pid).memory_info().rss
            self.stats[pid] = {"rss_at_start": rss, "rss_max_sampled": rss, "hwm": 0}
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid, st in self.stats.items():
                try:
                    st["rss_max_sampled"] = max(
                        st["rss_max_sampled"], psutil.Process(pid).memory_info().rss
                    )
                except psutil.Error:
                    continue
                hwm = _status_kib(pid, "VmHWM")
                if hwm is not None:
                    st["hwm"] = max(st["hwm"], hwm * 1024)
            self._stop.wait(self.interval)

    def stop(self) -> list[dict[str, int]]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return [
            {"pid": pid, **st, "peak": max(st["hwm"], st["rss_max_sampled"])}
            for pid, st in self.stats.items()
        ]


def timed_restore(
    path: Path, out: Path, model: Path, s: RunSettings, workers: int, threads: int
) -> dict[str, Any]:
    """One end-to-end ``restore`` on a LocalCluster; wall time, phase times and worker memory."""
    memory = WorkerMemory()
    blocks: list[float] = []
    started = time.perf_counter()
    result = restore(
        path,
        out,
        model=model,
        settings=s,
        overwrite=True,
        device="cpu",
        cluster=ClusterSpec(workers=workers, threads_per_worker=threads),
        on_client=memory.attach,
        progress=lambda record, done, total: blocks.append(record["seconds"]),
    )
    wall = time.perf_counter() - started
    workers_mem = memory.stop()
    return {
        "wall_s": wall,
        "until_client_s": memory.client_at - started,
        "compute_s": result.seconds,
        "block_seconds_sum": sum(blocks),
        "blocks": len(blocks),
        "tiles": result.tiles,
        "workers": workers_mem,
        "peak_rss_max_worker": max(w["peak"] for w in workers_mem),
    }


# ----------------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarise(
    runs: dict[str, list[dict[str, Any]]],
    model_runs: dict[int, list[float]],
    memory: dict[str, Any],
    targets: dict[str, float],
) -> dict[str, Any]:
    wall = {name: median([r["wall_s"] for r in rs]) for name, rs in runs.items()}
    out: dict[str, Any] = {
        "median_wall_s": wall,
        "median_model_s": {str(k): median(v) for k, v in model_runs.items()},
    }
    out["overhead_ratio_1w1t"] = wall["1w1t"] / median(model_runs[1])
    if "1w2t" in wall and 2 in model_runs:
        out["overhead_ratio_1w2t"] = wall["1w2t"] / median(model_runs[2])
    out["speedup_2w_vs_1w"] = wall["1w1t"] / wall["2w1t"]
    # Per repeat too, as the ratio of two medians can hide a noisy pair.
    out["overhead_ratio_1w1t_per_repeat"] = [
        r["wall_s"] / m for r, m in zip(runs["1w1t"], model_runs[1], strict=True)
    ]
    out["speedup_per_repeat"] = [
        a["wall_s"] / b["wall_s"] for a, b in zip(runs["1w1t"], runs["2w1t"], strict=True)
    ]
    out["memory_ratio_16x_vs_1x"] = (
        memory["16x"]["peak_rss_max_worker"] / memory["1x"]["peak_rss_max_worker"]
    )
    out["pass"] = {
        "overhead_ratio_1w1t": out["overhead_ratio_1w1t"] <= targets["overhead"],
        "speedup_2w_vs_1w": out["speedup_2w_vs_1w"] >= targets["speedup"],
        "memory_flat": out["memory_ratio_16x_vs_1x"] <= targets["memory"],
    }
    return out


def table(result: dict[str, Any]) -> str:
    s, summ, cost = result["settings"], result["summary"], result["tile_cost"]
    wall, model = summ["median_wall_s"], summ["median_model_s"]
    mem = result["memory"]
    mib = 1024.0**2
    n = result["repeats"]
    passed = summ["pass"]
    rss_timed = median([r["peak_rss_max_worker"] for r in result["restore_runs"]["2w1t"]])
    rows = [
        ("model time in-process, 1 torch thread", f"{model['1']:.1f} s"),
        ("`restore`, 1 worker x 1 thread", f"{wall['1w1t']:.1f} s"),
        (
            "restore / model (1 thread)",
            f"{summ['overhead_ratio_1w1t']:.3f}",
            "<= 1.10",
            passed["overhead_ratio_1w1t"],
        ),
    ]
    if "1w2t" in wall:
        rows += [
            ("model time in-process, 2 torch threads", f"{model['2']:.1f} s"),
            ("`restore`, 1 worker x 2 threads", f"{wall['1w2t']:.1f} s"),
            ("restore / model (2 threads)", f"{summ['overhead_ratio_1w2t']:.3f}"),
        ]
    rows += [
        ("`restore`, 2 workers x 1 thread", f"{wall['2w1t']:.1f} s"),
        (
            "speed-up 2 workers vs 1 (1 thread each)",
            f"{summ['speedup_2w_vs_1w']:.2f}x",
            ">= 1.7x",
            passed["speedup_2w_vs_1w"],
        ),
        (
            "tile px per output px, 1x (computed / unique grid)",
            f"{cost['1x']['tile_px_per_output_px']:.2f} / "
            f"{cost['1x']['tile_px_per_output_px_unique_grid']:.2f}",
        ),
        (
            "tile px per output px, 16x (computed / unique grid)",
            f"{cost['16x']['tile_px_per_output_px']:.2f} / "
            f"{cost['16x']['tile_px_per_output_px_unique_grid']:.2f}",
        ),
        ("peak RSS per worker, 1x, timing runs (2 workers)", f"{rss_timed / mib:.0f} MiB"),
        (
            "peak RSS per worker, 1x (2 workers)",
            f"{mem['1x']['peak_rss_max_worker'] / mib:.0f} MiB",
        ),
        (
            "peak RSS per worker, 16x (2 workers)",
            f"{mem['16x']['peak_rss_max_worker'] / mib:.0f} MiB",
        ),
        (
            "peak RSS ratio 16x / 1x",
            f"{summ['memory_ratio_16x_vs_1x']:.3f}",
            "flat (<= 1.10)",
            passed["memory_flat"],
        ),
    ]
    rows = [(*row, "", None)[:4] if len(row) < 4 else row for row in rows]
    lines = [
        f"| quantity (medians of {n} repeats) | value | target | met |",
        "| --- | --- | --- | --- |",
    ]
    met = {True: "yes", False: "**no**", None: ""}
    lines += [f"| {a} | {b} | {c} | {met[d]} |" for a, b, c, d in rows]
    lines += [
        "",
        f"Settings: model {s['model']} (base {s['base_channels']} ch, mult {s['channel_mult']}), "
        f"{s['sampler']} {s['samples']} samples x {s['steps']} steps, batch {s['batch']}, "
        f"precision {s['precision']}, "
        f"tile {s['tile']} overlap {s['overlap']}, chunk/block {s['chunk']}; 1x {s['shape_1x']} "
        f"({cost['1x']['blocks']} blocks, {cost['1x']['tiles_computed']} tiles), 16x {s['shape_16x']} "
        f"({cost['16x']['blocks']} blocks, {cost['16x']['tiles_computed']} tiles); memory runs "
        f"{s['memory_steps']} steps. Input: {result['input_source']}.",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch "
        f"{result['machine']['torch']}; load average before/after {result['machine']['load_before']} / "
        f"{result['machine']['load_after']}.",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    cpu = cpu_name()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file for all measurements")
    p.add_argument("--model", type=Path, default=bundled_model_path())
    p.add_argument(
        "--data", type=Path, default=DATA, help="W2S stack (T, C, Y, X); synthetic if missing"
    )
    p.add_argument("--side", type=int, default=512, help="side of the 1x input; 16x is (4 side)²")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="network arithmetic, for the model timing and the runs alike",
    )
    p.add_argument("--chunk", type=int, default=256, help="output chunk = block side")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-steps", type=int, default=1)
    p.add_argument(
        "--two-threads", action="store_true", help="also time model and 1 worker at 2 torch threads"
    )
    p.add_argument(
        "--workdir", type=Path, default=None, help="scratch dir (default: a temp dir, removed)"
    )
    args = p.parse_args(argv)

    command = (
        shlex.join([sys.executable, *sys.argv])
        if argv is None
        else shlex.join(["run_scaling.py", *argv])
    )
    info = {**machine(), "load_before": [round(x, 2) for x in os.getloadavg()]}
    if info["load_before"][0] > 0.5:
        print(
            f"warning: load average {info['load_before']}: other processes use the CPU, "
            "timings will not be clean",
            file=sys.stderr,
        )
    net, model_info = load_model(args.model, device="cpu")
    unet = net.config
    settings = run_settings(
        samples=args.samples,
        sampler=args.sampler,
        steps=args.steps,
        batch=args.batch,
        chunk=args.chunk,
        precision=args.precision,
    ).resolved(unet.train_resolution)
    multiple = unet.downsample_factor
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="run_scaling_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        small, large, source = make_inputs(workdir, args.side, args.data)
        shape_1x, shape_16x = (args.side,) * 2, (4 * args.side,) * 2
        cost = {
            "1x": tile_cost(shape_1x, settings, multiple),
            "16x": tile_cost(shape_16x, settings, multiple),
        }
        job, prepared = model_inputs(small, workdir / "unused.zarr", args.model, settings)
        thread_counts = [1, 2] if args.two_threads else [1]
        variants = [("1w1t", 1, 1), ("2w1t", 2, 1)]
        variants += [("1w2t", 1, 2)] if args.two_threads else []
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
        model_runs: dict[int, list[float]] = {k: [] for k in thread_counts}
        for r in range(args.repeats):  # interleaved, so slow drift in load hits every variant alike
            for threads in thread_counts:
                model_runs[threads].append(model_seconds(net, job, prepared, threads))
                print(
                    f"repeat {r}: model {threads}t {model_runs[threads][-1]:.2f} s", file=sys.stderr
                )
            for name, workers, threads in variants:
                runs[name].append(
                    timed_restore(
                        small, workdir / "out.zarr", args.model, settings, workers, threads
                    )
                )
                print(
                    f"repeat {r}: restore {name} {runs[name][-1]['wall_s']:.2f} s", file=sys.stderr
                )
        mem_settings = settings.changed(steps=args.memory_steps)
        memory = {
            label: timed_restore(path, workdir / "out.zarr", args.model, mem_settings, 2, 1)
            for label, path in (("1x", small), ("16x", large))
        }
        info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    targets = {"overhead": 1.10, "speedup": 1.7, "memory": 1.10}
    result = {
        "command": command,
        "machine": info,
        "input_source": source,
        "repeats": args.repeats,
        "settings": {
            **settings.to_dict(),
            "model": str(args.model),
            "base_channels": unet.base_channels,
            "channel_mult": list(unet.channel_mult),
            "memory_steps": args.memory_steps,
            "shape_1x": list(shape_1x),
            "shape_16x": list(shape_16x),
            "torch_threads_model": thread_counts,
        },
        "tile_cost": cost,
        "targets": targets,
        "model_seconds": {str(k): v for k, v in model_runs.items()},
        "restore_runs": runs,
        "memory": memory,
        "summary": summarise(runs, model_runs, memory, targets),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nCommand: {command}\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
