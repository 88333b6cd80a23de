"""Node attribution on tiny models, checked against hand computations with TransformerLens hooks."""

import pytest
import torch

import relp_lens
from relp_lens import Prompts, RelPConfig, attribute, relp
from helpers import AGREEMENT_ROWS, tiny_gpt2, tiny_llama

ROW = AGREEMENT_ROWS[0]
HOOK = "blocks.1.mlp.hook_post"


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def logit_diff(model, logits):
    a, b = model.to_single_token(ROW["clean_answer"].strip()), model.to_single_token(ROW["patch_answer"].strip())
    return logits[0, -1, a] - logits[0, -1, b]


def manual_grad_scores(model, use_relp):
    clean, patch = model.to_tokens(ROW["clean_prefix"]), model.to_tokens(ROW["patch_prefix"])
    _, cache = model.run_with_cache(patch)
    store = {}

    def keep(x, hook):
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        store["a"] = x
        return x
    ctx = relp(model) if use_relp else torch.enable_grad()
    with ctx, model.hooks(fwd_hooks=[(HOOK, keep)]):
        m = logit_diff(model, model(clean))
        (g,) = torch.autograd.grad(m, store["a"])
    return (g * (cache[HOOK] - store["a"].detach()))[0]  # [pos, d_mlp]


@pytest.mark.parametrize("method", ["relp", "grad"])
def test_gradient_methods_match_hand_computation(llama, method):
    attr = attribute(llama, [ROW], method=method, progress=False)
    assert attr.scores.shape == (1, 3, 6, 48)
    torch.testing.assert_close(attr.scores[0, 1], manual_grad_scores(llama, method == "relp"))


def test_relp_and_grad_differ(llama):
    r = attribute(llama, [ROW], method="relp", progress=False).scores
    g = attribute(llama, [ROW], method="grad", progress=False).scores
    assert not torch.allclose(r, g, atol=1e-5)


def test_ig_one_step_is_attribution_patching(llama):
    ig = attribute(llama, [ROW], method="ig", ig_steps=1, progress=False).scores
    g = attribute(llama, [ROW], method="grad", progress=False).scores
    torch.testing.assert_close(ig, g, atol=1e-5, rtol=1e-4)


def test_ig_completeness_per_layer(llama):
    """IG's scores of a layer sum to the effect of patching that whole layer (Riemann error ~1/steps)."""
    ig = attribute(llama, [ROW], method="ig", ig_steps=100, progress=False)
    clean, patch = llama.to_tokens(ROW["clean_prefix"]), llama.to_tokens(ROW["patch_prefix"])
    _, cache = llama.run_with_cache(patch)
    m_clean = logit_diff(llama, llama(clean))
    for layer in range(3):
        hook = f"blocks.{layer}.mlp.hook_post"
        m_patched = logit_diff(llama, llama.run_with_hooks(clean, fwd_hooks=[(hook, lambda x, hook: cache[hook.name])]))
        total = ig.scores[0, layer].sum()
        assert total.item() == pytest.approx((m_patched - m_clean).item(), rel=0.05, abs=1e-3)


def test_exact_matches_single_node_patching(llama):
    nodes = [(1, 2, 5), (2, 5, 0), (0, 1, 47)]
    ex = attribute(llama, [ROW], method="exact", nodes=nodes, progress=False)
    clean, patch = llama.to_tokens(ROW["clean_prefix"]), llama.to_tokens(ROW["patch_prefix"])
    _, cache = llama.run_with_cache(patch)
    m_clean = logit_diff(llama, llama(clean))
    for layer, pos, idx in nodes:
        hook = f"blocks.{layer}.mlp.hook_post"

        def patch_one(x, hook):
            x = x.clone()
            x[:, pos, idx] = cache[hook.name][:, pos, idx]
            return x
        m = logit_diff(llama, llama.run_with_hooks(clean, fwd_hooks=[(hook, patch_one)]))
        assert ex.scores[0, layer, pos, idx].item() == pytest.approx((m - m_clean).item(), abs=1e-5)
    assert torch.isnan(ex.scores).sum() == ex.scores.numel() - len(nodes)


