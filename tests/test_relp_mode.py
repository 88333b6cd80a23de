"""RelP mode on whole models: forward unchanged, relevance conserved, hooks cleaned up."""

import contextlib
import math

import pytest
import torch

import relp_lens
from relp_lens import relp
from relp_lens.core.errors import RelPLensError
from relp_lens.core.relp_mode import embedding_relevance, relp_hooks
from helpers import (AGREEMENT_ROWS, hooks_left, tiny_attn_only, tiny_gemma, tiny_gemma2_softcap, tiny_gpt2,
                     tiny_llama, tiny_mixtral)

BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "gemma_postnorm": tiny_gemma, "mixtral": tiny_mixtral,
            "gemma2_softcap": tiny_gemma2_softcap}
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


# --- final-logit soft-cap (Gemma-2) ------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [3.0, 30.0])
def test_final_logit_softcap_conserves(cap):
    """cap·tanh(z/cap) after the unembedding gets the identity rule: relevance sums to the capped logit."""
    model = tiny_gemma2_softcap(logit_cap=cap)
    tokens = model.to_tokens(PROMPT)
    for target in (3, 7, 11):
        logit, relevance = embedding_relevance(model, tokens, target, attention=True)
        assert abs(logit) < cap
        assert relevance == pytest.approx(logit, rel=1e-4)


def test_final_logit_softcap_moves_into_a_hook_and_back():
    model = tiny_gemma2_softcap(biases=True, logit_cap=3.0)
    tokens = model.to_tokens(PROMPT)
    seen = []

    def record(x, hook):
        seen.append(x.clone())

    with model.hooks(fwd_hooks=[("unembed.hook_out", record)]):
        outside = model(tokens)
    loss_outside = model(tokens, return_type="loss")
    with relp(model, attention=True):
        with model.hooks(fwd_hooks=[("unembed.hook_out", record)]):
            inside = model(tokens)
        loss_inside = model(tokens, return_type="loss")
    assert torch.equal(inside, outside) and torch.equal(loss_inside, loss_outside)
    assert outside.abs().max() < 3.0 < seen[0].abs().max()  # the cap bites
    assert torch.equal(seen[1], seen[0])  # a user hook on unembed.hook_out still sees the uncapped logits
    assert model.cfg.output_logits_soft_cap == 3.0 and hooks_left(model) == []
    with pytest.raises(RuntimeError):
        with relp(model):
            raise RuntimeError("boom")
    assert model.cfg.output_logits_soft_cap == 3.0 and hooks_left(model) == []
    with relp(model, identity=False):  # no identity rule: the cap keeps its own gradient, cfg untouched
        assert model.cfg.output_logits_soft_cap == 3.0


# --- mixture of experts ------------------------------------------------------------------------------------


def test_moe_rules_cover_router_and_every_expert():
    names = [n for n, _ in relp_hooks(tiny_mixtral())]
    for layer in range(3):
        assert f"blocks.{layer}.mlp.hook_expert_weights" in names
        for e in range(4):
            for point in ("hook_gate", "hook_pre", "hook_post"):
                assert f"blocks.{layer}.mlp.experts.{e}.{point}" in names


def test_other_moe_types_are_refused_on_entry():
    model = tiny_mixtral(original_architecture="GptOssForCausalLM")  # TL builds a GptOssMoE
    with pytest.raises(RelPLensError, match=r"blocks\.0\.mlp is a GptOssMoE mixture of experts"):
        with relp(model):
            pytest.fail("relp() entered a model whose MoE blocks it has no rules for")
    assert hooks_left(model) == []


# --- hooks that edit what the rules read or write ----------------------------------------------------------


def _relevance(model, tokens, target: int) -> tuple[float, float]:
    """``(logit, Σ embedding · ∇ logit)`` with the model's hooks as they are (no relp() of its own)."""
    return embedding_relevance(model, tokens, target, use_relp=False)


def _scale(x, hook):
    return 1.5 * x


@pytest.mark.parametrize("arch,name", [("llama", "blocks.0.mlp.hook_pre"), ("llama", "blocks.1.mlp.hook_pre_linear"),
                                       ("gpt2", "blocks.0.mlp.hook_pre"),
                                       ("mixtral", "blocks.0.mlp.experts.1.hook_gate"),
                                       ("mixtral", "blocks.1.mlp.experts.2.hook_pre"),
                                       ("gemma2_softcap", "unembed.hook_out")])
def test_user_edit_of_a_value_the_rules_read(arch, name):
    """A hook added inside relp() that scales a value a rule reads: the rule reads the edited value."""
    model = BUILDERS[arch]()
    tokens = model.to_tokens(PROMPT)
    unedited = model(tokens)[0, -1, 5].item()
    with relp(model, attention=True), model.hooks(fwd_hooks=[(name, _scale)]):
        logit, relevance = _relevance(model, tokens, 5)
    assert logit != pytest.approx(unedited, rel=1e-3)  # the edit changes the forward
    assert relevance == pytest.approx(logit, rel=1e-4)


@pytest.mark.parametrize("arch,name", [("llama", "blocks.1.mlp.hook_post"),
                                       ("mixtral", "blocks.1.mlp.experts.0.hook_post")])
def test_user_edit_of_a_value_the_rules_rewrite(arch, name):
    """Hooks on a rule's output, added before relp() or prepended inside it, act on the rule's output."""
    model = BUILDERS[arch]()
    tokens = model.to_tokens(PROMPT)
    model.add_hook(name, _scale)
    try:
        with relp(model, attention=True):
            model.add_hook(name, _scale, prepend=True)
            logit, relevance = _relevance(model, tokens, 5)
    finally:
        model.reset_hooks()
    assert relevance == pytest.approx(logit, rel=1e-4)


