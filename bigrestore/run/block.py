"""The work of ``bigrestore run`` on its workers, in named stages:

tiles of a block:  read their region → normalise → cut → N samples each (per-tile statistics)
one block:         gather the tiles touching it → blend → back to intensities → write its own
                   chunks → done-record

Every tile is computed once, by the task of the block it starts in (its owner, see
``TileGrid.tiles_owned``), and handed to every block it touches: a tile on a block border is not
computed twice. Each stage is a small function of explicit arguments, so the stages can be
tested and benchmarked without Dask; :func:`compute_block` chains them in one process. Running a
task twice gives the same bytes (position-keyed noise, DESIGN.md decision 3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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
from bigrestore.run.batching import resolve_batch
from bigrestore.run.tasks import BlockTask, RunJob
from bigrestore.run.tiling import (
    Block,
    TileGrid,
    blend_tiles,
    cut_tiles,
    pad_region,
    read_region_of,
)

Origin = tuple[int, int]


@dataclass
class TileResults:
    """Per-tile statistics in model space: ``maps[name]`` is float32 (n, C, t, t) for ``mean``,
    ``std``, ``entropy`` and (N, n, C, t, t) for ``sample``, in the order of ``origins``."""

    origins: list[Origin]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    device: str = "?"
    precision: str = "?"
    seconds: float = 0.0
    batch: int = 0

    def per_tile(self) -> dict[Origin, dict[str, np.ndarray]]:
        out: dict[Origin, dict[str, np.ndarray]] = {}
        for i, origin in enumerate(self.origins):
            out[origin] = {k: (v[:, i] if k == "sample" else v[i]) for k, v in self.maps.items()}
        return out


# ----------------------------------------------------------------------------- tile stages


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


def read_tiles_region(
    job: RunJob, task: BlockTask, grid: TileGrid, origins: list[Origin]
) -> tuple[np.ndarray, int, int]:
    """The input region the tiles at ``origins`` cover, (C, h, w), and its top-left (ry0, rx0)."""
    ry0, ry1, rx0, rx1 = read_region_of(grid.tiles_region(origins), grid)
    where = selection(job.axes, task.t, task.channels, task.z, slice(ry0, ry1), slice(rx0, rx1))
    region = read_region(job.input_array, where)
    return (region if "c" in job.axes else region[None]), ry0, rx0


def normalise(region: np.ndarray, job: RunJob, task: BlockTask) -> np.ndarray:
    """Intensities → model space with each channel's volume-global statistics (never per tile)."""
    return np.stack([to_model(region[i], job.input_stats[c]) for i, c in enumerate(task.channels)])


def cut(
    normalised: np.ndarray, grid: TileGrid, ry0: int, rx0: int, origins: list[Origin]
) -> np.ndarray:
    """The tiles at ``origins``, (n, C, tile, tile) float32 (reflect-padded where the image is
    smaller than a tile)."""
    tiles = cut_tiles(pad_region(normalised, grid, ry0, rx0), grid, ry0, rx0, origins)
    return np.stack([tiles[o] for o in origins])


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
    batch = resolve_batch(s.batch, net, cond.shape[-1], cond.shape[1], cond.device, autocast)
    with torch.inference_mode():
        if not objective.sampled:
            return {"mean": predict_in_batches(net, cond, batch, autocast)}
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
            max_batch=batch,
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


def compute_tiles(
    job: RunJob, task: BlockTask, origins: list[Origin], net: torch.nn.Module, device: torch.device
) -> TileResults:
    """The tiles at ``origins`` of the plane of ``task``: read, normalise, cut, sample."""
    started = time.perf_counter()
    if not origins:
        return TileResults([], device=str(device))
    grid = job.grid
    region, ry0, rx0 = read_tiles_region(job, task, grid, origins)
    tiles = cut(normalise(region, job, task), grid, ry0, rx0, origins)
    autocast = autocast_dtype(job.settings.precision, device)
    objective = get_objective(job.objective)
    maps = sample_tiles(
        net, torch.from_numpy(tiles).to(device), origins, job, task, objective, autocast
    )
    arrays = {name: values.float().cpu().numpy() for name, values in maps.items()}
    precision = "fp32" if autocast is None else "bf16"
    batch = resolve_batch(
        job.settings.batch, net, tiles.shape[-1], tiles.shape[1], device, autocast
    )
    return TileResults(
        origins, arrays, str(device), precision, time.perf_counter() - started, batch
    )


# ----------------------------------------------------------------------------- block stages


