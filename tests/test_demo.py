"""`bigrestore demo`: bundled sample + bundled model through run and evaluate; outputs validate."""

from __future__ import annotations

import json

import numpy as np
import zarr
from click.testing import CliRunner
from conftest import validate_ngff

from bigrestore.cli import cli
from bigrestore.model.files import load_model
from bigrestore.run.settings import bundled_model_path


def test_bundled_model_loads_and_has_a_card():
    net, info = load_model(bundled_model_path())
    spec = info.meta
    assert spec["objective"] == "v"  # the few-evaluation objective (docs/benchmarks.md)
    assert (bundled_model_path() / "MODEL_CARD.md").read_text().count("bigrestore train") >= 1


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--samples", "2", "--steps", "2"])
    assert result.exit_code == 0, result.output
    for name in ("mean", "std", "entropy"):
        validate_ngff(out / "restored.zarr" / name)
    assert (out / "report" / "index.html").stat().st_size > 1000
    for name in ("mean", "std", "entropy"):  # viewers open each volume with a useful contrast
        group = zarr.open_group(str(out / "restored.zarr" / name), mode="r")
        window = dict(group.attrs)["ome"]["omero"]["channels"][0]["window"]
        low, high = np.percentile(np.asarray(group["0"][...], dtype=np.float64), [1, 99])
        assert window["start"] <= low and high <= window["end"], (name, window, low, high)
        assert window["end"] > window["start"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "raw" in metrics["methods"]
    again = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert again.exit_code == 73
