"""Mirrored samples: the same network calls, each pair of samples seen in another mirror.

    python benchmarks/mirrored_samples.py WORK [--model MODEL] [--set SETDIR] [--w2s-fields 5]

For every held-out set of benchmarks/quality_heldout.py (W2S validation fields, and the
synthetic test splits of SETDIR when given), the crops are restored twice through
`bigrestore run`'s own path with the run defaults (8 DDIM steps x 8 antithetic samples, tile
and overlap from the model), once with ``flips`` off (every sample as the tile lies) and once
with it on (the four antithetic pairs seen as the tile lies, mirrored left-right, up-down and
both). Both runs make the same network calls. Scored as quality_heldout does (PSNR after a
least-squares fit to the ground truth); printed per set: the median PSNR of each, the median
of the per-image differences, how many images gained, and the seconds of each run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from quality_heldout import held_out_sets, restore_stack, scores, unit
from report import finish, markdown_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--set", dest="set_dir", type=Path, default=None)
    parser.add_argument("--w2s-fields", type=int, default=5)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (low, high) in held_out_sets(args.set_dir, args.w2s_fields).items():
        truths = [unit(h) for h in high]
        row: dict = {"set": name, "images": len(low)}
        for flips in (False, True):
            label = "flips" if flips else "plain"
            started = time.perf_counter()
            stem = f"{name.split()[0]}_{label}"
            means = restore_stack(args.work, stem, low, args.model, args, flips=flips)
            row[f"{label}_seconds"] = round(time.perf_counter() - started, 1)
            row[f"{label}_psnr"] = [scores(m, gt)[0] for m, gt in zip(means, truths, strict=True)]
        gains = [f - p for f, p in zip(row["flips_psnr"], row["plain_psnr"], strict=True)]
        row["median_gain"] = statistics.median(gains)
        row["gained"] = sum(g > 0 for g in gains)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    table = markdown_table(
        [
            "held-out set",
            "images",
            "no flips (dB)",
            "flips (dB)",
            "median gain per image",
            "images gained",
            "seconds: no flips / flips",
        ],
        [
            [
                r["set"],
                r["images"],
                f"{statistics.median(r['plain_psnr']):.2f}",
                f"{statistics.median(r['flips_psnr']):.2f}",
                f"{r['median_gain']:+.2f}",
                f"{r['gained']} of {r['images']}",
                f"{r['plain_seconds']:.0f} / {r['flips_seconds']:.0f}",
            ]
            for r in rows
        ],
    )
    finish("mirrored_samples.py", argv, table, args.work / "mirrored_samples.json", rows)


if __name__ == "__main__":
    main()
