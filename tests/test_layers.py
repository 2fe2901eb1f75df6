"""The layers of the library: every import of a ddpm module goes down the data flow, never up.

Parses every module under ddpm/ with ast (imports inside TYPE_CHECKING blocks are for type checkers and
do not count) and fails on an import of a module in a higher layer, or of one in the same layer that is
not explicitly allowed below. `python tests/test_layers.py` prints the table.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ddpm"

# lowest first: a module may import from any earlier layer
LAYERS = [
    ["ddpm._util"],
    ["ddpm.datasets"],
    ["ddpm.nn", "ddpm.schedules"],
    ["ddpm.diffusion"],
    ["ddpm.likelihood"],
    ["ddpm.samplers", "ddpm.conditions"],
    ["ddpm.viz"],
    ["ddpm.config", "ddpm.runtime", "ddpm.optim", "ddpm.runlog"],
    ["ddpm.presets"],
    ["ddpm.checkpoints"],
    ["ddpm.pipelines"],
    ["ddpm.convert", "ddpm.training"],
    ["ddpm.metrics"],
    ["ddpm.bench"],
    ["ddpm.cli"],
    ["ddpm.__main__"],
]


def layer_of(module: str) -> int:
    best = None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if module == prefix or module.startswith(prefix + "."):
                best = i
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best


def _package(module: str) -> str:
    for group in LAYERS:
        for prefix in group:
            if module == prefix or module.startswith(prefix + "."):
                return prefix
    return module


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def ddpm_imports(path: Path, module: str) -> list[tuple[int, str, bool]]:
    """(line, imported ddpm module, inside a function) for each runtime import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, in_function) for a in node.names if a.name.startswith("ddpm"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("ddpm"):
            for a in node.names:  # "from ddpm.cli import train" imports the module ddpm.cli.train
                sub = f"{node.module}.{a.name}"
                found.append((node.lineno, sub if sub in MODULES or node.module == "ddpm" else node.module,
                              in_function))
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = modules()


def violations() -> list[str]:
    bad = []
    for module, path in MODULES.items():
        if module == "ddpm":
            continue  # the lazy public API (PEP 562) imports on demand only
        mine = layer_of(module)
        for line, target, _ in ddpm_imports(path, module):
            if target == "ddpm":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the top-level ddpm package")
                continue
            theirs = layer_of(target)
            same_package = _package(target) == _package(module)
            if theirs > mine or (theirs == mine and not same_package):
                where = f"{path.relative_to(ROOT)}:{line} ({module}, layer {mine})"
                bad.append(f"{where} imports {target} (layer {theirs})")
    return bad


def test_no_import_runs_up_the_layers():
    assert violations() == []


def test_every_module_is_in_a_layer():
    for module in MODULES:
        if module != "ddpm":
            layer_of(module)


def test_imports_inside_functions_are_few():
    inner = [(m, line, t) for m, p in MODULES.items() for line, t, f in ddpm_imports(p, m) if f]
    assert inner == [], inner


def test_importing_the_schedules_loads_no_trainer():
    code = ("import sys, ddpm.schedules; heavy = [m for m in ('ddpm.training', 'ddpm.checkpoints', 'ddpm.cli', "
            "'ddpm.viz', 'ddpm.datasets', 'matplotlib') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    code = "import ddpm; print(ddpm.Trainer.__module__, ddpm.make_betas.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["ddpm.training", "ddpm.schedules"]


if __name__ == "__main__":  # pragma: no cover
    for i, group in enumerate(LAYERS):
        print(i, ", ".join(group))
    print("\n".join(violations()) or "no import runs up the layers")
