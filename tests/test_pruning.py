"""The paper's edge pruning: top p% of the full graph's edges, neurons need an incoming and an outgoing edge."""

import pytest

import relp_lens
from relp_lens import RelPLensError
from relp_lens.ablation import cpr_cmd
from relp_lens.circuit import Circuit
from relp_lens.edges import attribute_edges
from relp_lens.graph_io import attribute_io_edges
from relp_lens.pruning import INPUT, OUTPUT, edge_pruning_sweep, survivors
from helpers import AGREEMENT_ROWS, same_length_rows, tiny_llama


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
    circuit, _ = attribute_edges(model, relp_lens.select_top_k(attr, model, 12), rows, progress=False)
    io = attribute_io_edges(model, circuit, rows, progress=False)
    sweep = edge_pruning_sweep(model, circuit, io, rows, percents=[5, 20, 100], progress=False)
    assert [r["percent"] for r in sweep] == [5, 20, 100]
    assert sweep[0]["n_edges"] < sweep[1]["n_edges"] < sweep[2]["n_edges"] == sweep[2]["n_edges_total"]
    # the 20% row is exactly evaluate_circuit on the surviving neurons
    from relp_lens.pruning import graph_edges

    alive = survivors(graph_edges(circuit, io), len(circuit.nodes), sweep[1]["n_edges"])
    sub = Circuit(nodes=[circuit.nodes[i] for i in alive], basis=circuit.basis, hook_names=circuit.hook_names,
                  node_width=circuit.node_width, model=circuit.model, metric=circuit.metric)
    assert sweep[1]["n_nodes"] == len(alive) > 0
    want = relp_lens.evaluate_circuit(model, sub, rows, warn=False)
    assert sweep[1]["faithfulness"] == pytest.approx(want["faithfulness"])
    assert sweep[1]["completeness"] == pytest.approx(want["completeness"])
    scores = cpr_cmd(sweep, sweep[0]["n_edges_total"], key="n_edges")
    assert scores["n_points"] == 3  # f(1) is the measured 100% row (the circuit), not the model's 1
    xs = [0.0] + [r["n_edges"] / r["n_edges_total"] for r in sweep]
    fs = [0.0] + [r["faithfulness"] for r in sweep]
    assert xs[-1] == 1.0
    assert scores["cpr"] == pytest.approx(sum((x1 - x0) * (f0 + f1) / 2
                                              for x0, x1, f0, f1 in zip(xs, xs[1:], fs, fs[1:])))
    with pytest.raises(RelPLensError, match="percents must be in"):
        edge_pruning_sweep(model, circuit, io, rows, percents=[0], progress=False)


def random_graph(seed: int, n_layers: int = 4, per_layer: int = 6, n_pos: int = 3) -> Circuit:
    """A synthetic full graph: neurons at (layer, pos), edges only to later layers, input and output edges."""
    import torch

    from relp_lens.circuit import CircuitEdge, CircuitNode
    from relp_lens.graph_io import IOEdges

    g = torch.Generator().manual_seed(seed)
    nodes = [CircuitNode(l, int(torch.randint(n_pos, (1,), generator=g)), i, score=1.0)
             for l in range(n_layers) for i in range(per_layer)]
    edges = [CircuitEdge(s, t, float(torch.randn(1, generator=g)) * float(torch.rand(1, generator=g)) ** 3)
             for s in range(len(nodes)) for t in range(len(nodes))
             if nodes[s].layer < nodes[t].layer and torch.rand(1, generator=g) < 0.5]
    n = len(nodes)
    io = IOEdges(positions=list(range(n_pos)), input=torch.randn(n_pos, n, generator=g, dtype=torch.float64)
                 * (torch.rand(n_pos, n, generator=g, dtype=torch.float64) < 0.3),
                 output=torch.randn(n, generator=g, dtype=torch.float64) ** 3,
                 direct=torch.randn(n_pos, generator=g, dtype=torch.float64), metric=1.0)
    return Circuit(nodes=nodes, basis="mlp_post", hook_names=[f"blocks.{l}.mlp.hook_post" for l in range(n_layers)],
                   node_width=per_layer, model=dict(name="synthetic", n_layers=n_layers), edges=edges,
                   io_edges=io.to_dict())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.5, 0.9), (0.95, 0.7)])
def test_influence_pruning_matches_circuit_tracer(seed, thresholds):
    """Same nodes and edges as circuit-tracer's own prune_graph on the same adjacency (neurons as features,
    embeddings as tokens, the output as the one logit with probability 1)."""
    from types import SimpleNamespace

    import torch
    from circuit_tracer.graph import prune_graph

    from relp_lens.graph_io import IOEdges
    from relp_lens.pruning import graph_adjacency, influence_prune

    circuit = random_graph(seed)
    io = IOEdges.from_dict(circuit.io_edges, len(circuit.nodes))
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
    got_io = IOEdges.from_dict(got.io_edges, len(got.nodes))
    want_out = [bool(want.edge_mask[n + p, i]) for i in kept_nodes]
    assert [bool(w != 0) for w in got_io.output] == [w and io.output[i] != 0 for w, i in zip(want_out, kept_nodes)]


def test_influence_pruning_needs_the_full_graph():
    from dataclasses import replace

    from relp_lens.pruning import influence_prune

    circuit = random_graph(0)
    with pytest.raises(RelPLensError, match="attribute_io_edges"):
        influence_prune(replace(circuit, io_edges=None))
    with pytest.raises(RelPLensError, match="node_threshold"):
        influence_prune(circuit, node_threshold=0)
