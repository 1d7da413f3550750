"""`bigrestore demo`: bundled sample + bundled model through run and evaluate; outputs validate."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import validate_ngff

from bigrestore.cli import cli
from bigrestore.model.files import load_model
from bigrestore.run.settings import bundled_model_path


def test_bundled_model_loads_and_has_a_card():
    net, info = load_model(bundled_model_path())
    spec = info.meta
    assert spec["objective"] == "diffusion"
    assert (bundled_model_path() / "MODEL_CARD.md").read_text().count("bigrestore train") >= 1


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--samples", "2", "--steps", "2"])
    assert result.exit_code == 0, result.output
    for name in ("mean", "std", "entropy"):
        validate_ngff(out / "restored.zarr" / name)
    assert (out / "report" / "index.html").stat().st_size > 1000
    metrics = json.loads((out / "metrics.json").read_text())
    assert "raw" in metrics["methods"]
    again = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert again.exit_code == 73
