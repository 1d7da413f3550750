"""Microscope vendor formats (Zeiss CZI, Nikon ND2, Leica LIF, OME-TIFF) read through bioio.

bioio and its reader plugins are the optional extra ``formats``
(``pip install 'bigrestore[formats]'``). :func:`open_vendor` opens one scene lazily as a dask
array in NGFF axis order with its metadata: axes, physical pixel sizes (micrometer), the time
step when the file has one, and channel names. The readers are asked for one chunk per YX
plane where they allow it, so :func:`bigrestore.io.convert.convert_image` can write plane by
plane and files larger than memory convert.

bioio always returns TCZYX (plus S for RGB samples). Axes of size 1 among t and z are dropped,
and c too when there is one channel (its name is kept as the OMERO label), as the TIFF path
does; RGB samples become channels.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da

from bigrestore.errors import BadInputError, MissingInputError, UsageError, describe
from bigrestore.io.meta import ImageMeta, normalise_unit

log = logging.getLogger(__name__)

#: The extra that installs bioio and every reader plugin below.
EXTRA = "formats"
_PLANE_CHUNKS = {"chunk_dims": ["Y", "X", "S"]}


@dataclass(frozen=True)
class VendorFormat:
    """One vendor format: its bioio plugin (import name, package name) and reader options."""

    name: str
    module: str
    package: str
    options: dict[str, Any]


FORMATS: dict[str, VendorFormat] = {
    ".czi": VendorFormat("Zeiss CZI", "bioio_czi", "bioio-czi", _PLANE_CHUNKS),
    ".nd2": VendorFormat("Nikon ND2", "bioio_nd2", "bioio-nd2", {}),  # one chunk per frame
    ".lif": VendorFormat("Leica LIF", "bioio_lif", "bioio-lif", _PLANE_CHUNKS),
    ".ome.tif": VendorFormat("OME-TIFF", "bioio_ome_tiff", "bioio-ome-tiff", _PLANE_CHUNKS),
    ".ome.tiff": VendorFormat("OME-TIFF", "bioio_ome_tiff", "bioio-ome-tiff", _PLANE_CHUNKS),
}
SAMPLE_NAMES = {3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}


@dataclass(frozen=True)
class VendorImage:
    """One scene of a vendor file, lazily: ``data`` in ``meta.axes`` order (NGFF)."""

    data: da.Array
    meta: ImageMeta
    scene: int
    scenes: tuple[str, ...]


def vendor_suffix(path: str | Path) -> str | None:
    """The vendor suffix of ``path`` (".czi", ".ome.tif", ...), None for other files."""
    name = Path(path).name.lower()
    return next((s for s in sorted(FORMATS, key=len, reverse=True) if name.endswith(s)), None)


def reader_installed(suffix: str) -> bool:
    """True when bioio and the plugin for ``suffix`` can be imported."""
    fmt = FORMATS[suffix]
    return all(importlib.util.find_spec(m) is not None for m in ("bioio", fmt.module))


def _reader(path: Path, suffix: str) -> Any:
    """The plugin's Reader class; a one-line error naming the extra when it is missing."""
    fmt = FORMATS[suffix]
    if not reader_installed(suffix):
        raise BadInputError(
            describe(path, "reader", f"bioio with {fmt.package} for {fmt.name} files", "none")
            + f"; install the optional readers: pip install 'bigrestore[{EXTRA}]'"
        )
    return importlib.import_module(fmt.module).Reader


def _bioimage(path: Path, suffix: str) -> Any:
    """A BioImage of ``path`` through its plugin, asking for one chunk per plane."""
    from bioio import BioImage

    reader = _reader(path, suffix)
    try:
        return BioImage(path, reader=reader, **FORMATS[suffix].options)
    except Exception as exc:  # each plugin raises its own types for unreadable files
        raise BadInputError(
            describe(path, "file", f"a readable {FORMATS[suffix].name} file", repr(exc))
        ) from exc


