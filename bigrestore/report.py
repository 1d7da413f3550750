"""The HTML report of ``bigrestore evaluate``: index.html plus PNGs, readable at a glance.

bigrestore has no plotting dependency (no matplotlib, no Pillow): a figure library would be a
large install for a handful of pictures. So images are written by a minimal PNG encoder
(zlib + struct: 8-bit RGB, filter 0), colour maps are small anchor tables interpolated in
numpy, and curves (line profiles, training curves, the samples curve) are inline SVG that any
browser draws. The page is static: no scripts, no network.

Colour maps: grey for intensities; a diverging blue-white-red map for pred - GT (blue: under,
red: over, white at 0, symmetric range, as in the paper's Fig. 1D); an inferno-like
perceptual map (black-purple-orange-yellow) for the std and entropy uncertainty maps.
"""

from __future__ import annotations

import csv
import html
import math
import re
import shutil
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigrestore.errors import BadInputError, CannotCreateOutputError, MissingInputError, describe

GREY = ((0, 0, 0), (255, 255, 255))
DIVERGING = (
    (33, 102, 172),
    (103, 169, 207),
    (209, 229, 240),
    (255, 255, 255),
    (253, 219, 199),
    (239, 138, 98),
    (178, 24, 43),
)
INFERNO_LIKE = (
    (0, 0, 4),
    (40, 11, 84),
    (101, 21, 110),
    (159, 42, 99),
    (212, 72, 66),
    (245, 125, 21),
    (250, 193, 39),
    (252, 255, 164),
)
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#7f3c8d", "#999933")
_ARROWS = {
    "psnr": "↑",
    "pearson": "↑",
    "ssim": "↑",
    "ms_ssim": "↑",
    "mae": "↓",
    "nrmse": "↓",
    "resolution_ratio": "→1",
}


# ----------------------------------------------------------------------------- pixels


