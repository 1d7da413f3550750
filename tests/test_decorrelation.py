"""Decorrelation resolution on synthetic ground truths and real W2S images.

Expected values:
- white noise has content up to the sampling limit: resolution = 2 * pixel_size (10 %);
- noise band-limited to a disc of normalised radius k (1 = Nyquist), plus weaker white
  noise: k_c = k within 5 % (the curve's peak sits where the signal band ends);
- a real high-SNR image blurred by a Gaussian PSF of sigma s pixels, plus a fixed noise
  floor n: the blur's transfer exp(-2 pi^2 s^2 f^2) meets the floor at
  f_c = sqrt(ln(1/n) / 2) / (pi s), i.e. resolution 1 / f_c = pi s sqrt(2 / ln(1/n)),
  about 1.7 s to 2.9 s for n = 1e-3 to 0.1, added (roughly in quadrature) to the
  unblurred image's own resolution. So the resolution rises strictly with s, and a
  straight line through s = 1..4 fits with R^2 >= 0.9 and a slope of 1.5 to 4 px per px.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import data_path
from scipy import ndimage

from bigrestore.errors import BadInputError
from bigrestore.evaluate.decorrelation import apodize, decorrelation_resolution

CROP = np.s_[128:384, 128:384]  # 256^2 centre crops keep the tests fast


def _normalise(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [0.1, 99.9])
    return (img.astype(np.float64) - lo) / (hi - lo)


@pytest.fixture(scope="module")
def stacks() -> tuple[np.ndarray, np.ndarray]:
    return tifffile.imread(data_path("w2s/val_low.tif")), tifffile.imread(
        data_path("w2s/val_high.tif")
    )


@pytest.mark.parametrize("shape", [(256, 256), (200, 300), (64, 64)])
def test_white_noise_is_nyquist_limited(shape):
    for seed in range(3):
        noise = np.random.default_rng(seed).normal(size=shape)
        result = decorrelation_resolution(noise, pixel_size=0.65)
        assert result.resolution == pytest.approx(2 * 0.65, rel=0.1)
        assert result.k_c == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("cutoff", [0.25, 0.5, 0.75])
def test_band_limited_noise_gives_its_cutoff(cutoff):
    rng = np.random.default_rng(7)
    n = 256
    rho = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]) / 0.5
    signal = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * (rho < cutoff)))
    img = signal / signal.std() + 0.1 * rng.normal(size=(n, n))
    result = decorrelation_resolution(img)
    assert result.peak_found
    assert result.k_c == pytest.approx(cutoff, rel=0.05)
    assert result.resolution == pytest.approx(2 / cutoff, rel=0.05)
    assert 0.5 < result.a_0 <= 1.0


@pytest.mark.parametrize("field, channel", [(0, 0), (5, 1), (10, 2), (15, 0)])
def test_resolution_grows_with_gaussian_blur(stacks, field, channel):
    img = _normalise(stacks[1][field, channel][CROP])
    rng = np.random.default_rng(field)
    sigmas = np.array([1.0, 2.0, 3.0, 4.0])
    res = np.array(
        [
            decorrelation_resolution(
                ndimage.gaussian_filter(img, s) + rng.normal(scale=0.01, size=img.shape)
            ).resolution
            for s in sigmas
        ]
    )
    assert np.all(np.diff(res) > 0), res
    slope, intercept = np.polyfit(sigmas, res, 1)
    r2 = 1 - np.sum((res - (slope * sigmas + intercept)) ** 2) / np.sum((res - res.mean()) ** 2)
    assert 1.5 <= slope <= 4.0, res
    assert r2 >= 0.9, res


def test_noisy_frame_resolves_less_than_average(stacks):
    low, high = stacks
    for field, channel in [(0, 0), (3, 1), (7, 2), (12, 0), (16, 1)]:
        r_low = decorrelation_resolution(low[field, channel][CROP], pixel_size=1.0)
        r_high = decorrelation_resolution(high[field, channel][CROP], pixel_size=1.0)
        assert r_high.peak_found and r_low.peak_found
        assert r_low.resolution > r_high.resolution
        assert r_high.a_0 > r_low.a_0  # A_0 tracks the SNR


def test_pixel_size_scales_linearly_and_intensity_does_not_matter(stacks):
    img = stacks[1][4, 1][CROP].astype(np.float64)
    base = decorrelation_resolution(img, pixel_size=1.0)
    for px in (0.1, 0.65, 3.0):
        scaled = decorrelation_resolution(img, pixel_size=px)
        assert scaled.resolution == pytest.approx(px * base.resolution, rel=1e-12)
        assert scaled.k_c == base.k_c
    stretched = decorrelation_resolution(5.0 * img + 40.0)
    assert stretched.k_c == pytest.approx(base.k_c, rel=1e-9)
    assert stretched.a_0 == pytest.approx(base.a_0, rel=1e-6)


def test_result_fields(stacks):
    result = decorrelation_resolution(stacks[1][2, 0][CROP], pixel_size=0.5, n_r=40, n_g=8)
    assert result.radii.shape == result.d_0.shape == (40,)
    assert result.radii[0] == 0.0 and result.radii[-1] == 1.0
    assert np.all((result.d_0 >= 0) & (result.d_0 <= 1))
    assert 0 < result.k_c <= 1 and result.resolution == pytest.approx(2 * 0.5 / result.k_c)
    assert result.r_0 <= result.k_c + 1 / 39  # filtering moves the peak outwards (to a step)


def test_apodize():
    img = np.random.default_rng(3).normal(5.0, 1.0, size=(100, 120))
    out = apodize(img, edge=20)
    assert out.mean() == pytest.approx(img.mean(), abs=0.05)
    np.testing.assert_array_equal(out[20:80, 20:100], img[20:80, 20:100])
    assert np.abs(out[0] - img.mean()).max() < 0.05 * np.abs(img[0] - img.mean()).max()


def test_bad_inputs():
    with pytest.raises(BadInputError):
        decorrelation_resolution(np.ones((64, 64)))
    with pytest.raises(BadInputError):
        decorrelation_resolution(np.zeros((2, 64, 64)))
    with pytest.raises(BadInputError):
        decorrelation_resolution(np.random.default_rng(0).normal(size=(64, 64)), pixel_size=0.0)
    img = np.random.default_rng(0).normal(size=(64, 64))
    img[3, 3] = np.nan
    with pytest.raises(BadInputError):
        decorrelation_resolution(img)
