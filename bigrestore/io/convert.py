"""Microscope files → multiscale OME-Zarr, lazily: TIFF here, vendor formats via bioio.

:func:`convert_image` dispatches by suffix: CZI, ND2, LIF and OME-TIFF go through bioio
(:mod:`bigrestore.io.vendor`, the optional extra ``formats``) and are written plane by plane;
plain TIFF / ImageJ TIFF (and OME-TIFF when bioio is not installed, or with ``--axes``) go
through tifffile page by page. For TIFF, axes come from the OME-XML or ImageJ metadata when
the file has them (tifffile's series axes), or from ``--axes``. Axes are reordered to NGFF
order (t, c, z, y, x); RGB samples become ``c``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from bigrestore.errors import BadInputError, MissingInputError, UsageError, describe
from bigrestore.io.meta import ImageMeta, normalise_unit, validate_axes
from bigrestore.io.paths import prepare_output
from bigrestore.io.vendor import (
    FORMATS,
    open_vendor,
    reader_installed,
    select_scene,
    vendor_suffix,
)
from bigrestore.io.write import (
    create_level0,
    finalize_image,
    mark_written,
    removed_on_failure,
    write_image,
)

log = logging.getLogger(__name__)

#: tifffile axis codes → NGFF axis names (S = samples, e.g. RGB, become channels).
TIFF_AXES = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}


def _physical_sizes(tif: tifffile.TiffFile) -> tuple[dict[str, float], dict[str, str | None]]:
    """Pixel sizes and units per NGFF axis from OME-XML or ImageJ metadata (empty if none)."""
    sizes: dict[str, float] = {}
    units: dict[str, str | None] = {}
    if tif.is_ome and tif.ome_metadata:
        try:
            ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
            image = ome["Image"][0] if isinstance(ome["Image"], list) else ome["Image"]
            pixels = image["Pixels"]
        except (KeyError, IndexError, TypeError):
            pixels = {}
        for axis, key in (("x", "PhysicalSizeX"), ("y", "PhysicalSizeY"), ("z", "PhysicalSizeZ")):
            if key in pixels:
                sizes[axis] = float(pixels[key])
                units[axis] = normalise_unit(str(pixels.get(key + "Unit", "µm")))
        if "TimeIncrement" in pixels:
            sizes["t"] = float(pixels["TimeIncrement"])
            units["t"] = normalise_unit(str(pixels.get("TimeIncrementUnit", "s")))
    elif tif.is_imagej and tif.imagej_metadata:
        meta = tif.imagej_metadata
        unit = normalise_unit(str(meta.get("unit", ""))) if meta.get("unit") else None
        page = tif.pages.first
        for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
            if tag in page.tags:
                num, den = page.tags[tag].value
                if num:
                    sizes[axis] = den / num
                    units[axis] = unit
        if "spacing" in meta:
            sizes["z"], units["z"] = float(meta["spacing"]), unit
        if "finterval" in meta:
            sizes["t"], units["t"] = float(meta["finterval"]), "second"
    return sizes, units


def _lazy_series(series: Any) -> da.Array:
    """The TIFF series as a dask array backed by tifffile's zarr view (one chunk per page/tile)."""
    store = series.aszarr()
    node = zarr.open(store, mode="r")
    array = node if isinstance(node, zarr.Array) else node[list(node.array_keys())[0]]
    return da.from_zarr(array)


def series_names(tif: tifffile.TiffFile) -> tuple[str, ...]:
    """A name per image series of a TIFF (shape and axes), for --scene and the closing note."""
    return tuple(
        f"series {i}: {s.axes} {'x'.join(map(str, s.shape))}" for i, s in enumerate(tif.series)
    )


def check_complete(tif: tifffile.TiffFile, series: Any, path: Path) -> None:
    """Refuse a TIFF cut short before anything is written. tifffile falls back to a generic
    series when the file's ImageJ or "shaped" metadata no longer matches its pages (it does
    so exactly when pages are missing); a contiguous series (one IFD, e.g. ImageJ stacks over
    4 GB) must end within the file, and every page's data within its own file."""
    described = "imagej" if tif.is_imagej else "shaped" if tif.is_shaped else None
    if described and series.kind != described:
        raise BadInputError(
            describe(
                path,
                "pages",
                f"the stack its {described} metadata describes",
                f"a {series.kind} series of shape {series.shape} (a file cut short?)",
            )
        )
    size = path.stat().st_size
    if series.dataoffset is not None and series.dataoffset + series.nbytes > size:
        raise BadInputError(
            describe(
                path,
                "pixel data",
                f"within the file's {size} bytes",
                f"data ending at byte {series.dataoffset + series.nbytes} (a file cut short?)",
            )
        )
    try:
        pages = list(series.pages)
    except (tifffile.TiffFileError, IndexError, ValueError, OSError) as exc:
        raise BadInputError(describe(path, "file", "a complete TIFF", repr(exc))) from exc
    for index, page in enumerate(pages):
        if page is None or not hasattr(page, "dataoffsets"):
            continue
        own = page.parent.filehandle.size  # a multi-file OME-TIFF: the page's own file
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)]
        if ends and max(ends) > own:  # (empty tiles may have no bytes: not a defect)
            raise BadInputError(
                describe(
                    path,
                    f"page {index}",
                    f"pixel data within its file's {own} bytes",
                    f"data ending at byte {max(ends)} (a file cut short?)",
                )
            )


