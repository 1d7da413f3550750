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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dask

from bigrestore.checks import require_int
from bigrestore.devices import usable_cores
from bigrestore.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSpec:
    """Where blocks run. At most one of gpus / scheduler is set; ``workers`` counts CPU workers
    (None: the usable cores divided by the threads per worker).

    ``threads_per_worker`` is torch's intra-op thread count in every worker, also on clusters
    started elsewhere (the block task sets it). It is fixed, not derived from the worker count,
    because a convolution may sum in another order with another thread count, so the output's
    bytes are guaranteed for a given thread count (recorded in the manifest; ``--resume``
    keeps it), for any number of workers."""

    gpus: int = 0
    workers: int | None = None
    threads_per_worker: int = 1
    scheduler: str | None = None

    def __post_init__(self) -> None:
        require_int(self.gpus, "--gpus", "cluster", low=0, error=UsageError)
        if self.workers is None:
            object.__setattr__(
                self,
                "workers",
                self.gpus or max(1, usable_cores() // max(1, self.threads_per_worker)),
            )
        require_int(self.workers, "--workers", "cluster", low=1, error=UsageError)
        require_int(
            self.threads_per_worker, "--threads-per-worker", "cluster", low=1, error=UsageError
        )
        if self.gpus and self.scheduler:
            raise UsageError("--gpus and --scheduler exclude each other")
        if self.scheduler is not None and not str(self.scheduler).strip():
            raise UsageError(
                "--scheduler: expected an address like tcp://HOST:8786, found an empty string"
            )

    def torch_threads(self) -> int:
        """Intra-op torch threads of every worker (see the class docstring)."""
        return self.threads_per_worker


def cluster_spec(
    gpus: int = 0,
    workers: int | None = None,
    scheduler: str | None = None,
    threads_per_worker: int = 1,
) -> ClusterSpec:
    """The cluster of the command line: one worker per GPU with ``--gpus``, else ``workers``
    (default: one per usable core at ``threads_per_worker`` threads each)."""
    return ClusterSpec(
        gpus=gpus,
        workers=gpus or workers,
        scheduler=scheduler,
        threads_per_worker=threads_per_worker,
    )


def _clean_worker_environment() -> dict[str, Any]:
    """Dask config for the clusters bigrestore starts: no nanny-exported MALLOC_TRIM_THRESHOLD_
    or 1-thread BLAS (decision 7) and, unless -v asked for more, workers that log only critical
    problems: a failed block is reported once by the run itself (with the resume command), not
    as worker tracebacks, and shutting a cluster down prints nothing."""
    return {"distributed.nanny.pre-spawn-environ": {}}


def quiet_worker_logs(dask_worker: Any = None) -> None:
    """In a worker process: log only critical problems of distributed (run by a worker plugin,
    so workers that a nanny restarts after a crash are quiet too)."""
    for name in ("distributed", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _quiet(client: Any) -> None:
    """Keep the workers of a cluster bigrestore started quiet unless -v asked for more: a failed
    block is reported once by the run itself, with the command that resumes it."""
    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        return
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietLogs(WorkerPlugin):
        name = "bigrestore-quiet-logs"

        def setup(self, worker: Any) -> None:
            quiet_worker_logs(worker)

    client.register_plugin(QuietLogs())


@contextlib.contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``spec``; clusters we start are closed afterwards."""
    from distributed import Client, LocalCluster

    if spec.scheduler:
        try:
            client = Client(spec.scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(
                f"--scheduler {spec.scheduler}: cannot connect ({type(exc).__name__}: {exc})"
            ) from exc
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
    _quiet(client)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def check_gpus(gpus: int) -> None:
    """Refuse ``--gpus N`` when torch sees fewer than N GPUs (before anything is written)."""
    if gpus <= 0:
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > available:
        raise UsageError(
            f"--gpus {gpus}: torch sees {available} GPU(s) on this machine"
            + ("; run without --gpus to use CPU workers (--workers N)" if available == 0 else "")
        )


def gpu_worker_names(gpus: int) -> list[str]:
    """Worker names of the fallback cluster without dask-cuda: gpu-0 .. gpu-(N-1); a worker
    named gpu-K computes on GPU K (bigrestore.devices.pick_device)."""
    return [f"gpu-{i}" for i in range(gpus)]


def _gpu_cluster(gpus: int) -> Any:
    """One worker per GPU, one thread each, pinned with CUDA_VISIBLE_DEVICES where possible."""

    check_gpus(gpus)
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        log.info(
            "dask-cuda not installed: workers gpu-0..gpu-%d choose their device by name", gpus - 1
        )
        from distributed import Nanny, Scheduler, SpecCluster

        workers = {
            name: {"cls": Nanny, "options": {"nthreads": 1, "name": name, "memory_limit": 0}}
            for name in gpu_worker_names(gpus)
        }
        return SpecCluster(
            workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}}
        )
    visible = ",".join(str(i) for i in range(gpus))
    return LocalCUDACluster(
        n_workers=gpus, threads_per_worker=1, CUDA_VISIBLE_DEVICES=visible, dashboard_address=":0"
    )


def worker_count(client: Any) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def run_blocks(
    client: Any,
    job: Any,
    all_tasks: list[Any],
    tasks: list[Any],
    on_tiles: Callable[[int], None],
    on_done: Callable[[dict[str, Any]], None],
    window: int = 0,
) -> None:
    """Run ``tasks`` (blocks) on Dask, sharing border tiles: one task per owner block computes
    the tiles that start in it (``run_tiles``), one task per block blends and writes
    (``run_assemble``) from the tile results of the blocks owning its tiles. Blocks are
    submitted in plan order, at most ``window`` at a time (default 4 per worker), and a tile
    result is released as soon as no remaining block needs it, so memory holds about two rows
    of blocks' tiles whatever the image size.

    Keys are stable (a retried task is the same task); the job (a few kB) travels with every
    task rather than being scattered once, so it is never lost with a worker. ``on_tiles(n)``
    is called as each tile group finishes, ``on_done(record)`` as each block does.
    KeyboardInterrupt cancels what is still running and propagates.
    """
    from distributed import as_completed

    from bigrestore.run.block import run_assemble, run_tiles
    from bigrestore.run.tasks import SharedTiles

    shared = SharedTiles.plan(job, all_tasks, tasks)
    window = window or 4 * max(1, len(client.scheduler_info().get("workers", {})))
    tag = f"{id(job):x}"
    groups: dict[tuple[int, ...], Any] = {}
    running: dict[Any, Any] = {}
    pending = list(reversed(tasks))
    completed = as_completed()

    tiles_of: dict[Any, int] = {}

    def group_future(group: tuple[int, ...]) -> Any:
        if group not in groups:
            owner = shared.owners[group]
            future = client.submit(
                run_tiles, job, owner, key=f"tiles-{owner.name}-{tag}", pure=False, retries=2
            )
            groups[group], tiles_of[future] = future, shared.tiles_in(job, group)
            completed.add(future)
        return groups[group]

    def submit_next() -> None:
        task = pending.pop()
        deps = [group_future(g) for g in shared.needs[task.done_index]]
        future = client.submit(
            run_assemble, job, task, *deps, key=f"{task.name}-{tag}", pure=False, retries=2
        )
        running[future] = task
        completed.add(future)

    try:
        while pending and len(running) < window:
            submit_next()
        for future in completed:
            if future in tiles_of:  # a tile group finished; its result stays on the workers
                if future.status == "error":
                    future.result()  # raises the group's error here
                on_tiles(tiles_of.pop(future))
                continue
            task = running.pop(future)
            on_done(future.result())
            for group in shared.finished(task):
                groups.pop(group, None)  # dropping the last reference releases it on the worker
            if pending:
                submit_next()
    except BaseException:
        client.cancel(list(running) + list(groups.values()))
        raise
