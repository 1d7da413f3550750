"""Image-quality metrics of the paper (Osuna-Vargas et al., WACV 2025, Sec. 4) in numpy/scipy.

All metrics take two real arrays (y, x) of the same shape: ``pred`` (the restoration)
and ``gt`` (the reference), in one intensity scale; they are computed in float64 and
return a Python float. The W2S 8-bit release was contrast-stretched per image, so
images must first be put on one scale: ``normalize_percentile`` each image (CARE) or
``fit_linear`` the prediction to the reference.

Patch-wise evaluation (the paper reports medians over 256^2 test patches):
``evaluate_pair`` gives one row per patch, ``summarize`` the median and mean per metric.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import DTypeLike
from scipy import ndimage

from bigrestore.errors import BadInputError, describe
from bigrestore.evaluate.decorrelation import decorrelation_resolution
from bigrestore.intensity import fit_line

logger = logging.getLogger(__name__)

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # Gaussian window radius int(3.5 * 1.5 + 0.5) = 5, i.e. 11 x 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, Sec. 3.2
_SSIM_PAD = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
_MIN_SIDE = 2 * _SSIM_PAD + 1
_COORDS = ("y", "x", "height", "width")


def _pair(pred: np.ndarray, gt: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (y, x) of one shape, or BadInputError."""
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.ndim != 2 or p.shape != g.shape:
        raise BadInputError(
            describe(where, "shape", "pred and gt both (y, x), equal", (p.shape, g.shape))
        )
    return p.astype(np.float64, copy=False), g.astype(np.float64, copy=False)


def _check_range(data_range: float, where: str) -> float:
    if not (np.isfinite(data_range) and data_range > 0):
        raise BadInputError(describe(where, "data_range", "> 0", data_range))
    return float(data_range)


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error, in the images' intensity unit."""
    p, g = _pair(pred, gt, "mae")
    return float(np.mean(np.abs(p - g)))


def psnr(pred: np.ndarray, gt: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio 10 log10(L^2 / MSE) in dB; L = data_range (255 in the paper).

    inf when the images are equal.
    """
    p, g = _pair(pred, gt, "psnr")
    rng = _check_range(data_range, "psnr")
    mse = float(np.mean((p - g) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(rng * rng / mse)


def nrmse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Root-mean-square error divided by the mean of ``gt``, as in the paper.

    NaN when mean(gt) <= 0 (e.g. an empty background patch), where the ratio means nothing.
    """
    p, g = _pair(pred, gt, "nrmse")
    mean = float(np.mean(g))
    if mean <= 0:
        logger.debug("nrmse: mean(gt) = %g <= 0, returning NaN", mean)
        return math.nan
    return float(np.sqrt(np.mean((p - g) ** 2))) / mean


def pearson(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation coefficient of the pixel values; NaN if either image is constant."""
    p, g = _pair(pred, gt, "pearson")
    dp = p - p.mean()
    dg = g - g.mean()
    denominator = math.sqrt(float(np.sum(dp * dp)) * float(np.sum(dg * dg)))
    return math.nan if denominator == 0 else float(np.sum(dp * dg)) / denominator


def _ssim_maps(p: np.ndarray, g: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Full-size SSIM and contrast-structure maps (Wang et al. 2004, Eqs. 13 and 9 x 10).

    Local statistics use an 11 x 11 Gaussian window (sigma 1.5), population
    (co)variances, and mirror borders; only the border ``_SSIM_PAD`` pixels depend on
    the border rule. Variances are clamped at 0 against rounding.
    """

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, SSIM_SIGMA, mode="mirror", truncate=SSIM_TRUNCATE)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_p = blur(p)
    mu_g = blur(g)
    var_p = np.maximum(blur(p * p) - mu_p * mu_p, 0.0)
    var_g = np.maximum(blur(g * g) - mu_g * mu_g, 0.0)
    cov = blur(p * g) - mu_p * mu_g
    cs = (2.0 * cov + c2) / (var_p + var_g + c2)
    luminance = (2.0 * mu_p * mu_g + c1) / (mu_p * mu_p + mu_g * mu_g + c1)
    return luminance * cs, cs


def _interior(a: np.ndarray) -> np.ndarray:
    return a[_SSIM_PAD:-_SSIM_PAD, _SSIM_PAD:-_SSIM_PAD]


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float) -> float:
    """Structural similarity (Wang et al. 2004), mean over the map's valid interior.

    Gaussian window sigma 1.5 (11 x 11), K1 = 0.01, K2 = 0.03, population covariance:
    the settings of skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False). Images need >= 11 px per axis.
    """
    p, g = _pair(pred, gt, "ssim")
    rng = _check_range(data_range, "ssim")
    if min(p.shape) < _MIN_SIDE:
        raise BadInputError(describe("ssim", "shape", f"both axes >= {_MIN_SIDE}", p.shape))
    ssim_map, _ = _ssim_maps(p, g, rng)
    return float(_interior(ssim_map).mean())


