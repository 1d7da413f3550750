"""``bigrestore evaluate``: score restorations against a ground truth (GT), beside baselines.

Inputs are read as YX planes and put on one intensity scale (``percentile``, ``linear-fit``
or ``none``) by :mod:`bigrestore.evaluate.pairing`. Every plane is cut into non-overlapping
``patch``² squares (the paper reports medians over 256² test patches) scored with
:func:`bigrestore.evaluate.metrics.evaluate_pair`, and each method is summarised by the median
and mean over all patches in an :class:`bigrestore.evaluate.result.EvaluationResult`. The
decorrelation resolution (Descloux et al. 2019) uses the GT's x pixel size and unit;
``resolution_ratio`` = resolution(pred) / resolution(GT).

Baselines: the raw input, and a Gaussian filter of it (:mod:`bigrestore.evaluate.baselines`)
whose sigma maximises the mean PSNR on data that is not scored: ``val_for_sigma``
(``--tune-on RAW_VAL GT_VAL``) or, without it, the first planes of the evaluation set, which
are then held out from scoring for every method. ``gaussian_oracle`` adds the Gaussian whose
sigma is the best per image, chosen with the ground truth and scored on the same intensity
scale as every method: an upper bound of the filter, labelled so, that also runs on a single
image. N individual samples (``--samples``) give
the samples curve: the metrics of the mean of the first k samples, k = 1..N (the paper's
Fig. S1). LPIPS needs torchvision's AlexNet and the LPIPS weights, neither a dependency: it
is reported as not computed, never as 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bigrestore import __version__
from bigrestore.errors import BadInputError, UsageError, describe
from bigrestore.evaluate.baselines import (
    ORACLE_CRITERION,
    best_gaussian_per_image,
    gaussian_denoise,
    spread,
    tune_gaussian,
)
from bigrestore.evaluate.decorrelation import decorrelation_resolution
from bigrestore.evaluate.figures import RegionFigure, region_figure
from bigrestore.evaluate.metrics import evaluate_pair, summarize
from bigrestore.evaluate.pairing import (
    Inputs,
    PlaneStack,
    intensity_note,
    normalize_gt,
    normalize_pred,
    open_inputs,
    open_samples,
)
from bigrestore.evaluate.report import (
    model_label,
    prepare_report_dir,
    read_training_log,
    write_report,
)
from bigrestore.evaluate.result import EvaluationResult

log = logging.getLogger(__name__)


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


def _gaussian(
    inputs: Inputs,
    wanted: bool,
    normalize: str,
    val_for_sigma: tuple[str | Path, str | Path] | None,
    channel: int | str | None,
    notes: list[str],
) -> tuple[dict[str, Any] | None, list[int]]:
    """The tuned Gaussian baseline's settings (None when not run) and the planes to score."""
    if not wanted:
        return None, inputs.planes
    if inputs.raw is None:
        notes.append("Gaussian baseline needs the raw input (--raw)")
        return None, inputs.planes
    gaussian, scored = tune_gaussian(
        inputs.raw,
        inputs.truth,
        inputs.planes,
        normalize,
        inputs.data_range,
        val_for_sigma,
        channel,
    )
    if gaussian is None:
        notes.append("Gaussian baseline skipped: one plane only; pass --tune-on RAW_VAL GT_VAL")
    return gaussian, scored


ORACLE = "gaussian-oracle"


def _training(model_dir: str | Path | None, notes: list[str]) -> dict[str, Any] | None:
    """Training curves from MODEL_DIR/metrics.csv, noted when missing."""
    if model_dir is None:
        return None
    training = read_training_log(model_dir)
    if training is None:
        notes.append(f"no metrics.csv beside {model_label(model_dir)}: no training curves")
    else:
        training["model"] = model_label(model_dir)
    return training


