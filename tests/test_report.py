"""The HTML report: matplotlib figures (profile span, whole legends, no global state), readable
headers, no machine paths, and a page that renders in Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import tifffile
from conftest import data_path
from PIL import Image

from bigrestore.errors import CannotCreateOutputError
from bigrestore.evaluate.figures import (
    RegionFigure,
    line_chart,
    line_figure,
    profile_figure,
    save_png,
)
from bigrestore.evaluate.report import prepare_report_dir
from bigrestore.evaluate.scoring import evaluate
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image


def _region(names=("bigrestore DDPM-avg", "raw", "gaussian-oracle")) -> RegionFigure:
    rng = np.random.default_rng(0)
    images = {n: rng.normal(size=(64, 64)) for n in names}
    images["gt"] = rng.normal(size=(64, 64))
    return RegionFigure("plane 0", images, "gt", 32, 100, 200, None, None)


def test_profile_spans_exactly_the_profile_and_its_legend_is_whole(tmp_path):
    fig = _region()
    figure = profile_figure(fig)
    ax = figure.axes[0]
    assert ax.get_xlim() == (200, 263)  # x0 .. x0 + 63: the 64 pixels of the profile row
    assert [line.get_xdata()[-1] for line in ax.lines] == [263] * 4
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "bigrestore DDPM-avg",
        "raw input",
        "Gaussian, best sigma per image (uses the ground truth)",
        "ground truth",
    ]
    html = save_png(figure, tmp_path, "p.png", "profile")
    assert 'src="p.png"' in html
    # the saved PNG holds the whole legend: it is taller than the axes' own box
    with Image.open(tmp_path / "p.png") as png:
        width, height = png.size
    renderer = figure.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.y0 < ax.get_window_extent(renderer).y0 and height >= legend.height


def test_line_chart_drops_non_finite_points_and_writes_a_png(tmp_path):
    figure = line_figure(
        [("a", [0, 1, 2], [1.0, 3.0, 2.0]), ("b", [0, 1, 2], [0.5, float("nan"), None])],
        "t",
        "x",
        "y",
    )
    assert [len(line.get_xdata()) for line in figure.axes[0].lines] == [3, 1]
    line_chart(tmp_path, "c.png", [("a", [0, 1], [1.0, 2.0])], "title", "x", "y")
    with Image.open(tmp_path / "c.png") as png:
        assert png.format == "PNG" and png.size[0] > 300


def test_figures_leave_matplotlib_global_state_alone(tmp_path):
    code = (
        "import sys, matplotlib; before = matplotlib.get_backend(); "
        "from pathlib import Path; from bigrestore.evaluate.figures import line_chart; "
        f"line_chart(Path({str(tmp_path)!r}), 'x.png', [('a', [0, 1], [0, 1])], 't', 'x', 'y'); "
        "print('matplotlib.pyplot' in sys.modules, matplotlib.get_backend() == before)"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout.split() == ["False", "True"]
    assert (tmp_path / "x.png").is_file()


def test_report_dir_is_not_replaced_without_overwrite(tmp_path):
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "keep.txt").write_text("x")
    with pytest.raises(CannotCreateOutputError, match="--overwrite"):
        prepare_report_dir(tmp_path / "rep", overwrite=False)
    with pytest.raises(CannotCreateOutputError, match="not a bigrestore report"):
        prepare_report_dir(tmp_path / "rep", overwrite=True)  # never deletes other files
    assert (tmp_path / "rep" / "keep.txt").is_file()
    (tmp_path / "rep" / "keep.txt").unlink()
    (tmp_path / "rep" / "index.html").write_text("<html></html>")
    (tmp_path / "rep" / "r0_gt.png").write_bytes(b"")
    prepare_report_dir(tmp_path / "rep", overwrite=True)
    assert (tmp_path / "rep").is_dir() and not any((tmp_path / "rep").iterdir())


class _Texts(HTMLParser):
    """The text inside the given tags."""

    def __init__(self, tags):
        super().__init__()
        self.tags, self.open, self.found = set(tags), [], []

    def handle_starttag(self, tag, attrs):
        if tag in self.tags:
            self.open.append("")

    def handle_endtag(self, tag):
        if tag in self.tags and self.open:
            self.found.append(self.open.pop())

    def handle_data(self, data):
        if self.open:
            self.open[-1] += data


def _texts(page: str, tags) -> list[str]:
    parser = _Texts(tags)
    parser.feed(page)
    return parser.found


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(tmp_path):
    low = tifffile.imread(data_path("w2s/val_low.tif"))[:2, :, 160:352, 160:352]
    high = tifffile.imread(data_path("w2s/val_high.tif"))[:2, :, 160:352, 160:352]
    meta = ImageMeta("tcyx", (1, 1, 0.1, 0.1), (0,) * 4, (None, None, "micrometer", "micrometer"))
    paths = {
        n: write_image(tmp_path / f"{n}.zarr", a, meta) for n, a in (("low", low), ("high", high))
    }
    rng = np.random.default_rng(0)
    samples = np.stack([high + rng.normal(0, 12, high.shape) for _ in range(4)]).astype(np.float32)
    sample_dir = tmp_path / "samples"
    sample_dir.mkdir()
    for s, sample in enumerate(samples):
        write_image(sample_dir / f"{s}.zarr", sample, meta)
    std = write_image(tmp_path / "std.zarr", samples.std(axis=0), meta)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text('{"weights_sha256": "0123456789abcdef0123"}')
    (model / "metrics.csv").write_text(
        "epoch,loss,val_mae\n"
        + "".join(f"{e},{1 / (e + 1):.4f},{0.3 / (e + 1):.4f}\n" for e in range(6))
    )
    out = tmp_path / "report"
    result = evaluate(
        [sample_dir / "0.zarr"],
        paths["high"],
        names=["sample0"],
        raw=paths["low"],
        patch=96,
        report_dir=out,
        std=std,
        entropy=std,
        samples=sample_dir,
        model_dir=model,
        gaussian_oracle=True,
    )
    page = (out / "index.html").read_text()
    assert result.report == out / "index.html"
    for needed in (
        "not computed",
        "Samples curve",
        "Training curves",
        "★",
        "line profile",
        "Gaussian, best sigma per image (uses the ground truth)",
        "model “model”, weights sha256 0123456789ab",
        "high.zarr",
    ):
        assert needed in page, needed
    oracle_row = next(r for r in page.split("<tr>") if "best sigma per image (uses" in r)
    assert "★" not in oracle_row  # it chose its sigma with the ground truth: never "best"
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3 * 4 + 3 + 2 and all((out / s).is_file() for s in sources)
    # no path of this machine: not the test's directory, no site-packages, no rooted path
    assert str(tmp_path) not in page and "site-packages" not in page
    assert not re.search(r"(?<![<\w.])/(?:[\w.-]+/)+[\w.-]+", page), re.findall(r"\S*/\S*", page)
    headers = _texts(page, ("h1", "h2", "h3", "th", "dt", "figcaption"))
    assert headers and not [h for h in headers if "_" in h], headers
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            (out / "index.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pixels = np.asarray(_load_png(shot))[..., :3].astype(int)
    colours = np.unique(pixels.reshape(-1, 3) // 4, axis=0)
    non_white = np.mean(pixels.min(axis=-1) < 235)
    red = np.mean((pixels[..., 0] > 150) & (pixels[..., 2] < pixels[..., 0] - 60))
    blue = np.mean((pixels[..., 2] > 150) & (pixels[..., 0] < pixels[..., 2] - 60))
    assert len(colours) > 500 and non_white > 0.15, (len(colours), non_white)
    assert red > 1e-4 and blue > 1e-4  # the difference maps are drawn


def _load_png(path):
    image = pytest.importorskip("PIL.Image")
    return image.open(path).convert("RGB")
