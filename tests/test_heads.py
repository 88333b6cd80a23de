"""Head splits of edges: they sum to every edge's weight, and one head's share matches brute force."""

import pytest
import torch

import relp_lens
from relp_lens import RelPLensError
from relp_lens.circuits.edges import attribute_edges, prune_edges
from relp_lens.circuits.heads import attribute_head_splits, edge_key, embedding_key
from relp_lens.circuits.io_edges import attribute_io_edges
from relp_lens.core.relp_mode import RelPConfig, relp
import reference_heads
from helpers import AGREEMENT_ROWS, hooks_left, same_length_rows, tiny_gemma, tiny_gpt2, tiny_llama

RULES = {"AH": RelPConfig(attention=True), "default": RelPConfig()}


def full_graph(model, rows, rules, k=12):
    attr = relp_lens.attribute(model, rows, rules=rules, progress=False)
    circuit = relp_lens.select_top_k(attr, model, k)
    circuit = attribute_edges(model, circuit, rows, rules=rules, progress=False)
    circuit = attribute_io_edges(model, circuit, rows, rules=rules, progress=False)
    return circuit, circuit.io_edges


def total(split):
    return split.residual + sum(w for *_, w in split.heads) + split.other


@pytest.mark.hooked
@pytest.mark.parametrize("rules", list(RULES), ids=list(RULES))
@pytest.mark.parametrize("builder", [tiny_llama, tiny_gpt2, tiny_gemma], ids=["llama", "gpt2", "gemma2"])
def test_splits_sum_to_every_edge(builder, rules):
    """residual + Σ heads = the edge weight, for neuron → neuron, embedding → neuron, neuron → output and
    embedding → output edges (paired data, GQA + rotary and learned positions, Gemma 2's norms after attention
    and the MLP, AH rule on and off)."""
    model = builder()
    rows = same_length_rows(model)[:3]
    circuit, io = full_graph(model, rows, RULES[rules])
    split = attribute_head_splits(model, circuit, rows, rules=RULES[rules], top=3, progress=False)
    edges = split.heads.edges
    assert split.stats["heads"].n_edges == len(edges) and split.stats["heads"].push_passes >= 1
    assert split.stats["edges"] is circuit.stats["edges"] and circuit.heads is None  # earlier steps' stats kept
    assert edges[next(iter(edges))].total == pytest.approx(total(edges[next(iter(edges))]))
    label = [n.label() for n in circuit.nodes]
    expected = {edge_key(label[e.source], label[e.target]): e.weight for e in circuit.edges}
    expected.update({edge_key(embedding_key(io.positions[r]), label[n]): float(io.input[r, n])
                     for r, n in io.input.nonzero().tolist()})
    expected.update({edge_key(label[j], "out"): float(w) for j, w in enumerate(io.output.tolist()) if w})
    expected.update({edge_key(embedding_key(io.positions[r]), "out"): float(w)
                     for r, w in enumerate(io.direct.tolist()) if w})
    assert set(edges) == set(expected)
    scale = max(abs(w) for w in expected.values())
    for key, w in expected.items():
        assert total(edges[key]) == pytest.approx(w, abs=2e-5 * scale), key
        assert len(edges[key].heads) <= 3
    # heads at or after the target's block carry nothing into a neuron (attention of block t precedes MLP t)
    for e in circuit.edges[:20]:
        t = circuit.nodes[e.target].layer
        assert all(l <= t for l, _, _ in edges[edge_key(label[e.source], label[e.target])].heads)
    totals = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64)
    for l, h, w in split.heads.totals:
        totals[l, h] = w
    assert totals.sum().item() == pytest.approx(sum(total(s) - s.residual for s in edges.values()), abs=1e-6)
    assert hooks_left(model) == []


