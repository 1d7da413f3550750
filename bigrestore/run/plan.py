"""Planning a run: everything is checked and decided here, before anything is written.

:func:`make_plan` opens the input and the model file (weights are not loaded), validates the
settings against both, picks channels, computes the intensity statistics (per plane, or per
volume) and lays out the tasks (one per output block and plane) and their cost. ``bigrestore run`` then only
executes the plan (DESIGN.md decision 8: bad input is refused before any compute or write).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bigrestore.errors import (
    BadInputError,
    IncompatibleModelError,
    MissingInputError,
    UsageError,
    describe,
)
from bigrestore.intensity import Stats
from bigrestore.io.images import OpenedImage, chunk_census, open_image
from bigrestore.io.meta import ImageMeta
from bigrestore.io.runstore import LevelZero
from bigrestore.outputs import PlannedOutput
from bigrestore.run.levels import input_statistics, plan_background
from bigrestore.run.settings import RunSettings, bundled_model_path
from bigrestore.run.tasks import BlockTask, RunJob
from bigrestore.run.tiling import TileGrid, plan_blocks

if TYPE_CHECKING:
    from bigrestore.model.files import ModelInfo

Group = tuple[tuple[int, ...], tuple[int, ...]]  # (input channels, output channel positions)


@dataclass(frozen=True)
class Cost:
    """What a run will compute: tiles (tile computations, duplicates on block borders
    included), network evaluations (one tile through the network once = 1) and tile pixels
    per output pixel (overlap and duplicates together)."""

    tiles: int
    network_evaluations: int
    tile_pixels_per_output_pixel: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "tiles": self.tiles,
            "network_evaluations": self.network_evaluations,
            "tile_pixels_per_output_pixel": round(self.tile_pixels_per_output_pixel, 4),
        }


@dataclass(frozen=True)
class RunPlan:
    """A validated run: the job every task shares, the tasks, and what the output holds."""

    input_path: Path
    image: OpenedImage
    model: ModelInfo
    settings: RunSettings
    job: RunJob
    tasks: list[BlockTask]
    done_shape: tuple[int, ...]
    outputs: list[PlannedOutput]
    level0: list[LevelZero]
    out_meta: ImageMeta
    channels: list[int]
    cost: Cost


def select_channels(image: OpenedImage, channels: tuple[str, ...] | None) -> list[int]:
    """Input channel indices from names or indices (default: all)."""
    meta = image.meta
    n = image.data.shape[meta.axes.index("c")] if "c" in meta.axes else 1
    if not channels:
        return list(range(n))
    names = list(meta.channel_names or [])
    chosen = []
    for item in channels:
        if item.isdigit() and int(item) < n:
            chosen.append(int(item))
        elif item in names:
            chosen.append(names.index(item))
        else:
            raise BadInputError(
                describe(image.path, "--channels", f"indices 0..{n - 1} or names {names}", item)
            )
        if chosen.count(chosen[-1]) > 1:
            raise BadInputError(
                describe(
                    image.path, "--channels", "each channel once", f"channel {chosen[-1]} twice"
                )
            )
    return chosen


def channel_groups(model: ModelInfo, selected: list[int]) -> list[Group]:
    """Channels the model restores together: one by one (single-channel model) or all at once."""
    unet = model.unet
    if unet.cond_channels == 1:
        return [((c,), (i,)) for i, c in enumerate(selected)]
    if unet.cond_channels == len(selected) == unet.out_channels:
        return [(tuple(selected), tuple(range(len(selected))))]
    raise IncompatibleModelError(
        describe(
            model.directory,
            "cond_channels",
            f"1 or {len(selected)} (selected channels)",
            unet.cond_channels,
        )
    )


def plan_tasks(
    axes: str, shape: tuple[int, ...], groups: list[Group], settings: RunSettings
) -> tuple[list[BlockTask], tuple[int, ...]]:
    """One task per (t, channel group, z, block), and the shape of the done-record array."""
    nt = shape[axes.index("t")] if "t" in axes else 1
    nz = shape[axes.index("z")] if "z" in axes else 1
    chunk = settings.chunk
    blocks = plan_blocks(
        shape[axes.index("y")], shape[axes.index("x")], chunk, chunk, settings.chunks_per_block
    )
    nby = 1 + max(b.index[0] for b in blocks)
    nbx = 1 + max(b.index[1] for b in blocks)
    tasks = [
        BlockTask(t, z, inputs, outputs, block, (t, g, z, *block.index))
        for t in range(nt)
        for z in range(nz)
        for g, (inputs, outputs) in enumerate(groups)
        for block in blocks
    ]
    return tasks, (nt, len(groups), nz, nby, nbx)


def plan_cost(
    tasks: list[BlockTask], grid: TileGrid, evaluations_per_tile: int, shared: bool = True
) -> Cost:
    """Tiles, network evaluations and tile pixels per output pixel of ``tasks``: each tile once
    (``shared``, how `run` computes: border tiles shared between blocks), or once per block
    that touches it (what a run without sharing would compute)."""
    count = grid.tiles_owned if shared else grid.tiles_touching
    per_block: dict[tuple[int, ...], int] = {}
    output_pixels = 0
    tiles = 0
    for task in tasks:
        key = task.block.region
        if key not in per_block:
            per_block[key] = len(count(*key))
        tiles += per_block[key]
        output_pixels += (task.block.y1 - task.block.y0) * (task.block.x1 - task.block.x0)
    ratio = tiles * grid.tile**2 / output_pixels if output_pixels else math.nan
    return Cost(tiles, tiles * evaluations_per_tile, ratio)


def load_run_model(model: str | Path | None) -> ModelInfo:
    """The model file (bundled when None), checked, weights not loaded."""
    from bigrestore.model.files import read_model

    path = Path(model) if model else bundled_model_path()
    if not path.exists():
        raise MissingInputError(
            f"{path}: no model here" + ("" if model else " (bundled model missing; pass --model)")
        )
    return read_model(path)


#: A plan with more tasks than this is refused: no real image needs it, a wrong shape does.
MAX_TASKS = 50_000_000


def check_chunks(image: OpenedImage, allow_missing: bool) -> None:
    """Refuse an input whose level 0 lacks chunks (they would read as zeros, silently), unless
    ``allow_missing`` (an image sparse by design); refuse absurd shapes either way."""
    stored, expected = chunk_census(image)
    if stored < 0 or stored >= expected:
        return
    shape = "x".join(str(n) for n in image.data.shape)
    if not allow_missing:
        raise BadInputError(
            describe(
                image.path, "level-0 chunks", f"{expected} stored chunks for shape {shape}", stored
            )
            + f"; {expected - stored} would read as zeros. Check the array metadata, or pass "
            "--allow-missing-chunks if the image is sparse by design"
        )


def count_tasks(axes: str, shape: tuple[int, ...], groups: int, settings: RunSettings) -> int:
    """Number of block tasks a plan will have, computed without enumerating them."""
    side = settings.chunk * settings.chunks_per_block
    planes = math.prod(shape[axes.index(a)] for a in "tz" if a in axes) * groups
    return planes * -(-shape[axes.index("y")] // side) * -(-shape[axes.index("x")] // side)


def check_finite(image: OpenedImage) -> None:
    """Refuse a floating-point input with NaN or infinite pixels, naming the first position
    (integer images cannot hold them). One lazy pass over the data, before anything is written."""
    data = image.data
    if not np.issubdtype(data.dtype, np.floating):
        return
    import dask.array as da

    bad = ~da.isfinite(data)
    if not bool(bad.any().compute()):
        return
    position = np.unravel_index(int(da.argmax(bad.ravel()).compute()), data.shape)
    where = ", ".join(f"{a}={int(i)}" for a, i in zip(image.meta.axes, position, strict=True))
    raise BadInputError(
        describe(image.path, "pixels", "finite values", f"NaN or inf at {where}")
        + "; replace them (e.g. with the background level) before restoring"
    )


def output_meta(image: OpenedImage, selected: list[int]) -> tuple[tuple[int, ...], ImageMeta]:
    """Shape and metadata of every output image: the input's, with the selected channels."""
    meta = image.meta
    shape = list(image.data.shape)
    if "c" in meta.axes:
        shape[meta.axes.index("c")] = len(selected)
    names = meta.channel_names or tuple(f"channel {i}" for i in range(max(selected) + 1))
    channel_names = tuple(names[c] for c in selected) if "c" in meta.axes else None
    colors = meta.channel_colors
    if colors is not None and "c" in meta.axes:
        colors = tuple(colors[c] for c in selected) if len(colors) > max(selected) else None
    return tuple(shape), ImageMeta(
        meta.axes, meta.scale, meta.translation, meta.units, channel_names, meta.name, colors
    )


