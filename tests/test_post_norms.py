"""Edges, input/output edges and head splits through norms after the MLP and attention (Gemma 2/3, issue #23).

A tiny random Gemma 3 (RMSNorm before and after attention and the MLP, ``1 + w`` weights) on a HookedTransformer
(TransformerLens' own Gemma conversion) and on a TransformerBridge, and Gemma 3 270M (slow). Every weight is
compared with a brute force that knows nothing of W_out or of the norms: the Jacobian (``torch.autograd.functional``)
of the model with every intermediate ``hook_post`` held at its clean value, in RelP mode (the norm scales frozen
by the LN rule) or plain (the grad method: the true gradient, the norms' full Jacobian).
"""

from __future__ import annotations

import pytest
import torch

import relp_lens
from relp_lens.circuits.edges import attribute_edges
from relp_lens.circuits.heads import attribute_head_splits, edge_key, embedding_key
from relp_lens.circuits.io_edges import attribute_io_edges
from relp_lens.core import backends, structure
from relp_lens.core.relp_mode import RelPConfig, relp

from helpers import (AGREEMENT_ROWS, brute_force_edges, capture, edge_circuit, edge_matrix, hooks_left, tiny_gemma3,
                     token_id)

ROWS = [AGREEMENT_ROWS[0], AGREEMENT_ROWS[2]]  # both 6 tokens with BOS: positions are aligned columns
BACKENDS = ["hooked", "bridge"] if backends.hooked_transformer_available() else ["bridge"]
METHODS = ["relp", "grad"]
POST = "blocks.{L}.mlp.hook_post"


@pytest.fixture(scope="module", params=BACKENDS)
def gemma(request):
    return tiny_gemma3(request.param)


def _ctx(use_relp: bool):
    return (lambda model: relp(model)) if use_relp else (lambda model: torch.enable_grad())


def _pinned(keep: dict, v_at: str, v, pinned) -> list:
    """Forward hooks: ``v_at`` set to ``v``, the hooks ``pinned`` set to their clean values ``keep``."""
    return [(v_at, lambda x, hook: v)] + [(h, lambda x, hook, h=h: keep[h]) for h in pinned]


def _metric_grads(model, tokens, hooks, good, bad, use_relp):
    """∇̃m (m = clean − patch answer logit) at every hook of ``hooks``, in the full model."""
    store = {}

    def keep(name):
        def hook(x, hook):
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            store[name] = x
            return x

        return hook

    with torch.enable_grad(), _ctx(use_relp)(model), backends.hooks(model, fwd_hooks=[(h, keep(h)) for h in hooks]):
        logits = model(tokens)
        return torch.autograd.grad(logits[0, -1, good] - logits[0, -1, bad], [store[h] for h in hooks])


