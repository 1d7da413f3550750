"""Image resolution by decorrelation analysis (Descloux, Grussmayer & Radenovic, Nat. Methods 2019).

The paper's idea: normalise the Fourier transform of an image to unit modulus (keep only
the phase), In = I/|I|, and correlate it with the image itself inside a disc of
normalised radius r (1 = Nyquist),

    d(r) = sum Re(I . conj(In) . M(r)) / sqrt(sum |I|^2 . sum |In . M(r)|^2)      (paper, Eq. 1)

d(r) rises while the disc gathers frequencies that carry signal and falls once it adds
frequencies that carry only noise, so its local maximum (position r_0, amplitude A_0)
marks the highest frequency with signal. The same curve is computed for Gaussian
high-pass filtered copies of I (which weight high frequencies more); the cut-off k_c is
the highest peak position over all curves whose amplitude is at least 0.05, and the
resolution is 2 . pixel_size / k_c.

Written from the paper's equations and its method section; the sampling choices that the
paper leaves to its reference code (range of high-pass sigmas, one refinement pass of the
radius sampling around the best peak, the 0.05 amplitude floor and the 1e-3 significance
of a peak) follow that code's documented behaviour.

No peak. When no curve has a significant local maximum (amplitude >= 0.05), every d(r)
keeps rising up to r = 1: nothing in the spectrum marks where signal ends and noise
begins, as for white noise, whose content extends to the sampling limit. The result is
then the Nyquist limit, k_c = 1 and resolution = 2 . pixel_size, with
``peak_found=False`` so that callers can tell a sampling-limited value from a measured
one. An image that is almost pure noise also lands here; its small ``a_0`` shows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bigrestore.errors import BadInputError, describe

logger = logging.getLogger(__name__)

MIN_AMPLITUDE = 0.05
"""Peaks of d(r) lower than this are treated as unphysical and ignored."""
PEAK_DROP = 1e-3
"""A sample is a peak only if d(r) later falls below it by more than this."""
SIGMA_MIN = 0.15
"""Smallest high-pass Gaussian sigma (pixels): the strongest filter of the series."""
REFINE_SPAN = 0.3
"""The refinement pass samples radii from k_c - one coarse step to k_c + this."""


@dataclass(frozen=True, eq=False)
class DecorrResult:
    """Outcome of a decorrelation analysis.

    resolution: 2 . pixel_size / k_c, in the unit of ``pixel_size``.
    k_c: cut-off frequency, normalised so that 1 = Nyquist (0.5 cycles/pixel).
    a_0: amplitude of the peak of the unfiltered curve d_0 (0 if it has none), even
        below the 0.05 floor; the paper's SNR indicator.
    r_0: position of that peak (normalised frequency; NaN if none).
    peak_found: False when no curve had a significant peak and k_c was set to 1
        (Nyquist-limited, see the module docstring).
    pixel_size: the pixel size the resolution was computed with.
    radii: float64 (n_r,), the coarse radii r in [0, 1].
    d_0: float64 (n_r,), the unfiltered decorrelation curve d(r) at ``radii``.
    """

    resolution: float
    k_c: float
    a_0: float
    r_0: float
    peak_found: bool
    pixel_size: float
    radii: np.ndarray
    d_0: np.ndarray


def apodize(img: np.ndarray, edge: int = 20) -> np.ndarray:
    """Blend the image borders to its mean with a cosine (Tukey) taper of ``edge`` pixels.

    Removes the cross-shaped spectral leakage of the image's sharp borders, which
    would otherwise read as high-frequency content. float64 (y, x) in, same shape out.
    """
    image = np.asarray(img, dtype=np.float64)
    mean = image.mean()
    window = np.ones(1)
    for axis, n in enumerate(image.shape):
        w = min(int(edge), n // 4)
        taper = np.ones(n)
        if w > 0:
            ramp = 0.5 * (1.0 - np.cos(np.pi * (np.arange(w) + 0.5) / w))
            taper[:w] = ramp
            taper[n - w :] = ramp[::-1]
        window = window[..., None] * taper if axis else taper
    return (image - mean) * window + mean


def _spectrum(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius and |I| of the Fourier samples inside the unit disc, sorted by radius.

    The zero frequency is left out (In is set to 0 there, as the image mean carries no
    resolution). Radius is normalised per axis so that 1 = Nyquist on both axes.
    """
    ny, nx = image.shape
    spectrum = np.fft.fft2(image - image.mean())
    fy = np.fft.fftfreq(ny)[:, None] / 0.5
    fx = np.fft.fftfreq(nx)[None, :] / 0.5
    rho = np.hypot(fy, fx)
    inside = (rho < 1.0) & (rho > 0.0)
    rho_in = rho[inside]
    order = np.argsort(rho_in, kind="stable")
    return rho_in[order], np.abs(spectrum[inside])[order]


def _curve(rho: np.ndarray, mag: np.ndarray, sigma: float | None, radii: np.ndarray) -> np.ndarray:
    """d(r) (Eq. 1) for the image high-pass filtered with a Gaussian of ``sigma`` pixels.

    With In = I/|I| and a real, non-negative filter H: Re(H.I . conj(In)) = H.|I| and
    |In|^2 = 1 where I != 0, so the sums over a disc are prefix sums over the samples
    sorted by radius. H = 1 - exp(-2 pi^2 sigma^2 f^2) with f = rho/2 cycles/pixel
    (the image minus its Gaussian blur); sigma None means no filtering.
    """
    if sigma is None:
        weighted = mag
    else:
        weighted = mag * -np.expm1(-0.5 * (np.pi * sigma * rho) ** 2)
    numerator = np.concatenate(([0.0], np.cumsum(weighted)))
    count = np.concatenate(([0], np.cumsum(mag > 0)))
    energy = np.sqrt(np.sum(weighted**2))
    k = np.searchsorted(rho, radii, side="left")  # samples with rho < r
    denominator = energy * np.sqrt(count[k])
    d = np.zeros(len(radii))
    ok = denominator > 0
    d[ok] = numerator[k][ok] / denominator[ok]
    return d


