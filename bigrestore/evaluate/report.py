"""The HTML report of ``bigrestore evaluate``: index.html plus PNGs, readable at a glance.

The page shows the metric table (best median per metric starred), the settings, one section
per region (intensities, pred - GT difference maps, a line profile, the std / entropy
uncertainty maps), the samples curve (the paper's Fig. S1) and the training curves. Pictures
come from :mod:`bigrestore.evaluate.figures`; the page is static: no scripts, no network.
It names inputs by their store names (``restored.zarr/mean``) and the model by its name and
weights hash, never by a path of the machine it was made on.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import bigrestore
from bigrestore.errors import BadInputError, CannotCreateOutputError, MissingInputError, describe
from bigrestore.evaluate.figures import (
    RegionFigure,
    fmt_number,
    html_row,
    line_chart,
    method_label,
    region_html,
)
from bigrestore.evaluate.result import HIGHER_BETTER, LOWER_BETTER, NEAR_ONE, badness

_ARROWS = {
    "psnr": "↑",
    "pearson": "↑",
    "ssim": "↑",
    "ms_ssim": "↑",
    "mae": "↓",
    "nrmse": "↓",
    "resolution_ratio": "→1",
}
_METRIC_ORDER = (
    "mae",
    "psnr",
    "nrmse",
    "pearson",
    "ssim",
    "ms_ssim",
    "resolution_pred",
    "resolution_gt",
    "resolution_ratio",
)
_SAMPLES_CURVE_METRICS = ("psnr", "mse", "ssim")
#: Column headers of the metrics: what a reader calls them (resolution ones get the unit).
METRIC_NAMES = {
    "mae": "MAE",
    "psnr": "PSNR (dB)",
    "nrmse": "NRMSE",
    "pearson": "Pearson r",
    "ssim": "SSIM",
    "ms_ssim": "MS-SSIM",
    "mse": "MSE",
    "resolution_pred": "resolution, prediction",
    "resolution_gt": "resolution, ground truth",
    "resolution_ratio": "resolution ratio",
}
_MAX_TRAINING_CHARTS = 12


# ----------------------------------------------------------------------------- inputs


def read_training_log(model_dir: str | Path) -> dict[str, Any] | None:
    """Curves from MODEL_DIR/metrics.csv: x = 'epoch' (else 'step', else the row number).

    Every other column with numbers becomes a series of [x, y] points (blank cells skipped).
    Returns {"path", "x", "series": {column: [[x, y], ...]}}, or None without a metrics.csv.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MissingInputError(f"{model_dir}: no such directory (--model-dir)")
    path = model_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    if not columns or not rows:
        raise BadInputError(describe(path, "rows", "a header and at least one row", len(rows)))
    x_name = next((c for c in ("epoch", "step") if c in columns), None)

    def number(text: str | None) -> float | None:
        try:
            value = float(text) if text not in (None, "") else None
        except ValueError:
            return None
        return value if value is not None and math.isfinite(value) else None

    series = {}
    for column in columns:
        if column in ("epoch", "step"):
            continue
        points = [
            [number(row.get(x_name)) if x_name else float(j), number(row.get(column))]
            for j, row in enumerate(rows)
        ]
        points = [p for p in points if p[0] is not None and p[1] is not None]
        if points:
            series[column] = points
    return {"path": str(path), "x": x_name or "row", "series": series}


