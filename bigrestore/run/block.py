"""One output block: read block + halo → normalise → tiles → N samples each → blend →
back to intensities → write the block's own chunks → done-record.

This is the body of every Dask task of ``bigrestore run`` (DESIGN.md, "The engine"). Each stage
is a small named function of explicit arguments, so the stages can be tested and benchmarked
without Dask; :func:`compute_block` chains them. Running a block twice writes the same bytes to
the same chunks (position-keyed noise, decision 3) and then sets its done-record again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigrestore.devices import autocast_dtype, network_autocast, pick_device
from bigrestore.diffusion.noise import TileKey
from bigrestore.diffusion.objectives import Objective, get_objective, predict_once
from bigrestore.diffusion.repeated import sample_repeated
from bigrestore.diffusion.schedule import Schedule
from bigrestore.intensity import Stats, to_model
from bigrestore.io.arrays import read_region, write_region
from bigrestore.io.runstore import mark_block_done
from bigrestore.outputs import PlannedOutput, cast_to
from bigrestore.run.tasks import BlockTask, RunJob
from bigrestore.run.tiling import (
    Block,
    TileGrid,
    blend_tiles,
    block_read_region,
    cut_tiles,
    pad_region,
)

Origin = tuple[int, int]


# ----------------------------------------------------------------------------- stages


def selection(
    axes: str, t: int, channels: tuple[int, ...] | slice, z: int, ys: slice, xs: slice
) -> tuple:
    """A zarr selection for ``axes`` from per-axis parts (axes not present are skipped)."""
    parts = {
        "t": t,
        "c": list(channels) if isinstance(channels, tuple) else channels,
        "z": z,
        "y": ys,
        "x": xs,
    }
    return tuple(parts[a] for a in axes)


def read_block(job: RunJob, task: BlockTask, grid: TileGrid) -> tuple[np.ndarray, int, int]:
    """The input region every touching tile needs, (C, h, w), and its top-left (ry0, rx0)."""
    ry0, ry1, rx0, rx1 = block_read_region(task.block, grid)
    region = read_region(
        job.input_array,
        selection(job.axes, task.t, task.channels, task.z, slice(ry0, ry1), slice(rx0, rx1)),
    )
    return (region if "c" in job.axes else region[None]), ry0, rx0


def normalise(region: np.ndarray, job: RunJob, task: BlockTask) -> np.ndarray:
    """Intensities → model space with each channel's volume-global statistics (never per tile)."""
    return np.stack([to_model(region[i], job.input_stats[c]) for i, c in enumerate(task.channels)])


def tiles_of(
    normalised: np.ndarray, grid: TileGrid, ry0: int, rx0: int, block: Block
) -> tuple[list[Origin], np.ndarray]:
    """The origins of the tiles touching ``block`` and the tiles, (n, C, tile, tile) float32."""
    padded = pad_region(normalised, grid, ry0, rx0)
    origins = grid.tiles_touching(*block.region)
    tiles = cut_tiles(padded, grid, ry0, rx0, origins)
    return origins, np.stack([tiles[o] for o in origins])


