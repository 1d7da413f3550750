"""The Python API that the CLI wraps: :func:`restore` (``bigrestore run``).

``restore`` validates everything before any compute or write (DESIGN.md decision 8), plans
one task per output block, runs them on Dask, then writes pyramids, NGFF metadata and the run
manifest last (decision 4), so an unfinished output is never mistaken for a finished one.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from bigrestore import __version__
from bigrestore.devices import check_precision
from bigrestore.diffusion.core import Schedule, check_sampler
from bigrestore.errors import (
    BadInputError,
    BigrestoreError,
    CannotCreateOutputError,
    IncompatibleModelError,
    IOFailure,
    MissingInputError,
    ResumableInterrupt,
    UsageError,
    describe,
)
from bigrestore.intensity import P_HIGH, P_LOW, Stats, percentile_stats
from bigrestore.io.ome import (
    PYRAMID_MIN_SIDE,
    ImageMeta,
    OpenedImage,
    check_output,
    create_level0,
    finalize_image,
    open_image,
    prepare_output,
)
from bigrestore.run.block import (
    OUTPUT_DTYPES,
    OUTPUTS,
    BlockTask,
    RestoreSettings,
    RunJob,
    run_block,
    sample_name,
)
from bigrestore.run.cluster import ClusterSpec, open_client, run_tasks
from bigrestore.run.tiling import TileGrid, plan_blocks

log = logging.getLogger(__name__)

MANIFEST_KEY = "bigrestore"
#: Pixels of one plane above which a coarser pyramid level is used for the percentiles.
STATS_LEVEL_PIXELS = 1024 * 1024


def bundled_model_path() -> Path:
    """The model shipped inside the package (used when ``--model`` is not given)."""
    return Path(str(importlib.resources.files("bigrestore") / "data" / "model"))


def default_output(input_path: Path) -> Path:
    name = input_path.name.rstrip("/")
    stem = name[: -len(".zarr")] if name.endswith(".zarr") else name
    return input_path.with_name(stem + ".restored.zarr")


@dataclass
class RestoreResult:
    """Where the outputs are and what the run measured."""

    output: Path
    blocks_total: int
    blocks_done_now: int
    tiles: int
    seconds: float
    clipped: int
    manifest: dict[str, Any] = field(default_factory=dict)


def _select_channels(image: OpenedImage, channels: tuple[str, ...] | None) -> list[int]:
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
            raise BadInputError(describe(image.path, "--channels", f"indices 0..{n - 1} or names {names}", item))
    return chosen


def input_statistics(image: OpenedImage, channels: list[int], p_low: float, p_high: float) -> dict[int, Stats]:
    """Volume-global percentiles per channel, from the coarsest level still ≥ ~1 MPixel per plane."""
    level = 0
    axes = image.meta.axes
    iy, ix = axes.index("y"), axes.index("x")
    for index, shape in enumerate(image.level_shapes):
        if shape[iy] * shape[ix] >= STATS_LEVEL_PIXELS or index == 0:
            level = index
    data = open_image(image.path, level=level).data if level else image.data
    stats = {}
    for c in channels:
        sub = data[(slice(None),) * axes.index("c") + (c,)] if "c" in axes else data
        planes = sub.reshape((-1, *sub.shape[-2:]))
        keep = max(1, int(4e6 // (sub.shape[-2] * sub.shape[-1])))
        step = max(1, -(-planes.shape[0] // keep))
        stats[c] = percentile_stats(np.asarray(planes[::step].compute()), p_low, p_high)
    return stats


def _plan_tasks(meta: ImageMeta, shape: tuple[int, ...], groups: list[tuple[tuple[int, ...], tuple[int, ...]]],
                settings: RestoreSettings) -> tuple[list[BlockTask], tuple[int, ...]]:
    axes = meta.axes
    nt = shape[axes.index("t")] if "t" in axes else 1
    nz = shape[axes.index("z")] if "z" in axes else 1
    chunk = settings.chunk
    blocks = plan_blocks(shape[axes.index("y")], shape[axes.index("x")], chunk, chunk, settings.chunks_per_block)
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


def output_names(settings: RestoreSettings, spec: dict[str, Any]) -> list[str]:
    """mean, std, entropy, and samples/NN.zarr with ``save_samples`` (diffusion models)."""
    names = list(OUTPUTS)
    if settings.save_samples and spec.get("objective", "diffusion") == "diffusion":
        names += [sample_name(k) for k in range(settings.samples)]
    return names


def _check_resume(root: zarr.Group, record: dict[str, Any], path: Path) -> None:
    previous = dict(root.attrs.get(MANIFEST_KEY, {}))
    for key in ("input", "model_sha256", "settings", "channels"):
        if previous.get(key) != record[key]:
            raise IncompatibleModelError(
                describe(path, f"--resume {key}", previous.get(key), record[key])
                + "; run with the original model and settings, or use --overwrite"
            )


def restore(
    input_path: str | Path,
    output_path: str | Path | None = None,
    *,
    model: str | Path | None = None,
    settings: RestoreSettings | None = None,
    cluster: ClusterSpec | None = None,
    channels: tuple[str, ...] | None = None,
    series: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    ngff_version: str = "0.5",
    device: str = "auto",
    progress: Callable[[dict[str, Any], int, int], None] | None = None,
    on_client: Callable[[Any], None] | None = None,
    pyramid_min_side: int = PYRAMID_MIN_SIDE,
) -> RestoreResult:
    """Restore an OME-Zarr image; write ``mean``, ``std``, ``entropy`` multiscale images.

    ``progress(record, done, total)`` is called after every block (the CLI draws a bar with it).
    Raises typed errors (see bigrestore.errors) before any write when the input is bad.
    """
    from bigrestore.model.files import load_model

    settings = settings or RestoreSettings()
    cluster = cluster or ClusterSpec()
    input_path = Path(input_path)
    image = open_image(input_path, series=series)
    output = Path(output_path) if output_path else default_output(input_path)
    if output.resolve() == input_path.resolve():
        raise CannotCreateOutputError(f"{output}: output would replace the input")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if not resume:
        check_output(output, overwrite)  # before the statistics pass: refuse early, change nothing
    elif output.exists() and not os.access(output, os.W_OK | os.X_OK):
        raise CannotCreateOutputError(f"{output}: cannot resume: the output is not writable")
    if settings.dtype not in OUTPUT_DTYPES:
        raise BadInputError(describe("--dtype", "dtype", " or ".join(OUTPUT_DTYPES), settings.dtype))
    if settings.output_scale not in ("target", "input"):
        raise BadInputError(describe("--output-scale", "value", "target or input", settings.output_scale))
    if settings.samples < 1 or settings.batch < 1 or settings.chunk < 1:
        raise BadInputError(describe("settings", "samples/batch/chunk", ">= 1", settings))
    if not np.issubdtype(image.data.dtype, np.number):
        raise BadInputError(describe(image.path, "dtype", "a numeric image", image.data.dtype))

    model_path = Path(model) if model else bundled_model_path()
    if not model_path.exists():
        raise MissingInputError(f"{model_path}: no model here" + ("" if model else " (bundled model missing; pass --model)"))
    net, spec = load_model(model_path, device="cpu")
    unet = net.config
    multiple = unet.downsample_factor
    settings = settings.resolved(unet.train_resolution)
    TileGrid(8, 8, settings.tile, settings.overlap, multiple)  # validates tile/overlap early
    # the workers' sampler checks, here before any write (a model without a schedule: the default)
    check_sampler(Schedule.from_dict(spec.get("schedule", {})), settings.sampler, settings.steps,
                  settings.eta, settings.spacing, where="run settings")
    check_precision(settings.precision, where="run settings")
    selected = _select_channels(image, channels)
    if unet.cond_channels == 1:
        groups = [((c,), (i,)) for i, c in enumerate(selected)]
    elif unet.cond_channels == len(selected) == unet.out_channels:
        groups = [(tuple(selected), tuple(range(len(selected))))]
    else:
        raise IncompatibleModelError(describe(model_path, "cond_channels", f"1 or {len(selected)} (selected channels)", unet.cond_channels))

    norm = spec.get("normalization", {})
    p_low, p_high = float(norm.get("p_low", P_LOW)), float(norm.get("p_high", P_HIGH))
    try:
        stats = input_statistics(image, selected, p_low, p_high)
    except (RuntimeError, ValueError, OSError) as exc:  # e.g. a chunk that does not decode
        raise BadInputError(describe(image.path, "pixels", "readable chunks", f"{type(exc).__name__}: {exc}")) from exc
    target = norm.get("target")
    if settings.output_scale == "target" and target:
        targets = [Stats.from_dict(target)] * len(selected)
    else:
        targets = [stats[c] for c in selected]

    meta = image.meta
    out_shape = list(image.data.shape)
    if "c" in meta.axes:
        out_shape[meta.axes.index("c")] = len(selected)
    out_shape_t = tuple(out_shape)
    out_names = tuple((meta.channel_names or tuple(f"channel {i}" for i in range(max(selected) + 1)))[c] for c in selected)
    tasks, done_shape = _plan_tasks(meta, out_shape_t, groups, settings)
    record = {
        "input": str(input_path.resolve()),
        "series": series,
        "model": str(model_path.resolve()),
        "model_sha256": spec["weights_sha256"],
        "settings": settings.to_dict(),
        "channels": selected,
    }

    if resume:
        if not output.exists():
            raise MissingInputError(f"{output}: nothing to resume (output does not exist)")
        root = zarr.open_group(str(output), mode="r+")
        _check_resume(root, record, output)
        done = np.asarray(zarr.open_array(str(output / "done"), mode="r")[...])
        tasks_left = [t for t in tasks if not done[t.done_index]]
    else:
        prepare_output(output, overwrite)
        root = zarr.open_group(str(output), mode="w", zarr_format=3 if ngff_version == "0.5" else 2)
        root.attrs[MANIFEST_KEY] = {**record, "status": "running", "version": __version__}
        chunks = tuple(min(n, settings.chunk) if a in "yx" else 1 for a, n in zip(meta.axes, out_shape_t, strict=True))
        for name in output_names(settings, spec):
            dtype = "float32" if name in ("std", "entropy") else settings.dtype
            create_level0(output / name, out_shape_t, dtype, meta.axes, chunks, ngff_version)
        root.create_array("done", shape=done_shape, dtype="uint8", chunks=(1,) * len(done_shape), fill_value=0)
        tasks_left = tasks

    job = RunJob(
        input_array=str(image.path / image.level_paths[0]),
        axes=meta.axes,
        output_root=str(output),
        out_axes_shape=out_shape_t,
        model_path=str(model_path),
        model_sha256=spec["weights_sha256"],
        settings=settings,
        input_stats=tuple(stats.get(c, Stats(0.0, 1.0)) for c in range(max(selected) + 1)),
        output_stats=tuple(targets),
        objective=spec.get("objective", "diffusion"),
        schedule=spec["schedule"],
        multiple=multiple,
        device=device,
        torch_threads=cluster.torch_threads(),
    )
    started = time.perf_counter()
    totals = {"tiles": 0, "clipped": 0, "done": 0}
    ran_on: set[str] = set()  # "device precision" of this run's blocks (auto resolves per worker)

    def on_done(result: dict[str, Any]) -> None:
        ran_on.add(f"{result.get('device', '?')} {result.get('precision', '?')}")
        totals["tiles"] += result["tiles"]
        totals["clipped"] += result["clipped"]
        totals["done"] += 1
        if progress:
            progress(result, totals["done"], len(tasks_left))

    if tasks_left:
        try:
            with open_client(cluster) as client:
                if on_client:
                    on_client(client)
                run_tasks(client, run_block, job, tasks_left, on_done)
        except KeyboardInterrupt as exc:
            raise ResumableInterrupt(
                f"interrupted after {totals['done']} of {len(tasks_left)} blocks; finished blocks are kept. "
                f"Resume with: bigrestore run {input_path} -o {output} --resume (same model and settings)"
            ) from exc
        except BigrestoreError:
            raise
        except Exception as exc:  # a block failed on a worker: unreadable chunk, disk full, ...
            raise IOFailure(
                f"{input_path}: a block failed after {totals['done']} of {len(tasks_left)} blocks: "
                f"{type(exc).__name__}: {exc}. Finished blocks are kept; fix the cause, then re-run "
                f"with --resume"
            ) from exc
    compute_seconds = time.perf_counter() - started

    window = None
    for name in output_names(settings, spec):
        out_meta = ImageMeta(meta.axes, meta.scale, meta.translation, meta.units,
                             out_names if "c" in meta.axes else None, f"{meta.name} {name}")
        if name == "mean" and settings.dtype == "float32":
            window = (min(t.low for t in targets), max(t.high for t in targets))
        finalize_image(output / name, out_meta, ngff_version, min_side=pyramid_min_side,
                       window=window if name == "mean" else None)
    manifest = {
        **record,
        "status": "complete",
        "version": __version__,
        "input_statistics": {str(c): stats[c].to_dict() for c in selected},
        "output_statistics": [t.to_dict() for t in targets],
        "normalization": {"p_low": p_low, "p_high": p_high, "output_scale": settings.output_scale},
        "blocks": len(tasks),
        "blocks_this_run": len(tasks_left),
        "tiles_this_run": totals["tiles"],
        "clipped_pixels": totals["clipped"],
        "ran_on": sorted(ran_on),
        "compute_seconds": round(compute_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "cluster": {"gpus": cluster.gpus, "workers": cluster.workers, "scheduler": cluster.scheduler},
    }
    root.attrs[MANIFEST_KEY] = manifest
    return RestoreResult(output, len(tasks), len(tasks_left), totals["tiles"], compute_seconds, totals["clipped"], manifest)
