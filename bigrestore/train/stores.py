"""Paired OME-Zarr stores for training: open and check pairs, split train from validation.

A *pair* is a low-SNR store (the condition) and a high-SNR store (the target) of the same
scene, with the same axes and shape. Training sees every (t, channel, z) plane of a pair as
an independent 2D image (the network is 2D); a *source* is the set of planes and the
rectangle (rows, columns) from which patches of one pair may be drawn. The validation
sources never share a pixel with the training sources (DESIGN.md: split by store or by
region). Nothing here reads pixels: only metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bigrestore.errors import BadInputError, describe
from bigrestore.io.images import OpenedImage, open_image

#: A plane of a pair: (t index, position in StorePair.channels, z index); 0 for absent axes.
Plane = tuple[int, int, int]


@dataclass(frozen=True)
class StorePair:
    """One low/high pair, as plain picklable data (worker processes open the arrays).

    ``low_array``/``high_array`` are the level-0 zarr arrays; ``channels`` holds, per selected
    channel, its (low index, high index) (the two stores may order named channels
    differently); ``shape`` is the common shape in ``axes`` order.
    """

    low: str
    high: str
    low_array: str
    high_array: str
    axes: str
    shape: tuple[int, ...]
    channels: tuple[tuple[int, int], ...]
    #: Share of training patches drawn from this pair, relative to the other pairs' weights;
    #: 0 (all pairs): patches are drawn in proportion to each pair's pixels.
    weight: float = 0.0

    def size(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1

    def planes(self) -> list[Plane]:
        """Every selected plane, t-major then channel then z."""
        return [
            (t, c, z)
            for t in range(self.size("t"))
            for c in range(len(self.channels))
            for z in range(self.size("z"))
        ]

    def index(self, plane: Plane, which: str, ys: slice, xs: slice) -> tuple[int | slice, ...]:
        """Zarr selection of rows ``ys`` and columns ``xs`` of ``plane`` in the low or high array."""
        t, c, z = plane
        channel = self.channels[c][0 if which == "low" else 1]
        values = {"t": t, "c": channel, "z": z, "y": ys, "x": xs}
        return tuple(values[a] for a in self.axes)

    def describe_plane(self, plane: Plane) -> str:
        t, c, z = plane
        low_c, high_c = self.channels[c]
        return f"t={t} c={low_c}/{high_c} z={z}"


@dataclass(frozen=True)
class Source:
    """Where patches of one pair may come from: ``planes`` and the half-open rectangle
    rows [y0, y1) x columns [x0, x1) of each of them."""

    pair: StorePair
    planes: tuple[Plane, ...]
    y: tuple[int, int]
    x: tuple[int, int]

    @property
    def pixels(self) -> int:
        return len(self.planes) * (self.y[1] - self.y[0]) * (self.x[1] - self.x[0])

    @property
    def weight(self) -> float:
        """Relative probability of drawing a training patch here: the pair's weight when the
        pairs are weighted, else the source's pixel count."""
        return self.pair.weight if self.pair.weight > 0 else float(self.pixels)


def _channel_index(image: OpenedImage, item: str | int, other: OpenedImage) -> int | None:
    """Index of channel ``item`` (index or name) in ``image``; None when a name is absent."""
    n = image.data.shape[image.meta.axes.index("c")] if "c" in image.meta.axes else 1
    text = str(item)
    if text.isdigit():
        return int(text) if int(text) < n else None
    names = list(image.meta.channel_names or [])
    if text in names:
        return names.index(text)
    if not names:  # no names here: take the other store's index for this name
        other_names = list(other.meta.channel_names or [])
        return other_names.index(text) if text in other_names else None
    return None


def _channels(
    low: OpenedImage, high: OpenedImage, channels: Sequence[str | int] | None
) -> tuple[tuple[int, int], ...]:
    n = low.data.shape[low.meta.axes.index("c")] if "c" in low.meta.axes else 1
    if not channels:
        return tuple((c, c) for c in range(n))
    chosen = []
    for item in channels:
        pair = (_channel_index(low, item, high), _channel_index(high, item, low))
        for image, index in ((low, pair[0]), (high, pair[1])):
            if index is None:
                names = list(image.meta.channel_names or [])
                raise BadInputError(
                    describe(
                        image.path, "--channel", f"an index 0..{n - 1} or a name in {names}", item
                    )
                )
        chosen.append(pair)
    return tuple(chosen)


