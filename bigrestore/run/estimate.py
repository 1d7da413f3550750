"""What a run will cost before it starts: output size on disk, memory per worker and time.

:func:`estimate` turns a :class:`~bigrestore.run.plan.RunPlan` into figures (``bigrestore
plan`` prints them). Sizes and counts come from the plan alone; the time and the network's
activation memory come from :func:`calibrate`, a few timed sampler steps of the real model at
the run's batch, tile, precision and threads in a fresh process (as a worker would run them).
:func:`check_disk_space` is the guard ``run`` applies before it writes anything.

The time is a schedule of the run's tile groups (one per owner block, in plan order, each
``ceil(tiles x samples / batch)`` padded network batches of K steps) over the workers, plus
the start of the cluster and the workers' model load, plus the pyramids and metadata.
"""

from __future__ import annotations

import heapq
import math
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bigrestore.errors import BigrestoreError, CannotCreateOutputError, describe
from bigrestore.io.images import chunk_census
from bigrestore.io.write import PYRAMID_MIN_SIDE, pyramid_shapes
from bigrestore.run.tiling import read_region_of

if TYPE_CHECKING:
    from bigrestore.run.plan import RunPlan

#: Seconds of a local cluster besides the workers' imports and model load (:func:`calibrate`
#: measures those): scheduler, nannies and worker processes starting, then stopping (a nanny
#: gives its worker 4 s to exit), measured on a 2-core CPU.
CLUSTER_SECONDS = 7.0
#: Output bytes per second of the pyramids, display windows and metadata written at the end
#: (2x2 means level by level, read back once for the windows), measured on a 2-core CPU.
FINISH_BYTES_PER_SECOND = 150e6
#: Memory of a Dask worker process beyond a bare Python process with torch and the model.
WORKER_OVERHEAD_BYTES = 100 * 2**20
#: Blocks submitted ahead per worker (``run_blocks``' window), whose tile results are held.
WINDOW_PER_WORKER = 4


@dataclass(frozen=True)
class Calibration:
    """Timed network calls of the run's model on this machine."""

    device: str
    precision: str
    threads: int
    batch: int
    tile: int
    calls: int
    processes: int  # calibrated at once (as many as the run's workers on this machine)
    seconds_per_call: float
    startup_seconds: float  # import torch and bigrestore, load the model
    base_bytes: int  # process memory with the model loaded
    activation_bytes: int  # peak extra memory of a network batch (GPU: device memory)


@dataclass(frozen=True)
class DiskCheck:
    """Bytes the outputs need (uncompressed, pyramids included) against the free space."""

    where: str
    required: int
    free: int
    existing: int  # an existing output at that path (freed by --overwrite, reused by --resume)

    @property
    def fits(self) -> bool:
        return self.required <= self.free + self.existing


def output_bytes(plan: RunPlan, min_side: int = PYRAMID_MIN_SIDE) -> tuple[int, int]:
    """Uncompressed bytes of every output volume: level 0 only, and with its pyramid."""
    level0 = total = 0
    for array in plan.level0:
        item = np.dtype(array.dtype).itemsize
        shapes = pyramid_shapes(array.shape, array.axes, min_side)
        level0 += math.prod(array.shape) * item
        total += sum(math.prod(shape) for shape in shapes) * item
    return level0, total + math.prod(plan.done_shape)


def _existing_bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(path)
        for name in names
    )


def disk_check(plan: RunPlan, output: Path) -> DiskCheck:
    """Free space where ``output`` will be written (its nearest existing folder) against what
    the outputs need, counting what an existing output there already holds."""
    where = Path(output).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    return DiskCheck(str(where), output_bytes(plan)[1], free, _existing_bytes(Path(output)))


def check_disk_space(plan: RunPlan, output: Path) -> DiskCheck:
    """Refuse (CannotCreateOutputError, exit 73) a run whose outputs cannot fit on disk."""
    check = disk_check(plan, output)
    if not check.fits:
        free, need, old = (
            f"{n / 2**30:.2f} GiB" for n in (check.free, check.required, check.existing)
        )
        found = f"{free} free at {check.where}"
        found += f" (+ {old} in the existing output)" if check.existing else ""
        raise CannotCreateOutputError(
            describe(output, "disk space", f"{need} for the outputs", found)
            + "; free some space or write the outputs elsewhere with -o (the figure is "
            "uncompressed, pyramids included)"
        )
    return check


