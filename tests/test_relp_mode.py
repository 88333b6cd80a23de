"""RelP mode on whole models: forward unchanged, relevance conserved, hooks cleaned up."""

import pytest
import torch

from relp_lens import relp
from relp_lens.relp_mode import embedding_relevance, relp_hooks
from helpers import hooks_left, tiny_attn_only, tiny_gemma, tiny_gpt2, tiny_llama

BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "gemma_postnorm": tiny_gemma}
PROMPT = "The keys to the cabinet near the doctors"


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_forward_bit_identical(arch):
    model = BUILDERS[arch](biases=True)
    tokens = model.to_tokens(PROMPT)
    outside = model(tokens)
    with relp(model, attention=True):
        inside = model(tokens)
    assert torch.equal(inside, outside)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_conservation_with_all_rules(arch):
    model = BUILDERS[arch](biases=False)
    tokens = model.to_tokens(PROMPT)
    for target in (3, 7, 11):
        logit, relevance = embedding_relevance(model, tokens, target, attention=True)
        assert relevance == pytest.approx(logit, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_conservation_breaks_without_rules(arch):
    """The conservation test can fail: drop any needed rule and relevance no longer sums to the logit."""
    model = BUILDERS[arch](biases=False)
    tokens = model.to_tokens(PROMPT)
    logit, _ = embedding_relevance(model, tokens, 5, attention=True)
    offs = [{"attention": False}, {"ln": False, "attention": True}, {"identity": False, "attention": True}]
    if model.cfg.gated_mlp:
        offs.append({"half": False, "attention": True})
    for off in offs:
        _, relevance = embedding_relevance(model, tokens, 5, **off)
        assert abs(relevance - logit) > 1e-3 * abs(logit), off


def test_biases_break_conservation():
    model = tiny_llama(biases=True)
    tokens = model.to_tokens(PROMPT)
    logit, relevance = embedding_relevance(model, tokens, 5, attention=True)
    assert abs(relevance - logit) > 1e-3 * abs(logit)


def test_relp_gradient_differs_from_plain_gradient():
    model = tiny_llama()
    tokens = model.to_tokens(PROMPT)
    grads = {}
    for mode in ("plain", "relp"):
        store = {}

        def keep(x, hook):
            x = x.detach().requires_grad_(True) if not x.requires_grad else x
            store[hook.name] = x
            return x
        ctx = relp(model) if mode == "relp" else torch.enable_grad()
        with ctx, model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", keep)]):
            out = model(tokens)[0, -1, 4]
            grads[mode] = torch.autograd.grad(out, store["blocks.0.mlp.hook_post"])[0]
    assert not torch.allclose(grads["plain"], grads["relp"], atol=1e-4)


def test_default_rules_leave_attention_pattern_gradient():
    names = [n for n, _ in relp_hooks(tiny_llama())]
    assert not any(n.endswith("hook_pattern") for n in names)
    assert any(n.endswith("hook_scale") for n in names)
    assert "ln_final.hook_scale" in names
    with_ah = [n for n, _ in relp_hooks(tiny_llama(), __import__("relp_lens").RelPConfig(attention=True))]
    assert sum(n.endswith("hook_pattern") for n in with_ah) == 3


def test_post_norms_are_frozen():
    names = [n for n, _ in relp_hooks(tiny_gemma())]
    assert "blocks.0.ln1_post.hook_scale" in names and "blocks.2.ln2_post.hook_scale" in names


def test_hooks_removed_on_exit_and_on_exception():
    model = tiny_gpt2()
    with relp(model):
        assert hooks_left(model)
    assert hooks_left(model) == []
    with pytest.raises(RuntimeError):
        with relp(model, attention=True):
            model(model.to_tokens(PROMPT))
            raise RuntimeError("boom")
    assert hooks_left(model) == []


def test_user_hooks_survive():
    model = tiny_gpt2()
    seen = []
    model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: seen.append(1))
    with relp(model):
        model(model.to_tokens(PROMPT))
    model(model.to_tokens(PROMPT))
    assert len(seen) == 2 and hooks_left(model) == ["blocks.0.hook_resid_pre"]
    model.reset_hooks()


def test_attention_only_model_works():
    model = tiny_attn_only()
    tokens = model.to_tokens(PROMPT)
    logit, relevance = embedding_relevance(model, tokens, 5, attention=True)
    assert relevance == pytest.approx(logit, rel=1e-3)


def test_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        with relp(tiny_gpt2(), eps=0):
            pass
