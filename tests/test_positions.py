"""Positions that mean the same token in every prompt (issue 9): mixed-length data counted from the end,
end-aligned mean ablation, missing positions as errors, and the other cases a researcher's own data hits."""

import json
import warnings

import pytest
import torch

import relp_lens
from relp_lens import RelPLensError, attribute
from relp_lens.circuits.ablation import Ablation, evaluate_circuit
from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts
from relp_lens.circuits.selection import select_top_k
from relp_lens.core.data import Prompts
from relp_lens.circuits.edges import attribute_edges
from relp_lens.core.exact import sample_nodes
from relp_lens.core.positions import Alignment, resolve
from helpers import AGREEMENT_ROWS, hooks_left, tiny_gpt2, tiny_llama

UNPAIRED = ["The keys to the cabinet", "The parents are", "The doctor near the doctors", "The author"]


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def test_alignment_rule():
    t = lambda *xs: torch.tensor(xs)  # noqa: E731
    same = Alignment.of([t(0, 5, 6), t(0, 5, 7)])
    assert not same.end_aligned and same.labels == [0, 1, 2] and same.n_shared == 2
    mixed = Alignment.of([t(0, 5, 6, 7, 8), t(0, 5, 9), t(0, 5, 6, 1)])
    assert mixed.end_aligned and mixed.n_shared == 2 and mixed.labels == [0, 1, -3, -2, -1]
    assert mixed.columns(3).tolist() == [0, 1, 4] and mixed.columns(5).tolist() == [0, 1, 2, 3, 4]
    # the shortest prompt keeps its last token in the end-counted tail
    short = Alignment.of([t(0, 5), t(0, 5, 6)])
    assert short.n_shared == 1 and short.labels == [0, -2, -1] and short.columns(2).tolist() == [0, 2]
    assert resolve(-1, 4) == 3 and resolve(3, 4) == 3 and resolve(4, 4) is None and resolve(-5, 4) is None
    with pytest.raises(RelPLensError, match="position 7 is not one of"):
        mixed.column(7)


def test_last_token_neuron_is_one_node_on_mixed_lengths(llama):
    """Case 1: the same last-token neuron was one node per prompt length; now it is one node at -1,
    its score the mean of every prompt's last-token score."""
    attr = attribute(llama, UNPAIRED, progress=False)
    assert attr.alignment.end_aligned and attr.positions[-1] == -1
    per = [attribute(llama, [p], progress=False) for p in UNPAIRED]
    last = torch.stack([a.scores[0, :, -1] for a in per]).mean(0)  # [layer, node]
    torch.testing.assert_close(attr.mean()[:, -1], last)
    top = attr.top_k(3000)
    layer, idx = 2, int(last[2].abs().argmax())
    assert sum(1 for (l, p, i), _ in top if (l, i) == (layer, idx) and p == -1) == 1
    # one column per meaning: nothing at an absolute position past the shared prefix
    assert all(p is None or p < attr.alignment.n_shared or p < 0 for (_, p, _), _ in top)


def test_reduce_mean_equals_mean_of_per_example_scores(llama):
    full = attribute(llama, AGREEMENT_ROWS, progress=False)
    red = attribute(llama, AGREEMENT_ROWS, reduce="mean", progress=False, batch_size=1)
    assert red.scores is None and red.reduced and red.score_sum.dtype == torch.float64
    torch.testing.assert_close(red.mean(), full.mean(), equal_nan=True)
    torch.testing.assert_close(red.mean_over_positions(), full.mean_over_positions())
    assert [n for n, _ in red.top_k(10)] == [n for n, _ in full.top_k(10)]
    assert red.counts.tolist() == [4, 4, 2, 2, 2, 4]
    c_red, c_full = select_top_k(red, llama, 20), select_top_k(full, llama, 20)
    assert c_red.keys == c_full.keys
    with pytest.raises(RelPLensError, match="reduce='mean'"):
        red.correlation(full)
    with pytest.raises(RelPLensError, match="use reduce='none'"):
        attribute(llama, AGREEMENT_ROWS, method="exact", nodes=[(0, 1, 0)], reduce="mean", progress=False)
    from relp_lens.views.plots import attribution_heatmap, top_neurons_bar

    attribution_heatmap(red)
    top_neurons_bar(red)


