"""The output store of ``bigrestore run``: its layout, lock, done-records, manifest and finish.

Layout of OUT.zarr: the root group (its ``bigrestore`` attribute is the run manifest), one
multiscale image per output volume (``mean``, ``std``, ...), the ``done`` array (one uint8 per
block, set by the block's own task after its chunks are written) and, while a run holds it,
``bigrestore.lock``. Every step that creates something is idempotent, so a run killed at any
point resumes: missing pieces are created again, finished blocks are skipped, and pyramids,
NGFF metadata and the manifest's ``complete`` status are written last (DESIGN.md decision 4).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from bigrestore.errors import CannotCreateOutputError, IncompatibleModelError, IOFailure, describe
from bigrestore.io.arrays import DONE_ARRAY
from bigrestore.io.meta import ImageMeta
from bigrestore.io.ngff import ngff_format
from bigrestore.io.paths import LOCK_FILE, MARK_KEY, group_attributes
from bigrestore.io.write import create_level0, finalize_image


@dataclass(frozen=True)
class LevelZero:
    """An output image's level-0 array: path inside the store, shape, dtype, axes, chunks."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    axes: str
    chunks: tuple[int, ...]


# ----------------------------------------------------------------------------- lock


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), None if unknown/gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _alive(record: dict[str, Any]) -> bool:
    """True if the lock's process still runs on this host (same pid and start time)."""
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    start = _process_start(pid)
    return start is not None and start == record.get("process_start")


def read_lock(store: Path) -> dict[str, Any] | None:
    """The lock record of a store, or None when no run holds it."""
    try:
        return json.loads((Path(store) / LOCK_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"unreadable": True}


def lock_state(store: Path) -> str:
    """ "free", "held" (a live run on this host), "stale" (its process is gone) or "foreign"
    (held from another host: cannot be checked from here)."""
    record = read_lock(store)
    if record is None:
        return "free"
    if record.get("host") != socket.gethostname():
        return "foreign"
    return "held" if _alive(record) else "stale"


@contextmanager
def output_lock(store: Path, command: str) -> Iterator[dict[str, Any]]:
    """Hold the store's exclusive lock for the ``with`` body (DESIGN.md decision 10).

    The lock file is created exclusively (O_EXCL) with host, pid, process start time and the
    command. A lock whose process is gone (same host) is stale and taken over; a live one, or
    one from another host, is refused with how to clear it. The store directory is created if
    needed. The lock is removed on exit, also after an error."""
    store = Path(store)
    try:
        store.mkdir(parents=False, exist_ok=True)
    except OSError as exc:
        raise CannotCreateOutputError(
            describe(store, "output", "a directory that can be created", exc)
        ) from exc
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
    }
    path = store / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            _refuse_or_clear(store)
    else:
        raise CannotCreateOutputError(
            f"{store}: another run took the lock at the same moment; try again"
        )
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    try:
        yield record
    finally:
        path.unlink(missing_ok=True)


def refuse_if_locked(store: Path) -> None:
    """Refuse an output that a live run (or a run on another host) holds; a stale lock stays
    for :func:`output_lock` to take over. Changes nothing."""
    if Path(store).is_dir() and lock_state(store) in ("held", "foreign"):
        _refuse_or_clear(store)


def _refuse_or_clear(store: Path) -> None:
    """Remove a stale lock, or refuse: a live run here, or a run on another host."""
    held = read_lock(store) or {}
    state = lock_state(store)
    lock = store / LOCK_FILE
    if state == "stale":
        lock.unlink(missing_ok=True)
        return
    who = f"pid {held.get('pid')} on {held.get('host')} since {held.get('started')} ({held.get('command', '?')})"
    if state == "held":
        raise CannotCreateOutputError(
            f"{store}: another bigrestore run is writing this output: {who}"
        )
    raise CannotCreateOutputError(
        f"{store}: locked by {who}; if that run is no longer running, delete {lock} and try again"
    )


# ----------------------------------------------------------------------------- the store


