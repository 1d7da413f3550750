"""The worked examples of docs/architecture.md, run: a sampler, an objective and an output volume
are each added by one table entry (monkeypatched here) and the rest of the pipeline follows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import nuclei_stack
from test_diffusion import GaussianEps, _cond, _keys
from test_run import tiny_model

from bigrestore import outputs
from bigrestore.diffusion import objectives, samplers
from bigrestore.diffusion.objectives import Objective, noisy_targets
from bigrestore.diffusion.repeated import sample_repeated
from bigrestore.diffusion.samplers import Sampler, SamplerSettings, clip_prediction
from bigrestore.diffusion.schedule import Schedule
from bigrestore.io.arrays import read_region
from bigrestore.io.meta import default_meta
from bigrestore.io.runstore import RunStore
from bigrestore.io.write import write_image
from bigrestore.run.block import compute_block
from bigrestore.run.plan import make_plan
from bigrestore.run.settings import run_settings


def euler(denoise, y, noise, schedule, ts, settings):
    """The docs' example: deterministic DDIM written as an explicit Euler step."""
    ab = schedule.alpha_bar
    for t, s in zip(ts[:-1], ts[1:], strict=True):
        x0, eps = clip_prediction(y, *denoise(y, ab[t]), ab[t], settings.clip_x0)
        y = math.sqrt(ab[s]) * x0 + math.sqrt(1.0 - ab[s]) * eps
    return y


def x0_loss(net, cond, y0, inputs):
    y_t, _, ab, _, _ = noisy_targets(y0, inputs)
    return ((net(cond, y_t, ab.to(y0.device, torch.float32)).float() - y0) ** 2).mean()


def x0_denoise(out, y, ab):
    return out, (y - math.sqrt(ab) * out) / math.sqrt(1.0 - ab)


def test_a_sampler_is_one_table_entry(monkeypatch):
    monkeypatch.setitem(
        samplers.SAMPLERS, "euler", Sampler("euler", "first-order ODE", euler, stochastic=False)
    )
    schedule = Schedule(T=40)
    common = dict(steps=8, spacing="uniform", clip_x0=False)
    new = sample_repeated(
        GaussianEps(),
        _cond(2, 8),
        _keys(2),
        2,
        schedule,
        SamplerSettings(sampler="euler", **common),
    )
    ddim0 = sample_repeated(
        GaussianEps(),
        _cond(2, 8),
        _keys(2),
        2,
        schedule,
        SamplerSettings(sampler="ddim", eta=0.0, **common),
    )
    assert torch.equal(new.mean, ddim0.mean)  # the same algorithm, written differently


def _image_and_model(tmp_path: Path, objective: str) -> tuple[Path, Path]:
    image = write_image(
        tmp_path / "in.zarr", nuclei_stack()[30, 100:164, 100:164], default_meta("yx")
    )
    tiny_model(tmp_path / "model", objective)
    return image, tmp_path / "model"


def _run_in_process(image: Path, model: Path, output: Path, **settings) -> None:
    """The plan and every block's stages in this process (a Dask worker process would not see
    the monkeypatched tables)."""
    plan = make_plan(image, output, model, run_settings(**settings), None, None, "cpu", 1)
    store = RunStore(output, "0.5")
    output.mkdir()
    store.ensure_layout({"settings": plan.settings.to_dict()}, plan.level0, plan.done_shape)
    from bigrestore.model.files import load_model

    net, _ = load_model(model)
    for task in plan.tasks:
        compute_block(plan.job, task, net, torch.device("cpu"))


def test_an_objective_is_one_table_entry(monkeypatch, tmp_path):
    x0 = Objective(
        name="x0",
        summary="the network predicts the clean image",
        sampled=True,
        loss=x0_loss,
        denoise=x0_denoise,
    )
    monkeypatch.setitem(objectives.OBJECTIVES, "x0", x0)
    image, model = _image_and_model(tmp_path, "x0")  # the model file accepts the new name
    _run_in_process(
        image,
        model,
        tmp_path / "out.zarr",
        samples=2,
        steps=3,
        tile=32,
        overlap=8,
        chunk=32,
        clip_x0=False,
    )
    std = read_region(str(tmp_path / "out.zarr" / "std" / "0"), (slice(None), slice(None)))
    assert (
        std.shape == (64, 64) and np.isfinite(std).all() and std.max() > 0
    )  # sampled: it has a spread


def test_an_output_volume_is_one_table_row(monkeypatch, tmp_path):
    row = outputs.OutputVolume(
        "variance", "std", "spread", "float32", "pixel std, again", sampled_only=True
    )
    monkeypatch.setattr(outputs, "OUTPUTS", (*outputs.OUTPUTS, row))
    image, model = _image_and_model(tmp_path, "diffusion")
    _run_in_process(
        image, model, tmp_path / "out.zarr", samples=2, steps=3, tile=32, overlap=8, chunk=32
    )
    every = (slice(None), slice(None))
    np.testing.assert_array_equal(
        read_region(str(tmp_path / "out.zarr" / "variance" / "0"), every),
        read_region(str(tmp_path / "out.zarr" / "std" / "0"), every),
    )


@pytest.mark.parametrize("table", ["SAMPLERS", "OBJECTIVES"])
def test_the_command_line_choices_come_from_the_tables(table):
    from click.testing import CliRunner

    from bigrestore.cli import cli

    names = samplers.SAMPLERS if table == "SAMPLERS" else objectives.OBJECTIVES
    command = ["run", "--help"] if table == "SAMPLERS" else ["train", "--help"]
    text = CliRunner().invoke(cli, command).output.replace("\n", " ")
    assert all(name in text for name in names)
