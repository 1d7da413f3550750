"""The inputs of ``bigrestore evaluate`` as YX planes, paired with the ground truth (GT).

Every image (OME-Zarr or TIFF) is seen as a stack of YX planes, leading t/c/z axes flattened
in storage order. Predictions, baselines and uncertainty maps must have the GT's planes and
YX size; N individual samples come in one of two layouts (see :func:`open_samples`).

Intensity handling (the 8-bit W2S release was contrast-stretched per image, so a low/high
pair shares no intensity scale; the paper's FMD convention is plain 8-bit, L = 255):

- ``percentile``: every plane of every image, predictions and GT separately, is mapped so
  that its 0.1 and 99.9 percentiles become 0 and 1 (CARE / CSBDeep); metrics use L = 1.
- ``linear-fit``: the GT as in ``percentile``; each prediction plane is mapped onto it by the
  least-squares a·pred + b (the CARE paper's evaluation); L = 1. Gain and offset cost nothing.
- ``none``: raw values; L = ``data_range`` or the GT dtype's maximum (255 for uint8).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile

from bigrestore.errors import BadInputError, MissingInputError, UsageError, describe
from bigrestore.evaluate.choices import NORMALIZE
from bigrestore.evaluate.metrics import fit_linear, normalize_percentile
from bigrestore.io.convert import read_tiff
from bigrestore.io.images import open_image
from bigrestore.io.meta import ImageMeta

log = logging.getLogger(__name__)

P_LOW, P_HIGH = 0.1, 99.9
RESERVED = ("raw", "gaussian", "gt")
#: The patch side of ``patch="auto"``: the paper reports medians over 256² test patches.
AUTO_PATCH = 256
"""Method names taken by the baselines and the GT."""
_UNIT_SYMBOLS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm"}
_TIFF_AXES = {2: "yx", 3: "tyx", 4: "tcyx", 5: "tczyx"}
"""Axes assumed for a TIFF whose axes are unknown, by number of dimensions."""


@dataclass(frozen=True)
class PlaneStack:
    """An image seen as YX planes: ``data`` is lazy with axes ``axes`` (YX last).

    Plane i is ``data[np.unravel_index(i, lead)]``; ``labels[i]`` names it (e.g. "t=3 c=1").
    ``pixel_size`` (x axis) is in ``unit`` ("px" when the image has no physical scale).
    """

    path: Path
    data: da.Array
    axes: str
    labels: tuple[str, ...]
    pixel_size: float
    unit: str

    @property
    def lead(self) -> tuple[int, ...]:
        return tuple(self.data.shape[:-2])

    @property
    def yx(self) -> tuple[int, int]:
        return int(self.data.shape[-2]), int(self.data.shape[-1])

    @property
    def n(self) -> int:
        return len(self.labels)

    def plane(self, index: int) -> np.ndarray:
        """Plane ``index`` as float64 (y, x) in the stored intensity scale."""
        return np.asarray(self.data[np.unravel_index(index, self.lead)], dtype=np.float64)


def _open_any(path: Path) -> tuple[da.Array, ImageMeta]:
    """OME-Zarr via bigrestore.io.ome; TIFF via io.convert (unknown axes read as _TIFF_AXES)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        image = open_image(path)
        return image.data, image.meta
    try:
        return read_tiff(path)
    except BadInputError as error:
        try:
            with tifffile.TiffFile(path) as tif:
                ndim = len(tif.series[0].shape)
        except Exception:
            raise error from None
        if ndim not in _TIFF_AXES:
            raise
        return read_tiff(path, axes=_TIFF_AXES[ndim])


def _require(path: Path) -> None:
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or directory")


