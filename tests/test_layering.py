"""Imports point one way: every module of vlm_envs and baselines sits in a layer and imports only its
own layer or lower ones, read from the source (function-level imports and imports by a constant
string included), with no cycle between modules or between the packages of vlm_envs.

A new module is placed by adding its dotted name (or a package's) to ``LAYERS``; the most specific
name wins. The roots ``vlm_envs`` and ``baselines`` name only themselves, so a new package of
vlm_envs fails ``test_every_module_has_a_layer`` until it is placed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.utils import MOVED_MODULES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("vlm_envs", "baselines")

# Lowest first. A module may import modules of its own layer or of a lower one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("vlm_envs._version", "vlm_envs._moved", "vlm_envs.optional")),
    ("text", ("vlm_envs.text",)),
    # the env framework builds the prompt of each observation, so it sits above text; it imports no env
    ("core", ("vlm_envs.core",)),
    ("envs", ("vlm_envs.cards", "vlm_envs.alfworld_wrap")),
    ("running", ("vlm_envs.running",)),
    ("evaluation", ("vlm_envs.evaluation",)),
    ("serving", ("vlm_envs.remote",)),
    # the package's face: `import vlm_envs`, the command line, the tools (human play, the gallery),
    # and the old module paths kept for one version
    ("tools", ("vlm_envs", "vlm_envs.__main__", "vlm_envs.tools", *MOVED_MODULES)),
    ("trainer", ("baselines", "baselines.cli", "baselines.cnn_ppo", "baselines.vlm_ppo")),
]
LEVEL = {prefix: level for level, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes}
# Names that are only a package's own module, never a prefix: what they hold must be placed one by one.
ROOTS = set(SOURCES)
# Calls that import the module named by a constant string argument: the function, and that argument's position.
STRING_IMPORTS = {"import_module": 0, "__import__": 0, "require": 0, "moved_module": 1}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules(root: Path, sources) -> dict[str, Path]:
    return {module_name(root, path): path for source in sources for path in sorted((root / source).rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """The level of the most specific prefix in LAYERS naming ``module`` (None: unplaced)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LEVEL and (prefix not in ROOTS or prefix == module):
            return LEVEL[prefix]
    return None


def string_import(node: ast.Call) -> str | None:
    """The module a call such as ``importlib.import_module("m")`` or ``require("m", ...)`` imports, if a constant."""
    function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    position = STRING_IMPORTS.get(function)
    if position is None or len(node.args) <= position:
        return None
    argument = node.args[position]
    return argument.value if isinstance(argument, ast.Constant) and isinstance(argument.value, str) else None


