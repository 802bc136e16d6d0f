"""The package's layers: each imports only the layers above it (no cycles, no upward imports),
and no import hides inside a function to dodge a cycle."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"

#: the layers, top (imported by all) to bottom (imports all); within a layer, a package imports
#: only itself
LAYERS = [
    {"registry", "validation", "files", "signals", "distributed"},
    {"fields"},
    {"models", "infer", "data"},
    {"config"},
    {"eval"},
    {"train"},
    {"runs"},
    {"apps"},
]


def _unit(path: Path) -> str:
    """``models`` for pyro_vae/models/vae.py, ``config`` for pyro_vae/config.py."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _layer(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def _imports(tree: ast.Module, module_level: bool):
    """``(line, imported pyro_vae unit)``: at module level (not under ``TYPE_CHECKING``), or
    inside functions."""
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    inside = {id(n) for f in functions for n in ast.walk(f)}
    checking = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in checking:
            continue
        if (id(node) in inside) == module_level:
            continue
        names = (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
        for name in names:
            parts = name.split(".")
            if parts[0] == "pyro_vae" and len(parts) > 1:
                yield node.lineno, parts[1]


MODULES = sorted(
    p
    for p in PACKAGE.rglob("*.py")
    if p.parent != PACKAGE or p.stem not in ("__init__", "__main__")
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_above_it(path):
    unit = _unit(path)
    tree = ast.parse(path.read_text())
    for line, imported in _imports(tree, module_level=True):
        if imported == unit:
            continue
        assert _layer(imported) < _layer(unit), (
            f"{path.relative_to(PACKAGE)}:{line} ({unit}, layer {_layer(unit)}) imports "
            f"{imported} (layer {_layer(imported)})"
        )


#: the one deliberate function-level import: the entry point imports the command line inside
#: main(), after installing the stop-signal handlers, so that a Ctrl-C or SIGTERM during the
#: seconds of imports is caught (tests/test_reliability.py tests it)
DEFERRED = {("apps/launch.py", "apps")}


def test_no_function_imports_pyro_vae():
    found = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in MODULES
        for line, unit in _imports(ast.parse(path.read_text()), module_level=False)
        if (str(path.relative_to(PACKAGE)), unit) not in DEFERRED
    ]
    assert not found, found


def test_every_unit_is_in_a_layer():
    units = {_unit(p) for p in MODULES}
    assert units == set().union(*LAYERS)
