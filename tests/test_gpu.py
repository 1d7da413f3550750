"""The CUDA path (device placement, bf16 autocast, one worker per GPU): runs where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_run import SETTINGS, tiny_model

from bigrestore.io.images import open_image
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_run_matches_cpu_within_bf16_tolerance(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(1000, 100, size=(2, 80, 72)).astype(np.float32)
    write_image(tmp_path / "in.zarr", image, ImageMeta("zyx", (1.0,) * 3, (0.0,) * 3, (None,) * 3))
    model = tiny_model(tmp_path / "model")
    cpu = restore(
        tmp_path / "in.zarr", tmp_path / "cpu.zarr", model=model, settings=SETTINGS, device="cpu"
    )
    gpu = restore(
        tmp_path / "in.zarr",
        tmp_path / "gpu.zarr",
        model=model,
        settings=SETTINGS,
        cluster=ClusterSpec(gpus=1, workers=1),
        device="cuda",
    )
    assert cpu.blocks_total == gpu.blocks_total
    a = open_image(tmp_path / "cpu.zarr" / "mean").data.compute()
    b = open_image(tmp_path / "gpu.zarr" / "mean").data.compute()
    # bf16 autocast of the network; sampler arithmetic stays fp32.
    assert np.abs(a - b).mean() < 0.05 * (a.std() + 1e-6)
