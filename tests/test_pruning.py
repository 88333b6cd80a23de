"""The paper's edge pruning: top p% of the full graph's edges, neurons need an incoming and an outgoing edge."""

from dataclasses import replace

import pytest

import relp_lens
from relp_lens import RelPLensError
from relp_lens.circuits.ablation import cpr_cmd
from relp_lens.circuits.circuit import Circuit
from relp_lens.circuits.edges import attribute_edges
from relp_lens.circuits.io_edges import attribute_io_edges
from relp_lens.circuits.pruning import INPUT, OUTPUT, edge_pruning_sweep, survivors
from helpers import AGREEMENT_ROWS, same_length_rows, synthetic_graph, tiny_llama


def test_survivors_need_an_incoming_and_an_outgoing_edge():
    edges = [(INPUT, 0, 5.0), (0, 1, 4.0), (1, OUTPUT, 3.0), (INPUT, 2, 2.0), (2, OUTPUT, -1.0), (3, OUTPUT, 0.5)]
    assert survivors(edges, 4, 1) == []  # only E→0: node 0 has no way out
    assert survivors(edges, 4, 2) == [0]  # E→0→1: node 1 has no way out yet
    assert survivors(edges, 4, 3) == [0, 1]
    assert survivors(edges, 4, 4) == [0, 1]  # node 2 has an input but no output yet
    assert survivors(edges, 4, 5) == [0, 1, 2]  # |−1| ranks by magnitude
    assert survivors(edges, 4, 6) == [0, 1, 2]  # node 3 never has an incoming edge


@pytest.mark.hooked
def test_sweep_judges_the_survivors():
    model = tiny_llama()
    rows = same_length_rows(model)
    attr = relp_lens.attribute(model, rows, progress=False)
    circuit = attribute_edges(model, relp_lens.select_top_k(attr, model, 12), rows, progress=False)
    circuit = attribute_io_edges(model, circuit, rows, progress=False)
    io = circuit.io_edges
    sweep = edge_pruning_sweep(model, circuit, rows, percents=[5, 20, 100], progress=False)
    assert [r.percent for r in sweep] == [5, 20, 100]
    assert sweep[0].n_edges < sweep[1].n_edges < sweep[2].n_edges == sweep[2].n_edges_total
    # the 20% row is exactly evaluate_circuit on the surviving neurons
    from relp_lens.circuits.pruning import graph_edges

    alive = survivors(graph_edges(circuit, io), len(circuit.nodes), sweep[1].n_edges)
    sub = Circuit(nodes=[circuit.nodes[i] for i in alive], basis=circuit.basis, hook_names=circuit.hook_names,
                  node_width=circuit.node_width, model=circuit.model, metric=circuit.metric)
    assert sweep[1].n_nodes == len(alive) > 0
    want = relp_lens.evaluate_circuit(model, sub, rows, warn=False)
    assert sweep[1].faithfulness == pytest.approx(want.faithfulness)
    assert sweep[1].completeness == pytest.approx(want.completeness)
    scores = cpr_cmd(sweep, sweep[0].n_edges_total, key="n_edges")
    assert scores.n_points == 3  # f(1) is the measured 100% row (the circuit), not the model's 1
    xs = [0.0] + [r.n_edges / r.n_edges_total for r in sweep]
    fs = [0.0] + [r.faithfulness for r in sweep]
    assert xs[-1] == 1.0
    assert scores.cpr == pytest.approx(sum((x1 - x0) * (f0 + f1) / 2
                                              for x0, x1, f0, f1 in zip(xs, xs[1:], fs, fs[1:])))
    with pytest.raises(RelPLensError, match="percents must be a number in"):
        edge_pruning_sweep(model, circuit, rows, percents=[0], progress=False)
    with pytest.warns(DeprecationWarning, match=r"edge_pruning_sweep\(model, circuit, io, prompts\)"):
        former = edge_pruning_sweep(model, replace(circuit, io_edges=None), io, rows, percents=[20], progress=False)
    assert former[0].to_dict() == sweep[1].to_dict()  # the former signature: the same row


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.5, 0.9), (0.95, 0.7)])
def test_influence_pruning_matches_circuit_tracer(seed, thresholds):
    """Same nodes and edges as circuit-tracer's own prune_graph on the same adjacency (neurons as features,
    embeddings as tokens, the output as the one logit with probability 1)."""
    from types import SimpleNamespace

    import torch
    from circuit_tracer.graph import prune_graph

    from relp_lens.circuits.pruning import graph_adjacency, influence_prune

    circuit = synthetic_graph(seed)
    io = circuit.io_edges
    a = graph_adjacency(circuit, io).float()
    n, p = len(circuit.nodes), len(io.positions)
    graph = SimpleNamespace(input_tokens=torch.zeros(p), logit_targets=[0], selected_features=torch.zeros(n),
                            adjacency_matrix=a, logit_probabilities=torch.ones(1))
    want = prune_graph(graph, node_threshold=thresholds[0], edge_threshold=thresholds[1])
    got = influence_prune(circuit, node_threshold=thresholds[0], edge_threshold=thresholds[1])
    kept_nodes = [i for i in range(n) if want.node_mask[i]]
    assert [x.key for x in got.nodes] == [circuit.nodes[i].key for i in kept_nodes]
    assert 0 < len(got.nodes) < n  # the thresholds prune something and keep something
    renumber = {old: new for new, old in enumerate(kept_nodes)}
    want_edges = {(renumber[e.source], renumber[e.target]) for e in circuit.edges
                  if want.edge_mask[e.target, e.source] and want.node_mask[e.source] and want.node_mask[e.target]}
    assert {(e.source, e.target) for e in got.edges} == want_edges
    got_io = got.io_edges
    want_out = [bool(want.edge_mask[n + p, i]) for i in kept_nodes]
    assert [bool(w != 0) for w in got_io.output] == [w and io.output[i] != 0 for w, i in zip(want_out, kept_nodes)]


