"""No module of keras_preact imports a higher layer (docs/architecture.md, "Import order").

Every ``.py`` file under ``keras_preact/`` is parsed with ``ast``; every ``import`` and
``from ... import`` anywhere in it (module level, inside functions, under ``if``/``try``)
that names a ``keras_preact`` module is checked against the layer order below. A module may
import its own layer and the layers below it, never one above.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(ROOT, "keras_preact")

# docs/architecture.md's import order, low to high; names on one line share a rank.
LAYER_ORDER = """
common hardware
convolution
padding
norm
plan
shortcuts
units
stacked
config
model
hub keras_hub_presets
presets
weights
registry
tta
data
training
recipes
fit_loop
export diagnostics
cli
"""
RANK = {name: rank for rank, line in enumerate(LAYER_ORDER.strip().splitlines()) for name in line.split()}


def layer_of(module: str):
    """The layer of a dotted ``keras_preact.<layer>[.<...>]`` name; None for the package root."""
    parts = module.split(".")
    if parts[0] != "keras_preact":
        return None
    return parts[1] if len(parts) > 1 else None


def module_name(path: str) -> str:
    relative = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    if relative[-1] == "__init__":
        relative = relative[:-1]
    return ".".join(relative)


def imported_modules(tree: ast.AST, module: str, is_package: bool):
    """``(line, dotted name)`` of every import in ``tree``, relative imports resolved."""
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield node.lineno, target
            # ``from keras_preact import export`` imports the subpackage export.
            if target == "keras_preact":
                for alias in node.names:
                    yield node.lineno, f"keras_preact.{alias.name}"


def package_files():
    for directory, _, names in os.walk(PACKAGE_DIR):
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def upward_imports(source: str, path: str) -> list:
    """``"file:line: <layer> imports <module> (<higher layer>)"`` for each upward import."""
    module = module_name(path)
    own = layer_of(module)
    if own is None:  # keras_preact/__init__.py: the package's front, above every layer
        return []
    found = []
    tree = ast.parse(source, filename=path)
    for line, target in imported_modules(tree, module, path.endswith("__init__.py")):
        other = layer_of(target)
        if other is None or other == own:
            continue
        if RANK[other] > RANK[own]:
            found.append(f"{os.path.relpath(path, ROOT)}:{line}: {own} imports {target} ({other} is above {own})")
    return found


def test_every_package_module_belongs_to_a_layer():
    """A new top-level module or subpackage must be placed in LAYER_ORDER (and the doc) first."""
    layers = {layer_of(module_name(path)) for path in package_files()} - {None}
    assert layers <= set(RANK), f"not in the layer order: {sorted(layers - set(RANK))}"


def test_no_module_imports_a_higher_layer():
    found = []
    for path in package_files():
        with open(path, encoding="utf-8") as handle:
            found += upward_imports(handle.read(), path)
    assert not found, "upward imports:\n" + "\n".join(found)


def test_the_layer_order_is_the_documented_one():
    with open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8") as handle:
        text = handle.read()
    block = text.split("Import order, low to high:", 1)[1].split("```")[1]
    documented = [[name.strip() for name in group.split(",")] for group in " ".join(block.split()).split("<")]
    assert documented == [line.split() for line in LAYER_ORDER.strip().splitlines()]


@pytest.mark.parametrize(
    "source, path, upward",
    [
        ("from keras_preact.export.tta import tta_logits\n", "keras_preact/training/loop.py", True),
        ("def f():\n    from keras_preact.export import tta\n", "keras_preact/training/recipes.py", True),
        ("import keras_preact.cli.train\n", "keras_preact/data/pipeline.py", True),
        ("from keras_preact import export\n", "keras_preact/model.py", True),
        ("from ..export import parity\n", "keras_preact/training/loop.py", True),
        ("from keras_preact.tta import tta_logits\n", "keras_preact/training/loop.py", False),
        ("from keras_preact.data import guard\n", "keras_preact/export/classify.py", False),
        ("from . import parity\n", "keras_preact/export/classify.py", False),
        ("from keras_preact import export\n", "keras_preact/__init__.py", False),
    ],
)
def test_the_check_sees_upward_imports_at_module_level_and_inside_functions(source, path, upward):
    assert bool(upward_imports(source, os.path.join(ROOT, path))) is upward
