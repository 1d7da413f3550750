"""A `bigrestore run` beside a competing busy process: its slowdown against the share of the
cores it gets, with and without passive OpenMP waiting and with other thread layouts.

    python benchmarks/contention.py [--work DIR] [--side 512] [--samples 2] [--steps 10] [--repeat 3]
    python benchmarks/contention.py --smoke          # tiny settings: checks the script only

Each condition runs `bigrestore run` on a W2S field (`../shared/data/w2s/val_low.tif`, or a
synthetic one) in a fresh process, with a competitor `python -c 'while True: pass'` (unpinned,
or pinned to core 0 with sched_setaffinity) started before it, and an environment of its own
(the run's workers inherit it: bigrestore starts them without Dask's pre-spawn environment).

The share of the cores a run gets, with ``r`` runnable threads of its own (workers x threads
per worker), ``k`` busy competitors and ``c`` cores, is ``c * r / (r + k)`` when they
oversubscribe the cores (fair scheduling), else ``min(r, c)``; alone it uses ``min(r, c)``.
The expected slowdown is their ratio (1.5 for 2 single-threaded workers beside 1 competitor on
2 cores); "excess" = measured slowdown / expected (the goal: <= 1.3). With Linux's autogroup
(sched_autogroup_enabled) a competitor in a session of its own (another user's job) is a group
of its own: the groups share the cores fairly first, so the run gets max(c - k, c / (1 + k))
cores, and nice values do not cross groups. Only meaningful on an otherwise idle machine: the
load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image

W2S = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s" / "val_low.tif"
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


@dataclass
class Condition:
    name: str
    competitors: int = 0
    pinned: bool = False  # competitors pinned to core 0
    session: bool = False  # competitors in a session of their own (another user's job)
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    workers: int | None = None  # default: one per usable core
    threads: int = 1


def conditions(cores: int) -> list[Condition]:
    one = ["--workers", "1", "--threads-per-worker", str(cores)]
    return [
        Condition("alone, default"),
        Condition("+1 busy, default", 1),
        Condition("alone, OMP passive", env=PASSIVE),
        Condition("+1 busy, OMP passive", 1, env=PASSIVE),
        Condition("+1 busy pinned to core 0, default", 1, pinned=True),
        Condition("+1 busy in its own session, default", 1, session=True),
        Condition(f"alone, 1 worker x {cores} threads", args=one, workers=1, threads=cores),
        Condition(
            f"alone, 1 worker x {cores} threads, OMP passive",
            env=PASSIVE,
            args=one,
            workers=1,
            threads=cores,
        ),  # fmt: skip
        Condition(f"+1 busy, 1 worker x {cores} threads", 1, args=one, workers=1, threads=cores),
        Condition(
            f"+1 busy, 1 worker x {cores} threads, OMP passive",
            1,
            env=PASSIVE,
            args=one,
            workers=1,
            threads=cores,
        ),  # fmt: skip
    ]


def field_input(path: Path, side: int) -> Path:
    if W2S.exists():
        import tifffile

        frames = tifffile.imread(W2S)[:, 0].astype(np.uint16) * 64
        reps = -(-side // 512)
        plane = np.vstack([np.hstack(list(frames[r * reps : (r + 1) * reps])) for r in range(reps)])
        plane = plane[:side, :side]
    else:
        rng = np.random.default_rng(0)
        plane = rng.poisson(2000, (side, side)).astype(np.uint16)
    meta = ImageMeta("yx", (0.1, 0.1), (0.0, 0.0), ("micrometer",) * 2, None, "field")
    return write_image(path, plane, meta, chunks=(min(side, 512),) * 2, overwrite=True)


def autogroup() -> bool:
    """Linux's autogroup: CPU time is shared fairly between sessions, then between threads."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def share(cores: int, runnable: int, competitors: int, sessions: bool = False) -> float:
    """Cores a run with ``runnable`` threads gets beside single-threaded busy competitors."""
    if runnable + competitors <= cores:
        return float(min(runnable, cores))
    if sessions and autogroup():  # each competitor a group of its own, using <= 1 core
        return float(min(runnable, max(cores - competitors, cores / (1 + competitors))))
    return cores * runnable / (runnable + competitors)


def run_once(cond: Condition, image: Path, out: Path, options: list[str]) -> dict:
    spinners = []
    for _ in range(cond.competitors):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                   start_new_session=cond.session)  # fmt: skip
        if cond.pinned:
            os.sched_setaffinity(spinner.pid, {min(os.sched_getaffinity(0))})
        spinners.append(spinner)
    command = [sys.executable, "-m", "bigrestore.cli", "run", str(image), "-o", str(out),
               "--overwrite", *options, *cond.args]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env={**os.environ, **cond.env}, capture_output=True,
                              text=True)  # fmt: skip
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run's tree, not the spinners
    finally:
        for spinner in spinners:  # only the processes started here, by their id
            spinner.kill()
            spinner.wait()
    if done.returncode:
        sys.exit(f"{cond.name}: failed ({done.returncode}): {done.stderr[-1500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    manifest = json.loads((out / "zarr.json").read_text())["attributes"]["bigrestore"]
    return {"wall": wall, "compute": manifest["compute_seconds"], "cpu": cpu,
            "command": " ".join(f"{k}={v}" for k, v in cond.env.items()) + " "
            + " ".join(command[3:])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("contention"))
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="runs per condition (median)")
    parser.add_argument("--smoke", action="store_true", help="128², 1 sample x 2 steps")
    args = parser.parse_args()
    if args.smoke:
        args.side, args.samples, args.steps = 128, 1, 2
    args.work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    image = field_input(args.work / "field.zarr", args.side)
    options = ["--samples", str(args.samples), "--steps", str(args.steps)]
    print(f"cores {cores}; autogroup {autogroup()}; load average before {os.getloadavg()}")
    busy = subprocess.run(["sh", "-c", "ps -eo pid,ni,pcpu,args --sort=-pcpu | head -6"],
                          capture_output=True, text=True).stdout  # fmt: skip
    print("busiest processes before:\n" + busy)
    rows, alone = [], {}
    for cond in conditions(cores):
        tries = [run_once(cond, image, args.work / "out.zarr", options) for _ in range(args.repeat)]
        result = sorted(tries, key=lambda r: r["compute"])[len(tries) // 2]  # the median
        runnable = (cond.workers or cores) * cond.threads
        used = float(min(runnable, cores))
        key = (cond.workers, cond.threads)
        alone.setdefault(key, result["compute"])
        slowdown = result["compute"] / alone[key]
        expected = used / share(cores, runnable, cond.competitors, cond.session)
        rows.append((cond.name, result, slowdown, expected))
        print(f"{cond.name:48s} compute {result['compute']:6.1f} s  wall {result['wall']:6.1f} s"
              f"  cpu {result['cpu']:6.1f} s  slowdown {slowdown:4.2f}  expected {expected:4.2f}"
              f"  excess {slowdown / expected:4.2f}", flush=True)  # fmt: skip
    print(f"load average after {os.getloadavg()}")
    print("\n| condition | compute s | CPU s | slowdown | share-expected | excess |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, result, slowdown, expected in rows:
        print(f"| {name} | {result['compute']:.1f} | {result['cpu']:.1f} | {slowdown:.2f} | "
              f"{expected:.2f} | {slowdown / expected:.2f} |")  # fmt: skip
    print("\ncommands:")
    for name, result, _, _ in rows:
        print(f"  {name}: {result['command']}")


if __name__ == "__main__":
    main()
