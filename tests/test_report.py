"""The HTML report: PNG encoder, colour maps, SVG charts, and a page that renders in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest
import tifffile
from conftest import data_path

from bigrestore.errors import CannotCreateOutputError
from bigrestore.evaluate.figures import DIVERGING, INFERNO_LIKE, colorize, line_chart, png_bytes
from bigrestore.evaluate.report import prepare_report_dir
from bigrestore.evaluate.scoring import evaluate
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image


def _decode_png(data: bytes) -> np.ndarray:
    """Independent minimal decoder for the files we write (8-bit RGB, filter 0, one IDAT)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        assert zlib.crc32(tag + body) == int.from_bytes(
            data[pos + 8 + length : pos + 12 + length], "big"
        )
        chunks[tag] = body
        pos += 12 + length
    w, h = int.from_bytes(chunks[b"IHDR"][:4], "big"), int.from_bytes(chunks[b"IHDR"][4:8], "big")
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert np.all(rows[:, 0] == 0)
    return rows[:, 1:].reshape(h, w, 3)


def test_png_round_trip_and_pillow_reads_it():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    np.testing.assert_array_equal(_decode_png(data), rgb)
    image = pytest.importorskip("PIL.Image")
    import io

    np.testing.assert_array_equal(np.asarray(image.open(io.BytesIO(data)).convert("RGB")), rgb)


def test_diverging_map_is_white_at_zero_blue_under_red_over():
    rgb = colorize(np.array([[-1.0, 0.0, 1.0]]), -1.0, 1.0, DIVERGING)[0].astype(int)
    assert rgb[1].tolist() == [255, 255, 255]
    assert rgb[0][2] > rgb[0][0] + 80 and rgb[2][0] > rgb[2][2] + 80
    ramp = colorize(np.linspace(0, 1, 50)[None], 0, 1, INFERNO_LIKE)[0].astype(int).sum(axis=1)
    assert np.all(np.diff(ramp) >= 0) and ramp[0] < 20 and ramp[-1] > 600  # dark to light


def test_line_chart_is_valid_svg_with_one_polyline_per_series():
    svg = line_chart(
        [("a", [0, 1, 2], [1.0, 3.0, 2.0]), ("b", [0, 1, 2], [0.5, float("nan"), 4.2])],
        "t",
        "x",
        "y",
    )
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 and len(lines[1].get("points").split()) == 2  # NaN dropped
    ys = [float(p.split(",")[1]) for line in lines for p in line.get("points").split()]
    top, height = 30, 270 - 30 - 44
    assert all(top <= y <= top + height for y in ys)  # every point inside the plot frame


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
    )
    page = (out / "index.html").read_text()
    assert result.report == out / "index.html"
    for needed in ("not computed", "Samples curve", "Training curves", "★", "line profile"):
        assert needed in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 3 * 5 and all((out / s).is_file() for s in sources)
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