def forwarded_names(node: ast.Call) -> set[str]:
    """The modules that ``moved_names(old, {name: new module})`` forwards moved names to (every string in its table)."""
    if getattr(node.func, "id", None) != "moved_names" or len(node.args) < 2:
        return set()
    return {n.value for n in ast.walk(node.args[1]) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def imported_names(module: str, path: Path, modules: dict[str, Path], forwards: bool = True) -> set[str]:
    """The names every import statement of the file imports, at any depth (``from p import m``: ``p.m`` when a module),
    the modules that calls of :data:`STRING_IMPORTS` name by a constant string, and (with ``forwards``) the new homes
    of names moved out of the module (:func:`forwarded_names`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and string_import(node):
            names.add(string_import(node))
        elif isinstance(node, ast.Call) and forwards:
            names.update(forwarded_names(node))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:  # relative: from the module's own package, then up level - 1 packages
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return names


def internal_imports(modules: dict[str, Path], forwards: bool = True) -> dict[str, set[str]]:
    """``{module: the modules of the tree it imports}``; a name that is not a module counts as its closest module."""
    edges = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path, modules, forwards):
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != module:
                targets.add(".".join(parts))
        edges[module] = targets
    return edges


MODULES = source_modules(ROOT, SOURCES)
EDGES = internal_imports(MODULES)
# A forward of a moved name points back from the old home to the new one for one version; it runs on first use of
# the name, after both modules are imported, so it counts for the direction of imports but makes no cycle.
EDGES_WITHOUT_FORWARDS = internal_imports(MODULES, forwards=False)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    """The package of vlm_envs a module belongs to: ``vlm_envs.<first name>`` (a top-level module is its own)."""
    return ".".join(module.split(".")[:2])


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_imports_point_down_the_layers():
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
              for module, targets in sorted(EDGES.items()) for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert upward == []


def test_vlm_envs_never_imports_baselines():
    # any import naming baselines, whether or not the module exists (a stale or misspelt one too)
    offending = [module for module, path in MODULES.items() if module.split(".")[0] == "vlm_envs"
                 and any(name.split(".")[0] == "baselines" for name in imported_names(module, path, MODULES))]
    assert offending == []


def test_no_import_cycle_between_modules():
    assert cycles({m: t for m, t in EDGES_WITHOUT_FORWARDS.items() if m.startswith("vlm_envs")}) == []


def test_no_import_cycle_between_packages():
    graph = defaultdict(set)
    for module, targets in EDGES_WITHOUT_FORWARDS.items():
        if module.startswith("vlm_envs.") and module != "vlm_envs":
            graph[package_of(module)].update(package_of(t) for t in targets
                                             if t.startswith("vlm_envs.") and package_of(t) != package_of(module))
    assert cycles(graph) == []


@pytest.mark.parametrize("files, expected", [
    ({"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n", "pkg/b.py": "def f():\n    from pkg import a\n"},
     [["pkg.a", "pkg.b"]]),  # an import inside a function counts
    ({"pkg/__init__.py": "", "pkg/a.py": "from . import b\n", "pkg/b.py": "from .a import x\n"},
     [["pkg.a", "pkg.b"]]),  # relative imports resolve
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n", "pkg/b.py": "X = 1\n"}, []),
])
def test_the_checks_see_function_level_and_relative_imports(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cycles(internal_imports(source_modules(tmp_path, ["pkg"]))) == expected


def test_every_package_is_in_the_readme_layout_and_the_architecture_page():
    packages = sorted(f"{path.parent.relative_to(ROOT).as_posix()}/" for source in SOURCES
                      for path in (ROOT / source).glob("*/__init__.py"))
    for page in ("README.md", "docs/architecture.md"):
        text = (ROOT / page).read_text()
        assert [package for package in packages if f"`{package}`" not in text] == [], page


@pytest.mark.parametrize("text", [
    'import importlib\ndef f():\n    importlib.import_module("pkg.a")\n',
    'def f():\n    __import__("pkg.a")\n',
    'from vlm_envs.optional import require\nrequire("pkg.a", "extra", "what")\n',
    'from vlm_envs._moved import moved_module\nmoved_module(__name__, "pkg.a")\n',
])
def test_the_checks_see_imports_by_a_constant_string(tmp_path, text):
    (tmp_path / "pkg").mkdir()
    for name, source in {"__init__.py": "", "a.py": "from pkg import b\n", "b.py": text}.items():
        (tmp_path / "pkg" / name).write_text(source)
    assert cycles(internal_imports(source_modules(tmp_path, ["pkg"]))) == [["pkg.a", "pkg.b"]]


def test_a_forward_of_a_moved_name_is_an_import_but_no_cycle(tmp_path):
    (tmp_path / "pkg").mkdir()
    files = {"__init__.py": "", "a.py": "from pkg import b\n",
             "b.py": "__getattr__ = moved_names(__name__, {'f': 'pkg.a', **dict.fromkeys(('g',), 'baselines.x')})\n"}
    for name, source in files.items():
        (tmp_path / "pkg" / name).write_text(source)
    modules = source_modules(tmp_path, ["pkg"])
    assert internal_imports(modules)["pkg.b"] == {"pkg.a"} and cycles(internal_imports(modules, forwards=False)) == []
    assert "baselines.x" in imported_names("pkg.b", modules["pkg.b"], modules)


def test_a_new_package_must_be_placed():
    assert (layer_of("vlm_envs"), layer_of("baselines.vlm_ppo.config")) == (LEVEL["vlm_envs"], LEVEL["baselines"])
    assert layer_of("vlm_envs.new_package.module") is None


def literal_copies(path: Path) -> list[str]:
    """Module-level tuples of string literals whose values are those of a ``Literal`` declared in the same module
    (a second home for the choice set: ``get_args`` of the ``Literal`` is the one)."""
    tree = ast.parse(path.read_text(), str(path))
    literals, tuples = {}, {}
    for node in tree.body:
        target, value = ((node.targets[0], node.value) if isinstance(node, ast.Assign) and len(node.targets) == 1
                         else (node.target, node.value) if isinstance(node, ast.AnnAssign) else (None, None))
        if not isinstance(target, ast.Name) or value is None:
            continue
        if isinstance(value, ast.Subscript) and getattr(value.value, "id", getattr(value.value, "attr", None)) == "Literal":
            items = value.slice.elts if isinstance(value.slice, ast.Tuple) else [value.slice]
            literals[target.id] = tuple(item.value for item in items if isinstance(item, ast.Constant))
        elif isinstance(value, (ast.Tuple, ast.List)) and value.elts and all(
                isinstance(item, ast.Constant) and isinstance(item.value, str) for item in value.elts):
            tuples[target.id] = tuple(item.value for item in value.elts)
    return [f"{name} restates {literal}" for name, values in tuples.items() for literal, choices in literals.items() if sorted(values) == sorted(choices)]


def test_no_choice_set_restates_its_literal():
    assert [f"{module}: {copy}" for module, path in MODULES.items() for copy in literal_copies(path)] == []


def test_the_choice_set_check_sees_a_copy(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('from typing import Literal, get_args\nMode = Literal["a", "b"]\nMODES = ("b", "a")\nOK = get_args(Mode)\n')
    assert literal_copies(path) == ["MODES restates Mode"]


def test_importing_vlm_envs_imports_no_trainer_and_no_heavy_library():
    code = ("import sys, vlm_envs, vlm_envs.evaluation, vlm_envs.running, vlm_envs.tools, vlm_envs.__main__; "
            "print(sorted(m for m in ('baselines', 'torch', 'ray', 'openenv') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    # the server needs the serve extra (openenv); it still imports no trainer
    code = "import sys\ntry:\n    import vlm_envs.remote\nexcept ImportError:\n    pass\nprint('baselines' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
