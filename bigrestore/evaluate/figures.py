"""The figures of the evaluation report, drawn with matplotlib.

One region shows a crop of every method beside the ground truth: intensities on one shared
grey window, prediction − ground truth difference maps (blue under, red over, white at 0, a
symmetric range, as in the paper's Fig. 1D), a line profile through the crop, and the std /
entropy uncertainty maps (inferno). Curves (line profiles, the samples curve, training
curves) are line charts. Every figure is a PNG next to index.html.

matplotlib is used through its object API on the Agg canvas (``Figure`` +
``FigureCanvasAgg``): no pyplot state and no backend is set globally, so importing this module
(or the report) changes nothing for a caller who also plots.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#7f3c8d", "#999933")
REFERENCE_COLOR = "#000000"
DPI = 100
#: Display names of the methods bigrestore names itself (user-named predictions are kept).
METHOD_LABELS = {
    "raw": "raw input",
    "gaussian": "Gaussian filter, tuned sigma",
    "gaussian-oracle": "Gaussian, best sigma per image (uses the ground truth)",
    "gt": "ground truth",
}


def method_label(name: str) -> str:
    """What the report calls a method: a readable name, never an identifier."""
    return METHOD_LABELS.get(name, name)


def fmt_number(v: float) -> str:
    """Four significant digits; "–" for NaN and ±inf."""
    return f"{v:.4g}" if math.isfinite(v) else "–"


def html_row(items: Iterable[str]) -> str:
    """Items side by side (wrapping)."""
    return '<div class="row">' + "".join(items) + "</div>"


def _finite(v: float | str | None) -> bool:
    """A plottable value: not None (JSON's NaN), and finite ("inf" strings are not)."""
    return v is not None and math.isfinite(float(v))


# ----------------------------------------------------------------------------- matplotlib


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure (inches) on the Agg canvas, outside pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Any, directory: Path, name: str, alt: str) -> str:
    """Write ``figure`` as directory/name (the whole figure: legends and labels included)
    and return its <figure> element."""
    figure.savefig(directory / name, dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    return (
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(alt)}</figcaption></figure>"
    )


def _wrap(text: str, width: int = 26) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def line_figure(
    series: Sequence[tuple[str, Sequence[float | None], Sequence[float | None]]],
    title: str,
    xlabel: str,
    ylabel: str,
    colors: Sequence[str] | None = None,
    xlim: tuple[float, float] | None = None,
    size: tuple[float, float] = (6.4, 3.2),
    integer_x: bool = False,
) -> Any:
    """A line chart: one line per (label, xs, ys); None and non-finite points are dropped.
    The legend sits below the axes, every label in full; ``xlim`` fixes the x range;
    ``integer_x`` puts ticks on whole numbers only (counts such as k samples)."""
    colors = colors or PALETTE
    figure = new_figure(*size)
    ax = figure.add_subplot()
    plotted = 0
    for k, (label, xs, ys) in enumerate(series):
        points = [
            (float(x), float(y)) for x, y in zip(xs, ys, strict=True) if _finite(x) and _finite(y)
        ]
        if not points:
            continue
        x, y = zip(*points, strict=True)
        marker = "o" if len(points) <= 40 else None
        ax.plot(x, y, color=colors[k % len(colors)], lw=1.6, marker=marker, ms=3, label=label)
        plotted += 1
    if not plotted:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e6e6e6", lw=0.8)
    if xlim is not None:
        ax.set_xlim(*xlim)
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if plotted > 1:
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.22),
            ncol=min(plotted, 3),
            frameon=False,
            fontsize=9,
        )
    return figure


def line_chart(
    directory: Path,
    name: str,
    series: Sequence[tuple[str, Sequence[float | None], Sequence[float | None]]],
    title: str,
    xlabel: str,
    ylabel: str,
    **options: Any,
) -> str:
    """:func:`line_figure` written as directory/name; returns its <figure> element."""
    return save_png(line_figure(series, title, xlabel, ylabel, **options), directory, name, title)


