"""Calibration on the analytic Gaussian posterior (bigrestore.diffusion.calibration): an exact
sampler needs no correction, a deliberately narrow one is corrected, and the intervals then
hold their coverage on fresh data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_diffusion import GaussianV, S

from bigrestore.diffusion.calibration import coverage, fit_calibration, matching, rising_fit
from bigrestore.diffusion.noise import TileKey
from bigrestore.diffusion.objectives import V_DIFFUSION
from bigrestore.diffusion.repeated import sample_repeated
from bigrestore.diffusion.samplers import SamplerSettings
from bigrestore.diffusion.schedule import Schedule


def posterior_images(settings: SamplerSettings, n_images: int, seed: int, samples: int = 32):
    """(mean, std, truth) of images whose truth is drawn from the exact posterior N(cond, S²)."""
    generator = torch.Generator().manual_seed(seed)
    cond = (
        1.6 * torch.rand((n_images, 1, 64, 64), generator=generator) - 0.8
    )  # wide: the fit is sharp
    truth = cond + S * torch.randn(cond.shape, generator=generator)
    keys = [TileKey(seed, 0, 0, 0, 64 * i, 0) for i in range(n_images)]
    out = sample_repeated(
        GaussianV(), cond, keys, samples, Schedule(), settings, objective=V_DIFFUSION, max_batch=256
    )
    return [
        (out.mean[i, 0].numpy(), out.std[i, 0].numpy(), truth[i, 0].numpy())
        for i in range(n_images)
    ]


def test_an_exact_sampler_needs_no_correction():
    exact = SamplerSettings(sampler="ancestral", steps=None, clip_x0=False)  # 1.008 of the spread
    images = posterior_images(exact, 4, seed=1)
    calibration = fit_calibration(images, {"case": "exact"}, "gaussian", n_bins=1, region=8)
    # With 32 samples the mean carries 1/32 of the posterior variance and the std (ddof 0)
    # underestimates it by 31/32: an exact sampler's factor is sqrt(33/32 * 32/31) = 1.032,
    # and its 90% interval 1.645 times that (the Gaussian quantile).
    expected = math.sqrt(33 / 31)
    assert calibration.std_factor[0] == pytest.approx(expected, abs=0.06)
    assert calibration.factors["0.9"][0] == pytest.approx(1.645 * expected, abs=0.12)


def test_a_narrow_sampler_is_corrected_and_then_covers():
    narrow = SamplerSettings(steps=6, clip_x0=False)  # about 0.6 of the posterior's spread
    images = posterior_images(narrow, 4, seed=2)
    calibration = fit_calibration(images, {"case": "narrow"}, "gaussian", region=8)
    assert min(calibration.std_factor) > 1.3  # its std is too small: widened
    for mean, std, truth in posterior_images(narrow, 3, seed=3):  # fresh data
        raw, _ = coverage(mean, truth, 1.645 * std)
        covered, _ = coverage(mean, truth, calibration.half_width(std, 0.9))
        assert raw < 0.8  # the uncalibrated "90%" interval covers far less
        assert covered == pytest.approx(0.9, abs=0.02)


def _stored_entry(key: dict) -> dict:
    """A calibration as model.json stores it: one bin, factor 2 at 90 %."""
    return {
        "key": key,
        "edges": [],
        "factors": {"0.9": [2.0]},
        "std_factor": [1.2],
        "regions": 10,
        "data": "x",
    }


def test_a_calibration_applies_only_to_its_own_settings():
    entries = [_stored_entry({"sampler": "ddim", "steps": 8})]
    assert matching(entries, {"sampler": "ddim", "steps": 8}) is not None
    assert matching(entries, {"sampler": "ddim", "steps": 16}) is None
    assert np.allclose(
        matching(entries, {"sampler": "ddim", "steps": 8}).half_width(np.ones(3), 0.9), 2.0
    )


def test_a_calibration_from_before_mirrored_samples_applies_only_without_them():
    """Files written before ``flips`` existed hold keys without it; they were made with every
    sample as the tile lies, so they apply to --no-flips runs and not to flips runs."""
    entry = _stored_entry({"sampler": "ddim", "steps": 8})
    assert matching([entry], {"sampler": "ddim", "steps": 8, "flips": False}) is not None
    assert matching([entry], {"sampler": "ddim", "steps": 8, "flips": True}) is None


def test_a_calibration_from_before_per_plane_levels_applies_only_to_volume_levels():
    """Keys stored before ``normalise_per`` existed were made with one level per volume."""
    entry = _stored_entry({"sampler": "ddim", "steps": 8})
    assert matching([entry], {"sampler": "ddim", "steps": 8, "normalise_per": "volume"})
    assert matching([entry], {"sampler": "ddim", "steps": 8, "normalise_per": "plane"}) is None


def test_rising_fit_keeps_the_level_of_a_flat_mean():
    """A flat restored mean has no least-squares slope; intervals are then judged with the
    identity slope at the truth's level (not offset by the whole mean), and a reversed map
    is never used."""
    truth = np.random.default_rng(0).normal(5.0, 1.0, (32, 32))
    flat = np.full_like(truth, 2.0)
    a, b = rising_fit(flat, truth)
    assert a == 1.0 and a * 2.0 + b == pytest.approx(truth.mean())
    assert coverage(flat, truth, np.full_like(truth, 10.0))[0] == 1.0
    assert rising_fit(-truth, truth)[0] == 1.0
    assert rising_fit(3.0 * truth - 1.0, truth) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
