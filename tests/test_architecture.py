"""The package's shape is part of its contract (docs/architecture.md): imports point one way,
zarr lives in io/, the command line starts without torch, functions and modules stay small, and
ruff keeps the code uniform."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bigrestore"
ROOT = PACKAGE.parent

#: Layers, lowest first. A module may import its own room and lower layers only; rooms of the
#: same layer are siblings and never import each other (run and train share io/ and model/,
#: not each other). The base modules are small, pure helpers every room may use.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "errors": 0,
    "checks": 0,
    "intensity": 0,
    "devices": 0,
    "outputs": 0,
    "io": 1,
    "diffusion": 1,
    "model": 2,
    "run": 3,
    "train": 3,
    "evaluate": 3,
    "register": 3,
    "commands": 4,
    "cli": 5,
}
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def room(path: Path) -> str:
    """The top-level name a module belongs to: its folder under bigrestore/, or its own stem."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the module, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "bigrestore":
                found += [(node.lineno, f"bigrestore.{alias.name}") for alias in node.names]
    return found


def test_every_room_has_a_layer():
    assert {room(p) for p in modules()} <= set(LAYERS), (
        "add new rooms to LAYERS (and to docs/architecture.md)"
    )


def test_imports_point_one_way():
    wrong = []
    for path in modules():
        here = room(path)
        for line, name in imported_names(path):
            if not name.startswith("bigrestore."):
                continue
            there = name.split(".")[1]
            if there == here or there == "__version__":
                continue
            base_to_base = LAYERS[here] == 0 and LAYERS[there] == 0
            if LAYERS[there] >= LAYERS[here] and not base_to_base:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line} ({here}, layer {LAYERS[here]}) imports {name} "
                    f"(layer {LAYERS[there]})"
                )
    assert not wrong, "\n".join(wrong)


def test_zarr_is_imported_only_under_io():
    outside = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules()
        if room(path) != "io"
        for line, name in imported_names(path)
        if name == "zarr" or name.startswith("zarr.")
    ]
    assert not outside, outside


def test_the_command_line_starts_without_torch_or_distributed():
    """So bad input is refused at once: torch takes seconds to import."""
    code = "import sys, bigrestore.cli; print(sorted(m for m in ('torch', 'distributed') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_worker_and_a_model_check_import_only_what_they_use():
    """Every Dask worker imports the block task, and every run checks its model's shapes: the
    NGFF writers (ome_zarr, dask.array; about 2 s) and torch's compiler (a random op on the
    meta device imports it; about 3.5 s) are left out, a cost every worker and run paid."""
    code = (
        "import sys, bigrestore.run.block\n"
        "from bigrestore.model.files import read_model\n"
        "from bigrestore.run.settings import bundled_model_path\n"
        "read_model(bundled_model_path())\n"
        "print(sorted(m for m in ('ome_zarr', 'dask.array', 'torch._dynamo') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_no_function_or_module_is_too_long():
    long = []
    for path in modules():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = node.end_lineno - first + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines"
                    )
    assert not long, "\n".join(long)


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is a dev dependency: pip install -e '.[dev]'")
    done = subprocess.run(
        [ruff, *command, "bigrestore", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
