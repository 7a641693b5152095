"""The layering contract of docs/design.md ("Layers depend downwards only"), read from the source.

Every module under ``src/lmsleep`` is parsed with :mod:`ast` (nothing is imported) and every import of an
``lmsleep`` module is checked: module-level ones, ones inside functions and methods, ones under
``if TYPE_CHECKING:``, relative ones (``from .x import y``) and ``importlib.import_module("lmsleep...")`` /
``__import__`` with a literal name.

The rule: the layers, lowest first, are

    root < ops < utils < layers < models < data < lit < reporting < callbacks < entry

and a module may import modules of its own layer and of the layers below it, never one above. Within a layer
imports go either way (``lmsleep.models.hybrid`` and ``lmsleep.models.sleep`` import each other, one of the
two under TYPE_CHECKING; ``lmsleep.cli`` imports ``lmsleep.train``). Where each module sits:

- ``root``: ``lmsleep/__init__.py``, which runs before any other module, so it imports nothing of lmsleep.
- ``ops`` -> ``layers`` -> ``models`` as design.md writes them.
- ``utils`` (Hydra config composition, ``ConfigError``, checkpoint discovery): just above ``ops``. Today it
  imports nothing of lmsleep outside itself and only entry points use it; any layer above ``ops`` may (ops
  are pure functions on tensors and stay free of it).
- design.md's "lit and data" tier is ordered ``data`` < ``lit``, as the code has it: ``lit`` computes its
  metrics on data's batch layout (``IGNORE_INDEX``), and ``data`` never uses ``lit``.
- ``reporting``: a study's tables and figures (``lmsleep.reporting``: report, study_figures, plots), built
  over ``data`` (task configs), drawn with by the validation-pictures callback, so below ``callbacks``.
- ``entry``: the commands and what only they use: ``cli``, ``__main__``, ``train``, ``evaluate``, ``run``,
  ``generate``, ``export``, ``export_hf``, ``restore``.

A module is placed by the longest prefix of its dotted name in :data:`LAYER_OF` (``lmsleep.models.hf`` is
``models``, ``lmsleep.reporting.report`` is ``reporting``). A module that no entry covers (a new top-level package
or module) fails the test with a message asking to place it there.

TYPE_CHECKING-only imports obey the same rule: they do not run, but an annotation naming a higher layer's type
is still a dependency on that layer. They are left out only of the next check, which is about what runs.

Importing ``lmsleep.a.b.c`` also runs the ``__init__`` of each package on the way (``lmsleep.a.b``), so what
those import at import time counts as imported by the importer too: ``from lmsleep.reporting.plots import x``
in a callback must not load ``lmsleep.reporting.report`` through ``lmsleep/reporting/__init__.py``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO

SRC = REPO / "src"

LAYERS = ("root", "ops", "utils", "layers", "models", "data", "lit", "reporting", "callbacks", "entry")

# Dotted-name prefix -> layer; the longest prefix that matches a module places it.
LAYER_OF = {
    "lmsleep": "root",  # the package's own __init__ only: every other module is placed below
    "lmsleep.ops": "ops",
    "lmsleep.utils": "utils",
    "lmsleep.layers": "layers",
    "lmsleep.models": "models",
    "lmsleep.data": "data",
    "lmsleep.lit": "lit",
    "lmsleep.reporting": "reporting",  # a study's tables and figures; callbacks draw with its plots
    "lmsleep.callbacks": "callbacks",
    "lmsleep.__main__": "entry",
    "lmsleep.cli": "entry",
    "lmsleep.train": "entry",
    "lmsleep.evaluate": "entry",
    "lmsleep.generate": "entry",
    "lmsleep.export": "entry",
    "lmsleep.export_hf": "entry",
    "lmsleep.restore": "entry",
    "lmsleep.run": "entry",
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name, or None where no entry but the root's covers it."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYER_OF:
            return LAYER_OF[".".join(parts[:n])]
    return LAYER_OF.get(module)  # "lmsleep" itself


@dataclass(frozen=True)
class Import:
    target: str  # dotted module name
    line: int
    text: str  # the import as written
    type_checking: bool
    runs_at_import: bool  # module level and not under TYPE_CHECKING


def modules_under(src: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the ``lmsleep`` package under ``src``."""
    found = {}
    for path in sorted((src / "lmsleep").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of an lmsleep module in one file, resolved to dotted names."""
    source_text = path.read_text()
    tree = ast.parse(source_text, filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.AST, type_checking: bool, top: bool) -> None:
        if target == "lmsleep" or target.startswith("lmsleep."):
            text = ast.get_source_segment(source_text, node) or ast.unparse(node)
            found.append(Import(target, node.lineno, text, type_checking, top and not type_checking))

    def visit(node: ast.AST, type_checking: bool, top: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, type_checking, top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            add(source, node, type_checking, top)
            for alias in node.names:  # `from lmsleep.models import hybrid` imports a module too
                if f"{source}.{alias.name}" in known:
                    add(f"{source}.{alias.name}", node, type_checking, top)
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node, type_checking, False)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True, top)
            for child in node.orelse:
                visit(child, type_checking, top)
            return
        inner = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking, inner)

    visit(tree, False, True)
    return found


def violations(src: Path) -> list[str]:
    """One line per broken rule: the module (file:line), the import as written and the rule it breaks."""
    modules = modules_under(src)
    known = set(modules)
    imports = {name: imports_of(name, path, known) for name, path in modules.items()}
    problems = []
    for name, path in modules.items():
        if layer_of(name) is None:
            problems.append(
                f"{path.relative_to(src.parent)}: {name} is in no layer: place it in LAYER_OF of "
                "tests/test_layering.py (and in docs/design.md's Contracts if it is a new layer)"
            )
    for name, path in modules.items():
        if layer_of(name) is None:
            continue
        where = f"{path.relative_to(src.parent)}:"
        for imp in imports[name]:
            problems += _broken(where, name, imp, imp.target)
            # the __init__ of every package on the way to the target runs too (those enclosing this module
            # already ran before it): what they import at import time is imported here as well. A
            # TYPE_CHECKING-only import runs nothing.
            seen: set[str] = set()
            todo = [p for p in _packages_on_the_way(imp.target, name) if p in known and not imp.type_checking]
            while todo:
                package = todo.pop()
                if package in seen:
                    continue
                seen.add(package)
                for loaded in imports[package]:
                    if loaded.runs_at_import and not _encloses(loaded.target, name):
                        via = f" runs {package}'s __init__, which"
                        problems += _broken(where, name, imp, loaded.target, via)
                        todo += [p for p in _packages_on_the_way(loaded.target, name) if p in known]
    return problems


def _broken(where: str, module: str, imp: Import, target: str, via: str = "") -> list[str]:
    """The message for ``module`` reaching ``target`` through ``imp``, when ``target`` is in a higher layer."""
    layer, target_layer = layer_of(module), layer_of(target) or "root"
    if LAYERS.index(target_layer) <= LAYERS.index(layer):
        return []
    kind = " (under TYPE_CHECKING)" if imp.type_checking else ""
    below = ", ".join(LAYERS[: LAYERS.index(layer) + 1])
    return [
        f"{where}{imp.line}: {module} ({layer}) `{imp.text}`{kind}{via} imports {target} ({target_layer}): "
        f"the {layer} layer may import only from {below}"
    ]


def _encloses(package: str, module: str) -> bool:
    return module == package or module.startswith(package + ".")


def _packages_on_the_way(target: str, importer: str) -> list[str]:
    """The packages whose ``__init__`` importing ``target`` runs, less those enclosing ``importer``."""
    parts = target.split(".")
    return [p for p in (".".join(parts[:n]) for n in range(1, len(parts))) if not _encloses(p, importer)]


def test_no_module_imports_from_a_higher_layer():
    problems = violations(SRC)
    assert not problems, "layering contract of docs/design.md broken:\n" + "\n".join(problems)


def test_every_top_level_package_and_module_has_a_layer():
    tops = {name.split(".")[1] for name in modules_under(SRC) if name != "lmsleep"}
    assert tops, "no modules found under src/lmsleep"
    unplaced = sorted(t for t in tops if layer_of(f"lmsleep.{t}") in (None, "root"))
    assert not unplaced, f"place these in LAYER_OF of tests/test_layering.py: {unplaced}"


@pytest.mark.parametrize(
    "module, layer",
    [
        ("lmsleep.models.hf", "models"),
        ("lmsleep.models.hf.llama", "models"),
        ("lmsleep.reporting", "reporting"),
        ("lmsleep.reporting.report", "reporting"),
        ("lmsleep.reporting.plots", "reporting"),
        ("lmsleep.run", "entry"),
        ("lmsleep.utils.config", "utils"),
        ("lmsleep", "root"),
        ("lmsleep.somethingnew", None),
    ],
)
def test_layer_of_new_and_moved_modules(module, layer):
    assert layer_of(module) == layer


# --- the checker on made-up packages ---------------------------------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"lmsleep/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            if parent.parts and not (root / parent / "__init__.py").exists():
                (root / parent / "__init__.py").write_text("")
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    "files, expected",
    [
        # downwards, within a layer (both ways, one under TYPE_CHECKING), relative: fine
        (
            {
                "lmsleep/models/hybrid.py": "from lmsleep.models.sleep import run\nfrom ..layers import x\n",
                "lmsleep/models/sleep.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from lmsleep.models.hybrid import HybridLM\n",
                "lmsleep/layers/x.py": "import lmsleep.ops\nimport lmsleep.utils.config\n",
                "lmsleep/cli.py": "from lmsleep import train\nimport lmsleep.reporting.report\n",
                "lmsleep/train.py": "",
                "lmsleep/reporting/report.py": "from lmsleep.reporting.plots import draw\n",
                "lmsleep/reporting/plots.py": "from lmsleep.data.rule110 import step\n",
                "lmsleep/data/rule110.py": "",
                "lmsleep/callbacks/pictures.py": "def f():\n    from lmsleep.reporting.plots import draw\n",
            },
            [],
        ),
        ({"lmsleep/ops/ssd.py": "from lmsleep.layers.block import Block\n"}, ["lmsleep.ops.ssd (ops)"]),
        (
            {"lmsleep/ops/ssd.py": "from lmsleep.utils import config\n"},
            ["imports lmsleep.utils (utils)"],
        ),
        (
            {"lmsleep/models/state.py": "def f():\n    import lmsleep.lit.module\n"},
            ["lmsleep.lit.module (lit)"],
        ),
        (
            {
                "lmsleep/models/state.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..lit import LitLM\n"
            },
            ["(under TYPE_CHECKING)", "imports lmsleep.lit (lit)"],
        ),
        (
            {"lmsleep/data/task.py": "import importlib\nimportlib.import_module('lmsleep.train')\n"},
            ["(entry)"],
        ),
        ({"lmsleep/__init__.py": "from lmsleep.models import HybridLM\n"}, ["lmsleep (root)"]),
        (
            {"lmsleep/newthing/a.py": ""},
            ["lmsleep.newthing is in no layer", "lmsleep.newthing.a is in no layer"],
        ),
        (
            {
                "lmsleep/reporting/__init__.py": "from lmsleep.cli import main\n",
                "lmsleep/reporting/plots.py": "",
                "lmsleep/cli.py": "",
                "lmsleep/callbacks/pictures.py": "from lmsleep.reporting.plots import draw\n",
            },
            [
                "lmsleep.callbacks.pictures (callbacks)",
                "runs lmsleep.reporting's __init__, which imports",
                "lmsleep.cli (entry)",
            ],
        ),
    ],
    ids=[
        "fine",
        "upward",
        "ops-to-utils",
        "in-function",
        "type-checking",
        "import_module",
        "root",
        "unplaced",
        "init",
    ],
)
def test_the_checker_finds_what_it_should(tmp_path, files, expected):
    problems = violations(_tree(tmp_path / "src", files))
    if not expected:
        assert problems == []
    else:
        assert problems and all(any(e in p for p in problems) for e in expected), problems
