"""Drawing samples with a network: one sample per batch item, and N samples per tile with
their per-pixel statistics (the paper's DDPM-avg, std Eq. 15 and entropy Eq. 16).

Sampler arithmetic is float32 on the sampling device; network calls may run under
``torch.autocast`` and their output is cast back to float32. All noise comes from per-(tile,
sample) :class:`~bigrestore.diffusion.noise.NoiseStream` objects drawn in a fixed order
(initial noise first, then one block per stochastic step), so a tile's samples do not depend
on which other tiles share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bigrestore.checks import require_int
from bigrestore.devices import network_autocast
from bigrestore.diffusion.noise import NoiseStream, TileKey, batched_noise
from bigrestore.diffusion.objectives import DIFFUSION, Network, Objective, out_channels_of
from bigrestore.diffusion.samplers import SAMPLERS, DenoiseFn, SamplerSettings
from bigrestore.diffusion.schedule import Schedule
from bigrestore.errors import BadInputError, describe

DEFAULT_SAMPLER = SamplerSettings()


class CountingNet:
    """Wraps a network and counts calls and batch items (cost accounting: one tile through
    the network once = one evaluation)."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.calls = 0
        self.items = 0

    def __call__(
        self, cond: torch.Tensor, y_t: torch.Tensor, alpha_bar: torch.Tensor
    ) -> torch.Tensor:
        self.calls += 1
        self.items += y_t.shape[0]
        return self.net(cond, y_t, alpha_bar)


def mirror(x: torch.Tensor, orientations: Sequence[int]) -> torch.Tensor:
    """Item b of x (B, C, H, W) mirrored by orientations[b] (bit 0: x, bit 1: y). Each
    orientation is its own inverse, so the same call mirrors back."""
    if not any(orientations):
        return x
    out = x.clone()
    for code in set(orientations) - {0}:
        items = torch.tensor([b for b, o in enumerate(orientations) if o == code], device=x.device)
        dims = [d for bit, d in ((1, -1), (2, -2)) if code & bit]
        out[items] = x.index_select(0, items).flip(dims)
    return out


def network_denoiser(
    net: Network,
    cond: torch.Tensor,
    objective: Objective,
    autocast_dtype: torch.dtype | None,
    orientations: Sequence[int] | None = None,
) -> DenoiseFn:
    """denoise(y_t, ab_t) -> (x0, eps) from the network's output as ``objective`` reads it.

    With ``orientations``, item b is shown to the network mirrored by orientations[b] and its
    estimates are mirrored back, so the sampler itself (and its noise) stays in tile space."""
    if objective.denoise is None:
        raise BadInputError(describe("sample", "objective", "a sampled objective", objective.name))
    read = objective.denoise
    codes = list(orientations or [])  # none or all zero: mirror() returns its input
    cond = mirror(cond, codes)

    def denoise(y: torch.Tensor, ab: float) -> tuple[torch.Tensor, torch.Tensor]:
        ab_t = torch.full((y.shape[0],), float(ab), dtype=torch.float32, device=y.device)
        seen = mirror(y, codes)
        with network_autocast(y.device.type, autocast_dtype):
            out = net(cond, seen, ab_t)
        x0, eps = read(out.float(), seen, ab)
        return mirror(x0, codes), mirror(eps, codes)

    return denoise


@torch.no_grad()
def sample(
    net: Network,
    cond: torch.Tensor,
    streams: list[NoiseStream],
    schedule: Schedule,
    settings: SamplerSettings = DEFAULT_SAMPLER,
    *,
    objective: Objective = DIFFUSION,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    out_channels: int | None = None,
    orientations: Sequence[int] | None = None,
) -> torch.Tensor:
    """One sample y_0 per batch item: float32 (B, Co, H, W) on ``device`` (default: cond's).

    cond (B, Cc, H, W); streams[i] supplies all noise of item i; orientations[i] (default
    none) is the mirror in which the network sees item i (SamplerSettings.orientation).
    """
    ts = settings.timesteps(schedule, "sample")
    if len(streams) != cond.shape[0]:
        raise BadInputError(describe("sample", "streams", cond.shape[0], len(streams)))
    device = torch.device(device) if device is not None else cond.device
    cond = cond.to(device, torch.float32)
    shape = (out_channels_of(net, cond, out_channels), *cond.shape[2:])

    def noise() -> torch.Tensor:
        return batched_noise(streams, shape, device)

    if orientations is not None and len(orientations) != cond.shape[0]:
        raise BadInputError(describe("sample", "orientations", cond.shape[0], len(orientations)))
    denoise = network_denoiser(net, cond, objective, autocast_dtype, orientations)
    return SAMPLERS[settings.sampler].run(denoise, noise(), noise, schedule, ts, settings)