def _candidates(inputs: Inputs, i: int, gaussian: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """Plane ``i`` of every method, in table order: raw, gaussian, then the predictions."""
    candidates: dict[str, np.ndarray] = {}
    if inputs.raw is not None:
        candidates["raw"] = inputs.raw.plane(i)
        if gaussian:
            candidates["gaussian"] = gaussian_denoise(candidates["raw"], gaussian["sigma"])
    candidates.update((name, stack.plane(i)) for name, stack in inputs.preds.items())
    return candidates


def _score_planes(
    inputs: Inputs,
    scored: list[int],
    normalize: str,
    patch: int | None,
    gaussian: dict[str, Any] | None,
    crops: list[tuple[int, int, int, int]],
    oracle: dict[int, float] | None = None,
) -> tuple[list[dict[str, Any]], list[RegionFigure]]:
    """Per-patch rows of every method on the ``scored`` planes, and the figures of ``crops``.
    ``oracle``: when a dict, the best-per-image Gaussian is scored too and its sigma of each
    plane recorded there."""
    truth, L = inputs.truth, inputs.data_range
    rows: list[dict[str, Any]] = []
    figures = []
    for i in scored:
        g = normalize_gt(truth.plane(i), normalize)
        cache: dict[tuple[int, int], tuple[float, bool]] = {}
        compared = {
            name: normalize_pred(values, g, normalize)
            for name, values in _candidates(inputs, i, gaussian).items()
        }
        if oracle is not None and "raw" in compared:  # in table order: after the baselines
            raw_plane = inputs.raw.plane(i)
            fitted, oracle[i] = best_gaussian_per_image(raw_plane, g, normalize, L)
            baselines = {n: v for n, v in compared.items() if n in ("raw", "gaussian")}
            compared = {**baselines, ORACLE: fitted, **compared}
        for name, values in compared.items():
            for row in score_plane(values, g, L, patch, truth.pixel_size, truth.unit, cache):
                rows.append({"method": name, "plane": i, "label": truth.labels[i], **row})
        for crop in (c for c in crops if c[0] == i):
            extra = {k: stack.plane(i) for k, stack in inputs.maps.items()}
            figures.append(region_figure(i, truth.labels[i], crop, compared, g, extra))
    return rows, figures


def _summaries(
    rows: list[dict[str, Any]], methods: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Median / mean / n per metric of every method over its patches."""
    return {
        m: summarize(
            [{k: v for k, v in r.items() if k != "plane"} for r in rows if r["method"] == m]
        )
        for m in methods
    }


def _settings(
    inputs: Inputs,
    scored: list[int],
    gaussian: dict[str, Any] | None,
    paths: dict[str, str | Path | None],
    normalize: str,
    patch: int | None,
    channel: int | str | None,
) -> dict[str, Any]:
    """The settings recorded in the JSON and the report; ``paths``: raw, std, entropy given."""
    truth, L = inputs.truth, inputs.data_range
    return {
        "version": __version__,
        "gt": str(truth.path),
        "raw": str(paths["raw"]) if paths["raw"] else None,
        "predictions": {n: str(s.path) for n, s in inputs.preds.items()},
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
        "gaussian_oracle": None,
        "model": model_label(paths["model"]) if paths.get("model") else None,
        "std": str(paths["std"]) if paths["std"] else None,
        "entropy": str(paths["entropy"]) if paths["entropy"] else None,
    }


def evaluate(
    preds: Sequence[str | Path],
    gt: str | Path,
    names: Sequence[str] | None = None,
    raw: str | Path | None = None,
    normalize: str = "percentile",
    data_range: float | None = None,
    patch: int | str | None = 256,
    channel: int | str | None = None,
    planes: Sequence[int] | None = None,
    report_dir: str | Path | None = None,
    std: str | Path | None = None,
    entropy: str | Path | None = None,
    samples: str | Path | None = None,
    model_dir: str | Path | None = None,
    gaussian_baseline: bool = True,
    val_for_sigma: tuple[str | Path, str | Path] | None = None,
    gaussian_oracle: bool = False,
    lpips_weights: str | Path | None = None,
    regions: Sequence[tuple[int, int, int, int]] | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Score ``preds`` (and the raw / Gaussian baselines) against ``gt``; see the module doc.

    planes: indices into the GT's flattened planes (default all). patch: side in pixels, None
    for whole planes, "auto" for 256 where the planes are that large and whole planes where
    they are smaller (the command line's default). samples: N individual samples (a directory of N images, e.g. the
    OUT.zarr/samples of ``bigrestore run --save-samples``, or one sample-major image) for the
    samples curve. gaussian_oracle: also score the Gaussian with the best sigma per image
    (chosen with the GT; needs ``raw``). regions: (plane, y, x, size) crops shown in the
    report. Inputs are checked (exit 66 missing, 65 mismatched) before anything is computed
    or written.
    """
    if lpips_weights is not None:
        raise UsageError(
            f"--lpips-weights {lpips_weights}: LPIPS is not supported here; it needs "
            "torchvision's AlexNet, not a bigrestore dependency. Run without it."
        )
    maps = {"std": std, "entropy": entropy}
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
        maps=maps,
        samples=samples,
    )
    notes: list[str] = []
    gaussian, scored = _gaussian(
        inputs, gaussian_baseline, normalize, val_for_sigma, channel, notes
    )
    crops = _regions(regions, scored, inputs.truth.yx)
    training = _training(model_dir, notes)
    if report_dir is not None:
        prepare_report_dir(Path(report_dir), overwrite)
    shown = crops if report_dir is not None else []
    oracle: dict[int, float] | None = {} if gaussian_oracle and inputs.raw else None
    rows, figures = _score_planes(inputs, scored, normalize, inputs.patch, gaussian, shown, oracle)
    paths = {"raw": raw, "model": model_dir, **maps}
    settings = _settings(inputs, scored, gaussian, paths, normalize, inputs.patch, channel)
    if oracle is not None:
        settings["gaussian_oracle"] = {"criterion": ORACLE_CRITERION, "sigmas": oracle}
    result = _result(inputs, rows, settings, notes, training, oracle is not None)
    if samples is not None:
        L = inputs.data_range
        result.samples_curve = samples_curve(
            samples, inputs.truth, scored, normalize, L, inputs.patch, channel
        )
    if report_dir is not None:
        result.report = write_report(Path(report_dir), result.to_dict(), figures)
    return result


def _result(
    inputs: Inputs,
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    notes: list[str],
    training: dict[str, Any] | None,
    oracle: bool,
) -> EvaluationResult:
    """The result with its methods in table order: raw, the Gaussians, the predictions."""
    baselines = ["raw"] if inputs.raw else []
    baselines += ["gaussian"] if settings["gaussian"] else []
    baselines += [ORACLE] if oracle else []
    methods = baselines + list(inputs.preds)
    summaries = _summaries(rows, methods)
    return EvaluationResult(tuple(methods), rows, summaries, settings, notes, training=training)
