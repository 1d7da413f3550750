"""Percentile normalisation into the model's [-1, 1] space and its inverse, as pure functions.

Training normalises each condition and target image by its own percentiles (CARE style; the
W2S release was contrast-stretched per image, so images do not share a scale). Restoration
normalises each plane (one t, z, channel) the same way, from percentiles of the whole plane, or,
on request, each channel with percentiles of the whole volume; never per tile or block (noisy
statistics of small regions cause brightness jumps between tiles). Statistics are explicit
arguments; nothing is remembered between calls (STYLE.md 13).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bigrestore.errors import BadInputError, describe

#: CARE's default percentiles.
P_LOW = 1.0
P_HIGH = 99.8
#: At most this many pixels are used to estimate volume percentiles (a strided subsample).
MAX_STAT_PIXELS = 4_000_000


#: A plateau at the maximum counts as saturation only when it lies this far up the model space
#: of the other pixels (+3: it would squeeze their range to under half). A plateau just above
#: the rest (a contrast stretch that clipped a few noisy pixels, as in the W2S release) is left
#: to the percentiles as before.
SATURATION_ABOVE = 3.0
#: Where a saturated pixel meets the network: at the top of the model's range, as bright as the
#: brightest structure it was trained on (its true value is unknown, only >= the saturation).
SATURATED_MODEL_VALUE = 1.0
#: A plateau at the minimum counts as fill (pixels that hold no measurement: the unacquired
#: corners of a stitched slide, a masked region) only when it lies this far down the model
#: space of the other pixels (-3, a full range below them). Zeros just under the rest (an
#: image background-subtracted and clipped at 0) are left to the percentiles as before.
FILL_BELOW = -3.0
#: Where a fill pixel meets the network: at the bottom of the model's range (empty background).
FILL_MODEL_VALUE = -1.0


@dataclass(frozen=True)
class Stats:
    """Intensity levels that map to -1 (``low``) and +1 (``high``) in model space; the input's
    saturation level (``saturated``) when its maximum was a plateau the levels left out, and its
    fill level (``filled``) when its minimum was one."""

    low: float
    high: float
    saturated: float | None = None
    filled: float | None = None

    def to_dict(self) -> dict[str, float]:
        record = {"low": float(self.low), "high": float(self.high)}
        for key in ("saturated", "filled"):
            if getattr(self, key) is not None:
                record[key] = float(getattr(self, key))
        return record

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Stats:
        plateaus = {k: float(d[k]) for k in ("saturated", "filled") if d.get(k) is not None}
        return cls(float(d["low"]), float(d["high"]), **plateaus)

    def plateaus(self) -> list[float]:
        """The levels (saturation, fill) whose pixels hold no measurement of the sample."""
        return [level for level in (self.saturated, self.filled) if level is not None]


def measured(region: np.ndarray, stats: Stats) -> np.ndarray:
    """True where a pixel of ``region`` is a measurement: neither at the saturation level nor at
    the fill level of ``stats``."""
    keep = np.ones(np.shape(region), dtype=bool)
    if stats.saturated is not None:
        keep &= region < stats.saturated
    if stats.filled is not None:
        keep &= region > stats.filled
    return keep


def percentile_stats(
    image: np.ndarray,
    p_low: float = P_LOW,
    p_high: float = P_HIGH,
    where: object = "image",
    plateaus: bool = False,
) -> Stats:
    """Percentiles of ``image`` (any shape); a flat image gets a unit range to avoid dividing by 0.

    With ``plateaus``, a maximum shared by so many pixels that the upper percentile lands on it
    and far above the other pixels (:data:`SATURATION_ABOVE`; an over-exposed cell) is left
    out, and so is a minimum the lower percentile lands on far below them (:data:`FILL_BELOW`;
    the zeros around a stitched slide): the levels come from the other pixels, so neither
    squeezes the rest of the image into a sliver of the model's range, and ``saturated`` /
    ``filled`` record their levels.
    Non-finite values make the percentiles meaningless: they are refused (BadInputError)."""
    values = np.asarray(image, dtype=np.float64).ravel()
    if values.size > MAX_STAT_PIXELS:
        values = values[:: int(np.ceil(values.size / MAX_STAT_PIXELS))]
    if values.size == 0 or not np.isfinite(values).all():
        raise BadInputError(describe(where, "pixels", "finite values", "NaN or inf (or no pixels)"))
    low, high = np.percentile(values, [p_low, p_high])
    found: dict[str, float] = {}
    if plateaus and high > low:
        found = _plateaus(values, float(low), float(high), p_low, p_high)
        if found:
            rest = measured(values, Stats(low, high, **found))
            low, high = np.percentile(values[rest], [p_low, p_high])
    if high - low < 1e-12:
        high = low + 1.0
    return Stats(float(low), float(high), **found)


def _plateaus(
    values: np.ndarray, low: float, high: float, p_low: float, p_high: float
) -> dict[str, float]:
    """The plateaus at the maximum (``saturated``) and minimum (``filled``) that the percentiles
    ``low`` / ``high`` land on and that lie beyond the limits in the model space of the other
    pixels (each judged with both candidates left out)."""
    top, bottom = float(values.max()), float(values.min())
    candidates = {}
    if high >= top:
        candidates["saturated"] = top
    if low <= bottom:
        candidates["filled"] = bottom
    if not candidates:
        return {}
    rest = values[measured(values, Stats(low, high, **candidates))]
    if rest.size == 0:
        return {}
    rest_low, rest_high = np.percentile(rest, [p_low, p_high])
    if rest_high <= rest_low:
        return {}

    def model(level: float) -> float:
        return 2 * (level - rest_low) / (rest_high - rest_low) - 1

    return {
        key: level
        for key, level in candidates.items()
        if (model(level) > SATURATION_ABOVE if key == "saturated" else model(level) < FILL_BELOW)
    }


def to_network_input(image: np.ndarray, stats: Stats) -> np.ndarray:
    """:func:`to_model` (a run's input as the network meets it). In a plane with a saturation
    level, every value is capped at :data:`SATURATED_MODEL_VALUE`: the saturated pixels and
    the bright rim around them, so the input stays monotone (a soft-edged cell is not fed as a
    bright ring around a dimmer core). In a plane with a fill level, every value is floored at
    :data:`FILL_MODEL_VALUE`: the fill meets the network as empty background."""
    model = to_model(image, stats)
    if stats.saturated is not None:
        model = np.minimum(model, np.float32(SATURATED_MODEL_VALUE))
    if stats.filled is not None:
        model = np.maximum(model, np.float32(FILL_MODEL_VALUE))
    return model


def to_model(image: np.ndarray, stats: Stats) -> np.ndarray:
    """Intensities → model space: ``low`` ↦ -1, ``high`` ↦ +1 (float32, not clipped)."""
    scale = 2.0 / (stats.high - stats.low)
    return ((np.asarray(image, dtype=np.float32) - stats.low) * scale - 1.0).astype(np.float32)


def from_model(values: np.ndarray, stats: Stats) -> np.ndarray:
    """Model space → intensities (inverse of :func:`to_model`): ``a·x + b``."""
    half = (stats.high - stats.low) / 2.0
    return (np.asarray(values, dtype=np.float64) * half + (stats.low + half)).astype(np.float32)


def after_fit(stats: Stats, a: float, b: float) -> Stats:
    """The statistics whose :func:`from_model` maps ``x`` where ``stats``' maps ``a·x + b``:
    a least-squares correction fitted in model space, folded into one plane's levels."""
    half = (stats.high - stats.low) / 2.0
    middle = stats.low + half + b * half
    return Stats(float(middle - a * half), float(middle + a * half), stats.saturated, stats.filled)


def std_from_model(std: np.ndarray, stats: Stats) -> np.ndarray:
    """A standard deviation in model space → intensity units (``a·s``; no offset)."""
    return (np.asarray(std, dtype=np.float64) * ((stats.high - stats.low) / 2.0)).astype(np.float32)


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(a, b)`` minimising sum (a·x + b - y)² over the pixels finite in both
    (any shape, the same number of values). A constant ``x`` (or fewer than two such pixels)
    has no slope: a = 0 and b = mean(y) (0 when no pixel is left).

    The one intensity fit of the package: evaluation (method onto ground truth), calibration
    (mean onto truth), training targets (high onto low), the noise check of the degradation
    model, and the run's output scale (input on restored mean)."""
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not finite.all():
        xs, ys = xs[finite], ys[finite]
    if xs.size == 0:
        return 0.0, 0.0
    if xs.size < 2 or np.ptp(xs) == 0.0:  # exact test: a float mean need not equal its values
        return 0.0, float(ys.mean())
    dx = xs - xs.mean()
    a = float(np.dot(dx, ys - ys.mean())) / float(np.dot(dx, dx))
    return a, float(ys.mean()) - a * float(xs.mean())
