"""``bigrestore evaluate``: score restorations against a ground truth (GT), beside baselines.

Every YX plane of the inputs (leading t/c/z axes flattened in storage order) is one image; it
is cut into non-overlapping ``patch``² squares (the paper reports medians over 256² test
patches) scored with :func:`bigrestore.metrics.evaluate_pair`, and each method is summarised
by the median and mean over all patches. The decorrelation resolution (Descloux et al. 2019)
uses the GT's x pixel size and unit; ``resolution_ratio`` = resolution(pred) / resolution(GT).

Intensity handling (the 8-bit W2S release was contrast-stretched per image, so a low/high
pair shares no intensity scale; the paper's FMD convention is plain 8-bit, L = 255):

- ``percentile``: every plane of every image, predictions and GT separately, is mapped so
  that its 0.1 and 99.9 percentiles become 0 and 1 (CARE / CSBDeep); metrics use L = 1.
- ``linear-fit``: the GT as in ``percentile``; each prediction plane is mapped onto it by the
  least-squares a·pred + b (the CARE paper's evaluation); L = 1. Gain and offset cost nothing.
- ``none``: raw values; L = ``data_range`` or the GT dtype's maximum (255 for uint8).

Baselines: the raw input, and a Gaussian filter of it whose sigma maximises the mean PSNR on
data that is not scored: ``val_for_sigma`` (``--tune-on RAW_VAL GT_VAL``) or, without it, the
first planes of the evaluation set, which are then held out from scoring for every method.
LPIPS needs torchvision's AlexNet and the LPIPS weights, neither a dependency: it is
reported as not computed, never as 0.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
from scipy import ndimage

from bigrestore import __version__
from bigrestore.decorrelation import decorrelation_resolution
from bigrestore.errors import BadInputError, MissingInputError, UsageError, describe
from bigrestore.io.convert import read_tiff
from bigrestore.io.ome import ImageMeta, open_image
from bigrestore.metrics import evaluate_pair, fit_linear, normalize_percentile, psnr, summarize

log = logging.getLogger(__name__)

NORMALIZE = ("percentile", "linear-fit", "none")
P_LOW, P_HIGH = 0.1, 99.9
SIGMA_GRID = tuple(float(s) for s in np.arange(0.5, 4.01, 0.25))
"""Gaussian sigmas (pixels) searched for the filter baseline."""
MAX_TUNE_PLANES = 8
MAX_HELD_OUT = 5
HIGHER_BETTER = ("psnr", "pearson", "ssim", "ms_ssim")
LOWER_BETTER = ("mae", "nrmse")
NEAR_ONE = ("resolution_ratio",)
LPIPS_STATUS = (
    "not computed: LPIPS needs torchvision's AlexNet and the LPIPS weights "
    "(neither is a bigrestore dependency)"
)
RESERVED = ("raw", "gaussian", "gt")
_UNIT_SYMBOLS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm"}


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
    """OME-Zarr via bigrestore.io.ome; TIFF via io.convert (unknown axes read as yx, tyx, tcyx, tczyx)."""
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
        if not 2 <= ndim <= 5:
            raise
        return read_tiff(path, axes={2: "yx", 3: "tyx", 4: "tcyx", 5: "tczyx"}[ndim])


def load_stack(path: str | Path, channel: int | str | None = None) -> PlaneStack:
    """Open an OME-Zarr image or TIFF as planes; ``channel`` (index or name) picks one of c."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or directory")
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
    if mode == "percentile":
        return normalize_percentile(pred, P_LOW, P_HIGH, np.float64)
    if mode == "linear-fit":
        a, b = fit_linear(pred, gt_compared)
        return a * np.asarray(pred, dtype=np.float64) + b
    return np.asarray(pred, dtype=np.float64)


def gaussian_denoise(raw: np.ndarray, sigma: float) -> np.ndarray:
    """The Gaussian-filter baseline: raw plane blurred with ``sigma`` pixels (reflect borders)."""
    return ndimage.gaussian_filter(np.asarray(raw, dtype=np.float64), sigma, mode="reflect")


def spread(indices: Sequence[int], count: int) -> list[int]:
    """Up to ``count`` of ``indices``, evenly spaced, first and last included."""
    if not indices:
        return []
    picks = np.linspace(0, len(indices) - 1, min(count, len(indices))).round().astype(int)
    return [indices[i] for i in sorted(set(picks.tolist()))]


