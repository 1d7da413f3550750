"""Device and precision choice: the same rules for `run` workers and training."""

from __future__ import annotations

import pytest
import torch

from bigrestore.devices import PRECISIONS, autocast_dtype, native_bf16, pick_device
from bigrestore.errors import UsageError
from bigrestore.model.unet import ConditionalUNet, UNetConfig


def test_precision_names_map_to_autocast_dtypes():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if native_bf16(cpu) else None)
    assert set(PRECISIONS) == {"auto", "fp32", "bf16"}
    with pytest.raises(UsageError, match="precision.*fp16"):
        autocast_dtype("fp16", cpu)


def test_cpu_without_cuda_never_picks_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only case")
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="CUDA"):
        pick_device("cuda")


def test_unet_output_does_not_depend_on_input_memory_format():
    """The U-Net runs NHWC inside (faster oneDNN/cuDNN convolutions); callers may pass either layout."""
    torch.manual_seed(0)
    net = ConditionalUNet(
        UNetConfig(
            base_channels=8,
            channel_mult=(1, 2),
            blocks_per_level=1,
            attn_resolutions=(16,),
            train_resolution=32,
            channels_per_head=8,
        )
    ).eval()
    cond, y = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    ab = torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        nchw = net(cond, y, ab)
        nhwc = net(
            cond.contiguous(memory_format=torch.channels_last),
            y.contiguous(memory_format=torch.channels_last),
            ab,
        )
    assert nchw.shape == (3, 1, 32, 32)
    torch.testing.assert_close(nchw, nhwc, rtol=0, atol=1e-6)