def brute_share(model, rules, prompt, u, d, block, head):
    """Brute force, one prompt, zero baseline: the part of w(u → d) whose last head is ``(block, head)`` =
    the edge with every later head and the other heads of ``block`` constant, minus the edge with every head
    from ``block`` on constant (MLP outputs constant throughout, as for edges)."""
    tokens = model.to_tokens(prompt)
    names = [f"blocks.{l}.mlp.hook_post" for l in range(model.cfg.n_layers)]
    acts = {}

    def grab(x, hook):
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        acts[hook.name] = x
        return x

    with torch.enable_grad(), relp(model, **vars(rules)), model.hooks(fwd_hooks=[(n, grab) for n in names]):
        logit = model(tokens)[0, -1, model.to_single_token(" are")]
        grad_d = torch.autograd.grad(logit, acts[names[d.layer]])[0][0, d.pos, d.index]
    a_u = acts[names[u.layer]][0, u.pos, u.index].detach()

    def edge(frozen):  # frozen(l) -> mask [n_heads] of heads made constant at block l
        leaves, live = {}, {}

        def cut(x, hook):
            leaves[hook.name] = x.detach().requires_grad_(True)
            return leaves[hook.name]

        def freeze(x, hook):
            l = int(hook.name.split(".")[1])
            mask = frozen(l)[None, None, :, None]
            return torch.where(mask, x.detach(), x)

        def keep(x, hook):
            live[hook.name] = x

        hooks = [(f"blocks.{l}.hook_mlp_out", cut) for l in range(model.cfg.n_layers)]
        hooks += [(f"blocks.{l}.attn.hook_z", freeze) for l in range(model.cfg.n_layers)]
        hooks += [(names[d.layer], keep)]
        with torch.enable_grad(), relp(model, **vars(rules)), model.hooks(fwd_hooks=hooks):
            model(tokens)
            out = grad_d * live[names[d.layer]][0, d.pos, d.index]
            g = torch.autograd.grad(out, leaves[f"blocks.{u.layer}.hook_mlp_out"])[0][0, u.pos]
        return float(g @ model.blocks[u.layer].mlp.W_out[u.index] * a_u)

    n = model.cfg.n_heads
    only = edge(lambda l: torch.tensor([l > block or (l == block and h != head) for h in range(n)]))
    none = edge(lambda l: torch.full((n,), l >= block))
    residual = edge(lambda l: torch.ones(n, dtype=torch.bool))
    return only - none, residual


@pytest.mark.hooked
@pytest.mark.parametrize("rules", list(RULES), ids=list(RULES))
def test_one_heads_share_matches_brute_force(rules):
    """A layer-0 neuron → layer-2 neuron edge passes through two attention layers; the share credited to
    each head (paths whose last head it is) and the residual share match brute-force gradients."""
    model = tiny_llama()
    prompt = "The keys to the cabinet"
    attr = relp_lens.attribute(model, [prompt], [" are"], metric="logit", baseline="zero", rules=RULES[rules],
                               progress=False)
    circuit = relp_lens.select_top_k(attr, model, 30)
    circuit = attribute_edges(model, circuit, attr.prompts, rules=RULES[rules], progress=False)
    e = next(e for e in circuit.edges
             if circuit.nodes[e.source].layer == 0 and circuit.nodes[e.target].layer == 2)
    u, d = circuit.nodes[e.source], circuit.nodes[e.target]
    split = attribute_head_splits(model, circuit, attr.prompts, rules=RULES[rules], top=None, progress=False)
    s = split.heads.edges[edge_key(u.label(), d.label())]
    got = {(l, h): w for l, h, w in s.heads}
    checked = 0
    for block in (1, 2):
        for head in range(model.cfg.n_heads):
            want, residual = brute_share(model, RULES[rules], prompt, u, d, block, head)
            assert got.get((block, head), 0.0) == pytest.approx(want, abs=1e-6 + 1e-4 * abs(e.weight))
            checked += abs(want) > 1e-8
    assert s.residual == pytest.approx(residual, abs=1e-6 + 1e-4 * abs(e.weight))
    assert checked >= 4  # the test compares real, non-zero shares
    assert total(s) == pytest.approx(e.weight, rel=1e-4)


@pytest.mark.hooked
def test_splits_survive_pruning_and_files(tmp_path):
    model = tiny_llama()
    rows = same_length_rows(model)[:2]
    circuit, _ = full_graph(model, rows, RelPConfig())
    split = attribute_head_splits(model, circuit, rows, progress=False)
    pruned = prune_edges(split, 0.2)
    label = [n.label() for n in pruned.nodes]
    keys = set(pruned.heads.edges)
    assert {edge_key(label[e.source], label[e.target]) for e in pruned.edges} <= keys
    for key in keys:  # both ends of every kept split are in the pruned graph
        assert all(end in label or end.startswith("E@") or end == "out" for end in key.split(" -> ")), key
    listed = sum(w for s in pruned.heads.edges.values() for *_, w in s.heads)
    assert sum(w for *_, w in pruned.heads.totals) == pytest.approx(listed)  # totals of what remains
    assert pruned.heads.totals_exact == all(s.other == 0 for s in pruned.heads.edges.values())
    with pytest.warns(DeprecationWarning, match="HeadSplits"):  # the dict it replaced: read-only, deprecated
        assert pruned.heads["totals"] == pruned.heads.to_dict()["totals"]
    path = split.save(tmp_path / "c.json")
    again = relp_lens.Circuit.load(path)
    assert again.heads == split.heads
    bad = split.to_dict()
    bad["heads"]["edges"] = {"no arrow": {"residual": 0, "heads": [], "other": 0}}
    with pytest.raises(RelPLensError, match="heads: malformed"):
        relp_lens.Circuit.from_dict(bad)
    fresh = attribute_edges(model, split, rows, progress=False)
    assert fresh.heads is None  # new edge weights: the old splits are dropped, not kept stale


