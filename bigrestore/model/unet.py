"""Magnitude-preserving conditional U-Net eps_theta(x, y_t, alpha_bar).

The network of Osuna-Vargas et al. (WACV 2025): an EDM2 U-Net (Karras et al. 2024,
Fig. 21) whose input is concat(y_t, x) and whose output is the noise estimate, with
strided-conv downsampling and transposed-conv upsampling between levels. The same
net is the one-pass regression baseline (CARE-like) when called with y_t = 0 and
alpha_bar = 1.

Feature maps are float tensors (batch, channels, y, x). Tiles of any size that is a
multiple of `UNetConfig.downsample_factor` are accepted; attention is placed by the
training resolution, so a larger tile uses the same layers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bigrestore.errors import BadInputError, IncompatibleModelError, describe
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


def _check(ok: bool, field: str, expected: str, found: object) -> None:
    if not ok:
        raise IncompatibleModelError(describe("unet config", field, expected, found))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of ConditionalUNet; plain data, stored in the model JSON.

    Defaults follow the authors' public configuration (64 base channels, channel
    multipliers 1-2-4-8, 2 blocks per level, 32 channels per attention head), except
    dropout (paper: 0.2). With train_resolution 256 the levels are 256, 128, 64 and
    32 px, so attn_resolutions (16,) selects none of them and the only attention is
    the one EDM2 puts in the first bottleneck block, at 32 px: the resolution the
    paper's text names.
    """

    cond_channels: int = 1
    out_channels: int = 1
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    blocks_per_level: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    train_resolution: int = 256
    dropout: float = 0.0
    channels_per_head: int = 32

    def __post_init__(self) -> None:
        for name in ("channel_mult", "attn_resolutions"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in (
            "cond_channels",
            "out_channels",
            "base_channels",
            "blocks_per_level",
            "train_resolution",
            "channels_per_head",
        ):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 1, name, "a positive integer", repr(value))
        for name in ("channel_mult", "attn_resolutions"):
            value = getattr(self, name)
            _check(
                isinstance(value, tuple) and all(_is_int(v) and v >= 1 for v in value),
                name,
                "a list of positive integers",
                repr(value),
            )
        _check(len(self.channel_mult) >= 1, "channel_mult", "at least one level", "[]")
        _check(
            isinstance(self.dropout, int | float)
            and not isinstance(self.dropout, bool)
            and 0 <= self.dropout < 1,
            "dropout",
            "a number in [0, 1)",
            repr(self.dropout),
        )
        _check(
            self.train_resolution % self.downsample_factor == 0,
            "train_resolution",
            f"a multiple of {self.downsample_factor}",
            self.train_resolution,
        )
        for level in self.attention_levels | {len(self.channel_mult) - 1}:
            ch = self.level_channels(level)
            heads = max(1, ch // self.channels_per_head)
            _check(ch % heads == 0, "channels_per_head", f"to divide {ch} channels", heads)

    @property
    def downsample_factor(self) -> int:
        """Tile height and width must be multiples of this (2 ** number of downsamplings)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def attention_levels(self) -> set[int]:
        """Levels whose training-time resolution train_resolution / 2**level is in attn_resolutions."""
        return {
            level
            for level in range(len(self.channel_mult))
            if self.train_resolution // 2**level in self.attn_resolutions
        }

    def level_channels(self, level: int) -> int:
        return self.base_channels * self.channel_mult[level]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Build from a dict; unknown keys are errors, missing keys take the defaults."""
        if not isinstance(d, dict):
            raise IncompatibleModelError(
                describe("unet config", "unet", "a mapping", type(d).__name__)
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IncompatibleModelError(
                describe("unet config", unknown[0], f"one of {sorted(known)}", "an unknown key")
            )
        return cls(**d)


def noise_label(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Noise-level input of the Fourier embedding: ln(sigma) / 4 with sigma^2 = (1 - ab) / ab.

    This is EDM2's c_noise (= -ln(SNR) / 8), a monotone map of alpha_bar that spreads
    the cosine schedule (T = 200) over about [-1, 2] instead of crowding the low-noise
    steps near ab = 1. ab is clamped to [1e-10, 1] and 1 - ab to >= 1e-8, so ab = 1
    (regression use) gives a finite label (sigma = 1e-4). Float (B,) -> float32 (B,).
    """
    ab = alpha_bar.to(torch.float32).clamp(1e-10, 1.0)
    return 0.125 * (torch.log((1 - ab).clamp_min(1e-8)) - torch.log(ab))


class Block(nn.Module):
    """EDM2 residual block (Fig. 21) with optional self-attention.

    Encoder flavour: 1x1 conv if the width changes, then pixel norm on the main path.
    Residual branch: MP-SiLU -> 3x3 conv -> scale by (1 + gain * linear(emb)) ->
    MP-SiLU -> dropout -> 3x3 conv; the embedding gain starts at 0. Decoder flavour:
    the 1x1 conv is applied to the main path after the branch. Joined with mp_sum.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str,
        attention: bool,
        channels_per_head: int,
        dropout: float,
        joins_skip: bool = False,
        res_balance: float = 0.3,
        clip_act: float = 256.0,
    ) -> None:
        super().__init__()
        self.flavor = flavor
        self.joins_skip = joins_skip  # the U-Net feeds it mp_cat(x, skip) instead of x
        self.dropout = dropout
        self.res_balance = res_balance
        self.clip_act = clip_act
        self.conv_skip = (
            MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        )
        self.conv_res0 = MPConv(
            out_channels if flavor == "enc" else in_channels, out_channels, (3, 3)
        )
        self.emb_linear = MPConv(emb_channels, out_channels, ())
        self.emb_gain = nn.Parameter(torch.zeros(()))
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.attn = MPAttention(out_channels, channels_per_head) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W), embedding (B, emb) -> (B, out, H, W)."""
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm keeps the main path at unit RMS
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        y = F.dropout(y, p=self.dropout, training=self.training)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.attn is not None:
            x = self.attn(x)
        return x.clamp(-self.clip_act, self.clip_act)


class ConditionalUNet(nn.Module):
    """Noise predictor eps_theta(x, y_t, alpha_bar) of the DDPM loss; see the module docstring."""

    #: Run the activations NHWC (channels last): oneDNN and cuDNN convolve them faster than
    #: NCHW (measured by benchmarks/precision_speed.py, which sets this False for the baseline).
    #: The layout changes speed only, not the result beyond float rounding.
    channels_last: bool = True

    def __init__(self, config: UNetConfig, concat_balance: float = 0.5) -> None:
        super().__init__()
        self.config = config
        self.concat_balance = concat_balance
        cfg = config
        levels = len(cfg.channel_mult)
        emb_ch = cfg.base_channels * max(cfg.channel_mult)
        block = {
            "emb_channels": emb_ch,
            "channels_per_head": cfg.channels_per_head,
            "dropout": cfg.dropout,
        }

        self.emb_fourier = MPFourier(cfg.level_channels(0))
        self.emb_noise = MPConv(cfg.level_channels(0), emb_ch, ())

        # Encoder: every output is kept as a skip connection.
        self.enc = nn.ModuleDict()
        ch = cfg.level_channels(0)
        self.enc["l0_conv"] = MPConv(cfg.out_channels + cfg.cond_channels + 1, ch, (3, 3))
        skip_ch = [ch]
        for level in range(levels):
            if level > 0:
                self.enc[f"l{level}_down"] = MPConv(ch, ch, (3, 3), stride=2)
                skip_ch.append(ch)
            attn = level in cfg.attention_levels
            for i in range(cfg.blocks_per_level):
                self.enc[f"l{level}_block{i}"] = Block(
                    ch, cfg.level_channels(level), flavor="enc", attention=attn, **block
                )
                ch = cfg.level_channels(level)
                skip_ch.append(ch)

        # Decoder: bottleneck pair (attention in the first, as in EDM2), then per level
        # an upsampling and blocks_per_level + 1 blocks that each take one skip.
        self.dec = nn.ModuleDict()
        for level in reversed(range(levels)):
            if level == levels - 1:
                self.dec[f"l{level}_mid0"] = Block(ch, ch, flavor="dec", attention=True, **block)
                self.dec[f"l{level}_mid1"] = Block(ch, ch, flavor="dec", attention=False, **block)
            else:
                self.dec[f"l{level}_up"] = MPConvTranspose(ch, ch)
            attn = level in cfg.attention_levels
            for i in range(cfg.blocks_per_level + 1):
                self.dec[f"l{level}_block{i}"] = Block(
                    ch + skip_ch.pop(),
                    cfg.level_channels(level),
                    flavor="dec",
                    attention=attn,
                    joins_skip=True,
                    **block,
                )
                ch = cfg.level_channels(level)
        self.conv_out = MPConv(ch, cfg.out_channels, (3, 3))
        self.out_gain = nn.Parameter(torch.zeros(()))  # output starts at 0: eps_theta = 0 at init

    def _check_inputs(self, cond: torch.Tensor, y_t: torch.Tensor, alpha_bar: torch.Tensor) -> None:
        cfg = self.config
        for name, t, ch in (("cond", cond, cfg.cond_channels), ("y_t", y_t, cfg.out_channels)):
            if t.ndim != 4 or t.shape[1] != ch:
                raise BadInputError(describe(name, "shape", f"(B, {ch}, H, W)", tuple(t.shape)))
        if cond.shape[0] != y_t.shape[0] or cond.shape[2:] != y_t.shape[2:]:
            raise BadInputError(
                describe(
                    "y_t", "shape", f"batch and size of cond {tuple(cond.shape)}", tuple(y_t.shape)
                )
            )
        if alpha_bar.shape != (cond.shape[0],):
            raise BadInputError(
                describe("alpha_bar", "shape", f"({cond.shape[0]},)", tuple(alpha_bar.shape))
            )
        f = cfg.downsample_factor
        h, w = cond.shape[2:]
        if h % f or w % f:
            raise BadInputError(describe("tile", "height x width", f"multiples of {f}", f"{h}x{w}"))

    def features(
        self, cond: torch.Tensor, y_t: torch.Tensor, alpha_bar: torch.Tensor
    ) -> torch.Tensor:
        """Last decoder features (B, base_channels, H, W), before the output conv; unit RMS at init."""
        self._check_inputs(cond, y_t, alpha_bar)
        emb = mp_silu(self.emb_noise(self.emb_fourier(noise_label(alpha_bar).to(y_t.device))))
        # A constant channel of ones stands in for biases (EDM2).
        x = torch.cat([y_t, cond, torch.ones_like(y_t[:, :1])], dim=1)
        if self.channels_last:  # weights stay NCHW; the convolutions then run NHWC
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, Block) else layer(x)
            skips.append(x)
        for layer in self.dec.values():
            if isinstance(layer, Block):
                if layer.joins_skip:
                    x = mp_cat(x, skips.pop(), t=self.concat_balance)
                x = layer(x, emb)
            else:
                x = layer(x)
        return x

    def forward(
        self, cond: torch.Tensor, y_t: torch.Tensor, alpha_bar: torch.Tensor
    ) -> torch.Tensor:
        """Noise estimate (B, out_channels, H, W) for condition x = cond (B, cond_channels, H, W),
        noisy target y_t (B, out_channels, H, W) and alpha_bar (B,) float in (0, 1].
        H and W must be multiples of config.downsample_factor (else BadInputError)."""
        return self.conv_out(self.features(cond, y_t, alpha_bar), gain=self.out_gain)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalar parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