def test_memory_estimate_refuses_before_running(llama, monkeypatch):
    import relp_lens.core.attribution as A

    monkeypatch.setattr(A, "available_memory", lambda: 10_000)
    with pytest.raises(RelPLensError, match=r"needs about .* GiB .* reduce='mean'"):
        attribute(llama, AGREEMENT_ROWS * 50, progress=False)
    assert hooks_left(llama) == []
    est = A.memory_estimate(llama, [6] * 1000, ["h"] * 3, batch_size=16, reduce="none")
    assert est["scores"] == 1000 * 3 * 6 * 48 * 4
    assert A.memory_estimate(llama, [6] * 1000, ["h"] * 3, batch_size=16, reduce="mean")["scores"] == 3 * 6 * 48 * 8
    # one batch: the planner's calibrated numbers, as `relp-lens plan` prints them (one source for the estimate)
    from relp_lens.core.plan import plan

    parts = plan(llama, 1000, 6, batch_size=16)["attribution"]["parts"]
    assert est["batch"] == sum(parts[k] for k in ("activations", "logits", "reference", "unembed_temp")) > 0


def test_prompt_longer_than_context_is_an_error(llama, tmp_path):
    """Case 3: to_tokens truncated silently at n_ctx and the metric was read at the wrong token."""
    long = "The " + " ".join(["keys"] * 40)  # 42 tokens; n_ctx is 16
    with pytest.raises(RelPLensError, match=r"row 1: prompt has 42 tokens, more than the model's context of 16"):
        attribute(llama, ["The keys", long], progress=False)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"clean_prefix": "The keys"}) + "\n\n" + json.dumps({"clean_prefix": long}) + "\n")
    with pytest.raises(RelPLensError, match=r"d.jsonl:3: prompt has 42 tokens"):
        attribute(llama, Prompts.from_jsonl(path), progress=False)
    with pytest.raises(RelPLensError, match="far longer than the model's context"):
        attribute(llama, ["x" * 2_000_000], progress=False)
    assert hooks_left(llama) == []


def test_jsonl_errors_name_file_and_line(llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(AGREEMENT_ROWS[0]).encode() + b"\n" + b'{"clean_prefix": "The \xff"}\n')
    with pytest.raises(RelPLensError, match=r"bad.jsonl:2: not UTF-8 text"):
        Prompts.from_jsonl(bad)
    with pytest.raises(RelPLensError, match="is a folder"):
        Prompts.from_jsonl(tmp_path)
    rows = [dict(AGREEMENT_ROWS[0]), dict(AGREEMENT_ROWS[1], patch_prefix="The key to the")]
    path = tmp_path / "len.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RelPLensError, match=r"len.jsonl:2: clean prompt 'The parents' has 3 tokens"):
        attribute(llama, Prompts.from_jsonl(path), progress=False)
    path.write_text(json.dumps(dict(AGREEMENT_ROWS[0], clean_answer=" are is")) + "\n")
    with pytest.raises(RelPLensError, match=r"len.jsonl:1: answer ' are is' is 2 tokens"):
        attribute(llama, Prompts.from_jsonl(path), progress=False)


def _circuit(model, nodes, **kw):
    hooks = [f"blocks.{l}.mlp.hook_post" for l in range(model.cfg.n_layers)]
    return Circuit(nodes=[CircuitNode(*n) for n in nodes], basis="mlp_post", hook_names=hooks, node_width=48,
                   model=model_facts(model), **kw)


def test_evaluation_errors_on_a_position_a_prompt_lacks(llama):
    """Case 5: nodes past the end of short held-out prompts were silently ignored (faithfulness 0.153)."""
    c = _circuit(llama, [(1, 4, 3), (2, -1, 5)])
    with pytest.raises(RelPLensError, match=r"node L1/3@4 is at position 4, which the 3-token prompt 'The parents'"):
        evaluate_circuit(llama, c, AGREEMENT_ROWS)
    assert hooks_left(llama) == []
    with pytest.raises(RelPLensError, match=r"L1/3@-2 is at position -2, which the 3-token prompt .* one of the 2"):
        evaluate_circuit(llama, _circuit(llama, [(1, -2, 3)]), AGREEMENT_ROWS)
    ok = _circuit(llama, [(1, 1, 3), (2, -1, 5)])
    ev = evaluate_circuit(llama, ok, AGREEMENT_ROWS, warn=False)  # every prompt has 1 and -1
    assert ev.ablation == "mean" and ev.n_prompts == 4