@pytest.mark.hooked
def test_head_split_errors():
    model = tiny_llama()
    rows = same_length_rows(model)[:2]
    attr = relp_lens.attribute(model, rows, progress=False)
    circuit = relp_lens.select_top_k(attr, model, 5)
    with pytest.raises(RelPLensError, match="no edges to split"):
        attribute_head_splits(model, circuit, rows, progress=False)
    with pytest.raises(RelPLensError, match="top"):
        attribute_head_splits(model, circuit, rows, top=-1, progress=False)
    assert hooks_left(model) == []


@pytest.mark.hooked
def test_partial_basis_edges_hold_the_other_mlps_constant_too():
    """A basis of blocks 0 and 2 only: edges (and their splits) are direct effects with block 1's MLP constant
    as well, so the splits still sum to the edges."""
    model = tiny_llama()
    rows = same_length_rows(model)[:2]
    basis = ["blocks.0.mlp.hook_post", "blocks.2.mlp.hook_post"]
    attr = relp_lens.attribute(model, rows, basis=basis, progress=False)
    circuit = attribute_edges(model, relp_lens.select_top_k(attr, model, 10), rows, progress=False)
    assert circuit.edges
    split = attribute_head_splits(model, circuit, rows, top=None, progress=False)
    label = [n.label() for n in circuit.nodes]
    for e in circuit.edges:
        assert total(split.heads.edges[edge_key(label[e.source], label[e.target])]) == pytest.approx(
            e.weight, rel=1e-4, abs=1e-7)


@pytest.mark.hooked
def test_splits_need_the_prompts_the_io_edges_used():
    model = tiny_llama()
    rows = same_length_rows(model)
    circuit, _ = full_graph(model, rows[:2], RelPConfig())
    other = [r for r in AGREEMENT_ROWS if r not in rows][:1]  # another token length: other aligned positions
    with pytest.raises(RelPLensError, match="same prompts"):
        attribute_head_splits(model, circuit, other, progress=False)


def unpaired_graph(model, rows, rules, k=12):
    """The full graph on unpaired prompts (zero baseline, the logit of the clean answer)."""
    attr = relp_lens.attribute(model, [r["clean_prefix"] for r in rows], [r["clean_answer"] for r in rows],
                               metric="logit", baseline="zero", rules=rules, progress=False)
    circuit = relp_lens.select_top_k(attr, model, k)
    circuit = attribute_edges(model, circuit, attr.prompts, rules=rules, progress=False)
    circuit = attribute_io_edges(model, circuit, attr.prompts, rules=rules, progress=False)
    return circuit, attr.prompts


def assert_same_splits(got, want, rel=1e-5):
    """Every edge's residual share and every head's share agree to ``rel`` of the edge's largest share."""
    assert got.edges.keys() == want.edges.keys() and got.edges
    for key, w in want.edges.items():
        g = got.edges[key]
        hg, hw = {(l, h): x for l, h, x in g.heads}, {(l, h): x for l, h, x in w.heads}
        scale = max([abs(w.residual), *map(abs, hw.values())]) or 1.0
        assert abs(g.residual - w.residual) <= rel * scale, key
        for lh in hg.keys() | hw.keys():
            assert abs(hg.get(lh, 0.0) - hw.get(lh, 0.0)) <= rel * scale, (key, lh)
    tg, tw = ({(l, h): x for l, h, x in s.totals} for s in (got, want))
    scale = max(map(abs, tw.values()))
    assert all(abs(tg.get(lh, 0.0) - tw.get(lh, 0.0)) <= rel * scale for lh in tg.keys() | tw.keys())


@pytest.mark.hooked
@pytest.mark.parametrize("data", ["paired", "unpaired"])
@pytest.mark.parametrize("rules", list(RULES), ids=list(RULES))
@pytest.mark.parametrize("builder", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_splits_equal_the_reference_implementation(builder, rules, data):
    """The vectorised splits equal the per-edge forward-mode implementation they replaced
    (tests/reference_heads.py), every head of every edge, over several batches and source chunks."""
    model = builder()
    rows = same_length_rows(model)[:3]
    if data == "paired":
        circuit, _ = full_graph(model, rows, RULES[rules])
    else:
        circuit, rows = unpaired_graph(model, rows, RULES[rules])
    options = dict(rules=RULES[rules], top=None, batch_size=2, edge_batch=5, progress=False)
    got = attribute_head_splits(model, circuit, rows, **options)
    want = reference_heads.attribute_head_splits(model, circuit, rows, **options)
    assert_same_splits(got.heads, want.heads)
    assert hooks_left(model) == []