def colorize(
    values: np.ndarray, lo: float, hi: float, anchors: Sequence[tuple[int, int, int]]
) -> np.ndarray:
    """Map float (y, x) values linearly from [lo, hi] (clipped) onto ``anchors``: uint8 (y, x, 3)."""
    t = np.clip((np.asarray(values, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    t = np.nan_to_num(t, nan=0.0)
    stops = np.linspace(0.0, 1.0, len(anchors))
    table = np.asarray(anchors, dtype=np.float64)
    rgb = [np.interp(t, stops, table[:, k]) for k in range(3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode uint8 (y, x, 3) as a PNG: signature, IHDR, one zlib IDAT (filter 0 rows), IEND."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise BadInputError(describe("png", "shape", "(y, x, 3) uint8", rgb.shape))
    h, w = rgb.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, 3 * w)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bit, truecolour, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _gradient(anchors: Sequence[tuple[int, int, int]]) -> str:
    """CSS linear-gradient of a colour map, for colour bars."""
    stops = [f"rgb{tuple(a)} {100 * i / (len(anchors) - 1):.0f}%" for i, a in enumerate(anchors)]
    return "linear-gradient(to right, " + ", ".join(stops) + ")"


# ----------------------------------------------------------------------------- SVG charts


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else "–"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 5 x 10^k steps); the first <= lo, the last >= hi."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [k * step for k in range(first, last + 1)]


def line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 540,
    height: int = 270,
    colors: Sequence[str] | None = None,
) -> str:
    """An inline SVG line chart; ``series`` = (label, xs, ys); non-finite points are dropped."""
    colors = colors or PALETTE
    clean = [
        (
            label,
            [
                (float(x), float(y))
                for x, y in zip(xs, ys, strict=True)
                if math.isfinite(float(x)) and math.isfinite(float(y))
            ],
        )
        for label, xs, ys in series
    ]
    points = [p for _, pts in clean for p in pts]
    left, right, top, bottom = 64, 150, 30, 44
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img"><title>{html.escape(title)}</title>',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{left}" y="18" class="ct">{html.escape(title)}</text>',
    ]
    if not points:
        out.append(f'<text x="{left}" y="{height // 2}">no finite values</text></svg>')
        return "".join(out)
    xt = _ticks(min(p[0] for p in points), max(p[0] for p in points))
    yt = _ticks(min(p[1] for p in points), max(p[1] for p in points))
    x0, x1, y0, y1 = min(xt), max(xt), min(yt), max(yt)
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - x0) / ((x1 - x0) or 1) * pw

    def sy(v: float) -> float:
        return top + ph - (v - y0) / ((y1 - y0) or 1) * ph

    for t in yt:
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    for t in xt:
        out.append(
            f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{_fmt(t)}</text>'
        )
    out.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="axis"/>'
        f'<text x="{left + pw / 2:.0f}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}</text>'
        f'<text transform="translate(14 {top + ph / 2:.0f}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(ylabel)}</text>"
    )
    for k, (label, pts) in enumerate(clean):
        color = colors[k % len(colors)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        if len(pts) <= 40:
            out += [
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>'
                for x, y in pts
            ]
        ly = top + 10 + 18 * k
        out.append(
            f'<line x1="{left + pw + 12}" x2="{left + pw + 32}" y1="{ly}" y2="{ly}" '
            f'stroke="{color}" stroke-width="3"/><text x="{left + pw + 38}" y="{ly + 4}">'
            f"{html.escape(label[:16])}</text>"
        )
    return "".join(out) + "</svg>"


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


@dataclass(frozen=True)
class RegionFigure:
    """One crop of one plane: ``images`` float (y, x) in the compared scale, GT included.

    ``reference`` names the GT in ``images``; ``profile_row`` is the crop row of the line
    profile; (y0, x0) the crop's origin in the plane; std/entropy crops as stored, or None.
    """

    title: str
    images: dict[str, np.ndarray]
    reference: str
    profile_row: int
    y0: int
    x0: int
    std: np.ndarray | None = None
    entropy: np.ndarray | None = None


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
.frame{position:relative;width:224px;height:224px;background:#000}
.frame img{width:100%;height:100%;image-rendering:pixelated;display:block}
.pline{position:absolute;left:0;right:0;height:0;border-top:1px dashed #ffd400}
.bar{height:10px;width:224px;border:1px solid #999;margin-top:4px}
.barlab{display:flex;justify-content:space-between;font-size:11px;width:224px}
svg.chart{background:#fff;border:1px solid #ddd} svg text{font-size:11px;fill:#333}
svg .ct{font-size:13px;font-weight:600} svg .grid{stroke:#eee} svg .axis{fill:none;stroke:#999}
"""
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


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def _bar(anchors: Sequence[tuple[int, int, int]], lo: float, hi: float, mid: str = "") -> str:
    return (
        f'<div class="bar" style="background:{_gradient(anchors)}"></div><div class="barlab">'
        f"<span>{_fmt(lo)}</span><span>{mid}</span><span>{_fmt(hi)}</span></div>"
    )


def _image(
    directory: Path,
    name: str,
    rgb: np.ndarray,
    caption: str,
    row: int | None = None,
    extra: str = "",
) -> str:
    (directory / name).write_bytes(png_bytes(rgb))
    line = (
        f'<span class="pline" style="top:{100 * (row + 0.5) / rgb.shape[0]:.2f}%"></span>'
        if row is not None
        else ""
    )
    return (
        f'<figure><div class="frame"><img src="{name}" alt="{html.escape(caption)}">{line}</div>'
        f"<figcaption>{html.escape(caption)}</figcaption>{extra}</figure>"
    )


def _region(k: int, fig: RegionFigure, directory: Path) -> str:
    ref = fig.images[fig.reference]
    lo, hi = (float(v) for v in np.percentile(ref, [0.5, 99.5]))
    hi = hi if hi > lo else lo + 1.0
    parts = [
        f"<h3>{html.escape(fig.title)}</h3>",
        f"<p><small>grey window {_fmt(lo)} – {_fmt(hi)} (GT 0.5–99.5 percentiles, shared by all "
        f"images); dashed line: the profile row y = {fig.y0 + fig.profile_row}</small></p>",
    ]
    parts.append(
        '<div class="row">'
        + "".join(
            _image(
                directory, f"r{k}_{_slug(n)}.png", colorize(img, lo, hi, GREY), n, fig.profile_row
            )
            for n, img in fig.images.items()
        )
        + "</div>"
    )
    diffs = {n: img - ref for n, img in fig.images.items() if n != fig.reference}
    if diffs:
        m = max(float(np.percentile(np.abs(d), 99.5)) for d in diffs.values()) or 1e-12
        bar = _bar(DIVERGING, -m, m, "0")
        parts.append(
            f"<p><small>difference to GT (pred − GT): blue under, red over, white 0, "
            f"range ±{_fmt(m)}</small></p>"
        )
        parts.append(
            '<div class="row">'
            + "".join(
                _image(
                    directory,
                    f"r{k}_diff_{_slug(n)}.png",
                    colorize(d, -m, m, DIVERGING),
                    f"{n} − {fig.reference}",
                    extra=bar,
                )
                for n, d in diffs.items()
            )
            + "</div>"
        )
    names = list(fig.images)
    colors = [
        ("#000000" if n == fig.reference else PALETTE[j % len(PALETTE)])
        for j, n in enumerate(names)
    ]
    xs = list(range(fig.x0, fig.x0 + ref.shape[1]))
    profile = [(n, xs, fig.images[n][fig.profile_row].tolist()) for n in names]
    parts.append(
        line_chart(
            profile,
            f"line profile, y = {fig.y0 + fig.profile_row}",
            "x (px)",
            "intensity (compared scale)",
            width=760,
            colors=colors,
        )
    )
    maps = [(n, v) for n, v in (("std", fig.std), ("entropy", fig.entropy)) if v is not None]
    if maps:
        figures = []
        for n, v in maps:
            a, b = float(np.nanmin(v)), float(np.nanmax(v))
            figures.append(
                _image(
                    directory,
                    f"r{k}_{n}.png",
                    colorize(v, a, b, INFERNO_LIKE),
                    f"{n} (as stored)",
                    extra=_bar(INFERNO_LIKE, a, b),
                )
            )
        parts.append(
            "<p><small>uncertainty of the samples: pixel std (Eq. 15) and entropy "
            '(Eq. 16)</small></p><div class="row">' + "".join(figures) + "</div>"
        )
    return "\n".join(parts)


def _table(result: dict[str, Any]) -> str:
    summary, best = result["summary"], result["best"]
    unit = result["settings"].get("unit", "")
    metrics = [m for m in _METRIC_ORDER if any(m in s for s in summary.values())]
    head = "".join(
        f"<th>{m}{' (dB)' if m == 'psnr' else ''}{f' ({unit})' if m.startswith('resolution_') and m != 'resolution_ratio' else ''}"
        f" {_ARROWS.get(m, '')}</th>"
        for m in metrics
    )
    rows = []
    for method in result["methods"]:
        cells = [f'<td class="m">{html.escape(method)}</td>']
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
                f"<td{' class=best' if mark else ''}>{'★ ' if mark else ''}{_fmt(med)}"
                f"<br><small>mean {_fmt(mean)}</small></td>"
            )
        cells.append("<td><small>not computed</small></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    n = next(iter(summary.values()), {}).get("psnr", {}).get("n", 0)
    return (
        f"<table><tr><th>method</th>{head}<th>lpips</th></tr>{''.join(rows)}</table>"
        f"<p><small>median over {n} patches (mean below); ★ best median per metric "
        "(↑ higher, ↓ lower, →1 closest to 1 is better).</small></p>"
    )


def _settings(result: dict[str, Any]) -> str:
    s = result["settings"]
    gauss = s.get("gaussian")
    patch = s.get("patch")
    items = [("ground truth", s["gt"]), ("raw input", s.get("raw") or "–")]
    items += [(f"prediction {n}", p) for n, p in s["predictions"].items()]
    items += [
        ("intensity", s["intensity"]),
        ("patches", f"{patch}² px, non-overlapping" if patch else "whole planes"),
        ("planes scored", f"{len(s['planes_scored'])} of {s['planes_total']}"),
        (
            "pixel size",
            f"{s['pixel_size']:g} {s['unit']} (decorrelation resolution, Descloux 2019)",
        ),
        (
            "Gaussian baseline",
            f"sigma {gauss['sigma']:g} px, maximising {gauss['criterion']} on {gauss['tuned_on']}"
            if gauss
            else "not run",
        ),
        ("LPIPS", result["lpips"]),
    ]
    items += [("note", n) for n in result.get("notes", [])]
    return (
        "<dl>"
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
        + "</dl>"
    )


def _curves(result: dict[str, Any]) -> str:
    parts = []
    curve = result.get("samples_curve")
    if curve:
        charts = [
            line_chart(
                [("median", curve["k"], curve["median"][m])],
                f"{m} of the mean of k samples",
                "k (samples averaged)",
                m,
            )
            for m in ("psnr", "mse", "ssim")
            if m in curve["median"]
        ]
        parts.append(
            f"<h2>Samples curve</h2><p><small>{curve['n_samples']} samples from "
            f"{html.escape(curve['path'])}; median over patches (paper Fig. S1)</small></p>"
            f'<div class="row">{"".join(charts)}</div>'
        )
    training = result.get("training")
    if training and training["series"]:
        charts = [
            line_chart(
                [(name, [p[0] for p in pts], [p[1] for p in pts])],
                name,
                training["x"],
                name,
                width=400,
                height=230,
            )
            for name, pts in list(training["series"].items())[:12]
        ]
        parts.append(
            f"<h2>Training curves</h2><p><small>{html.escape(training['path'])}</small></p>"
            f'<div class="row">{"".join(charts)}</div>'
        )
    return "\n".join(parts)


def write_report(directory: Path, result: dict[str, Any], figures: Sequence[RegionFigure]) -> Path:
    """Write ``directory``/index.html and its PNGs from an evaluation's ``to_dict()`` and crops."""
    directory.mkdir(parents=True, exist_ok=True)
    regions = "\n".join(_region(k, fig, directory) for k, fig in enumerate(figures))
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>bigrestore evaluation'
        f"</title><style>{_CSS}</style></head><body><h1>bigrestore evaluation</h1>"
        f"<p><small>bigrestore {html.escape(str(result['settings']['version']))}</small></p>"
        f"<h2>Metrics</h2>{_table(result)}<h2>Settings</h2>{_settings(result)}"
        f"<h2>Regions</h2>{regions or '<p>no regions</p>'}{_curves(result)}</body></html>\n"
    )
    index = directory / "index.html"
    try:
        index.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CannotCreateOutputError(f"{index}: cannot write report: {exc}") from exc
    return index
