"""Dask: the cluster a run uses and the loop that feeds it block tasks.

The one module that talks to ``distributed`` (STYLE.md 3). Three ways to get workers:
an embedded LocalCluster (default), ``--gpus N`` (one single-threaded worker per GPU, via
dask-cuda's LocalCUDACluster when installed), or ``--scheduler ADDRESS`` (an existing cluster,
e.g. from dask-jobqueue). Workers are started without Dask's default
``MALLOC_TRIM_THRESHOLD_``/``OMP_NUM_THREADS`` pre-spawn environment, which slows torch
(DESIGN.md decision 7).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dask

from bigrestore.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSpec:
    """Where blocks run. At most one of gpus / scheduler is set; ``workers`` counts CPU workers."""

    gpus: int = 0
    workers: int = 1
    threads_per_worker: int = 0
    scheduler: str | None = None

    def torch_threads(self) -> int:
        """Intra-op torch threads per CPU worker: the cores shared out between workers."""
        if self.gpus or self.scheduler:
            return 0
        if self.threads_per_worker:
            return self.threads_per_worker
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))


def _clean_worker_environment() -> dict[str, Any]:
    """Dask config that keeps the nanny from exporting MALLOC_TRIM_THRESHOLD_ and 1-thread BLAS."""
    return {"distributed.nanny.pre-spawn-environ": {}}


@contextlib.contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``spec``; clusters we start are closed afterwards."""
    from distributed import Client, LocalCluster

    if spec.scheduler:
        client = Client(spec.scheduler, timeout="30s")
        try:
            yield client
        finally:
            client.close()
        return
    with dask.config.set(_clean_worker_environment()):
        if spec.gpus:
            cluster = _gpu_cluster(spec.gpus)
        else:
            cluster = LocalCluster(
                n_workers=spec.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                memory_limit=0,
            )
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _gpu_cluster(gpus: int) -> Any:
    """One worker per GPU, one thread each, pinned with CUDA_VISIBLE_DEVICES where possible."""
    import torch
    from distributed import LocalCluster

    available = torch.cuda.device_count()
    if available == 0:
        log.warning("--gpus %d asked for, but torch sees no GPU: running %d CPU worker(s)", gpus, gpus)
        return LocalCluster(n_workers=gpus, threads_per_worker=1, dashboard_address=":0", memory_limit=0)
    if gpus > available:
        raise UsageError(f"--gpus {gpus}: only {available} GPU(s) visible to torch")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        log.info("dask-cuda not installed: workers gpu-0..gpu-%d choose their device by name", gpus - 1)
        from distributed import Nanny, Scheduler, SpecCluster

        workers = {
            f"gpu-{i}": {"cls": Nanny, "options": {"nthreads": 1, "name": f"gpu-{i}", "memory_limit": 0}}
            for i in range(gpus)
        }
        return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}})
    visible = ",".join(str(i) for i in range(gpus))
    return LocalCUDACluster(n_workers=gpus, threads_per_worker=1, CUDA_VISIBLE_DEVICES=visible, dashboard_address=":0")


def worker_count(client: Any) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def run_tasks(
    client: Any,
    function: Callable[..., dict[str, Any]],
    job: Any,
    tasks: list[Any],
    on_done: Callable[[dict[str, Any]], None],
) -> None:
    """Submit one Dask task per block and call ``on_done`` with each result as it finishes.

    Tasks get stable keys (``block-…``) so a retried task is the same task. The job is
    scattered once. KeyboardInterrupt cancels what is still running and propagates.
    """
    from distributed import as_completed

    [job_future] = client.scatter([job], broadcast=True, hash=False)
    futures = [
        client.submit(function, job_future, task, key=f"{task.name}-{id(job):x}", pure=False, retries=1)
        for task in tasks
    ]
    try:
        for future in as_completed(futures):
            on_done(future.result())
    except BaseException:
        client.cancel(futures)
        raise
