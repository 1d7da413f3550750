"""Training checkpoints: tensors in safetensors, everything else in JSON, committed atomically.

Layout of ``MODEL_DIR/checkpoint/``::

    state-00001200.safetensors   model.*, ema.* and optim.<param>.<key> tensors
    state-00001200.json          step, config, history, optimizer groups, scheduler, RNG keys,
                                 SHA-256 of the tensors file
    latest.json                  {"state": "state-00001200.json"}: the commit point

Each file is written to a temporary name, fsynced and renamed (``os.replace``); ``latest.json``
is replaced last and older states are deleted after it. A kill at any moment therefore leaves
``latest.json`` naming a complete earlier state. Nothing is ever unpickled (DESIGN.md 6).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bigrestore.errors import CannotCreateOutputError, IncompatibleModelError, describe
from bigrestore.io.atomic import sha256_file, write_atomic

log = logging.getLogger(__name__)

FORMAT = "bigrestore-train-state"
FORMAT_VERSION = 1
LATEST = "latest.json"


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state_dict → (tensors keyed optim.<param>.<key>, JSON-ready rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in rest["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def save_state(
    directory: Path,
    net: torch.nn.Module,
    ema: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    record: dict[str, Any],
) -> Path:
    """Write a checkpoint of step ``record["step"]`` and make it the latest; return its JSON.

    ``record`` is JSON-ready (step, config, history, RNG keys, ...); the optimizer's
    param_groups and the scheduler's state_dict are added here.
    """
    directory = Path(directory)
    step = int(record["step"])
    stem = f"state-{step:08d}"
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optim_tensors, optim_rest = _split_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **record,
        "optimizer": optim_rest,
        "scheduler": scheduler.state_dict(),
        "tensors": f"{stem}.safetensors",
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / f"{stem}.safetensors", lambda p: save_file(tensors, str(p)))
        meta["tensors_sha256"] = sha256_file(directory / f"{stem}.safetensors")
        text = json.dumps(meta, indent=1, allow_nan=True)
        write_atomic(directory / f"{stem}.json", lambda p: p.write_text(text, encoding="utf-8"))
        pointer = json.dumps({"state": f"{stem}.json"})
        write_atomic(directory / LATEST, lambda p: p.write_text(pointer, encoding="utf-8"))
    except OSError as err:
        raise CannotCreateOutputError(
            describe(directory, "checkpoint", "a writable directory", err)
        ) from err
    for old in directory.glob("state-*"):
        if old.name not in (f"{stem}.json", f"{stem}.safetensors"):
            old.unlink(missing_ok=True)
    log.info("checkpoint at step %d in %s", step, directory)
    return directory / f"{stem}.json"


def has_state(directory: Path) -> bool:
    return (Path(directory) / LATEST).is_file()


def read_record(directory: Path) -> dict[str, Any]:
    """The JSON part of the latest checkpoint (checked: format, version, tensors hash)."""
    directory = Path(directory)
    try:
        pointer = json.loads((directory / LATEST).read_text(encoding="utf-8"))
        path = directory / str(pointer["state"])
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise IncompatibleModelError(
            describe(directory / LATEST, "checkpoint", "a readable checkpoint", err)
        ) from err
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise IncompatibleModelError(
            describe(
                path,
                "format",
                f"{FORMAT} v{FORMAT_VERSION}",
                f"{meta.get('format')} v{meta.get('format_version')}",
            )
        )
    tensors = directory / meta["tensors"]
    try:
        digest = sha256_file(tensors)
    except OSError as err:
        raise IncompatibleModelError(
            describe(tensors, "file", "the checkpoint tensors", err)
        ) from err
    if digest != meta.get("tensors_sha256"):
        raise IncompatibleModelError(
            describe(tensors, "sha256", meta.get("tensors_sha256"), digest)
        )
    return meta


def load_state(
    directory: Path,
    net: torch.nn.Module,
    ema: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore model, EMA, optimizer and scheduler from the latest checkpoint; return its record."""
    directory = Path(directory)
    meta = read_record(directory)
    try:
        tensors = load_file(str(directory / meta["tensors"]), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise IncompatibleModelError(
            describe(directory / meta["tensors"], "file", "safetensors", err)
        ) from err
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}}
    for name, value in tensors.items():
        head, _, rest = name.partition(".")
        groups[head]["optim." + rest if head == "optim" else rest] = value
    try:
        net.load_state_dict(groups["model"], strict=True)
        if ema is not None:
            ema.load_state_dict(groups["ema"], strict=True)
        optimizer.load_state_dict(_join_optimizer(groups["optim"], meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise IncompatibleModelError(
            describe(directory, "checkpoint", "state matching this model and config", err)
        ) from err
    return meta
