"""Magnitude preservation, shapes and config handling of the EDM2-style layers and U-Net.

Tolerances: single primitives on large random inputs must keep unit RMS within
+-5 % (+-10 % for convolutions, whose zero padding loses a little at borders);
composed layers (attention, blocks, whole U-Net) within [0.8, 1.25].
"""

from __future__ import annotations

import math

import pytest
import torch

from bigrestore.errors import BadInputError, IncompatibleModelError
from bigrestore.model.layers import (
    MPAttention,
    MPConv,
    MPConvTranspose,
    MPFourier,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
)
from bigrestore.model.unet import Block, ConditionalUNet, UNetConfig, count_parameters, noise_label


def rms(t: torch.Tensor) -> float:
    return t.double().pow(2).mean().sqrt().item()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


def tiny(**kw) -> UNetConfig:
    args = dict(
        base_channels=8,
        channel_mult=(1, 2),
        train_resolution=32,
        attn_resolutions=(16,),
        channels_per_head=8,
    )
    args.update(kw)
    return UNetConfig(**args)


# --- primitives -----------------------------------------------------------------------


def test_normalize_gives_unit_rms_per_slice() -> None:
    w = torch.randn(5, 3, 3, 3) * torch.tensor([0.1, 1, 10, 100, 1000]).view(5, 1, 1, 1)
    per_row = normalize(w).pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(per_row, torch.ones(5), atol=2e-3, rtol=0)
    per_pixel = normalize(torch.randn(2, 7, 4, 4) * 9, dim=1).pow(2).mean(dim=1).sqrt()
    torch.testing.assert_close(per_pixel, torch.ones(2, 4, 4), atol=1e-3, rtol=0)


def test_mp_silu_unit_rms() -> None:
    assert rms(mp_silu(torch.randn(1_000_000))) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.8])
def test_mp_sum_unit_rms(t: float) -> None:
    a, b = torch.randn(1_000_000), torch.randn(1_000_000)
    assert rms(mp_sum(a, b, t)) == pytest.approx(1.0, abs=0.05)
    if t == 0.0:
        assert torch.equal(mp_sum(a, b, t), a)


@pytest.mark.parametrize(("na", "nb", "t"), [(3, 13, 0.5), (16, 8, 0.3), (1, 40, 0.7)])
def test_mp_cat_unit_rms_and_balance(na: int, nb: int, t: float) -> None:
    a, b = torch.randn(64, na, 32, 32), torch.randn(64, nb, 32, 32)
    y = mp_cat(a, b, dim=1, t=t)
    assert y.shape == (64, na + nb, 32, 32)
    assert rms(y) == pytest.approx(1.0, abs=0.05)
    # b's share of the energy is t^2 / ((1-t)^2 + t^2), whatever the channel counts.
    share = y[:, na:].double().pow(2).sum() / y.double().pow(2).sum()
    assert share.item() == pytest.approx(t**2 / ((1 - t) ** 2 + t**2), abs=0.02)


