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
