"""OME-Zarr images: open any NGFF 0.4/0.5 image lazily, write multiscale images.

Reading parses the NGFF ``multiscales`` metadata (0.4 on zarr v2, 0.5 on zarr v3, and the
bioformats2raw layout) into an :class:`ImageMeta`. Writing is split in two so that the
restoration engine can fill level 0 block by block (one writer per chunk) and add the pyramid
and the NGFF metadata last: :func:`create_level0` then :func:`finalize_image`.
:func:`write_image` does both for an in-memory or dask array. The NGFF metadata itself is
written by ome-zarr-py (``write_multiscales_metadata``) so version differences live there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_multiscales_metadata

from bigrestore.errors import BadInputError, CannotCreateOutputError, MissingInputError, describe

log = logging.getLogger(__name__)

SPATIAL = "zyx"
NGFF_VERSIONS = ("0.4", "0.5")
#: Pyramid levels are added until the smallest YX side is at most this many pixels.
PYRAMID_MIN_SIDE = 256
DEFAULT_YX_CHUNK = 512

#: Unit spellings found in OME-TIFF / ImageJ metadata mapped to NGFF unit names.
UNIT_ALIASES = {
    "µm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "s": "second",
    "sec": "second",
    "ms": "millisecond",
    "min": "minute",
    "h": "hour",
}


@dataclass(frozen=True)
class ImageMeta:
    """What an image means, independent of how it is stored.

    ``axes`` is a string of NGFF axis names in storage order (a valid subset of "tczyx").
    ``scale``/``translation`` are the level-0 physical pixel size and origin per axis.
    """

    axes: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    units: tuple[str | None, ...]
    channel_names: tuple[str, ...] | None = None
    name: str = "image"

    def axis_index(self, name: str) -> int:
        return self.axes.index(name)

    def pixel_size(self, axis: str) -> float:
        return self.scale[self.axes.index(axis)] if axis in self.axes else 1.0


@dataclass(frozen=True)
class OpenedImage:
    """A lazily opened OME-Zarr image: ``data`` is the dask array of the requested level."""

    path: Path
    data: da.Array
    meta: ImageMeta
    ngff_version: str
    level: int
    level_paths: tuple[str, ...]
    level_shapes: tuple[tuple[int, ...], ...]
    chunks: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def default_meta(axes: str, channel_names: tuple[str, ...] | None = None) -> ImageMeta:
    """Unit pixel size, zero origin, no units: the metadata of an image that has none."""
    n = len(axes)
    return ImageMeta(axes, (1.0,) * n, (0.0,) * n, (None,) * n, channel_names)


def normalise_unit(unit: str | None) -> str | None:
    """Map a unit spelling to its NGFF name (``µm`` → ``micrometer``); None stays None."""
    if unit is None or unit == "":
        return None
    return UNIT_ALIASES.get(unit, unit)


def validate_axes(axes: str, ndim: int, where: object) -> str:
    """Check that ``axes`` is an NGFF-valid order (t, then c, then 2-3 spatial axes)."""
    axes = axes.lower()
    if len(axes) != ndim:
        raise BadInputError(describe(where, "axes", f"{ndim} axes for a {ndim}-D array", axes))
    if len(set(axes)) != len(axes) or any(a not in "tczyx" for a in axes):
        raise BadInputError(describe(where, "axes", "distinct names from t, c, z, y, x", axes))
    order = [("tczyx".index(a)) for a in axes]
    if order != sorted(order) or "y" not in axes or "x" not in axes:
        raise BadInputError(
            describe(where, "axes", "an ordered subset of 'tczyx' containing y and x", axes)
        )
    return axes


# ----------------------------------------------------------------------------- reading


def _open_group(path: Path) -> zarr.Group:
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or directory")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for "not a group"
        raise BadInputError(describe(path, "store", "a zarr group (OME-Zarr)", repr(exc))) from exc


def _ome_attrs(group: zarr.Group) -> tuple[dict[str, Any], str | None]:
    """Return the OME attributes and the NGFF version declared at the group level (0.5)."""
    attrs = dict(group.attrs)
    if "ome" in attrs:
        return dict(attrs["ome"]), str(attrs["ome"].get("version"))
    return attrs, None


def _select_series(group: zarr.Group, path: Path, series: int | None) -> tuple[zarr.Group, Path]:
    ome, _ = _ome_attrs(group)
    if "bioformats2raw.layout" in ome and "multiscales" not in ome:
        key = str(series or 0)
        if key not in group:
            found = sorted(k for k in group.group_keys() if k.isdigit())
            raise BadInputError(describe(path, "series", f"one of {found}", series))
        return group[key], path / key
    if series not in (None, 0):
        raise BadInputError(describe(path, "series", "no --series (not a bioformats2raw store)", series))
    return group, path


def _level_transform(dataset: dict[str, Any], ndim: int) -> tuple[list[float], list[float]]:
    scale, translation = [1.0] * ndim, [0.0] * ndim
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(v) for v in transform["scale"]]
        elif transform.get("type") == "translation":
            translation = [float(v) for v in transform["translation"]]
    return scale, translation


def open_image(path: str | Path, level: int = 0, series: int | None = None) -> OpenedImage:
    """Open an OME-Zarr image without reading pixels; never writes to ``path``.

    Returns the requested pyramid level as a dask array (one dask chunk per zarr chunk) with
    the level-0 physical metadata (scale and translation of level 0, whatever ``level`` is).
    """
    path = Path(path)
    group, path = _select_series(_open_group(path), path, series)
    ome, version = _ome_attrs(group)
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise BadInputError(describe(path, "multiscales", "NGFF multiscales metadata", "none"))
    ms = multiscales[0]
    version = version or str(ms.get("version", "0.4"))
    axes_meta = ms.get("axes") or [{"name": a} for a in "tczyx"]
    axes = "".join((a["name"] if isinstance(a, dict) else a) for a in axes_meta)
    units = tuple(normalise_unit(a.get("unit")) if isinstance(a, dict) else None for a in axes_meta)
    datasets = ms.get("datasets", [])
    if not 0 <= level < len(datasets):
        raise BadInputError(describe(path, "level", f"0..{len(datasets) - 1}", level))
    level_paths = tuple(str(d["path"]) for d in datasets)
    try:
        arrays = [group[p] for p in level_paths]
    except KeyError as exc:
        raise BadInputError(describe(path, "datasets", "arrays named in multiscales", exc)) from exc
    ndim = arrays[0].ndim
    validate_axes(axes, ndim, path)
    dtype = np.dtype(arrays[0].dtype)
    if dtype.kind not in "uif":
        raise BadInputError(describe(path, "dtype", "an integer or floating-point image", dtype))
    scale, translation = _level_transform(datasets[0], ndim)
    global_scale, global_translation = _level_transform(ms, ndim)
    scale = [s * g for s, g in zip(scale, global_scale, strict=True)]
    translation = [t * g + gt for t, g, gt in zip(translation, global_scale, global_translation, strict=True)]
    channel_names = None
    omero = ome.get("omero")
    if omero and omero.get("channels"):
        channel_names = tuple(str(c.get("label", i)) for i, c in enumerate(omero["channels"]))
    meta = ImageMeta(
        axes=axes,
        scale=tuple(scale),
        translation=tuple(translation),
        units=units,
        channel_names=channel_names,
        name=str(ms.get("name") or path.stem),
    )
    array = arrays[level]
    data = da.from_zarr(array)
    return OpenedImage(
        path=path,
        data=data,
        meta=meta,
        ngff_version=version,
        level=level,
        level_paths=level_paths,
        level_shapes=tuple(tuple(a.shape) for a in arrays),
        chunks=tuple(array.chunks),
        extra={"omero": omero} if omero else {},
    )


# ----------------------------------------------------------------------------- writing


def _fmt(version: str) -> FormatV04 | FormatV05:
    if version not in NGFF_VERSIONS:
        raise BadInputError(describe("--ngff-version", "version", " or ".join(NGFF_VERSIONS), version))
    return FormatV04() if version == "0.4" else FormatV05()


def default_chunks(shape: tuple[int, ...], axes: str, yx_chunk: int = DEFAULT_YX_CHUNK) -> tuple[int, ...]:
    """One plane per chunk on t/c/z, ``yx_chunk`` squares in YX (clipped to the shape)."""
    return tuple(min(n, yx_chunk) if a in "yx" else 1 for n, a in zip(shape, axes, strict=True))


def unwritable_directory(directory: Path) -> Path | None:
    """The first directory in ``directory``'s tree (itself included) whose entries cannot be
    listed, created or removed, else None: what ``shutil.rmtree`` and a resumed run need."""
    needed = os.R_OK | os.W_OK | os.X_OK
    if not os.access(directory, needed):
        return directory
    for root, dirs, _ in os.walk(directory):
        for name in dirs:
            if not os.access(Path(root, name), needed):
                return Path(root, name)
    return None


def check_output(path: Path, overwrite: bool) -> None:
    """Raise CannotCreateOutputError unless ``path`` can be created (or, with ``overwrite``,
    removed and created again). Changes nothing, so callers run it before any compute."""
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise CannotCreateOutputError(f"{path}: output exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise CannotCreateOutputError(f"{path}: parent directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CannotCreateOutputError(f"{path}: parent directory {path.parent} is not writable")
    blocked = unwritable_directory(path) if path.is_dir() and not path.is_symlink() else None
    if blocked is not None:
        raise CannotCreateOutputError(f"{path}: cannot replace the output: {blocked} is not writable")


def prepare_output(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked (see :func:`check_output`); with
    ``overwrite``, remove it. Never touches anything else."""
    check_output(path, overwrite)
    if path.exists() or path.is_symlink():
        import shutil

        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _create_array(
    group: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], axes: str, zarr_format: int
) -> zarr.Array:
    kwargs: dict[str, Any] = {}
    if zarr_format == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = list(axes)
    chunks = tuple(min(c, n) if n > 0 else 1 for c, n in zip(chunks, shape, strict=True))
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0, overwrite=True, **kwargs)


