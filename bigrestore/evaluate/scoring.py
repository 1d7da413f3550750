"""``bigrestore evaluate``: score restorations against a ground truth (GT), beside baselines.

Inputs are read as YX planes and put on one intensity scale (``percentile``, ``linear-fit``
or ``none``) by :mod:`bigrestore.evaluate.pairing`. Every plane is cut into non-overlapping
``patch``² squares (the paper reports medians over 256² test patches) scored with
:func:`bigrestore.evaluate.metrics.evaluate_pair`, and each method is summarised by the median and mean
over all patches. The decorrelation resolution (Descloux et al. 2019) uses the GT's x pixel
size and unit; ``resolution_ratio`` = resolution(pred) / resolution(GT).

Baselines: the raw input, and a Gaussian filter of it whose sigma maximises the mean PSNR on
data that is not scored: ``val_for_sigma`` (``--tune-on RAW_VAL GT_VAL``) or, without it, the
first planes of the evaluation set, which are then held out from scoring for every method.
N individual samples (``--samples``) give the samples curve: the metrics of the mean of the
first k samples, k = 1..N (the paper's Fig. S1). LPIPS needs torchvision's AlexNet and the
LPIPS weights, neither a dependency: it is reported as not computed, never as 0.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from bigrestore import __version__
from bigrestore.errors import BadInputError, UsageError, describe
from bigrestore.evaluate.decorrelation import decorrelation_resolution
from bigrestore.evaluate.figures import region_figure
from bigrestore.evaluate.metrics import evaluate_pair, psnr, summarize
from bigrestore.evaluate.pairing import (
    PlaneStack,
    check_match,
    intensity_note,
    load_stack,
    normalize_gt,
    normalize_pred,
    open_inputs,
    open_samples,
)
from bigrestore.evaluate.report import prepare_report_dir, read_training_log, write_report

log = logging.getLogger(__name__)

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


def _window(row: dict[str, Any]) -> tuple[slice, slice]:
    """The (y, x) slices of the patch an evaluate_pair row scores."""
    return slice(row["y"], row["y"] + row["height"]), slice(row["x"], row["x"] + row["width"])


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
        window, key = _window(row), (row["y"], row["x"])
        if key not in gt_resolution:
            gt_resolution[key] = _resolution(gt[window], pixel_size)
        rp, found_p = _resolution(pred[window], pixel_size)
        rg, found_g = gt_resolution[key]
        row.update(
            resolution_pred=rp,
            resolution_gt=rg,
            resolution_ratio=rp / rg,
            peak_found_pred=found_p,
            peak_found_gt=found_g,
            unit=unit,
        )
    return rows


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

    ``path``: N samples in a layout of :func:`bigrestore.evaluate.pairing.open_samples`. Returns
    {"path", "n_samples", "k": [1..N], "median": {metric: [..]}, "mean": {metric: [..]}} over
    patches of ``planes``; metrics as evaluate_pair plus "mse" (compared scale), no resolution.
    """
    n, get = open_samples(path, gt, channel)
    per_k: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for i in planes:
        g = normalize_gt(gt.plane(i), mode)
        total = np.zeros(gt.yx)
        for s in range(n):
            total += get(s, i)
            p = normalize_pred(total / (s + 1), g, mode)
            rows = evaluate_pair(p, g, data_range, None, patch)
            for row in rows:
                window = _window(row)
                row["mse"] = float(np.mean((p[window] - g[window]) ** 2))
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


def _regions(
    regions: Sequence[tuple[int, int, int, int]] | None, scored: list[int], yx: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(plane, y, x, size) crops for the report; default a centred 256² crop of 3 planes."""
    if regions is None:
        size = min(256, *yx)
        y0, x0 = (yx[0] - size) // 2, (yx[1] - size) // 2
        return [(i, y0, x0, size) for i in spread(scored, 3)]
    for plane, y, x, size in regions:
        inside = 0 <= y and 0 <= x and y + size <= yx[0] and x + size <= yx[1]
        if plane not in scored or size < 16 or not inside:
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
        raw_val, gt_val = (load_stack(p, channel) for p in val_for_sigma)
        check_match(gt_val, raw_val)
        tune_planes, scored = spread(list(range(gt_val.n)), MAX_TUNE_PLANES), selected
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
    for whole planes. samples: N individual samples (a directory of N images, e.g. the
    OUT.zarr/samples of ``bigrestore run --save-samples``, or one sample-major image) for the
    samples curve. regions: (plane, y, x, size) crops shown in the report. Inputs are
    checked (exit 66 missing, 65 mismatched) before anything is computed or written.
    """
    if lpips_weights is not None:
        raise UsageError(
            f"--lpips-weights {lpips_weights}: LPIPS is not supported here; it needs "
            "torchvision's AlexNet, not a bigrestore dependency. Run without it."
        )
    inputs = open_inputs(
        preds,
        gt,
        names=names,
        raw=raw,
        normalize=normalize,
        data_range=data_range,
        patch=patch,
        channel=channel,
        planes=planes,
        maps={"std": std, "entropy": entropy},
        samples=samples,
    )
    truth, stacks, raw_stack, maps = inputs.truth, inputs.preds, inputs.raw, inputs.maps
    L, selected = inputs.data_range, inputs.planes
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
        training = read_training_log(model_dir)
        if training is None:
            notes.append(f"no metrics.csv in {model_dir}: no training curves")
    if report_dir is not None:
        prepare_report_dir(Path(report_dir), overwrite)

    methods = (["raw"] if raw_stack else []) + (["gaussian"] if gaussian else []) + list(stacks)
    rows: list[dict[str, Any]] = []
    figures = []
    for i in scored:
        g = normalize_gt(truth.plane(i), normalize)
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
        for crop in (c for c in crops if c[0] == i and report_dir is not None):
            extra = {k: stack.plane(i) for k, stack in maps.items()}
            figures.append(region_figure(i, truth.labels[i], crop, compared, g, extra))
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
        result.report = write_report(Path(report_dir), result.to_dict(), figures)
    return result
