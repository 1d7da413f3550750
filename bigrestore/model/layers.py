"""Magnitude-preserving (MP) building blocks of the EDM2 network.

Written from the equations of Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models" (EDM2), Sec. 2 and Appendix B. Every layer
keeps the expected root-mean-square (RMS) of its activations at 1 when its inputs
have unit RMS, so no normalisation layers and no learned biases are needed.

Tensors are NCHW feature maps (batch, channels, y, x) unless stated otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bigrestore.errors import IncompatibleModelError, describe


def _drawn(
    tensor: torch.Tensor, law: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``tensor`` filled in place with N(0, 1) (``law`` "normal") or U(0, 1) draws, the same
    numbers as torch.randn / torch.rand. A tensor on the meta device (a network built only to
    read its shapes, as a weights file is checked) is left empty: torch's random ops on meta
    tensors import its compiler, which costs seconds in every process that checks a model."""
    if tensor.is_meta:
        return tensor
    if law == "normal":
        return tensor.normal_(generator=generator)
    return tensor.uniform_(generator=generator)


# E[silu(x)^2]^(1/2) for x ~ N(0, 1); dividing by it gives MP-SiLU (EDM2 Eq. 81).
_SILU_RMS = 0.596


def normalize(
    x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4
) -> torch.Tensor:
    """Scale every slice of `x` over `dim` to unit RMS (the normalisation in EDM2 Eqs. 47 and 66).

    `dim` defaults to all dimensions but the first, i.e. one weight vector per output
    channel. The norm is taken in float32; `eps` keeps an all-zero slice finite.
    """
    if dim is None:
        dim = tuple(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    numel = math.prod(x.shape[d] for d in ((dim,) if isinstance(dim, int) else dim))
    return x / (eps + norm / math.sqrt(numel)).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU rescaled to unit output RMS for unit-variance Gaussian input (EDM2 Eq. 81)."""
    return F.silu(x) / _SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Weighted sum ((1-t) a + t b) / sqrt((1-t)^2 + t^2) (EDM2 Eq. 88).

    `t` is the share of `b`; for uncorrelated unit-RMS inputs the output has unit RMS.
    """
    return torch.lerp(a, b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation along `dim` that preserves total RMS and weights b by `t` (EDM2 Eq. 103).

    With N_a, N_b the sizes along `dim`, a is scaled by C (1-t)/sqrt(N_a) and b by
    C t/sqrt(N_b), with C = sqrt((N_a + N_b) / ((1-t)^2 + t^2)), so each input's
    contribution does not depend on its channel count.
    """
    n_a, n_b = a.shape[dim], b.shape[dim]
    c = math.sqrt((n_a + n_b) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (c * (1 - t) / math.sqrt(n_a)), b * (c * t / math.sqrt(n_b))], dim=dim)


class MPFourier(nn.Module):
    """Fourier features sqrt(2) cos(2 pi (f a + phi)) of a scalar per sample (EDM2 Eq. 75).

    Frequencies f ~ N(0, 1) and phases phi ~ U(0, 1) are drawn once at construction
    and kept as (saved) buffers, so a reloaded model embeds identically. The sqrt(2)
    makes the output RMS 1 over the channels.
    """

    def __init__(self, num_channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.register_buffer("freqs", _drawn(torch.empty(num_channels), "normal", generator))
        self.register_buffer("phases", _drawn(torch.empty(num_channels), "uniform", generator))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """Float tensor (B,) -> float tensor (B, num_channels), computed in float32."""
        a32 = a.to(torch.float32)
        arg = torch.outer(a32, self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (math.sqrt(2) * torch.cos(2 * math.pi * arg)).to(a.dtype)


class MPConv(nn.Module):
    """Convolution (or linear layer for kernel=()) with forced weight normalisation.

    The stored weight (out, in, *kernel) is renormalised in place to unit RMS per
    output channel at every training step (EDM2 Eq. 66), and the weight
    used is that unit-RMS weight times gain / sqrt(fan_in) (Eq. 47), so a unit-RMS
    input gives a unit-RMS output whatever the width. No bias.
    `stride` 2 gives a learned downsampling; padding keeps "same" size at stride 1.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: tuple[int, ...] = (), stride: int = 1
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.weight = nn.Parameter(
            _drawn(torch.empty(out_channels, in_channels, *kernel), "normal")
        )

    def _unit_weight(self, gain: float | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(self.weight))  # forced weight normalisation
        w = normalize(self.weight.to(torch.float32))  # keeps gradients orthogonal to w
        fan_in = w[0].numel()
        return (w * (gain / math.sqrt(fan_in))).to(dtype)

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, H/stride, W/stride); or (B, in) -> (B, out) for a linear layer."""
        w = self._unit_weight(gain, x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, stride=self.stride, padding=w.shape[-1] // 2)


class MPConvTranspose(MPConv):
    """2x2 transposed convolution with stride 2: learned 2x upsampling.

    Each output pixel receives exactly one input pixel through one of the four
    kernel taps, so magnitude is preserved when each tap's weight vector over the
    input channels has unit RMS: the weight is stored (out, in, 2, 2) and normalised
    over `in` only (fan_in = in_channels).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel=(2, 2))

    def _unit_weight(self, gain: float | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(self.weight, dim=1))
        w = normalize(self.weight.to(torch.float32), dim=1)
        return (w * (gain / math.sqrt(self.in_channels))).to(dtype)

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, 2H, 2W)."""
        w = self._unit_weight(gain, x.dtype)
        return F.conv_transpose2d(x, w.transpose(0, 1), stride=2)


class MPAttention(nn.Module):
    """Multi-head cosine self-attention over pixels, added to the input with MP-sum.

    q, k and v come from a 1x1 MPConv and are pixel-normalised per head (unit RMS over
    the head's channels), so the logits q.k / sqrt(c) are bounded cosine similarities
    (EDM2's cosine attention). The attended values go through a 1x1 MPConv and are
    blended into the input with mp_sum(x, y, t=balance). Cost grows with (H W)^2, so
    use it only at coarse levels.
    """

    def __init__(self, channels: int, channels_per_head: int, balance: float = 0.3) -> None:
        super().__init__()
        self.num_heads = max(1, channels // channels_per_head)
        if channels % self.num_heads:
            raise IncompatibleModelError(
                describe("attention", "channels", f"a multiple of {self.num_heads} heads", channels)
            )
        self.balance = balance
        self.qkv = MPConv(channels, 3 * channels, kernel=(1, 1))
        self.proj = MPConv(channels, channels, kernel=(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = normalize(qkv, dim=3).transpose(-1, -2).unbind(1)  # each (B, heads, HW, c)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        y = self.proj(y.transpose(-1, -2).reshape(b, c, h, w))
        return mp_sum(x, y, t=self.balance)