def tune_sigma(
    raw: PlaneStack, gt: PlaneStack, planes: Sequence[int], mode: str, data_range: float
) -> tuple[float, dict[float, float]]:
    """Grid search of the Gaussian sigma maximising mean PSNR over ``planes`` of (raw, gt)."""
    scores: dict[float, list[float]] = {s: [] for s in SIGMA_GRID}
    for i in planes:
        r, g = raw.plane(i), normalize_gt(gt.plane(i), mode)
        for s in SIGMA_GRID:
            scores[s].append(psnr(normalize_pred(gaussian_denoise(r, s), g, mode), g, data_range))
    mean = {s: float(np.mean(v)) for s, v in scores.items()}
    return max(mean, key=lambda s: mean[s]), mean


def _resolution(image: np.ndarray, pixel_size: float) -> tuple[float, bool]:
    """Decorrelation resolution, NaN for an image it cannot measure (e.g. constant)."""
    try:
        result = decorrelation_resolution(image, pixel_size)
    except BadInputError as error:
        log.debug("decorrelation: %s", error)
        return math.nan, False
    return result.resolution, result.peak_found


def score_plane(
    pred: np.ndarray,
    gt: np.ndarray,
    data_range: float,
    patch: int | None,
    pixel_size: float,
    unit: str,
    gt_resolution: dict[tuple[int, int], tuple[float, bool]],
) -> list[dict[str, Any]]:
    """evaluate_pair rows plus decorrelation resolution; GT resolutions cached per patch."""
    rows = evaluate_pair(pred, gt, data_range, None, patch)
    for row in rows:
        y, x, h, w = row["y"], row["x"], row["height"], row["width"]
        if (y, x) not in gt_resolution:
            gt_resolution[y, x] = _resolution(gt[y : y + h, x : x + w], pixel_size)
        rp, found_p = _resolution(pred[y : y + h, x : x + w], pixel_size)
        rg, found_g = gt_resolution[y, x]
        row.update(
            resolution_pred=rp,
            resolution_gt=rg,
            resolution_ratio=rp / rg,
            peak_found_pred=found_p,
            peak_found_gt=found_g,
            unit=unit,
        )
    return rows


def badness(metric: str, value: float) -> float:
    """Lower is better: -value for PSNR-like metrics, |log value| for the resolution ratio."""
    if metric in HIGHER_BETTER:
        return -value
    if metric in NEAR_ONE:
        return abs(math.log(value)) if value > 0 else math.inf
    return value