@dataclass(frozen=True)
class Converted:
    """What :func:`convert_image` wrote: the store, and which scene of a multi-scene vendor
    file, or series of a TIFF, it holds (``scenes`` empty when the file has only one)."""

    path: Path
    scene: int = 0
    scenes: tuple[str, ...] = ()


def read_tiff(path: str | Path, axes: str | None = None) -> tuple[da.Array, ImageMeta]:
    """Open a TIFF's first series lazily: its data in NGFF axis order and its metadata."""
    data, meta, _ = read_tiff_series(path, axes)
    return data, meta


def read_tiff_series(
    path: str | Path, axes: str | None = None, scene: int | str | None = None
) -> tuple[da.Array, ImageMeta, Converted]:
    """Open one series of a TIFF (``scene``: its index, default 0) lazily: its data in NGFF
    axis order, its metadata, and which series of the file's it is (``Converted`` without a
    path; ``scenes`` only when there are several). Refused before anything is written:
    unreadable or truncated files, a series that is not there, unknown axes, and an ``axes``
    that only reorders the file's own axis names (NGFF order is bigrestore's job; a
    relabelling is not)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    try:
        tif = tifffile.TiffFile(path)
        if not tif.series:
            raise BadInputError(describe(path, "file", "a TIFF with an image", "no image series"))
        names = series_names(tif)
        index = select_scene(path, names, scene)
        series = tif.series[index]
    except (tifffile.TiffFileError, OSError, IndexError, ValueError) as exc:
        raise BadInputError(describe(path, "file", "a readable TIFF", repr(exc))) from exc
    check_complete(tif, series, path)
    file_axes = series.axes.upper()
    if axes is not None:
        check_axes_option(path, axes, file_axes, series.shape)
    if axes is None:
        unknown = [a for a in file_axes if a not in TIFF_AXES]
        if unknown or len(set(TIFF_AXES[a] for a in file_axes)) != len(file_axes):
            raise BadInputError(
                describe(path, "axes", "known axes (T, C, Z, Y, X) in the metadata", file_axes)
                + f"; pass --axes with {len(file_axes)} letters, e.g. --axes {'tczyx'[-len(file_axes) :]}"
            )
        source_axes = "".join(TIFF_AXES[a] for a in file_axes)
    else:
        source_axes = axes.lower()
    if sorted(source_axes) != sorted(set(source_axes)):
        raise BadInputError(describe(path, "axes", "distinct axis names", source_axes))
    data = _lazy_series(series)
    target_axes = "".join(a for a in "tczyx" if a in source_axes)
    validate_axes(target_axes, data.ndim, path)
    data = data.transpose([source_axes.index(a) for a in target_axes])
    sizes, units = _physical_sizes(tif)
    channel_names = None
    meta = ImageMeta(
        axes=target_axes,
        scale=tuple(sizes.get(a, 1.0) for a in target_axes),
        translation=(0.0,) * len(target_axes),
        units=tuple(units.get(a) for a in target_axes),
        channel_names=channel_names,
        name=path.name.split(".")[0],
    )
    return data, meta, Converted(path, index, names if len(names) > 1 else ())


def check_axes_option(path: Path, axes: str, file_axes: str, shape: tuple[int, ...]) -> None:
    """``--axes`` must name t/c/z/y/x once each, one per dimension, and must not merely reorder
    the axis names the file already gives (that reads as the wanted output order, which would
    swap dimensions silently)."""
    letters = axes.lower()
    if any(a not in "tczyx" for a in letters) or len(set(letters)) != len(letters):
        raise BadInputError(describe(path, "--axes", "distinct letters from t, c, z, y, x", axes))
    if len(letters) != len(shape):
        raise BadInputError(
            describe(path, "--axes", f"{len(shape)} letters for shape {shape}", axes)
        )
    known = "".join(TIFF_AXES.get(a, "?") for a in file_axes)
    if "?" not in known and letters != known and sorted(letters) == sorted(known):
        raise BadInputError(
            describe(path, "--axes", f"the file's own order, {known} (as stored)", axes)
            + "; --axes names the dimensions in the order the file stores them and bigrestore "
            "reorders them to t, c, z, y, x: drop --axes, or give other names to relabel"
        )


def convert_tiff(
    source: str | Path,
    destination: str | Path,
    axes: str | None = None,
    ngff_version: str = "0.5",
    chunks: int = 512,
    overwrite: bool = False,
    pixel_size: dict[str, float] | None = None,
    scene: int | str | None = None,
) -> Converted:
    """Convert one series of a TIFF file (default the first) into a multiscale OME-Zarr image
    (the TIFF is only read)."""
    data, meta, which = read_tiff_series(source, axes, scene)
    meta = with_pixel_size(meta, pixel_size)
    path = write_image(
        destination,
        data,
        meta,
        ngff_version=ngff_version,
        chunks=plane_chunks(meta.axes, data.shape, chunks),
        overwrite=overwrite,
        window="auto",  # each channel's robust range: a viewer opens the raw data visible
    )
    return Converted(path, which.scene, which.scenes)


def with_pixel_size(meta: ImageMeta, pixel_size: dict[str, float] | None) -> ImageMeta:
    """``meta`` with the ``--pixel-size`` overrides: micrometer for z/y/x, second for t (the
    units the option documents, replacing the file's unit for those axes)."""
    if not pixel_size:
        return meta
    missing = sorted(set(pixel_size) - set(meta.axes))
    if missing:
        raise UsageError(
            describe(
                meta.name, "--pixel-size", f"axes of the image ({meta.axes})", ",".join(missing)
            )
        )
    scale = tuple(pixel_size.get(a, s) for a, s in zip(meta.axes, meta.scale, strict=True))
    given = {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    units = tuple(
        given[a] if a in pixel_size else u for a, u in zip(meta.axes, meta.units, strict=True)
    )
    return ImageMeta(meta.axes, scale, meta.translation, units, meta.channel_names, meta.name)


def plane_chunks(axes: str, shape: tuple[int, ...], yx: int) -> tuple[int, ...]:
    """One plane per chunk on t/c/z, ``yx`` squares (clipped to the shape) in Y and X."""
    return tuple(min(n, yx) if a in "yx" else 1 for a, n in zip(axes, shape, strict=True))


def uses_bioio(source: str | Path, axes: str | None) -> bool:
    """True when ``source`` is read through bioio: CZI / ND2 / LIF always, OME-TIFF when its
    reader is installed and no ``--axes`` overrides the file's own axes."""
    suffix = vendor_suffix(source)
    if suffix is None:
        return False
    if FORMATS[suffix].module == "bioio_ome_tiff":
        return axes is None and reader_installed(suffix)
    return True


def convert_image(
    source: str | Path,
    destination: str | Path,
    axes: str | None = None,
    scene: int | str | None = None,
    ngff_version: str = "0.5",
    chunks: int = 512,
    overwrite: bool = False,
    pixel_size: dict[str, float] | None = None,
) -> Converted:
    """Convert one microscope file (TIFF, OME-TIFF, CZI, ND2, LIF) into multiscale OME-Zarr;
    the source is only read. ``scene`` picks one scene of a multi-scene vendor file."""
    if not uses_bioio(source, axes):
        options = dict(ngff_version=ngff_version, chunks=chunks, overwrite=overwrite)
        return convert_tiff(
            source, destination, axes, pixel_size=pixel_size, scene=scene, **options
        )
    if axes is not None:
        raise UsageError(describe(source, "--axes", "no --axes (the file names its axes)", axes))
    image = open_vendor(source, scene)
    meta = with_pixel_size(image.meta, pixel_size)
    chunk_shape = plane_chunks(meta.axes, image.data.shape, chunks)
    path = write_planes(destination, image.data, meta, ngff_version, chunk_shape, overwrite, source)
    return Converted(path, image.scene, image.scenes)


def write_planes(
    destination: str | Path,
    data: da.Array,
    meta: ImageMeta,
    ngff_version: str,
    chunks: tuple[int, ...],
    overwrite: bool,
    source: str | Path,
) -> Path:
    """Write a lazy image one YX plane at a time (at most one plane in memory; every chunk
    stored, all-zero ones included), then its pyramid and NGFF metadata."""
    destination = Path(destination)
    validate_axes(meta.axes, data.ndim, source)
    prepare_output(destination, overwrite, [Path(source)])
    with removed_on_failure(destination):
        level0 = create_level0(
            destination, tuple(data.shape), data.dtype, meta.axes, chunks, ngff_version
        )
        mark_written(destination)
        # every chunk is stored, also all-zero ones (e.g. outside a mosaic's tiles): `run`
        # refuses an image whose chunks are missing, since those read back as zeros unnoticed
        level0 = level0.with_config({"write_empty_chunks": True})
        for index in np.ndindex(*data.shape[:-2]):
            level0[index] = np.asarray(data[index].compute(scheduler="synchronous"))
        finalize_image(destination, meta, ngff_version, window="auto")
    return destination
