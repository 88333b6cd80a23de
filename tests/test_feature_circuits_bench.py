"""benchmarks/feature_circuits.py: results of runs made in pieces merge without losing or mixing figures, and
the table and figure read sets and unpaired tasks alike (no model: the results are made up)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import feature_circuits as fc  # noqa: E402


def method(k: int, n_errors: int | None = None) -> dict:
    curve = [{"n_nodes": n, "faithfulness": 0.9 if n >= k else 0.1, "n_errors": n_errors} for n in (1, 10, 100)]
    return {"curves": {"abs": curve, "signed": curve}, "size_at_0.8": {"abs": k, "signed": k},
            "size_at_0.9": {"abs": k, "signed": k}, "nodes_total": 1000, "seconds": 1.0}


def run(methods: dict, sets=("simple",), tasks=(), command="python benchmarks/feature_circuits.py") -> dict:
    bases = {"mlp_post": {"methods": dict(methods)}, "sae": {"methods": dict(methods)}}
    return {"command": command, "total_seconds": 10.0,
            "config": {"methods": list(methods), "ranks": ["abs", "signed"], "sets": list(sets), "tasks": list(tasks)},
            "sets": {s: {"n_build": 16, "bases": bases} for s in sets},
            "tasks": {t: {"n_build": 25, "settings": {"zero/mean": {"bases": bases}}} for t in tasks}}


def test_merged_adds_methods_sets_and_tasks_and_keeps_both_commands():
    old = run({"relp": method(10), "grad": method(100)}, sets=("simple", "nounpp"), command="first")
    new = run({"ig": method(1, n_errors=1)}, sets=("nounpp",), tasks=("antonyms",), command="second")
    out = fc.merged(old, new)
    assert out["commands"] == ["first", "second"] and out["total_seconds"] == 20.0
    assert set(out["sets"]["nounpp"]["bases"]["sae"]["methods"]) == {"relp", "grad", "ig"}
    assert set(out["sets"]["simple"]["bases"]["sae"]["methods"]) == {"relp", "grad"}  # ig was not run there
    assert out["config"]["methods"] == ["relp", "grad", "ig"] and out["config"]["tasks"] == ["antonyms"]
    assert out["tasks"]["antonyms"]["settings"]["zero/mean"]["bases"]["mlp_post"]["methods"]["ig"] == method(1, 1)
    assert "ig" not in old["sets"]["nounpp"]["bases"]["sae"]["methods"]  # old is not modified
    table = fc.table(out)
    assert "| simple | sae | 10 | 10 | 100 | 100 | not run | not run |" in table
    assert "| nounpp | sae | 10 | 10 | 100 | 100 | 1 (1 err) | 1 (1 err) |" in table
    assert "| antonyms (zero/mean) | mlp_post | not run | not run | not run | not run | 1 (1 err) | 1 (1 err) |" in table
    again = fc.merged(out, new)  # re-running a piece replaces its figures, never duplicates them
    assert fc.table(again) == table
    titles = [a.text for a in fc.figure(out).layout.annotations]
    assert titles == ["simple", "nounpp", "antonyms (zero/mean)"]
