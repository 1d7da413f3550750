"""One output block: read block + halo → tiles → N samples each → blend → write own chunks.

This is the body of every Dask task of ``bigrestore run`` (DESIGN.md, "The engine"). It is
plain Python over explicit arguments (a :class:`RunJob` and a :class:`BlockTask`) so that it
can be tested without Dask, and it is idempotent: running a block twice writes the same bytes
to the same chunks (position-keyed noise, decision 3) and then sets its done-record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from bigrestore.devices import autocast_dtype, network_autocast, pick_device
from bigrestore.diffusion.core import Schedule, predict_regression, sample_repeated
from bigrestore.diffusion.noise import TileKey
from bigrestore.intensity import Stats, from_model, std_from_model, to_model
from bigrestore.run.tiling import (
    Block,
    TileGrid,
    blend_tiles,
    block_read_region,
    cut_tiles,
    pad_region,
)

log = logging.getLogger(__name__)

OUTPUTS = ("mean", "std", "entropy")


def sample_name(k: int) -> str:
    """Output image of the k-th individual sample (``--save-samples``): samples/NN.zarr."""
    return f"samples/{k:02d}.zarr"
OUTPUT_DTYPES = ("float32", "uint16", "uint8")


@dataclass(frozen=True)
class RestoreSettings:
    """User-facing settings of a run; all of them are recorded in the run manifest.

    ``steps`` None means the schedule's T (the paper's ancestral setting). The default sampler,
    DDIM with eta = 1 (the DDPM posterior noise, so a K-step version of the paper's Eq. 7) on
    uniformly spaced steps, was chosen on the W2S steps-vs-quality curve in
    docs/benchmarks.md: deterministic DDIM (eta = 0) carries the network's error at the first,
    almost pure-noise steps (alpha_bar_T ~ 6e-8) into the result and scored 5-8 dB lower; 50
    steps gained about 1 dB over 20 and bring the samples' spread closer to the posterior's.
    """

    samples: int = 8
    sampler: str = "ddim"
    steps: int | None = 50
    eta: float = 1.0
    spacing: str = "uniform"
    tile: int | None = None
    overlap: int | None = None
    seed: int = 0
    batch: int = 8
    dtype: str = "float32"
    output_scale: str = "target"
    chunk: int = 512
    chunks_per_block: int = 1
    save_samples: bool = False
    #: Clip each predicted clean image to [-1, 1] (model space) inside the sampler, as the
    #: authors' Palette-style code does. Without it the first steps divide the network's error
    #: by sqrt(alpha_bar_T) ~ 2.5e-4 and an imperfect model diverges (measured: values of ±1500).
    clip_x0: bool = True
    #: Network arithmetic (bigrestore.devices.autocast_dtype): auto = bf16 autocast where the
    #: hardware has native bf16 (GPUs; CPUs with AMX/AVX512-BF16), else fp32.
    precision: str = "auto"

    def resolved(self, train_resolution: int) -> RestoreSettings:
        """Tile defaults to twice the model's training patch size, overlap to a quarter tile.

        Why twice: a tile's border pixels see zero padding instead of image, and with tiles of
        the training size much of every tile is border. On W2S 256² crops (bundled model, 4
        samples, benchmarks/tile_w2s.py) tiles of 128 scored 1.6 dB PSNR above tiles of 64 and
        0.3 dB above one 256 tile per crop, whose bottleneck attention spans 16 times the
        area it was trained on."""
        tile = self.tile or 2 * train_resolution
        overlap = self.overlap if self.overlap is not None else tile // 4
        return replace(self, tile=tile, overlap=overlap)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs for any block of one run (small, picklable).

    ``input_array``: path of the level-0 zarr array; ``axes``: its axes (subset of tczyx);
    ``input_stats``: per input channel, the volume-global normalisation statistics;
    ``output_stats``: per output channel, the statistics that map model space back.
    """

    input_array: str
    axes: str
    output_root: str
    out_axes_shape: tuple[int, ...]
    model_path: str
    model_sha256: str
    settings: RestoreSettings
    input_stats: tuple[Stats, ...]
    output_stats: tuple[Stats, ...]
    objective: str
    schedule: dict[str, Any]
    multiple: int
    device: str = "auto"
    torch_threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockTask:
    """One block of one plane: ``t``/``z`` indices (0 if the axis is absent), the input channels
    fed to the model together, their positions in the output channel axis, and the YX block."""

    t: int
    z: int
    channels: tuple[int, ...]
    out_channels: tuple[int, ...]
    block: Block
    done_index: tuple[int, ...]

    @property
    def name(self) -> str:
        return "block-" + "-".join(str(i) for i in self.done_index)


# ----------------------------------------------------------------------------- model per worker

#: The one documented per-process cache (STYLE.md 5): a model is loaded once per worker.
_MODELS: dict[tuple[str, str, str], tuple[torch.nn.Module, dict[str, Any]]] = {}


def load_cached_model(path: str, sha256: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    from bigrestore.model.files import load_model

    key = (path, sha256, str(device))
    if key not in _MODELS:
        net, spec = load_model(Path(path), device=device)
        net.eval()
        _MODELS[key] = (net, spec)
    return _MODELS[key]


# ----------------------------------------------------------------------------- block work


def _index(axes: str, t: int, channels: tuple[int, ...] | slice, z: int, ys: slice, xs: slice) -> tuple:
    """A zarr selection for ``axes`` from per-axis parts (axes not present are skipped)."""
    parts = {"t": t, "c": list(channels) if isinstance(channels, tuple) else channels, "z": z, "y": ys, "x": xs}
    return tuple(parts[a] for a in axes)


def _write_index(axes: str, task: BlockTask, ys: slice, xs: slice) -> tuple:
    first, last = task.out_channels[0], task.out_channels[-1] + 1
    parts = {"t": task.t, "c": slice(first, last), "z": task.z, "y": ys, "x": xs}
    return tuple(parts[a] for a in axes)


def _cast(mean: np.ndarray, dtype: str) -> tuple[np.ndarray, int]:
    """Cast the mean to the requested dtype, clipping; returns the number of clipped pixels."""
    if dtype == "float32":
        return mean.astype(np.float32), 0
    info = np.iinfo(np.dtype(dtype))
    clipped = int(np.count_nonzero((mean < info.min) | (mean > info.max)))
    return np.clip(np.round(mean), info.min, info.max).astype(dtype), clipped


def compute_block(job: RunJob, task: BlockTask, net: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """Restore one block; write its chunks of mean/std/entropy and its done-record.

    Returns a small record: tiles computed, clipped pixels, seconds.
    """
    started = time.perf_counter()
    s = job.settings
    height, width = job.out_axes_shape[job.axes.index("y")], job.out_axes_shape[job.axes.index("x")]
    grid = TileGrid(height, width, s.tile, s.overlap, job.multiple)
    ry0, ry1, rx0, rx1 = block_read_region(task.block, grid)
    source = zarr.open_array(job.input_array, mode="r")
    region = np.asarray(source[_index(job.axes, task.t, task.channels, task.z, slice(ry0, ry1), slice(rx0, rx1))])
    if "c" not in job.axes:
        region = region[None]
    normalised = np.stack([to_model(region[i], job.input_stats[c]) for i, c in enumerate(task.channels)])
    padded = pad_region(normalised, grid, ry0, rx0)
    origins = grid.tiles_touching(*task.block.region)
    tiles = cut_tiles(padded, grid, ry0, rx0, origins)
    cond = torch.from_numpy(np.stack([tiles[o] for o in origins])).to(device)
    autocast = autocast_dtype(s.precision, device)
    with torch.inference_mode():
        if job.objective == "regression":
            mean_t = _regression(net, cond, s.batch, autocast)
            std_t = torch.zeros_like(mean_t)
            entropy_t = torch.zeros_like(mean_t)
        else:
            keys = [TileKey(s.seed, task.t, task.channels[0], task.z, ty, tx) for ty, tx in origins]
            stats = sample_repeated(
                net, cond, keys, s.samples, Schedule.from_dict(job.schedule),
                sampler=s.sampler, steps=s.steps, eta=s.eta, spacing=s.spacing, device=device,
                max_batch=s.batch, autocast_dtype=autocast, return_samples=s.save_samples, clip_x0=s.clip_x0,
            )
            mean_t, std_t, entropy_t = stats.mean, stats.std, stats.entropy
    maps = {"mean": mean_t, "std": std_t, "entropy": entropy_t}
    if s.save_samples and job.objective != "regression":
        maps.update({sample_name(k): stats.samples[k] for k in range(s.samples)})
    blended = {
        name: blend_tiles(
            {o: values[i] for i, o in enumerate(origins)}, grid, *task.block.region
        )
        for name, values in ((k, v.float().cpu().numpy()) for k, v in maps.items())
    }
    out_stats = [job.output_stats[c] for c in task.out_channels]
    mean = np.stack([from_model(blended["mean"][i], st) for i, st in enumerate(out_stats)])
    std = np.stack([std_from_model(blended["std"][i], st) for i, st in enumerate(out_stats)])
    entropy = blended["entropy"].astype(np.float32)
    mean, clipped = _cast(mean, s.dtype)
    root = Path(job.output_root)
    ys, xs = slice(task.block.y0, task.block.y1), slice(task.block.x0, task.block.x1)
    where = _write_index(job.axes, task, ys, xs)
    written = [("mean", mean), ("std", std), ("entropy", entropy)]
    for name in (n for n in blended if n.startswith("samples/")):
        sample = np.stack([from_model(blended[name][i], st) for i, st in enumerate(out_stats)])
        written.append((name, _cast(sample, s.dtype)[0]))
    for name, values in written:
        target = zarr.open_array(str(root / name / "0"), mode="r+")
        target[where] = values if "c" in job.axes else values[0]
    done = zarr.open_array(str(root / "done"), mode="r+")
    done[task.done_index] = 1
    return {"block": task.name, "tiles": len(origins), "clipped": clipped,
            "precision": "fp32" if autocast is None else "bf16", "seconds": time.perf_counter() - started}


def _regression(net: torch.nn.Module, cond: torch.Tensor, batch: int, autocast: torch.dtype | None) -> torch.Tensor:
    outputs = []
    for start in range(0, cond.shape[0], batch):
        part = cond[start : start + batch]
        with network_autocast(part.device.type, autocast):
            outputs.append(predict_regression(net, part).float())
    return torch.cat(outputs)


def run_block(job: RunJob, task: BlockTask) -> dict[str, Any]:
    """Dask task entry: pick this worker's device, load the model once, compute the block."""
    if job.torch_threads > 0 and torch.get_num_threads() != job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    device = pick_device(job.device)
    net, _ = load_cached_model(job.model_path, job.model_sha256, device)
    record = compute_block(job, task, net, device)
    record["device"] = str(device)
    return record