def tile_groups(plan: RunPlan) -> list[int]:
    """Tiles of every tile group (one per block, owned tiles), in plan order."""
    grid = plan.job.grid
    owned: dict[tuple[int, int, int, int], int] = {}
    sizes = []
    for task in plan.tasks:
        region = task.block.region
        if region not in owned:
            owned[region] = len(grid.tiles_owned(*region))
        sizes.append(owned[region])
    return sizes


def calls_per_group(plan: RunPlan, tiles: int, batch: int) -> int:
    """Network calls (batches of ``batch`` items, padded) that a group of ``tiles`` makes."""
    if not tiles:
        return 0
    if not plan.job.sampled:
        return -(-tiles // batch)
    samples = plan.settings.samples
    return -(-tiles * samples // batch) * (plan.job.evaluations_per_tile() // samples)


def makespan(durations: list[float], workers: int) -> float:
    """Seconds until ``workers`` finish ``durations`` taken in order by whichever is free."""
    if len(durations) <= workers:
        return max(durations, default=0.0)
    free = [0.0] * workers
    for seconds in durations:
        heapq.heapreplace(free, free[0] + seconds)
    return max(free)


def memory_per_worker(
    plan: RunPlan, calibration: Calibration | None, workers: int, groups: list[int]
) -> dict[str, int]:
    """Estimated peak bytes of one worker, by part: the process with the model, the network's
    activations, the largest tile group (its tiles, N samples each, the statistics), the
    input region it reads, and the tile results it holds for blocks still to be written."""
    job, settings = plan.job, plan.settings
    tile, cond_c = settings.tile, plan.model.unet.cond_channels
    out_c = plan.model.unet.out_channels
    samples = settings.samples if job.sampled else 1
    largest = max(groups, default=0)
    maps = len(plan.outputs) * out_c * tile * tile * 4  # per tile: one map per output volume
    group_bytes = largest * (
        cond_c * tile * tile * 4 + samples * out_c * tile * tile * 4 + 2 * maps
    )
    region = 0
    if largest:
        task = plan.tasks[groups.index(largest)]
        origins = job.grid.tiles_owned(*task.block.region)
        ry0, ry1, rx0, rx1 = read_region_of(job.grid.tiles_region(origins), job.grid)
        item = plan.image.data.dtype.itemsize  # the input, then normalised and cut (float32)
        region = (ry1 - ry0) * (rx1 - rx0) * len(task.channels) * (item + 3 * 4)
    blocks_per_row = plan.done_shape[-1]
    held = min(len(groups), blocks_per_row + 2 + WINDOW_PER_WORKER * workers)
    side = settings.chunk * settings.chunks_per_block
    assemble = len(plan.outputs) * len(plan.tasks[0].out_channels) * side * side * (8 + 4)
    base = calibration.base_bytes if calibration else 0
    active = calibration.activation_bytes if calibration else 0
    on_gpu = calibration is not None and calibration.device == "cuda"
    parts = {
        "process_and_model": base + WORKER_OVERHEAD_BYTES,
        "network_activations": 0 if on_gpu else active,
        "gpu_network_memory": active if on_gpu else 0,
        "tile_group": group_bytes,
        "read_region": region,
        "held_tile_results": -(-held // max(1, workers)) * largest * maps,
        "block_assembly": assemble,
    }
    work = max(parts["network_activations"] + group_bytes + region, assemble)
    parts["peak"] = parts["process_and_model"] + parts["held_tile_results"] + work
    return parts


def calibration_sampling(sampling: Any, schedule: Any, steps: int) -> Any:
    """The run's sampler on ``steps`` steps; DDIM with the run's eta where the sampler cannot
    take that few (ancestral walks all T): the per-step work is the same network call."""
    from bigrestore.diffusion.samplers import SamplerSettings

    try:
        trial = SamplerSettings(**{**sampling.model_dump(), "steps": steps})
        trial.timesteps(schedule)
        return trial
    except (BigrestoreError, ValueError):
        return SamplerSettings(steps=steps, eta=sampling.eta, clip_x0=sampling.clip_x0)


def _memory() -> tuple[int, int]:
    """(resident, peak resident) bytes of this process (Linux; zeros elsewhere)."""
    try:
        lines = Path("/proc/self/status").read_text(encoding="ascii").splitlines()
    except OSError:
        return 0, 0
    found = dict(line.split(":", 1) for line in lines if ":" in line)
    rss, peak = (int(found.get(k, "0 kB").split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))
    return rss, peak


def _reset_peak_memory() -> None:
    try:  # Linux: "5" resets the peak resident size (VmHWM) to the current one
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        pass


def _network_steps(net: Any, cond: Any, info: Any, settings: Any, autocast: Any) -> Any:
    """``run(k)``: about k network calls on ``cond`` as a run makes them (the sampler with its
    position-keyed noise, or one-pass predictions); returns the calls made."""
    import torch

    from bigrestore.devices import network_autocast
    from bigrestore.diffusion.noise import NoiseStream, TileKey
    from bigrestore.diffusion.objectives import predict_once
    from bigrestore.diffusion.repeated import sample

    tile = cond.shape[-1]

    def run(k: int) -> int:
        with torch.inference_mode():
            if not info.objective.sampled:
                for _ in range(k):
                    with network_autocast(cond.device.type, autocast):
                        predict_once(net, cond)
                return k
            sampling = calibration_sampling(settings.sampling, info.schedule, k)
            streams = [NoiseStream(TileKey(0, 0, 0, 0, i * tile, 0), 0) for i in range(len(cond))]
            sample(net, cond, streams, info.schedule, sampling, objective=info.objective,
                   device=cond.device, autocast_dtype=autocast)  # fmt: skip
            return sampling.evaluations_per_sample(info.schedule)

    return run


def _calibrate_here(request: dict[str, Any], ready: Any) -> dict[str, Any]:
    """In a fresh process: load the model as a worker does, warm up, call ``ready(seconds of
    the warm-up)`` (which waits until every calibration process is ready), then time
    ``calls`` network calls at the run's batch, tile and precision and their peak memory."""
    import torch

    from bigrestore.devices import autocast_dtype, pick_device
    from bigrestore.model.files import load_model
    from bigrestore.run.batching import resolve_batch
    from bigrestore.run.settings import RunSettings

    torch.set_num_threads(max(1, request["threads"]))
    settings = RunSettings.model_validate(request["settings"])
    device = pick_device(request["device"])
    net, info = load_model(Path(request["model"]), device=device)
    autocast = autocast_dtype(settings.precision, device)
    channels, tile = info.unet.cond_channels, int(settings.tile or 0)
    batch = resolve_batch(settings.batch, net, tile, channels, device, autocast)
    cond = torch.randn((batch, channels, tile, tile), generator=torch.Generator().manual_seed(0))
    run = _network_steps(net, cond.to(device), info, settings, autocast)
    cuda = device.type == "cuda"
    host = _memory()[0]
    base = torch.cuda.memory_allocated(device) if cuda else host
    _reset_peak_memory()
    started = time.perf_counter()
    run(1)  # warm-up: kernels chosen, buffers allocated
    ready(time.perf_counter() - started)
    times = []  # call by call: their median is robust to bursts of other load
    for _ in range(request["calls"]):
        timed = time.perf_counter()
        made = run(1)
        if cuda:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - timed) / made)
    peak = torch.cuda.max_memory_allocated(device) if cuda else _memory()[1]
    precision = "fp32" if autocast is None else "bf16"
    return {"device": device.type, "precision": precision, "threads": torch.get_num_threads(),
            "batch": batch, "tile": tile, "calls": len(times), "seconds_per_call": times,
            "base_bytes": host, "activation_bytes": max(0, peak - base)}  # fmt: skip


def _calibration_main() -> None:
    """A calibration process: the JSON request in argv[1]; prints "ready SECONDS" after the
    warm-up, waits for a line on stdin, prints the JSON result (or {"error", "message"})."""
    import json
    import sys

    def ready(seconds: float) -> None:
        print(f"ready {seconds}", flush=True)
        sys.stdin.readline()

    try:
        result = _calibrate_here(json.loads(sys.argv[1]), ready)
    except BigrestoreError as error:
        result = {"error": type(error).__name__, "message": str(error)}
    print(json.dumps(result), flush=True)


def calibrate(
    plan: RunPlan, device: str = "auto", threads: int = 1, calls: int = 5, processes: int = 1
) -> Calibration:
    """Time ``calls`` network calls (their median) of the plan's model on this machine, in
    ``processes`` fresh Python processes at once (as many as the run's workers here: their
    threads, memory and the machine's other load are a worker's). The start-up seconds are
    their start, imports and model load."""
    import contextlib
    import json
    import subprocess
    import sys

    from bigrestore import errors

    request = {"model": str(plan.model.directory), "settings": plan.settings.to_dict()}
    request.update(device=device, threads=threads, calls=max(1, calls))
    code = "from bigrestore.run.estimate import _calibration_main; _calibration_main()"
    command = [sys.executable, "-c", code, json.dumps(request)]
    pipe = subprocess.PIPE
    started = time.perf_counter()
    children = [subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=pipe, text=True)
                for _ in range(max(1, processes))]  # fmt: skip
    lines = [child.stdout.readline() for child in children]  # type: ignore[union-attr]
    warmups = [float(line.split()[1]) for line in lines if line.startswith("ready ")]
    startup = time.perf_counter() - started - sum(warmups) / max(1, len(warmups))
    for child in children:  # all at once: they time their calls side by side
        with contextlib.suppress(OSError):
            child.stdin.write("go\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
    results = []
    for child, line in zip(children, lines, strict=True):
        out, err = child.communicate()
        text = (out if line.startswith("ready ") else line + out).strip()
        if child.returncode or not text:
            raise RuntimeError(f"calibration failed: {err.strip()[-2000:]}")
        results.append(json.loads(text.splitlines()[-1]))
        if "error" in results[-1]:
            raise getattr(errors, results[-1]["error"], BigrestoreError)(results[-1]["message"])
    result = {**results[0], "startup_seconds": max(0.0, startup), "processes": len(results)}
    result["seconds_per_call"] = statistics.median(
        t for r in results for t in r["seconds_per_call"]
    )
    result["activation_bytes"] = max(r["activation_bytes"] for r in results)
    return Calibration(**result)


def estimate(
    plan: RunPlan, output: Path, workers: int, calibration: Calibration | None = None
) -> dict[str, Any]:
    """The figures of ``bigrestore plan`` (bytes, seconds): the input's chunk census, blocks,
    tiles, network evaluations and batched calls (padding included), output size, the disk
    check, memory per worker and, with a ``calibration``, the time (module docstring)."""
    from bigrestore.run.batching import CPU_BATCH

    groups = tile_groups(plan)
    batch = calibration.batch if calibration else plan.settings.batch or CPU_BATCH
    per_group = [calls_per_group(plan, n, batch) for n in groups]
    seconds = None
    if calibration:
        compute = makespan([c * calibration.seconds_per_call for c in per_group], workers)
        startup = CLUSTER_SECONDS + calibration.startup_seconds
        finish = output_bytes(plan)[1] / FINISH_BYTES_PER_SECOND
        seconds = {"startup": startup, "compute": compute, "finish": finish}
        seconds = {k: round(v, 2) for k, v in {**seconds, "total": sum(seconds.values())}.items()}
    stored, expected = chunk_census(plan.image)
    disk = disk_check(plan, output)
    return {
        "chunks_stored": stored,  # -1: not a local folder (not counted)
        "chunks_expected": expected,
        "blocks": len(plan.tasks),
        **plan.cost.to_dict(),
        "network_calls": sum(per_group),
        "workers": workers,
        "output_level0_bytes": output_bytes(plan)[0],
        "disk": {**asdict(disk), "fits": disk.fits},
        "memory_per_worker": memory_per_worker(plan, calibration, workers, groups),
        "calibration": asdict(calibration) if calibration else None,
        "seconds": seconds,
    }
