"""Is the model slower inside a Dask worker than in-process? (a check for run_scaling.py)

    python benchmarks/worker_vs_inprocess.py

Times the same `sample_repeated` call (bundled model, 36 tiles of 64², 4 samples x 6 DDIM
steps, batch 8, one torch thread) in this process, then twice in a one-thread LocalCluster
worker started as `bigrestore run` starts them (no pre-spawn environment), then again here.
"""

from __future__ import annotations

import os
import time

import dask
import torch
from distributed import Client, LocalCluster


def sampling_seconds(threads: int = 1) -> dict[str, object]:
    """Seconds of one sampling call under no_grad and under inference_mode, after a warm-up."""
    from bigrestore.api import bundled_model_path
    from bigrestore.checkpoint import load_model
    from bigrestore.diffusion import Schedule, sample_repeated
    from bigrestore.rng import TileKey

    torch.set_num_threads(threads)
    net, meta = load_model(bundled_model_path())
    schedule = Schedule.from_dict(meta["schedule"])
    cond = torch.randn(36, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    keys = [TileKey(0, 0, 0, 0, i, 0) for i in range(36)]
    kw = dict(sampler="ddim", eta=1.0, spacing="uniform", max_batch=8, clip_x0=True)
    seconds = {}
    for mode in ("no_grad", "inference_mode"):
        with torch.inference_mode() if mode == "inference_mode" else torch.no_grad():
            sample_repeated(net, cond[:8], keys[:8], 1, schedule, steps=2, **kw)  # warm-up
            start = time.perf_counter()
            sample_repeated(net, cond, keys, 4, schedule, steps=6, **kw)
            seconds[mode] = round(time.perf_counter() - start, 2)
    return {"seconds": seconds, "torch_threads": torch.get_num_threads(), "pid": os.getpid()}


def main() -> None:
    print("in-process", sampling_seconds())
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                memory_limit=0,
            ) as cluster,
            Client(cluster) as client,
        ):
            for _ in range(2):
                print("worker    ", client.submit(sampling_seconds, pure=False).result())
    print("in-process", sampling_seconds())


if __name__ == "__main__":
    main()
