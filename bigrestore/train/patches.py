"""Lazy random patch pairs from OME-Zarr stores, normalised per plane, for training.

Every patch read is one ``patch x patch`` region of one plane of the level-0 zarr array;
plane statistics come from a strided subsample of at most :data:`STAT_PIXELS` pixels of the
whole plane (not the patch: per-patch normalisation is an anti-pattern, STYLE.md) and are
kept in a bounded LRU cache. So memory does not grow with the store size.

Randomness is keyed by (seed, step): batch ``k`` is a pure function of the data, the config
and ``k``, whichever worker process builds it, so a resumed run sees the same batches as an
uninterrupted one (the same idea as DESIGN.md decision 3).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from bigrestore.errors import BadInputError, describe
from bigrestore.intensity import Stats, fit_line, percentile_stats, to_model
from bigrestore.io.arrays import open_array
from bigrestore.train.augment import augment_pair
from bigrestore.train.config import AugmentSettings
from bigrestore.train.stores import Plane, Source, StorePair

log = logging.getLogger(__name__)

#: At most this many pixels of a plane (a strided subsample) give its percentiles and median.
STAT_PIXELS = 1 << 20
#: Plane statistics kept per process (each entry is three floats).
STATS_CACHE = 65536
#: A patch is foreground when (p99(target patch) - plane median) / (plane high - median)
#: exceeds this; foreground-biased draws try up to FOREGROUND_TRIES positions.
FOREGROUND_MARGIN = 0.25
FOREGROUND_TRIES = 10
#: Draws of a patch with non-finite pixels before giving up.
MAX_DRAWS = 100
#: Stream tags so that training batches and validation patches never share random numbers.
TRAIN_STREAM = 0x7472
VAL_STREAM = 0x7661


@dataclass(frozen=True)
class PlaneStats:
    """Normalisation of one plane (``stats``: p_low ↦ -1, p_high ↦ +1) and its median."""

    stats: Stats
    median: float


def plane_stats(values: np.ndarray, p_low: float, p_high: float, where: str) -> PlaneStats:
    """Percentile statistics of the finite values of one plane (any shape)."""
    finite = np.asarray(values, dtype=np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise BadInputError(describe(where, "pixels", "some finite values", "none (all NaN/inf)"))
    return PlaneStats(percentile_stats(finite, p_low, p_high), float(np.median(finite)))


class PatchReader:
    """Reads patch regions and plane statistics of store pairs in one process.

    Arrays are opened on first use (through bigrestore.io.arrays), so instances can be sent to
    worker processes before any is opened; statistics and fits are cached in bounded LRUs
    keyed by (array, plane). ``target_frame`` is the config's (see :meth:`target_stats`).
    """

    def __init__(
        self,
        p_low: float,
        p_high: float,
        cache_size: int = STATS_CACHE,
        target_frame: str = "own",
    ) -> None:
        self.p_low, self.p_high = p_low, p_high
        self.cache_size = cache_size
        self.target_frame = target_frame
        self._arrays: dict[str, Any] = {}
        self._stats: OrderedDict[tuple[str, Plane], PlaneStats] = OrderedDict()
        self._fits: OrderedDict[tuple[str, Plane], tuple[float, float]] = OrderedDict()

    def open_array(self, path: str) -> Any:
        """The (read-only) array at ``path`` (override to instrument reads)."""
        return open_array(path)

    def _array(self, pair: StorePair, which: str) -> Any:
        path = pair.low_array if which == "low" else pair.high_array
        if path not in self._arrays:
            self._arrays[path] = self.open_array(path)
        return self._arrays[path]

    def _cached(self, cache: OrderedDict, key: tuple[str, Plane], compute: Any) -> Any:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        cache[key] = value = compute()
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return value

    def region(
        self, pair: StorePair, plane: Plane, which: str, y: int, x: int, size: int
    ) -> np.ndarray:
        """Rows y..y+size, columns x..x+size of a plane, float32 (size, size), raw intensities."""
        index = pair.index(plane, which, slice(y, y + size), slice(x, x + size))
        return np.asarray(self._array(pair, which)[index], dtype=np.float32)

    def _subsample(self, pair: StorePair, plane: Plane, which: str) -> np.ndarray:
        """A strided subsample of at most STAT_PIXELS pixels of the plane (the same positions
        for low and high)."""
        ny, nx = pair.size("y"), pair.size("x")
        step = max(1, int(np.ceil(np.sqrt(ny * nx / STAT_PIXELS))))
        index = pair.index(plane, which, slice(None, None, step), slice(None, None, step))
        return np.asarray(self._array(pair, which)[index])

    def _where(self, pair: StorePair, plane: Plane, which: str) -> str:
        return f"{pair.low if which == 'low' else pair.high} plane {pair.describe_plane(plane)}"

    def stats(self, pair: StorePair, plane: Plane, which: str) -> PlaneStats:
        """Whole-plane statistics from a strided subsample of at most STAT_PIXELS pixels."""
        key = (pair.low_array if which == "low" else pair.high_array, plane)
        return self._cached(
            self._stats,
            key,
            lambda: plane_stats(
                self._subsample(pair, plane, which),
                self.p_low,
                self.p_high,
                self._where(pair, plane, which),
            ),
        )

    def target_stats(self, pair: StorePair, plane: Plane) -> Stats:
        """The normalisation that takes the target plane to model space.

        ``own``: its own percentiles. ``low``: the low plane's percentiles applied to the
        target fitted to the low plane (a·high + b ≈ low); written as levels of the target
        itself, (low_stats - b) / a, so that ``to_model(high, ...)`` does both at once."""
        if self.target_frame == "own":
            return self.stats(pair, plane, "high").stats
        a, b = self._cached(
            self._fits,
            (pair.high_array, plane),
            lambda: fit_to_low(
                self._subsample(pair, plane, "low"),
                self._subsample(pair, plane, "high"),
                f"{pair.low} / {pair.high} plane {pair.describe_plane(plane)}",
            ),
        )
        low = self.stats(pair, plane, "low").stats
        return Stats((low.low - b) / a, (low.high - b) / a)


def fit_to_low(low: np.ndarray, high: np.ndarray, where: str) -> tuple[float, float]:
    """Least-squares ``a, b`` with ``a·high + b ≈ low`` over the pixels finite in both.

    The noise is in ``low`` (the regressand), so the slope is not attenuated by it. A slope
    that is not positive means the planes do not show the same image (unregistered, swapped,
    or empty): BadInputError, as training on it would teach the network nothing true."""
    lo = np.asarray(low, dtype=np.float64).ravel()
    hi = np.asarray(high, dtype=np.float64).ravel()
    finite = np.isfinite(lo) & np.isfinite(hi)
    lo, hi = lo[finite], hi[finite]
    if hi.size < 2 or np.ptp(hi) == 0.0:
        raise BadInputError(describe(where, "high plane", "varying intensities", "a flat plane"))
    slope, offset = fit_line(hi, lo)
    if not slope > 0.0:
        raise BadInputError(
            describe(
                where,
                "least-squares slope of low on high",
                "positive (the same field, registered)",
                f"{slope:.4g}",
            )
        )
    return slope, offset


def foreground_score(target: np.ndarray, stats: PlaneStats) -> float:
    """How far the patch's bright pixels rise above the plane's background (median): 0 for
    background, about 1 when its 99th percentile reaches the plane's p_high."""
    span = max(stats.stats.high - stats.median, 1e-12)
    return float((np.percentile(target, 99) - stats.median) / span)


