"""Background skipping: tiles whose input is indistinguishable from the image's background get
one cheap evaluation (the model's first clean-image estimate) instead of N samples.

A tile is background when its input, smoothed (Gaussian, sigma 2 px, which removes most shot
noise), stays below a threshold everywhere: one pixel of structure above it and the tile is
sampled in full. The threshold is estimated from the volume (model space, where the channel's
1st / 99.8th percentiles are -1 / +1): from the smoothed statistics sample, the background
level b is the median of its darkest 20% and its spread s the distance from b down to the 1st
percentile over 2.33 (a Gaussian's 1% tail); threshold = b + max(10 s, 0.1). An image without
a clear dark population (its darkest 20% spanning more than 5% of the range) skips nothing.
A user may give the threshold in the input's units instead (``--background``), or a mask.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from bigrestore.intensity import Stats, to_model

SMOOTH = 2.0
DARK_FRACTION = 20.0
CLEAR_SPREAD = 0.1  # 5% of the model range [-1, 1]
MIN_MARGIN = 0.1


def smoothed(planes: np.ndarray) -> np.ndarray:
    """Each (..., y, x) plane smoothed in YX only."""
    sigma = [0.0] * (planes.ndim - 2) + [SMOOTH, SMOOTH]
    return gaussian_filter(np.asarray(planes, dtype=np.float32), sigma)


def estimate_threshold(
    planes_model: np.ndarray, measured: np.ndarray | None = None
) -> float | None:
    """The background threshold (model space) of a channel from a sample of its planes in
    model space, (n, y, x); None when the image has no clear dark population. ``measured``
    (boolean, same shape) leaves out pixels that hold no measurement (a fill plateau) and those
    the smoothing mixes with them: else the fill would be taken for the background."""
    values = smoothed(planes_model)
    if measured is not None:
        values = values[smoothed(measured.astype(np.float32)) > 0.999]
        if values.size == 0:
            return None
    values = values.ravel()
    p1, dark_edge = np.percentile(values, [1.0, DARK_FRACTION])
    if dark_edge - p1 > CLEAR_SPREAD:
        return None
    dark = values[values <= dark_edge]
    level = float(np.median(dark))
    spread = max(level - float(p1), 0.0) / 2.33
    return level + max(10.0 * spread, MIN_MARGIN)


def threshold_from_user(level: float, stats: Stats) -> float:
    """A threshold given in the input's intensity units, in model space."""
    return float(to_model(np.asarray([level], dtype=np.float32), stats)[0])


def background_tiles(tiles: np.ndarray, thresholds: list[float | None]) -> np.ndarray:
    """Boolean (n,): tiles (n, C, t, t) in model space whose every channel, smoothed, stays
    below its threshold (a channel without a threshold is never background)."""
    if any(t is None for t in thresholds):
        return np.zeros(tiles.shape[0], dtype=bool)
    peaks = smoothed(tiles).max(axis=(-2, -1))  # (n, C)
    return np.all(peaks < np.asarray(thresholds, dtype=np.float32)[None, :], axis=1)
