"""The fixed cost of one `bigrestore run`: a fresh process restoring a small image.

    python benchmarks/startup.py WORK --before CHECKOUT [--repeats 5] [--out FILE.json]

A user restoring many small fields of view, one run each, pays a run's fixed cost every time:
starting Python, the local Dask cluster and its workers, the imports, checking the model. Here
a 128² uint16 image is restored by the bundled model in a fresh process (`bigrestore run` with
2 samples and 4 steps, so the network's own work is small), and, apart, two parts of the cost
are timed in fresh processes: importing the block task (what every Dask worker imports) and
checking the bundled model's weights (what every run does before it starts).

``--before`` is another checkout of bigrestore (say ``git worktree add ../old COMMIT``); the
two are run alternately, repeat by repeat, so both meet the same machine load, each with its
own package first on PYTHONPATH (Dask workers inherit it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image

from report import finish, markdown_table

HERE = Path(__file__).resolve().parents[1]
RUN = (
    "import sys; from bigrestore.cli import main; sys.argv = ['bigrestore', *sys.argv[1:]]; main()"
)
IMPORT_BLOCK = "import bigrestore.run.block"
CHECK_MODEL = (
    "import time; from bigrestore.model.files import read_model; "
    "from bigrestore.run.settings import bundled_model_path; t = time.perf_counter(); "
    "read_model(bundled_model_path()); print(time.perf_counter() - t)"
)


def timed(checkout: Path, args: list[str]) -> tuple[float, str]:
    """Wall seconds of ``python ARGS`` with ``checkout`` first on the import path; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, cwd=checkout
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def measure(checkout: Path, image: Path, out: Path) -> dict[str, float]:
    """One repeat of the three timings for one checkout."""
    run_s, _ = timed(checkout, ["-c", RUN, "run", str(image), "--output", str(out),
                                "--samples", "2", "--steps", "4"])  # fmt: skip
    import_s, _ = timed(checkout, ["-c", IMPORT_BLOCK])
    _, check = timed(checkout, ["-c", CHECK_MODEL])
    return {"run": run_s, "import_block": import_s, "check_model": float(check.strip())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = (100 + 2 * rng.poisson(rng.uniform(0, 20, (128, 128)))).astype(np.uint16)
    image = write_image(args.work / "small.zarr", pixels, default_meta("yx"), overwrite=True)
    checkouts = {"before": args.before.resolve(), "now": HERE}
    times: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    for repeat in range(args.repeats):
        for name, checkout in checkouts.items():
            out = args.work / f"{name}-{repeat}.zarr"
            times[name].append(measure(checkout, image, out))
            print(name, repeat, times[name][-1], flush=True)
    medians = {
        name: {key: float(np.median([t[key] for t in runs])) for key in runs[0]}
        for name, runs in times.items()
    }
    rows = [
        [key, f"{medians['before'][key]:.2f}", f"{medians['now'][key]:.2f}",
         f"{medians['before'][key] / medians['now'][key]:.2f}"]
        for key in ("run", "import_block", "check_model")
    ]  # fmt: skip
    header = ["seconds (median)", "before", "now", "before / now"]
    payload = {"repeats": args.repeats, "medians": medians, "times": times}
    finish("startup.py", argv, markdown_table(header, rows), args.out, payload)


if __name__ == "__main__":
    main(sys.argv[1:])
