"""Training augmentations of the paper (Osuna-Vargas et al., WACV 2025): flips, rotations and a
Gaussian filter of the condition image only.

Pure numpy on one (y, x) float32 pair in model space; all randomness comes from the caller's
``numpy.random.Generator`` (keyed by training step, so a resumed run draws the same values).
Flips and 90° rotations are applied identically to condition and target so they stay
registered; the blur degrades the condition only, so the model learns to restore detail the
condition lacks (the authors used a radius-3 PIL Gaussian blur with probability 0.5).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from bigrestore.train.config import AugmentSettings


def augment_pair(
    cond: np.ndarray, target: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly flipped / rotated copies of a (y, x) pair; the condition possibly blurred.

    Draws a fixed number of values from ``rng`` whatever the settings (4 uniforms and one
    integer), so switching one augmentation off does not change the others' draws.
    """
    flip_y, flip_x, blur_u, sigma_u = rng.random(4)
    k = int(rng.integers(0, 4))
    if settings.flip:
        if flip_y < 0.5:
            cond, target = cond[::-1, :], target[::-1, :]
        if flip_x < 0.5:
            cond, target = cond[:, ::-1], target[:, ::-1]
    if settings.rot90 and k:
        cond, target = np.rot90(cond, k), np.rot90(target, k)
    cond = np.ascontiguousarray(cond, dtype=np.float32)
    target = np.ascontiguousarray(target, dtype=np.float32)
    if blur_u < settings.blur_p:
        low, high = settings.blur_sigma
        sigma = low + (high - low) * sigma_u
        cond = gaussian_filter(cond, sigma=sigma, mode="reflect").astype(np.float32)
    return cond, target
