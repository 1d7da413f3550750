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
from bigrestore.io.vendor import FORMATS, open_vendor, reader_installed, vendor_suffix
from bigrestore.io.write import create_level0, finalize_image, mark_written, write_image

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


def read_tiff(path: str | Path, axes: str | None = None) -> tuple[da.Array, ImageMeta]:
    """Open a TIFF lazily; return the data in NGFF axis order and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError) as exc:
        raise BadInputError(describe(path, "file", "a readable TIFF", repr(exc))) from exc
    series = tif.series[0]
    file_axes = series.axes.upper()
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
        if len(source_axes) != len(series.shape):
            raise BadInputError(
                describe(
                    path, "--axes", f"{len(series.shape)} letters for shape {series.shape}", axes
                )
            )
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
    return data, meta


def convert_tiff(
    source: str | Path,
    destination: str | Path,
    axes: str | None = None,
    ngff_version: str = "0.5",
    chunks: int = 512,
    overwrite: bool = False,
    pixel_size: dict[str, float] | None = None,
) -> Path:
    """Convert one TIFF file into a multiscale OME-Zarr image (the TIFF is only read)."""
    data, meta = read_tiff(source, axes)
    meta = with_pixel_size(meta, pixel_size)
    return write_image(
        destination,
        data,
        meta,
        ngff_version=ngff_version,
        chunks=plane_chunks(meta.axes, data.shape, chunks),
        overwrite=overwrite,
    )


def with_pixel_size(meta: ImageMeta, pixel_size: dict[str, float] | None) -> ImageMeta:
    """``meta`` with the ``--pixel-size`` overrides (micrometer for z/y/x without a unit)."""
    if not pixel_size:
        return meta
    scale = tuple(pixel_size.get(a, s) for a, s in zip(meta.axes, meta.scale, strict=True))
    units = tuple(
        (u or "micrometer") if a in pixel_size and a in "zyx" else u
        for a, u in zip(meta.axes, meta.units, strict=True)
    )
    return ImageMeta(meta.axes, scale, meta.translation, units, meta.channel_names, meta.name)


def plane_chunks(axes: str, shape: tuple[int, ...], yx: int) -> tuple[int, ...]:
    """One plane per chunk on t/c/z, ``yx`` squares (clipped to the shape) in Y and X."""
    return tuple(min(n, yx) if a in "yx" else 1 for a, n in zip(axes, shape, strict=True))


@dataclass(frozen=True)
class Converted:
    """What :func:`convert_image` wrote: the store, and for vendor files the scene converted
    out of the file's scenes (empty for TIFF)."""

    path: Path
    scene: int = 0
    scenes: tuple[str, ...] = ()


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
        if scene not in (None, 0, "0"):
            raise UsageError(
                describe(source, "--scene", "a CZI, ND2, LIF or OME-TIFF file (bioio)", scene)
            )
        options = dict(ngff_version=ngff_version, chunks=chunks, overwrite=overwrite)
        return Converted(convert_tiff(source, destination, axes, pixel_size=pixel_size, **options))
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
    level0 = create_level0(
        destination, tuple(data.shape), data.dtype, meta.axes, chunks, ngff_version
    )
    mark_written(destination)
    # every chunk is stored, also all-zero ones (e.g. outside a mosaic's tiles): `run` refuses
    # an image whose chunks are missing, since those read back as zeros without a trace
    level0 = level0.with_config({"write_empty_chunks": True})
    for index in np.ndindex(*data.shape[:-2]):
        level0[index] = np.asarray(data[index].compute(scheduler="synchronous"))
    finalize_image(destination, meta, ngff_version)
    return destination
