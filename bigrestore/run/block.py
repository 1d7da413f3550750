"""The block stages of ``bigrestore run`` and the workers' task entries:

one block:   gather the tiles touching it (bigrestore.run.tiles computes them) → blend →
             calibrated interval → back to intensities → write its own chunks → done-record

Every tile is computed once, by the task of the block it starts in (its owner, see
``TileGrid.tiles_owned``), and handed to every block it touches: a tile on a block border is not
computed twice. Each stage is a small function of explicit arguments, so the stages can be
tested and benchmarked without Dask; :func:`compute_block` chains them in one process. Running a
task twice gives the same bytes (position-keyed noise, DESIGN.md decision 3).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigrestore.devices import pick_device
from bigrestore.intensity import Stats
from bigrestore.io.arrays import mark_block_done, read_region, write_region
from bigrestore.outputs import PlannedOutput, cast_to
from bigrestore.run.tasks import BlockTask, RunJob
from bigrestore.run.tiles import Origin, TileResults, compute_tiles, selection
from bigrestore.run.tiling import Block, TileGrid, blend_tiles

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


#: A block's input pixels at a plateau of their channel, per output channel: a list of (kind,
#: mask over the block, level), kind "saturated" or "filled", empty where the channel has none.
Plateaus = list[list[tuple[str, np.ndarray, float]]]


def to_output_units(
    planned: PlannedOutput,
    blended: dict[str, np.ndarray],
    out_stats: list[Stats],
    dtype: str,
    plateaus: Plateaus | None = None,
) -> tuple[np.ndarray, int]:
    """One output volume's values for the block in its units and dtype; clipped pixel count.
    The mean keeps the input's level where the input was saturated or fill (``plateaus``):
    a censored measurement stays recognisable as one, not a guess of what lay above it, and
    pixels that hold no measurement stay at their fill value."""
    volume = planned.volume
    values = blended[volume.statistic]
    if planned.sample is not None:
        values = values[planned.sample]
    converted = np.stack([volume.to_units(values[i], st) for i, st in enumerate(out_stats)])
    if plateaus and planned.path == "mean":
        for i, entries in enumerate(plateaus):
            for _, mask, level in entries:
                converted[i][mask] = level
    return cast_to(converted, dtype if volume.dtype == "run" else volume.dtype)


def plateau_pixels(job: RunJob, task: BlockTask) -> Plateaus:
    """Where the block's own input pixels reach their channel's saturation level or fill level
    (read only when a channel of the plane has one)."""
    stats = [job.plane_values(job.input_stats, task)[c] for c in task.channels]
    if not any(st.plateaus() for st in stats):
        return [[] for _ in stats]
    block = task.block
    where = selection(
        job.axes,
        task.t,
        task.channels,
        task.z,
        slice(block.y0, block.y1),
        slice(block.x0, block.x1),
    )
    region = read_region(job.input_array, where)
    region = region if "c" in job.axes else region[None]
    found: Plateaus = []
    for i, st in enumerate(stats):
        entries = [] if st.saturated is None else [("saturated", region[i] >= st.saturated)]
        if st.filled is not None:
            entries.append(("filled", region[i] <= st.filled))
        found.append([(kind, mask, getattr(st, kind)) for kind, mask in entries])
    return found


def plateau_count(plateaus: Plateaus, kind: str) -> int:
    """How many of the block's input pixels sit at a plateau of ``kind``."""
    return sum(int(np.count_nonzero(m)) for entries in plateaus for k, m, _ in entries if k == kind)


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
    plane_stats = job.plane_values(job.output_stats, task)
    out_stats = [plane_stats[c] for c in task.out_channels]
    sampling = job.settings.sampling
    pinned = 0
    if (
        job.sampled and sampling.clip_x0
    ):  # every sample ended at the clip bound: a truncated highlight
        pinned = int(np.count_nonzero(np.abs(blended["mean"]) >= sampling.clip_bound * (1 - 1e-6)))
    saturated_entropy = 0  # pixels whose entropy is log2(N): every sample a different 8-bit level
    if "entropy" in blended and job.settings.samples > 1:
        saturated_entropy = int(
            np.count_nonzero(blended["entropy"] >= np.log2(job.settings.samples) - 1e-6)
        )
    plateaus = plateau_pixels(job, task)
    # the plateau levels are in the input's units: kept in the mean only when that is its scale
    kept = plateaus if job.settings.output_scale == "input" else None
    clipped = 0
    for planned in job.outputs():
        values, clipped_here = to_output_units(
            planned, blended, out_stats, job.settings.dtype, kept
        )
        clipped += clipped_here if planned.path == "mean" else 0
        write_block(job, task, planned.path, values)
    mark_block_done(job.output_root, task.done_index)
    ran_on = sorted({f"{r.device} {r.precision}" for r in results if r.origins})
    own = [r for r in results if r.owner == task.done_index]
    return {
        "block": task.name,
        "clipped": clipped,
        "pinned": pinned,
        "entropy_saturated": saturated_entropy,
        "saturated_input": plateau_count(plateaus, "saturated"),
        "fill_input": plateau_count(plateaus, "filled"),
        "pixels": int(np.prod(blended["mean"].shape)),
        "tiles": sum(len(r.origins) for r in own),
        "evaluations": sum(r.evaluations for r in own),
        "skipped": sum(r.skipped for r in own),
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
    return assemble_block(job, task, [compute_tiles(job, task, origins, net, device)])


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
