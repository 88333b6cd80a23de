"""circuit-tracer graph files: valid for circuit-tracer's own schema, readable by its viewer, written safely."""

import json
from dataclasses import replace
import re

import pytest

from relp_lens import RelPLensError
from relp_lens.circuits.circuit import Circuit, CircuitEdge, CircuitNode
from relp_lens.circuits.graph_export import (INDEX_FILE, cantor_pairing, check_graph_path, to_circuit_tracer,
                                             write_circuit_tracer)

TOKENS = ["<|endoftext|>", "The", " keys", " to", " the", " cabinet"]
IDS = [0, 504, 10200, 288, 260, 18611]


def circuit(edges=(CircuitEdge(0, 2, 0.5), CircuitEdge(1, 2, -0.25))):
    nodes = [CircuitNode(1, -1, 100, score=0.2), CircuitNode(3, 2, 7, score=-1.5), CircuitNode(5, -1, 9, score=0.6)]
    hooks = [f"blocks.{i}.mlp.hook_post" for i in range(6)]
    return Circuit(nodes=nodes, basis="mlp_post", hook_names=hooks, node_width=1536, edges=list(edges),
                   model=dict(name="tiny", n_layers=6, d_mlp=1536))


def graph(**kw):
    kw = dict(prompt="The keys to the cabinet", slug="keys", token_ids=IDS, output_label=" are", output_token=389,
              output_prob=0.42) | kw
    return to_circuit_tracer(circuit(), TOKENS, **kw)


def test_validates_against_circuit_tracers_own_schema():
    from circuit_tracer.frontend.graph_models import Model  # installed --no-deps by the Makefile

    g = graph()
    model = Model.model_validate(g)
    assert len(model.nodes) == 3 + len(TOKENS) + 1
    assert Model.model_validate(json.loads(json.dumps(g))).model_dump()["links"] == g["links"]


def test_node_ids_and_types_follow_circuit_tracer():
    g = graph()
    by_type = {}
    for n in g["nodes"]:
        by_type.setdefault(n["feature_type"], []).append(n)
        assert re.fullmatch(r"\d+_\d+_\d+|E_\d+_\d+", n["node_id"]), n["node_id"]
    neurons, embeddings, (out,) = by_type["cross layer transcoder"], by_type["embedding"], by_type["logit"]
    assert [n["node_id"] for n in neurons] == ["1_100_5", "3_7_2", "5_9_5"]  # -1 = the last of 6 positions
    assert [n["feature"] for n in neurons] == [cantor_pairing(1, 100), cantor_pairing(3, 7), cantor_pairing(5, 9)]
    assert [n["node_id"] for n in embeddings] == [f"E_{t}_{p}" for p, t in enumerate(IDS)]
    assert [n["layer"] for n in embeddings] == ["E"] * len(TOKENS)
    assert out["node_id"] == "7_389_5" and out["is_target_logit"] and out["token_prob"] == 0.42
    assert re.search(r'^Output " are" \(p=0\.420\)$', out["clerp"])  # the viewer parses '(p=' out of it
    assert g["metadata"]["prompt_tokens"] == TOKENS and g["metadata"]["node_threshold"] is None
    assert g["metadata"]["scan"].startswith("./")  # feature details are looked up locally, never online


def test_influence_is_the_cumulative_share():
    """circuit-tracer's influence: sorted by |score|, running share of the total; the viewer's pruning slider
    keeps influence <= threshold, so the most important node must have the smallest value."""
    inf = {n["node_id"]: n["influence"] for n in graph()["nodes"] if n["feature_type"] == "cross layer transcoder"}
    total = 0.2 + 1.5 + 0.6
    assert inf["3_7_2"] == pytest.approx(1.5 / total)
    assert inf["5_9_5"] == pytest.approx(2.1 / total)
    assert inf["1_100_5"] == pytest.approx(1.0)


