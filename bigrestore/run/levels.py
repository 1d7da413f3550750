"""The intensity levels of a run: the percentiles that map each plane (or the whole volume)
into model space, and the background thresholds that go with them.

Training scales every image by its own 1st / 99.8th percentiles, so by default a run does the
same per plane (one t, z and channel); ``normalise_per="volume"`` shares one scale per channel.
Never per tile or block: the percentiles of small regions are noisy and make brightness jump
between tiles. Reads pixels (a coarse pyramid level, strided); writes nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from bigrestore.errors import BadInputError, describe
from bigrestore.intensity import Stats, measured, percentile_stats, to_network_input
from bigrestore.io.images import OpenedImage, open_image
from bigrestore.run.tasks import plane_entry

if TYPE_CHECKING:
    from bigrestore.model.files import ModelInfo
    from bigrestore.run.settings import RunSettings

#: Pixels of one plane above which a coarser pyramid level is used for the percentiles.
STATS_LEVEL_PIXELS = 1024 * 1024
#: At most this many pixels (a strided subsample of planes) give a channel's percentiles,
#: or are read at once for per-plane percentiles.
STATS_PIXELS = 4_000_000
#: At most this many pixels (a YX stride) give one plane's percentiles.
STATS_PLANE_PIXELS = 1024 * 1024


def statistics_level(image: OpenedImage) -> Any:
    """The pixels the statistics look at: the coarsest level still ≥ ~1 MPixel per plane."""
    axes = image.meta.axes
    iy, ix = axes.index("y"), axes.index("x")
    level = 0
    for index, shape in enumerate(image.level_shapes):
        if shape[iy] * shape[ix] >= STATS_LEVEL_PIXELS or index == 0:
            level = index
    return open_image(image.path, level=level).data if level else image.data


def channel_planes(data: Any, axes: str, channel: int) -> Any:
    """One channel's planes of ``data`` (lazy), (n, y, x), plane t · nz + z at index n."""
    sub = data[(slice(None),) * axes.index("c") + (channel,)] if "c" in axes else data
    return sub.reshape((-1, *sub.shape[-2:]))


def computed(planes: Any, where: str) -> np.ndarray:
    try:
        return np.asarray(planes.compute())
    except (RuntimeError, ValueError, OSError) as exc:  # e.g. a chunk that does not decode
        raise BadInputError(
            describe(where, "pixels", "readable chunks", f"{type(exc).__name__}: {exc}")
        ) from exc


def statistics_sample(image: OpenedImage, channel: int) -> tuple[np.ndarray, list[int]]:
    """A strided sample of one channel's planes, (n, y, x), of at most ~STATS_PIXELS pixels
    from :func:`statistics_level`, and the plane index of each: what the statistics look at."""
    planes = channel_planes(statistics_level(image), image.meta.axes, channel)
    keep = max(1, int(STATS_PIXELS // (planes.shape[-2] * planes.shape[-1])))
    step = max(1, -(-planes.shape[0] // keep))
    return computed(planes[::step], str(image.path)), list(range(0, planes.shape[0], step))


def plane_count(image: OpenedImage) -> int:
    axes = image.meta.axes
    return math.prod(image.data.shape[axes.index(a)] for a in "tz" if a in axes)


def plane_percentiles(image: OpenedImage, channel: int, p_low: float, p_high: float) -> list[Stats]:
    """Percentiles of every plane of one channel (t · nz + z order), each from at most
    ~STATS_PLANE_PIXELS pixels (a YX stride) of :func:`statistics_level`, read a few planes
    at a time."""
    planes = channel_planes(statistics_level(image), image.meta.axes, channel)
    stride = max(1, math.ceil(math.sqrt(planes.shape[-2] * planes.shape[-1] / STATS_PLANE_PIXELS)))
    per_read = max(1, STATS_PIXELS // STATS_PLANE_PIXELS)
    stats: list[Stats] = []
    for start in range(0, planes.shape[0], per_read):
        batch = computed(planes[start : start + per_read, ::stride, ::stride], str(image.path))
        for offset, plane in enumerate(batch):
            where = f"{image.path} channel {channel} plane {start + offset}"
            stats.append(percentile_stats(plane, p_low, p_high, where=where, plateaus=True))
    return stats


def input_statistics(
    image: OpenedImage, channels: list[int], p_low: float, p_high: float, per: str = "volume"
) -> tuple[tuple[Stats, ...], ...]:
    """Per plane (``per`` "plane") or for the whole volume (one entry), the percentiles of each
    input channel, indexed by channel (unselected channels get Stats(0, 1)). Never per tile or
    block. A saturation plateau at the maximum and a fill plateau at the minimum are left out of
    them and recorded (``saturated``, ``filled``)."""
    width = max(channels) + 1
    if per == "volume":
        volume = [Stats(0.0, 1.0)] * width
        for c in channels:
            sample, _ = statistics_sample(image, c)
            volume[c] = percentile_stats(
                sample, p_low, p_high, where=f"{image.path} channel {c}", plateaus=True
            )
        return (tuple(volume),)
    planes = [[Stats(0.0, 1.0)] * width for _ in range(plane_count(image))]
    for c in channels:
        for plane, stats in zip(planes, plane_percentiles(image, c, p_low, p_high), strict=True):
            plane[c] = stats
    return tuple(tuple(plane) for plane in planes)


def plan_background(
    image: OpenedImage,
    selected: list[int],
    stats: tuple[tuple[Stats, ...], ...],
    settings: RunSettings,
    info: ModelInfo,
) -> tuple[tuple[float | None, ...], ...] | None:
    """Per plane, per input channel, the background threshold in model space
    (bigrestore.run.background), or None when the run does not skip: switched off, or the
    model has no first estimate. A threshold given in the input's units is mapped with each
    entry of ``stats`` (one per plane, or one shared); an estimated one is a single shared
    entry per channel, from a sample of planes each in its own model space."""
    if settings.skip_background == "off" or not (
        info.objective.sampled and info.objective.first_estimate
    ):
        return None
    from bigrestore.run.background import estimate_threshold, threshold_from_user

    if settings.background is not None:
        return tuple(
            tuple(
                threshold_from_user(settings.background, plane[c]) if c in selected else None
                for c in range(len(plane))
            )
            for plane in stats
        )
    shared: list[float | None] = [None] * (max(selected) + 1)
    for c in selected:
        sample, indices = statistics_sample(image, c)
        entries = [plane_entry(stats, i)[c] for i in indices]
        normalised = [to_network_input(p, e) for p, e in zip(sample, entries, strict=True)]
        kept = None  # every pixel is a measurement unless a plane has a plateau
        if any(e.plateaus() for e in entries):
            kept = np.stack([measured(p, e) for p, e in zip(sample, entries, strict=True)])
        shared[c] = estimate_threshold(np.stack(normalised), kept)
    return (tuple(shared),)
