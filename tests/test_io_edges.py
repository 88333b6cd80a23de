"""Input and output edges: with every neuron in the circuit they account for the metric and every node's score."""

import pytest
import torch

import relp_lens
from relp_lens import RelPLensError
from relp_lens.circuits.circuit import Circuit, CircuitNode, IOEdges, model_facts
from relp_lens.circuits.edges import attribute_edges
from relp_lens.circuits.io_edges import attribute_io_edges
from relp_lens.core.relp_mode import RelPConfig
from helpers import AGREEMENT_ROWS, hooks_left, same_length_rows, tiny_gpt2, tiny_llama

ALL_RULES = RelPConfig(attention=True)
PROMPT = "The keys to the cabinet"


def every_neuron(model, attr):
    """A circuit of every neuron at every position, with its RelP score."""
    s = attr.mean()  # [layer, pos, node]
    nodes = [CircuitNode(l, attr.positions[p], i, score=float(s[l, p, i]))
             for l in range(s.shape[0]) for p in range(s.shape[1]) for i in range(s.shape[2])]
    return Circuit(nodes=nodes, basis="mlp_post", hook_names=attr.hook_names, node_width=s.shape[2],
                   metric=attr.metric, baseline=attr.baseline, model=model_facts(model))


@pytest.mark.hooked
@pytest.mark.parametrize("builder", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_edges_account_for_the_metric_and_every_score(builder):
    """Bias-free, all rules and the AH rule, zero baseline: m = Σ_u w(u→out) + Σ_p w(E_p→out), and for every
    node d, score(d) = Σ_u w(u→d) + Σ_p w(E_p→d) (u over every earlier neuron)."""
    model = builder()
    attr = relp_lens.attribute(model, [PROMPT], [" are"], metric="logit", baseline="zero", rules=ALL_RULES,
                               progress=False)
    circuit = every_neuron(model, attr)
    with_io = attribute_io_edges(model, circuit, attr.prompts, rules=ALL_RULES, progress=False)
    io = with_io.io_edges
    assert circuit.io_edges is None and with_io.stats["io_edges"].n_prompts == 1  # the input is left unchanged
    assert with_io.stats["io_edges"].backward_passes >= 2
    assert io.metric == pytest.approx(attr.metric_clean.mean().item(), rel=1e-5)
    total = io.output.sum().item() + io.direct.sum().item()
    assert total == pytest.approx(io.metric, rel=1e-4, abs=1e-5)
    edged = attribute_edges(model, circuit, attr.prompts, rules=ALL_RULES, progress=False)
    incoming = io.input.sum(0).clone()  # [node]
    for e in edged.edges:
        incoming[e.target] += e.weight
    scores = torch.tensor([n.score for n in circuit.nodes], dtype=torch.float64)
    scale = scores.abs().max().item()
    assert (incoming - scores).abs().max().item() < 1e-4 * scale
    assert hooks_left(model) == []


@pytest.mark.hooked
def test_paired_input_edges_are_zero_where_the_tokens_agree():
    """Paired data: Δe = e_patch − e_clean is zero where clean and patch share the token, so are its edges."""
    model = tiny_llama()
    rows = same_length_rows(model)[:3]
    attr = relp_lens.attribute(model, rows, progress=False)
    circuit = relp_lens.select_top_k(attr, model, 6)
    io = attribute_io_edges(model, circuit, rows, progress=False).io_edges
    tokens = [model.to_tokens(r["clean_prefix"])[0] for r in rows]
    patch = [model.to_tokens(r["patch_prefix"])[0] for r in rows]
    same = torch.stack([(t == p) for t, p in zip(tokens, patch)]).all(0)
    assert same.any() and (~same).any()
    assert io.input[same].abs().max().item() == 0 and io.direct[same].abs().max().item() == 0
    assert io.input[~same].abs().max().item() > 0


@pytest.mark.hooked
def test_mean_baseline_is_refused():
    model = tiny_llama()
    attr = relp_lens.attribute(model, [PROMPT, "The parents"], [" are", " are"], metric="logit", baseline="mean",
                               progress=False)
    circuit = relp_lens.select_top_k(attr, model, 3)
    with pytest.raises(RelPLensError, match="mean baseline"):
        attribute_io_edges(model, circuit, attr.prompts, progress=False)


@pytest.mark.hooked
def test_stored_in_the_circuit_file_and_kept_through_pruning(tmp_path):
    from relp_lens.circuits.edges import prune_edges

    model = tiny_llama()
    rows = same_length_rows(model)
    attr = relp_lens.attribute(model, rows, progress=False)
    circuit = attribute_edges(model, relp_lens.select_top_k(attr, model, 8), rows, progress=False)
    circuit = attribute_io_edges(model, circuit, rows, progress=False)
    io = circuit.io_edges
    circuit.save(tmp_path / "c.json")
    back = Circuit.load(tmp_path / "c.json").io_edges
    assert isinstance(back, IOEdges) and back == io
    assert torch.equal(back.input, io.input) and torch.equal(back.output, io.output)
    pruned = prune_edges(circuit, 0.3)
    kept = [circuit.nodes.index(nd) for nd in pruned.nodes]
    p_io = pruned.io_edges
    assert torch.equal(p_io.output, io.output[kept]) and torch.equal(p_io.input, io.input[:, kept])
    bad = dict(circuit.to_dict(), io_edges=dict(io.to_dict(), output=[1.0]))
    with pytest.raises(RelPLensError, match="1 output weights for 8 nodes"):
        Circuit.from_dict(bad)


@pytest.mark.hooked
def test_target_logit_edges_make_up_the_metric_edges(tmp_path):
    """logit_diff: the edges into the clean answer's logit minus those into the patch answer's are the metric's
    edges (neuron → out and embedding → out); they survive the file and pruning."""
    model = tiny_llama()
    rows = same_length_rows(model)[:3]
    attr = relp_lens.attribute(model, rows, progress=False)
    circuit = attribute_edges(model, relp_lens.select_top_k(attr, model, 10), rows, progress=False)
    circuit = attribute_io_edges(model, circuit, rows, progress=False)
    io = circuit.io_edges
    assert io.targets == ["clean answer logit", "patch answer logit"] and io.signs == [1.0, -1.0]
    combined = io.target_output[0] - io.target_output[1]
    assert torch.allclose(combined, io.output, atol=1e-6 * io.output.abs().max().item())
    assert torch.allclose(io.target_direct[0] - io.target_direct[1], io.direct, atol=1e-6)
    assert io.target_output[0].abs().sum() > 0 and io.target_output[1].abs().sum() > 0
    again = relp_lens.Circuit.load(circuit.save(tmp_path / "c.json"))
    back = again.io_edges
    assert back.targets == io.targets and torch.equal(back.target_output, io.target_output.double())
    pruned = relp_lens.prune_edges(again, 0.3)
    kept = [next(i for i, n in enumerate(circuit.nodes) if n.key == p.key) for p in pruned.nodes]
    small = pruned.io_edges
    assert torch.equal(small.target_output, io.target_output.double()[:, kept])
    from relp_lens.core import metrics
    from relp_lens.circuits.io_edges import metric_targets

    assert metric_targets(metrics.logit) == [] == metric_targets(metrics.logprob)  # one target / not a sum