def image_figure(
    panels: Sequence[tuple[str, np.ndarray]],
    cmap: str,
    window: tuple[float, float] | None,
    bar_label: str | Sequence[str],
    profile_row: int | None = None,
) -> Any:
    """Images side by side, titled, with one colour bar (``window`` shared) or one each
    (``window`` None: each panel's own min-max, ``bar_label`` one label per panel);
    ``profile_row`` draws the profile's row."""
    n = len(panels)
    figure = new_figure(2.7 * n + (0.6 if window else 0.9 * n), 3.2)
    axes = figure.subplots(1, n, squeeze=False)[0]
    shown = None
    labels = [bar_label] * n if isinstance(bar_label, str) else list(bar_label)
    for ax, (title, values), label in zip(axes, panels, labels, strict=True):
        lo, hi = window if window else (float(np.nanmin(values)), float(np.nanmax(values)))
        shown = ax.imshow(
            values, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest"
        )
        ax.set_title(_wrap(title), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if profile_row is not None:
            ax.axhline(profile_row, color="#ffd400", lw=1.0, ls="--")
        if window is None:
            figure.colorbar(shown, ax=ax, shrink=0.8, label=label)
    if window is not None and shown is not None:
        figure.colorbar(shown, ax=list(axes), shrink=0.8, label=labels[0])
    return figure


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
    title = f"plane {plane} ({label}), y {y}–{y + size}, x {x}–{x + size}"
    return RegionFigure(
        title, images, "gt", size // 2, y, x, extra.get("std"), extra.get("entropy")
    )


def profile_figure(fig: RegionFigure) -> Any:
    """The line profile of a region: every method and the GT (black) along the profile row;
    the x axis spans exactly the profile (first to last pixel)."""
    names = list(fig.images)
    colors = [
        REFERENCE_COLOR if n == fig.reference else PALETTE[j % len(PALETTE)]
        for j, n in enumerate(names)
    ]
    width = fig.images[fig.reference].shape[1]
    xs = list(range(fig.x0, fig.x0 + width))
    series = [(method_label(n), xs, fig.images[n][fig.profile_row].tolist()) for n in names]
    return line_figure(
        series,
        f"line profile, y = {fig.y0 + fig.profile_row}",
        "x (pixels)",
        "intensity (compared scale)",
        colors=colors,
        xlim=(fig.x0, fig.x0 + width - 1),
        size=(8.0, 3.4),
    )


def region_html(k: int, fig: RegionFigure, directory: Path) -> str:
    """Region ``k`` of the report: intensities, difference maps, line profile, uncertainty.

    Writes its PNGs (r{k}_*.png) into ``directory``; returns the HTML section."""
    ref = fig.images[fig.reference]
    lo, hi = (float(v) for v in np.percentile(ref, [0.5, 99.5]))
    hi = hi if hi > lo else lo + 1.0
    panels = [(method_label(n), img) for n, img in fig.images.items()]
    row = fig.y0 + fig.profile_row
    parts = [
        f"<h3>{html.escape(fig.title)}</h3>",
        f"<p><small>Grey window {fmt_number(lo)} – {fmt_number(hi)} (ground truth 0.5–99.5 "
        f"percentiles, shared by all images); dashed line: the profile row y = {row}.</small></p>",
        save_png(
            image_figure(panels, "gray", (lo, hi), "intensity (compared scale)", fig.profile_row),
            directory,
            f"r{k}_intensity.png",
            "intensities",
        ),
    ]
    diffs = [(method_label(n), img - ref) for n, img in fig.images.items() if n != fig.reference]
    if diffs:
        m = max(float(np.percentile(np.abs(d), 99.5)) for _, d in diffs) or 1e-12
        parts.append(
            save_png(
                image_figure(diffs, "RdBu_r", (-m, m), "prediction − ground truth"),
                directory,
                f"r{k}_difference.png",
                f"difference to the ground truth: blue under, red over, white 0, range ±{fmt_number(m)}",
            )
        )
    parts.append(save_png(profile_figure(fig), directory, f"r{k}_profile.png", "line profile"))
    maps = [
        (title, values, unit)
        for title, values, unit in (
            ("pixel std of the samples (Eq. 15)", fig.std, "intensity, as stored"),
            ("entropy of the samples (Eq. 16)", fig.entropy, "bits"),
        )
        if values is not None
    ]
    if maps:
        panels = [(title, values) for title, values, _ in maps]
        parts.append(
            save_png(
                image_figure(panels, "inferno", None, [unit for _, _, unit in maps]),
                directory,
                f"r{k}_uncertainty.png",
                "uncertainty of the samples: pixel std and entropy",
            )
        )
    return "\n".join(parts)
