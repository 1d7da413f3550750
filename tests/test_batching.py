"""Automatic network batch (bigrestore.run.batching): the search, its cache, and that auto keeps
CPU runs at the fixed batch 8. The CUDA measurement is replaced by fakes that raise
torch.cuda.OutOfMemoryError above a size; tests/test_gpu.py measures on a real GPU."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from test_run import tiny_model

from bigrestore.errors import UsageError
from bigrestore.io.images import open_image
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image
from bigrestore.model.unet import ConditionalUNet, UNetConfig
from bigrestore.run import batching
from bigrestore.run.batching import (
    CPU_BATCH,
    batch_cap,
    dummy_forward,
    largest_batch,
    resolve_batch,
    too_big,
    trial,
)
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import RunSettings, run_settings


def oom_above(limit: int, tried: list[int] | None = None):
    """A run(batch) that raises CUDA's out-of-memory error above ``limit`` items."""

    def run(batch: int) -> None:
        if tried is not None:
            tried.append(batch)
        if batch > limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: tried {batch} items")

    return run


@pytest.mark.parametrize(
    "limit, cap, expected",
    [(100, 1024, 64), (8, 1024, 8), (1000, 256, 256), (300, 200, 128), (5, 1024, 4), (1, 64, 1)],
)
def test_largest_batch_doubles_until_out_of_memory_or_cap(limit, cap, expected):
    tried: list[int] = []
    assert largest_batch(trial(oom_above(limit, tried)), cap=cap) == expected
    assert len(tried) == len(set(tried)), "each size is tried once"
    assert max(tried) <= max(cap, CPU_BATCH)


def test_largest_batch_tries_growing_sizes_from_8():
    tried: list[int] = []
    largest_batch(trial(oom_above(40, tried)))
    assert tried == [8, 16, 32, 64]
    tried.clear()
    largest_batch(trial(oom_above(3, tried)))
    assert tried == [8, 4, 2]


def test_nothing_fits_gives_one_and_other_errors_propagate():
    assert largest_batch(trial(oom_above(0))) == 1

    def broken(batch: int) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        largest_batch(trial(broken))


def test_cleanup_runs_after_every_try():
    cleaned: list[int] = []
    largest_batch(trial(oom_above(20), cleanup=lambda: cleaned.append(1)))
    assert len(cleaned) == 3  # 8, 16 fit, 32 does not


@pytest.mark.parametrize(
    "message, expected",
    [
        ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
        ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
        ("input tensor must fit into 32-bit index math", True),
        ("Expected all tensors to be on the same device", False),
    ],
)
def test_errors_that_mean_too_big(message, expected):
    assert too_big(RuntimeError(message)) is expected
    assert too_big(torch.cuda.OutOfMemoryError("x"))


def test_cap_keeps_one_call_at_two_megapixels():
    assert (batch_cap(128), batch_cap(256), batch_cap(512), batch_cap(4096)) == (128, 32, 8, 1)


class NeverCalled(torch.nn.Module):
    def forward(self, *args):
        raise AssertionError("auto on a CPU must not run the network")


def test_requested_batch_is_kept_and_auto_on_cpu_is_the_fixed_8():
    net = NeverCalled()
    assert resolve_batch(5, net, 128, 1, "cpu") == 5
    assert resolve_batch(None, net, 128, 1, "cpu") == CPU_BATCH == 8
    assert resolve_batch(None, net, 128, 1, torch.device("cpu"), torch.bfloat16) == 8


def test_auto_on_cuda_is_measured_once_per_network_tile_and_device(monkeypatch):
    measured: list[tuple] = []

    def fake_trial(net, tile, channels, device, autocast):
        measured.append((tile, channels, str(device), autocast))
        return trial(oom_above(50_000 // tile))

    monkeypatch.setattr(batching, "cuda_trial", fake_trial)
    net = NeverCalled()
    first = resolve_batch(None, net, 128, 1, "cuda:0", torch.bfloat16)
    assert first == 128  # 390 fit, the cap for 128² tiles is 128
    assert resolve_batch(None, net, 128, 1, "cuda:0", torch.bfloat16) == first
    assert resolve_batch(None, net, 512, 1, "cuda:0", torch.bfloat16) == 8  # 97 fit, cap 8
    assert resolve_batch(None, net, 400, 1, "cuda:0", torch.bfloat16) == 8  # 125 fit, cap 13
    assert resolve_batch(3, net, 999, 1, "cuda:0") == 3  # requested: no measurement
    assert len(measured) == 3
    other = NeverCalled()
    resolve_batch(None, other, 128, 1, "cuda:0", torch.bfloat16)
    assert len(measured) == 4, "another network is measured on its own"
    del other
    gc.collect()
    assert len(batching._RESOLVED) == 1, "a dropped network's entry goes with it"


def tiny_net() -> ConditionalUNet:
    config = UNetConfig(
        base_channels=8,
        channel_mult=(1, 2),
        blocks_per_level=1,
        attn_resolutions=(),
        train_resolution=16,
        channels_per_head=8,
    )
    return ConditionalUNet(config).eval()


def test_dummy_forward_is_the_sampler_call_and_counts_as_too_big_when_it_raises():
    net = tiny_net()
    run = dummy_forward(net, 32, 1, torch.device("cpu"), None)
    run(3)  # shapes as the sampler makes them; no error

    calls: list[int] = []
    original = net.forward

    def limited(cond, y_t, alpha_bar):
        calls.append(cond.shape[0])
        if cond.shape[0] > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        assert torch.is_inference_mode_enabled()
        return original(cond, y_t, alpha_bar)

    net.forward = limited
    assert largest_batch(trial(dummy_forward(net, 16, 1, torch.device("cpu"), None))) == 16
    assert calls == [8, 16, 32]


def test_settings_batch_none_means_auto_and_is_validated():
    assert RunSettings().batch is None
    assert run_settings(batch=None).batch is None
    assert run_settings(batch=16).batch == 16
    with pytest.raises(UsageError, match="batch"):
        run_settings(batch=0)


def test_cpu_run_with_auto_batch_matches_batch_8_byte_for_byte(tmp_path):
    """Auto on a CPU is the fixed 8, so the bytes are those of --batch 8 (a 1-worker run)."""
    image = np.random.default_rng(0).normal(1000, 100, size=(40, 40)).astype(np.float32)
    write_image(tmp_path / "in.zarr", image, ImageMeta("yx", (1.0,) * 2, (0.0,) * 2, (None,) * 2))
    model = tiny_model(tmp_path / "model")
    means = []
    for batch in (None, 8):
        settings = run_settings(samples=2, sampler="ddim", steps=2, tile=32, overlap=8, batch=batch)
        out = tmp_path / f"out-{batch}.zarr"
        result = restore(
            tmp_path / "in.zarr", out, model=model, settings=settings, device="cpu",
            cluster=ClusterSpec(workers=1),
        )  # fmt: skip
        assert result.manifest["settings"]["batch"] == batch
        means.append(open_image(out / "mean").data.compute())
    assert means[0].dtype == means[1].dtype and np.array_equal(means[0], means[1])
