"""Background skipping (bigrestore.run.background): tiles of pure background get one first
estimate instead of N samples, the `skipped` output records where, and every pixel that only
foreground tiles cover is bit-identical to a run without skipping."""

from __future__ import annotations

import numpy as np
import zarr
from conftest import nuclei_stack
from test_run import tiny_model

from bigrestore.io.images import open_image
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.run.background import estimate_threshold
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import run_settings

SETTINGS = dict(samples=2, steps=3, tile=32, overlap=8, chunk=64, dtype="float32")


def sparse_image() -> np.ndarray:
    """A 192² dark field (shot noise around 100) with one 64² patch of nuclei in a corner."""
    rng = np.random.default_rng(0)
    image = rng.poisson(100.0, (192, 192)).astype(np.float32)
    patch = nuclei_stack()[30, 96:160, 96:160].astype(np.float32)
    image[:64, :64] += 2000.0 * (patch - patch.min()) / np.ptp(patch)
    return image


def test_threshold_needs_a_clear_background():
    rng = np.random.default_rng(1)
    dark = rng.normal(-0.9, 0.01, (1, 64, 64))
    dark[0, :16, :16] = 0.8
    assert estimate_threshold(dark) is not None and estimate_threshold(dark) < 0.0
    busy = rng.uniform(-1, 1, (1, 64, 64))  # no dark population: nothing is skipped
    assert estimate_threshold(busy) is None


def test_the_fill_around_a_stitched_slide_is_not_taken_for_its_background():
    """A plane whose right 40 % is fill (at -1, where the network meets it): from all pixels the
    threshold sits just above the fill and no real background tile would be skipped; leaving
    out the fill and the pixels its smoothing reaches gives the threshold of the plane alone."""
    from bigrestore.intensity import measured, percentile_stats, to_network_input

    image = sparse_image()
    image[:64, :64] = 100.0 + (image[:64, :64] - 100.0) * 0.03  # dim nuclei: about +60
    filled = image.copy()
    filled[:, 115:] = 0.0  # the nuclei patch stays, in the top-left corner
    levels = percentile_stats(filled, plateaus=True)
    assert levels.filled == 0
    model = to_network_input(filled, levels)[None]
    alone = estimate_threshold(to_network_input(image[:, :115], levels)[None])
    everything = estimate_threshold(model)
    assert everything is not None and everything < -0.85  # the fill's level plus the margin
    kept = estimate_threshold(model, measured(filled, levels)[None])
    assert kept is not None and abs(kept - alone) < 0.02, (kept, alone)
    assert kept > everything + 0.05


def test_background_tiles_are_skipped_and_foreground_is_unchanged(tmp_path):
    path = write_image(
        tmp_path / "sparse.zarr", sparse_image(), default_meta("yx"), chunks=(64, 64)
    )
    model = tiny_model(tmp_path / "model", objective="v")
    runs = {}
    for mode in ("auto", "off"):
        out = tmp_path / f"{mode}.zarr"
        settings = run_settings(**SETTINGS, skip_background=mode)
        runs[mode] = restore(
            path, out, model=model, settings=settings, cluster=ClusterSpec(workers=1)
        )
    auto, off = runs["auto"].manifest, runs["off"].manifest
    assert auto["skipped_tiles_this_run"] > 0 and off["skipped_tiles_this_run"] == 0
    assert auto["background"]["skipping"] and not off["background"]["skipping"]
    saved = off["network_evaluations_this_run"] - auto["network_evaluations_this_run"]
    per_tile = SETTINGS["samples"] * SETTINGS["steps"]
    assert saved == auto["skipped_tiles_this_run"] * (per_tile - 1)  # N x K evaluations -> 1
    skipped = open_image(tmp_path / "auto.zarr" / "skipped").data.compute()
    assert skipped.dtype == np.uint8 and 0 < skipped.mean() < 1 and skipped[:48, :48].max() == 0
    foreground = skipped == 0
    for name in ("mean", "std"):
        a = np.asarray(zarr.open_array(str(tmp_path / "auto.zarr" / name / "0"), mode="r")[...])
        b = np.asarray(zarr.open_array(str(tmp_path / "off.zarr" / name / "0"), mode="r")[...])
        np.testing.assert_array_equal(a[foreground], b[foreground])
    assert not (tmp_path / "off.zarr" / "skipped").exists()
    assert auto["sampling"] == {}  # a v-model needs no warning at few steps