def _peak(d: np.ndarray) -> tuple[int | None, float]:
    """Index and height of the highest sample of d that d later drops below by > PEAK_DROP.

    A curve that rises to its last sample has no peak (None, 0.0).
    """
    later_min = np.append(np.minimum.accumulate(d[::-1])[::-1][1:], np.inf)
    significant = d - later_min > PEAK_DROP
    if not significant.any():
        return None, 0.0
    candidates = np.flatnonzero(significant)
    i = int(candidates[np.argmax(d[candidates])])
    return i, float(d[i])


def _best_peak(
    rho: np.ndarray, mag: np.ndarray, sigmas: list[float | None], radii: np.ndarray, start: int
) -> tuple[float | None, int | None]:
    """Highest valid peak position over the curves of ``sigmas`` (and which sigma gave it).

    Valid: amplitude >= MIN_AMPLITUDE and index >= ``start`` (a peak on the first sample
    of a refined range is where that range was cut, not a maximum).
    """
    best: float | None = None
    best_j: int | None = None
    for j, sigma in enumerate(sigmas):
        i, amplitude = _peak(_curve(rho, mag, sigma, radii))
        if i is None or i < start or amplitude < MIN_AMPLITUDE:
            continue
        if best is None or radii[i] > best:
            best, best_j = float(radii[i]), j
    return best, best_j


def _check(img: np.ndarray, pixel_size: float, n_r: int, n_g: int) -> np.ndarray:
    image = np.asarray(img)
    where = "decorrelation_resolution"
    if image.ndim != 2 or min(image.shape) < 16:
        raise BadInputError(describe(where, "image shape", "(y, x), both >= 16", image.shape))
    image = image.astype(np.float64, copy=False)
    if not np.all(np.isfinite(image)):
        raise BadInputError(describe(where, "image values", "finite", "NaN or inf"))
    if np.ptp(image) == 0:
        raise BadInputError(describe(where, "image values", "not constant", "constant image"))
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise BadInputError(describe(where, "pixel_size", "> 0", pixel_size))
    if n_r < 10:
        raise BadInputError(describe(where, "n_r", ">= 10", n_r))
    if n_g < 1:
        raise BadInputError(describe(where, "n_g", ">= 1", n_g))
    return image


def decorrelation_resolution(
    img: np.ndarray, pixel_size: float = 1.0, n_r: int = 50, n_g: int = 10, *, edge: int = 20
) -> DecorrResult:
    """Estimate the resolution of one 2D image by decorrelation analysis.

    img: real array (y, x), any intensity scale (the analysis is scale-free), at least
    16 px per axis. pixel_size: physical size of one pixel; the resolution comes back in
    the same unit. n_r: radii sampled in [0, 1]; n_g: high-pass filters, Gaussian sigmas
    spaced geometrically from 2/r_0 pixels (r_0: peak of the unfiltered curve) down to
    SIGMA_MIN. edge: width in pixels of the cosine border taper. A second pass samples
    n_r radii between k_c - 1/(n_r - 1) and k_c + REFINE_SPAN (with n_g extra sigmas
    between the neighbours of the filter that gave k_c) and k_c is taken from it.
    Raises BadInputError for a non-2D, too small, non-finite or constant image.
    """
    image = _check(img, pixel_size, n_r, n_g)
    rho, mag = _spectrum(apodize(image, edge))
    radii = np.linspace(0.0, 1.0, n_r)
    d_0 = _curve(rho, mag, None, radii)
    i_0, a_0 = _peak(d_0)
    r_0 = float(radii[i_0]) if i_0 is not None else float("nan")
    sigma_max = 2.0 / r_0 if i_0 is not None and r_0 > 0 else max(image.shape) / 2.0
    sigmas = np.geomspace(sigma_max, SIGMA_MIN, n_g)
    curves: list[float | None] = [None, *sigmas.tolist()]  # None: the unfiltered d_0
    k_c, j = _best_peak(rho, mag, curves, radii, start=0)
    peak_found = k_c is not None
    if k_c is None:
        logger.debug("decorrelation: no significant peak; reporting the Nyquist limit")
        k_c = 1.0
    else:
        # Refinement: finer radii around k_c; if a filtered curve gave k_c, more sigmas
        # between that filter's two neighbours in the series.
        step = radii[1] - radii[0]
        fine_radii = np.linspace(max(k_c - step, 0.0), min(k_c + REFINE_SPAN, 1.0), n_r)
        if j:
            q = j - 1
            extra = np.geomspace(sigmas[max(q - 1, 0)], sigmas[min(q + 1, n_g - 1)], n_g)
            curves += extra.tolist()
        start = 1 if fine_radii[0] > 0 else 0
        k_fine, _ = _best_peak(rho, mag, curves, fine_radii, start=start)
        k_c = k_fine if k_fine is not None else k_c
    return DecorrResult(
        resolution=2.0 * pixel_size / k_c,
        k_c=k_c,
        a_0=a_0,
        r_0=r_0,
        peak_found=peak_found,
        pixel_size=float(pixel_size),
        radii=radii,
        d_0=d_0,
    )