def _halve(a: np.ndarray) -> np.ndarray:
    """2 x 2 average pooling, dropping a trailing odd row/column."""
    ny, nx = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    b = a[:ny, :nx]
    return 0.25 * (b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2])


def ms_ssim_scales(shape: tuple[int, ...]) -> int:
    """Number of MS-SSIM scales an image of ``shape`` holds: up to 5, the coarsest >= 11 px."""
    n = 0
    side = min(shape)
    while n < len(MS_SSIM_WEIGHTS) and side >= _MIN_SIDE:
        n += 1
        side //= 2
    return n


def ms_ssim(pred: np.ndarray, gt: np.ndarray, data_range: float) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003, Eq. 7).

    prod_j cs_j^w_j over scales j = 1..M, times SSIM_M^w_M at the coarsest (in place of
    cs_M), each image 2 x 2 average-pooled between scales; weights w = MS_SSIM_WEIGHTS.
    Matches torchmetrics' multiscale_structural_similarity_index_measure defaults
    (11 x 11 Gaussian, sigma 1.5, K1 0.01, K2 0.03, negative terms clipped to 0): cs_j is
    averaged over the valid interior, the coarsest SSIM over the whole map with mirror
    borders. Images with fewer than 176 px on a side hold fewer than 5 scales (the
    coarsest must keep 11 px): then the first M weights are used, rescaled to sum to 1.
    Images need >= 11 px per axis.
    """
    p, g = _pair(pred, gt, "ms_ssim")
    rng = _check_range(data_range, "ms_ssim")
    n = ms_ssim_scales(p.shape)
    if n == 0:
        raise BadInputError(describe("ms_ssim", "shape", f"both axes >= {_MIN_SIDE}", p.shape))
    weights = np.asarray(MS_SSIM_WEIGHTS[:n])
    if n < len(MS_SSIM_WEIGHTS):
        logger.debug("ms_ssim: image %s holds %d scales; weights renormalised", p.shape, n)
        weights = weights / weights.sum()
    terms = []
    for j in range(n):
        ssim_map, cs_map = _ssim_maps(p, g, rng)
        if j < n - 1:
            terms.append(_interior(cs_map).mean())
            p, g = _halve(p), _halve(g)
        else:
            terms.append(ssim_map.mean())
    values = np.maximum(np.asarray(terms), 0.0)
    return float(np.prod(values**weights))


def normalize_percentile(
    img: np.ndarray, p_low: float = 0.1, p_high: float = 99.9, dtype: DTypeLike = np.float32
) -> np.ndarray:
    """Map the p_low and p_high percentiles of ``img`` to 0 and 1 (CARE / CSBDeep style).

    Values outside are not clipped. For a constant image the result is all zeros.
    Returns an array of ``dtype`` with the input's shape.
    """
    x = np.asarray(img, dtype=np.float64)
    if not 0 <= p_low < p_high <= 100:
        raise BadInputError(
            describe(
                "normalize_percentile", "percentiles", "0 <= p_low < p_high <= 100", (p_low, p_high)
            )
        )
    lo, hi = np.percentile(x, [p_low, p_high])
    return ((x - lo) / (hi - lo + 1e-20)).astype(dtype)


def fit_linear(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Least-squares (a, b) minimising sum (a . pred + b - gt)^2; apply as a * pred + b.

    For a constant ``pred``, a = 0 and b = mean(gt).
    """
    return fit_line(*_pair(pred, gt, "fit_linear"))


