"""Metrics against independent references on real W2S pairs (skimage, numpy, torchmetrics).

Tolerances: the references compute in float64 like bigrestore, so PSNR, SSIM, Pearson,
MAE and NRMSE must agree to 1e-10 (relative or absolute as noted). torchmetrics keeps
the MS-SSIM weights in float32 (0.0448 -> 0.04479999...), which moves the result by
about 2e-9, so MS-SSIM is compared to 1e-7.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from conftest import data_path
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bigrestore.errors import BadInputError
from bigrestore.evaluate import metrics
from bigrestore.intensity import fit_line

IMAGES = [(0, 0), (7, 1), (13, 2), (19, 0)]  # (field, channel) of the validation stacks


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(low, high) float64 (512, 512), each normalised on its own as the data README asks."""
    low = tifffile.imread(data_path("w2s/val_low.tif"))
    high = tifffile.imread(data_path("w2s/val_high.tif"))
    assert low.shape == high.shape == (20, 3, 512, 512)
    return [
        (
            metrics.normalize_percentile(low[f, c], dtype=np.float64),
            metrics.normalize_percentile(high[f, c], dtype=np.float64),
        )
        for f, c in IMAGES
    ]


def test_pixel_metrics_match_references(pairs):
    for pred, gt in pairs:
        ref_psnr = peak_signal_noise_ratio(gt, pred, data_range=1.0)
        assert metrics.psnr(pred, gt, 1.0) == pytest.approx(ref_psnr, rel=1e-10)
        assert metrics.pearson(pred, gt) == pytest.approx(
            np.corrcoef(pred.ravel(), gt.ravel())[0, 1], abs=1e-10
        )
        assert metrics.mae(pred, gt) == pytest.approx(np.abs(pred - gt).mean(), rel=1e-10)
        rmse = math.sqrt(np.mean((pred - gt) ** 2))
        assert metrics.nrmse(pred, gt) == pytest.approx(rmse / gt.mean(), rel=1e-10)
    # A noisy frame against its 400-frame average is far from perfect (README: ~19 dB).
    assert all(metrics.psnr(p, g, 1.0) < 35 for p, g in pairs)


def test_psnr_uses_data_range(pairs):
    pred, gt = pairs[0]
    assert metrics.psnr(255 * pred, 255 * gt, 255.0) == pytest.approx(
        metrics.psnr(pred, gt, 1.0), rel=1e-12
    )
    assert metrics.psnr(pred, gt, 2.0) - metrics.psnr(pred, gt, 1.0) == pytest.approx(
        20 * math.log10(2)
    )


