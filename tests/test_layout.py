"""The package layout: stage subpackages, public names at the top, the flat layout's paths still working
(with a warning), and no import cycles between stages.

The import checks read every module's source (``ast``): every ``import`` of a relp_lens module at any depth —
module level, inside functions, classes, ``try`` blocks — but not under ``if TYPE_CHECKING:`` (annotations only).
Two rules, for every module but the entry points (:data:`ENTRY_POINTS`): no module imports a module of a later stage
(core < circuits < analysis < views), and the graph of those imports has no cycle. A module reached only through
``importlib.import_module`` (a deprecation shim, e.g. ``relp_lens.circuits.circuit.select_top_k``) is not an import
edge here, by design: the shim loads the other module only when the old name is used."""

import ast
import importlib
import importlib.util
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import relp_lens

PACKAGE = Path(relp_lens.__file__).parent
STAGES = ["core", "circuits", "analysis", "views"]  # data flows left to right


def test_every_public_name_comes_from_its_stage():
    for name in relp_lens.__all__:
        module, attr = relp_lens._EXPORTS[name]
        assert module.split(".")[0] in STAGES or module == "pipeline", (name, module)  # trace(): above the stages
        source = importlib.import_module(f"relp_lens.{module}")
        assert getattr(relp_lens, name) is (source if attr is None else getattr(source, attr))
    assert not [p.name for p in PACKAGE.glob("*.py") if p.stem in relp_lens.MOVED]  # no flat copies left


FLAT_IMPORTS = r"""
import importlib, importlib.util, json, sys, warnings
import relp_lens
got = {}
for old, new in relp_lens.MOVED.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"relp_lens.{old}")
    new_module = importlib.import_module(f"relp_lens.{new}")
    got[old] = [module is new_module and new_module.__spec__.name == f"relp_lens.{new}"
                and importlib.util.find_spec(f"relp_lens.{new}").origin.endswith(".py"),
                [str(w.message) for w in caught if w.category is DeprecationWarning]]
importlib.reload(importlib.import_module("relp_lens.core.attribution"))  # the alias left the real spec alone
print(json.dumps(got))
"""


