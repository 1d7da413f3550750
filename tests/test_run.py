"""`bigrestore run` end to end: real volume, Dask LocalCluster, resume, determinism, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from conftest import nuclei_stack, read_with_ome_zarr_py, validate_ngff

from bigrestore.cli import cli
from bigrestore.devices import native_bf16
from bigrestore.errors import (
    CannotCreateOutputError,
    IncompatibleModelError,
    ResumableInterrupt,
    UsageError,
)
from bigrestore.io.images import open_image
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image
from bigrestore.model.files import save_model
from bigrestore.model.unet import ConditionalUNet, UNetConfig
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import run_settings

SETTINGS = run_settings(samples=2, sampler="ddim", steps=2, tile=32, overlap=8, batch=4, chunk=48)


def tiny_model(directory: Path, objective: str = "diffusion") -> Path:
    torch.manual_seed(0)
    net = ConditionalUNet(
        UNetConfig(
            base_channels=8,
            channel_mult=(1, 2),
            blocks_per_level=1,
            attn_resolutions=(),
            train_resolution=32,
            channels_per_head=8,
        )
    )
    with torch.no_grad():  # non-zero output gain, so the output depends on the input
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)
    spec = {
        "objective": objective,
        "schedule": {"T": 200, "s": 0.008},
        "normalization": {
            "method": "percentile",
            "p_low": 1.0,
            "p_high": 99.8,
            "target": {"low": 100.0, "high": 5000.0},
        },
    }
    save_model(directory, net, spec)
    return directory


@pytest.fixture(scope="module")
def noisy_nuclei(tmp_path_factory) -> Path:
    """cells3d nuclei (4 z-planes, 112x96 crop) with simulated Poisson-Gaussian low-light noise."""
    clean = nuclei_stack()[28:32, 80:192, 100:196].astype(np.float64)
    rng = np.random.default_rng(0)
    photons = clean / clean.max() * 20.0
    noisy = rng.poisson(photons) * 400.0 + rng.normal(100.0, 30.0, size=clean.shape)
    noisy = np.clip(noisy, 0, 65535).astype(np.uint16)
    path = tmp_path_factory.mktemp("in") / "nuclei.zarr"
    meta = ImageMeta(
        "zyx", (0.29, 0.26, 0.26), (0.0, 5.0, 7.0), ("micrometer",) * 3, None, "nuclei"
    )
    write_image(path, noisy, meta, chunks=(1, 40, 40))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def reference(noisy_nuclei, model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out.zarr"
    restore(
        noisy_nuclei,
        out,
        model=model,
        settings=SETTINGS,
        cluster=ClusterSpec(workers=1),
        pyramid_min_side=40,
    )
    return out


def test_outputs_are_valid_multiscale_images(noisy_nuclei, reference):
    source = open_image(noisy_nuclei)
    for name in ("mean", "std", "entropy"):
        validate_ngff(reference / name)
        image = open_image(reference / name)
        assert image.data.shape == source.data.shape
        assert image.meta.axes == "zyx"
        assert image.meta.scale == pytest.approx(source.meta.scale)
        assert image.meta.translation == pytest.approx(source.meta.translation)
        assert image.level_shapes == ((4, 112, 96), (4, 56, 48), (4, 28, 24))
        levels, _ = read_with_ome_zarr_py(reference / name)
        level1 = levels[0].astype(np.float64).reshape(4, 56, 2, 48, 2).mean(axis=(2, 4))
        rounded = np.issubdtype(levels[1].dtype, np.integer)  # the mean keeps the input's uint16
        np.testing.assert_allclose(levels[1], level1, rtol=1e-5, atol=0.5 if rounded else 1e-3)
        data = levels[0]
        assert np.isfinite(data).all() and data.std() > 0
    std = open_image(reference / "std").data.compute()
    entropy = open_image(reference / "entropy").data.compute()
    assert (
        (std >= 0).all() and (entropy >= 0).all() and entropy.max() <= 1.0 + 1e-6
    )  # 2 samples: <= 1 bit
    manifest = dict(zarr.open_group(str(reference), mode="r").attrs["bigrestore"])
    assert manifest["status"] == "complete"
    assert manifest["settings"]["samples"] == 2
    assert set(manifest["input_statistics"]) == {"0"}
    # an eps-model at 2 DDIM steps: the manifest (and the CLI) warn that it needs ~50
    assert "--steps 50" in manifest["sampling"]["warning"]


def test_same_output_for_any_block_size_and_worker_count(noisy_nuclei, model, reference, tmp_path):
    other = SETTINGS.changed(chunk=64)
    out = tmp_path / "two_workers.zarr"
    restore(
        noisy_nuclei,
        out,
        model=model,
        settings=other,
        cluster=ClusterSpec(workers=2),
        pyramid_min_side=40,
    )
    for name in ("mean", "std", "entropy"):
        a = open_image(reference / name).data.compute()
        b = open_image(out / name).data.compute()
        np.testing.assert_array_equal(a, b)


def test_resume_after_interrupt_matches_uninterrupted(noisy_nuclei, model, reference, tmp_path):
    out = tmp_path / "resumed.zarr"

    def stop_early(record, done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(ResumableInterrupt, match="--resume"):
        restore(
            noisy_nuclei,
            out,
            model=model,
            settings=SETTINGS,
            progress=stop_early,
            pyramid_min_side=40,
        )
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["bigrestore"]["status"] == "running"
    assert 0 < int(np.asarray(root["done"][...]).sum()) < root["done"].size
    with pytest.raises(IncompatibleModelError, match="settings"):
        restore(
            noisy_nuclei,
            out,
            model=model,
            resume=True,
            pyramid_min_side=40,
            settings=SETTINGS.changed(samples=3),
        )
    result = restore(
        noisy_nuclei, out, model=model, settings=SETTINGS, resume=True, pyramid_min_side=40
    )
    assert 0 < result.blocks_done_now < result.blocks_total
    for name in ("mean", "std", "entropy"):
        np.testing.assert_array_equal(
            open_image(out / name).data.compute(), open_image(reference / name).data.compute()
        )


def test_regression_model_and_uint16_output(noisy_nuclei, tmp_path):
    model = tiny_model(tmp_path / "reg", objective="regression")
    settings = SETTINGS.changed(dtype="uint16", output_scale="input")
    out = tmp_path / "reg.zarr"
    result = restore(noisy_nuclei, out, model=model, settings=settings)
    mean = open_image(out / "mean")
    assert mean.data.dtype == np.uint16
    # a one-pass model has no spread: only the mean is written (outputs table, sampled_only rows)
    assert result.manifest["outputs"] == ["mean"]
    assert not (out / "std").exists() and not (out / "entropy").exists()
    assert result.manifest["cost"]["network_evaluations"] == result.manifest["cost"]["tiles"]
    assert result.manifest["clipped_pixels"] >= 0
    assert result.manifest["sampling"] == {}  # one pass: no steps to warn about


def test_precision_is_applied_and_recorded(noisy_nuclei, model, reference, tmp_path):
    """bf16 network arithmetic changes the mean only slightly; fp32 is what the reference
    run used where the CPU has no native bf16; the manifest says what each block ran with."""
    means = {}
    for precision in ("fp32", "bf16"):
        settings = SETTINGS.changed(precision=precision)
        result = restore(
            noisy_nuclei,
            tmp_path / f"{precision}.zarr",
            model=model,
            settings=settings,
            pyramid_min_side=40,
        )
        assert result.manifest["settings"]["precision"] == precision
        assert result.manifest["ran_on"] == [f"cpu {precision}"]
        means[precision] = open_image(tmp_path / f"{precision}.zarr" / "mean").data.compute()
    fp32, bf16 = means["fp32"], means["bf16"]
    assert not np.array_equal(fp32, bf16)
    spread = np.percentile(fp32, 99) - np.percentile(fp32, 1)
    assert np.median(np.abs(fp32 - bf16)) < 0.02 * spread
    auto = open_image(reference / "mean").data.compute()
    np.testing.assert_array_equal(auto, bf16 if native_bf16(torch.device("cpu")) else fp32)
    with pytest.raises(UsageError, match="precision"):
        restore(
            noisy_nuclei,
            tmp_path / "x.zarr",
            model=model,
            settings=SETTINGS.changed(precision="fp16"),
        )
    assert not (tmp_path / "x.zarr").exists()


def test_refuses_bad_requests_before_writing(noisy_nuclei, model, reference, tmp_path):
    with pytest.raises(CannotCreateOutputError, match="--overwrite"):
        restore(noisy_nuclei, reference, model=model, settings=SETTINGS)
    runner = CliRunner()
    missing = runner.invoke(cli, ["run", str(tmp_path / "nope.zarr"), "--model", str(model)])
    assert missing.exit_code == 66
    bad_tile = runner.invoke(
        cli,
        [
            "run",
            str(noisy_nuclei),
            "-o",
            str(tmp_path / "x.zarr"),
            "--model",
            str(model),
            "--tile",
            "33",
        ],
    )
    assert bad_tile.exit_code == 65 and "tile" in bad_tile.output
    assert not (tmp_path / "x.zarr").exists()
    broken = tmp_path / "broken"
    tiny_model(broken)
    (broken / "model.safetensors").write_bytes(b"not a model")
    bad_model = runner.invoke(
        cli, ["run", str(noisy_nuclei), "-o", str(tmp_path / "y.zarr"), "--model", str(broken)]
    )
    assert bad_model.exit_code == 78
    assert not (tmp_path / "y.zarr").exists()


def _worker_environment():
    import os

    import torch

    return (
        os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        os.environ.get("OMP_NUM_THREADS"),
        torch.get_num_threads(),
    )


def test_workers_start_without_dask_malloc_trim_setting():
    from bigrestore.run.cluster import open_client

    with open_client(ClusterSpec(workers=1)) as client:
        [(trim, omp, _)] = client.run(_worker_environment).values()
    assert trim is None and omp is None


def test_more_gpus_than_visible_are_refused_before_anything_is_written(
    noisy_nuclei, model, tmp_path
):
    from bigrestore.run.cluster import gpu_worker_names

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out = tmp_path / "gpus.zarr"
    with pytest.raises(UsageError, match=f"--gpus {visible + 1}: torch sees {visible} GPU"):
        restore(
            noisy_nuclei,
            out,
            model=model,
            settings=SETTINGS,
            cluster=ClusterSpec(gpus=visible + 1, workers=visible + 1),
        )
    assert not out.exists()
    # without dask-cuda, worker gpu-K computes on GPU K (devices.pick_device reads the name)
    assert gpu_worker_names(3) == ["gpu-0", "gpu-1", "gpu-2"]


def test_saved_samples_average_to_the_mean_and_tile_defaults_to_twice_the_training_patch(
    noisy_nuclei, model, tmp_path
):
    settings = run_settings(
        samples=3, steps=2, batch=4, chunk=64, save_samples=True, dtype="float32"
    )
    out = tmp_path / "s.zarr"
    result = restore(noisy_nuclei, out, model=model, settings=settings)
    assert (
        result.manifest["settings"]["tile"] == 64 and result.manifest["settings"]["overlap"] == 16
    )
    samples = [open_image(out / "samples" / f"{k:02d}.zarr").data.compute() for k in range(3)]
    validate_ngff(out / "samples" / "00.zarr")
    mean = open_image(out / "mean").data.compute()
    np.testing.assert_allclose(np.mean(samples, axis=0), mean, rtol=1e-4, atol=1e-2)
    assert not np.array_equal(samples[0], samples[1])


def test_outputs_keep_the_inputs_ngff_version_unless_asked(model, tmp_path):
    """A 0.4 (zarr v2) input is opened by 0.4 viewers; its outputs are written as 0.4 too."""
    values = np.random.default_rng(0).integers(0, 4000, (40, 40)).astype(np.uint16)
    meta = ImageMeta("yx", (1.0, 1.0), (0.0, 0.0), (None, None))
    source = write_image(tmp_path / "v04.zarr", values, meta, ngff_version="0.4")
    cluster = ClusterSpec(workers=1)
    inherited = restore(
        source, tmp_path / "a.zarr", model=model, settings=SETTINGS, cluster=cluster
    )
    assert (
        inherited.manifest["ngff_version"] == "0.4" and (tmp_path / "a.zarr" / ".zgroup").is_file()
    )
    assert open_image(tmp_path / "a.zarr" / "mean").ngff_version == "0.4"
    asked = restore(source, tmp_path / "b.zarr", model=model, settings=SETTINGS, cluster=cluster,
                    ngff_version="0.5")  # fmt: skip
    assert asked.manifest["ngff_version"] == "0.5" and (tmp_path / "b.zarr" / "zarr.json").is_file()


def test_channel_colours_and_windows_follow_the_data(model, tmp_path):
    """The outputs show each channel in the input's OMERO colour (napari, vizarr), and a
    converted 16-bit image opens with a window around its data, not 0-65535 (black)."""
    values = np.random.default_rng(0).integers(100, 600, (2, 40, 40)).astype(np.uint16)
    meta = ImageMeta("cyx", (1.0,) * 3, (0.0,) * 3, (None,) * 3, ("DAPI", "GFP"), "two",
                     ("0000FF", "00FF00"))  # fmt: skip
    source = write_image(tmp_path / "two.zarr", values, meta)
    assert open_image(source).meta.channel_colors == ("0000FF", "00FF00")
    out = tmp_path / "out.zarr"
    restore(source, out, model=model, settings=SETTINGS, channels=("GFP",),
            cluster=ClusterSpec(workers=1))  # fmt: skip
    mean = open_image(out / "mean").meta
    assert mean.channel_names == ("GFP",) and mean.channel_colors == ("00FF00",)
    import tifffile

    tifffile.imwrite(tmp_path / "raw.tif", values[0])
    result = CliRunner().invoke(
        cli, ["convert", str(tmp_path / "raw.tif"), str(tmp_path / "raw.zarr")]
    )
    assert result.exit_code == 0, result.output
    attrs = zarr.open_group(str(tmp_path / "raw.zarr"), mode="r").attrs
    window = (attrs.get("ome") or dict(attrs))["omero"]["channels"][0]["window"]
    assert 100 <= window["start"] < window["end"] < 600