def test_influence_pruning_needs_the_full_graph():
    from relp_lens.circuits.pruning import influence_prune

    circuit = synthetic_graph(0)
    with pytest.raises(RelPLensError, match="attribute_io_edges"):
        influence_prune(replace(circuit, io_edges=None))
    with pytest.raises(RelPLensError, match="node_threshold"):
        influence_prune(circuit, node_threshold=0)


@pytest.mark.parametrize("max_nodes", [1, 5, 12, 100])
def test_readable_graph_is_the_largest_that_fits(max_nodes):
    from relp_lens.circuits.pruning import _connected, graph_edges, readable_graph, survivors

    circuit = synthetic_graph(3)
    g = readable_graph(circuit, max_nodes)
    assert len(g.nodes) <= max_nodes
    edges = sorted(graph_edges(circuit, circuit.io_edges), key=lambda e: -abs(e[2]))
    counts = [len(_connected(edges[:k], len(circuit.nodes))) for k in range(1, len(edges) + 1)]
    k = max([k for k, c in enumerate(counts, 1) if c <= max_nodes], default=1)
    assert len(g.nodes) == counts[k - 1]
    assert set(_connected(edges[:k], len(circuit.nodes))) <= set(survivors(edges, len(circuit.nodes), k))
    drawn = g.io_edges
    cut = abs(edges[k - 1][2])
    assert all(abs(e.weight) >= cut for e in g.edges) and all(abs(w) >= cut for w in drawn.output if w)
    for i in range(len(g.nodes)):  # every drawn neuron has a drawn way in and a drawn way out
        assert any(e.target == i for e in g.edges) or drawn.input[:, i].any()
        assert any(e.source == i for e in g.edges) or drawn.output[i] != 0


def test_error_nodes_are_sources_for_survival_and_drawing():
    """A dictionary's error node has no incoming edge by construction: it survives pruning and drawing with an
    outgoing edge alone, where a latent or neuron needs both (0: error node, 1, 2: latents)."""
    from relp_lens.circuits.pruning import _connected

    edges = [(0, 1, 3.0), (INPUT, 2, 2.0), (1, OUTPUT, 1.0), (2, OUTPUT, 0.5), (INPUT, 1, 0.1)]
    assert survivors(edges, 3, 4) == [1, 2]
    assert survivors(edges, 3, 4, sources=[0]) == [0, 1, 2]
    assert survivors(edges, 3, 1, sources=[0]) == [0]  # one pass (the paper's rule): its edge's end not checked
    assert _connected(edges[:4], 3) == {2}  # without its source, latent 1 has no way in
    assert _connected(edges[:4], 3, {0}) == {0, 1, 2}