def select_scene(path: Path, scenes: tuple[str, ...], scene: int | str | None) -> int:
    """The index of ``scene`` (an index, a numeric string or a scene name; None = 0)."""
    if scene is None:
        return 0
    if isinstance(scene, int) or str(scene).isdigit():
        index = int(scene)
        if 0 <= index < len(scenes):
            return index
    elif str(scene) in scenes:
        return scenes.index(str(scene))
    listed = ", ".join(f"{i} ({name})" for i, name in enumerate(scenes))
    raise UsageError(describe(path, "--scene", f"one of {listed}", scene))


def _ome_length_units(image: Any) -> dict[str, str]:
    """The units the file's OME metadata gives its z/y/x pixel sizes in (e.g. "nm"), when the
    reader exposes OME metadata (bioio-ome-tiff): bioio passes those sizes on unconverted."""
    try:
        pixels = image.metadata.images[image.current_scene_index].pixels
    except Exception:  # not an OME-backed reader: its sizes are in micrometer
        return {}
    units = {}
    for axis in "zyx":
        unit = getattr(pixels, f"physical_size_{axis}_unit", None)
        if unit is not None:
            units[axis] = str(getattr(unit, "value", unit))
    return units


def _physical(image: Any) -> tuple[dict[str, float], dict[str, str | None]]:
    """Pixel sizes (in the OME metadata's units where the reader has them, else micrometer,
    bioio's unit) and the time step (second) when known."""
    sizes: dict[str, float] = {}
    units: dict[str, str | None] = {}
    pixels = image.physical_pixel_sizes
    ome_units = _ome_length_units(image)
    for axis, value in (("z", pixels.Z), ("y", pixels.Y), ("x", pixels.X)):
        if value is not None and value > 0:
            sizes[axis] = float(value)
            units[axis] = normalise_unit(ome_units.get(axis, "micrometer"))
    try:
        step = image.time_interval
    except Exception:  # not every reader knows it; a missing step is not an error
        step = None
    if step is not None:
        seconds = float(step.to("second").magnitude) if hasattr(step, "to") else float(step)
        if seconds > 0:
            sizes["t"], units["t"] = seconds, "second"
    return sizes, units


def _to_ngff(data: da.Array, order: str, names: list[str]) -> tuple[da.Array, str, list[str]]:
    """bioio's TCZYX[S] → NGFF axes: RGB samples folded into c, singleton t/c/z dropped."""
    if "S" in order:
        s = data.shape[order.index("S")]
        data = da.moveaxis(data, order.index("S"), order.index("C") + 1)
        n_c = data.shape[1]
        data = data.reshape(data.shape[:1] + (n_c * s,) + data.shape[3:])
        letters = SAMPLE_NAMES.get(s, tuple(str(i) for i in range(s)))
        names = [f"{n} {letters[i]}" if s > 1 else n for n in names for i in range(s)]
        order = order.replace("S", "")
    keep = [i for i, a in enumerate(order) if a in "YX" or data.shape[i] > 1]
    data = data[tuple(slice(None) if i in keep else 0 for i in range(data.ndim))]
    return data, "".join(order[i] for i in keep).lower(), names


def open_vendor(path: str | Path, scene: int | str | None = None) -> VendorImage:
    """Open one scene of a CZI / ND2 / LIF / OME-TIFF file lazily (nothing is read yet)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    suffix = vendor_suffix(path)
    if suffix is None:
        raise BadInputError(describe(path, "suffix", " or ".join(FORMATS), path.suffix))
    image = _bioimage(path, suffix)
    scenes = tuple(str(s) for s in image.scenes)
    index = select_scene(path, scenes, scene)
    image.set_scene(index)
    order = image.dims.order
    names = [str(n) for n in (image.channel_names or [])]
    n_c = image.dims.C if "C" in order else 1
    if len(names) != n_c:
        names = [f"channel {i}" for i in range(n_c)]
    data, axes, names = _to_ngff(image.dask_data, order, names)
    sizes, units = _physical(image)
    meta = ImageMeta(
        axes=axes,
        scale=tuple(sizes.get(a, 1.0) for a in axes),
        translation=(0.0,) * len(axes),
        units=tuple(units.get(a) for a in axes),
        channel_names=tuple(names),
        name=scenes[index] if len(scenes) > 1 else path.name.split(".")[0],
    )
    log.info("%s: scene %d of %d, axes %s, shape %s", path, index, len(scenes), axes, data.shape)
    return VendorImage(data, meta, index, scenes)