def load_stack(path: str | Path, channel: int | str | None = None) -> PlaneStack:
    """Open an OME-Zarr image or TIFF as planes; ``channel`` (index or name) picks one of c."""
    path = Path(path)
    _require(path)
    data, meta = _open_any(path)
    axes = meta.axes
    if channel is not None and "c" in axes:
        names = list(meta.channel_names or [])
        n_c = data.shape[axes.index("c")]
        index = names.index(channel) if channel in names else channel
        if isinstance(index, str) and index.isdigit():
            index = int(index)
        if not isinstance(index, int) or not 0 <= index < n_c:
            raise BadInputError(
                describe(path, "channel", f"0..{n_c - 1} or one of {names}", channel)
            )
        data = data[(slice(None),) * axes.index("c") + (index,)]
        axes = axes.replace("c", "")
    elif channel is not None and str(channel) not in ("0", *(meta.channel_names or ())):
        raise BadInputError(describe(path, "channel", "0 (the image has no c axis)", channel))
    ix = meta.axes.index("x")
    unit = meta.units[ix]
    if meta.pixel_size("y") != meta.pixel_size("x"):
        log.warning("%s: y and x pixel sizes differ; resolution uses x", path)
    labels = tuple(
        " ".join(f"{a}={i}" for a, i in zip(axes[:-2], idx, strict=True)) or "yx"
        for idx in np.ndindex(*data.shape[:-2])
    )
    unit_label = (
        _UNIT_SYMBOLS.get(unit, unit) if unit else ("px" if meta.scale[ix] == 1 else "a.u.")
    )
    return PlaneStack(path, data, axes, labels, float(meta.scale[ix]), unit_label)


def check_match(gt: PlaneStack, other: PlaneStack) -> None:
    """Refuse ``other`` unless it has the GT's number of planes and YX size (exit 65)."""
    if other.n != gt.n or other.yx != gt.yx:
        expected = f"{gt.n} planes of {gt.yx[0]}x{gt.yx[1]} like the GT {gt.path}"
        found = f"{other.n} planes of {other.yx[0]}x{other.yx[1]} (shape {other.data.shape})"
        raise BadInputError(describe(other.path, "shape", expected, found))


def open_samples(
    path: str | Path, gt: PlaneStack, channel: int | str | None = None
) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """N and get(s, i) -> plane i of sample s (float64 (y, x), stored scale), for N samples.

    Two layouts are accepted:
    (a) a directory of N images (*.zarr or *.tif[f], sorted by name), each like the GT; this is
        what ``bigrestore run --save-samples`` writes as OUT.zarr/samples/NN.zarr;
    (b) one image holding N copies of the GT's planes, sample-major: e.g. a tcyx image with
        t indexing the samples when the GT is cyx (planes = N x the GT's planes).
    """
    path = Path(path)
    _require(path)
    if path.is_dir() and not any((path / f).exists() for f in ("zarr.json", ".zattrs", ".zgroup")):
        members = sorted(
            p for p in path.iterdir() if p.suffix.lower() in (".zarr", ".tif", ".tiff")
        )
        stacks = [load_stack(p, channel) for p in members]
        if not stacks:
            raise BadInputError(describe(path, "samples", "*.zarr or *.tif images", "none"))
        for stack in stacks:
            check_match(gt, stack)
        return len(stacks), lambda s, i: stacks[s].plane(i)
    stack = load_stack(path, channel)
    if stack.yx != gt.yx or stack.n % gt.n or stack.n < gt.n:
        expected = f"N x {gt.n} planes of {gt.yx} (N samples of the GT's planes, sample-major)"
        raise BadInputError(describe(path, "shape", expected, f"{stack.n} planes of {stack.yx}"))
    return stack.n // gt.n, lambda s, i: stack.plane(s * gt.n + i)


def default_names(preds: Sequence[str | Path]) -> list[str]:
    """Method names from file names ("ddpm.zarr/mean" -> "ddpm/mean"), made distinct."""
    names = []
    for i, p in enumerate(preds):
        path = Path(p)
        name = path.name.split(".")[0]
        if name in ("mean", "0") or name.isdigit():
            name = f"{path.parent.name.split('.')[0]}/{name}"
        if name in RESERVED or name in names:
            name = f"pred{i + 1}-{name}"
        names.append(name)
    return names


@dataclass(frozen=True)
class Inputs:
    """Every input of one evaluation, opened lazily and paired with the GT ``truth``.

    ``preds`` by method name; ``maps`` the "std" / "entropy" maps given; ``data_range`` the L
    of PSNR/SSIM; ``planes`` the GT plane indices selected for scoring; ``patch`` the patch
    side (None: whole planes), "auto" resolved against the GT's planes.
    """

    truth: PlaneStack
    preds: dict[str, PlaneStack]
    raw: PlaneStack | None
    maps: dict[str, PlaneStack]
    data_range: float
    planes: list[int]
    patch: int | None