def model_label(model_dir: str | Path) -> str:
    """A model by its name and weights hash, not by where it is installed."""
    directory = Path(model_dir).resolve()
    bundled = Path(bigrestore.__file__).resolve().parent
    name = "the bundled model" if bundled in directory.parents else f"model “{directory.name}”"
    try:
        digest = json.loads((directory / "model.json").read_text())["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return name
    return f"{name}, weights sha256 {str(digest)[:12]}"


def prepare_report_dir(directory: Path, overwrite: bool) -> None:
    """Create the report directory; a non-empty one is replaced only with ``overwrite``.

    Even then only a previous report (index.html and PNGs, nothing else) is deleted, so a
    mistyped ``--report .`` cannot remove a user's files.
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        if not overwrite:
            raise CannotCreateOutputError(f"{directory}: report directory exists; pass --overwrite")
        files = list(directory.iterdir()) if directory.is_dir() else []
        ours = all(f.is_file() and f.suffix in (".html", ".png") for f in files)
        if not (ours and (directory / "index.html").is_file()):
            raise CannotCreateOutputError(
                f"{directory}: not a bigrestore report (index.html + PNGs only); not replacing it"
            )
        shutil.rmtree(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotCreateOutputError(
            f"{directory}: cannot create report directory: {exc}"
        ) from exc


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
 background:#fafafa;max-width:1240px;margin:20px auto;padding:0 16px}
h1{font-size:22px;margin:0 0 8px} h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:30px}
h3{font-size:15px;margin:18px 0 6px} dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px}
dt{font-weight:600} dd{margin:0} table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#eef1f5}
td.m{text-align:left;font-weight:600} td.best{background:#cfeccf;font-weight:700}
small{color:#777} .row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:6px}
figcaption{font-size:12px;text-align:center;margin-top:4px}
figure img{max-width:100%;height:auto;display:block;image-rendering:pixelated}
"""


def metric_name(metric: str, unit: str = "") -> str:
    """A metric's readable name; the resolutions carry their unit."""
    name = METRIC_NAMES.get(metric, metric.replace("_", " "))
    return f"{name} ({unit})" if unit and metric in ("resolution_pred", "resolution_gt") else name


def display_path(path: str | Path | None) -> str:
    """A store by its name (``restored.zarr/mean``): the report never shows a machine's path."""
    if not path:
        return "–"
    p = Path(str(path))
    return "/".join(p.parts[-2:]) if p.parent.suffix == ".zarr" else p.name


def starred(result: dict[str, Any]) -> dict[str, str]:
    """The best method per metric among real methods: the per-image Gaussian, which chose its
    sigma with the ground truth, is a reference line and is never starred."""
    summary, best = result["summary"], {}
    for metric in HIGHER_BETTER + LOWER_BETTER + NEAR_ONE:
        values = {}
        for method in result["methods"]:
            entry = summary[method].get(metric) if method != "gaussian-oracle" else None
            median = entry.get("median") if entry else None
            if isinstance(median, int | float) and not math.isnan(median):
                values[method] = float(median)
        if len(values) >= 2:
            best[metric] = min(values, key=lambda m: badness(metric, values[m]))
    return best


def _table(result: dict[str, Any]) -> str:
    summary, best = result["summary"], starred(result)
    unit = result["settings"].get("unit", "")
    metrics = [m for m in _METRIC_ORDER if any(m in s for s in summary.values())]
    head = "".join(
        f"<th>{html.escape(metric_name(m, unit))} {_ARROWS.get(m, '')}</th>" for m in metrics
    )
    rows = []
    for method in result["methods"]:
        cells = [f'<td class="m">{html.escape(method_label(method))}</td>']
        for m in metrics:
            s = summary[method].get(m)
            if s is None:
                cells.append("<td>–</td>")
                continue
            med, mean = (
                float(v) if isinstance(v, int | float) else math.nan
                for v in (s["median"], s["mean"])
            )
            mark = best.get(m) == method
            cells.append(
                f"<td{' class=best' if mark else ''}>{'★ ' if mark else ''}{fmt_number(med)}"
                f"<br><small>mean {fmt_number(mean)}</small></td>"
            )
        cells.append("<td><small>not computed</small></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    n = next(iter(summary.values()), {}).get("psnr", {}).get("n", 0)
    oracle = (
        ", never given to the Gaussian with the best sigma per image: it chose its sigma with "
        "the ground truth"
        if "gaussian-oracle" in result["methods"]
        else ""
    )
    return (
        f"<table><tr><th>method</th>{head}<th>LPIPS</th></tr>{''.join(rows)}</table>"
        f"<p><small>Median over {n} patches (mean below); ★ best median per metric "
        f"(↑ higher, ↓ lower, →1 closest to 1 is better){oracle}.</small></p>"
    )


def _baselines(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings lines of the Gaussian baselines (tuned, and best per image)."""
    gauss, oracle = s.get("gaussian"), s.get("gaussian_oracle")
    items = [
        (
            method_label("gaussian"),
            f"sigma {gauss['sigma']:g} px, maximising {gauss['criterion']} on {gauss['tuned_on']}"
            if gauss
            else "not run",
        )
    ]
    if oracle:
        sigmas = ", ".join(f"{v:g}" for v in oracle["sigmas"].values())
        items.append((method_label("gaussian-oracle"), f"{oracle['criterion']}; sigma {sigmas} px"))
    return items


def _settings(result: dict[str, Any]) -> str:
    s = result["settings"]
    patch = s.get("patch")
    items = [("ground truth", display_path(s["gt"])), ("raw input", display_path(s.get("raw")))]
    items += [(f"prediction “{n}”", display_path(p)) for n, p in s["predictions"].items()]
    if s.get("model"):
        items.append(("model", s["model"]))
    items += [
        ("intensity", s["intensity"]),
        ("patches", f"{patch}² px, non-overlapping" if patch else "whole planes"),
        ("planes scored", f"{len(s['planes_scored'])} of {s['planes_total']}"),
        (
            "pixel size",
            f"{s['pixel_size']:g} {s['unit']} (decorrelation resolution, Descloux 2019)",
        ),
    ]
    items += _baselines(s)
    items += [("LPIPS", result["lpips"])]
    items += [("note", n) for n in result.get("notes", [])]
    return (
        "<dl>"
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
        + "</dl>"
    )


def _chart_section(title: str, note: str, charts: Iterable[str]) -> str:
    """<h2> ``title``, a small ``note`` (HTML) and the charts side by side."""
    return f"<h2>{title}</h2><p><small>{note}</small></p>{html_row(charts)}"


def _curves(result: dict[str, Any], directory: Path) -> str:
    """The samples curve (metric of the mean of k samples vs k; Fig. S1) and training curves."""
    parts = []
    curve = result.get("samples_curve")
    if curve:
        charts = [
            line_chart(
                directory,
                f"samples_{m}.png",
                [("median over patches", curve["k"], curve["median"][m])],
                f"{metric_name(m)} of the mean of k samples",
                "k (samples averaged)",
                metric_name(m),
                size=(4.6, 3.0),
                integer_x=True,
            )
            for m in _SAMPLES_CURVE_METRICS
            if m in curve["median"]
        ]
        note = (
            f"{curve['n_samples']} samples from {html.escape(display_path(curve['path']))}; "
            "median over patches (paper Fig. S1)"
        )
        parts.append(_chart_section("Samples curve", note, charts))
    training = result.get("training")
    if training and training["series"]:
        charts = [
            line_chart(
                directory,
                f"training_{k}.png",
                [(name, [p[0] for p in pts], [p[1] for p in pts])],
                name.replace("_", " "),
                training["x"],
                name.replace("_", " "),
                size=(4.2, 2.8),
            )
            for k, (name, pts) in enumerate(list(training["series"].items())[:_MAX_TRAINING_CHARTS])
        ]
        source = html.escape(training.get("model") or display_path(training["path"]))
        parts.append(_chart_section("Training curves", f"metrics.csv of {source}", charts))
    return "\n".join(parts)


def write_report(directory: Path, result: dict[str, Any], figures: Sequence[RegionFigure]) -> Path:
    """Write ``directory``/index.html and its PNGs from an evaluation's ``to_dict()`` and crops."""
    directory.mkdir(parents=True, exist_ok=True)
    regions = "\n".join(region_html(k, fig, directory) for k, fig in enumerate(figures))
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>bigrestore evaluation'
        f"</title><style>{_CSS}</style></head><body><h1>bigrestore evaluation</h1>"
        f"<p><small>bigrestore {html.escape(str(result['settings']['version']))}</small></p>"
        f"<h2>Metrics</h2>{_table(result)}<h2>Settings</h2>{_settings(result)}"
        f"<h2>Regions</h2>{regions or '<p>no regions</p>'}{_curves(result, directory)}</body></html>\n"
    )
    index = directory / "index.html"
    try:
        index.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CannotCreateOutputError(f"{index}: cannot write report: {exc}") from exc
    return index