def test_mean_ablation_is_end_aligned_by_hand(llama):
    """Mean ablation of mixed-length paired data: the patch prompts' mean at each end-aligned position."""
    abl = Ablation.build(llama, ["blocks.1.mlp.hook_post"], AGREEMENT_ROWS, mode="mean")
    acts = []
    for r in AGREEMENT_ROWS:
        _, cache = llama.run_with_cache(llama.to_tokens(r["patch_prefix"]))
        acts.append(cache["blocks.1.mlp.hook_post"][0])
    torch.testing.assert_close(abl.means[0][-1], torch.stack([a[-1] for a in acts]).mean(0))
    # 3-token prompts: 'BOS The' is the shared prefix, so only the 6-token prompts reach -2 ... -4
    torch.testing.assert_close(abl.means[0][-2], (acts[0][-2] + acts[2][-2]) / 2)
    torch.testing.assert_close(abl.means[0][2], (acts[0][2] + acts[2][2]) / 2)
    torch.testing.assert_close(abl.means[0][1], torch.stack([a[1] for a in acts]).mean(0))


def test_zero_and_counterfactual_ablation_by_hand(llama):
    rows = [AGREEMENT_ROWS[0], AGREEMENT_ROWS[2]]
    c = _circuit(llama, [(1, -1, 3)])
    hooks = c.hook_names
    good, bad = llama.to_single_token("are"), llama.to_single_token("is")

    def metric_with(row, value_of):
        def patch(x, hook):
            keep = x[:, -1, 3].clone() if hook.name == "blocks.1.mlp.hook_post" else None
            x = value_of(hook.name, x)
            if keep is not None:
                x[:, -1, 3] = keep
            return x
        with torch.no_grad(), llama.hooks(fwd_hooks=[(h, patch) for h in hooks]):
            logits = llama(llama.to_tokens(row["clean_prefix"]))[0, -1]
        sign = 1 if row["clean_answer"] == " are" else -1
        return sign * (logits[good] - logits[bad]).item()

    zero = evaluate_circuit(llama, c, rows, ablation="zero", warn=False)
    f_c = sum(metric_with(r, lambda n, x: torch.zeros_like(x)) for r in rows) / 2
    assert zero["f_circuit"] == pytest.approx(f_c, rel=1e-4, abs=1e-5) and zero["ablation"] == "zero"
    cf = evaluate_circuit(llama, c, rows, ablation="counterfactual", warn=False)
    f_cf = 0.0
    for r in rows:
        _, pc = llama.run_with_cache(llama.to_tokens(r["patch_prefix"]))
        f_cf += metric_with(r, lambda n, x, pc=pc: pc[n].clone())
    assert cf["f_circuit"] == pytest.approx(f_cf / 2, rel=1e-4, abs=1e-5)
    with pytest.raises(RelPLensError, match="counterfactual ablation needs paired"):
        evaluate_circuit(llama, c, [dict(clean_prefix=r["clean_prefix"]) for r in rows], ablation="counterfactual")


def test_unpaired_defaults_are_consistent(llama):
    """Case 2: a zero baseline was judged by mean ablation; now each baseline has its own ablation."""
    zero = attribute(llama, UNPAIRED, progress=False)
    assert zero.baseline == "zero" and select_top_k(zero, llama, 5).ablation == "zero"
    mean = attribute(llama, UNPAIRED, baseline="mean", progress=False)
    c = select_top_k(mean, llama, 50)
    assert c.ablation == "mean" and c.baseline == "mean" and c.selection["excluded_positions"] == [0, 1]
    # shared prefix: identical activations (up to batch-shape rounding), zero mean-baseline score
    assert mean.mean()[:, :2].abs().max() < 1e-5
    ev = evaluate_circuit(llama, c, UNPAIRED[::-1], warn=False)
    assert ev.ablation == "mean"


def test_weak_circuits_are_named(llama):
    c = _circuit(llama, [(0, -1, 0)])
    with pytest.warns(relp_lens.circuits.ablation.WeakCircuitWarning, match="weak circuit"):
        ev = evaluate_circuit(llama, c, AGREEMENT_ROWS)
    assert "do not read this as a sparse circuit" in ev.verdict


