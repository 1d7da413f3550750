"""Calibrated uncertainty: turning the samples' pixel std into intervals that hold their coverage.

The N samples' std is a spread, not a promise: a few-step sampler narrows it (the default
sampler keeps 0.67 of the exact posterior's spread at 8 steps on a Gaussian posterior) and a
model's own errors add to it. Calibration measures, on held-out pairs, the normalised errors

    z = (truth - (a mean + b)) / (a std)        a, b: least-squares fit of mean to truth per image

(W2S targets are contrast-stretched per image: the affine fit absorbs that, as ``evaluate``
does) and chooses, per coverage level and per bin of predicted std, the factor q such that
[mean - q std, mean + q std] covers the truth. The factor is chosen by conformal risk control
(Angelopoulos et al. 2022) with regions of images as the exchangeable units (pixels of one
image are not exchangeable): with n regions and per-region miscoverage L_i(q), q is the
smallest value with (n / (n + 1)) mean_i L_i(q) + 1 / (n + 1) <= 1 - coverage, which bounds
the expected miscoverage of a new region of similar data by 1 - coverage.

What it does not promise: coverage of every pixel, or on data unlike the calibration pairs (a
different microscope, stain or noise level): recalibrate there. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bigrestore.intensity import fit_line

LEVELS = (0.8, 0.9, 0.95)
#: Coverage of mean ± 1 std under a Gaussian: what the calibrated std is scaled to.
ONE_SIGMA = 0.6827
#: Std below this (model space, where the image spans about [-1, 1]) counts as this much.
STD_FLOOR = 1e-3
#: Side of the regions that are the exchangeable units.
REGION = 64
#: Candidate factors q searched (log-spaced).
GRID = np.exp(np.linspace(np.log(0.05), np.log(50.0), 2000))


@dataclass(frozen=True)
class Calibration:
    """Interval factors for one sampler setting: per level, per std bin (``edges`` are the
    inner bin edges of the predicted std, model space; empty: one bin)."""

    key: dict[str, Any]
    edges: list[float]
    factors: dict[str, list[float]]
    std_factor: list[float]
    regions: int
    data: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**d)

    def bins(self, std: np.ndarray) -> np.ndarray:
        return (
            np.digitize(std, np.asarray(self.edges, dtype=np.float64))
            if self.edges
            else np.zeros(std.shape, int)
        )

    def half_width(self, std: np.ndarray, level: float) -> np.ndarray:
        """q(level, bin of std) x std: half the interval, in the units of ``std``."""
        factors = np.asarray(self.factors[level_key(level)], dtype=np.float64)
        return factors[self.bins(std)] * std

    def calibrated_std(self, std: np.ndarray) -> np.ndarray:
        """std scaled so that mean ± calibrated std covers 68.27 % on the calibration data (per
        bin), as one standard deviation of a Gaussian would. A coverage, not the RMS of z: a
        few pixels with near-zero spread and a real error (highlights every sample pinned at
        the clip bound) would otherwise inflate a whole bin's factor a hundredfold."""
        return np.asarray(self.std_factor, dtype=np.float64)[self.bins(std)] * std


def level_key(level: float) -> str:
    return f"{level:g}"


