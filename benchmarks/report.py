"""The common ending of a benchmark: a markdown table, the command that made it, the CPU, and
the rows as JSON, so every figure in docs/benchmarks.md can be traced to a command and a machine.

Benchmarks are scripts run as ``python benchmarks/NAME.py``; Python puts ``benchmarks/`` on the
import path, so they import this module as ``from report import ...``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bigrestore.devices import cpu_name


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table; every row must have as many cells as the header."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, header has {len(header)}: {row}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command as a user would type it: ``python benchmarks/SCRIPT ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{script}", *args])


def finish(
    script: str,
    argv: Sequence[str] | None,
    table: str,
    out: Path | None = None,
    payload: Any = None,
    machine: str = "",
) -> None:
    """Print ``table``, then the command and the CPU (plus ``machine``, e.g. torch threads);
    write ``payload`` as JSON to ``out`` when both are given."""
    print(table)
    print(f"command: {command_line(script, argv)}")
    print(f"CPU: {cpu_name()}{', ' + machine if machine else ''}")
    if out is not None and payload is not None:
        out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