def test_links_are_edges_and_scores_into_the_output():
    g = graph()
    ids = {n["node_id"] for n in g["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in g["links"])
    assert {(l["source"], l["target"]): l["weight"] for l in g["links"]} == {
        ("1_100_5", "5_9_5"): 0.5, ("3_7_2", "5_9_5"): -0.25,
        ("1_100_5", "7_389_5"): 0.2, ("3_7_2", "7_389_5"): -1.5, ("5_9_5", "7_389_5"): 0.6}


def test_without_token_ids_positions_stand_in_and_the_metric_names_the_output():
    g = to_circuit_tracer(circuit(), TOKENS)
    assert [n["node_id"] for n in g["nodes"] if n["layer"] == "E"] == [f"E_{p}_{p}" for p in range(6)]
    assert g["nodes"][-1]["clerp"] == 'Output "logit_diff" (p=1.000)'


def test_write_adds_to_the_index_and_replaces_by_slug(tmp_path):
    write_circuit_tracer(tmp_path / "keys.json", graph(), title="tiny")
    write_circuit_tracer(tmp_path / "other.json", graph(slug="other"))
    write_circuit_tracer(tmp_path / "keys.json", graph(prompt="again"))
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert [(g["slug"], g["prompt"]) for g in index["graphs"]] == [("other", "The keys to the cabinet"),
                                                                  ("keys", "again")]
    assert "prompt_tokens" not in index["graphs"][0]
    assert json.loads((tmp_path / "keys.json").read_text())["metadata"]["slug"] == "keys"


def test_bad_names_damaged_index_and_nan_are_errors_before_writing(tmp_path):
    with pytest.raises(RelPLensError, match="name the file e.g. my-graph.json"):
        check_graph_path(tmp_path / "my graph.json")
    with pytest.raises(RelPLensError, match="must be written to keys.json"):
        write_circuit_tracer(tmp_path / "other.json", graph())
    (tmp_path / INDEX_FILE).write_text("{not json")
    with pytest.raises(RelPLensError, match="not a circuit-tracer graph index"):
        write_circuit_tracer(tmp_path / "keys.json", graph())
    (tmp_path / INDEX_FILE).unlink()
    bad = circuit(edges=[CircuitEdge(0, 2, float("nan"))])
    with pytest.raises(RelPLensError, match="weight nan"):
        to_circuit_tracer(bad, TOKENS)
    with pytest.raises(RelPLensError, match="outside the 2-token prompt"):
        to_circuit_tracer(circuit(), TOKENS[:2])
    assert list(tmp_path.iterdir()) == []


def test_input_and_output_edges_become_links():
    import torch

    from circuit_tracer.frontend.graph_models import Model
    from relp_lens.circuits.circuit import IOEdges

    inp = torch.zeros(6, 3, dtype=torch.float64)
    inp[2, 1] = 0.7  # ' keys' → node 1 (3_7_2)
    inp[5, 0] = -0.1  # ' cabinet' → node 0
    io = IOEdges(positions=[0, 1, 2, 3, 4, 5], input=inp, output=torch.tensor([0.05, -0.9, 0.3], dtype=torch.float64),
                 direct=torch.tensor([0, 0, 0, 0, 0, 0.25], dtype=torch.float64), metric=1.0)
    g = graph(io=io)
    Model.model_validate(g)
    links = {(l["source"], l["target"]): l["weight"] for l in g["links"]}
    assert links[("E_10200_2", "3_7_2")] == 0.7 and links[("E_18611_5", "1_100_5")] == -0.1
    assert links[("3_7_2", "7_389_5")] == -0.9  # the direct effect, not the score
    assert links[("E_18611_5", "7_389_5")] == 0.25
    assert len(links) == 2 + 2 + 3 + 1  # neuron edges, input edges, output edges, one direct path
    from dataclasses import replace

    assert to_circuit_tracer(replace(circuit(), io_edges=io), TOKENS, prompt="The keys to the cabinet", slug="keys",
                             token_ids=IDS, output_label=" are", output_token=389, output_prob=0.42) == g  # its own


def feature_circuit(io_weights=None):
    """Two layers of a 4-latent dictionary (node 4 of a layer: its error node), one prompt position kept."""
    import torch

    from relp_lens.circuits.circuit import IOEdges

    hooks = [f"blocks.{i}.hook_mlp_out.hook_sae_nodes" for i in range(2)]
    nodes = [CircuitNode(0, 1, 2, score=0.5), CircuitNode(0, 1, 4, score=0.3),  # a latent, an error node
             CircuitNode(1, 2, 0, score=0.8)]
    edges = [CircuitEdge(0, 2, 0.4), CircuitEdge(1, 2, 0.4)]
    io = IOEdges(positions=[0, 1, 2], input=torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0, 0, 0]], dtype=torch.float64),
                 output=torch.tensor([0.1, 0.0, 0.8], dtype=torch.float64),
                 direct=torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64), metric=1.0)
    return Circuit(nodes=nodes, basis="transcoder features", hook_names=hooks, node_width=5, edges=edges, io_edges=io,
                   model=dict(name="tiny", n_layers=2, d_model=8))


