"""The torch device a process computes on, shared by ``bigrestore run`` workers and training."""

from __future__ import annotations

import torch

from bigrestore.errors import UsageError, describe


def _worker_gpu() -> int:
    """GPU index of this Dask worker: K for a worker named ``gpu-K`` (modulo the GPUs it sees,
    the layout of execute._gpu_cluster without dask-cuda), else 0 (dask-cuda pins one GPU)."""
    try:
        from distributed import get_worker

        name = str(get_worker().name)
        if name.startswith("gpu-"):
            return int(name.split("-")[1]) % torch.cuda.device_count()
    except (ImportError, ValueError):
        pass
    return 0


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for ``name``: auto (a GPU when torch sees one, else the CPU), cpu,
    cuda (this worker's GPU) or cuda:N. UsageError for cuda without a GPU or another name."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    indexed = name.startswith("cuda:") and name[5:].isdigit()
    if name not in ("auto", "cuda") and not indexed:
        raise UsageError(describe("--device", "device", "auto, cpu, cuda or cuda:N", name))
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: torch sees no CUDA device")
    return torch.device(name) if indexed else torch.device("cuda", _worker_gpu())
