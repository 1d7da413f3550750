"""What an image means, independent of how it is stored: axes, physical scale, units, names.

Pure Python (no zarr): shared by the readers, the writers and the converters.
"""

from __future__ import annotations

from dataclasses import dataclass

from bigrestore.errors import BadInputError, describe

#: Unit spellings found in OME-TIFF / ImageJ metadata mapped to NGFF unit names.
UNIT_ALIASES = {
    "µm": "micrometer",
    "μm": "micrometer",  # Greek mu (U+03BC), beside the micro sign above
    "\\u00B5m": "micrometer",  # as ImageJ escapes the micro sign in its TIFF description
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "nm": "nanometer",
    "pm": "picometer",
    "Å": "angstrom",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
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
    ``channel_colors``: the OMERO display colour of each channel (RRGGBB hex), when known.
    """

    axes: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    units: tuple[str | None, ...]
    channel_names: tuple[str, ...] | None = None
    name: str = "image"
    channel_colors: tuple[str, ...] | None = None

    def pixel_size(self, axis: str) -> float:
        return self.scale[self.axes.index(axis)] if axis in self.axes else 1.0


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
