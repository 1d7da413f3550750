"""Restoration quality and cost against tile size and overlap, through `bigrestore run`'s real path.

    python benchmarks/tile_w2s.py [--model DIR] [--fields 2] [--samples 4] [--tiles 64:16 64:32 128:32 256:0]

Why: every tile's border pixels see the U-Net's zero padding instead of image; the default tile
(twice the model's training patch) was chosen on this measurement. Input: the centred 256²
crops of the first --fields W2S validation fields (3 channels each) in one TCYX store, as in
quality_w2s.py; each variant is restored with `bigrestore.run.restore.restore` (2 workers x 1 thread,
the run defaults otherwise), and scored as `bigrestore evaluate` does (each plane
percentile-normalised, PSNR on [0, 1], median over planes). Seconds are the blocks' wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import zarr

from bigrestore.evaluate.metrics import normalize_percentile, psnr
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import (
    bundled_model_path,
    run_settings,
)

from quality_w2s import centre_crops, save
from report import finish, markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s"


def median_psnr(mean: np.ndarray, high: np.ndarray) -> float:
    scores = [
        psnr(normalize_percentile(mean[f, c]), normalize_percentile(high[f, c]), 1.0)
        for f in range(high.shape[0])
        for c in range(high.shape[1])
    ]
    return float(np.median(scores))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=bundled_model_path())
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument(
        "--tiles",
        nargs="+",
        default=["64:16", "64:32", "128:32", "256:0"],
        help="TILE:OVERLAP variants",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    low = centre_crops(DATA / "val_low.tif")[: args.fields]
    high = centre_crops(DATA / "val_high.tif")[: args.fields]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tile_w2s_") as tmp:
        source = save(Path(tmp) / "raw.zarr", low)
        for variant in args.tiles:
            tile, overlap = (int(v) for v in variant.split(":"))
            settings = run_settings(samples=args.samples, tile=tile, overlap=overlap)
            out = Path(tmp) / f"t{tile}_{overlap}.zarr"
            result = restore(
                source,
                out,
                model=args.model,
                settings=settings,
                cluster=ClusterSpec(workers=args.workers, threads_per_worker=1),
            )
            mean = np.asarray(zarr.open_array(str(out / "mean" / "0")))
            row = {
                "tile": tile,
                "overlap": overlap,
                "psnr": median_psnr(mean, high),
                "tiles": result.tiles,
                "seconds": result.seconds,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "model": str(args.model),
        "fields": args.fields,
        "planes": low.shape[0] * low.shape[1],
        "samples": args.samples,
        "workers": args.workers,
        "rows": rows,
    }
    table = markdown_table(
        ["tile", "overlap", "tiles computed", "median PSNR (dB)", "seconds"],
        [
            [r["tile"], r["overlap"], r["tiles"], f"{r['psnr']:.2f}", f"{r['seconds']:.0f}"]
            for r in rows
        ],
    )
    finish("tile_w2s.py", argv, table, args.out, report)


if __name__ == "__main__":
    main()