def open_inputs(
    preds: Sequence[str | Path],
    gt: str | Path,
    *,
    names: Sequence[str] | None,
    raw: str | Path | None,
    normalize: str,
    data_range: float | None,
    patch: int | str | None,
    channel: int | str | None,
    planes: Sequence[int] | None,
    maps: dict[str, str | Path | None],
    samples: str | Path | None,
) -> Inputs:
    """Open every input and check that it pairs with the GT, before anything is computed.

    Raises MissingInputError (66) for a missing file, BadInputError (65) for a mismatched
    shape or sample layout, UsageError (2) for bad names, planes, patch side or data range.
    ``maps``: {"std": path or None, "entropy": path or None}.
    """
    names = list(names) if names is not None else default_names(preds)
    if len(names) != len(preds) or len(set(names)) != len(names) or set(names) & set(RESERVED):
        raise UsageError(
            describe("--names", "names", f"{len(preds)} distinct, not {RESERVED}", names)
        )
    if not preds and raw is None:
        raise UsageError("nothing to evaluate: give a prediction or --raw")
    truth = load_stack(gt, channel)
    stacks = {name: load_stack(p, channel) for name, p in zip(names, preds, strict=True)}
    raw_stack = load_stack(raw, channel) if raw is not None else None
    map_stacks = {k: load_stack(p, channel) for k, p in maps.items() if p}
    for stack in [*stacks.values(), *map_stacks.values()] + ([raw_stack] if raw_stack else []):
        check_match(truth, stack)
    L = resolve_data_range(normalize, np.dtype(truth.data.dtype), data_range)
    selected = list(range(truth.n)) if planes is None else [int(i) for i in planes]
    if not selected or any(not 0 <= i < truth.n for i in selected):
        raise UsageError(describe("--planes", "indices", f"within 0..{truth.n - 1}", selected))
    if patch == "auto":
        patch = AUTO_PATCH if min(truth.yx) >= AUTO_PATCH else None
    if patch is not None and not 11 <= patch <= min(truth.yx):
        found = f"{patch} for {truth.yx[0]}x{truth.yx[1]} planes"
        raise UsageError(
            describe("--patch", "side", f"11..{min(truth.yx)}, or 0 (whole planes)", found)
        )
    if samples is not None:
        open_samples(samples, truth, channel)  # refuse a bad layout before computing
    return Inputs(truth, stacks, raw_stack, map_stacks, L, selected, patch)


# ----------------------------------------------------------------------------- intensity scale


def resolve_data_range(mode: str, gt_dtype: np.dtype, data_range: float | None) -> float:
    """L of PSNR/SSIM: 1 after normalisation; else ``data_range`` or the GT dtype's maximum."""
    if mode not in NORMALIZE:
        raise UsageError(describe("--normalize", "mode", " | ".join(NORMALIZE), mode))
    if data_range is not None:
        if mode != "none":
            raise UsageError(f"--data-range applies to --normalize none only ({mode} uses L = 1)")
        if not (math.isfinite(data_range) and data_range > 0):
            raise UsageError(describe("--data-range", "L", "> 0", data_range))
        return float(data_range)
    if mode != "none":
        return 1.0
    if np.issubdtype(gt_dtype, np.integer):
        return float(np.iinfo(gt_dtype).max)
    raise UsageError(f"--normalize none with a {gt_dtype} GT needs --data-range L")


def intensity_note(mode: str, data_range: float) -> str:
    """One sentence saying how intensities were put on one scale (for tables and the report)."""
    if mode == "percentile":
        return (
            f"percentile: each plane of each image (predictions and GT separately) mapped so "
            f"that its {P_LOW} and {P_HIGH} percentiles become 0 and 1 (CARE); data range L = 1."
        )
    if mode == "linear-fit":
        return (
            f"linear-fit: GT planes percentile-normalised ({P_LOW}/{P_HIGH} -> 0/1); each "
            "prediction plane mapped onto the GT by least-squares a*pred + b; data range L = 1."
        )
    return f"none: raw intensities compared as stored; data range L = {data_range:g}."


def normalize_gt(gt: np.ndarray, mode: str) -> np.ndarray:
    """A GT plane in the compared scale (float64 (y, x))."""
    if mode == "none":
        return np.asarray(gt, dtype=np.float64)
    return normalize_percentile(gt, P_LOW, P_HIGH, np.float64)


def normalize_pred(pred: np.ndarray, gt_compared: np.ndarray, mode: str) -> np.ndarray:
    """A prediction plane in the compared scale, given the GT plane already in it."""
    if mode == "linear-fit":
        a, b = fit_linear(pred, gt_compared)
        return a * np.asarray(pred, dtype=np.float64) + b
    return normalize_gt(pred, mode)  # percentile and none treat a prediction like the GT
