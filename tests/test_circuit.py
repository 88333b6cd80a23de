"""Circuit selection, files (versioned JSON, atomic writes, clear errors) and circuit-tracer export."""

import json

import pytest
import torch

from relp_lens import RelPLensError, attribute
from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts
from relp_lens.circuits.selection import select_threshold, select_top_k
from helpers import AGREEMENT_ROWS, tiny_llama


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.fixture(scope="module")
def attr(llama):
    return attribute(llama, AGREEMENT_ROWS, progress=False)


def test_top_k(llama, attr):
    c = select_top_k(attr, llama, 12, everywhere=False)
    assert len(c) == 12 and c.selection["k"] == 12
    mean = attr.mean().nan_to_num(0)
    kth = mean.abs().flatten().topk(12).values[-1]
    for n in c.nodes:
        assert n.score == pytest.approx(mean[n.layer, attr.alignment.column(n.pos), n.index].item())
        assert abs(n.score) >= kth - 1e-7
    assert [abs(n.score) for n in c.nodes] == sorted((abs(n.score) for n in c.nodes), reverse=True)
    agg = select_top_k(attr, llama, 5, aggregate_pos=True)
    assert all(n.pos is None for n in agg.nodes)
    assert agg.nodes[0].score == pytest.approx(
        attr.scores.sum(2).mean(0).abs().max().item() * (1 if agg.nodes[0].score > 0 else -1))


def test_threshold(llama, attr):
    m = attr.metric_clean.mean().abs().item()
    c = select_threshold(attr, llama, 0.005, everywhere=False)
    mean = attr.mean().nan_to_num(0)
    assert len(c) == int((mean.abs() >= 0.005 * m).sum())
    assert len(select_threshold(attr, llama, 0.05, everywhere=False)) < len(c)
    every = select_threshold(attr, llama, 0.005)  # default: positions every prompt has (0, 1, -1)
    assert len(every) == int((mean[:, [0, 1, 5]].abs() >= 0.005 * m).sum())
    assert c.selection["tau"] == 0.005 and c.selection["m"] == pytest.approx(m)


def test_roundtrip(tmp_path, llama, attr):
    c = select_top_k(attr, llama, 8, task="toy")
    path = c.save(tmp_path / "sub" / "c.json")
    back = Circuit.load(path)
    assert back.to_dict() == c.to_dict()
    d = json.loads(path.read_text())
    assert d["schema"] == "relp_lens.circuit" and d["version"] == 2
    assert d["baseline"] == "patch" and d["ablation"] == "mean" and d["positions"]["rule"] == "end"
    assert d["positions"]["labels"]["-1"] == "4 tokens, e.g. 'cabinet'"
    assert d["data"]["rows"][0]["clean_prefix"] == AGREEMENT_ROWS[0]["clean_prefix"]
    assert d["model"]["d_mlp"] == 48 and d["hook_names"][0] == "blocks.0.mlp.hook_post"
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]  # no temp file left


def _bad(tmp_path, obj_or_text, match):
    p = tmp_path / "bad.json"
    p.write_text(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text))
    with pytest.raises(RelPLensError, match=match):
        Circuit.load(p)


def test_bad_files(tmp_path, llama, attr):
    good = select_top_k(attr, llama, 3).to_dict()
    _bad(tmp_path, "{not json", r"not valid JSON \(line 1")
    _bad(tmp_path, [1, 2], "expected a JSON object")
    _bad(tmp_path, dict(good, schema="other"), "not a relp_lens circuit")
    _bad(tmp_path, dict(good, version=7), "version 7 is not supported")
    _bad(tmp_path, dict(good, nodes=[{"layer": 0, "pos": 1.5, "index": 0}]), "pos must be an integer")
    _bad(tmp_path, dict(good, ablation="half"), "unknown ablation 'half'")
    _bad(tmp_path, {k: v for k, v in good.items() if k != "nodes"}, "field 'nodes' missing")
    _bad(tmp_path, dict(good, nodes=[{"layer": 0}]), "malformed node")
    _bad(tmp_path, dict(good, nodes=[{"layer": 9, "pos": 0, "index": 0}]), r"node 0: layer 9 outside \[0, 3\)")
    _bad(tmp_path, dict(good, nodes=[{"layer": 0, "pos": 0, "index": 4800}]), r"index 4800 outside \[0, 48\)")
    _bad(tmp_path, dict(good, edges=[{"source": 0, "target": 7, "weight": 1.0}]), "edge 0: node number 7")
    with pytest.raises(RelPLensError, match="not found"):
        Circuit.load(tmp_path / "missing.json")