def blend(
    tiles: dict[Origin, dict[str, np.ndarray]], origins: list[Origin], grid: TileGrid, block: Block
) -> dict[str, np.ndarray]:
    """Each statistic blended over the block's own pixels: float64 (..., C, h, w)."""
    names = tiles[origins[0]].keys()
    return {
        name: blend_tiles({o: tiles[o][name] for o in origins}, grid, *block.region)
        for name in names
    }


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


def calibrated_maps(
    blended: dict[str, np.ndarray], calibration: dict[str, Any], coverage: float
) -> dict[str, np.ndarray]:
    """The calibrated interval (lower, upper at ``coverage``) and the calibrated std, in model
    space, from the blended mean and std (bigrestore.diffusion.calibration)."""
    from bigrestore.diffusion.calibration import STD_FLOOR, Calibration

    found = Calibration.from_dict(calibration)
    std = np.maximum(blended["std"], STD_FLOOR)
    half = found.half_width(std, coverage)
    return {
        "lower": blended["mean"] - half,
        "upper": blended["mean"] + half,
        "std_calibrated": found.calibrated_std(std),
    }


def assemble_block(job: RunJob, task: BlockTask, results: list[TileResults]) -> dict[str, Any]:
    """Blend the tiles touching the block (from ``results``, which may hold more), write every
    output volume's chunks of the block, then its done-record. Returns a small record."""
    started = time.perf_counter()
    grid = job.grid
    tiles: dict[Origin, dict[str, np.ndarray]] = {}
    for result in results:
        tiles.update(result.per_tile())
    blended = blend(tiles, grid.tiles_touching(*task.block.region), grid, task.block)
    if job.calibration is not None:
        blended.update(calibrated_maps(blended, job.calibration, job.settings.coverage))
    out_stats = [job.output_stats[c] for c in task.out_channels]
    sampling = job.settings.sampling
    pinned = 0
    if (
        job.sampled and sampling.clip_x0
    ):  # every sample ended at the clip bound: a truncated highlight
        pinned = int(np.count_nonzero(np.abs(blended["mean"]) >= sampling.clip_bound * (1 - 1e-6)))
    clipped = 0
    for planned in job.outputs():
        values, clipped_here = to_output_units(planned, blended, out_stats, job.settings.dtype)
        clipped += clipped_here if planned.path == "mean" else 0
        write_block(job, task, planned.path, values)
    mark_block_done(job.output_root, task.done_index)
    ran_on = sorted({f"{r.device} {r.precision}" for r in results if r.origins})
    return {
        "block": task.name,
        "clipped": clipped,
        "pinned": pinned,
        "ran_on": ran_on,
        "batch": sorted({r.batch for r in results if r.origins}),
        "seconds": time.perf_counter() - started,
    }


def compute_block(
    job: RunJob, task: BlockTask, net: torch.nn.Module, device: torch.device
) -> dict[str, Any]:
    """One block in this process: every tile touching it, then :func:`assemble_block` (tests
    and benchmarks; a run shares border tiles between blocks instead)."""
    origins = job.grid.tiles_touching(*task.block.region)
    record = assemble_block(job, task, [compute_tiles(job, task, origins, net, device)])
    return {
        **record,
        "tiles": len(origins),
        "evaluations": len(origins) * job.evaluations_per_tile(),
    }


# ----------------------------------------------------------------------------- worker entries

#: The one documented per-process cache (STYLE.md 5): a model is loaded once per worker.
_MODELS: dict[tuple[str, str, str], torch.nn.Module] = {}


def load_cached_model(path: str, sha256: str, device: torch.device) -> torch.nn.Module:
    from bigrestore.model.files import load_model

    key = (path, sha256, str(device))
    if key not in _MODELS:
        net, _ = load_model(Path(path), device=device)
        _MODELS[key] = net.eval()
    return _MODELS[key]


def run_tiles(job: RunJob, owner: BlockTask) -> TileResults:
    """Dask task: the tiles ``owner``'s block owns, on this worker's device, model loaded once."""
    if job.torch_threads > 0 and torch.get_num_threads() != job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    device = pick_device(job.device)
    net = load_cached_model(job.model_path, job.model_sha256, device)
    return compute_tiles(job, owner, job.grid.tiles_owned(*owner.block.region), net, device)


def run_assemble(job: RunJob, task: BlockTask, *results: TileResults) -> dict[str, Any]:
    """Dask task: blend and write one block from the tile results of its owner blocks."""
    return assemble_block(job, task, list(results))