def _jsonable(value: Any) -> Any:
    """NaN -> null, ±inf -> "inf"/"-inf", numpy scalars and paths -> plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return str(value) if isinstance(value, Path) else value


@dataclass
class EvaluationResult:
    """Per-patch rows, per-method summaries (median/mean/n per metric) and the settings used."""

    methods: tuple[str, ...]
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    samples_curve: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    report: Path | None = None

    def best(self) -> dict[str, str]:
        """Method with the best median per metric (closest to 1 for the resolution ratio)."""
        best = {}
        for metric in HIGHER_BETTER + LOWER_BETTER + NEAR_ONE:
            values = {
                m: float(self.summary[m][metric]["median"])
                for m in self.methods
                if metric in self.summary[m] and not math.isnan(self.summary[m][metric]["median"])
            }
            if len(values) >= 2:
                best[metric] = min(values, key=lambda m: badness(metric, values[m]))
        return best

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "settings": self.settings,
                "methods": list(self.methods),
                "summary": self.summary,
                "best": self.best(),
                "lpips": LPIPS_STATUS,
                "notes": self.notes,
                "samples_curve": self.samples_curve,
                "training": self.training,
            }
        )

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def write_csv(self, path: str | Path) -> None:
        """One row per (method, plane, patch)."""
        columns = ["method", "plane", "label"]
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)


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


def _sample_getter(path: Path, gt: PlaneStack, channel: int | str | None) -> tuple[int, Callable]:
    """N and get(s, i) -> plane i of sample s, for the two accepted layouts of N samples.

    (a) a directory of N images (*.zarr or *.tif[f], sorted by name), each like the GT;
    (b) one image holding N copies of the GT's planes, sample-major: e.g. a tcyx image with
        t indexing the samples when the GT is cyx (planes = N x the GT's planes).
    """
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or directory")
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


def samples_curve(
    path: str | Path,
    gt: PlaneStack,
    planes: Sequence[int],
    mode: str,
    data_range: float,
    patch: int | None,
    channel: int | str | None = None,
) -> dict[str, Any]:
    """Metrics of the mean of the first k samples, k = 1..N (the paper's Fig. S1).

    Returns {"k": [1..N], "median": {metric: [..]}, "mean": {metric: [..]}} over patches of
    ``planes``; metrics as evaluate_pair plus "mse" (compared scale), no resolution.
    """
    n, get = _sample_getter(Path(path), gt, channel)
    per_k: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for i in planes:
        g = normalize_gt(gt.plane(i), mode)
        total = np.zeros(gt.yx)
        for s in range(n):
            total += get(s, i)
            p = normalize_pred(total / (s + 1), g, mode)
            rows = evaluate_pair(p, g, data_range, None, patch)
            for row in rows:
                y, x, h, w = row["y"], row["x"], row["height"], row["width"]
                row["mse"] = float(
                    np.mean((p[y : y + h, x : x + w] - g[y : y + h, x : x + w]) ** 2)
                )
            per_k[s] += rows
    summaries = [summarize(rows) for rows in per_k]
    names = list(summaries[0])
    return {
        "path": str(path),
        "n_samples": n,
        "k": list(range(1, n + 1)),
        "median": {m: [s[m]["median"] for s in summaries] for m in names},
        "mean": {m: [s[m]["mean"] for s in summaries] for m in names},
    }


def _regions(
    regions: Sequence[tuple[int, int, int, int]] | None, scored: list[int], yx: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(plane, y, x, size) crops for the report; default a centred 256² crop of 3 planes."""
    if regions is None:
        size = min(256, *yx)
        y0, x0 = (yx[0] - size) // 2, (yx[1] - size) // 2
        return [(i, y0, x0, size) for i in spread(scored, 3)]
    for plane, y, x, size in regions:
        if (
            plane not in scored
            or size < 16
            or y < 0
            or x < 0
            or y + size > yx[0]
            or x + size > yx[1]
        ):
            found = (plane, y, x, size)
            raise UsageError(
                describe("--region", "PLANE,Y,X,SIZE", "a scored plane, inside", found)
            )
    return [tuple(r) for r in regions]


def _tuning(
    raw: PlaneStack,
    gt: PlaneStack,
    selected: list[int],
    mode: str,
    data_range: float,
    val_for_sigma: tuple[str | Path, str | Path] | None,
    channel: int | str | None,
) -> tuple[dict[str, Any] | None, list[int]]:
    """Tune the Gaussian sigma; return its settings and the planes left to score."""
    if val_for_sigma is not None:
        raw_val, gt_val = (
            load_stack(val_for_sigma[0], channel),
            load_stack(val_for_sigma[1], channel),
        )
        check_match(gt_val, raw_val)
        tune_planes, source, scored = spread(list(range(gt_val.n)), MAX_TUNE_PLANES), "", selected
        source = f"{len(tune_planes)} planes of {raw_val.path} vs {gt_val.path} (not scored)"
    elif len(selected) >= 2:
        k = min(MAX_HELD_OUT, max(1, len(selected) // 5))
        raw_val, gt_val, tune_planes, scored = raw, gt, selected[:k], selected[k:]
        source = f"planes {tune_planes} of the evaluation input, held out from scoring"
    else:
        return None, selected
    sigma, scores = tune_sigma(raw_val, gt_val, tune_planes, mode, data_range)
    log.info("Gaussian baseline: sigma %.2f px, tuned on %s", sigma, source)
    return {"sigma": sigma, "tuned_on": source, "criterion": "mean PSNR", "grid": scores}, scored


def evaluate(
    preds: Sequence[str | Path],
    gt: str | Path,
    names: Sequence[str] | None = None,
    raw: str | Path | None = None,
    normalize: str = "percentile",
    data_range: float | None = None,
    patch: int | None = 256,
    channel: int | str | None = None,
    planes: Sequence[int] | None = None,
    report_dir: str | Path | None = None,
    std: str | Path | None = None,
    entropy: str | Path | None = None,
    samples: str | Path | None = None,
    model_dir: str | Path | None = None,
    gaussian_baseline: bool = True,
    val_for_sigma: tuple[str | Path, str | Path] | None = None,
    lpips_weights: str | Path | None = None,
    regions: Sequence[tuple[int, int, int, int]] | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Score ``preds`` (and the raw / Gaussian baselines) against ``gt``; see the module doc.

    planes: indices into the GT's flattened planes (default all). patch: side in pixels, None
    for whole planes. regions: (plane, y, x, size) crops shown in the report. Inputs are
    checked (exit 66 missing, 65 mismatched) before anything is computed or written.
    """
    if lpips_weights is not None:
        raise UsageError(
            f"--lpips-weights {lpips_weights}: LPIPS is not supported here; it needs "
            "torchvision's AlexNet, not a bigrestore dependency. Run without it."
        )
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
    maps = {k: load_stack(p, channel) for k, p in (("std", std), ("entropy", entropy)) if p}
    for stack in [*stacks.values(), *maps.values()] + ([raw_stack] if raw_stack else []):
        check_match(truth, stack)
    L = resolve_data_range(normalize, np.dtype(truth.data.dtype), data_range)
    selected = list(range(truth.n)) if planes is None else [int(i) for i in planes]
    if not selected or any(not 0 <= i < truth.n for i in selected):
        raise UsageError(describe("--planes", "indices", f"within 0..{truth.n - 1}", selected))
    if patch is not None and not 11 <= patch <= min(truth.yx):
        found = f"{patch} for {truth.yx[0]}x{truth.yx[1]} planes"
        raise UsageError(
            describe("--patch", "side", f"11..{min(truth.yx)}, or 0 (whole planes)", found)
        )
    if samples is not None:
        _sample_getter(Path(samples), truth, channel)  # refuse a bad layout before computing
    notes: list[str] = []
    gaussian, scored = None, selected
    if gaussian_baseline and raw_stack is not None:
        gaussian, scored = _tuning(raw_stack, truth, selected, normalize, L, val_for_sigma, channel)
        if gaussian is None:
            notes.append("Gaussian baseline skipped: one plane only; pass --tune-on RAW_VAL GT_VAL")
    elif gaussian_baseline:
        notes.append("Gaussian baseline needs the raw input (--raw)")
    crops = _regions(regions, scored, truth.yx)
    training = None
    if model_dir is not None:
        from bigrestore.report import read_training_log

        training = read_training_log(model_dir)
        if training is None:
            notes.append(f"no metrics.csv in {model_dir}: no training curves")
    if report_dir is not None:
        from bigrestore.report import prepare_report_dir

        prepare_report_dir(Path(report_dir), overwrite)

    methods = (["raw"] if raw_stack else []) + (["gaussian"] if gaussian else []) + names
    rows: list[dict[str, Any]] = []
    figures = []
    for i in scored:
        g_stored = truth.plane(i)
        g = normalize_gt(g_stored, normalize)
        candidates: dict[str, np.ndarray] = {}
        if raw_stack is not None:
            candidates["raw"] = raw_stack.plane(i)
            if gaussian:
                candidates["gaussian"] = gaussian_denoise(candidates["raw"], gaussian["sigma"])
        candidates.update((name, stack.plane(i)) for name, stack in stacks.items())
        cache: dict[tuple[int, int], tuple[float, bool]] = {}
        compared = {}
        for name, values in candidates.items():
            compared[name] = normalize_pred(values, g, normalize)
            for row in score_plane(
                compared[name], g, L, patch, truth.pixel_size, truth.unit, cache
            ):
                rows.append({"method": name, "plane": i, "label": truth.labels[i], **row})
        for plane, y, x, size in crops:
            if plane == i:
                figures.append(_figure(i, truth.labels[i], y, x, size, compared, g, maps))
    summary = {
        m: summarize(
            [{k: v for k, v in r.items() if k != "plane"} for r in rows if r["method"] == m]
        )
        for m in methods
    }
    settings = {
        "version": __version__,
        "gt": str(truth.path),
        "raw": str(raw) if raw else None,
        "predictions": {n: str(s.path) for n, s in stacks.items()},
        "normalize": normalize,
        "intensity": intensity_note(normalize, L),
        "data_range": L,
        "patch": patch,
        "planes_total": truth.n,
        "planes_scored": scored,
        "channel": channel,
        "pixel_size": truth.pixel_size,
        "unit": truth.unit,
        "gaussian": gaussian,
        "std": str(std) if std else None,
        "entropy": str(entropy) if entropy else None,
    }
    result = EvaluationResult(tuple(methods), rows, summary, settings, notes, training=training)
    if samples is not None:
        result.samples_curve = samples_curve(samples, truth, scored, normalize, L, patch, channel)
    if report_dir is not None:
        from bigrestore.report import write_report

        result.report = write_report(Path(report_dir), result.to_dict(), figures)
    return result


def _figure(
    plane: int,
    label: str,
    y: int,
    x: int,
    size: int,
    compared: dict[str, np.ndarray],
    gt: np.ndarray,
    maps: dict[str, PlaneStack],
) -> Any:
    """The report's view of one crop: every image in the compared scale, GT last."""
    from bigrestore.report import RegionFigure

    window = (slice(y, y + size), slice(x, x + size))
    images = {name: values[window] for name, values in compared.items()}
    images["gt"] = gt[window]
    extra = {k: stack.plane(plane)[window] for k, stack in maps.items()}
    title = f"plane {plane} ({label}), y {y}-{y + size}, x {x}-{x + size}"
    return RegionFigure(
        title, images, "gt", size // 2, y, x, extra.get("std"), extra.get("entropy")
    )
