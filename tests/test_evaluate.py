"""bigrestore evaluate: real W2S planes, baselines, intensity modes, tables, samples curve, CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import data_path

from bigrestore.cli import cli
from bigrestore.errors import BadInputError, MissingInputError, UsageError
from bigrestore.evaluate.baselines import SIGMA_GRID, best_gaussian_per_image, gaussian_denoise
from bigrestore.evaluate.metrics import psnr
from bigrestore.evaluate.pairing import load_stack, normalize_pred
from bigrestore.evaluate.report import read_training_log
from bigrestore.evaluate.scoring import evaluate
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image

PIXEL = 0.1  # micrometer, an arbitrary physical scale written into the test stores


def _meta(axes: str) -> ImageMeta:
    units = tuple("micrometer" if a in "yx" else None for a in axes)
    scale = tuple(PIXEL if a in "yx" else 1.0 for a in axes)
    return ImageMeta(axes, scale, (0.0,) * len(axes), units)


@pytest.fixture(scope="module")
def w2s(tmp_path_factory):
    """Val fields 0-1 (scored) and 10-12 (tuning) as tcyx OME-Zarr, plus 128² crops."""
    low = tifffile.imread(data_path("w2s/val_low.tif"))
    high = tifffile.imread(data_path("w2s/val_high.tif"))
    root = tmp_path_factory.mktemp("w2s")
    stores = {}
    crop = (slice(None), slice(None), slice(192, 320), slice(192, 320))
    for name, array in {
        "low": low[:2],
        "high": high[:2],
        "tune_low": low[10:13],
        "tune_high": high[10:13],
        "low_crop": low[:2][crop],
        "high_crop": high[:2][crop],
    }.items():
        stores[name] = write_image(root / f"{name}.zarr", array, _meta("tcyx"))
    stores["arrays"] = {"low": low[:2], "high": high[:2]}
    return stores


def _cli(*args):
    return CliRunner().invoke(cli, ["evaluate", *map(str, args)])


def test_tuned_gaussian_beats_raw_on_real_w2s(w2s):
    result = evaluate(
        [], w2s["high"], raw=w2s["low"], val_for_sigma=(w2s["tune_low"], w2s["tune_high"])
    )
    gauss = result.settings["gaussian"]
    assert "tune_low" in gauss["tuned_on"] and result.settings["planes_scored"] == list(range(6))
    assert SIGMA_GRID[0] < gauss["sigma"] < SIGMA_GRID[-1]  # an interior optimum, not a grid edge
    raw_psnr = result.summary["raw"]["psnr"]["median"]
    gauss_psnr = result.summary["gaussian"]["psnr"]["median"]
    assert gauss_psnr > raw_psnr + 3.0, (raw_psnr, gauss_psnr)
    assert result.best()["psnr"] == "gaussian"
    assert len(result.rows) == 2 * 6 * 4  # methods x planes x 256² patches of 512²
    # An independent check of one row: percentile normalisation + scikit-image PSNR (L = 1).
    skimage_metrics = pytest.importorskip("skimage.metrics")
    row = next(
        r for r in result.rows if (r["method"], r["plane"], r["y"], r["x"]) == ("raw", 4, 256, 0)
    )
    assert row["label"] == "t=1 c=1" and row["unit"] == "µm"

    def norm(a):
        lo, hi = np.percentile(a.astype(np.float64), [0.1, 99.9])
        return (a - lo) / (hi - lo)

    p = norm(w2s["arrays"]["low"][1, 1])[256:, :256]
    g = norm(w2s["arrays"]["high"][1, 1])[256:, :256]
    expected = skimage_metrics.peak_signal_noise_ratio(g, p, data_range=1.0)
    assert row["psnr"] == pytest.approx(expected, abs=1e-9)
    assert row["resolution_pred"] > row["resolution_gt"] > 2 * PIXEL  # noise hides fine detail


def test_without_a_tuning_set_the_tuning_planes_are_not_scored(w2s):
    result = evaluate([], w2s["high_crop"], raw=w2s["low_crop"], patch=None)
    scored = result.settings["planes_scored"]
    assert scored == [1, 2, 3, 4, 5] and "held out" in result.settings["gaussian"]["tuned_on"]
    assert {r["plane"] for r in result.rows} == set(scored)
    assert {r["method"] for r in result.rows} == {"raw", "gaussian"}


def test_best_gaussian_per_image_uses_the_gt_and_is_labelled_so(tmp_path, w2s):
    """On one real W2S image (nothing to tune on), the per-image Gaussian runs where the tuned
    one cannot, its sigma is the PSNR argmax of an independent grid search (scikit-image PSNR,
    percentile normalisation as every method), and it beats the raw input."""
    crop = (slice(0, 1), slice(1, 2), slice(128, 384), slice(128, 384))
    low = write_image(tmp_path / "low.zarr", w2s["arrays"]["low"][crop], _meta("tcyx"))
    high = write_image(tmp_path / "high.zarr", w2s["arrays"]["high"][crop], _meta("tcyx"))
    result = evaluate([], high, raw=low, patch=None, gaussian_oracle=True)
    assert result.methods == ("raw", "gaussian-oracle") and result.settings["gaussian"] is None
    oracle = result.settings["gaussian_oracle"]
    assert "uses the" in oracle["criterion"] and "ground truth" in oracle["criterion"]
    (sigma,) = oracle["sigmas"].values()
    ndimage = pytest.importorskip("scipy.ndimage")
    skimage_metrics = pytest.importorskip("skimage.metrics")

    def norm(a):
        lo, hi = np.percentile(a.astype(np.float64), [0.1, 99.9])
        return (a - lo) / (hi - lo)

    raw, gt = w2s["arrays"]["low"][crop][0, 0], norm(w2s["arrays"]["high"][crop][0, 0])
    scores = {
        s: skimage_metrics.peak_signal_noise_ratio(
            gt, norm(ndimage.gaussian_filter(raw.astype(np.float64), s)), data_range=1.0
        )
        for s in SIGMA_GRID
    }
    assert sigma == max(scores, key=scores.get)
    medians = {m: result.summary[m]["psnr"]["median"] for m in result.methods}
    assert medians["gaussian-oracle"] == pytest.approx(scores[sigma], abs=1e-9)
    assert medians["gaussian-oracle"] > medians["raw"] + 3.0


def test_best_gaussian_reaches_wide_sigmas_for_smooth_noisy_images():
    """A very smooth ground truth under heavy noise (a dim, featureless widefield field) is
    best filtered far beyond 4 px: the per-image oracle must find that sigma, or it would
    understate the baseline that bigrestore is compared against."""
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    gt = 0.5 + 0.3 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy)  # one slow wave
    raw = gt + np.random.default_rng(0).normal(0.0, 0.5, gt.shape)
    compared, sigma = best_gaussian_per_image(raw, gt, "linear-fit", 1.0)
    assert sigma > 6.0
    narrow = max(  # what a grid stopping at 4 px would have reported
        psnr(normalize_pred(gaussian_denoise(raw, s), gt, "linear-fit"), gt, 1.0)
        for s in SIGMA_GRID
        if s <= 4.0
    )
    assert psnr(compared, gt, 1.0) > narrow + 1.0


@pytest.mark.parametrize(
    ("mode", "gain_free"), [("percentile", True), ("linear-fit", True), ("none", False)]
)
def test_intensity_modes_on_an_affine_copy_of_the_gt(tmp_path, w2s, mode, gain_free):
    high = w2s["arrays"]["high"][:1, :1, 200:296, 200:296]
    gt = write_image(tmp_path / "gt.zarr", high, _meta("tcyx"))
    pred = write_image(tmp_path / "pred.zarr", (0.5 * high + 20).astype(np.float32), _meta("tcyx"))
    result = evaluate(
        [pred], gt, names=["affine"], normalize=mode, patch=None, gaussian_baseline=False
    )
    row = result.rows[0]
    assert result.settings["data_range"] == (1.0 if gain_free else 255.0)
    if gain_free:
        assert row["mae"] < 1e-6 and row["pearson"] == pytest.approx(1.0)
    else:
        assert row["mae"] > 1.0 and row["psnr"] < 40
    assert "Gaussian baseline needs the raw input (--raw)" not in result.notes


def test_float_gt_without_a_data_range_is_refused(tmp_path):
    gt = write_image(
        tmp_path / "gt.zarr", np.random.default_rng(0).random((32, 32), np.float32), _meta("yx")
    )
    with pytest.raises(UsageError, match="--data-range"):
        evaluate([gt], gt, normalize="none")
    result = evaluate([gt], gt, names=["same"], normalize="none", data_range=1.0, patch=None)
    assert math.isinf(result.rows[0]["psnr"]) and result.rows[0]["mae"] == 0


def test_tiff_input_with_unknown_axes_channel_and_planes():
    path = data_path("w2s/val_high.tif")
    stack = load_stack(path, channel=2)
    assert stack.n == 20 and stack.yx == (512, 512) and stack.unit == "px"
    result = evaluate([path], path, names=["self"], channel=2, planes=[3], patch=None)
    (row,) = result.rows
    assert row["label"] == "t=3" and math.isinf(row["psnr"]) and row["resolution_ratio"] == 1.0


def test_samples_curve_mse_falls_as_one_over_k(tmp_path, w2s):
    gt = w2s["arrays"]["high"][0, 0, 100:228, 100:228].astype(np.float32)
    rng = np.random.default_rng(1)
    sigma, n = 20.0, 8
    samples = (gt + rng.normal(0, sigma, (n, *gt.shape))).astype(np.float32)
    gt_path = write_image(tmp_path / "gt.zarr", gt, _meta("yx"))
    single = write_image(tmp_path / "samples.zarr", samples, _meta("tyx"))  # t indexes samples
    folder = tmp_path / "samples_dir"
    folder.mkdir()
    for s in range(n):
        tifffile.imwrite(folder / f"s{s:02d}.tif", samples[s])
    for layout in (single, folder):
        result = evaluate(
            [gt_path],
            gt_path,
            names=["p"],
            normalize="none",
            data_range=255.0,
            patch=64,
            samples=layout,
            gaussian_baseline=False,
        )
        curve = result.samples_curve
        assert curve["n_samples"] == n and curve["k"] == list(range(1, n + 1))
        mse = np.asarray(curve["mean"]["mse"])
        np.testing.assert_allclose(mse * np.arange(1, n + 1), sigma**2, rtol=0.1)
        assert np.all(np.diff(curve["median"]["psnr"]) > 0)
    bad = write_image(tmp_path / "bad.zarr", samples[:, :100], _meta("tyx"))
    with pytest.raises(BadInputError, match="shape"):
        evaluate([gt_path], gt_path, normalize="none", data_range=255.0, patch=64, samples=bad)


def test_training_log_reads_epoch_and_numeric_columns(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "epoch,loss,val_mae,note\n0,1.0,,a\n1,0.5,0.2,b\n2,0.25,0.1,c\n"
    )
    log = read_training_log(tmp_path)
    assert log["x"] == "epoch" and set(log["series"]) == {"loss", "val_mae"}
    assert log["series"]["val_mae"] == [[1.0, 0.2], [2.0, 0.1]]
    (tmp_path / "empty").mkdir()
    assert read_training_log(tmp_path / "empty") is None
    with pytest.raises(MissingInputError):
        read_training_log(tmp_path / "absent")


def test_cli_tables_json_and_lpips_not_computed(tmp_path, w2s):
    out_csv, out_json = tmp_path / "rows.csv", tmp_path / "summary.json"
    result = _cli(
        w2s["low_crop"],
        w2s["high_crop"],
        w2s["high_crop"],
        "--names",
        "noisy,perfect",
        "--patch",
        "64",
        "--planes",
        "0:3",
        "--csv",
        out_csv,
        "--json",
        out_json,
    )
    assert result.exit_code == 0, result.output
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 4  # methods x planes x 64² patches of 128²
    assert {r["method"] for r in rows} == {"noisy", "perfect"} and "resolution_ratio" in rows[0]
    summary = json.loads(out_json.read_text())
    noisy = [float(r["psnr"]) for r in rows if r["method"] == "noisy"]
    assert summary["summary"]["noisy"]["psnr"]["median"] == pytest.approx(np.median(noisy))
    assert summary["summary"]["perfect"]["psnr"]["median"] == "inf"
    assert summary["best"]["psnr"] == "perfect" and summary["best"]["mae"] == "perfect"
    assert summary["lpips"].startswith("not computed")
    assert (
        summary["settings"]["normalize"] == "percentile"
        and summary["settings"]["data_range"] == 1.0
    )
    lines = result.output.splitlines()
    perfect = next(line for line in lines if line.startswith("perfect"))
    assert "inf*" in perfect and "lpips: not computed" in result.output
    again = _cli(w2s["low_crop"], w2s["high_crop"], "--csv", out_csv)
    assert again.exit_code == 73 and "--overwrite" in again.output


def test_cli_exit_codes_with_one_line_messages(tmp_path, w2s):
    missing = _cli(tmp_path / "nope.zarr", w2s["high_crop"])
    assert missing.exit_code == 66
    assert missing.output.strip().count("\n") == 0 and "nope.zarr" in missing.output
    mismatch = _cli(w2s["low"], w2s["high_crop"])
    assert mismatch.exit_code == 65
    assert mismatch.output.strip().count("\n") == 0 and "shape" in mismatch.output
    lpips = _cli(w2s["low_crop"], w2s["high_crop"], "--lpips-weights", tmp_path / "alex.pth")
    assert lpips.exit_code == 2 and "torchvision" in lpips.output


def test_default_patch_scores_planes_smaller_than_it_whole(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.random((90, 60)).astype(np.float32)
    tifffile.imwrite(tmp_path / "gt.tif", truth)
    tifffile.imwrite(tmp_path / "pred.tif", truth + 0.1 * rng.random((90, 60), np.float32))
    default = _cli(tmp_path / "pred.tif", tmp_path / "gt.tif", "--no-gaussian", "--json",
                   tmp_path / "s.json")  # fmt: skip
    assert default.exit_code == 0, default.output
    assert json.loads((tmp_path / "s.json").read_text())["settings"]["patch"] is None
    explicit = _cli(tmp_path / "pred.tif", tmp_path / "gt.tif", "--patch", "256")
    assert explicit.exit_code == 2 and "11..60" in explicit.output