def brute_io_edges(model, circuit, rows, use_relp, answer=token_id):
    """Input edges ``[pos, node]`` and output edges ``[node]`` by Jacobians: ``w(E_p → d) = Σ ∇̃_d m · ∂d/∂e_p ·
    Δe_p`` with every ``hook_post`` before ``d`` pinned, ``w(u → out) = ∂m/∂u · Δu`` with every other
    ``hook_post`` of the model pinned (Δ = patch − clean)."""
    hooks = circuit.hook_names
    every = [POST.format(L=l) for l in range(model.cfg.n_layers)]  # every MLP, in the circuit or not
    n, length = len(circuit.nodes), model.to_tokens(rows[0]["clean_prefix"]).shape[1]
    w_in, w_out = torch.zeros(length, n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    ctx = _ctx(use_relp)
    for row in rows:
        clean, patch = model.to_tokens(row["clean_prefix"]), model.to_tokens(row["patch_prefix"])
        good, bad = answer(model, row["clean_answer"]), answer(model, row["patch_answer"])
        cc, pc = capture(model, clean, every + ["hook_embed"]), capture(model, patch, every + ["hook_embed"])
        grads = _metric_grads(model, clean, hooks, good, bad, use_relp)
        d_emb = (pc["hook_embed"] - cc["hook_embed"])[0]  # [pos, d_model]
        for k, node in enumerate(circuit.nodes):
            def m_of(v, node=node):
                fwd = _pinned(cc, hooks[node.layer], v, [h for h in every if h != hooks[node.layer]])
                with ctx(model), backends.hooks(model, fwd_hooks=fwd):
                    logits = model(clean)
                return logits[0, -1, good] - logits[0, -1, bad]

            def d_of(e, node=node):
                got = {}

                def grab(x, hook):
                    got["d"] = x
                    return x

                fwd = _pinned(cc, "hook_embed", e, every[:node.layer]) + [(hooks[node.layer], grab)]
                with ctx(model), backends.hooks(model, fwd_hooks=fwd):
                    model(clean, stop_at_layer=node.layer + 1)
                return got["d"][0, :, node.index]  # [pos]

            with torch.enable_grad():
                J = torch.autograd.functional.jacobian(m_of, cc[hooks[node.layer]])[0]  # [pos, width]
                Je = torch.autograd.functional.jacobian(d_of, cc["hook_embed"])[:, 0]  # [pos_d, pos_e, d_model]
            delta = (pc[hooks[node.layer]] - cc[hooks[node.layer]])[0]
            contrib = (J * delta)[:, node.index]
            w_out[k] += (contrib.sum() if node.pos is None else contrib[node.pos]).item()
            gd = grads[node.layer][0, :, node.index]  # [pos_d]
            if node.pos is not None:
                gd = gd * (torch.arange(len(gd)) == node.pos)
            w_in[:, k] += torch.einsum("p,pqe,qe->q", gd, Je, d_emb).double()
    return w_in / len(rows), w_out / len(rows)


def brute_head_share(model, circuit, rows, u, d, block, head, use_relp, answer=token_id):
    """The share of edge ``u → d`` whose last head is ``(block, head)``: the edge with every later head and the
    other heads of ``block`` held (their ``hook_z`` detached), minus the edge with every head from ``block``
    on held; and the residual share (every head held). Jacobians of ``d`` in ``u``'s ``hook_post`` with the
    ``hook_post`` between them pinned, as :func:`helpers.brute_force_edges`."""
    hooks, n_heads = circuit.hook_names, model.cfg.n_heads
    z = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]

    def edge(held):  # held(l) -> [n_heads] bool: heads of block l whose output is a constant
        total = 0.0
        for row in rows:
            clean, patch = model.to_tokens(row["clean_prefix"]), model.to_tokens(row["patch_prefix"])
            good, bad = answer(model, row["clean_answer"]), answer(model, row["patch_answer"])
            cc, pc = capture(model, clean, hooks), capture(model, patch, hooks)
            gd = _metric_grads(model, clean, hooks, good, bad, use_relp)[d.layer][0, d.pos, d.index]

            def d_of(v):
                got = {}

                def grab(x, hook):
                    got["d"] = x
                    return x

                fwd = _pinned(cc, hooks[u.layer], v, hooks[u.layer + 1:d.layer])
                fwd += [(z[l], lambda x, hook, m=held(l): torch.where(m[None, None, :, None].to(x.device),
                                                                        x.detach(), x)) for l in range(len(z))]
                fwd.append((hooks[d.layer], grab))
                with _ctx(use_relp)(model), backends.hooks(model, fwd_hooks=fwd):
                    model(clean, stop_at_layer=d.layer + 1)
                return got["d"][0, d.pos, d.index]

            with torch.enable_grad():
                J = torch.autograd.functional.jacobian(d_of, cc[hooks[u.layer]])[0, u.pos, u.index]
            total += float(gd * J * (pc[hooks[u.layer]] - cc[hooks[u.layer]])[0, u.pos, u.index])
        return total / len(rows)

    only = edge(lambda l: torch.tensor([l > block or (l == block and h != head) for h in range(n_heads)]))
    none = edge(lambda l: torch.full((n_heads,), l >= block))
    return only - none, edge(lambda l: torch.ones(n_heads, dtype=torch.bool))


def test_tiny_gemma3_backends_agree_and_read_through_every_post_norm(gemma):
    """The tiny Gemma 3 is one function on both backends, and the structure check reads every block's
    ``hook_mlp_out`` and ``hook_attn_out`` through its post-norm (nothing broken, nothing refused)."""
    ref = tiny_gemma3("bridge")
    tokens = gemma.to_tokens(ROWS[0]["clean_prefix"])
    with torch.no_grad():
        torch.testing.assert_close(gemma(tokens), ref(tokens), rtol=1e-4, atol=1e-4)
    assert structure.structure_report(gemma) == []
    assert structure.post_normed(gemma) == {(s, l) for s in ("mlp", "attn") for l in range(3)}
    structure.check_structure(gemma, mlp=True, embed=True, heads=True)