def output_arrays(
    outputs: list[PlannedOutput], shape: tuple[int, ...], axes: str, settings: RunSettings
) -> list[LevelZero]:
    """The level-0 array of every output: the input's shape (selected channels), one plane
    per chunk on t/c/z and ``settings.chunk`` squares in YX."""
    chunks = tuple(
        min(n, settings.chunk) if a in "yx" else 1 for a, n in zip(axes, shape, strict=True)
    )
    return [
        LevelZero(
            p.path,
            shape,
            settings.dtype if p.volume.dtype == "run" else p.volume.dtype,
            axes,
            chunks,
        )
        for p in outputs
    ]


def find_calibration(info: ModelInfo, settings: RunSettings) -> dict[str, Any] | None:
    """The model's calibration made for exactly these (resolved) settings, or None."""
    from bigrestore.diffusion.calibration import matching

    found = (
        matching(info.calibrations, settings.calibration_key()) if info.objective.sampled else None
    )
    return found.to_dict() if found is not None else None


def check_dtype_range(
    path: Path, settings: RunSettings, stats: tuple[tuple[Stats, ...], ...], selected: list[int]
) -> None:
    """Refuse an integer output dtype that the input's levels lie wholly above (e.g. --dtype
    uint8 for 16-bit data at a few hundred units) when the output keeps the input's units:
    every pixel of the mean would clip to its maximum, which the run would only report after."""
    dtype = settings.dtype
    if dtype not in ("uint8", "uint16") or settings.output_scale != "input":
        return
    top = float(np.iinfo(np.dtype(dtype)).max)
    for c in selected:
        low = min(plane[c].low for plane in stats)
        if low > top:
            raise UsageError(
                describe(
                    path,
                    "--dtype",
                    f"a type that holds channel {c}'s levels (from {low:g} in the input's units)",
                    f"{dtype} (at most {top:g}: every pixel would clip)",
                )
                + "; use --dtype auto (the input's type) or float32"
            )