def rising_fit(mean: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The affine fit ``a·mean + b ≈ truth`` with a positive slope: where the least-squares
    slope is not positive (a flat or unrelated mean), the identity slope with the offset
    refitted, so intervals are judged at the right level rather than by a reversed map."""
    a, b = fit_line(mean, truth)
    if a > 0:
        return a, b
    return 1.0, float(np.nanmean(truth) - np.nanmean(mean))


def normalised_errors(
    mean: np.ndarray, std: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(|z|, std in fitted units) of one image (2D): the affine fit of mean to truth, then z."""
    a, b = rising_fit(mean, truth)
    scale = np.maximum(std.astype(np.float64), STD_FLOOR)
    z = (truth - (a * mean + b)) / (a * scale)
    return np.abs(z), scale


def regions(*arrays: np.ndarray, side: int = REGION) -> list[tuple[np.ndarray, ...]]:
    """Non-overlapping side x side regions of same-shaped 2D arrays (the exchangeable units)."""
    h, w = arrays[0].shape
    out = []
    for y in range(0, h - side + 1, side):
        for x in range(0, w - side + 1, side):
            out.append(tuple(a[y : y + side, x : x + side].ravel() for a in arrays))
    return out or [tuple(a.ravel() for a in arrays)]


def crc_factor(abs_z: Sequence[np.ndarray], level: float) -> float:
    """Conformal risk control: the smallest q of GRID whose corrected mean miscoverage over
    the regions (each an array of |z|) is at most 1 - level."""
    n = len(abs_z)
    sorted_regions = [np.sort(r) for r in abs_z]
    alpha = 1.0 - level

    def risk(q: float) -> float:  # non-increasing in q, so the search can bisect
        miss = np.mean([1.0 - np.searchsorted(r, q, side="right") / r.size for r in sorted_regions])
        return n / (n + 1) * miss + 1.0 / (n + 1)

    low, high = 0, len(GRID) - 1
    if risk(GRID[high]) > alpha:
        return float(GRID[high])
    while low < high:
        middle = (low + high) // 2
        if risk(GRID[middle]) <= alpha:
            high = middle
        else:
            low = middle + 1
    return float(GRID[low])


def fit_calibration(
    images: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    key: dict[str, Any],
    data: str,
    n_bins: int = 3,
    region: int = REGION,
) -> Calibration:
    """Calibrate on ``images`` = (mean, std, truth) 2D arrays: per level, one factor per bin of
    predicted std (``n_bins`` equal-count bins; 1 = a single factor), with ``region``-sided
    squares as the units (a few hundred are needed for 95%: 1 / (n + 1) is spent)."""
    units = []  # per region: (|z|, std)
    for mean, std, truth in images:
        abs_z, scale = normalised_errors(mean, std, truth)
        units += regions(abs_z, scale, side=region)
    all_std = np.concatenate([s for _, s in units])
    edges = (
        [float(e) for e in np.quantile(all_std, np.linspace(0, 1, n_bins + 1)[1:-1])]
        if n_bins > 1
        else []
    )
    factors: dict[str, list[float]] = {level_key(lv): [] for lv in LEVELS}
    one_sigma = []
    for k in range(max(1, n_bins)):
        in_bin = [z[np.digitize(s, edges) == k] if edges else z for z, s in units]
        in_bin = [z for z in in_bin if z.size]
        for level in LEVELS:
            factors[level_key(level)].append(crc_factor(in_bin, level))
        one_sigma.append(crc_factor(in_bin, ONE_SIGMA))
    return Calibration(key, edges, factors, one_sigma, len(units), data)


def coverage(mean: np.ndarray, truth: np.ndarray, half_width: np.ndarray) -> tuple[float, float]:
    """(fraction of pixels whose truth lies in mean ± half_width after the affine fit of mean
    to truth, mean interval width in the truth's units)."""
    a, b = rising_fit(mean, truth)
    inside = np.abs(truth - (a * mean + b)) <= a * half_width
    return float(inside.mean()), float(2 * a * half_width.mean())


#: Settings added to the key after calibrations were first stored, with the value that older
#: calibrations (whose keys lack them) were made with.
KEY_DEFAULTS_OF_OLDER_FILES: dict[str, Any] = {"flips": False, "normalise_per": "volume"}


def full_key(key: dict[str, Any]) -> dict[str, Any]:
    """A calibration key with the settings added since older files filled in."""
    return {**KEY_DEFAULTS_OF_OLDER_FILES, **key}


def matching(entries: Sequence[dict[str, Any]], key: dict[str, Any]) -> Calibration | None:
    """The stored calibration made for exactly ``key`` (sampler settings, samples, tile), if any."""
    for entry in entries:
        if full_key(entry.get("key", {})) == full_key(key):
            return Calibration.from_dict(entry)
    return None