class RunStore:
    """An output store being written by a run (its lock held by the caller)."""

    def __init__(self, path: Path, ngff_version: str) -> None:
        self.path = Path(path)
        self.format = ngff_format(ngff_version)

    @staticmethod
    def existing_version(path: Path) -> str | None:
        """The NGFF version of an existing store's root group, None if there is none yet."""
        if (Path(path) / "zarr.json").is_file():
            return "0.5"
        if (Path(path) / ".zgroup").is_file():
            return "0.4"
        return None

    def manifest(self) -> dict[str, Any]:
        """The run manifest (root attribute ``bigrestore``), {} before the root exists."""
        attrs = group_attributes(self.path) or {}
        return dict(attrs.get(MARK_KEY, {}))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        root = zarr.open_group(str(self.path), mode="a", zarr_format=self.format.zarr_format)
        root.attrs[MARK_KEY] = manifest

    def clear(self) -> None:
        """Remove everything in the store but the lock (``--overwrite`` of our own output)."""
        import shutil

        for entry in self.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def ensure_layout(
        self, record: dict[str, Any], images: Sequence[LevelZero], done_shape: tuple[int, ...]
    ) -> None:
        """Create whatever of the layout is missing: root group with a ``running`` manifest,
        level-0 arrays, the done array. Existing pieces are kept (resume after a kill)."""
        try:
            if self.existing_version(self.path) is None:
                zarr.create_group(str(self.path), zarr_format=self.format.zarr_format)
                self.write_manifest({**record, "status": "running"})
            root = zarr.open_group(str(self.path), mode="a", zarr_format=self.format.zarr_format)
            if DONE_ARRAY not in root:
                root.create_array(
                    DONE_ARRAY,
                    shape=done_shape,
                    dtype="uint8",
                    chunks=(1,) * len(done_shape),
                    fill_value=0,
                )
            for image in images:
                if not _has_level0(self.path / image.path, self.format.zarr_format):
                    create_level0(
                        self.path / image.path,
                        image.shape,
                        image.dtype,
                        image.axes,
                        image.chunks,
                        self.format.version,
                    )
        except OSError as exc:
            raise CannotCreateOutputError(f"{self.path}: cannot create the output: {exc}") from exc

    def done_mask(self) -> np.ndarray:
        """uint8 array, 1 for every block whose chunks are all written."""
        return np.asarray(zarr.open_array(str(self.path / DONE_ARRAY), mode="r")[...])

    def check_resume(self, record: dict[str, Any]) -> None:
        """Refuse ``--resume`` with other inputs, model or settings than the run started with."""
        previous = self.manifest()
        if previous.get("status") == "complete":
            return
        for key in (
            "input",
            "model_sha256",
            "settings",
            "channels",
            "ngff_version",
            "threads_per_worker",
            "saturated_levels",
            "fill_levels",
        ):
            if previous.get(key) != record.get(key):
                raise IncompatibleModelError(
                    describe(self.path, f"--resume {key}", previous.get(key), record.get(key))
                    + "; run with the original model and settings, or use --overwrite"
                )

    def finalise(self, images: Sequence[tuple[str, ImageMeta, Any]], min_side: int) -> None:
        """Pyramids and NGFF metadata of every image (``(path, meta, window)``), idempotently."""
        try:
            for path, meta, window in images:
                finalize_image(
                    self.path / path, meta, self.format.version, min_side=min_side, window=window
                )
        except OSError as exc:
            raise IOFailure(
                f"{self.path}: writing pyramids failed: {exc}; fix the cause, then --resume"
            ) from exc


def _has_level0(image: Path, zarr_format: int) -> bool:
    return (image / "0" / ("zarr.json" if zarr_format == 3 else ".zarray")).is_file()


def run_status(path: Path) -> dict[str, Any] | None:
    """Status of a run output for ``bigrestore info``: complete, running (locked by a live
    process), or interrupted (unfinished and not locked); None if ``path`` is no run output."""
    path = Path(path)
    attrs = group_attributes(path) or {}
    manifest = attrs.get(MARK_KEY)
    if not isinstance(manifest, dict) or "settings" not in manifest:
        return None
    blocks_done = blocks = 0
    if (path / DONE_ARRAY).exists():
        done = np.asarray(zarr.open_array(str(path / DONE_ARRAY), mode="r")[...])
        blocks_done, blocks = int(done.sum()), int(done.size)
    lock = lock_state(path)
    status = manifest.get("status", "running")
    if status != "complete":
        status = "running" if lock in ("held", "foreign") else "interrupted"
    holder = read_lock(path) or {}
    return {
        "path": str(path),
        "status": status,
        "lock": ""
        if lock == "free"
        else f"lock {lock}: pid {holder.get('pid')} on {holder.get('host')}",
        "blocks": blocks,
        "blocks_done": blocks_done,
        "input": manifest.get("input"),
        "model": manifest.get("model"),
        "outputs": manifest.get("outputs"),
        "hint": "continue with the same command and --resume" if status == "interrupted" else "",
    }
