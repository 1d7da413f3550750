"""End-to-end training on small crops of the real W2S pairs: loss falls, the model file loads
and restores, resume repeats the uninterrupted run, the regression baseline, CLI exit codes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from conftest import data_path

from bigrestore.cli import cli
from bigrestore.errors import CannotCreateOutputError, IncompatibleModelError, ResumableInterrupt
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.model.files import load_model
from bigrestore.train import TrainConfig, train
from bigrestore.train.directory import checkpoint_config

TINY = {
    "model": {
        "base_channels": 8,
        "channel_mult": [1, 2],
        "blocks_per_level": 1,
        "attn_resolutions": [],
        "channels_per_head": 8,
    },
    "patch": 32,
    "batch": 8,
    "lr": 5e-3,
    "epochs": 3,
    "steps_per_epoch": 8,
    "val_patches": 4,
    "val_samples": 2,
    "val_sampler": "ddim",
    "val_steps": 2,
    "val_fraction": 0.25,
    "augment": {"blur_p": 0.2, "blur_sigma": [0.5, 1.5]},
    "foreground_bias": 0.5,
    "workers": 0,
    "seed": 1,
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from 2 threads, and on a loaded 2-core machine two spinning
    OpenMP threads made these tests 8x slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **changes})


@pytest.fixture(scope="module")
def w2s(tmp_path_factory) -> dict[str, Path]:
    """4 fields x 1 channel x 128² crops of W2S train (avg1 / avg400) as OME-Zarr stores."""
    root = tmp_path_factory.mktemp("w2s")
    stores = {}
    for kind in ("low", "high"):
        crop = tifffile.imread(data_path(f"w2s/train_{kind}.tif"))[:4, 1:2, 128:256, 128:256]
        stores[kind] = write_image(
            root / f"{kind}.zarr", crop, default_meta("tcyx", ("ch1",)), chunks=(1, 1, 64, 64)
        )
    return stores


def _losses(out: Path) -> list[float]:
    with open(out / "steps.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_diffusion_loss_falls_and_the_model_file_restores(w2s, tmp_path):
    out = tmp_path / "model"
    records = []
    result = train(
        tiny(epochs=4, steps_per_epoch=10),
        [(w2s["low"], w2s["high"])],
        out,
        device="cpu",
        progress=records.append,
    )
    losses = _losses(out)
    assert len(losses) == result.steps == 40
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.8 * first, (first, last)
    assert [r["kind"] for r in records].count("epoch") == 4 and records[0]["kind"] == "start"
    assert len(_metrics(out)) == 4 and result.best_epoch is not None

    net, info = load_model(out)
    meta = info.meta
    assert meta["objective"] == "diffusion" and meta["schedule"] == {
        "name": "cosine",
        "T": 200,
        "s": 0.008,
    }
    norm = meta["normalization"]
    assert norm["method"] == "percentile" and (norm["p_low"], norm["p_high"]) == (1.0, 99.8)
    assert 0 <= norm["target"]["low"] < norm["target"]["high"] <= 255
    prov = meta["provenance"]
    assert prov["data"]["split"] == "region" and prov["data"]["train"][0]["low"] == str(
        w2s["low"].resolve()
    )
    assert len(prov["validation_curve"]) == 4 and prov["best_epoch"] == result.best_epoch
    assert (
        prov["config"] == tiny(epochs=4, steps_per_epoch=10).to_dict()
        and prov["torch"] == torch.__version__
    )
    assert net.config.train_resolution == 32

    from bigrestore.io.images import open_image
    from bigrestore.run.cluster import ClusterSpec
    from bigrestore.run.restore import restore
    from bigrestore.run.settings import run_settings

    image = tmp_path / "image.zarr"
    write_image(
        image, tifffile.imread(data_path("w2s/val_low.tif"))[0, 0, :64, :64], default_meta("yx")
    )
    restored = restore(
        image,
        tmp_path / "restored.zarr",
        model=out,
        device="cpu",
        cluster=ClusterSpec(workers=1),
        settings=run_settings(samples=2, steps=2, tile=32, overlap=8, chunk=64, batch=4),
    )
    mean = open_image(restored.output / "mean").data.compute()
    assert mean.shape == (64, 64) and np.isfinite(mean).all()


def test_interrupted_run_resumes_to_the_same_curve(w2s, tmp_path):
    config = tiny()
    pairs = [(w2s["low"], w2s["high"])]
    whole = train(config, pairs, tmp_path / "whole", device="cpu")

    def stop_in_epoch_two(record):
        if record["kind"] == "step" and record["step"] == 11:
            raise KeyboardInterrupt

    out = tmp_path / "split"
    with pytest.raises(ResumableInterrupt, match="--resume"):
        train(config, pairs, out, device="cpu", progress=stop_in_epoch_two)
    assert len(_losses(out)) == 11 and len(_metrics(out)) == 1
    assert checkpoint_config(out) == config
    with pytest.raises(CannotCreateOutputError):
        train(config, pairs, out, device="cpu")
    with pytest.raises(IncompatibleModelError, match="lr"):
        train(config.replace(lr=1e-3), pairs, out, device="cpu", resume=True)
    resumed = train(None, pairs, out, device="cpu", resume=True)
    assert resumed.steps == whole.steps == 24
    np.testing.assert_allclose(_losses(out), _losses(tmp_path / "whole"), rtol=1e-6)
    assert [r["step"] for r in _metrics(out)] == ["8", "16", "24"]
    assert resumed.best_epoch == whole.best_epoch
    a, _ = load_model(out)
    b, _ = load_model(tmp_path / "whole")
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=1e-5, atol=1e-6)


def test_regression_objective_and_time_budget(w2s, tmp_path):
    out = tmp_path / "care"
    config = tiny(objective="regression", loss="l2", lr=2e-2, epochs=3, steps_per_epoch=10)
    result = train(config, [(w2s["low"], w2s["high"])], out, device="cpu")
    losses = _losses(out)
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    maes = [r["val_mae"] for r in result.history]
    assert maes[-1] < 0.85 * maes[0], maes
    net, info = load_model(out)
    meta = info.meta
    assert meta["objective"] == "regression" and "one-pass" in meta["provenance"]["val_metric"]
    assert meta["provenance"]["config"]["loss"] == "l2"
    assert all(r["val_mae"] is not None for r in result.history)
    budget = train(
        tiny(time_budget_minutes=1e-3),
        [(w2s["low"], w2s["high"])],
        tmp_path / "short",
        device="cpu",
    )
    assert (
        budget.stopped_early
        and budget.steps < budget.total_steps
        and not budget.history[-1]["complete"]
    )


def test_cli_trains_refuses_a_used_directory_and_resumes(w2s, tmp_path):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": 1, "steps_per_epoch": 3}))
    out = tmp_path / "m"
    args = [
        "train",
        "--low",
        str(w2s["low"]),
        "--high",
        str(w2s["high"]),
        "--config",
        str(config),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--channel",
        "ch1",
    ]
    first = CliRunner().invoke(cli, [*args, "--max-minutes", "0.001"])
    assert first.exit_code == 0, first.output
    assert "stopped by the time budget" in first.output and len(_losses(out)) == 1
    assert (out / "model.json").is_file() and (out / "checkpoint" / "latest.json").is_file()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 73 and "--resume" in again.output
    resume = [*args[:5], "--out", str(out), "--device", "cpu", "--channel", "ch1", "--resume"]
    resumed = CliRunner().invoke(cli, [*resume, "--max-minutes", "60"])
    assert resumed.exit_code == 0, resumed.output
    assert "trained 3/3 steps" in resumed.output and len(_losses(out)) == 3
    more = CliRunner().invoke(
        cli, [*args, "--epochs", "2", "--objective", "regression", "--overwrite"]
    )
    assert more.exit_code == 0, more.output
    assert load_model(out)[1].meta["objective"] == "regression" and len(_losses(out)) == 6
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    foreign = CliRunner().invoke(cli, [*args[:-6], "--out", str(tmp_path / "other"), "--overwrite"])
    assert foreign.exit_code == 73 and (tmp_path / "other" / "notes.txt").exists()
    unpaired = CliRunner().invoke(
        cli,
        [
            "train",
            "--low",
            str(w2s["low"]),
            "--low",
            str(w2s["low"]),
            "--high",
            str(w2s["high"]),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert unpaired.exit_code == 2
