"""Where outputs may go, and what ``--overwrite`` may delete (DESIGN.md decisions 5 and 9).

bigrestore deletes only what it wrote: a path is replaced only if it is a zarr group whose
attributes carry bigrestore's mark (the run manifest, or the mark of an image written by
``convert``/``register``), and never if it contains or lies inside one of the run's inputs.
Every check here changes nothing, so commands run them before any compute.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bigrestore.errors import CannotCreateOutputError

#: Attribute key of bigrestore's mark (and of the run manifest) in a group it wrote.
MARK_KEY = "bigrestore"
#: The run lock inside an output store (bigrestore.io.runstore).
LOCK_FILE = "bigrestore.lock"


def unwritable_directory(directory: Path) -> Path | None:
    """The first directory in ``directory``'s tree (itself included) whose entries cannot be
    listed, created or removed, else None: what ``shutil.rmtree`` and a resumed run need."""
    needed = os.R_OK | os.W_OK | os.X_OK
    if not os.access(directory, needed):
        return directory
    for root, dirs, _ in os.walk(directory):
        for name in dirs:
            if not os.access(Path(root, name), needed):
                return Path(root, name)
    return None


def is_within(path: Path, other: Path) -> bool:
    """True if ``path`` is ``other`` or lies inside it (symlinks resolved)."""
    a, b = Path(path).resolve(), Path(other).resolve()
    return a == b or b in a.parents


def group_attributes(path: Path) -> dict[str, Any] | None:
    """The attributes of a zarr group at ``path`` (v3 zarr.json or v2 .zattrs), read as plain
    JSON without opening the store; None if ``path`` is not a readable group."""
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        file = Path(path) / name
        if file.is_file():
            try:
                document = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return None
            attrs = document.get(key, {}) if key else document
            return attrs if isinstance(attrs, dict) else None
    return None


#: What an output path may hold for ``--overwrite`` to replace it: a run's output store (its
#: mark is the run manifest, with a ``status``) or an image that convert/register wrote.
KINDS = ("run", "image")


def output_kind(path: Path) -> str | None:
    """Which kind of bigrestore output ``path`` is (:data:`KINDS`): "run" for a group whose mark
    is a run manifest (it has a ``status``) or a run's store that holds nothing yet but its lock
    (a run killed at its very start), "image" for another group with bigrestore's mark (what
    convert and register write); None for anything bigrestore did not write."""
    attrs = group_attributes(path)
    if attrs is not None:
        mark = attrs.get(MARK_KEY)
        if not isinstance(mark, dict):
            return None
        return "run" if "status" in mark else "image"
    lock_only = Path(path).is_dir() and {p.name for p in Path(path).iterdir()} <= {LOCK_FILE}
    return "run" if lock_only else None


def written_by_bigrestore(path: Path) -> bool:
    """True if ``path`` is an output bigrestore wrote (of either kind)."""
    return output_kind(path) is not None


def check_output(
    path: Path, overwrite: bool, inputs: Sequence[Path] = (), kind: str | None = None
) -> None:
    """Raise CannotCreateOutputError unless ``path`` can be created (or, with ``overwrite``,
    removed and created again): never inside or around an input, an existing path only with
    ``overwrite`` and only if bigrestore wrote it (an output of ``kind``: "run" or "image"),
    a writable parent. Changes nothing."""
    path = Path(path)
    for source in inputs:
        if is_within(path, source):
            raise CannotCreateOutputError(
                f"{path}: output would be inside the input {source}; choose another -o"
            )
        if is_within(source, path):
            raise CannotCreateOutputError(
                f"{path}: output would replace a directory that holds the input {source}"
            )
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise CannotCreateOutputError(f"{path}: output exists; pass --overwrite to replace it")
        found = None if path.is_symlink() or not path.is_dir() else output_kind(path)
        if found is None:
            raise CannotCreateOutputError(
                f"{path}: --overwrite replaces only outputs that bigrestore wrote, and this is not one "
                "(no bigrestore mark in its attributes); remove it yourself or choose another -o"
            )
        if kind not in (None, found):  # a run must not delete a converted input, nor the reverse
            other = "a converted or registered image" if kind == "run" else "a run's output"
            raise CannotCreateOutputError(
                f"{path}: --overwrite here replaces only a {kind} output, and this is {other}; "
                "remove it yourself or choose another -o"
            )
    if not path.parent.is_dir():
        raise CannotCreateOutputError(f"{path}: parent directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CannotCreateOutputError(f"{path}: parent directory {path.parent} is not writable")
    blocked = unwritable_directory(path) if path.is_dir() else None
    if blocked is not None:
        raise CannotCreateOutputError(
            f"{path}: cannot replace the output: {blocked} is not writable"
        )


def prepare_output(
    path: Path, overwrite: bool, inputs: Sequence[Path] = (), kind: str | None = "image"
) -> None:
    """:func:`check_output`, then remove an existing bigrestore output at ``path`` (by default
    only an image output: what convert, register and write_image create)."""
    check_output(path, overwrite, inputs, kind)
    if path.exists():
        shutil.rmtree(path)
