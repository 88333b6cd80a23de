"""Edge attribution: every weight equals a brute-force Jacobian with the same stop-gradients."""

import pytest
import torch

from relp_lens import RelPLensError
from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts
from relp_lens.circuits.edges import attribute_edges, prune_edges
from helpers import AGREEMENT_ROWS, brute_force_edges, edge_circuit, edge_matrix, hooks_left, tiny_gpt2, tiny_llama

ROWS = [AGREEMENT_ROWS[0], AGREEMENT_ROWS[2]]  # both 6 tokens


@pytest.mark.parametrize("builder,method", [(tiny_llama, "relp"), (tiny_llama, "grad"), (tiny_gpt2, "relp")])
@pytest.mark.parametrize("edge_batch", [1, 64])
def test_edges_equal_brute_force_jacobian(builder, method, edge_batch):
    model = builder()
    circuit = edge_circuit(model)
    with_edges = attribute_edges(model, circuit, ROWS, method=method, edge_batch=edge_batch, progress=False)
    stats = with_edges.stats["edges"]
    assert circuit.stats == {} and stats.n_prompts == len(ROWS)  # the input circuit is left unchanged
    W = brute_force_edges(model, circuit, ROWS, use_relp=method == "relp")
    torch.testing.assert_close(edge_matrix(with_edges), W, atol=1e-5, rtol=1e-4)
    assert (W != 0).sum() >= 10  # the test is not comparing zeros with zeros
    assert all(circuit.nodes[e.source].layer < circuit.nodes[e.target].layer for e in with_edges.edges)
    assert hooks_left(model) == []
    n_targets = sum(1 for n in circuit.nodes if n.layer > 0)
    if edge_batch == 1:
        assert stats.backward_passes == n_targets  # one downstream node per pass
    else:
        assert stats.backward_passes == 1  # all downstream nodes in one pass


def test_edges_differ_with_relp_rules():
    model = tiny_llama()
    c = edge_circuit(model)
    a = attribute_edges(model, c, ROWS, method="relp", progress=False)
    b = attribute_edges(model, c, ROWS, method="grad", progress=False)
    wa = {(e.source, e.target): e.weight for e in a.edges}
    wb = {(e.source, e.target): e.weight for e in b.edges}
    assert any(abs(wa[k] - wb.get(k, 0.0)) > 1e-5 for k in wa)


def test_edges_on_mlp_out_basis():
    model = tiny_llama()
    c = edge_circuit(model, "blocks.{L}.hook_mlp_out", width=model.cfg.d_model)
    with_edges = attribute_edges(model, c, ROWS, progress=False)
    assert with_edges.edges


def test_edges_bad_input():
    model = tiny_llama()
    c = edge_circuit(model)
    with pytest.raises(RelPLensError, match="edges need MLP nodes"):
        attribute_edges(model, Circuit(nodes=[CircuitNode(0, 1, 1)], basis="resid_post",
                                       hook_names=[f"blocks.{l}.hook_resid_post" for l in range(3)],
                                       node_width=32, model=model_facts(model)), ROWS, progress=False)
    with pytest.raises(RelPLensError, match="circuit is empty"):
        attribute_edges(model, Circuit(nodes=[], basis="mlp_post", hook_names=c.hook_names, node_width=48,
                                       model=model_facts(model)), ROWS, progress=False)
    with pytest.raises(RelPLensError, match="which the 3-token prompt .The parents. does not have"):
        attribute_edges(model, c, [AGREEMENT_ROWS[1]], progress=False)
    assert hooks_left(model) == []


def test_prune_edges():
    model = tiny_llama()
    c = attribute_edges(model, edge_circuit(model), ROWS, progress=False)
    pruned = prune_edges(c, 0.3)
    assert len(pruned.edges) == round(0.3 * len(c.edges))
    assert min(abs(e.weight) for e in pruned.edges) >= sorted(abs(e.weight) for e in c.edges)[-len(pruned.edges)]
    used = {e.source for e in pruned.edges} | {e.target for e in pruned.edges}
    assert used == set(range(len(pruned.nodes)))  # no isolated node left
    with pytest.raises(RelPLensError, match="keep_fraction"):
        prune_edges(c, 0)
