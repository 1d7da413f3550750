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

#: Seconds from the start of a run to workers that can take tasks, besides their imports and
#: the model load (which :func:`calibrate` measures): scheduler, nannies, worker processes.
CLUSTER_START_SECONDS = 2.0
#: Output bytes per second of the pyramids, display windows and metadata written at the end
#: (2x2 means level by level, read back once for the windows), measured on a 2-core CPU.
FINISH_BYTES_PER_SECOND = 150e6
#: Memory of a Dask worker process beyond a bare Python process with torch and the model.
WORKER_OVERHEAD_BYTES = 150 * 2**20
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


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_disk_space(plan: RunPlan, output: Path) -> DiskCheck:
    """Refuse (CannotCreateOutputError, exit 73) a run whose outputs cannot fit on disk."""
    check = disk_check(plan, output)
    if not check.fits:
        found = f"{gib(check.free)} free at {check.where}"
        if check.existing:
            found += f" (+ {gib(check.existing)} in the existing output)"
        raise CannotCreateOutputError(
            describe(output, "disk space", f"{gib(check.required)} for the outputs", found)
            + "; free some space or write the outputs elsewhere with -o (the figure is "
            "uncompressed, pyramids included)"
        )
    return check


# ----------------------------------------------------------------------------- tile groups


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


# ----------------------------------------------------------------------------- memory


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
    maps = (3 + (samples if settings.save_samples else 0)) * out_c * tile * tile * 4
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
    parts = {
        "process_and_model": base + WORKER_OVERHEAD_BYTES,
        "network_activations": active if calibration and calibration.device == "cpu" else 0,
        "tile_group": group_bytes,
        "read_region": region,
        "held_tile_results": -(-held // max(1, workers)) * largest * maps,
        "block_assembly": assemble,
    }
    work = max(parts["network_activations"] + group_bytes + region, assemble)
    parts["peak"] = parts["process_and_model"] + parts["held_tile_results"] + work
    return parts


# ----------------------------------------------------------------------------- calibration


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
    found = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in found:
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found["VmRSS"], found["VmHWM"]


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


def _calibrate_here(request: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load the model as a worker does, time ``calls`` network calls at
    the run's batch, tile and precision, and measure their peak memory."""
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
    base = torch.cuda.memory_allocated(device) if cuda else _memory()[0]
    _reset_peak_memory()
    started = time.perf_counter()
    run(1)  # warm-up: kernels chosen, buffers allocated
    timed = time.perf_counter()
    made = run(request["calls"])
    if cuda:
        torch.cuda.synchronize(device)
    done = time.perf_counter()
    peak = torch.cuda.max_memory_allocated(device) if cuda else _memory()[1]
    return {
        "device": device.type,
        "precision": "fp32" if autocast is None else "bf16",
        "threads": torch.get_num_threads(),
        "batch": batch,
        "tile": tile,
        "calls": made,
        "seconds_per_call": (done - timed) / max(1, made),
        "busy_seconds": done - started,
        "base_bytes": 0 if cuda else base,
        "activation_bytes": max(0, peak - base),
    }


def _calibration_main() -> None:
    """Entry of the calibration process: a JSON request on stdin, the JSON result on stdout
    (a refusal as {"error": class name, "message": ...})."""
    import json
    import sys

    try:
        result = _calibrate_here(json.load(sys.stdin))
    except BigrestoreError as error:
        result = {"error": type(error).__name__, "message": str(error)}
    print(json.dumps(result))


def calibrate(plan: RunPlan, device: str = "auto", threads: int = 1, calls: int = 3) -> Calibration:
    """Time ``calls`` network calls of the plan's model on this machine in a fresh Python
    process (its threads and memory are a worker's own). The start-up seconds are that
    process's start, imports and model load, as a worker's."""
    import json
    import subprocess
    import sys

    from bigrestore import errors

    request = {"model": str(plan.model.directory), "settings": plan.settings.to_dict()}
    request.update(device=device, threads=threads, calls=max(1, calls))
    code = "from bigrestore.run.estimate import _calibration_main; _calibration_main()"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(request), capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"calibration failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise getattr(errors, result["error"], BigrestoreError)(result["message"])
    result["startup_seconds"] = max(0.0, wall - result.pop("busy_seconds"))
    return Calibration(**result)


# ----------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Estimate:
    """The figures of ``bigrestore plan`` (sizes in bytes, times in seconds)."""

    chunks_stored: int  # level-0 chunks present in the input (-1: not a local folder)
    chunks_expected: int
    blocks: int
    tiles: int
    network_evaluations: int
    tile_pixels_per_output_pixel: float
    workers: int
    network_calls: int  # batches through the network, padding included
    output_level0_bytes: int
    disk: DiskCheck
    memory_per_worker: dict[str, int]
    calibration: Calibration | None
    seconds: dict[str, float] | None  # startup, compute, finish, total

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["disk"]["fits"] = self.disk.fits
        record["tile_pixels_per_output_pixel"] = round(self.tile_pixels_per_output_pixel, 4)
        return record


def estimate(
    plan: RunPlan, output: Path, workers: int, calibration: Calibration | None = None
) -> Estimate:
    """The run's figures; the time only with a ``calibration`` (see the module docstring)."""
    from bigrestore.run.batching import CPU_BATCH

    groups = tile_groups(plan)
    batch = calibration.batch if calibration else plan.settings.batch or CPU_BATCH
    per_group = [calls_per_group(plan, n, batch) for n in groups]
    seconds = None
    if calibration:
        compute = makespan([c * calibration.seconds_per_call for c in per_group], workers)
        startup = CLUSTER_START_SECONDS + calibration.startup_seconds
        finish = output_bytes(plan)[1] / FINISH_BYTES_PER_SECOND
        seconds = {"startup": startup, "compute": compute, "finish": finish}
        seconds = {k: round(v, 2) for k, v in {**seconds, "total": sum(seconds.values())}.items()}
    stored, expected = chunk_census(plan.image)
    return Estimate(
        stored,
        expected,
        len(plan.tasks),
        plan.cost.tiles,
        plan.cost.network_evaluations,
        plan.cost.tile_pixels_per_output_pixel,
        workers,
        sum(per_group),
        output_bytes(plan)[0],
        disk_check(plan, output),
        memory_per_worker(plan, calibration, workers, groups),
        calibration,
        seconds,
    )


def scheduler_workers(address: str) -> int:
    """Workers of a running Dask cluster (``--scheduler``)."""
    from bigrestore.run.cluster import ClusterSpec, open_client, worker_count

    with open_client(ClusterSpec(scheduler=address)) as client:
        return worker_count(client)
