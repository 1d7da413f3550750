"""The tile stages of ``bigrestore run``: read a set of tiles' region → normalise → cut →
N samples each (foreground) or one first estimate (background) → per-tile statistics.

A tile task computes the tiles that start in its block (TileGrid.tiles_owned) once, for every
block they touch (bigrestore.run.block blends them). Each stage is a small function of
explicit arguments; noise is keyed by the tile's position (DESIGN.md decision 3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from bigrestore.devices import autocast_dtype, network_autocast
from bigrestore.diffusion.noise import TileKey
from bigrestore.diffusion.objectives import Objective, get_objective, predict_once
from bigrestore.diffusion.repeated import sample_repeated
from bigrestore.diffusion.schedule import Schedule
from bigrestore.intensity import to_network_input
from bigrestore.io.arrays import read_region
from bigrestore.run.batching import resolve_batch
from bigrestore.run.tasks import BlockTask, RunJob
from bigrestore.run.tiling import TileGrid, cut_tiles, pad_region, read_region_of

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
    owner: tuple[int, ...] = ()
    evaluations: int = 0
    skipped: int = 0

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
    """Intensities → model space with the statistics of each channel of the task's plane (or of
    the volume; never per tile); saturated pixels at the top of the model's range, fill pixels at
    its bottom."""
    stats = job.plane_values(job.input_stats, task)
    return np.stack([to_network_input(region[i], stats[c]) for i, c in enumerate(task.channels)])


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
        t = 0 if "t" in s.shared_noise else task.t  # shared: one noise per position along t / z
        z = 0 if "z" in s.shared_noise else task.z
        keys = [TileKey(s.seed, t, task.channels[0], z, ty, tx) for ty, tx in origins]
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
    """The tiles at ``origins`` of the plane of ``task``: read, normalise, cut, then sample the
    foreground tiles and give background tiles one first estimate (bigrestore.run.background)."""
    started = time.perf_counter()
    if not origins:
        return TileResults([], device=str(device), owner=task.done_index)
    grid = job.grid
    region, ry0, rx0 = read_tiles_region(job, task, grid, origins)
    tiles = cut(normalise(region, job, task), grid, ry0, rx0, origins)
    autocast = autocast_dtype(job.settings.precision, device)
    objective = get_objective(job.objective)
    background = skipped_tiles(job, task, tiles)
    arrays = sample_split(net, tiles, origins, background, job, task, objective, autocast, device)
    batch = resolve_batch(
        job.settings.batch, net, tiles.shape[-1], tiles.shape[1], device, autocast
    )
    n_skipped = int(background.sum())
    evaluations = (len(origins) - n_skipped) * job.evaluations_per_tile() + n_skipped
    precision = "fp32" if autocast is None else "bf16"
    return TileResults(
        origins,
        arrays,
        str(device),
        precision,
        time.perf_counter() - started,
        batch,
        task.done_index,
        evaluations,
        n_skipped,
    )


def skipped_tiles(job: RunJob, task: BlockTask, tiles: np.ndarray) -> np.ndarray:
    """Which of ``tiles`` (model space) are background, by the job's thresholds (none when
    the run does not skip)."""
    if job.background is None:
        return np.zeros(tiles.shape[0], dtype=bool)
    from bigrestore.run.background import background_tiles

    thresholds = job.plane_values(job.background, task)
    return background_tiles(tiles, [thresholds[c] for c in task.channels])


def sample_split(
    net: torch.nn.Module,
    tiles: np.ndarray,
    origins: list[Origin],
    background: np.ndarray,
    job: RunJob,
    task: BlockTask,
    objective: Objective,
    autocast: torch.dtype | None,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Per-tile maps (numpy, origin order): foreground tiles sampled in full (their bytes do not
    depend on the background ones), background tiles from one first estimate, std and entropy
    0; with skipping on, a ``skipped`` map (1 on background tiles)."""
    fg = np.flatnonzero(~background)
    parts: dict[str, np.ndarray] = {}
    if fg.size:
        maps = sample_tiles(
            net,
            torch.from_numpy(tiles[fg]).to(device),
            [origins[i] for i in fg],
            job,
            task,
            objective,
            autocast,
        )
        parts = {name: values.float().cpu().numpy() for name, values in maps.items()}
    if job.background is None:
        return parts
    bg_origins = [origins[i] for i in np.flatnonzero(background)]
    first = (
        first_estimates(net, tiles[background], bg_origins, job, task, autocast, device)
        if bg_origins
        else None
    )
    out = {}
    for name in ("mean", "std", "entropy", *(["sample"] if job.settings.save_samples else [])):
        shape = ((job.settings.samples,) if name == "sample" else ()) + tiles.shape
        values = np.zeros(shape, dtype=np.float32)
        if fg.size:
            values[..., fg, :, :, :] = parts[name]
        if first is not None and name in ("mean", "sample"):
            values[..., np.flatnonzero(background), :, :, :] = first
        out[name] = values
    out["skipped"] = np.broadcast_to(background[:, None, None, None], tiles.shape).astype(
        np.float32
    )
    return out


def first_estimates(
    net: torch.nn.Module,
    tiles: np.ndarray,
    origins: list[Origin],
    job: RunJob,
    task: BlockTask,
    autocast: torch.dtype | None,
    device: torch.device,
) -> np.ndarray:
    """The network's one-call clean-image estimate from pure noise (t = T), (n, C, t, t): the
    cheap evaluation of a background tile. Its noise is keyed by position like any sample's,
    in a channel slot no sample uses (-1 - channel)."""
    from bigrestore.diffusion.samplers import SamplerSettings

    one_call = SamplerSettings(
        sampler="ddim",
        steps=1,
        clip_x0=job.settings.sampling.clip_x0,
        clip_bound=job.settings.sampling.clip_bound,
    )
    schedule = Schedule.from_dict(job.schedule)
    keys = [
        TileKey(job.settings.seed, task.t, -1 - task.channels[0], task.z, ty, tx)
        for ty, tx in origins
    ]
    with torch.inference_mode():
        stats = sample_repeated(
            net,
            torch.from_numpy(tiles).to(device),
            keys,
            1,
            schedule,
            one_call,
            objective=get_objective(job.objective),
            device=device,
            max_batch=resolve_batch(
                job.settings.batch, net, tiles.shape[-1], tiles.shape[1], device, autocast
            ),
            autocast_dtype=autocast,
        )
    return stats.mean.float().cpu().numpy()