def test_exact_node_batching_is_invisible(llama):
    nodes = [(l, p, i) for l in range(3) for p in (0, 1, -1) for i in (0, 7, 30)]
    a = attribute(llama, AGREEMENT_ROWS, method="exact", nodes=nodes, node_batch=1, progress=False)
    b = attribute(llama, AGREEMENT_ROWS, method="exact", nodes=nodes, node_batch=64, progress=False)
    torch.testing.assert_close(a.scores, b.scores, equal_nan=True)


def test_relp_correlates_with_exact_on_tiny_model(llama):
    cmp = relp_lens.compare_with_exact(llama, AGREEMENT_ROWS, methods=("relp", "grad"), n_nodes=40,
                                       progress=False)
    assert set(cmp.correlations) == {"relp", "grad"}
    assert cmp.correlations["grad"] > 0.5 and cmp.correlations["relp"] > 0.5
    assert "relp" in cmp.table()


def test_batching_does_not_change_scores(llama):
    a = attribute(llama, AGREEMENT_ROWS, batch_size=1, progress=False)
    b = attribute(llama, AGREEMENT_ROWS, batch_size=16, progress=False)
    torch.testing.assert_close(a.scores, b.scores)
    assert a.lengths == [6, 3, 6, 3]
    # mixed lengths: the shared prefix (BOS, 'The') from the start, the rest from the end
    assert a.positions == [0, 1, -4, -3, -2, -1]
    assert (a.scores[1, :, 2:5] == 0).all()  # columns a 3-token example does not reach: zero
    assert (a.scores[1, :, 5] != 0).any()  # its last token sits in the last column


def test_unpaired_conservation_through_attribute():
    """Unpaired RelP with all rules on a bias-free model: Σ a·∇̃m over layer-0 inputs equals the logit."""
    model = tiny_llama()
    attr = attribute(model, "The keys to the cabinet", " are", basis="blocks.0.hook_resid_pre",
                     rules=RelPConfig(attention=True), progress=False)
    assert attr.metric == "logit" and not attr.paired
    assert attr.scores.sum().item() == pytest.approx(attr.metric_clean.item(), rel=1e-3)


@pytest.mark.parametrize("basis,width", [("mlp_post", 48), ("mlp_out", 32), ("attn_out", 32), ("resid_pre", 32),
                                         ("resid_post", 32), ("blocks.{L}.attn.hook_z", 32),
                                         ("blocks.2.hook_resid_mid", 32)])
def test_bases(llama, basis, width):
    attr = attribute(llama, AGREEMENT_ROWS[:2], basis=basis, progress=False)
    n_layers = 1 if "{L}" not in basis and basis.startswith("blocks.") else 3
    assert attr.scores.shape == (2, n_layers, 6, width)
    assert attr.scores.abs().sum() > 0


def test_hook_list_basis(llama):
    hooks = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    attr = attribute(llama, [ROW], basis=hooks, progress=False)
    assert attr.hook_names == hooks and attr.scores.shape[1] == 2


def test_gpt2_style_model():
    model = tiny_gpt2(biases=True)
    attr = attribute(model, AGREEMENT_ROWS, progress=False)
    assert attr.scores.shape == (4, 3, 6, 64) and torch.isfinite(attr.scores).all()


def test_metrics_and_baselines(llama):
    prompts = ["The keys to the cabinet", "The parents"]
    by_logit = attribute(llama, prompts, " are", progress=False)
    lp = attribute(llama, prompts, " are", metric="logprob", progress=False)
    assert lp.metric == "logprob" and (lp.metric_clean < 0).all()
    custom = attribute(llama, prompts, metric=lambda logits: logits[:, 3], progress=False)
    torch.testing.assert_close(custom.metric_clean,
                               torch.stack([llama(llama.to_tokens(p))[0, -1, 3] for p in prompts]))
    two_arg = attribute(llama, prompts, " are", metric=lambda logits, batch: logits[:, 7] * 1.0, progress=False)
    assert two_arg.metric == "<lambda>"
    mean = attribute(llama, prompts, " are", baseline="mean", progress=False)
    assert not torch.allclose(mean.scores, by_logit.scores)
    # top-1 target when no answer is given
    top = attribute(llama, prompts, progress=False)
    expected = torch.stack([llama(llama.to_tokens(p))[0, -1].max() for p in prompts])
    torch.testing.assert_close(top.metric_clean, expected)
    multi = attribute(llama, prompts, [[" are", " is"], [" are", " is"]], progress=False)
    assert multi.metric_clean.shape == (2,)


