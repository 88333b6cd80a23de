"""The package layout: stage subpackages, public names at the top, the flat layout's paths still working
(with a warning), and no import cycles between stages."""

import ast
import importlib
import importlib.util
import json
import pkgutil
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
        assert module.split(".")[0] in STAGES, (name, module)
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
