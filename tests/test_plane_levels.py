"""Each plane meets the network at the levels it was trained with (``normalise_per``).

Training scales every image by its own 1st / 99.8th percentiles. A stack whose planes differ in
brightness (bleaching along a time-lapse, depth along a stack, unrelated frames of different
exposure) gave a dim plane only a sliver of the model range when one volume-wide scale was used:
on the held-out synthetic crops of docs/benchmarks.md section 22 that lost up to 6 dB per image.
Here: the levels are computed per plane and looked up by (t, z); a two-frame time-lapse with a
bright and a dim frame is restored with the bundled model, and the dim frame comes back in its
own units and better than with one volume-wide scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import data_path

import bigrestore
from bigrestore.evaluate.metrics import fit_linear, psnr
from bigrestore.intensity import (
    FILL_MODEL_VALUE,
    SATURATED_MODEL_VALUE,
    Stats,
    after_fit,
    from_model,
    percentile_stats,
    to_network_input,
)
from bigrestore.io.images import open_image
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.plan import make_plan
from bigrestore.run.restore import restore
from bigrestore.run.settings import run_settings

#: Percentile error allowed per frame, as in tests/test_fidelity.py.
TOLERANCE = 0.08
#: name: (gain, offset) from photons to stored 16-bit values, per frame.
FRAMES = {"bright": (100.0, 500.0), "dim": (8.0, 3000.0)}


def test_a_fit_folded_into_levels_maps_like_the_fit_then_the_levels():
    stats = Stats(120.0, 4000.0)
    x = np.linspace(-1.5, 1.5, 7)
    folded = after_fit(stats, 0.8, -0.1)
    assert np.allclose(from_model(x, folded), from_model(0.8 * x - 0.1, stats), rtol=1e-6)


def test_a_saturation_plateau_is_left_out_of_the_levels():
    rng = np.random.default_rng(0)
    image = rng.normal(1000.0, 50.0, (200, 200)).round().clip(0, 4095)
    plain = percentile_stats(image, plateaus=True)
    assert plain.saturated is None  # a lone maximum is not a plateau
    assert plain == percentile_stats(image)
    few = image.copy()
    few.flat[:40] = 4095  # 0.1 % at the top: under the 0.2 % above the 99.8th percentile
    assert percentile_stats(few, plateaus=True).saturated is None
    many = image.copy()
    many[:20, :20] = 4095  # 1 %: the 99.8th percentile would land on it
    assert percentile_stats(many).high == 4095
    levels = percentile_stats(many, plateaus=True)
    assert levels.saturated == 4095
    rest = many[many < 4095]
    assert levels == Stats(*np.percentile(rest, [1, 99.8]), 4095)
    assert Stats.from_dict(levels.to_dict()) == levels and "saturated" not in plain.to_dict()
    assert after_fit(levels, 2.0, 0.1).saturated == 4095
    network = to_network_input(many, levels)
    assert (network[:20, :20] == SATURATED_MODEL_VALUE).all()
    plain_network = to_network_input(many, Stats(levels.low, levels.high))
    assert np.array_equal(network[20:], np.minimum(plain_network[20:], SATURATED_MODEL_VALUE))
    assert network.max() == SATURATED_MODEL_VALUE  # monotone: no rim above the plateau
    near = image.copy()
    near[:20, :20] = 1200  # a plateau just above the rest (a stretch that clipped): left as is
    assert percentile_stats(near, plateaus=True) == percentile_stats(near)
    assert percentile_stats(near).high == 1200
    flat = np.full((10, 10), 7.0)
    assert percentile_stats(flat, plateaus=True) == Stats(7.0, 8.0)  # flat: no saturation


def test_a_fill_plateau_is_left_out_of_the_levels():
    """The zeros around a stitched slide's tiles, under a dim 16-bit image (offset 100 DU, about
    35 DU of signal): the 1st percentile would land on 0 and squeeze the image into the top
    third of the model's range. They are left out; zeros that merely continue the image (a
    background-subtracted image clipped at 0) are not."""
    rng = np.random.default_rng(2)
    image = rng.poisson(rng.uniform(0.0, 15.0, (200, 200))) * 2.0 + 100.0
    filled = image.copy()
    filled[:, :80] = 0  # 40 % of the plane never acquired
    assert percentile_stats(filled).low == 0
    levels = percentile_stats(filled, plateaus=True)
    assert levels.filled == 0 and levels.saturated is None
    assert levels == Stats(*np.percentile(filled[:, 80:], [1, 99.8]), filled=0.0)
    assert Stats.from_dict(levels.to_dict()) == levels and levels.to_dict()["filled"] == 0
    assert after_fit(levels, 2.0, 0.1).filled == 0
    network = to_network_input(filled, levels)
    assert (network[:, :80] == FILL_MODEL_VALUE).all() and network.min() == FILL_MODEL_VALUE
    both = filled.copy()
    both[150:170, 150:170] = 65535  # and an over-exposed cell: both plateaus, one rest
    levels = percentile_stats(both, plateaus=True)
    assert (levels.filled, levels.saturated) == (0, 65535)
    rest = both[(both > 0) & (both < 65535)]
    assert (levels.low, levels.high) == tuple(np.percentile(rest, [1, 99.8]))
    subtracted = np.clip(image - 104.0, 0, None)  # zeros just under the rest: no fill
    assert (subtracted == 0).mean() > 0.01
    assert percentile_stats(subtracted, plateaus=True) == percentile_stats(subtracted)


def test_w2s_images_are_not_taken_for_saturated():
    """The W2S release clipped each image's brightest noisy pixels at 255 (up to 0.5 % of a 256²
    crop, so its 99.8th percentile can land on 255), but only just above the rest: the rule
    leaves them alone, so the bundled model's W2S figures and its pinned outputs stay as they
    were. Checked on every W2S validation plane, its 256² centre crop (the benchmarks') and the
    bundled sample."""
    planes = tifffile.imread(data_path("w2s/val_low.tif")).reshape(-1, 512, 512)
    crops = [c for plane in planes for c in (plane, plane[128:384, 128:384])]
    sample = tifffile.imread(Path(bigrestore.__file__).parent / "data/sample/w2s_val_low.tif")
    assert np.percentile(sample, 99.8) == sample.max() == 255  # the plateau reaches it ...
    crops.append(sample)
    found = [percentile_stats(crop, plateaus=True) for crop in crops]
    assert [st.saturated for st in found] == [None] * len(found)  # ... and is still no saturation
    assert [st.filled for st in found] == [None] * len(found)  # nor has fill at its minimum


@pytest.mark.parametrize(
    "name", ["cells3d_nuclei.tif", "ctc_timelapse_2d.tif", "dsb2018_nuclei_2d.tif"]
)
def test_the_clean_stacks_have_no_plateaus(name):
    """Confocal, 8-bit time-lapse and 16-bit widefield planes: none is taken for saturated or for
    filled, so their restorations (and the held-out figures made from them) stand."""
    stack = tifffile.imread(data_path(f"clean/{name}"))
    planes = stack.reshape(-1, *stack.shape[-2:])
    found = [percentile_stats(plane, plateaus=True).plateaus() for plane in planes]
    assert found == [[]] * len(planes)


def test_levels_are_per_plane_and_found_by_t_and_z(tmp_path):
    """A (t=2, z=3) stack whose every plane has its own offset and gain: each task gets its own
    plane's percentiles; with ``volume`` all share the whole stack's."""
    rng = np.random.default_rng(1)
    planes = rng.normal(100.0, 10.0, (2, 3, 32, 40))
    for t in range(2):
        for z in range(3):
            planes[t, z] = planes[t, z] * (1 + t + z) + 1000.0 * (3 * t + z)
    source = write_image(tmp_path / "in.zarr", planes.astype(np.float32), default_meta("tzyx"))
    settings = run_settings(samples=1, steps=2, tile=32, overlap=8)
    plan = make_plan(source, tmp_path / "o.zarr", None, settings, None, None, "cpu", 1)
    assert len(plan.job.input_stats) == 6
    for task in plan.tasks:
        want = percentile_stats(planes[task.t, task.z].astype(np.float32))
        got = plan.job.plane_values(plan.job.input_stats, task)[0]
        assert got.low == pytest.approx(want.low) and got.high == pytest.approx(want.high)
    volume = settings.changed(normalise_per="volume")
    plan = make_plan(source, tmp_path / "o.zarr", None, volume, None, None, "cpu", 1)
    (shared,) = plan.job.input_stats
    assert shared[0].low == pytest.approx(percentile_stats(planes.astype(np.float32)).low)


@pytest.fixture(scope="module")
def time_lapse(tmp_path_factory):
    """(stored 16-bit frames, clean frames in the same units): one cells3d plane (128², peak
    30 photons, Poisson and read noise) seen twice, once bright and once dim on a high offset."""
    plane = tifffile.imread(data_path("clean/cells3d_nuclei.tif"))[30, 64:192, 64:192]
    clean = plane.astype(np.float64) / np.percentile(plane, 99.9) * 30.0
    rng = np.random.default_rng(0)
    stored, reference = [], []
    for gain, offset in FRAMES.values():
        noisy = rng.poisson(clean) + rng.normal(0.0, 1.0, clean.shape)
        stored.append(np.clip(np.round(noisy * gain + offset), 0, 65535).astype(np.uint16))
        reference.append(clean * gain + offset)
    path = write_image(
        tmp_path_factory.mktemp("in") / "t.zarr", np.stack(stored), default_meta("tyx")
    )
    return path, np.stack(reference)


def restored_frames(source, out, per: str) -> tuple[np.ndarray, dict]:
    # batch 2 = one tile x 2 samples: not padded to the CPU's default batch of 8 (4x the cost)
    settings = run_settings(samples=2, steps=4, batch=2, normalise_per=per)
    result = restore(source, out, settings=settings, cluster=ClusterSpec(workers=1))
    return open_image(out / "mean").data.compute().astype(np.float64), result.manifest


def fitted_psnr(restored: np.ndarray, clean: np.ndarray) -> float:
    truth = (clean - clean.min()) / (clean.max() - clean.min())
    a, b = fit_linear(restored, truth)
    return psnr(a * restored + b, truth, 1.0)


def test_a_dim_frame_is_restored_at_its_own_levels(time_lapse, tmp_path):
    source, reference = time_lapse
    per_plane, manifest = restored_frames(source, tmp_path / "plane.zarr", "plane")
    volume, _ = restored_frames(source, tmp_path / "volume.zarr", "volume")
    assert len(manifest["input_statistics"]["0"]) == 2  # one record per frame
    for frame, name in enumerate(FRAMES):
        lo, hi = np.percentile(reference[frame], [1, 99])
        got = np.percentile(per_plane[frame], (5, 50, 95))
        want = np.percentile(reference[frame], (5, 50, 95))
        error = np.max(np.abs(got - want)) / (hi - lo)
        assert error < TOLERANCE, f"{name} frame: percentiles off by {error:.3f} of its range"
    dim = list(FRAMES).index("dim")
    plane_db = fitted_psnr(per_plane[dim], reference[dim])
    volume_db = fitted_psnr(volume[dim], reference[dim])
    assert plane_db > volume_db + 1.0, (plane_db, volume_db)


def test_resume_refuses_to_mix_blocks_levelled_with_and_without_saturation(tmp_path):
    """A run interrupted before the saturation rule (its record has no saturated_levels) must
    not be finished with it: its done blocks were normalised another way."""
    from bigrestore.errors import IncompatibleModelError
    from bigrestore.io.runstore import RunStore

    store = RunStore(tmp_path / "out.zarr", "0.5")
    record = {"input": "in.zarr", "model_sha256": "m", "settings": {}, "channels": [0]}
    store.ensure_layout(record, [], (1,))
    store.check_resume(record)  # same record: fine
    with pytest.raises(IncompatibleModelError, match="saturated_levels"):
        store.check_resume({**record, "saturated_levels": {"0": [65535.0]}})
    with pytest.raises(IncompatibleModelError, match="fill_levels"):
        store.check_resume({**record, "fill_levels": {"0": [0.0]}})