def test_no_reordering_hooks_left():
    model = tiny_mixtral()
    with relp(model):
        assert any(hp._forward_pre_hooks for hp in model.hook_dict.values())
    assert not any(hp._forward_pre_hooks for hp in model.hook_dict.values())


# --- half precision ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,dtype", [(a, torch.bfloat16) for a in ("gpt2", "llama", "mixtral", "gemma2_softcap")]
                         + [("llama", torch.float16), ("gemma2_softcap", torch.float16)])
def test_half_precision_model(arch, dtype):
    model = BUILDERS[arch]().to(dtype)
    tokens = model.to_tokens(PROMPT)
    outside = model(tokens)
    with relp(model, attention=True):
        inside = model(tokens)
    assert inside.dtype == dtype and torch.equal(inside, outside)
    scale = outside[0, -1].float().abs().max().item()  # half-precision logits are this coarse, relatively
    for target in (3, 7, 11):
        logit, relevance = embedding_relevance(model, tokens, target, attention=True)  # summed in float32
        assert math.isfinite(relevance)
        assert abs(relevance - logit) <= 0.03 * scale


def test_attribute_bfloat16_gives_finite_float32_scores():
    """Half-precision models: scores and metrics come back in float32, close to the float32 model's."""
    full = tiny_llama()
    model = tiny_llama().to(torch.bfloat16)
    for method in ("relp", "grad", "ig"):
        attr = relp_lens.attribute(model, AGREEMENT_ROWS, method=method, ig_steps=2, progress=False)
        assert attr.scores.dtype == torch.float32 and torch.isfinite(attr.scores).all()
        assert attr.metric_clean.dtype == torch.float32
    red = relp_lens.attribute(model, AGREEMENT_ROWS, reduce="mean", progress=False)
    ref = relp_lens.attribute(full, AGREEMENT_ROWS, reduce="mean", progress=False)
    assert relp_lens.pearson(red.mean().nan_to_num(0), ref.mean().nan_to_num(0)) > 0.95


# -- no stacking with TransformerLens' own relevance rules (its development branch) ---------------------------
def _llama(backend):
    from relp_lens.core import backends

    from helpers import tiny_hf_llama, word_tokenizer

    return tiny_llama() if backend == "hooked" else backends.wrap_hf_model(tiny_hf_llama(), word_tokenizer(), "tiny")


def _mark_rule_capable(model):
    """Give the first block's attention norm the attributes TransformerLens' relevance-rule backend keeps on a
    rule-capable component (``_relevance_rule_kinds``, and ``_relevance_rule_refcounts`` counting the scopes
    that switched it on)."""
    module = model.blocks[0].ln1
    module._relevance_rule_kinds = ("normalization",)
    module._relevance_rule_refcounts = {"normalization": 0}
    return module


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_relp_refuses_transformerlens_rules_already_on(backend):
    model = _llama(backend)
    module = _mark_rule_capable(model)
    module._relevance_rule_refcounts["normalization"] = 1  # use_relevance_rules(...) is open
    with pytest.raises(RelPLensError, match=r"blocks\.0\.ln1 \(normalization\).*apply a second time"):
        with relp(model):
            pass
    assert hooks_left(model) == []
    module._relevance_rule_refcounts["normalization"] = 0  # closed: relp() works
    with relp(model):
        model(model.to_tokens(PROMPT))


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_transformerlens_rules_switched_on_inside_relp_are_refused_at_the_next_pass(backend):
    model = _llama(backend)
    module = _mark_rule_capable(model)
    with relp(model):
        model(model.to_tokens(PROMPT))
        module._relevance_rule_refcounts["normalization"] = 1
        with pytest.raises(RelPLensError, match="entered inside relp"):
            model(model.to_tokens(PROMPT))
        module._relevance_rule_refcounts["normalization"] = 0
    assert hooks_left(model) == [] and not model._forward_pre_hooks
    module._relevance_rule_refcounts["normalization"] = 1  # after relp(): TransformerLens' business alone
    model(model.to_tokens(PROMPT))


def test_relp_gradients_equal_transformerlens_own_rules():
    """Where TransformerLens has its own relevance rules (TransformerBridge, its development branch), both
    give the same gradient on what both cover: the block norms, activations and gated products of a Llama,
    read at the last block's output (before the final norm, which TransformerLens' rules leave alone)."""
    rules = pytest.importorskip("transformer_lens.model_bridge._relevance_rules",
                                reason="this TransformerLens has no relevance-rule backend (not in 4.3.0)")
    model = _llama("bridge")
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    tokens = model.to_tokens(PROMPT)
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def embed_grad(context):
        got = {}

        def leaf(x, hook):
            got["embed"] = x.detach().requires_grad_(True)
            return got["embed"]

        def read(x, hook):
            got["out"] = x

        with context, model.hooks(fwd_hooks=[("hook_embed", leaf), (last, read)]):
            model(tokens)
            (got["out"] @ direction).sum().backward()
        return got["embed"].grad

    ours = embed_grad(relp(model))
    theirs = embed_grad(rules.use_relevance_rules(model, rules.RelevanceRules(
        normalization=True, activation=True, multiplicative_gate=True)))
    plain = embed_grad(contextlib.nullcontext())
    assert not torch.allclose(ours, plain, rtol=1e-3, atol=1e-6)  # the rules change this gradient
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