def create_level0(
    group_path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype | str,
    axes: str,
    chunks: tuple[int, ...] | None = None,
    ngff_version: str = "0.5",
) -> zarr.Array:
    """Create the (empty, fill 0) level-0 array ``0`` of an image group, ready for block writes."""
    fmt = _fmt(ngff_version)
    try:
        group = zarr.open_group(str(group_path), mode="a", zarr_format=fmt.zarr_format)
        return _create_array(group, "0", shape, dtype, chunks or default_chunks(shape, axes), axes, fmt.zarr_format)
    except OSError as exc:
        raise CannotCreateOutputError(f"{group_path}: cannot create array: {exc}") from exc


def pyramid_shapes(shape: tuple[int, ...], axes: str, min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, ...]]:
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


def _omero(channel_names: tuple[str, ...] | None, n_channels: int, dtype: np.dtype) -> dict[str, Any]:
    names = channel_names or tuple(f"channel {i}" for i in range(n_channels))
    if np.issubdtype(dtype, np.integer):
        lo, hi = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
    else:
        lo, hi = 0.0, 1.0
    colors = ["FFFFFF"] if n_channels == 1 else ["00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF"]
    channels = [
        {
            "label": str(name),
            "color": colors[i % len(colors)],
            "active": True,
            "window": {"min": lo, "max": hi, "start": lo, "end": hi},
        }
        for i, name in enumerate(names)
    ]
    return {"channels": channels, "rdefs": {"model": "greyscale" if n_channels == 1 else "color"}}


