"""The CUDA path (device placement, bf16 autocast, one worker per GPU, the automatic network
batch): runs where a GPU is present, skipped elsewhere. benchmarks/gpu_check.sh runs it on a
lent GPU machine, with the throughput and end-to-end measurements beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_run import SETTINGS, tiny_model

from bigrestore.devices import pick_device
from bigrestore.errors import UsageError
from bigrestore.io.images import open_image
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image
from bigrestore.model.files import load_model
from bigrestore.run.batching import batch_cap, dummy_forward, resolve_batch
from bigrestore.run.cluster import ClusterSpec, check_gpus, gpu_worker_names
from bigrestore.run.restore import restore
from bigrestore.run.settings import bundled_model_path

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One small input restored on the CPU (fp32, one worker) and on GPU 0: twice at the default
    precision (bf16 where native) and once at fp32. Returns {name: (mean array, manifest)}."""
    tmp = tmp_path_factory.mktemp("gpu")
    rng = np.random.default_rng(0)
    image = rng.normal(1000, 100, size=(2, 80, 72)).astype(np.float32)
    write_image(tmp / "in.zarr", image, ImageMeta("zyx", (1.0,) * 3, (0.0,) * 3, (None,) * 3))
    model = tiny_model(tmp / "model")
    fp32 = SETTINGS.changed(precision="fp32")
    plans = {
        "cpu": ({"device": "cpu", "cluster": ClusterSpec(workers=1)}, fp32),
        "gpu": ({"cluster": ClusterSpec(gpus=1), "device": "cuda"}, SETTINGS),
        "gpu-again": ({"cluster": ClusterSpec(gpus=1), "device": "cuda"}, SETTINGS),
        "gpu-fp32": ({"cluster": ClusterSpec(gpus=1)}, fp32),
    }
    out = {}
    for name, (where, settings) in plans.items():
        result = restore(
            tmp / "in.zarr", tmp / f"{name}.zarr", model=model, settings=settings, **where
        )
        out[name] = (open_image(tmp / f"{name}.zarr" / "mean").data.compute(), result.manifest)
    return out


def test_gpu_run_matches_cpu_within_bf16_tolerance(runs):
    a, b = runs["cpu"][0], runs["gpu"][0]
    assert a.shape == b.shape
    # bf16 autocast of the network; sampler arithmetic stays fp32.
    assert np.abs(a - b).mean() < 0.05 * (a.std() + 1e-6)


def test_gpu_fp32_run_is_close_to_the_cpu(runs):
    a, b = runs["cpu"][0], runs["gpu-fp32"][0]
    # cuDNN may use TF32 for fp32 convolutions: close, not equal.
    assert np.abs(a - b).mean() < 0.01 * (a.std() + 1e-6)
    assert runs["gpu-fp32"][1]["ran_on"] == ["cuda:0 fp32"]


def test_gpu_runs_are_bit_identical_and_ran_on_the_gpu(runs):
    assert np.array_equal(runs["gpu"][0], runs["gpu-again"][0])
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert runs["gpu"][1]["ran_on"] == [f"cuda:0 {precision}"]
    assert runs["cpu"][1]["ran_on"] == ["cpu fp32"]


def test_auto_batch_is_measured_once_and_fits():
    device = torch.device("cuda", 0)
    net, _ = load_model(bundled_model_path(), device=device)
    tile = 2 * net.config.train_resolution
    batch = resolve_batch(None, net, tile, 1, device, torch.bfloat16)
    assert 1 <= batch <= batch_cap(tile) and batch & (batch - 1) == 0  # a power of two
    assert resolve_batch(None, net, tile, 1, device, torch.bfloat16) == batch  # cached
    dummy_forward(net, tile, 1, device, torch.bfloat16)(batch)  # and it runs
    assert resolve_batch(8, net, tile, 1, device) == 8


def test_device_placement_and_gpu_count():
    assert pick_device("cuda") == torch.device("cuda", 0)  # outside a worker: GPU 0
    assert pick_device("auto").type == "cuda"
    assert pick_device("cpu") == torch.device("cpu")
    assert gpu_worker_names(torch.cuda.device_count())[0] == "gpu-0"
    check_gpus(torch.cuda.device_count())
    with pytest.raises(UsageError, match="GPU"):
        check_gpus(torch.cuda.device_count() + 1)
