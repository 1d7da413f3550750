"""Open a run output in napari with napari-ome-zarr, as a user would, and save a screenshot.

What a user sees when they open ``bigrestore demo`` outputs (or any run output) in napari: the
raw input, the restored mean, the pixel std and the entropy, side by side in napari's grid
mode, each read by the napari-ome-zarr plugin from its multiscale OME-Zarr with the display
window (contrast limits) from the store's OMERO metadata. Nothing here is a project dependency:

    # a virtual display and the X libraries Qt's xcb platform plugin loads (Debian 12)
    apt-get install -y xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 \\
        libxcb-image0 libxcb-render-util0 libxkbcommon-x11-0 libgl1 libegl1
    pip install 'napari>=0.5' 'napari-ome-zarr>=0.10' PyQt6   # or: pip install -e '.[viewer]'
    bigrestore demo --out bigrestore-demo
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/napari_screenshot.py \\
        bigrestore-demo/restored.zarr --input bigrestore-demo/sample_low.zarr \\
        --out docs/img/napari-demo.png

(Made with napari 0.9.2, napari-ome-zarr 0.10.0 and PyQt6 6.11 in a virtual environment of
their own; with PyQt5, napari 0.9 shows a deprecation notice over the canvas.)

The script checks what napari shows (one layer per image, level 0 of the store's shape,
contrast limits = the OMERO window) and prints it, then writes the window (``--canvas-only``:
the canvas alone) as a palette PNG, small enough for the docs. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

OUTPUTS = ("mean", "std", "entropy")


def omero_window(image: Path) -> tuple[float, float] | None:
    """The first channel's OMERO display window (start, end) of an image group, if any."""
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        if (image / name).is_file():
            attrs = json.loads((image / name).read_text())
            attrs = attrs.get(key, {}) if key else attrs
            omero = attrs.get("ome", attrs).get("omero") or {}
            channels = omero.get("channels") or [{}]
            window = channels[0].get("window")
            return (float(window["start"]), float(window["end"])) if window else None
    return None


def open_layers(viewer, images: list[tuple[str, Path]]) -> list[dict]:
    """Open each image through napari-ome-zarr; return what napari shows for each."""
    shown = []
    for label, path in images:
        layers = viewer.open(str(path), plugin="napari-ome-zarr")
        for layer in layers:
            layer.name = label
            window = omero_window(path)
            level0 = np.asarray(layer.data[0] if layer.multiscale else layer.data)
            shown.append(
                {
                    "layer": label,
                    "path": str(path),
                    "levels": len(layer.data) if layer.multiscale else 1,
                    "shape": list(level0.shape),
                    "contrast_limits": [float(v) for v in layer.contrast_limits],
                    "omero_window": list(window) if window else None,
                    "colormap": layer.colormap.name,
                }
            )
    return shown


def check(shown: list[dict], images: list[tuple[str, Path]]) -> list[str]:
    """What is wrong with what napari shows (empty when all is right)."""
    import zarr

    problems = []
    if len(shown) != len(images):
        problems.append(f"{len(images)} images gave {len(shown)} layers")
    for item, (_, path) in zip(shown, images, strict=False):
        stored = zarr.open_array(str(path / "0"), mode="r").shape
        if tuple(item["shape"]) != tuple(stored):
            problems.append(f"{item['layer']}: shape {item['shape']} != stored {stored}")
        window = item["omero_window"]
        if window and not np.allclose(item["contrast_limits"], window, rtol=1e-4):
            problems.append(
                f"{item['layer']}: contrast limits {item['contrast_limits']} != OMERO window {window}"
            )
    return problems


def save_small_png(pixels: np.ndarray, out: Path, colors: int = 128) -> None:
    """RGBA canvas → palette PNG (enough for greyscale images and napari's UI colours)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3]))
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "result", type=Path, help="a run output, e.g. bigrestore-demo/restored.zarr"
    )
    parser.add_argument("--input", type=Path, help="the raw input store, shown first")
    parser.add_argument("--out", type=Path, default=Path("napari-screenshot.png"))
    parser.add_argument("--size", default="1400x760", help="window size WxH in pixels")
    parser.add_argument(
        "--canvas-only", action="store_true", help="only the canvas, without napari's panels"
    )
    args = parser.parse_args(argv)

    import napari

    images = [("input", args.input)] if args.input else []
    images += [(name, args.result / name) for name in OUTPUTS if (args.result / name).is_dir()]
    width, height = (int(v) for v in args.size.split("x"))
    viewer = napari.Viewer(show=True, title="bigrestore demo")
    viewer.window.resize(width, height)
    shown = open_layers(viewer, images)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari >= 0.9
    grid.enabled = True
    grid.shape = (1, len(shown))
    viewer.layers.selection.active = viewer.layers[-1]
    app = napari.qt.get_qapp()
    app.processEvents()  # let the window take its size before fitting the view to it
    viewer.reset_view()
    app.processEvents()
    pixels = viewer.screenshot(canvas_only=args.canvas_only, flash=False)
    save_small_png(pixels, args.out)
    problems = check(shown, images)
    report = {"napari": napari.__version__, "layers": shown, "screenshot": str(args.out)}
    print(json.dumps(report, indent=1))
    viewer.close()
    for problem in problems:
        print("problem:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
