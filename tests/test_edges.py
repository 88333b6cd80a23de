"""Edge attribution: every weight equals a brute-force Jacobian with the same stop-gradients."""

import pytest
import torch

from relp_lens import RelPLensError, attribute, relp
from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts
from relp_lens.circuits.edges import attribute_edges, prune_edges
from helpers import AGREEMENT_ROWS, hooks_left, tiny_gpt2, tiny_llama

ROWS = [AGREEMENT_ROWS[0], AGREEMENT_ROWS[2]]  # both 6 tokens


def make_circuit(model, basis_hook="blocks.{L}.mlp.hook_post", width=None):
    hooks = [basis_hook.format(L=l) for l in range(model.cfg.n_layers)]
    width = width or model.cfg.d_mlp
    nodes = [CircuitNode(0, 2, 3), CircuitNode(0, None, 5), CircuitNode(1, 4, 1), CircuitNode(1, 5, 7),
             CircuitNode(2, 5, 0), CircuitNode(2, None, 9), CircuitNode(1, 2, 11)]
    return Circuit(nodes=nodes, basis="mlp_post", hook_names=hooks, node_width=width, model=model_facts(model))


def brute_force_edges(model, circuit, rows, use_relp):
    """w(u→d) = Σ ∇_d m · J · Δu with J = jacobian(d(u)) (intermediate MLP outputs held at clean values)."""
    hooks = circuit.hook_names
    W = torch.zeros(len(circuit.nodes), len(circuit.nodes), dtype=torch.float64)
    for row in rows:
        clean, patch = model.to_tokens(row["clean_prefix"]), model.to_tokens(row["patch_prefix"])
        good = model.to_single_token(row["clean_answer"].strip())
        bad = model.to_single_token(row["patch_answer"].strip())
        _, cc = model.run_with_cache(clean)
        _, pc = model.run_with_cache(patch)
        ctx = relp if use_relp else (lambda m: torch.enable_grad())
        # ∇_d m in the full model
        store = {}

        def keep(x, hook):
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            store[hook.name] = x
            return x
        with ctx(model), model.hooks(fwd_hooks=[(h, keep) for h in hooks]):
            logits = model(clean)
            grads = torch.autograd.grad(logits[0, -1, good] - logits[0, -1, bad], [store[h] for h in hooks])
        for j, u in enumerate(circuit.nodes):
            for i, d in enumerate(circuit.nodes):
                if d.layer <= u.layer:
                    continue

                def d_of(v, u=u, d=d):
                    out = {}

                    def set_src(x, hook):
                        return v

                    def freeze(x, hook):
                        return cc[hook.name]

                    def grab(x, hook):
                        out["d"] = x
                        return x
                    fwd = [(hooks[u.layer], set_src), (hooks[d.layer], grab)]
                    fwd += [(hooks[l], freeze) for l in range(u.layer + 1, d.layer)]
                    with ctx(model), model.hooks(fwd_hooks=fwd):
                        model(clean)
                    return out["d"][0, :, d.index]  # [pos]

                J = torch.autograd.functional.jacobian(d_of, cc[hooks[u.layer]])[:, 0]  # [pos_d, pos_u, width]
                delta = (pc[hooks[u.layer]] - cc[hooks[u.layer]])[0]  # [pos_u, width]
                gd = grads[d.layer][0, :, d.index]  # [pos_d]
                contrib = torch.einsum("p,pqw,qw->qw", gd, J, delta)[:, u.index]  # [pos_u]
                if d.pos is not None:
                    mask = torch.zeros_like(gd)
                    mask[d.pos] = 1
                    contrib = torch.einsum("p,p,pqw,qw->qw", gd, mask, J, delta)[:, u.index]
                W[j, i] += (contrib.sum() if u.pos is None else contrib[u.pos]).item()
    return W / len(rows)


@pytest.mark.parametrize("builder,method", [(tiny_llama, "relp"), (tiny_llama, "grad"), (tiny_gpt2, "relp")])
@pytest.mark.parametrize("edge_batch", [1, 64])
def test_edges_equal_brute_force_jacobian(builder, method, edge_batch):
    model = builder()
    circuit = make_circuit(model)
    with_edges, stats = attribute_edges(model, circuit, ROWS, method=method, edge_batch=edge_batch,
                                        progress=False)
    W = brute_force_edges(model, circuit, ROWS, use_relp=method == "relp")
    got = torch.zeros_like(W)
    for e in with_edges.edges:
        got[e.source, e.target] = e.weight
    torch.testing.assert_close(got, W, atol=1e-5, rtol=1e-4)
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
    c = make_circuit(model)
    a, _ = attribute_edges(model, c, ROWS, method="relp", progress=False)
    b, _ = attribute_edges(model, c, ROWS, method="grad", progress=False)
    wa = {(e.source, e.target): e.weight for e in a.edges}
    wb = {(e.source, e.target): e.weight for e in b.edges}
    assert any(abs(wa[k] - wb.get(k, 0.0)) > 1e-5 for k in wa)


def test_edges_on_mlp_out_basis():
    model = tiny_llama()
    c = make_circuit(model, "blocks.{L}.hook_mlp_out", width=model.cfg.d_model)
    with_edges, _ = attribute_edges(model, c, ROWS, progress=False)
    assert with_edges.edges


def test_edges_bad_input():
    model = tiny_llama()
    c = make_circuit(model)
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
    c, _ = attribute_edges(model, make_circuit(model), ROWS, progress=False)
    pruned = prune_edges(c, 0.3)
    assert len(pruned.edges) == round(0.3 * len(c.edges))
    assert min(abs(e.weight) for e in pruned.edges) >= sorted(abs(e.weight) for e in c.edges)[-len(pruned.edges)]
    used = {e.source for e in pruned.edges} | {e.target for e in pruned.edges}
    assert used == set(range(len(pruned.nodes)))  # no isolated node left
    with pytest.raises(RelPLensError, match="keep_fraction"):
        prune_edges(c, 0)