def test_flat_paths_import_the_moved_module_with_a_warning():
    """``import relp_lens.attribution`` etc. in a fresh interpreter: the very module at its new place, with a
    DeprecationWarning naming it."""
    out = subprocess.run([sys.executable, "-c", FLAT_IMPORTS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got.keys() == relp_lens.MOVED.keys()
    for old, (same, warned) in got.items():
        assert same, old
        assert any(f"relp_lens.{old} moved to relp_lens.{relp_lens.MOVED[old]}" in w for w in warned), (old, warned)


def test_attribute_access_reaches_stages_and_modules():
    assert relp_lens.core.attribution.attribute is relp_lens.attribute
    assert relp_lens.views.plots is relp_lens.plot
    assert "attribution" in dir(relp_lens.core)
    with pytest.raises(AttributeError):
        relp_lens.core.nonexistent  # noqa: B018
    with pytest.warns(DeprecationWarning, match="relp_lens.steering moved to relp_lens.analysis.steering"):
        assert relp_lens.__getattr__("steering") is relp_lens.analysis.steering


def _module_level_imports(tree: ast.Module) -> set[str]:
    """relp_lens modules (and names) a module imports at module level, in every form: ``import relp_lens.x.y``,
    ``from relp_lens.x import y``, ``from relp_lens import x``."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("relp_lens"):
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("relp_lens"))
    return found


def test_stages_import_only_earlier_stages_at_module_level():
    """core never imports circuits/analysis/views at module level, circuits never analysis/views, …; a later
    stage may be imported lazily inside a function (e.g. a circuit's report)."""
    checked = 0
    for info in pkgutil.walk_packages(relp_lens.__path__, "relp_lens."):
        parts = info.name.split(".")
        if len(parts) < 3 or parts[1] not in STAGES:
            continue
        stage = STAGES.index(parts[1])
        tree = ast.parse(Path(importlib.util.find_spec(info.name).origin).read_text())
        for name in _module_level_imports(tree):
            target = name.split(".")[1]
            if target in STAGES:
                assert STAGES.index(target) <= stage, f"{info.name} imports {name} at module level"
            checked += 1
    assert checked > 50


def test_the_layering_check_can_fail():
    tree = ast.parse("import relp_lens.views.plots\nfrom relp_lens import analysis\nfrom relp_lens.core import data")
    assert _module_level_imports(tree) == {"relp_lens.views.plots", "relp_lens.analysis", "relp_lens.core.data"}


# -- imports at any depth: no later stage, no cycle ----------------------------------------------------------------
ENTRY_POINTS = {"relp_lens", "relp_lens.cli", "relp_lens.demo", "relp_lens._lazy", "relp_lens._moved",
                "relp_lens.pipeline"}  # may import anything (the command line, the demo, lazy loading)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_at_any_depth(tree: ast.Module, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every relp_lens name a module imports, at any depth, as ``(dotted name, line)``: ``import relp_lens.x.y``
    gives ``relp_lens.x.y``, ``from relp_lens.x import y`` gives ``relp_lens.x.y`` (a module or a name in one);
    relative imports are resolved against ``module``. Imports under ``if TYPE_CHECKING:`` are left out (their
    ``else:`` branch is not)."""
    found: list[tuple[str, int]] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.extend((f"{base}.{a.name}", node.lineno) for a in node.names)
        visit(node)

    visit(tree)
    return [(name, line) for name, line in found if name == "relp_lens" or name.startswith("relp_lens.")]


def resolve_import(name: str, modules: set[str]) -> str:
    """The module an imported dotted name reaches: the name itself when it is a module, a name re-exported by
    the package (``from relp_lens import attribute``: its module) or a moved module's new place, else the
    longest module prefix (``relp_lens.core.data.Prompts`` → ``relp_lens.core.data``)."""
    if name in modules:
        return name
    rest = name[len("relp_lens."):] if name.startswith("relp_lens.") else ""
    if rest in relp_lens.MOVED:
        return f"relp_lens.{relp_lens.MOVED[rest]}"
    if rest in relp_lens._EXPORTS:
        return f"relp_lens.{relp_lens._EXPORTS[rest][0]}"
    parts = name.split(".")
    while len(parts) > 1 and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` from ``{module: (source text, is_package)}``, entry points left out
    as importers (they may import anything); a module's imports of itself are dropped."""
    modules = set(sources)
    graph: dict[str, dict[str, int]] = {}
    for module, (text, is_package) in sources.items():
        if module in ENTRY_POINTS:
            continue
        edges: dict[str, int] = {}
        for name, line in imports_at_any_depth(ast.parse(text), module, is_package):
            target = resolve_import(name, modules)
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def stage_of(module: str) -> int | None:
    """The stage index of a module (``relp_lens.circuits.edges`` → 1), None outside the stages."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def later_stage_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """``"importer:line imports target"`` for every import of a module of a later stage."""
    bad = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            here, there = stage_of(module), stage_of(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{module}:{line} imports {target} (stage {STAGES[there]} after {STAGES[here]})")
    return bad


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the import graph as ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, {})):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state:
                found = dfs(w)
                if found:
                    return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = dfs(v)
            if found:
                return found
    return None


def package_sources() -> dict[str, tuple[str, bool]]:
    """Every module of the installed package: ``{name: (source text, is_package)}``."""
    out = {"relp_lens": ((PACKAGE / "__init__.py").read_text(encoding="utf-8"), True)}
    for info in pkgutil.walk_packages(relp_lens.__path__, "relp_lens."):
        out[info.name] = (Path(importlib.util.find_spec(info.name).origin).read_text(encoding="utf-8"), info.ispkg)
    return out


def test_no_module_imports_a_later_stage_at_any_depth():
    """Function-local imports count too: core imports nothing of circuits, circuits nothing of analysis, ..."""
    graph = import_graph(package_sources())
    assert sum(len(e) for e in graph.values()) > 100
    assert later_stage_imports(graph) == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph(package_sources())
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_data_model_imports_nothing_else_of_the_circuits_stage():
    """relp_lens.circuits.circuit holds every type a circuit stores; of its stage it imports only the file rules,
    which import nothing of the stage."""
    graph = import_graph(package_sources())
    assert {t for t in graph["relp_lens.circuits.circuit"] if stage_of(t) == 1} == {"relp_lens.circuits.schema"}
    assert not [t for t in graph["relp_lens.circuits.schema"] if stage_of(t) == 1]


def test_the_import_checks_can_fail():
    """The checkers on synthetic modules: a function-local import of a later stage, a cycle through a
    function-local import, an import under TYPE_CHECKING (ignored), a relative import, an entry point."""
    sources = {
        "relp_lens.core.a": ("import os\n\ndef f():\n    from relp_lens.views import plots\n", False),
        "relp_lens.views.plots": ("", False),
        "relp_lens.circuits.b": ("from relp_lens.circuits import c\n", False),
        "relp_lens.circuits.c": ("class C:\n    def m(self):\n        try:\n            import relp_lens.circuits.b\n"
                                 "        except ImportError:\n            pass\n", False),
        "relp_lens.circuits.d": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relp_lens.analysis "
                                 "import e\nelse:\n    from . import b\n", False),
        "relp_lens.analysis.e": ("", False),
        "relp_lens.cli": ("from relp_lens.views import plots\nimport relp_lens.analysis.e\n", False),
    }
    graph = import_graph(sources)
    assert later_stage_imports(graph) == ["relp_lens.core.a:4 imports relp_lens.views.plots (stage views after core)"]
    assert graph["relp_lens.circuits.d"] == {"relp_lens.circuits.b": 5}  # TYPE_CHECKING ignored, else: kept
    assert "relp_lens.cli" not in graph  # an entry point
    assert find_cycle(graph) == ["relp_lens.circuits.b", "relp_lens.circuits.c", "relp_lens.circuits.b"]
    del sources["relp_lens.circuits.c"]
    assert find_cycle(import_graph(sources)) is None
    assert resolve_import("relp_lens.attribute", set(sources)) == "relp_lens.core.attribution"
    assert resolve_import("relp_lens.circuits.graph_io", set(sources)) == "relp_lens.circuits.io_edges"
    assert resolve_import("relp_lens.views.plots.circuit_graph", set(sources)) == "relp_lens.views.plots"


def test_modules_renamed_inside_a_stage_import_with_a_warning():
    """relp_lens.circuits.graph_io became relp_lens.circuits.io_edges: the old path, imported or reached as an
    attribute, is the new module, with a DeprecationWarning."""
    import relp_lens.circuits

    with pytest.warns(DeprecationWarning, match="relp_lens.circuits.graph_io moved to relp_lens.circuits.io_edges"):
        old = relp_lens.circuits.__getattr__("graph_io")
    assert old is importlib.import_module("relp_lens.circuits.io_edges")
    with pytest.warns(DeprecationWarning, match="select_top_k moved to relp_lens.circuits.selection"):
        from relp_lens.circuits.circuit import select_top_k
    assert select_top_k is relp_lens.select_top_k


HOOK_NAME = re.compile(r"blocks\.\{[^}]+\}\.(mlp\.hook_|hook_|attn\.hook_)")


def test_hook_names_are_spelled_in_core_nodes_only():
    """Every f-string of relp_lens that spells a block's hook name (``f"blocks.{layer}.mlp.hook_post"``) sits in
    core/nodes.py; the rest call its functions (``nodes.mlp_post(layer)``, ``nodes.block_hook(block, name)``).
    Docstrings and comments, plain strings, are not f-strings: they may show the names."""
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "core" / "nodes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr) and HOOK_NAME.search(ast.unparse(node)):
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert not spelled, spelled
