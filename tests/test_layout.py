"""The package's floors, and imports that point down only: the kernels import nothing of rnnkit, the engine only
the kernels, the layers only the engine, export only the layers and below, and the library floors none of the
application floors (data, models, analysis, training, tasks, the command line). rnnkit.reference (NumPy) stands
apart. Every `import`/`from ... import` of every module is read, those inside functions included."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rnnkit"

# floor of each top-level part of the package, lowest first; a module may import its own part and lower floors
FLOORS = {
    "rnnkit.errors": 0, "rnnkit._files": 0, "rnnkit.__version__": 0,  # utilities any floor may use
    "rnnkit.kernels": 1,
    "rnnkit.engine": 2,
    "rnnkit.nn": 3,
    "rnnkit.export": 4,
    "rnnkit.data": 5,
    "rnnkit.models": 6, "rnnkit.analysis": 6,
    "rnnkit.training": 7,
    "rnnkit.tasks": 8,
    "rnnkit.pretrained": 9,
    "rnnkit.cli": 10,
    "rnnkit.__main__": 11,
}
ROOT = "rnnkit"  # the package's own __init__: the public names (rnnkit.LSTM...), rnnkit.nn's floor
APART = "rnnkit.reference"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every rnnkit module that `path` (or `source` as if it were at `path`) imports,
    relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "rnnkit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "rnnkit":
                continue
            if node.module is None:  # from .. import a, b: each is a module or a name of the package
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def part(module: str) -> str:
    """The top-level part of the package a module belongs to (the longest key of FLOORS it starts with)."""
    if module == ROOT:
        return "rnnkit.nn"
    matches = [k for k in (*FLOORS, APART) if module == k or module.startswith(k + ".")]
    return max(matches, key=len)


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_on_a_floor():
    assert MODULES and all(part(module_name(p)) for p in MODULES)


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    here = part(module_name(path))
    upward = []
    for line, target in imports(path, source):
        there = part(target)
        if there == here:
            continue
        if here == APART or there == APART:
            if here != "rnnkit.cli":  # the command line runs the NumPy demo
                upward.append(f"line {line}: {target} (rnnkit.reference stands apart)")
        elif FLOORS[there] >= FLOORS[here]:
            upward.append(f"line {line}: {target} (floor {FLOORS[there]}, above or beside {here}'s {FLOORS[here]})")
    return upward


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_point_down_only(path):
    upward = upward_imports(path)
    assert not upward, f"{module_name(path)} imports upward: " + "; ".join(upward)


@pytest.mark.parametrize("where, source, caught", [
    ("engine/loop.py", "from ..nn.layers import LSTM\n", "rnnkit.nn.layers (floor 3"),
    ("engine/loop.py", "def f():\n    from .. import nn\n", "line 2: rnnkit.nn (floor 3"),
    ("nn/layers.py", "from ..export import onnx\n", "rnnkit.export (floor 4"),
    ("kernels/cpu/fused.py", "import rnnkit.engine.cells\n", "rnnkit.engine.cells (floor 2"),
    ("export/onnx.py", "from ..tasks import load\n", "rnnkit.tasks (floor 8"),
    ("models/tagger.py", "from ..analysis import plots\n", "beside"),
    ("nn/minimal.py", "from ..reference import RNNCell\n", "stands apart"),
])
def test_the_checker_catches_an_upward_import(where, source, caught):
    found = upward_imports(PACKAGE / where, source)
    assert len(found) == 1 and caught in found[0], found
    assert not upward_imports(PACKAGE / where, "from ..errors import ShapeError\nimport torch\n")
