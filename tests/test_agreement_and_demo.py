"""The built-in agreement pairs and `make demo` on the shipped model."""

import json

import pytest

from relp_lens import Prompts
from relp_lens.core.tasks import agreement_rows

pytestmark = pytest.mark.slow


def test_agreement_rows(smollm):
    rows = agreement_rows(smollm, 24, seed=3)
    assert len(rows) == 24 and rows == agreement_rows(smollm, 24, seed=3)  # deterministic
    assert rows != agreement_rows(smollm, 24, seed=4)
    p = Prompts.from_rows(rows)
    assert p.paired
    for r in rows:
        assert len(smollm.to_tokens(r["clean_prefix"])[0]) == len(smollm.to_tokens(r["patch_prefix"])[0])
        assert {r["clean_answer"], r["patch_answer"]} == {" are", " is"}
        assert r["case"] in ("simple", "nounpp")
    assert len({r["clean_prefix"] for r in rows}) == 24


def test_demo_writes_files(tmp_path, capsys):
    from relp_lens.demo import main

    main(["--out", str(tmp_path), "--n-prompts", "8", "--n-exact", "12", "--n-cards", "3"])
    out = capsys.readouterr().out
    assert "task accuracy" in out and "correlation with exact patching" in out and "faithfulness" in out
    top = json.loads((tmp_path / "top_neurons.json").read_text())
    assert len(top) == 15 and {"layer", "pos", "neuron", "score"} <= set(top[0])
    assert "steering the top 20 circuit neurons" in out
    html = (tmp_path / "report.html").read_text()
    assert "<script src=" not in html and len(html) > 1_000_000  # plotly.js embedded: works offline
    assert html.count("Plotly.newPlot") == 6 and html.count("<details>") >= 3  # 6 figures, neuron cards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.txt", "top_neurons.json"]