@pytest.mark.parametrize("method", METHODS)
def test_edges_equal_the_brute_force(gemma, method):
    circuit = edge_circuit(gemma)
    got = edge_matrix(attribute_edges(gemma, circuit, ROWS, method=method, progress=False))
    W = brute_force_edges(gemma, circuit, ROWS, use_relp=method == "relp")
    assert (W != 0).sum() >= 10  # not comparing zeros with zeros
    torch.testing.assert_close(got, W, rtol=1e-4, atol=1e-4 * W.abs().max().item())
    assert hooks_left(gemma) == []


def test_relp_without_the_ln_rule_reads_the_norms_full_jacobian(gemma):
    """RelP with the LN rule off: the post-norm scales are not frozen, and the edges take the norm's true
    Jacobian (as the grad method does) — they equal the brute force in that mode."""
    rules = RelPConfig(ln=False)
    circuit = edge_circuit(gemma)
    got = edge_matrix(attribute_edges(gemma, circuit, ROWS, rules=rules, progress=False))
    W = brute_force_edges(gemma, circuit, ROWS, use_relp=True, rules=rules)
    torch.testing.assert_close(got, W, rtol=1e-4, atol=1e-4 * W.abs().max().item())


def test_reading_w_out_rows_at_hook_mlp_out_would_be_wrong(gemma, monkeypatch):
    """The post-norm matters: without it (a neuron read as a·W_out at hook_mlp_out) the edges are far off."""
    circuit = edge_circuit(gemma)
    W = brute_force_edges(gemma, circuit, ROWS, use_relp=True)
    monkeypatch.setattr(structure.MLPPostNorms, "pull", lambda self, block, g: g)
    got = edge_matrix(attribute_edges(gemma, circuit, ROWS, progress=False))
    big = W.abs() >= W.abs().max() / 10
    assert ((got - W).abs()[big] / W.abs()[big]).max() > 0.1


@pytest.mark.parametrize("method", METHODS)
def test_io_edges_equal_the_brute_force(gemma, method):
    circuit = edge_circuit(gemma)
    io = attribute_io_edges(gemma, circuit, ROWS, method=method, progress=False).io_edges
    w_in, w_out = brute_io_edges(gemma, circuit, ROWS, use_relp=method == "relp")
    assert (w_out != 0).sum() >= 5 and (w_in != 0).sum() >= 6  # paired: Δe is non-zero where the tokens differ
    torch.testing.assert_close(io.output, w_out, rtol=1e-4, atol=1e-4 * w_out.abs().max().item())
    torch.testing.assert_close(io.input, w_in, rtol=1e-4, atol=1e-4 * w_in.abs().max().item())
    assert hooks_left(gemma) == []


@pytest.mark.parametrize("method", METHODS)
def test_head_shares_equal_the_brute_force(gemma, method):
    """Edges from layer 0 into layer 2 cross attention layers 1 and 2 (each behind ln1_post): every head's
    share (paths whose last head it is) and the residual share equal brute-force Jacobians with heads held."""
    circuit = attribute_edges(gemma, edge_circuit(gemma), ROWS, method=method, progress=False)
    split = attribute_head_splits(gemma, circuit, ROWS, method=method, top=None, progress=False)
    nodes = circuit.nodes
    checked = 0
    for e in [e for e in circuit.edges if nodes[e.source].layer == 0 and nodes[e.target].layer == 2
              and nodes[e.source].pos is not None and nodes[e.target].pos is not None][:2]:
        u, d = nodes[e.source], nodes[e.target]
        s = split.heads.edges[edge_key(u.label(), d.label())]
        got = {(l, h): w for l, h, w in s.heads}
        scale = abs(e.weight)
        for block in (1, 2):
            for head in range(gemma.cfg.n_heads):
                want, residual = brute_head_share(gemma, circuit, ROWS, u, d, block, head, method == "relp")
                assert got.get((block, head), 0.0) == pytest.approx(want, rel=1e-4, abs=1e-4 * scale)
                checked += abs(want) > 1e-3 * scale
        assert s.residual == pytest.approx(residual, rel=1e-4, abs=1e-4 * scale)
    assert checked >= 4  # real, non-zero shares
    assert hooks_left(gemma) == []


