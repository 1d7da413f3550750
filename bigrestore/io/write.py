"""Writing multiscale OME-Zarr images.

Split in two so that the restoration engine can fill level 0 block by block (one writer per
chunk) and add the pyramid and the NGFF metadata last: :func:`create_level0` then
:func:`finalize_image`. :func:`write_image` does both for an in-memory or dask array.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from bigrestore import __version__
from bigrestore.errors import BadInputError, CannotCreateOutputError, describe
from bigrestore.io.meta import ImageMeta, validate_axes
from bigrestore.io.ngff import NgffFormat, ngff_format, write_metadata
from bigrestore.io.paths import MARK_KEY, prepare_output

#: Pyramid levels are added until the smallest YX side is at most this many pixels.
PYRAMID_MIN_SIDE = 256
DEFAULT_YX_CHUNK = 512


def default_chunks(
    shape: tuple[int, ...], axes: str, yx_chunk: int = DEFAULT_YX_CHUNK
) -> tuple[int, ...]:
    """One plane per chunk on t/c/z, ``yx_chunk`` squares in YX (clipped to the shape)."""
    return tuple(min(n, yx_chunk) if a in "yx" else 1 for n, a in zip(shape, axes, strict=True))


def _create_array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    axes: str,
    fmt: NgffFormat,
) -> zarr.Array:
    chunks = tuple(min(c, n) if n > 0 else 1 for c, n in zip(chunks, shape, strict=True))
    return group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        fill_value=0,
        overwrite=True,
        # store chunks equal to the fill value too: a converted image must hold every chunk,
        # or `run` (which refuses inputs with absent chunks) would refuse its blank regions
        config={"write_empty_chunks": True},
        **fmt.array_options(axes),
    )


def create_level0(
    group_path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype | str,
    axes: str,
    chunks: tuple[int, ...] | None = None,
    ngff_version: str = "0.5",
) -> zarr.Array:
    """Create the (empty, fill 0) level-0 array ``0`` of an image group, ready for block writes."""
    fmt = ngff_format(ngff_version)
    try:
        group = zarr.open_group(str(group_path), mode="a", zarr_format=fmt.zarr_format)
        return _create_array(
            group, "0", shape, dtype, chunks or default_chunks(shape, axes), axes, fmt
        )
    except OSError as exc:
        raise CannotCreateOutputError(f"{group_path}: cannot create array: {exc}") from exc


def mark_written(group_path: Path, **fields: Any) -> None:
    """Put bigrestore's mark in a group's attributes, so ``--overwrite`` may later replace it."""
    group = zarr.open_group(str(group_path), mode="a")
    group.attrs[MARK_KEY] = {"written_by": "bigrestore", "version": __version__, **fields}


def pyramid_shapes(
    shape: tuple[int, ...], axes: str, min_side: int = PYRAMID_MIN_SIDE
) -> list[tuple[int, ...]]:
    """Level shapes: YX halved (rounding up) until the smaller YX side is ≤ ``min_side``."""
    iy, ix = axes.index("y"), axes.index("x")
    shapes = [tuple(shape)]
    while min(shapes[-1][iy], shapes[-1][ix]) > min_side:
        nxt = list(shapes[-1])
        nxt[iy], nxt[ix] = -(-nxt[iy] // 2), -(-nxt[ix] // 2)
        shapes.append(tuple(nxt))
    return shapes


def _downsample_yx(data: da.Array, axes: str) -> da.Array:
    """2x2 mean in YX (edge pixels replicated for odd sizes); integer dtypes rounded back."""
    iy, ix = axes.index("y"), axes.index("x")
    pad = [(0, 0)] * data.ndim
    pad[iy], pad[ix] = (0, data.shape[iy] % 2), (0, data.shape[ix] % 2)
    if any(p != (0, 0) for p in pad):
        data = da.pad(data, pad, mode="edge")
    factors = {iy: 2, ix: 2}
    out = da.coarsen(np.mean, data.astype(np.float32), factors, trim_excess=False)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        out = da.clip(da.round(out), info.min, info.max)
    return out.astype(data.dtype)


def finalize_image(
    group_path: Path,
    meta: ImageMeta,
    ngff_version: str = "0.5",
    min_side: int = PYRAMID_MIN_SIDE,
    window: tuple[float, float] | str | None = None,
    scheduler: Any = None,
) -> int:
    """Build pyramid levels 1.. from level ``0`` and write the NGFF metadata (last, on purpose).

    Each level is computed from the previous one (2x2 YX mean) and written chunk-aligned.
    ``window`` sets the omero display range: a (min, max) pair, "auto" (each channel's robust
    range, :func:`robust_windows`) or None (the dtype's range). Returns the number of levels.
    """
    fmt = ngff_format(ngff_version)
    group = zarr.open_group(str(group_path), mode="a", zarr_format=fmt.zarr_format)
    level0 = group["0"]
    shapes = pyramid_shapes(level0.shape, meta.axes, min_side)
    previous = da.from_zarr(level0)
    for index in range(1, len(shapes)):
        down = _downsample_yx(previous, meta.axes)
        target = _create_array(
            group, str(index), shapes[index], level0.dtype, tuple(level0.chunks), meta.axes, fmt
        )
        da.store(down.rechunk(target.chunks), target, lock=False, compute=True, scheduler=scheduler)
        previous = da.from_zarr(target)
    windows = robust_windows(group, meta.axes, len(shapes)) if window == "auto" else window
    write_metadata(group, meta, len(shapes), ngff_version, level0.dtype, windows)
    return len(shapes)


#: Percentiles of a display window, the pixels per plane and the planes they are taken from.
WINDOW_PERCENTILES = (0.1, 99.9)
WINDOW_PIXELS = 1 << 20
WINDOW_PLANES = 16


def robust_windows(
    group: zarr.Group, axes: str, n_levels: int
) -> list[tuple[float, float, float, float]]:
    """Per channel (start, end, min, max) of a display window: the (0.1, 99.9) percentiles and
    the extremes of the finest pyramid level with at most ~1 Mpixel per plane, over at most 16
    evenly spaced planes. Viewers then open every output with its data visible, not saturated."""
    level = next(
        (i for i in range(n_levels) if _plane_pixels(group[str(i)].shape, axes) <= WINDOW_PIXELS),
        n_levels - 1,
    )
    array = group[str(level)]
    channels = range(array.shape[axes.index("c")]) if "c" in axes else [None]
    windows = []
    for c in channels:
        index: list[Any] = []
        for axis, n in zip(axes, array.shape, strict=True):
            if axis == "c":
                index.append(c)
            elif axis in "tz":
                index.append(slice(None, None, max(1, -(-n // WINDOW_PLANES))))
            else:
                index.append(slice(None))
        values = np.asarray(array[tuple(index)], dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            windows.append((0.0, 1.0, 0.0, 1.0))
            continue
        start, end = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
        end = end if end > start else start + 1.0
        windows.append((start, end, min(start, float(values.min())), max(end, float(values.max()))))
    return windows


def _plane_pixels(shape: tuple[int, ...], axes: str) -> int:
    return shape[axes.index("y")] * shape[axes.index("x")]


def write_image(
    path: str | Path,
    data: da.Array | np.ndarray,
    meta: ImageMeta,
    ngff_version: str = "0.5",
    chunks: tuple[int, ...] | None = None,
    overwrite: bool = False,
    min_side: int = PYRAMID_MIN_SIDE,
    scheduler: Any = None,
    inputs: Sequence[Path] = (),
    window: tuple[float, float] | str | None = None,
) -> Path:
    """Write ``data`` (axes as ``meta.axes``) as a multiscale OME-Zarr image at ``path``;
    ``window``: the display range (:func:`finalize_image`)."""
    path = Path(path)
    data = data if isinstance(data, da.Array) else da.from_array(data)
    validate_axes(meta.axes, data.ndim, path)
    if meta.channel_names is not None and "c" in meta.axes:
        n_c = data.shape[meta.axes.index("c")]
        if len(meta.channel_names) != n_c:
            raise BadInputError(
                describe(path, "channel names", f"{n_c} names", len(meta.channel_names))
            )
    prepare_output(path, overwrite, inputs)
    with removed_on_failure(path):
        level0 = create_level0(path, tuple(data.shape), data.dtype, meta.axes, chunks, ngff_version)
        mark_written(path)
        da.store(data.rechunk(level0.chunks), level0, lock=False, compute=True, scheduler=scheduler)
        finalize_image(path, meta, ngff_version, min_side, window, scheduler=scheduler)
    return path


@contextlib.contextmanager
def removed_on_failure(path: Path) -> Iterator[None]:
    """Delete ``path`` (a store this call is creating) when the body fails: a conversion is not
    resumable, and a half-written image must not be mistaken for one."""
    try:
        yield
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
