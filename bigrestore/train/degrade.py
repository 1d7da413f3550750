"""Realistic low-light degradation of clean images: training pairs from clean data alone.

The model of a camera image (in photons, then digital units):

    expected photons  e = P * clean01 + b          clean01: the clean image with its 1st and
                                                   99.8th percentiles mapped to 0 and 1
    detected          n ~ Poisson(blur(e))         (optional Gaussian PSF blur of the signal)
    digital           d = g * n + o + N(0, (g r)^2)  gain g (DU per photon), offset o, read
                                                   noise r (photons)
    stored            uint8 (stretched to 0..255 per image, as the W2S release) or uint16
                      (12-bit or 16-bit range), rounded and clipped

P (photons between the clean image's 1st and 99.8th percentile) is drawn log-uniformly in
[3, 100] by default: the W2S low-SNR frames measure 2.6-60 photons (median 14) by the same
estimator (benchmarks/make_training_set.py prints both), so the range covers W2S and somewhat
brighter microscopes. Much brighter data is not restored well by a model trained on this range
(docs/benchmarks.md section 25: from about 100 photons the bundled model loses to a Gaussian
filter, from 300 to the raw input), and 2,000 CPU steps on [3, 1000] did not change that. The
range is a parameter (``photons_range``, make_training_set.py ``--photons``) for longer
trainings that include bright data. The target of a pair is the clean image itself (same
optics: no deconvolution is asked for). Pure numpy; every draw comes from the caller's
generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from bigrestore.intensity import fit_line

PHOTONS = (3.0, 100.0)
BACKGROUND = (0.0, 4.0)  # photons per pixel
READ_NOISE = (0.0, 2.0)  # photons (rms)
BLUR = (0.0, 1.0)  # PSF sigma in pixels, applied with probability BLUR_P
BLUR_P = 0.3


@dataclass(frozen=True)
class Degradation:
    """Parameters of one degraded image (units in the module docstring)."""

    photons: float
    background: float
    read_noise: float
    blur: float
    gain: float
    offset: float
    dtype: str

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def clean01(clean: np.ndarray) -> np.ndarray:
    """The clean image with its 1st / 99.8th percentiles at 0 / 1 (float64, negatives to 0)."""
    low, high = np.percentile(clean, [1.0, 99.8])
    return np.clip((clean.astype(np.float64) - low) / max(high - low, 1e-12), 0.0, None)


def random_degradation(
    rng: np.random.Generator, dtype: str, photons_range: tuple[float, float] = PHOTONS
) -> Degradation:
    """One draw of the documented parameter ranges for an image stored as ``dtype`` (photons
    log-uniform in ``photons_range``)."""
    low, high = photons_range
    photons = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    blur = float(rng.uniform(*BLUR)) if rng.random() < BLUR_P else 0.0
    gain, offset = (
        (1.0, 0.0)
        if dtype == "uint8"
        else (float(rng.uniform(1.0, 8.0)), float(rng.uniform(0.0, 200.0)))
    )
    return Degradation(
        photons,
        float(rng.uniform(*BACKGROUND)),
        float(rng.uniform(*READ_NOISE)),
        blur,
        gain,
        offset,
        dtype,
    )


def degrade(clean: np.ndarray, params: Degradation, rng: np.random.Generator) -> np.ndarray:
    """A low-light image of ``clean`` (any 2D float/int array) under ``params``."""
    expected = params.photons * clean01(clean) + params.background
    if params.blur > 0:
        expected = gaussian_filter(expected, params.blur)
    counts = rng.poisson(expected).astype(np.float64)
    digital = (
        params.gain * counts
        + params.offset
        + rng.normal(0.0, params.gain * params.read_noise, counts.shape)
    )
    if params.dtype == "uint8":
        low, high = digital.min(), digital.max()
        return np.round((digital - low) / max(high - low, 1e-12) * 255.0).astype(np.uint8)
    return np.clip(np.round(digital), 0, 65535).astype(np.uint16)


def poisson_gaussian_fit(
    low: np.ndarray, high: np.ndarray, bins: int = 12
) -> tuple[float, float, float]:
    """Estimate (gain, read variance, photons between the 1st and 99.8th percentile) of a low
    image from its clean partner: fit low ≈ a·high + b, then the residual variance against
    the fitted level, var = gain · level + read variance, in bins of the level."""
    lo, hi = low.astype(np.float64).ravel(), high.astype(np.float64).ravel()
    a, b = fit_line(hi, lo)
    level = a * hi + b
    residual = lo - level
    edges = np.quantile(level, np.linspace(0.02, 0.98, bins))
    which = np.digitize(level, edges)
    means, variances = [], []
    for k in range(1, len(edges)):
        chosen = which == k
        if chosen.sum() > 200:
            means.append(level[chosen].mean())
            variances.append(residual[chosen].var())
    gain, read = np.polyfit(means, variances, 1)
    p1, p998 = np.percentile(level, [1.0, 99.8])
    return float(gain), float(read), float((p998 - p1) / gain) if gain > 0 else float("nan")