def sample_tiles(
    net: torch.nn.Module,
    cond: torch.Tensor,
    origins: list[Origin],
    job: RunJob,
    task: BlockTask,
    objective: Objective,
    autocast: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """Per-tile statistics in model space: ``mean``, and for sampled objectives ``std``,
    ``entropy`` and (with save_samples) ``sample`` (N, n, C, t, t). Noise is keyed by the run
    seed, the plane and the tile's global origin."""
    s = job.settings
    with torch.inference_mode():
        if not objective.sampled:
            return {"mean": predict_in_batches(net, cond, s.batch, autocast)}
        keys = [TileKey(s.seed, task.t, task.channels[0], task.z, ty, tx) for ty, tx in origins]
        stats = sample_repeated(
            net,
            cond,
            keys,
            s.samples,
            Schedule.from_dict(job.schedule),
            s.sampling,
            objective=objective,
            device=cond.device,
            max_batch=s.batch,
            autocast_dtype=autocast,
            return_samples=s.save_samples,
        )
    maps = {"mean": stats.mean, "std": stats.std, "entropy": stats.entropy}
    if stats.samples is not None:
        maps["sample"] = stats.samples
    return maps


def predict_in_batches(
    net: torch.nn.Module, cond: torch.Tensor, batch: int, autocast: torch.dtype | None
) -> torch.Tensor:
    """One-pass predictions of a one-pass objective, ``batch`` tiles per network call."""
    outputs = []
    for start in range(0, cond.shape[0], batch):
        part = cond[start : start + batch]
        with network_autocast(part.device.type, autocast):
            outputs.append(predict_once(net, part).float())
    return torch.cat(outputs)


def blend(
    maps: dict[str, torch.Tensor], origins: list[Origin], grid: TileGrid, block: Block
) -> dict[str, np.ndarray]:
    """Each statistic blended over the block's own pixels: float64 (..., C, h, w)."""
    out = {}
    for name, values in maps.items():
        array = values.float().cpu().numpy()
        if name == "sample":  # (N, n, ...) -> tiles first
            array = np.moveaxis(array, 0, 1)
        out[name] = blend_tiles({o: array[i] for i, o in enumerate(origins)}, grid, *block.region)
    return out


def to_output_units(
    planned: PlannedOutput, blended: dict[str, np.ndarray], out_stats: list[Stats], dtype: str
) -> tuple[np.ndarray, int]:
    """One output volume's values for the block in its units and dtype; clipped pixel count."""
    volume = planned.volume
    values = blended[volume.statistic]
    if planned.sample is not None:
        values = values[planned.sample]
    converted = np.stack([volume.to_units(values[i], st) for i, st in enumerate(out_stats)])
    return cast_to(converted, dtype if volume.dtype == "run" else volume.dtype)


def write_block(job: RunJob, task: BlockTask, name: str, values: np.ndarray) -> None:
    """Write the block's own pixels of one output volume (whole chunks: one writer each)."""
    block = task.block
    first, last = task.out_channels[0], task.out_channels[-1] + 1
    where = selection(
        job.axes,
        task.t,
        slice(first, last),
        task.z,
        slice(block.y0, block.y1),
        slice(block.x0, block.x1),
    )
    write_region(
        str(Path(job.output_root) / name / "0"), where, values if "c" in job.axes else values[0]
    )


# ----------------------------------------------------------------------------- the block


def compute_block(
    job: RunJob, task: BlockTask, net: torch.nn.Module, device: torch.device
) -> dict[str, Any]:
    """Restore one block: every stage above, then its done-record. Returns a small record:
    tiles computed, network evaluations, clipped pixels, precision, seconds."""
    started = time.perf_counter()
    grid = job.grid
    region, ry0, rx0 = read_block(job, task, grid)
    origins, tiles = tiles_of(normalise(region, job, task), grid, ry0, rx0, task.block)
    objective = get_objective(job.objective)
    autocast = autocast_dtype(job.settings.precision, device)
    maps = sample_tiles(
        net, torch.from_numpy(tiles).to(device), origins, job, task, objective, autocast
    )
    blended = blend(maps, origins, grid, task.block)
    out_stats = [job.output_stats[c] for c in task.out_channels]
    clipped = 0
    for planned in job.outputs():
        values, clipped_here = to_output_units(planned, blended, out_stats, job.settings.dtype)
        clipped += clipped_here if planned.path == "mean" else 0
        write_block(job, task, planned.path, values)
    mark_block_done(job.output_root, task.done_index)
    return {
        "block": task.name,
        "tiles": len(origins),
        "evaluations": len(origins) * job.evaluations_per_tile(),
        "clipped": clipped,
        "precision": "fp32" if autocast is None else "bf16",
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- worker entry

#: The one documented per-process cache (STYLE.md 5): a model is loaded once per worker.
_MODELS: dict[tuple[str, str, str], torch.nn.Module] = {}


def load_cached_model(path: str, sha256: str, device: torch.device) -> torch.nn.Module:
    from bigrestore.model.files import load_model

    key = (path, sha256, str(device))
    if key not in _MODELS:
        net, _ = load_model(Path(path), device=device)
        _MODELS[key] = net.eval()
    return _MODELS[key]


def run_block(job: RunJob, task: BlockTask) -> dict[str, Any]:
    """Dask task entry: pick this worker's device, load the model once, compute the block."""
    if job.torch_threads > 0 and torch.get_num_threads() != job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    device = pick_device(job.device)
    record = compute_block(
        job, task, load_cached_model(job.model_path, job.model_sha256, device), device
    )
    record["device"] = str(device)
    return record