def test_ssim_matches_skimage(pairs):
    for pred, gt in pairs:
        for crop in (np.s_[:, :], np.s_[3:260, 17:301]):
            ref = structural_similarity(
                gt[crop],
                pred[crop],
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            assert metrics.ssim(pred[crop], gt[crop], 1.0) == pytest.approx(ref, abs=1e-10)


def test_ms_ssim_matches_torchmetrics(pairs):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.image")

    def reference(pred: np.ndarray, gt: np.ndarray, betas: tuple[float, ...]) -> float:
        t = [torch.from_numpy(np.ascontiguousarray(a))[None, None] for a in (pred, gt)]
        return float(
            tm.multiscale_structural_similarity_index_measure(*t, data_range=1.0, betas=betas)
        )

    # torch's float64 CPU convolution is slow: one full image, then odd-sided crops
    # (which also exercise the pooling's dropped row/column).
    crops = [np.s_[:, :]] + [np.s_[3:260, 11:312]] * (len(pairs) - 1)
    for (pred, gt), crop in zip(pairs, crops, strict=True):
        ours = metrics.ms_ssim(pred[crop], gt[crop], 1.0)
        ref = reference(pred[crop], gt[crop], metrics.MS_SSIM_WEIGHTS)
        assert ours == pytest.approx(ref, abs=1e-7)
    # 100 x 130 holds 4 scales: the first 4 weights, renormalised.
    pred, gt = pairs[1][0][:100, :130], pairs[1][1][:100, :130]
    assert metrics.ms_ssim_scales(pred.shape) == 4
    w = np.asarray(metrics.MS_SSIM_WEIGHTS[:4])
    betas = tuple(float(b) for b in w / w.sum())
    assert metrics.ms_ssim(pred, gt, 1.0) == pytest.approx(reference(pred, gt, betas), abs=1e-7)


def test_ms_ssim_scales():
    assert metrics.ms_ssim_scales((512, 512)) == 5
    assert metrics.ms_ssim_scales((176, 400)) == 5
    assert metrics.ms_ssim_scales((175, 400)) == 4
    assert metrics.ms_ssim_scales((22, 22)) == 2
    assert metrics.ms_ssim_scales((10, 100)) == 0
    with pytest.raises(BadInputError):
        metrics.ms_ssim(np.zeros((10, 100)), np.zeros((10, 100)), 1.0)


def test_identical_images_score_perfectly(pairs):
    _, gt = pairs[2]
    assert metrics.ssim(gt, gt, 1.0) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ms_ssim(gt, gt, 1.0) == pytest.approx(1.0, abs=1e-12)
    assert metrics.psnr(gt, gt, 1.0) == math.inf
    assert metrics.mae(gt, gt) == 0.0
    assert metrics.pearson(gt, gt) == pytest.approx(1.0, abs=1e-12)


def test_quality_ordering(pairs):
    """A denoised estimate (Gaussian blur of the noisy frame) scores better than the frame."""
    from scipy import ndimage

    pred, gt = pairs[0]
    smooth = ndimage.gaussian_filter(pred, 1.5)
    assert metrics.ssim(smooth, gt, 1.0) > metrics.ssim(pred, gt, 1.0)
    assert metrics.ms_ssim(smooth, gt, 1.0) > metrics.ms_ssim(pred, gt, 1.0)
    assert metrics.psnr(smooth, gt, 1.0) > metrics.psnr(pred, gt, 1.0)


def test_normalize_percentile():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 30.0, size=(128, 96))
    out = metrics.normalize_percentile(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.percentile(out, 0.1) == pytest.approx(0.0, abs=1e-6)
    assert np.percentile(out, 99.9) == pytest.approx(1.0, abs=1e-6)
    assert out.max() > 1.0  # not clipped
    # Invariant to the per-image contrast stretch of the W2S release.
    np.testing.assert_allclose(metrics.normalize_percentile(7.0 * img + 3.0), out, atol=1e-6)
    np.testing.assert_array_equal(metrics.normalize_percentile(np.full((8, 8), 5.0)), 0.0)
    with pytest.raises(BadInputError):
        metrics.normalize_percentile(img, 99.0, 1.0)


def test_fit_linear(pairs):
    pred, gt = pairs[3]
    a, b = metrics.fit_linear(pred, 2.5 * pred - 0.75)
    assert (a, b) == (pytest.approx(2.5, rel=1e-12), pytest.approx(-0.75, rel=1e-12))
    a, b = metrics.fit_linear(pred, gt)
    ref_a, ref_b = np.polyfit(pred.ravel(), gt.ravel(), 1)
    assert (a, b) == (pytest.approx(ref_a, rel=1e-9), pytest.approx(ref_b, rel=1e-9))
    # The fit is the least-squares optimum: it cannot lose to the identity map.
    assert metrics.psnr(a * pred + b, gt, 1.0) >= metrics.psnr(pred, gt, 1.0)
    assert metrics.fit_linear(np.ones((4, 4)), gt[:4, :4]) == (
        0.0,
        pytest.approx(gt[:4, :4].mean()),
    )


def test_fit_line_edge_cases():
    """A constant float image whose mean does not round to its value has no slope (a tiny
    residual variance must not become a slope), and non-finite pixels are left out."""
    flat = np.full(12345, 0.3)
    y = np.arange(flat.size, dtype=np.float64)
    assert fit_line(flat, y) == (0.0, pytest.approx(y.mean()))
    x = np.linspace(0.0, 1.0, 50)
    y = 2.0 * x + 1.0
    y[7], x[20] = np.nan, np.inf
    assert fit_line(x, y) == (pytest.approx(2.0), pytest.approx(1.0))
    assert fit_line(np.array([np.nan]), np.array([1.0])) == (0.0, 0.0)


def test_evaluate_pair_patches(pairs):
    pred, gt = pairs[0]
    rows = metrics.evaluate_pair(pred, gt, 1.0, pixel_size=None, patch=256)
    assert [(r["y"], r["x"], r["height"], r["width"]) for r in rows] == [
        (0, 0, 256, 256),
        (0, 256, 256, 256),
        (256, 0, 256, 256),
        (256, 256, 256, 256),
    ]
    crop = np.s_[256:512, 0:256]
    assert rows[2]["psnr"] == pytest.approx(metrics.psnr(pred[crop], gt[crop], 1.0), rel=1e-12)
    assert rows[2]["ms_ssim"] == pytest.approx(
        metrics.ms_ssim(pred[crop], gt[crop], 1.0), rel=1e-12
    )
    assert "resolution_pred" not in rows[0]
    # A remainder strip narrower than the patch is not scored.
    assert (
        len(metrics.evaluate_pair(pred[:500, :300], gt[:500, :300], 1.0, None, patch=128)) == 3 * 2
    )
    whole = metrics.evaluate_pair(pred, gt, 1.0, pixel_size=None, patch=None)
    assert len(whole) == 1 and whole[0]["ssim"] == pytest.approx(
        metrics.ssim(pred, gt, 1.0), rel=1e-12
    )
    with pytest.raises(BadInputError):
        metrics.evaluate_pair(pred, gt[:, :500], 1.0, None)
    with pytest.raises(BadInputError):
        metrics.evaluate_pair(pred, gt, 1.0, None, patch=1024)


def test_evaluate_pair_resolution(pairs):
    pred, gt = pairs[1]
    rows = metrics.evaluate_pair(pred, gt, 1.0, pixel_size=0.1, patch=256, unit="µm")
    assert len(rows) == 4
    for row in rows:
        assert row["unit"] == "µm"
        assert row["resolution_ratio"] == pytest.approx(
            row["resolution_pred"] / row["resolution_gt"]
        )
        # The 400-frame average resolves finer detail than the single noisy frame.
        assert row["resolution_gt"] < row["resolution_pred"]
        assert row["resolution_gt"] >= 2 * 0.1  # never below the Nyquist limit


def test_summarize():
    rows = [
        {
            "y": 0,
            "x": 0,
            "height": 4,
            "width": 4,
            "psnr": 10.0,
            "nrmse": 0.5,
            "unit": "µm",
            "peak_found_gt": True,
        },
        {
            "y": 0,
            "x": 4,
            "height": 4,
            "width": 4,
            "psnr": 20.0,
            "nrmse": math.nan,
            "unit": "µm",
            "peak_found_gt": True,
        },
        {
            "y": 4,
            "x": 0,
            "height": 4,
            "width": 4,
            "psnr": 60.0,
            "nrmse": 0.25,
            "unit": "µm",
            "peak_found_gt": False,
        },
    ]
    s = metrics.summarize(rows)
    assert set(s) == {"psnr", "nrmse"}
    assert s["psnr"] == {"median": 20.0, "mean": 30.0, "n": 3}
    assert s["nrmse"] == {"median": 0.375, "mean": 0.375, "n": 2}


def test_summarize_real_patches(pairs):
    pred, gt = pairs[2]
    rows = metrics.evaluate_pair(pred, gt, 1.0, pixel_size=None, patch=256)
    s = metrics.summarize(rows)
    for name in ("mae", "psnr", "nrmse", "pearson", "ssim", "ms_ssim"):
        values = [r[name] for r in rows]
        assert s[name]["median"] == pytest.approx(np.median(values), rel=1e-12)
        assert s[name]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert s[name]["n"] == 4


def test_bad_inputs():
    a = np.zeros((32, 32))
    with pytest.raises(BadInputError):
        metrics.psnr(a, a, 0.0)
    with pytest.raises(BadInputError):
        metrics.mae(a, np.zeros((32, 31)))
    with pytest.raises(BadInputError):
        metrics.ssim(np.zeros((3, 32, 32)), np.zeros((3, 32, 32)), 1.0)
    with pytest.raises(BadInputError):
        metrics.ssim(np.zeros((8, 32)), np.zeros((8, 32)), 1.0)
    assert math.isnan(metrics.nrmse(a + 1.0, a))
    assert math.isnan(metrics.pearson(a, a))