def _patches(shape: tuple[int, int], patch: int | None) -> list[tuple[int, int, int, int]]:
    """(y, x, height, width) of the non-overlapping full patches, row-major from the origin."""
    ny, nx = shape
    if patch is None:
        return [(0, 0, ny, nx)]
    return [
        (y, x, patch, patch)
        for y in range(0, ny - patch + 1, patch)
        for x in range(0, nx - patch + 1, patch)
    ]


def evaluate_pair(
    pred: np.ndarray,
    gt: np.ndarray,
    data_range: float,
    pixel_size: float | None,
    patch: int | None = 256,
    unit: str = "µm",
) -> list[dict]:
    """Score ``pred`` against ``gt`` patch by patch; one row (dict) per patch.

    pred, gt: real (y, x), one intensity scale (normalise first, see module docstring).
    patch: side of the non-overlapping square patches, tiled from the origin; a
    remainder strip narrower than ``patch`` is not scored. None scores the whole image.
    Rows hold y, x, height, width (pixels) and mae, psnr (dB, L = data_range), nrmse,
    pearson, ssim, ms_ssim. With a ``pixel_size`` (in ``unit``) they also hold the
    decorrelation resolution of each image (resolution_pred, resolution_gt, in
    ``unit``), resolution_ratio = resolution_pred / resolution_gt (below 1: finer
    detail than the reference), peak_found_pred / peak_found_gt (False: Nyquist-limited
    fallback, see bigrestore.evaluate.decorrelation) and unit.
    """
    p, g = _pair(pred, gt, "evaluate_pair")
    rng = _check_range(data_range, "evaluate_pair")
    if patch is not None and not (_MIN_SIDE <= patch <= min(p.shape)):
        raise BadInputError(
            describe("evaluate_pair", "patch", f"{_MIN_SIDE} <= patch <= {min(p.shape)}", patch)
        )
    if pixel_size is not None and not (np.isfinite(pixel_size) and pixel_size > 0):
        raise BadInputError(describe("evaluate_pair", "pixel_size", "> 0 or None", pixel_size))
    rows = []
    for y, x, h, w in _patches(p.shape, patch):
        pp, gg = p[y : y + h, x : x + w], g[y : y + h, x : x + w]
        row: dict = {
            "y": y,
            "x": x,
            "height": h,
            "width": w,
            "mae": mae(pp, gg),
            "psnr": psnr(pp, gg, rng),
            "nrmse": nrmse(pp, gg),
            "pearson": pearson(pp, gg),
            "ssim": ssim(pp, gg, rng),
            "ms_ssim": ms_ssim(pp, gg, rng),
        }
        if pixel_size is not None:
            rp = decorrelation_resolution(pp, pixel_size)
            rg = decorrelation_resolution(gg, pixel_size)
            row.update(
                resolution_pred=rp.resolution,
                resolution_gt=rg.resolution,
                resolution_ratio=rp.resolution / rg.resolution,
                peak_found_pred=rp.peak_found,
                peak_found_gt=rg.peak_found,
                unit=unit,
            )
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Median and mean of each numeric metric over the rows of ``evaluate_pair``.

    Returns {metric: {"median", "mean", "n"}}; NaN values (e.g. nrmse of a patch with
    mean 0) are left out and ``n`` counts the values used. Patch coordinates, flags and
    strings are not metrics.
    """
    names: list[str] = []
    for row in rows:
        for key, value in row.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric and key not in _COORDS and key not in names:
                names.append(key)
    summary = {}
    for name in names:
        values = np.array([float(row[name]) for row in rows if name in row], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary[name] = {
            "median": float(np.median(values)) if values.size else math.nan,
            "mean": float(np.mean(values)) if values.size else math.nan,
            "n": int(values.size),
        }
    return summary
