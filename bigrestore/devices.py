"""The torch device a process computes on, shared by ``bigrestore run`` workers and training.

torch is imported inside the functions: the command line validates settings (PRECISIONS)
without paying torch's import time."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from bigrestore.errors import UsageError, describe

if TYPE_CHECKING:
    import torch


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; a batch job's allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_gpu() -> int:
    """GPU index of this Dask worker: K for a worker named ``gpu-K`` (modulo the GPUs it sees,
    the layout of execute._gpu_cluster without dask-cuda), else 0 (dask-cuda pins one GPU)."""
    import torch

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
    import torch

    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    indexed = name.startswith("cuda:") and name[5:].isdigit()
    if name not in ("auto", "cuda") and not indexed:
        raise UsageError(describe("--device", "device", "auto, cpu, cuda or cuda:N", name))
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: torch sees no CUDA device")
    return torch.device(name) if indexed else torch.device("cuda", _worker_gpu())


#: --precision choices: auto (bf16 where the hardware computes it natively, else fp32), fp32, bf16.
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """True where bf16 convolutions are native and faster than fp32: CUDA GPUs with bf16, and
    CPUs with AMX or AVX512-BF16 (a network call of the bundled model measured 2.2x faster
    than fp32 on one such core, benchmarks/precision_speed.py). Other CPUs emulate bf16,
    which is slower than fp32, so auto keeps fp32 there."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, no public API
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def check_precision(precision: str, where: str = "--precision") -> None:
    """UsageError unless ``precision`` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise UsageError(describe(where, "precision", ", ".join(PRECISIONS), precision))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of network calls for ``precision`` on ``device`` (None = fp32).

    The sampler's and the optimiser's arithmetic stay fp32 either way; only the network's
    convolutions and matrix products drop to bf16."""
    import torch

    check_precision(precision)
    if precision == "fp32" or (precision == "auto" and not native_bf16(device)):
        return None
    return torch.bfloat16


def network_autocast(
    device_type: str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` for network calls on ``device_type``; no context for None."""
    import torch

    return (
        torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )


def cpu_name() -> str:
    """The CPU's model name with its bf16 support (benchmark figures name the CPU they ran on):
    e.g. "AMD EPYC (avx512_bf16)", "Intel Xeon ... (amx_bf16)", or "... (no native bf16)"."""
    import platform

    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    name = " ".join(fields.get("model name", platform.machine()).split())
    flags = set(fields.get("flags", "").split())
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name} ({', '.join(bf16) if bf16 else 'no native bf16'})"
