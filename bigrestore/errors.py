"""Typed errors raised where a problem is found; only the CLI maps them to exit codes.

Exit codes follow sysexits (DESIGN.md, decision 8).
"""

from __future__ import annotations


class BigrestoreError(Exception):
    """Base class: a user-facing problem with a one-line message."""

    exit_code: int = 1


class UsageError(BigrestoreError):
    """Command-line usage that cannot work (exit 2)."""

    exit_code = 2


class BadInputError(BigrestoreError):
    """Input data or metadata is not what is expected (EX_DATAERR, 65)."""

    exit_code = 65


class MissingInputError(BigrestoreError):
    """An input path does not exist or cannot be opened (EX_NOINPUT, 66)."""

    exit_code = 66


class CannotCreateOutputError(BigrestoreError):
    """An output cannot be created, e.g. it exists and --overwrite was not given (EX_CANTCREAT, 73)."""

    exit_code = 73


class IOFailure(BigrestoreError):
    """Reading or writing failed part-way (EX_IOERR, 74)."""

    exit_code = 74


class ResumableInterrupt(BigrestoreError):
    """Work stopped before the end but can be resumed (EX_TEMPFAIL, 75)."""

    exit_code = 75


class IncompatibleModelError(BigrestoreError):
    """A model file or config is corrupt, mismatched or of an unknown format (EX_CONFIG, 78)."""

    exit_code = 78


def describe(path: object, field: str, expected: object, found: object) -> str:
    """One-line message naming the path, the field and expected vs found."""
    return f"{path}: {field}: expected {expected}, found {found}"