def test_check_model(llama, attr):
    c = select_top_k(attr, llama, 3)
    c.check_model(llama)
    other = tiny_llama(d_mlp=64)
    with pytest.raises(RelPLensError, match="d_mlp=48, this model has d_mlp=64"):
        c.check_model(other)
    two_layer = tiny_llama(n_layers=2)
    c2 = Circuit(nodes=c.nodes[:1], basis=c.basis, hook_names=c.hook_names, node_width=48,
                 model=dict(c.model, n_layers=None))
    with pytest.raises(RelPLensError, match="blocks.2.mlp.hook_post"):
        c2.check_model(two_layer)


def test_circuit_tracer_export(llama, attr):
    from dataclasses import replace

    from relp_lens.circuits.circuit import CircuitEdge
    from relp_lens.circuits.graph_export import to_circuit_tracer

    c = replace(select_top_k(attr, llama, 4), edges=[CircuitEdge(0, 1, 0.5)])
    g = to_circuit_tracer(c, attr.str_tokens[0], prompt=AGREEMENT_ROWS[0]["clean_prefix"])
    with pytest.warns(DeprecationWarning, match="Circuit.to_circuit_tracer is deprecated"):
        assert c.to_circuit_tracer(attr.str_tokens[0], prompt=AGREEMENT_ROWS[0]["clean_prefix"]) == g
    assert set(g) == {"metadata", "qParams", "nodes", "links"}
    assert g["metadata"]["prompt_tokens"] == attr.str_tokens[0]
    ids = {n["node_id"] for n in g["nodes"]}
    n_tokens = len(attr.str_tokens[0])
    assert len(ids) == 4 + n_tokens + 1  # neurons, an embedding node per token, the output
    assert all(l["source"] in ids and l["target"] in ids for l in g["links"])
    assert sum(n["is_target_logit"] for n in g["nodes"]) == 1
    from circuit_tracer.frontend.graph_models import Model

    Model.model_validate(g)
    n0 = c.nodes[0]
    ctx = n0.pos if n0.pos >= 0 else len(attr.str_tokens[0]) + n0.pos
    assert g["nodes"][0]["node_id"] == f"{n0.layer}_{n0.index}_{ctx}"
    json.dumps(g)


def test_duplicate_node_rejected(llama):
    with pytest.raises(RelPLensError, match="duplicate"):
        Circuit(nodes=[CircuitNode(0, 1, 2), CircuitNode(0, 1, 2)], basis="mlp_post",
                hook_names=["blocks.0.mlp.hook_post"], node_width=48, model=model_facts(llama))


def test_version_1_files_still_load(tmp_path, llama, attr):
    """A version-1 file: absolute positions, patch baseline for paired rows, mean ablation."""
    d = select_top_k(attr, llama, 3).to_dict()
    for key in ("baseline", "ablation", "positions"):
        d.pop(key)
    d["version"] = 1
    d["nodes"] = [dict(n, pos=abs(n["pos"])) for n in d["nodes"]]
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(d))
    c = Circuit.load(p)
    assert c.baseline == "patch" and c.ablation == "mean" and c.positions["rule"] == "absolute"
    assert [n.pos for n in c.nodes] == [n["pos"] for n in d["nodes"]]
    assert c.to_dict()["version"] == 2


def test_unpaired_mean_selection_leaves_out_fixed_positions(llama):
    rows = [dict(clean_prefix=p) for p in ("The keys to the cabinet", "The parents are", "The doctor near the")]
    attr = attribute(llama, rows, baseline="zero", progress=False)
    assert attr.fixed_positions == [0, 1]  # BOS and 'The' are in every prompt
    zero = select_top_k(attr, llama, 1000)  # zero baseline -> zero ablation: every position may be chosen
    assert zero.ablation == "zero" and any(n.pos in (0, 1) for n in zero.nodes)
    mean = select_top_k(attr, llama, 1000, ablation="mean")
    assert mean.selection["excluded_positions"] == [0, 1] and not any(n.pos in (0, 1) for n in mean.nodes)
    both = select_top_k(attr, llama, 1000, ablation="mean", include_fixed=True)
    assert any(n.pos in (0, 1) for n in both.nodes)
    ex = select_top_k(attr, llama, 1000, exclude_neurons=[(2, 5)])
    assert ex.selection["excluded_neurons"] == [[2, 5]] and not any((n.layer, n.index) == (2, 5) for n in ex.nodes)
