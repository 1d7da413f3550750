"""Intensities come back faithfully: a restored stack keeps the input's dtype and units by
default, and its intensity percentiles match the clean image's.

A clean confocal plane (cells3d, z 30, centre 128²) is turned into photon counts (peak 30),
Poisson noise and Gaussian read noise (sigma 1 photon) are added, and the result is stored as
a microscope would: 16-bit with a gain of 100 and an offset of 500, 8-bit with a gain of 6 and
an offset of 10, or float32 in arbitrary units. The clean image in the same units is the
reference. The bundled model restores each with the run defaults (2 samples, 4 steps and
batch 2, to keep the test short). Tolerance: the restored 5th, 50th and 95th percentiles lie within
TOLERANCE of the reference's 1-99 % range from the reference's own (measured on an AMD EPYC,
bf16: at most 0.022 with the generalist model bundled on 2026-11-30, 0.04 with the W2S-only
model before it); the same check on the model's target units fails."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import data_path

from bigrestore.io.images import open_image
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import run_settings

TOLERANCE = 0.08
PERCENTILES = (5, 50, 95)
#: name: (dtype, gain, offset) from photons to stored values.
CAMERAS = {
    "16-bit": (np.uint16, 100.0, 500.0),
    "8-bit": (np.uint8, 6.0, 10.0),
    "float": (np.float32, 0.01, 0.2),
}


@pytest.fixture(scope="module")
def photons() -> tuple[np.ndarray, np.ndarray]:
    """(clean photon image, noisy photon image), 128² of cells3d z 30, peak 30 photons."""
    plane = tifffile.imread(data_path("clean/cells3d_nuclei.tif"))[30, 64:192, 64:192]
    clean = plane.astype(np.float64) / np.percentile(plane, 99.9) * 30.0
    rng = np.random.default_rng(0)
    noisy = rng.poisson(clean) + rng.normal(0.0, 1.0, clean.shape)
    return clean, noisy


def stored(values: np.ndarray, dtype: type, gain: float, offset: float) -> np.ndarray:
    scaled = values * gain + offset
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(scaled), info.min, info.max).astype(dtype)
    return scaled.astype(dtype)


def percentile_error(restored: np.ndarray, reference: np.ndarray) -> float:
    """Largest distance of the restored percentiles from the reference's, as a fraction of the
    reference's 1-99 % range."""
    lo, hi = np.percentile(reference, [1, 99])
    got, want = np.percentile(restored, PERCENTILES), np.percentile(reference, PERCENTILES)
    return float(np.max(np.abs(got - want)) / (hi - lo))


def restored_pair(tmp_path, **images: np.ndarray) -> tuple[dict, dict]:
    """Each 128² image restored by the bundled model (2 samples, 4 steps, batch 2): the means
    as float64 and the manifests, by name."""
    settings = run_settings(samples=2, steps=4, batch=2)
    cluster = ClusterSpec(workers=1, threads_per_worker=1)
    means, manifests = {}, {}
    for name, values in images.items():
        source = write_image(tmp_path / f"{name}.zarr", values, default_meta("yx"))
        out = tmp_path / f"{name}.restored.zarr"
        manifests[name] = restore(source, out, settings=settings, cluster=cluster).manifest
        means[name] = open_image(out / "mean").data.compute().reshape(128, 128).astype(np.float64)
    return means, manifests


@pytest.mark.parametrize("camera", list(CAMERAS))
def test_restored_intensities_match_the_clean_image_in_the_input_units(photons, camera, tmp_path):
    clean, noisy = photons
    dtype, gain, offset = CAMERAS[camera]
    source = write_image(
        tmp_path / "in.zarr", stored(noisy, dtype, gain, offset), default_meta("yx")
    )
    reference = clean * gain + offset
    # batch 2 = one tile x 2 samples: not padded to the CPU's default batch of 8 (4x the cost)
    settings = run_settings(samples=2, steps=4, batch=2)
    cluster = ClusterSpec(workers=1, threads_per_worker=1)
    result = restore(source, tmp_path / "out.zarr", settings=settings, cluster=cluster)
    mean = open_image(tmp_path / "out.zarr" / "mean").data.compute()[..., :, :].reshape(128, 128)
    assert mean.dtype == np.dtype(dtype)  # the input's dtype by default
    assert result.manifest["settings"]["output_scale"] == "input"
    assert isinstance(result.manifest["clipped_pixels"], int)
    error = percentile_error(mean.astype(np.float64), reference)
    assert error < TOLERANCE, f"{camera}: percentiles off by {error:.3f} of the range"
    # The check can fail: the model's own units (what an unfitted restoration returns) miss.
    target = settings.changed(output_scale="target", dtype="float32")
    restore(source, tmp_path / "target.zarr", settings=target, cluster=cluster)
    raw = open_image(tmp_path / "target.zarr" / "mean").data.compute().reshape(128, 128)
    assert percentile_error(raw.astype(np.float64), reference) > TOLERANCE