@dataclass
class RepeatedSamples:
    """Per-pixel statistics of N samples, float32 tensors (B, Co, H, W) in model space.

    mean: DDPM-avg. std: Eq. 15, population std (ddof = 0). entropy: Eq. 16, bits.
    samples: (N, B, Co, H, W) when requested, else None.
    """

    mean: torch.Tensor
    std: torch.Tensor
    entropy: torch.Tensor
    samples: torch.Tensor | None = None


def quantise_8bit(x: torch.Tensor) -> torch.Tensor:
    """Model-space values in [-1, 1] -> uint8 0..255: round((x + 1) * 127.5), clipped."""
    return torch.round((x.float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def pixel_entropy(samples: torch.Tensor) -> torch.Tensor:
    """Eq. 16: Shannon entropy (bits) of the distinct 8-bit values among N samples (axis 0).

    samples (N, ...) in model space -> float32 (...). Vectorised: sort along N; each sample's
    count c_i is the length of its run of equal values (found by binary search in the
    sorted row); H = -sum_v p_v log2 p_v = log2 N - mean_i log2 c_i.
    """
    n = samples.shape[0]
    q = quantise_8bit(samples).to(torch.int32).reshape(n, -1).T.contiguous()  # (pixels, N)
    q, _ = torch.sort(q, dim=1)
    counts = torch.searchsorted(q, q, right=True) - torch.searchsorted(q, q)  # run lengths
    bits = math.log2(n) - torch.log2(counts.double()).mean(dim=1)
    return bits.float().reshape(samples.shape[1:])


def sample_stream(key: TileKey, sample: int, antithetic: bool) -> NoiseStream:
    """The noise of sample ``sample`` of a tile: its own stream, or with ``antithetic`` the
    stream of pair sample // 2, negated for the pair's second member."""
    if antithetic:
        return NoiseStream(key, sample // 2, negate=sample % 2 == 1)
    return NoiseStream(key, sample)


def sample_repeated(
    net: Network,
    cond: torch.Tensor,
    keys: list[TileKey],
    n_samples: int,
    schedule: Schedule,
    settings: SamplerSettings = DEFAULT_SAMPLER,
    *,
    objective: Objective = DIFFUSION,
    device: torch.device | str | None = None,
    max_batch: int = 16,
    pad_batches: bool = True,
    autocast_dtype: torch.dtype | None = None,
    out_channels: int | None = None,
    return_samples: bool = False,
) -> RepeatedSamples:
    """N samples per tile with mean, std (Eq. 15) and entropy (Eq. 16); tensors on ``device``.

    cond (B, Cc, H, W); keys[b] locates tile b. The B x N (tile, sample) pairs, tile-major,
    run through :func:`sample` in chunks of at most max_batch network-batch items; pair
    (b, i) always uses NoiseStream(keys[b], i) and orientation settings.orientation(i), so
    neither the noise nor the mirroring depends on max_batch.
    pad_batches (default on) fills a short last chunk with throw-away items so every network
    call has max_batch items: conv/linear kernels give a bit-different result for the same
    item at batch size 1 and 16 (measured ~1e-7 on CPU) but not at the same size, so padding
    keeps a tile's samples bit-identical whatever else shares its block.
    """
    settings.timesteps(schedule, "sample_repeated")
    if len(keys) != cond.shape[0]:
        raise BadInputError(describe("sample_repeated", "keys", cond.shape[0], len(keys)))
    require_int(n_samples, "n_samples", "sample_repeated", low=1)
    require_int(max_batch, "max_batch", "sample_repeated", low=1)
    device = torch.device(device) if device is not None else cond.device
    b = cond.shape[0]
    co = out_channels_of(net, cond, out_channels)
    out = torch.empty((n_samples, b, co, *cond.shape[2:]), dtype=torch.float32, device=device)
    pairs = [(tile, i) for tile in range(b) for i in range(n_samples)]
    for start in range(0, len(pairs), max_batch):
        chunk = pairs[start : start + max_batch]
        pad = max_batch - len(chunk) if pad_batches else 0
        tiles = torch.tensor([tile for tile, _ in chunk] + [0] * pad, device=cond.device)
        streams = [sample_stream(keys[tile], i, settings.antithetic) for tile, i in chunk]
        first_tile, first_sample = chunk[0]  # padding shares the first item's noise (drawn once)
        streams += [
            sample_stream(keys[first_tile], first_sample, settings.antithetic) for _ in range(pad)
        ]
        orientations = [settings.orientation(i) for _, i in chunk] + [0] * pad
        y = sample(
            net,
            cond.index_select(0, tiles),
            streams,
            schedule,
            settings,
            objective=objective,
            device=device,
            autocast_dtype=autocast_dtype,
            out_channels=co,
            orientations=orientations,
        )
        for j, (tile, i) in enumerate(chunk):
            out[i, tile] = y[j]
    return RepeatedSamples(
        mean=out.mean(dim=0),
        std=out.std(dim=0, correction=0),
        entropy=pixel_entropy(out),
        samples=out if return_samples else None,
    )
