"""The figures of the evaluation report, without a plotting library: PNGs, colour maps, charts.

One region figure shows a crop of every method beside the GT: intensities, pred - GT
difference maps, a line profile through the crop, and the std / entropy uncertainty maps.

bigrestore has no plotting dependency (no matplotlib, no Pillow): a figure library would be a
large install for a handful of pictures. So images are written by a minimal PNG encoder
(zlib + struct: 8-bit RGB, filter 0), colour maps are small anchor tables interpolated in
numpy, and curves (line profiles, training curves, the samples curve) are inline SVG that any
browser draws. Charts and colour bars are HTML/SVG fragments styled by the report's CSS
(classes chart, ct, grid, axis, bar, barlab).

Colour maps: grey for intensities; a diverging blue-white-red map for pred - GT (blue: under,
red: over, white at 0, symmetric range, as in the paper's Fig. 1D); an inferno-like
perceptual map (black-purple-orange-yellow) for the std and entropy uncertainty maps.
"""

from __future__ import annotations

import html
import math
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigrestore.errors import BadInputError, describe

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


def fmt_number(v: float) -> str:
    """Four significant digits; "–" for NaN and ±inf."""
    return f"{v:.4g}" if math.isfinite(v) else "–"


def colour_bar(anchors: Sequence[tuple[int, int, int]], lo: float, hi: float, mid: str = "") -> str:
    """HTML colour bar of a colour map (a CSS gradient) labelled lo, ``mid``, hi."""
    stops = [f"rgb{tuple(a)} {100 * i / (len(anchors) - 1):.0f}%" for i, a in enumerate(anchors)]
    gradient = "linear-gradient(to right, " + ", ".join(stops) + ")"
    return (
        f'<div class="bar" style="background:{gradient}"></div><div class="barlab">'
        f"<span>{fmt_number(lo)}</span><span>{mid}</span><span>{fmt_number(hi)}</span></div>"
    )


# ----------------------------------------------------------------------------- SVG charts


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


def _finite(v: float | str | None) -> bool:
    """A plottable value: not None (JSON's NaN), and finite ("inf" strings are not)."""
    return v is not None and math.isfinite(float(v))


def line_chart(
    series: Sequence[tuple[str, Sequence[float | None], Sequence[float | None]]],
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 540,
    height: int = 270,
    colors: Sequence[str] | None = None,
) -> str:
    """An inline SVG line chart; ``series`` = (label, xs, ys); None and non-finite points are dropped."""
    colors = colors or PALETTE
    clean = [
        (
            label,
            [
                (float(x), float(y))
                for x, y in zip(xs, ys, strict=True)
                if _finite(x) and _finite(y)
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
            f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{fmt_number(t)}</text>'
        )
    for t in xt:
        out.append(
            f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{fmt_number(t)}</text>'
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


# ----------------------------------------------------------------------------- regions


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


def region_figure(
    plane: int,
    label: str,
    crop: tuple[int, int, int, int],
    compared: dict[str, np.ndarray],
    gt: np.ndarray,
    maps: dict[str, np.ndarray],
) -> RegionFigure:
    """The report's view of a (plane, y, x, size) crop: every image in the compared scale, GT last.

    compared, gt: whole planes float (y, x) in the compared scale; maps: whole "std" /
    "entropy" planes as stored. The line profile runs through the crop's middle row.
    """
    _, y, x, size = crop
    window = (slice(y, y + size), slice(x, x + size))
    images = {name: values[window] for name, values in compared.items()}
    images["gt"] = gt[window]
    extra = {k: values[window] for k, values in maps.items()}
    title = f"plane {plane} ({label}), y {y}-{y + size}, x {x}-{x + size}"
    return RegionFigure(
        title, images, "gt", size // 2, y, x, extra.get("std"), extra.get("entropy")
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def html_row(items: Iterable[str]) -> str:
    """Items side by side (wrapping)."""
    return '<div class="row">' + "".join(items) + "</div>"


def _image(
    directory: Path,
    name: str,
    rgb: np.ndarray,
    caption: str,
    row: int | None = None,
    extra: str = "",
) -> str:
    """Write ``rgb`` as directory/name and return its <figure>; ``row``: dashed profile line."""
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


def _mapped(
    directory: Path,
    name: str,
    values: np.ndarray,
    lo: float,
    hi: float,
    anchors: Sequence[tuple[int, int, int]],
    caption: str,
    mid: str = "",
) -> str:
    """A colour-mapped (y, x) image with its colour bar."""
    rgb = colorize(values, lo, hi, anchors)
    return _image(directory, name, rgb, caption, extra=colour_bar(anchors, lo, hi, mid))


def region_html(k: int, fig: RegionFigure, directory: Path) -> str:
    """Region ``k`` of the report: intensities, pred - GT maps, line profile, uncertainty maps.

    Writes its PNGs (r{k}_*.png) into ``directory``; returns the HTML section.
    """
    ref = fig.images[fig.reference]
    lo, hi = (float(v) for v in np.percentile(ref, [0.5, 99.5]))
    hi = hi if hi > lo else lo + 1.0
    parts = [
        f"<h3>{html.escape(fig.title)}</h3>",
        f"<p><small>grey window {fmt_number(lo)} – {fmt_number(hi)} (GT 0.5–99.5 percentiles, "
        f"shared by all images); dashed line: the profile row y = {fig.y0 + fig.profile_row}"
        "</small></p>",
        html_row(
            _image(
                directory, f"r{k}_{_slug(n)}.png", colorize(img, lo, hi, GREY), n, fig.profile_row
            )
            for n, img in fig.images.items()
        ),
    ]
    diffs = {n: img - ref for n, img in fig.images.items() if n != fig.reference}
    if diffs:
        m = max(float(np.percentile(np.abs(d), 99.5)) for d in diffs.values()) or 1e-12
        parts.append(
            f"<p><small>difference to GT (pred − GT): blue under, red over, white 0, "
            f"range ±{fmt_number(m)}</small></p>"
        )
        parts.append(
            html_row(
                _mapped(
                    directory,
                    f"r{k}_diff_{_slug(n)}.png",
                    d,
                    -m,
                    m,
                    DIVERGING,
                    f"{n} − {fig.reference}",
                    "0",
                )
                for n, d in diffs.items()
            )
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
        figures = [
            _mapped(
                directory,
                f"r{k}_{n}.png",
                v,
                float(np.nanmin(v)),
                float(np.nanmax(v)),
                INFERNO_LIKE,
                f"{n} (as stored)",
            )
            for n, v in maps
        ]
        parts.append(
            "<p><small>uncertainty of the samples: pixel std (Eq. 15) and entropy "
            "(Eq. 16)</small></p>" + html_row(figures)
        )
    return "\n".join(parts)
