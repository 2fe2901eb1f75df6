"""The architecture of the library: every import of a ddpm module goes down the data flow, never up; each system
lives in its own folder under ddpm/pipelines/ and imports no other system's; and the core does not ask which kind
of run it has (it asks the run's Kind, ddpm.pipelines.base).

Parses every module under ddpm/ with ast (imports inside TYPE_CHECKING blocks are for type checkers and
do not count) and fails on an import of a module in a higher layer, or of one in the same layer that is
not explicitly allowed below. A pipeline folder spans layers: its networks sit with ddpm.nn, its stage with the
pipelines, its evaluation above ddpm.metrics, its benchmark above ddpm.bench, its command above ddpm.cli.
`python tests/test_architecture.py` prints the table.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ddpm"
FOLDER_PACKAGES = [f"ddpm.pipelines.{p.name}" for p in sorted((PKG / "pipelines").iterdir())
                   if (p / "__init__.py").exists()]

# lowest first: a module may import from any earlier layer; a name matches itself and its sub-modules, a pattern
# with * (a pipeline folder) exactly the modules it names; a later match wins
LAYERS = [
    ["ddpm._util"],
    ["ddpm._files"],
    ["ddpm.datasets"],
    ["ddpm.nn", "ddpm.schedules", "ddpm.pipelines.*.autoencoder", "ddpm.pipelines.*.clip", "ddpm.pipelines.*.prior"],
    ["ddpm.diffusion"],
    ["ddpm.likelihood"],
    ["ddpm.improved"],
    ["ddpm.samplers", "ddpm.conditions"],
    ["ddpm.editing"],
    ["ddpm.viz"],
    ["ddpm.pipelines"],
    ["ddpm.config", "ddpm.runtime", "ddpm.memory", "ddpm.optim", "ddpm.runlog"],
    ["ddpm.checkpoints"],
    ["ddpm.exports", "ddpm.resume", "ddpm.editing.runs"],
    ["ddpm.pipelines.*.stage", "ddpm.pipelines.*.figures", "ddpm.pipelines.*.presets", *FOLDER_PACKAGES],
    ["ddpm.presets"],
    ["ddpm.data"],
    ["ddpm.convert", "ddpm.training"],
    ["ddpm.metrics"],
    ["ddpm.pipelines.*.evaluate", "ddpm.editing.evaluate"],
    ["ddpm.bench"],
    ["ddpm.pipelines.*.bench"],
    ["ddpm.cli"],
    ["ddpm.pipelines.*.cli"],
    ["ddpm.__main__"],
]


def _matches(module: str, pattern: str) -> bool:
    if "*" in pattern:
        return re.fullmatch(pattern.replace(".", r"\.").replace("*", r"[^.]+"), module) is not None
    return module == pattern or module.startswith(pattern + ".")


def layer_of(module: str) -> int:
    best = None
    for i, group in enumerate(LAYERS):
        for pattern in group:
            if _matches(module, pattern):
                best = i
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py")
    return best


def _package(module: str) -> str:
    """The group a module belongs to: a pipeline folder (ddpm.pipelines.latent), else its layer's prefix."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "pipelines" and parts[2] != "base":
        return ".".join(parts[:3])
    found = module
    for group in LAYERS:
        for pattern in group:
            if "*" not in pattern and _matches(module, pattern):
                found = pattern
    return found


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


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) >= 3 and parts[1] == "pipelines" and parts[2] != "base" else None


def test_a_system_imports_no_other_system():
    crossing = [f"{m} imports {t}" for m, p in MODULES.items() for _, t, _ in ddpm_imports(p, m)
                if _folder(m) and _folder(t) and _folder(m) != _folder(t)]
    assert crossing == []


def test_the_core_imports_no_system():
    """Outside ddpm/pipelines/ only the lazy public API names a system's module; the core finds a system through
    ddpm.pipelines.base.FOLDERS (one line per folder) at run time."""
    found = [f"{m} imports {t}" for m, p in MODULES.items() if not m.startswith("ddpm.pipelines") and m != "ddpm"
             for _, t, _ in ddpm_imports(p, m) if _folder(t)]
    assert found == []


# what a test of the kind of a run looks like in code (strings and comments do not count)
# (a line's tokens are joined by spaces: "config . kind == 'latent'")
KIND_TEST = re.compile(r"\. kind (==|!=|in |not )|\b(model_kind|unclip_stage|is_diffusion|captioned)\b|"
                       r"\. (latent|super_res|unclip|first_stage)\b|isinstance \([^)]*Config \)|\. network (==|!=)")


def _code(path: Path) -> list[tuple[int, str]]:
    """(line, the line's code without strings and comments)."""
    lines: dict[int, list[str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type not in (tokenize.STRING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
            lines.setdefault(tok.start[0], []).append(tok.string)
    return [(n, " ".join(parts)) for n, parts in lines.items() if parts[0] not in ("from", "import")]


def kind_tests() -> list[str]:
    """Code lines outside ddpm/pipelines/ that test which kind of run (or which network) this is."""
    return [f"{p.relative_to(ROOT)}:{n}: {line}" for m, p in MODULES.items() if not m.startswith("ddpm.pipelines")
            for n, line in _code(p) if KIND_TEST.search(line)]


def test_the_core_asks_the_kind_instead_of_testing_it():
    found = kind_tests()
    assert len(found) <= 8, "\n".join(found)


def test_the_kind_test_finds_one():
    sample = ROOT / "tests" / "_kind_probe.py"
    sample.write_text("if config.kind == 'latent' or run.first_stage is not None:\n    pass  # .latent\n")
    try:
        assert [n for n, line in _code(sample) if KIND_TEST.search(line)] == [1]
    finally:
        sample.unlink()


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
    print("kind tests outside ddpm/pipelines/:", *kind_tests(), sep="\n  ")
