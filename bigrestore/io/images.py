"""Reading OME-Zarr images lazily: NGFF 0.4 (zarr v2), 0.5 (zarr v3) and bioformats2raw stores.

:func:`open_image` parses the ``multiscales`` metadata into an :class:`ImageMeta` and returns
the pixels as a dask array without reading them. Nothing here writes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from bigrestore.errors import BadInputError, MissingInputError, describe
from bigrestore.io.meta import ImageMeta, normalise_unit, validate_axes
from bigrestore.io.ngff import ome_attributes


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


#: No real image has more chunks than this; a shape that claims more is a metadata error.
MAX_CHUNKS = 10**9
#: An OMERO channel colour as bigrestore keeps it: RRGGBB hex.
HEX_COLOR = re.compile(r"[0-9A-F]{6}")
CONVERT_HINT = "convert it first with: bigrestore convert {path} OUT.zarr"
#: For zarr data without NGFF metadata (``bigrestore convert`` reads microscope files only).
ZARR_HINT = (
    "bigrestore convert reads TIFF, OME-TIFF, CZI, ND2 and LIF files: save the data as a TIFF "
    "and convert that, or write it as OME-Zarr (e.g. ome_zarr.writer.write_image)"
)


def omero_channels(omero: Any) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """Channel labels and colours (RRGGBB, when every channel has a valid one) of OMERO
    metadata; (None, None) without it."""
    if not omero or not omero.get("channels"):
        return None, None
    names = tuple(str(c.get("label", i)) for i, c in enumerate(omero["channels"]))
    colors = tuple(str(c.get("color", "")).upper() for c in omero["channels"])
    return names, colors if all(HEX_COLOR.fullmatch(color) for color in colors) else None


def zarr_hint(path: Path, node: object) -> str:
    """What to do with a zarr store that is not an OME-Zarr image: a run's output root names
    its images; anything else needs NGFF metadata."""
    attrs = getattr(node, "attrs", {})
    if "bigrestore" in attrs:
        outputs = attrs["bigrestore"].get("outputs") or ["mean", "std", "entropy"]
        return "this is a bigrestore run output: open one of its images, e.g. " + ", ".join(
            str(path / name) for name in outputs[:3]
        )
    return ZARR_HINT


def _open_group(path: Path) -> zarr.Group:
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or directory")
    if path.is_file():
        raise BadInputError(
            describe(
                path,
                "input",
                "an OME-Zarr store (a directory)",
                f"a file ({path.suffix or 'no suffix'})",
            )
            + "; "
            + CONVERT_HINT.format(path=path)
        )
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for "not zarr"
        raise BadInputError(
            describe(path, "store", "a zarr group (OME-Zarr)", f"{type(exc).__name__}: {exc}")
            + "; "
            + CONVERT_HINT.format(path=path)
        ) from exc
    if not isinstance(node, zarr.Group):
        raise BadInputError(
            describe(
                path,
                "store",
                "an OME-Zarr image group",
                f"a plain zarr array of shape {node.shape}",
            )
            + "; "
            + ZARR_HINT
        )
    return node


def _select_series(group: zarr.Group, path: Path, series: int | None) -> tuple[zarr.Group, Path]:
    ome, _ = ome_attributes(group)
    if "bioformats2raw.layout" in ome and "multiscales" not in ome:
        key = str(series or 0)
        if key not in group:
            found = sorted(k for k in group.group_keys() if k.isdigit())
            raise BadInputError(describe(path, "series", f"one of {found}", series))
        return group[key], path / key
    if series not in (None, 0):
        raise BadInputError(
            describe(path, "series", "no --series (not a bioformats2raw store)", series)
        )
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
    ome, version = ome_attributes(group)
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise BadInputError(
            describe(path, "multiscales", "NGFF multiscales metadata", "none")
            + "; "
            + zarr_hint(path, group)
        )
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
    translation = [
        t * g + gt for t, g, gt in zip(translation, global_scale, global_translation, strict=True)
    ]
    channel_names, channel_colors = omero_channels(ome.get("omero"))
    meta = ImageMeta(
        axes=axes,
        scale=tuple(scale),
        translation=tuple(translation),
        units=units,
        channel_names=channel_names,
        name=str(ms.get("name") or path.stem),
        channel_colors=channel_colors,
    )
    array = arrays[level]
    n_chunks = 1
    for n, c in zip(array.shape, array.chunks, strict=True):
        n_chunks *= -(-n // c) if n else 0
    if n_chunks > MAX_CHUNKS:
        raise BadInputError(
            describe(
                path,
                "shape",
                f"at most {MAX_CHUNKS} chunks",
                f"shape {array.shape} in chunks {array.chunks}: {n_chunks:.3g} chunks",
            )
            + "; check the array metadata"
        )
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
    )


#: Files of a zarr array directory that are metadata, not chunks.
_METADATA_FILES = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def chunk_census(image: OpenedImage) -> tuple[int, int]:
    """(stored, expected) chunk objects of the level-0 array (shards, for a sharded array).

    Counted by listing the array's directory, so it costs one directory walk whatever the
    shape. A chunk that was never written reads back as the fill value, silently: a run
    compares the two counts before restoring. (-1, expected) for a store that is not a local
    directory (not counted)."""
    array = zarr.open_array(str(image.path / image.level_paths[0]), mode="r")
    grid_unit = array.shards or array.chunks
    expected = 1
    for n, c in zip(array.shape, grid_unit, strict=True):
        expected *= -(-n // c) if n else 0
    folder = image.path / image.level_paths[0]
    if not folder.is_dir():
        return -1, expected
    stored = sum(
        1 for _, _, files in os.walk(folder) for name in files if name not in _METADATA_FILES
    )
    return stored, expected