def make_plan(
    input_path: Path,
    output: Path,
    model: str | Path | None,
    settings: RunSettings,
    channels: tuple[str, ...] | None,
    series: int | None,
    device: str,
    torch_threads: int,
    allow_missing_chunks: bool = False,
    statistics: bool = True,
) -> RunPlan:
    """Validate everything and lay out the run (reads the input's statistics; writes nothing).
    ``statistics=False`` skips the pixel scans (finite check, percentiles; every channel gets
    Stats(0, 1) instead): a plan to look at, not to run (``bigrestore plan``)."""
    image = open_image(input_path, series=series)
    check_chunks(image, allow_missing_chunks)
    info = load_run_model(model)
    settings = settings.resolved(info.unet.train_resolution, image.data.dtype)
    grid_check = TileGrid(8, 8, settings.tile, settings.overlap, info.unet.downsample_factor)
    if info.objective.sampled:
        settings.sampling.timesteps(info.schedule, "run settings")
    selected = select_channels(image, channels)
    groups = channel_groups(info, selected)
    out_shape, out_meta = output_meta(image, selected)
    n_tasks = count_tasks(image.meta.axes, out_shape, len(groups), settings)
    if n_tasks > MAX_TASKS:
        found = f"{n_tasks} blocks"
        raise BadInputError(
            describe(image.path, "shape", f"a plan of at most {MAX_TASKS} blocks", found)
        )
    tasks, done_shape = plan_tasks(image.meta.axes, out_shape, groups, settings)
    norm = info.normalization
    if statistics:
        check_finite(image)
        stats = input_statistics(image, selected, norm.p_low, norm.p_high, settings.normalise_per)
        check_dtype_range(image.path, settings, stats, selected)
    else:
        stats = ((Stats(0.0, 1.0),) * (max(selected) + 1),)
    if settings.output_scale == "target" and norm.target is not None:
        targets: tuple[tuple[Stats, ...], ...] = ((norm.target.stats(),) * len(selected),)
    else:  # the input's own levels (bigrestore.run.scale fits them to the restoration)
        targets = tuple(tuple(plane[c] for c in selected) for plane in stats)
    job = RunJob(
        input_array=str(image.path / image.level_paths[0]),
        axes=image.meta.axes,
        output_root=str(output),
        out_axes_shape=out_shape,
        model_path=str(info.directory),
        model_sha256=info.weights_sha256,
        settings=settings,
        input_stats=stats,
        output_stats=targets,
        objective=info.objective.name,
        sampled=info.objective.sampled,
        schedule=info.schedule.to_dict(),
        multiple=grid_check.multiple,
        device=device,
        torch_threads=torch_threads,
        calibration=find_calibration(info, settings),
        background=plan_background(image, selected, stats, settings, info) if statistics else None,
        planes_z=out_shape[image.meta.axes.index("z")] if "z" in image.meta.axes else 1,
    )
    outputs = job.outputs()
    level0 = output_arrays(outputs, out_shape, image.meta.axes, settings)
    cost = plan_cost(tasks, job.grid, job.evaluations_per_tile())
    return RunPlan(
        input_path,
        image,
        info,
        settings,
        job,
        tasks,
        done_shape,
        outputs,
        level0,
        out_meta,
        selected,
        cost,
    )
