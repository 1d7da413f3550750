"""The network batch of a run (tiles x samples per network call): fixed on CPUs, measured on GPUs.

``RunSettings.batch`` None means auto. On a CPU auto is :data:`CPU_BATCH` (8), always: the
network's kernels give a bit-different result for the same item at another batch size, and a
CPU run's bytes are guaranteed for a given thread count (``tests/test_run.py``). On a CUDA
device auto is the largest batch that fits, measured once per worker process and cached per
(network, tile, channels, device, autocast): a dummy forward under inference mode and the run's
autocast at 8, 16, 32, ... tiles until one does not fit or the cap is reached (halving below 8
when 8 does not fit). "Fits" means it ran and its peak allocation stayed within
:data:`HEADROOM` of the memory free when the measurement began, which leaves room for the
sampler's own tensors (a few batch-sized float32 maps) and allocator fragmentation.

The cap keeps one call at :data:`PIXELS_PER_CALL` tile pixels (128 tiles of 128², 8 of 512²):
``sample_repeated`` pads every call to the full batch so that a tile's bytes do not depend on
which tiles share its call, so a batch far above a block's tiles x samples mostly computes
padding. benchmarks/gpu_throughput.py measures the network's FLOP/s by batch size to check it.

On a GPU the output's bytes therefore depend on the batch chosen (recorded per block) and,
through it, on the free memory when a worker started; pass ``--batch`` for bytes that do not.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import torch

from bigrestore.devices import network_autocast
from bigrestore.diffusion.objectives import out_channels_of

log = logging.getLogger(__name__)

#: The batch on CPUs (and the first size tried on a GPU).
CPU_BATCH = 8
#: Tile pixels per network call above which auto stops growing the batch on a GPU.
PIXELS_PER_CALL = 2**21
#: Share of the free GPU memory that one trial's peak allocation may take.
HEADROOM = 0.8
#: Error messages of a call that was too big (besides torch.cuda.OutOfMemoryError).
TOO_BIG = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_SUPPORTED", "32-bit")

#: Per worker process: the batches measured for each network (dropped with the network).
_RESOLVED: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, int]] = (
    weakref.WeakKeyDictionary()
)


def resolve_batch(
    requested: int | None,
    net: torch.nn.Module,
    tile: int,
    channels: int,
    device: torch.device | str,
    autocast: torch.dtype | None = None,
) -> int:
    """The network batch to use: ``requested`` when given, else auto (module docstring):
    :data:`CPU_BATCH` off CUDA, the largest batch that fits on a CUDA device (measured once)."""
    if requested is not None:
        return requested
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH
    key = (tile, channels, str(device), str(autocast))
    known = _RESOLVED.setdefault(net, {})
    if key not in known:
        fits = cuda_trial(net, tile, channels, device, autocast)
        known[key] = largest_batch(fits, cap=batch_cap(tile))
        log.info("network batch on %s for %d² tiles: %d", device, tile, known[key])
    return known[key]


def batch_cap(tile: int) -> int:
    """The largest batch auto tries for ``tile``² tiles: :data:`PIXELS_PER_CALL` per call."""
    return max(1, PIXELS_PER_CALL // (tile * tile))


def largest_batch(fits: Callable[[int], bool], start: int = CPU_BATCH, cap: int = 1024) -> int:
    """The largest batch ``fits`` accepts, by doubling from ``start`` (at most ``cap``), or by
    halving below it when ``start`` does not fit; 1 when nothing fits (the real call then
    reports its own error). ``fits`` is called at most once per size, in increasing order
    while growing."""
    batch = max(1, min(start, cap))
    if fits(batch):
        while batch * 2 <= cap and fits(batch * 2):
            batch *= 2
        return batch
    while batch > 1:
        batch //= 2
        if fits(batch):
            return batch
    return 1


def too_big(exc: BaseException) -> bool:
    """True for the errors of a call that did not fit (out of memory, cuDNN, 32-bit indexing)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or any(marker in str(exc) for marker in TOO_BIG)


def trial(
    run: Callable[[int], object], cleanup: Callable[[], object] = lambda: None
) -> Callable[[int], bool]:
    """``fits(batch)`` for :func:`largest_batch`: True when ``run(batch)`` returns, False when
    it raises an error of a call that did not fit (:func:`too_big`); other errors propagate.
    ``cleanup`` runs after every try (e.g. to hand cached GPU memory back)."""

    def fits(batch: int) -> bool:
        try:
            run(batch)
        except RuntimeError as exc:
            if not too_big(exc):
                raise
            return False
        finally:
            cleanup()
        return True

    return fits


def dummy_forward(
    net: torch.nn.Module,
    tile: int,
    channels: int,
    device: torch.device,
    autocast: torch.dtype | None,
) -> Callable[[int], None]:
    """``run(batch)``: one network call on ``batch`` zero tiles, as the sampler makes it
    (inference mode, the run's autocast)."""
    out_channels = out_channels_of(net, torch.empty(1, channels, 1, 1))

    def run(batch: int) -> None:
        with torch.inference_mode(), network_autocast(device.type, autocast):
            cond = torch.zeros((batch, channels, tile, tile), device=device)
            y_t = torch.zeros((batch, out_channels, tile, tile), device=device)
            net(cond, y_t, torch.full((batch,), 0.5, device=device))

    return run


def cuda_trial(
    net: torch.nn.Module,
    tile: int,
    channels: int,
    device: torch.device,
    autocast: torch.dtype | None,
) -> Callable[[int], bool]:
    """``fits(batch)`` on a CUDA device: the dummy forward ran and its peak allocation stayed
    within HEADROOM of the memory free when the measurement began."""
    free, _ = torch.cuda.mem_get_info(device)
    budget = HEADROOM * free
    forward = dummy_forward(net, tile, channels, device, autocast)

    def run(batch: int) -> None:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        forward(batch)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        if peak > budget:
            raise torch.cuda.OutOfMemoryError(f"batch {batch}: peak {peak} B over {budget:.0f} B")

    return trial(run, cleanup=torch.cuda.empty_cache)