def test_edges_on_mixed_lengths_average_the_per_length_edges(llama):
    """Edges over prompts of two lengths = the example-weighted mean of each length's edges."""
    attr = attribute(llama, AGREEMENT_ROWS, progress=False)
    c = select_top_k(attr, llama, 10)
    assert {n.pos for n in c.nodes} <= {0, 1, -1}  # the positions both lengths have
    assert c.selection["positions_not_in_every_prompt"] == [-4, -3, -2]
    both = attribute_edges(llama, c, AGREEMENT_ROWS, progress=False)
    six = attribute_edges(llama, c, [AGREEMENT_ROWS[0], AGREEMENT_ROWS[2]], progress=False)
    three = attribute_edges(llama, c, [AGREEMENT_ROWS[1], AGREEMENT_ROWS[3]], progress=False)
    w = lambda cc: {(e.source, e.target): e.weight for e in cc.edges}  # noqa: E731
    ws, w6, w3 = w(both), w(six), w(three)
    assert ws
    for key, value in ws.items():
        assert value == pytest.approx((w6.get(key, 0.0) + w3.get(key, 0.0)) / 2, rel=1e-5, abs=1e-7)


def test_neutral_exact_sample(llama):
    """Case 7: the sample was chosen by gradient ranking alone, favouring 'grad' in its own judgement."""
    relp = attribute(llama, AGREEMENT_ROWS, progress=False)
    grad = attribute(llama, AGREEMENT_ROWS, method="grad", progress=False)
    nodes = set(sample_nodes([relp, grad], 40, seed=1))
    assert len(nodes) == 40
    assert {n for n, _ in relp.top_k(10, everywhere=True)} <= nodes
    assert {n for n, _ in grad.top_k(10, everywhere=True)} <= nodes
    assert all(p is None or p in (0, 1, -1) for _, p, _ in nodes)  # positions every prompt has


def test_gpt2_mixed_lengths_run_end_to_end():
    model = tiny_gpt2()
    attr = attribute(model, UNPAIRED, baseline="mean", progress=False)
    c = select_top_k(attr, model, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = evaluate_circuit(model, c, UNPAIRED)
    assert -10 < ev.faithfulness < 10
    assert hooks_left(model) == []


@pytest.mark.slow
def test_shipped_model_city_to_state_positions_mean_one_token(smollm):
    """Case 1 on the shipped model: city_to_state prompts have 11-14 tokens; counted from the end, every
    position of the template's tail holds one token in every prompt, and the heatmap shows all of them."""
    from relp_lens.views.plots import attribution_heatmap
    from relp_lens.core.tasks import load_task

    rows = load_task(smollm, "city_to_state", 24)
    attr = attribute(smollm, rows, reduce="mean", progress=False)
    assert attr.alignment.end_aligned and len(set(attr.lengths)) > 1
    labels = attr.position_labels()
    assert labels[-1] == "' of'" and labels[-2] == "' state'" and labels[-7] == "' is'"
    assert labels[-8].startswith("24 tokens, e.g.")  # the city's last token: a different one in each prompt
    fig = attribution_heatmap(attr)
    assert len(fig.data[0].x) == attr.n_positions == max(attr.lengths)
    c = select_top_k(attr, smollm, 50)
    assert all(n.pos < 0 and n.pos >= -min(attr.lengths) + attr.alignment.n_shared for n in c.nodes
               if n.pos not in attr.fixed_positions)


@pytest.mark.slow
def test_shipped_model_warns_on_an_answer_without_its_space(smollm):
    """Case 6: "are" for " are" was accepted (accuracy 100%, target probability 0.000)."""
    from relp_lens.core.data import AnswerWarning
    from relp_lens.core.tasks import task_report

    rows = [dict(r, clean_answer="are", patch_answer="is") if i == 1 else r
            for i, r in enumerate(AGREEMENT_ROWS[:2])]
    with pytest.warns(AnswerWarning, match=r"row 1: answer 'are' has probability .* did you mean ' are'"):
        attribute(smollm, rows, progress=False)
    with pytest.warns(AnswerWarning, match="row 1"):
        task_report(smollm, rows, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnswerWarning)
        attribute(smollm, AGREEMENT_ROWS[:2], progress=False)  # answers with their space: no warning


def test_verdict_names_unstable_ratios_and_weak_circuits():
    from relp_lens.circuits.ablation import verdict

    row = dict(faithfulness=1.4, completeness=2.0, n_nodes=10, f_model=35.3, f_empty=35.9)
    assert verdict(row).startswith("unstable ratios")
    weak = [dict(faithfulness=f, completeness=0.9, n_nodes=k, f_model=10.0, f_empty=2.0, ablation="zero")
            for f, k in ((0.1, 10), (0.4, 100))]
    assert "below 0.5 at every size tried (up to 100 nodes); best +0.40 with 100 nodes" in verdict(weak)
    assert "mean baseline with mean ablation" in verdict(weak)
    assert verdict(dict(weak[0], faithfulness=0.8)) is None