def draw_patch(
    reader: PatchReader,
    sources: Sequence[Source],
    rng: np.random.Generator,
    patch: int,
    foreground_bias: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One random (condition, target) pair, float32 (patch, patch) in model space.

    Source chosen with probability proportional to its weight (its pixel count unless the
    pairs are weighted), then a plane and a
    position uniformly. With probability ``foreground_bias`` the patch must be foreground
    (see :func:`foreground_score`); after FOREGROUND_TRIES misses the most foreground of the
    tries is taken, so an empty image cannot stall training. Patches with non-finite pixels
    are redrawn; BadInputError after MAX_DRAWS such draws.
    """
    weights = np.array([s.weight for s in sources], dtype=np.float64)
    weights /= weights.sum()
    want_foreground = rng.random() < foreground_bias
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    tries = 0
    for _ in range(MAX_DRAWS):
        source = sources[int(rng.choice(len(sources), p=weights))]
        plane = source.planes[int(rng.integers(len(source.planes)))]
        y = int(rng.integers(source.y[0], source.y[1] - patch + 1))
        x = int(rng.integers(source.x[0], source.x[1] - patch + 1))
        low = reader.region(source.pair, plane, "low", y, x, patch)
        high = reader.region(source.pair, plane, "high", y, x, patch)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            continue
        low_stats = reader.stats(source.pair, plane, "low")
        high_stats = reader.stats(source.pair, plane, "high")
        target_stats = reader.target_stats(source.pair, plane)
        pair = (to_model(low, low_stats.stats), to_model(high, target_stats))
        if not want_foreground:
            return pair
        score = foreground_score(high, high_stats)
        if score >= FOREGROUND_MARGIN:
            return pair
        if best is None or score > best[0]:
            best = (score, *pair)
        tries += 1
        if tries >= FOREGROUND_TRIES:
            return best[1], best[2]
    if best is not None:
        return best[1], best[2]
    stores = ", ".join(sorted({s.pair.low for s in sources}))
    raise BadInputError(
        describe(
            stores, "patches", "patches without NaN/inf pixels", f"none in {MAX_DRAWS} random draws"
        )
    )


def fixed_patches(
    sources: Sequence[Source],
    count: int,
    patch: int,
    seed: int,
    foreground_bias: float,
    reader: PatchReader,
) -> tuple[np.ndarray, np.ndarray]:
    """The validation set: ``count`` patches drawn once from ``sources`` with a seeded stream
    (no augmentation), so every epoch is scored on the same pixels. float32 (count, 1, P, P)
    condition and target in model space."""
    rng = np.random.default_rng([seed, VAL_STREAM])
    pairs = [draw_patch(reader, sources, rng, patch, foreground_bias) for _ in range(count)]
    cond = np.stack([p[0] for p in pairs])[:, None]
    target = np.stack([p[1] for p in pairs])[:, None]
    return cond, target


def target_statistics(
    sources: Sequence[Source], reader: PatchReader, max_planes: int = 64
) -> Stats:
    """Median over (up to ``max_planes`` evenly chosen) training target planes of their
    normalisation statistics: the intensity scale ``bigrestore run`` maps its output back to
    (with target_frame ``low``, the targets are in their low planes' units: those planes')."""
    planes = [(s.pair, p) for s in sources for p in s.planes]
    if len(planes) > max_planes:
        planes = [
            planes[i] for i in np.linspace(0, len(planes) - 1, max_planes).round().astype(int)
        ]
    which = "low" if reader.target_frame == "low" else "high"
    stats = [reader.stats(pair, plane, which).stats for pair, plane in planes]
    return Stats(
        float(np.median([s.low for s in stats])), float(np.median([s.high for s in stats]))
    )


class PatchBatches(IterableDataset):
    """Training batches for steps ``start..stop-1``: yields (step, cond, target), tensors
    float32 (batch, 1, P, P) in model space, augmented.

    Under a DataLoader with W workers, worker w builds steps start+w, start+w+W, ... and the
    loader returns them in step order. Picklable (holds paths and settings only).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        start: int,
        stop: int,
        batch: int,
        patch: int,
        seed: int,
        augment: AugmentSettings,
        foreground_bias: float,
        p_low: float,
        p_high: float,
        target_frame: str = "own",
    ) -> None:
        super().__init__()
        self.sources = list(sources)
        self.start, self.stop = start, stop
        self.batch, self.patch, self.seed = batch, patch, seed
        self.augment = augment
        self.foreground_bias = foreground_bias
        self.p_low, self.p_high = p_low, p_high
        self.target_frame = target_frame

    def make_batch(self, reader: PatchReader, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of training step ``step`` (a pure function of the data, settings, step)."""
        rng = np.random.default_rng([self.seed, TRAIN_STREAM, step])
        conds, targets = [], []
        for _ in range(self.batch):
            cond, target = draw_patch(reader, self.sources, rng, self.patch, self.foreground_bias)
            cond, target = augment_pair(cond, target, rng, self.augment)
            conds.append(cond)
            targets.append(target)
        return torch.from_numpy(np.stack(conds)[:, None]), torch.from_numpy(
            np.stack(targets)[:, None]
        )

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = PatchReader(self.p_low, self.p_high, target_frame=self.target_frame)
        for step in range(self.start + worker, self.stop, workers):
            yield (step, *self.make_batch(reader, step))