def test_head_splits_sum_to_the_edges_and_io_edges(gemma):
    """Splits of neuron → neuron, embedding → neuron, neuron → out and embedding → out edges sum to them."""
    circuit = attribute_edges(gemma, edge_circuit(gemma), ROWS, progress=False)
    circuit = attribute_io_edges(gemma, circuit, ROWS, progress=False)
    split = attribute_head_splits(gemma, circuit, ROWS, top=None, progress=False).heads.edges
    io, label = circuit.io_edges, [n.label() for n in circuit.nodes]
    want = {edge_key(label[e.source], label[e.target]): e.weight for e in circuit.edges}
    want.update({edge_key(embedding_key(io.positions[r]), label[n]): float(io.input[r, n])
                 for r, n in io.input.nonzero().tolist()})
    want.update({edge_key(label[j], "out"): float(w) for j, w in enumerate(io.output.tolist()) if w})
    scale = max(abs(w) for w in want.values())
    for key, w in want.items():
        s = split[key]
        assert s.residual + sum(x for *_, x in s.heads) + s.other == pytest.approx(w, abs=1e-5 * scale), key


@pytest.mark.slow
@pytest.mark.xdist_group("gemma3")
@pytest.mark.parametrize("backend", BACKENDS)
def test_gemma3_270m_edges_io_edges_and_head_shares_equal_the_brute_force(backend):
    """Gemma 3 270M (18 blocks, every one with ln1_post and ln2_post): a 6-node circuit over blocks 0-2 on one
    agreement pair; its edges (RelP and grad), input/output edges and one edge's head shares in block 2 equal
    the brute force."""
    model = relp_lens.load_model("gemma3-270m", backend=backend)
    rows = [dict(clean_prefix="The keys to the cabinet", patch_prefix="The key to the cabinet",
                 clean_answer=" are", patch_answer=" is")]
    attr = relp_lens.attribute(model, rows, basis=POST, progress=False)
    hooks = [POST.format(L=l) for l in range(3)]
    from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts

    s = attr.mean()  # [layer, pos, node]
    nodes = []
    for l in range(3):  # the two strongest neurons of each of blocks 0-2 at the last two positions
        top = s[l, -2:].abs().flatten().topk(2).indices
        nodes += [CircuitNode(l, attr.positions[-2 + int(i) // s.shape[2]], int(i) % s.shape[2]) for i in top]
    length = model.to_tokens(rows[0]["clean_prefix"]).shape[1]
    nodes = [CircuitNode(n.layer, n.pos % length, n.index) for n in nodes]  # absolute: the brute force indexes
    circuit = Circuit(nodes=nodes, basis="mlp_post", hook_names=hooks, node_width=model.cfg.d_mlp,
                      model=model_facts(model))
    edged = attribute_edges(model, circuit, rows, progress=False)
    answer = lambda model, text: model.to_single_token(text)  # noqa: E731  (Gemma's tokens keep the space)
    W = brute_force_edges(model, circuit, rows, use_relp=True, answer=answer)
    assert (W != 0).sum() >= 8
    torch.testing.assert_close(edge_matrix(edged), W, rtol=1e-4, atol=1e-4 * W.abs().max().item())
    io = attribute_io_edges(model, circuit, rows, progress=False).io_edges
    w_in, w_out = brute_io_edges(model, circuit, rows, use_relp=True, answer=answer)
    torch.testing.assert_close(io.output, w_out, rtol=1e-4, atol=1e-4 * w_out.abs().max().item())
    torch.testing.assert_close(io.input, w_in, rtol=1e-4, atol=1e-4 * w_in.abs().max().item())
    e = max((e for e in edged.edges if nodes[e.source].layer == 0 and nodes[e.target].layer == 2),
            key=lambda e: abs(e.weight))
    u, d = nodes[e.source], nodes[e.target]
    split = attribute_head_splits(model, edged, rows, top=None, progress=False).heads.edges
    s = split[edge_key(u.label(), d.label())]
    got = {(l, h): w for l, h, w in s.heads}
    shares = 0.0
    for head in range(model.cfg.n_heads):
        want, residual = brute_head_share(model, edged, rows, u, d, 2, head, True, answer)
        assert got.get((2, head), 0.0) == pytest.approx(want, rel=1e-4, abs=1e-4 * abs(e.weight))
        shares += abs(want)
    assert s.residual == pytest.approx(residual, rel=1e-4, abs=1e-4 * abs(e.weight))
    assert shares > 1e-2 * abs(e.weight)  # block 2's heads do carry part of the edge
    grad = edge_matrix(attribute_edges(model, circuit, rows, method="grad", progress=False))
    W = brute_force_edges(model, circuit, rows, use_relp=False, answer=answer)  # the true gradient
    torch.testing.assert_close(grad, W, rtol=1e-4, atol=1e-4 * W.abs().max().item())
    assert hooks_left(model) == []