def test_mp_fourier_unit_rms_and_formula() -> None:
    fourier = MPFourier(256)
    a = torch.randn(4096)
    y = fourier(a)
    assert y.shape == (4096, 256) and y.dtype == torch.float32
    assert rms(y) == pytest.approx(1.0, abs=0.05)
    expected = math.sqrt(2) * torch.cos(2 * math.pi * (a[7] * fourier.freqs + fourier.phases))
    torch.testing.assert_close(y[7], expected, atol=1e-4, rtol=0)
    assert {"freqs", "phases"} <= set(fourier.state_dict())


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride"),
    [(64, 32, (), 1), (16, 48, (1, 1), 1), (16, 24, (3, 3), 1), (24, 24, (3, 3), 2)],
)
def test_mpconv_unit_rms(cin: int, cout: int, kernel: tuple[int, ...], stride: int) -> None:
    conv = MPConv(cin, cout, kernel, stride=stride)
    x = torch.randn(4096, cin) if kernel == () else torch.randn(8, cin, 32, 32)
    y = conv(x)
    if kernel:
        assert y.shape == (8, cout, 32 // stride, 32 // stride)
    assert rms(y) == pytest.approx(1.0, abs=0.1)
    assert rms(conv(x, gain=2.5)) == pytest.approx(2.5 * rms(y), rel=1e-5)


def test_mpconv_transpose_unit_rms() -> None:
    up = MPConvTranspose(24, 16)
    y = up(torch.randn(8, 24, 16, 16))
    assert y.shape == (8, 16, 32, 32)
    assert rms(y) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("layer", [MPConv(8, 4, (3, 3)), MPConvTranspose(8, 4)])
def test_forced_weight_normalisation(layer: MPConv) -> None:
    x = torch.randn(2, 8, 8, 8)
    y0 = layer(x)
    with torch.no_grad():
        layer.weight.mul_(37.0)  # e.g. weight growth during training
    torch.testing.assert_close(
        layer(x), y0, rtol=1e-4, atol=1e-5
    )  # scale does not leak into output
    layer.train()
    layer(x)
    dims = (1, 2, 3) if type(layer) is MPConv else 1
    stored_rms = layer.weight.detach().pow(2).mean(dim=dims).sqrt()
    torch.testing.assert_close(stored_rms, torch.ones_like(stored_rms), atol=1e-3, rtol=0)


def test_attention_magnitude_and_shape() -> None:
    attn = MPAttention(64, channels_per_head=16)
    assert attn.num_heads == 4
    x = torch.randn(4, 64, 8, 8)
    y = attn(x)
    assert y.shape == x.shape
    assert 0.8 <= rms(y) <= 1.25
    assert not torch.allclose(y, x)


@pytest.mark.parametrize("flavor", ["enc", "dec"])
@pytest.mark.parametrize("attention", [False, True])
def test_block_magnitude(flavor: str, attention: bool) -> None:
    block = Block(24, 16, 32, flavor=flavor, attention=attention, channels_per_head=8, dropout=0.0)
    y = block(torch.randn(4, 24, 16, 16), torch.randn(4, 32))
    assert y.shape == (4, 16, 16, 16)
    assert 0.8 <= rms(y) <= 1.25


# --- U-Net ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "mult"), [(8, (1, 2)), (16, (1, 2)), (8, (1, 2, 2)), (16, (1, 2, 2))]
)
def test_unet_magnitude_preserving_at_init(base: int, mult: tuple[int, ...]) -> None:
    net = ConditionalUNet(tiny(base_channels=base, channel_mult=mult, attn_resolutions=(16,)))
    b = 4
    with torch.no_grad():
        cond, y_t = torch.randn(b, 1, 32, 32), torch.randn(b, 1, 32, 32)
        ab = torch.tensor([0.001, 0.2, 0.7, 0.999])
        feats = net.features(cond, y_t, ab)
        out = net(cond, y_t, ab)
    assert feats.shape == (b, base, 32, 32)
    assert 0.8 <= rms(feats) <= 1.25
    for i in range(b):  # every noise level, not just on average
        assert 0.7 <= rms(feats[i]) <= 1.4
    assert torch.count_nonzero(out) == 0  # zero-initialised output gain


def test_unet_odd_tile_sizes_and_errors() -> None:
    cfg = tiny(channel_mult=(1, 2, 2))
    assert cfg.downsample_factor == 4
    net = ConditionalUNet(cfg).eval()
    with torch.no_grad():
        net.out_gain.fill_(1.0)
        out = net(torch.randn(2, 1, 48, 80), torch.randn(2, 1, 48, 80), torch.rand(2))
    assert out.shape == (2, 1, 48, 80) and torch.isfinite(out).all()
    with pytest.raises(BadInputError, match="50x80"):
        net(torch.randn(1, 1, 50, 80), torch.randn(1, 1, 50, 80), torch.rand(1))
    with pytest.raises(BadInputError, match="cond"):
        net(torch.randn(1, 2, 48, 48), torch.randn(1, 1, 48, 48), torch.rand(1))
    with pytest.raises(BadInputError, match="alpha_bar"):
        net(torch.randn(2, 1, 48, 48), torch.randn(2, 1, 48, 48), torch.rand(2, 1))


