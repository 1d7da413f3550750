"""The Gaussian-filter baselines of ``bigrestore evaluate``: the filter and its sigma.

Tuned: the sigma maximises the mean PSNR on data that is not scored: a separate validation
pair (``--tune-on RAW_VAL GT_VAL``) or, without it, the first planes of the evaluation set,
which are then held out from scoring for every method.

Best per image (:func:`best_gaussian_per_image`): for each scored plane the sigma chosen with
that plane's ground truth, scored on the same intensity scale as every method (with
``linear-fit``, a least-squares intensity fit to the ground truth). It uses the answer, so it
is an upper bound of what a Gaussian filter can do (the strongest classic baseline), reported
as such, and it needs no held-out planes: it also runs on a single image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from bigrestore.evaluate.metrics import psnr
from bigrestore.evaluate.pairing import (
    PlaneStack,
    check_match,
    load_stack,
    normalize_gt,
    normalize_pred,
)

log = logging.getLogger(__name__)

SIGMA_GRID = (
    *(float(s) for s in np.arange(0.5, 4.01, 0.25)),
    *(float(s) for s in np.arange(4.5, 8.01, 0.5)),
    10.0,
    12.0,
    16.0,
)
"""Gaussian sigmas (pixels) searched for the filter baseline: fine steps where most images'
optimum lies, then wider ones, because the best sigma of a very noisy, smooth crop (a dim
widefield field of view, say) can lie well beyond 4 px, and a grid that stops short would
understate the baseline (one W2S validation crop gains 1.5 dB from 4 px to 8 px)."""
MAX_TUNE_PLANES = 8
MAX_HELD_OUT = 5


def gaussian_denoise(raw: np.ndarray, sigma: float) -> np.ndarray:
    """The Gaussian-filter baseline: raw plane blurred with ``sigma`` pixels (reflect borders)."""
    return ndimage.gaussian_filter(np.asarray(raw, dtype=np.float64), sigma, mode="reflect")


def spread(indices: Sequence[int], count: int) -> list[int]:
    """Up to ``count`` of ``indices``, evenly spaced, first and last included."""
    if not indices:
        return []
    picks = np.linspace(0, len(indices) - 1, min(count, len(indices))).round().astype(int)
    return [indices[i] for i in sorted(set(picks.tolist()))]


def tune_sigma(
    raw: PlaneStack, gt: PlaneStack, planes: Sequence[int], mode: str, data_range: float
) -> tuple[float, dict[float, float]]:
    """Grid search of the Gaussian sigma maximising mean PSNR over ``planes`` of (raw, gt)."""
    scores: dict[float, list[float]] = {s: [] for s in SIGMA_GRID}
    for i in planes:
        r, g = raw.plane(i), normalize_gt(gt.plane(i), mode)
        for s in SIGMA_GRID:
            scores[s].append(psnr(normalize_pred(gaussian_denoise(r, s), g, mode), g, data_range))
    mean = {s: float(np.mean(v)) for s, v in scores.items()}
    return max(mean, key=lambda s: mean[s]), mean


def tune_gaussian(
    raw: PlaneStack,
    gt: PlaneStack,
    selected: list[int],
    mode: str,
    data_range: float,
    val_for_sigma: tuple[str | Path, str | Path] | None,
    channel: int | str | None,
) -> tuple[dict[str, Any] | None, list[int]]:
    """Tune the Gaussian sigma; return its settings (None: one plane, no --tune-on) and the
    planes left to score."""
    if val_for_sigma is not None:
        raw_val, gt_val = (load_stack(p, channel) for p in val_for_sigma)
        check_match(gt_val, raw_val)
        tune_planes, scored = spread(list(range(gt_val.n)), MAX_TUNE_PLANES), selected
        source = f"{len(tune_planes)} planes of {raw_val.path} vs {gt_val.path} (not scored)"
    elif len(selected) >= 2:
        k = min(MAX_HELD_OUT, max(1, len(selected) // 5))
        raw_val, gt_val, tune_planes, scored = raw, gt, selected[:k], selected[k:]
        source = f"planes {tune_planes} of the evaluation input, held out from scoring"
    else:
        return None, selected
    sigma, scores = tune_sigma(raw_val, gt_val, tune_planes, mode, data_range)
    log.info("Gaussian baseline: sigma %.2f px, tuned on %s", sigma, source)
    return {"sigma": sigma, "tuned_on": source, "criterion": "mean PSNR", "grid": scores}, scored


ORACLE_CRITERION = (
    "per image, the sigma maximising PSNR against that image's ground truth, after the same "
    "intensity mapping as every method (the least-squares fit in linear-fit mode); it uses the "
    "ground truth: an upper bound for a Gaussian filter, not a method"
)


def best_gaussian_per_image(
    raw: np.ndarray, gt_compared: np.ndarray, mode: str, data_range: float
) -> tuple[np.ndarray, float]:
    """The strongest classic baseline of one plane: the raw plane blurred with the sigma of
    :data:`SIGMA_GRID` that scores the best PSNR against the ground truth (already in the
    compared scale) once put on that scale like every method (``normalize_pred``: percentile,
    a least-squares fit a·blur + b for ``linear-fit``, or none). Returns that plane in the
    compared scale and its sigma."""
    best: tuple[float, np.ndarray, float] | None = None
    for sigma in SIGMA_GRID:
        compared = normalize_pred(gaussian_denoise(raw, sigma), gt_compared, mode)
        score = psnr(compared, gt_compared, data_range)
        if best is None or score > best[0]:
            best = (score, compared, sigma)
    assert best is not None
    return best[1], best[2]