def open_pair(
    low: str | Path,
    high: str | Path,
    channels: Sequence[str | int] | None = None,
    weight: float = 0.0,
) -> StorePair:
    """Open a low/high pair lazily and check that it can be trained on.

    Refuses (BadInputError) pairs whose axes or shapes differ (naming both stores, expected
    vs found), empty stores, and non-numeric data; missing paths raise MissingInputError.
    """
    low_image, high_image = open_image(low), open_image(high)
    where = f"{low_image.path} vs {high_image.path}"
    if low_image.meta.axes != high_image.meta.axes:
        raise BadInputError(describe(where, "axes", low_image.meta.axes, high_image.meta.axes))
    if low_image.data.shape != high_image.data.shape:
        raise BadInputError(
            describe(
                where,
                f"shape ({low_image.meta.axes})",
                f"{tuple(low_image.data.shape)} (low)",
                f"{tuple(high_image.data.shape)} (high); register or crop the pair first",
            )
        )
    for image in (low_image, high_image):
        if 0 in image.data.shape:
            raise BadInputError(
                describe(image.path, "shape", "no empty axis", tuple(image.data.shape))
            )
        if image.data.dtype.kind not in "uif":
            raise BadInputError(
                describe(image.path, "dtype", "integer or float pixels", image.data.dtype)
            )
    return StorePair(
        low=str(low_image.path),
        high=str(high_image.path),
        low_array=str(low_image.path / low_image.level_paths[0]),
        high_array=str(high_image.path / high_image.level_paths[0]),
        axes=low_image.meta.axes,
        shape=tuple(int(n) for n in low_image.data.shape),
        channels=_channels(low_image, high_image, channels),
        weight=_weight(weight, where),
    )


def _weight(weight: object, where: str) -> float:
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight < 0
    ):
        raise BadInputError(describe(where, "weight", "a finite number >= 0", repr(weight)))
    return float(weight)


def whole_source(pair: StorePair, patch: int) -> Source:
    """All planes and pixels of a pair; refuses images smaller than one patch."""
    ny, nx = pair.size("y"), pair.size("x")
    if ny < patch or nx < patch:
        raise BadInputError(
            describe(
                pair.low, "y x size", f"at least the patch size {patch} x {patch}", f"{ny} x {nx}"
            )
        )
    return Source(pair, tuple(pair.planes()), (0, ny), (0, nx))


def split_region(pair: StorePair, patch: int, fraction: float) -> tuple[Source, Source]:
    """Hold out ``fraction`` of a pair for validation, without sharing pixels.

    With several (t, z) positions the last ceil(fraction * n) of them (t-major) are held out,
    all channels together (channels of one field share structure). A single-plane pair is
    split into a top band of rows for training and a bottom band of at least one patch
    height for validation.
    """
    whole = whole_source(pair, patch)
    stack = [(t, z) for t in range(pair.size("t")) for z in range(pair.size("z"))]
    if len(stack) >= 2:
        held = set(stack[len(stack) - max(1, math.ceil(fraction * len(stack))) :])
        if len(held) == len(stack):
            held = {stack[-1]}
        train = tuple(p for p in whole.planes if (p[0], p[2]) not in held)
        val = tuple(p for p in whole.planes if (p[0], p[2]) in held)
        return Source(pair, train, whole.y, whole.x), Source(pair, val, whole.y, whole.x)
    ny = pair.size("y")
    band = max(patch, math.ceil(fraction * ny))
    if ny - band < patch:
        raise BadInputError(
            describe(
                pair.low,
                "rows",
                f"at least {band + patch} to split off a validation band (patch {patch})",
                f"{ny}; give separate validation stores (--val-low/--val-high)",
            )
        )
    return (
        Source(pair, whole.planes, (0, ny - band), whole.x),
        Source(pair, whole.planes, (ny - band, ny), whole.x),
    )


def make_sources(
    pairs: Sequence[StorePair],
    val_pairs: Sequence[StorePair] | None,
    patch: int,
    val_fraction: float,
) -> tuple[list[Source], list[Source]]:
    """Training and validation sources: by store when ``val_pairs`` are given, else by region
    of each training pair (``val_fraction`` 0: no validation, empty list). Either every
    training pair has a weight or none has."""
    weighted = {p.weight > 0 for p in pairs}
    if len(weighted) > 1:
        found = [p.weight for p in pairs]
        raise BadInputError(
            describe("training pairs", "--weight", "a weight for every pair or for none", found)
        )
    if val_pairs:
        return [whole_source(p, patch) for p in pairs], [whole_source(p, patch) for p in val_pairs]
    if val_fraction <= 0:
        return [whole_source(p, patch) for p in pairs], []
    split = [split_region(p, patch, val_fraction) for p in pairs]
    return [s[0] for s in split], [s[1] for s in split]
