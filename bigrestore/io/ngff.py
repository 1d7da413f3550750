"""NGFF versions in one place: which zarr format each uses, where its attributes live, and
the ``multiscales`` + ``omero`` metadata (written by ome-zarr-py, so the schema is theirs).

Callers never branch on the version: they ask :func:`ngff_format` for a :class:`NgffFormat`
and use its methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_multiscales_metadata

from bigrestore.errors import BadInputError, describe
from bigrestore.io.meta import ImageMeta

NGFF_VERSIONS = ("0.4", "0.5")


@dataclass(frozen=True)
class NgffFormat:
    """One NGFF version: 0.4 lives on zarr v2 with attributes at the group's top level, 0.5 on
    zarr v3 with them under the ``ome`` key."""

    version: str
    zarr_format: int

    def ome_zarr(self) -> FormatV04 | FormatV05:
        """ome-zarr-py's Format object for this version."""
        return FormatV04() if self.version == "0.4" else FormatV05()

    def array_options(self, axes: str) -> dict[str, Any]:
        """Extra ``create_array`` arguments: '/'-separated chunk keys on v2, axis names on v3."""
        if self.zarr_format == 2:
            return {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
        return {"dimension_names": list(axes)}

    def set_ome_attribute(self, group: zarr.Group, key: str, value: Any) -> None:
        """Write one OME attribute (e.g. ``omero``) where this version keeps them."""
        if self.zarr_format == 3:
            ome = dict(group.attrs.get("ome", {}))
            ome[key] = value
            group.attrs["ome"] = ome
        else:
            group.attrs[key] = value


def ngff_format(version: str) -> NgffFormat:
    """The format of NGFF ``version`` ("0.4" or "0.5")."""
    if version not in NGFF_VERSIONS:
        raise BadInputError(
            describe("--ngff-version", "version", " or ".join(NGFF_VERSIONS), version)
        )
    return NgffFormat(version, 2 if version == "0.4" else 3)


def format_of_group(group: zarr.Group) -> NgffFormat:
    """The NGFF format an existing group was written with (by its zarr format)."""
    return ngff_format("0.5" if group.metadata.zarr_format == 3 else "0.4")


def ome_attributes(group: zarr.Group) -> tuple[dict[str, Any], str | None]:
    """The OME attributes of a group and the NGFF version declared at group level (0.5)."""
    attrs = dict(group.attrs)
    if "ome" in attrs:
        return dict(attrs["ome"]), str(attrs["ome"].get("version"))
    return attrs, None


def level_transforms(meta: ImageMeta, n_levels: int) -> list[list[dict[str, Any]]]:
    """Scale and translation of each level: YX pixel size doubles, origin moves by half a pixel."""
    transforms = []
    for level in range(n_levels):
        factor = [2**level if a in "yx" else 1 for a in meta.axes]
        scale = [s * f for s, f in zip(meta.scale, factor, strict=True)]
        translation = [
            t + (f - 1) * s / 2
            for t, s, f in zip(meta.translation, meta.scale, factor, strict=True)
        ]
        transforms.append(
            [{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]
        )
    return transforms


def default_window(dtype: np.dtype) -> tuple[float, float]:
    """Display range when none is given: the integer dtype's range, else [0, 1]."""
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
    return 0.0, 1.0


def omero(
    channel_names: tuple[str, ...] | None,
    n_channels: int,
    windows: list[tuple[float, ...]],
    channel_colors: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """OMERO rendering metadata: labels, colours (``channel_colors``, e.g. the input's, else a
    palette) and one display window per channel, given as (start, end) or (start, end, min,
    max)."""
    names = channel_names or tuple(f"channel {i}" for i in range(n_channels))
    colors = (
        list(channel_colors)
        if channel_colors
        else (
            ["FFFFFF"]
            if n_channels == 1
            else ["00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF"]
        )
    )
    channels = []
    for i, name in enumerate(names):
        window = windows[min(i, len(windows) - 1)]
        start, end = window[0], window[1]
        low, high = (window[2], window[3]) if len(window) == 4 else (start, end)
        channels.append(
            {
                "label": str(name),
                "color": colors[i % len(colors)],
                "active": True,
                "window": {"min": low, "max": high, "start": start, "end": end},
            }
        )
    return {"channels": channels, "rdefs": {"model": "greyscale" if n_channels == 1 else "color"}}


def write_metadata(
    group: zarr.Group,
    meta: ImageMeta,
    n_levels: int,
    ngff_version: str,
    dtype: np.dtype,
    window: tuple[float, ...] | list[tuple[float, ...]] | None = None,
) -> None:
    """Write NGFF multiscales + omero metadata with ome-zarr-py (0.4 or 0.5 layout).

    ``window``: one display range for all channels, or one per channel (default: by dtype)."""
    fmt = ngff_format(ngff_version)
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
    if window is None:
        windows = [default_window(np.dtype(dtype))]
    elif isinstance(window, list):
        windows = window
    else:
        windows = [window]
    write_multiscales_metadata(
        group, datasets=datasets, fmt=fmt.ome_zarr(), axes=axes, name=meta.name
    )
    fmt.set_ome_attribute(
        group, "omero", omero(meta.channel_names, n_channels, windows, meta.channel_colors)
    )