def test_multichannel_shapes() -> None:
    net = ConditionalUNet(tiny(cond_channels=3, out_channels=2))
    out = net(torch.randn(2, 3, 16, 24), torch.randn(2, 2, 16, 24), torch.rand(2))
    assert out.shape == (2, 2, 16, 24)


def test_regression_call_path_trains() -> None:
    """One-pass regression: y_t = 0, alpha_bar = 1; the output must depend on cond and be trainable."""
    net = ConditionalUNet(tiny(dropout=0.2)).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    cond = torch.randn(2, 1, 16, 16)
    target = torch.tanh(cond)
    zeros, ones = torch.zeros(2, 1, 16, 16), torch.ones(2)
    losses = []
    for _ in range(4):
        loss = (net(cond, zeros, ones) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    net.eval()
    with torch.no_grad():
        a = net(cond, zeros, ones)
        assert torch.equal(a, net(cond, zeros, ones))  # deterministic in eval mode
        assert not torch.allclose(a, net(cond.flip(-1), zeros, ones))


def test_noise_label_monotone_and_finite() -> None:
    ab = torch.tensor([1e-12, 1e-7, 0.01, 0.5, 0.99, 0.9999, 1.0])
    c = noise_label(ab)
    assert torch.isfinite(c).all()
    assert (c[1:] < c[:-1]).all()
    assert c[3].item() == pytest.approx(0.0, abs=1e-6)  # sigma = 1 at alpha_bar = 1/2


def test_attention_placed_by_training_resolution() -> None:
    cfg = tiny(channel_mult=(1, 2, 2), train_resolution=32, attn_resolutions=(16,))
    assert cfg.attention_levels == {1}
    net = ConditionalUNet(cfg)
    with_attn = {n.split(".")[1] for n, m in net.named_modules() if isinstance(m, MPAttention)}
    # level-1 encoder (2) and decoder (3) blocks, plus EDM2's first bottleneck block
    assert with_attn == {"l1_block0", "l1_block1", "l1_block2", "l2_mid0"}
    for size in (16, 32, 48):  # same modules whatever the tile size
        assert (
            net(torch.randn(1, 1, size, size), torch.randn(1, 1, size, size), torch.rand(1)).shape[
                -1
            ]
            == size
        )
    paper = UNetConfig()
    assert paper.attention_levels == set() and paper.downsample_factor == 8


def test_count_parameters_excludes_buffers() -> None:
    net = ConditionalUNet(tiny())
    n = count_parameters(net)
    assert n == sum(p.numel() for p in net.parameters())
    assert n < sum(t.numel() for t in net.state_dict().values())
    assert count_parameters(ConditionalUNet(tiny(base_channels=16))) > n


def test_config_dict_round_trip_and_validation() -> None:
    cfg = tiny(channel_mult=[1, 2, 2], dropout=0.2)
    assert cfg.channel_mult == (1, 2, 2)
    d = cfg.to_dict()
    assert d["channel_mult"] == [1, 2, 2]
    assert UNetConfig.from_dict(d) == cfg
    with pytest.raises(IncompatibleModelError, match="channel_mul"):
        UNetConfig.from_dict({**d, "channel_mul": [1, 2]})
    for field, value in [
        ("base_channels", 0),
        ("blocks_per_level", True),
        ("channel_mult", []),
        ("channel_mult", [1, 0]),
        ("dropout", 1.0),
        ("train_resolution", 30),
        ("channels_per_head", "8"),
    ]:
        with pytest.raises(IncompatibleModelError, match=field):
            UNetConfig.from_dict({**d, field: value})