def finalize_image(
    group_path: Path,
    meta: ImageMeta,
    ngff_version: str = "0.5",
    min_side: int = PYRAMID_MIN_SIDE,
    window: tuple[float, float] | None = None,
    scheduler: Any = None,
) -> int:
    """Build pyramid levels 1.. from level ``0`` and write the NGFF metadata (last, on purpose).

    Each level is computed from the previous one (2x2 YX mean) and written chunk-aligned.
    ``window`` sets the omero display range. Returns the number of levels.
    """
    fmt = _fmt(ngff_version)
    group = zarr.open_group(str(group_path), mode="a", zarr_format=fmt.zarr_format)
    level0 = group["0"]
    shapes = pyramid_shapes(level0.shape, meta.axes, min_side)
    previous = da.from_zarr(level0)
    for index in range(1, len(shapes)):
        down = _downsample_yx(previous, meta.axes)
        target = _create_array(
            group, str(index), shapes[index], level0.dtype, tuple(level0.chunks), meta.axes, fmt.zarr_format
        )
        da.store(down.rechunk(target.chunks), target, lock=False, compute=True, scheduler=scheduler)
        previous = da.from_zarr(target)
    write_metadata(group, meta, len(shapes), ngff_version, level0.dtype, window)
    return len(shapes)