def test_a_saturated_cell_leaves_the_rest_of_the_image_as_it_was(photons, tmp_path):
    """A disk of the 16-bit image at 65535 (an over-exposed cell, 3 % of the pixels): without
    care the 99.8th percentile lands on it and the rest of the plane meets the network squeezed
    into a sliver of its range (the background came back at 0, under the camera offset). The
    levels now leave the plateau out: outside the disk the restoration matches the one of the
    same image unsaturated, and inside it the mean keeps the saturation level."""
    clean, noisy = photons
    dtype, gain, offset = CAMERAS["16-bit"]
    image = stored(noisy, dtype, gain, offset)
    yy, xx = np.mgrid[:128, :128]
    disk = (yy - 40) ** 2 + (xx - 90) ** 2 < 13**2
    saturated = image.copy()
    saturated[disk] = 65535
    means, manifests = restored_pair(tmp_path, plain=image, saturated=saturated)
    reference = clean * gain + offset
    lo, hi = np.percentile(reference, [1, 99])
    outside = ~disk
    assert percentile_error(means["saturated"][outside], reference[outside]) < TOLERANCE
    change = np.abs(means["saturated"] - means["plain"])[outside]
    assert np.median(change) < 0.02 * (hi - lo), np.median(change) / (hi - lo)
    assert (means["saturated"][disk] == 65535).all()
    assert manifests["saturated"]["input_statistics"]["0"]["saturated"] == 65535
    note = manifests["saturated"]["saturation"]
    assert note["pixels_this_run"] == int(disk.sum()) and "warning" in note
    assert "saturated" not in manifests["plain"]["input_statistics"]["0"]
    assert manifests["plain"]["saturation"] == {"channels": {}, "pixels_this_run": 0}


def test_the_fill_around_a_stitched_slide_leaves_the_image_as_it_was(photons, tmp_path):
    """A dim 16-bit camera (2 DU per photon, offset 100 DU) whose left 40 % was never acquired
    and holds 0, as around a stitched slide's tiles: without care the 1st percentile lands on
    the fill and the image meets the network squeezed into the top third of its range (on
    benchmarks/saturation.py's crop the mean lost 6.3 dB there). The fill is left out of the
    levels: the acquired part comes back as without the fill, and the fill stays 0."""
    clean, noisy = photons
    image = stored(noisy, np.uint16, 2.0, 100.0)
    filled = image.copy()
    filled[:, :52] = 0
    means, manifests = restored_pair(tmp_path, plain=image, filled=filled)
    reference = clean * 2.0 + 100.0
    lo, hi = np.percentile(reference, [1, 99])
    acquired = np.s_[:, 52:]
    change = np.abs(means["filled"] - means["plain"])[acquired]
    assert np.mean(change) < 0.04 * (hi - lo), np.mean(change) / (hi - lo)  # 0.07 without the rule
    assert percentile_error(means["filled"][acquired], reference[acquired]) < TOLERANCE
    assert (means["filled"][:, :52] == 0).all()
    assert manifests["filled"]["input_statistics"]["0"]["filled"] == 0
    note = manifests["filled"]["fill"]
    assert note["pixels_this_run"] == 52 * 128 and "stitched" in note["warning"]
    assert manifests["plain"]["fill"] == {"channels": {}, "pixels_this_run": 0}


def test_a_dim_integer_image_is_told_that_rounding_costs_detail(photons, tmp_path):
    """A 16-bit camera at 0.2 DU per photon spans about 6 DU: the mean rounded to whole DU
    loses detail that float32 keeps, and the run says so; a well-exposed one gets no note."""
    from test_run import SETTINGS, tiny_model  # the note needs levels, not a good model

    _, noisy = photons
    model = tiny_model(tmp_path / "model")
    cluster = ClusterSpec(workers=1, threads_per_worker=1)
    notes = {}
    for name, gain in (("dim", 0.2), ("bright", 100.0)):
        values = stored(noisy, np.uint16, gain, 100.0)
        source = write_image(tmp_path / f"{name}.zarr", values, default_meta("yx"))
        out = tmp_path / f"{name}.out.zarr"
        result = restore(source, out, model=model, settings=SETTINGS, cluster=cluster)
        notes[name] = result.manifest["rounding"]
    assert "float32" in notes["dim"]["warning"] and notes["dim"]["narrowest_range"] < 10
    assert notes["bright"] == {}