def test_attribution_helpers(llama):
    attr = attribute(llama, AGREEMENT_ROWS, progress=False)
    assert attr.mean().shape == (3, 6, 48) and attr.sum_pos().shape == (4, 3, 48)
    top = attr.top_k(5)
    assert len(top) == 5
    mags = [abs(s) for _, s in top]
    assert mags == sorted(mags, reverse=True)
    (layer, pos, idx), score = top[0]
    assert score == pytest.approx(attr.mean()[layer, attr.alignment.column(pos), idx].item())
    agg = attr.top_k(3, aggregate_pos=True)
    assert all(node[1] is None for node, _ in agg)
    assert attr.correlation(attr) == pytest.approx(1.0)
    # lengths are [6, 3, 6, 3]: position -2 (column 4) is averaged over the two long examples only
    torch.testing.assert_close(attr.mean()[:, 4], (attr.scores[0, :, 4] + attr.scores[2, :, 4]) / 2)
    torch.testing.assert_close(attr.mean()[:, 1], attr.scores[:, :, 1].mean(0))
    assert attr.token_at(-2) == "the" and attr.token_at(1, example=1) == "The"
    assert attr.token_at(-1, example=1) == "parents" and attr.token_label(-1) == "4 tokens, e.g. 'cabinet'"
    assert "L" in attr.summary(3) and attr.metric_ref.shape == (4,)


def test_prompts_from_jsonl(tmp_path, llama):
    import json
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in AGREEMENT_ROWS) + "\n")
    p = Prompts.from_jsonl(path)
    assert p.paired and len(p) == 4 and p.patch_answers[0] == [" is"]
    assert attribute(llama, p, progress=False).scores.shape[0] == 4


@pytest.mark.parametrize("basis", ["resid_pre", "attn_out", "mlp_out", "blocks.{L}.attn.hook_z"])
def test_passes_that_skip_early_blocks_match_full_passes(llama, basis):
    """ig/exact start the forward pass at the patched block; that must not change any number."""
    ig = attribute(llama, [ROW], method="ig", ig_steps=1, basis=basis, progress=False).scores
    g = attribute(llama, [ROW], method="grad", basis=basis, progress=False).scores
    torch.testing.assert_close(ig, g, atol=1e-5, rtol=1e-4)
    nodes = [(0, 2, 3), (2, 5, 1)]
    ex = attribute(llama, [ROW], method="exact", nodes=nodes, basis=basis, progress=False)
    hooks = relp_lens.resolve_hooks(llama, basis)
    clean, patch = llama.to_tokens(ROW["clean_prefix"]), llama.to_tokens(ROW["patch_prefix"])
    _, cache = llama.run_with_cache(patch)
    m_clean = logit_diff(llama, llama(clean))
    for layer, pos, idx in nodes:
        def patch_one(x, hook):
            flat = x.reshape(*x.shape[:2], -1).clone()
            flat[:, pos, idx] = cache[hook.name].reshape(*x.shape[:2], -1)[:, pos, idx]
            return flat.reshape(x.shape)
        m = logit_diff(llama, llama.run_with_hooks(clean, fwd_hooks=[(hooks[layer], patch_one)]))
        assert ex.scores[0, layer, pos, idx].item() == pytest.approx((m - m_clean).item(), abs=1e-5)


def test_paired_without_answers_targets_the_clean_top_token(llama):
    """Targets come from the clean run, never from the patch run."""
    attr = attribute(llama, "The keys to the cabinet", patch="The key to the cabinet", metric="logit",
                     progress=False)
    top = llama(llama.to_tokens("The keys to the cabinet"))[0, -1].max()
    assert attr.metric_clean.item() == pytest.approx(top.item(), abs=1e-5)