def level_transforms(meta: ImageMeta, n_levels: int) -> list[list[dict[str, Any]]]:
    """Scale and translation of each level: YX pixel size doubles, origin moves by half a pixel."""
    transforms = []
    for level in range(n_levels):
        factor = [2**level if a in "yx" else 1 for a in meta.axes]
        scale = [s * f for s, f in zip(meta.scale, factor, strict=True)]
        translation = [t + (f - 1) * s / 2 for t, s, f in zip(meta.translation, meta.scale, factor, strict=True)]
        transforms.append(
            [{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]
        )
    return transforms


def write_metadata(
    group: zarr.Group,
    meta: ImageMeta,
    n_levels: int,
    ngff_version: str,
    dtype: np.dtype,
    window: tuple[float, float] | None = None,
) -> None:
    """Write NGFF multiscales + omero metadata with ome-zarr-py (0.4 or 0.5 layout)."""
    fmt = _fmt(ngff_version)
    datasets = [
        {"path": str(level), "coordinateTransformations": transform}
        for level, transform in enumerate(level_transforms(meta, n_levels))
    ]
    axes: list[dict[str, str]] = []
    for name, unit in zip(meta.axes, meta.units, strict=True):
        axis = {"name": name, "type": {"t": "time", "c": "channel"}.get(name, "space")}
        if unit and name != "c":
            axis["unit"] = unit
        axes.append(axis)
    n_channels = group["0"].shape[meta.axes.index("c")] if "c" in meta.axes else 1
    omero = _omero(meta.channel_names, n_channels, np.dtype(dtype))
    if window is not None:
        for channel in omero["channels"]:
            channel["window"] = {"min": window[0], "max": window[1], "start": window[0], "end": window[1]}
    write_multiscales_metadata(group, datasets=datasets, fmt=fmt, axes=axes, name=meta.name)
    attrs_key = "ome" if fmt.zarr_format == 3 else None
    if attrs_key:
        ome = dict(group.attrs["ome"])
        ome["omero"] = omero
        group.attrs["ome"] = ome
    else:
        group.attrs["omero"] = omero


def write_image(
    path: str | Path,
    data: da.Array | np.ndarray,
    meta: ImageMeta,
    ngff_version: str = "0.5",
    chunks: tuple[int, ...] | None = None,
    overwrite: bool = False,
    min_side: int = PYRAMID_MIN_SIDE,
    scheduler: Any = None,
) -> Path:
    """Write ``data`` (axes as ``meta.axes``) as a multiscale OME-Zarr image at ``path``."""
    path = Path(path)
    data = data if isinstance(data, da.Array) else da.from_array(data)
    validate_axes(meta.axes, data.ndim, path)
    if meta.channel_names is not None and "c" in meta.axes:
        n_c = data.shape[meta.axes.index("c")]
        if len(meta.channel_names) != n_c:
            raise BadInputError(describe(path, "channel names", f"{n_c} names", len(meta.channel_names)))
    prepare_output(path, overwrite)
    level0 = create_level0(path, tuple(data.shape), data.dtype, meta.axes, chunks, ngff_version)
    da.store(data.rechunk(level0.chunks), level0, lock=False, compute=True, scheduler=scheduler)
    finalize_image(path, meta, ngff_version, min_side, scheduler=scheduler)
    return path


def with_meta(meta: ImageMeta, **changes: Any) -> ImageMeta:
    """A copy of ``meta`` with some fields changed (e.g. another channel list)."""
    return replace(meta, **changes)
