"""Fine-tuning (``bigrestore train --init-from``): the run starts from the model's weights and
network, records where it started, and refuses what cannot work before writing anything."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_train import TINY, one_torch_thread, tiny, w2s  # noqa: F401  (fixtures)

from bigrestore.cli import cli
from bigrestore.errors import IncompatibleModelError, UsageError
from bigrestore.model.files import load_model, read_model
from bigrestore.run.settings import bundled_model_path
from bigrestore.train import train


def _largest_change(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float((pa.detach() - pb.detach()).abs().max())
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True)
    )


def test_fine_tuning_starts_from_the_model_and_records_it(w2s, tmp_path):  # noqa: F811
    pairs = [(w2s["low"], w2s["high"])]
    start = tmp_path / "start"
    train(tiny(objective="v", epochs=1, steps_per_epoch=6), pairs, start, device="cpu")
    # Another architecture and objective in the config: the starting model's network wins.
    wider = {**TINY["model"], "base_channels": 16}
    still = tiny(model=wider, lr=1e-12, ema=0.0, epochs=1, steps_per_epoch=1)
    tuned = tmp_path / "tuned"
    train(still, pairs, tuned, device="cpu", init_from=start)
    net0, info0 = load_model(start)
    net1, info1 = load_model(tuned)
    assert info1.unet == info0.unet and info1.objective.name == "v"
    assert info1.provenance["init_from"]["weights_sha256"] == info0.weights_sha256
    assert (
        _largest_change(net0, net1) < 2e-3
    )  # lr 1e-12: as given, up to the weight renormalisation
    # The check can fail: the same run from scratch starts elsewhere.
    scratch = tmp_path / "scratch"
    train(tiny(objective="v", lr=1e-12, ema=0.0, epochs=1, steps_per_epoch=1), pairs, scratch)
    assert _largest_change(net0, load_model(scratch)[0]) > 1e-2
    assert load_model(scratch)[1].provenance["init_from"] is None

    with pytest.raises(UsageError, match="--init-from"):
        train(still, pairs, tuned, resume=True, init_from=start)
    damaged = tmp_path / "damaged"
    shutil.copytree(start, damaged)
    (damaged / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(IncompatibleModelError):
        train(still, pairs, tmp_path / "never", init_from=damaged)
    assert not (tmp_path / "never").exists()


def test_cli_fine_tunes_the_bundled_model(w2s, tmp_path):  # noqa: F811
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": 1, "steps_per_epoch": 2}))
    out = tmp_path / "mine"
    args = ["train", "--low", str(w2s["low"]), "--high", str(w2s["high"])]
    result = CliRunner().invoke(
        cli, [*args, "--config", str(config), "--out", str(out), "--init-from", "bundled"]
    )
    assert result.exit_code == 0, result.output
    bundled = read_model(bundled_model_path())
    mine = read_model(out)
    assert mine.unet.base_channels == bundled.unet.base_channels != TINY["model"]["base_channels"]
    assert mine.provenance["init_from"]["weights_sha256"] == bundled.weights_sha256
    missing = CliRunner().invoke(
        cli, [*args, "--config", str(config), "--out", str(tmp_path / "x"), "--init-from", "nope"]
    )
    assert missing.exit_code == 66 and not (tmp_path / "x").exists()