def test_feature_graphs_type_latents_and_error_nodes_as_circuit_tracer_does():
    from circuit_tracer.frontend.graph_models import Model

    c = feature_circuit()
    assert [c.is_error(n) for n in c.nodes] == [False, True, False]
    g = to_circuit_tracer(c, TOKENS[:3], slug="features")
    Model.model_validate(g)
    by_id = {n["node_id"]: n for n in g["nodes"]}
    err = by_id["0_0_1"]  # circuit-tracer's error-node id: 0_{layer}_{pos}
    assert err["feature_type"] == "mlp reconstruction error" and err["feature"] == -1
    assert err["clerp"].startswith("Err: blocks.0.hook_mlp_out")
    assert by_id["0_2_1"]["feature_type"] == "cross layer transcoder"
    links = {(l["source"], l["target"]): l["weight"] for l in g["links"]}
    assert links[("0_0_1", "1_0_2")] == 0.4 and ("E_1_1", "0_0_1") not in links  # errors: outgoing edges only


def test_an_error_node_whose_circuit_tracer_id_a_layer_0_latent_holds_gets_its_own():
    """circuit-tracer writes an error node 0_{layer}_{pos} and a feature {layer}_{index}_{pos}: layer 1's error
    at position 2 and layer 0's latent 1 at position 2 would share 0_1_2. The error node becomes err_1_2; ids
    stay unique, the links follow, the file validates."""
    from circuit_tracer.frontend.graph_models import Model

    c = feature_circuit()
    c = replace(c, nodes=c.nodes + [CircuitNode(0, 2, 1, score=0.2), CircuitNode(1, 2, 4, score=0.1)],
                edges=c.edges + [CircuitEdge(3, 2, 0.2)], io_edges=None)
    g = to_circuit_tracer(c, TOKENS[:3], slug="collide")
    Model.model_validate(g)
    ids = [n["node_id"] for n in g["nodes"]]
    assert len(ids) == len(set(ids))
    by_id = {n["node_id"]: n for n in g["nodes"]}
    assert by_id["0_1_2"]["feature_type"] == "cross layer transcoder"
    assert by_id["err_1_2"]["feature_type"] == "mlp reconstruction error"
    assert by_id["0_0_1"]["feature_type"] == "mlp reconstruction error"  # no collision: circuit-tracer's id
    assert {l["source"] for l in g["links"]} >= {"0_1_2", "0_0_1"}


def test_graph_scores_follow_circuit_tracers_definition_by_hand():
    """Hand computation on feature_circuit's graph (rows normalised by absolute sums, output weight 1):
    output ← latent0 0.1, error 0, latent1 0.8, E2 0.1 (sum 1.0): influence latent0 0.1, latent1 0.8, E2 0.1;
    latent1 ← latent0 0.4, error 0.4 (sum 0.8, normalised 0.5/0.5): latent0 += 0.4, error 0.4;
    latent0 ← E1 0.5 (normalised 1): E1 = 0.1 + 0.4 = 0.5.
    Replacement = tokens / (tokens + errors) = (0.5 + 0.1) / (0.6 + 0.4) = 0.6.
    Completeness = Σ_nodes (1 − error share of its inputs) · (influence + weight) / Σ (influence + weight):
    the output (weight 1, no error input) 1·1, latent1 (0.8) 0.5·0.8, latent0 (0.5) 1·0.5, error (0.4) 1·0.4,
    E1 (0.5) 1·0.5, E2 (0.1) 1·0.1, E0 (0) → (1 + 0.4 + 0.5 + 0.4 + 0.5 + 0.1) / (1 + 0.8 + 0.5 + 0.4 + 0.5 + 0.1)."""
    from relp_lens.circuits.pruning import graph_scores

    replacement, completeness = graph_scores(feature_circuit())
    assert replacement == pytest.approx(0.6)
    assert completeness == pytest.approx(2.9 / 3.3)
    g = to_circuit_tracer(feature_circuit(), TOKENS[:3], slug="features")
    assert g["metadata"]["replacement_score"] == pytest.approx(0.6)


def test_neuron_graphs_score_one():
    import torch

    from dataclasses import replace

    from relp_lens.circuits.circuit import IOEdges
    from relp_lens.circuits.pruning import graph_scores

    io = IOEdges(positions=list(range(6)), input=torch.rand(6, 3, dtype=torch.float64),
                 output=torch.tensor([0.05, -0.9, 0.3], dtype=torch.float64),
                 direct=torch.zeros(6, dtype=torch.float64), metric=1.0)
    assert graph_scores(replace(circuit(), io_edges=io)) == (pytest.approx(1.0), pytest.approx(1.0))
