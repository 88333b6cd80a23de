"""Model structure is checked on the model, not read from its module names (issue #27).

1. Neuron edges on tiny random OLMo 2 (a norm after the MLP; TransformerLens 3.9's bridge calls it ``ln2``,
   4.x ``ln2_post``, the name relp_lens reads through), Phi-3 (joint gate-up MLP) and Llama, wrapped as
   relp_lens wraps Hugging Face models: either every edge equals a brute-force Jacobian of the same
   definition, or (OLMo 2 on TransformerLens 3.9) a clear refusal naming the layer. Runs on both
   TransformerLens versions (bridge only).
2. Phi-3's RelP rules against hand formulas, conservation, and ``attribute()`` against the same weights in a
   Llama.
3. Breaking an identity on a tiny Llama (a hook that scales or normalises ``hook_mlp_out``, a wrong activation)
   makes the structural check fail loudly, naming the layer; the verdict is cached and leaves no hook.
"""

from __future__ import annotations

import time

import pytest
import torch

import relp_lens
from relp_lens import RelPLensError
from relp_lens.circuits.edges import attribute_edges
from relp_lens.circuits.io_edges import attribute_io_edges
from relp_lens.core import backends, structure
from relp_lens.core.relp_mode import embedding_relevance, relp

from helpers import (AGREEMENT_ROWS, brute_force_edges, edge_circuit, edge_matrix, hooks_left, tiny_hf_llama,
                     tiny_hf_olmo2, tiny_hf_phi3, token_id, word_tokenizer)

ROWS = [AGREEMENT_ROWS[0], AGREEMENT_ROWS[2]]  # both 6 tokens with BOS
BUILDERS = {"llama": tiny_hf_llama, "olmo2": tiny_hf_olmo2, "phi3": tiny_hf_phi3}


def wrapped(arch: str):
    return backends.wrap_hf_model(BUILDERS[arch](), word_tokenizer(), f"tiny-{arch}")


# --- 1. edges: brute force or a clear refusal -------------------------------------------------------------
@pytest.mark.parametrize("arch,method", [("llama", "relp"), ("phi3", "relp"), ("phi3", "grad"), ("olmo2", "relp"),
                                         ("olmo2", "grad")])
def test_edges_equal_brute_force_or_are_refused(arch, method):
    model = wrapped(arch)
    circuit = edge_circuit(model)
    try:
        got = attribute_edges(model, circuit, ROWS, method=method, progress=False)
    except RelPLensError as err:
        assert arch == "olmo2" and not hasattr(model.blocks[0], "ln2_post"), f"{arch} refused: {err}"
        assert "norm after the MLP" in str(err) and "layer 0" in str(err), str(err)
    else:
        W = brute_force_edges(model, circuit, ROWS, use_relp=method == "relp")
        assert (W != 0).sum() >= 10  # not comparing zeros with zeros
        torch.testing.assert_close(edge_matrix(got), W, rtol=1e-4, atol=1e-6)
    assert hooks_left(model) == []


def test_olmo2_is_read_through_its_post_norm_or_refused():
    """OLMo 2 has an RMSNorm after each MLP and no norm before it. TransformerLens 4 names it ``ln2_post``, as
    Gemma's: edges read through it (test above: they equal the brute force). TransformerLens 3.9's bridge names
    it ``ln2`` — a name-based check once let its edges through, ~300× off the brute force; the numeric check
    refuses it for neuron edges and input/output edges, naming the layer, the hook and the mismatch."""
    model = wrapped("olmo2")
    circuit = edge_circuit(model)
    if hasattr(model.blocks[0], "ln2_post"):
        assert structure.structure_report(model) == []
        assert ("mlp", 0) in structure.post_normed(model)
        return
    assert structure.structure_report(model)  # it does break the identities
    for fn in (attribute_edges, attribute_io_edges):
        with pytest.raises(RelPLensError, match=r"at layer 0, blocks\.0\.hook_mlp_out is not mlp\.hook_post @ W_out "
                                                r"\+ b_out \(relative mismatch [\d.e+]+\): a norm after the MLP that "
                                                r"relp_lens cannot read through"):
            fn(model, circuit, ROWS, progress=False)
    assert hooks_left(model) == []


def test_olmo2_brute_force_really_differs_from_the_w_out_reading(monkeypatch):
    """The check and the post-norm are needed: reading the neuron's effect as a·W_out at hook_mlp_out (edges
    without either) is far from the brute force on OLMo 2."""
    model = wrapped("olmo2")
    circuit = edge_circuit(model)
    W = brute_force_edges(model, circuit, ROWS, use_relp=False)
    monkeypatch.setattr(structure, "check_neuron_directions", lambda model: None)  # pretend the check passed
    monkeypatch.setattr(structure.MLPPostNorms, "pull", lambda self, block, g: g)  # and read no post-norm
    got = attribute_edges(model, circuit, ROWS, method="grad", progress=False)
    big = W.abs() >= W.abs().max() / 10
    rel = ((edge_matrix(got) - W).abs()[big] / W.abs()[big]).max()
    assert rel > 0.5, float(rel)


# --- 2. Phi-3's joint gate-up MLP -------------------------------------------------------------------------
def test_phi3_rules_follow_the_hand_formulas():
    """Seed g at ``hook_post`` of a Phi-3 MLP in RelP mode: ``∂/∂gate = ½·g·up·f(gate)/gate`` (half rule, then
    identity rule) and ``∂/∂up = ½·g·f(gate)``, with f = SiLU, the activation of Phi-3's config."""
    model = wrapped("phi3")
    tokens = model.to_tokens(ROWS[0]["clean_prefix"])
    name = "blocks.1.mlp"
    live = {}

    def leaf(key):
        def hook(x, hook):
            live[key] = x
            return x

        return hook

    g = torch.randn(1, tokens.shape[1], model.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    fwd = [("hook_embed", lambda x, hook: x.detach().requires_grad_(True)),  # something to differentiate
           (f"{name}.hook_pre", leaf("gate")), (f"{name}.hook_pre_linear", leaf("up")),
           (f"{name}.hook_post", leaf("post"))]
    with torch.enable_grad(), relp(model), backends.hooks(model, fwd_hooks=fwd):
        model(tokens, stop_at_layer=2)
        d_gate, d_up = torch.autograd.grad(live["post"], [live["gate"], live["up"]], g)
    gate, up = live["gate"].detach(), live["up"].detach()
    f = torch.nn.functional.silu(gate)
    torch.testing.assert_close(live["post"].detach(), f * up)  # the identity the rules rely on
    torch.testing.assert_close(d_up, 0.5 * g * f)
    torch.testing.assert_close(d_gate, 0.5 * g * up * f / gate)
    assert hooks_left(model) == []


def test_phi3_conserves_relevance():
    """All rules and the AH rule on a bias-free Phi-3: Σ embedding · ∇̃logit = logit (a plain gradient through
    its MLPs would not conserve)."""
    model = wrapped("phi3")
    tokens = model.to_tokens(ROWS[0]["clean_prefix"])
    logit, total = embedding_relevance(model, tokens, token_id(model, "are"), attention=True)
    assert total == pytest.approx(logit, rel=1e-4, abs=1e-5)
    assert hooks_left(model) == []


def _phi3_as_llama(phi3_hf):
    """A Llama with Phi-3's weights: ``qkv_proj`` and ``gate_up_proj`` split, everything else the same."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = phi3_hf.config
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                      num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                      num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                      rms_norm_eps=c.rms_norm_eps, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                      pad_token_id=0, hidden_act=c.hidden_act)
    llama = LlamaForCausalLM(cfg).eval()
    d_head = c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * d_head, c.num_key_value_heads * d_head
    state = {}
    for k, v in phi3_hf.state_dict().items():
        if k.endswith("qkv_proj.weight"):
            base = k[: -len("qkv_proj.weight")]
            state[base + "q_proj.weight"], state[base + "k_proj.weight"], state[base + "v_proj.weight"] = \
                v.split([q, kv, kv])
        elif k.endswith("gate_up_proj.weight"):
            base = k[: -len("gate_up_proj.weight")]
            state[base + "gate_proj.weight"], state[base + "up_proj.weight"] = v.chunk(2)
        else:
            state[k] = v
    llama.load_state_dict(state)
    return llama


@pytest.mark.parametrize("method", ["relp", "grad"])
def test_phi3_attribution_equals_the_same_weights_as_a_llama(method):
    """``attribute()`` (default RelP) on Phi-3 gives the scores of a Llama holding the same weights (its gate
    and up projections apart): the joint gate-up MLP gets the same rules, no AttributeError."""
    phi3_hf = tiny_hf_phi3()
    llama_hf = _phi3_as_llama(phi3_hf)
    phi3 = backends.wrap_hf_model(phi3_hf, word_tokenizer(), "tiny-phi3")
    llama = backends.wrap_hf_model(llama_hf, word_tokenizer(), "tiny-phi3-as-llama")
    tokens = phi3.to_tokens(ROWS[0]["clean_prefix"])
    torch.testing.assert_close(phi3(tokens), llama(tokens), rtol=1e-5, atol=1e-5)
    got = relp_lens.attribute(phi3, AGREEMENT_ROWS, method=method, progress=False)
    want = relp_lens.attribute(llama, AGREEMENT_ROWS, method=method, progress=False)
    assert got.hook_names == want.hook_names
    assert torch.isfinite(got.scores).all() and got.scores.abs().max() > 0
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-4, atol=1e-6)
    assert hooks_left(phi3) == []


# --- 3. breaking an identity ------------------------------------------------------------------------------
def test_a_hook_that_scales_mlp_out_fails_the_check_naming_the_layer():
    model = wrapped("llama")
    structure.check_neuron_directions(model)  # a plain Llama keeps every identity
    assert structure.structure_report(model) == []
    point = model.hook_dict["blocks.1.hook_mlp_out"]
    point.add_hook(lambda x, hook: 1.5 * x)
    try:
        with pytest.raises(RelPLensError, match=r"at layer 1, blocks\.1\.hook_mlp_out is not mlp\.hook_post @ W_out "
                                                r"\+ b_out \(relative mismatch 0\.5\d*\)"):
            structure.check_neuron_directions(model)
        with pytest.raises(RelPLensError, match="layer 1"):
            attribute_edges(model, edge_circuit(model), ROWS, progress=False)
    finally:
        point.remove_hooks()
    structure.check_neuron_directions(model)  # the cached verdict follows the hook away
    assert hooks_left(model) == []


def test_a_norm_after_the_mlp_is_named_whatever_it_is_called():
    """A norm put after layer 2's MLP by a hook (no module, no name): refused as a norm after the MLP."""
    model = wrapped("llama")
    w = 1 + 0.3 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))

    def post_norm(x, hook):
        return w * x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()

    point = model.hook_dict["blocks.2.hook_mlp_out"]
    point.add_hook(post_norm)
    try:
        with pytest.raises(RelPLensError, match=r"at layer 2, blocks\.2\.hook_mlp_out .*a norm after the MLP"):
            structure.check_neuron_directions(model)
    finally:
        point.remove_hooks()
    assert hooks_left(model) == []


def test_an_attention_output_that_bypasses_the_heads_fails_the_head_check():
    model = wrapped("llama")
    point = model.hook_dict["blocks.0.hook_attn_out"]
    point.add_hook(lambda x, hook: x + 0.5)
    try:
        structure.check_structure(model, mlp=True)  # the MLP identities still hold
        with pytest.raises(RelPLensError, match=r"at layer 0, blocks\.0\.hook_attn_out is not attn\.hook_z @ W_O"):
            structure.check_structure(model, heads=True)
    finally:
        point.remove_hooks()


def test_a_wrong_activation_is_refused_by_the_rules_and_the_check(monkeypatch):
    """The gated rules differentiate f(hook_pre) · hook_pre_linear in place of hook_post: with an activation
    that is not the MLP's own, the first forward pass in relp() fails naming the MLP, and so does the check."""
    model = wrapped("llama")
    monkeypatch.setattr(backends, "gated_act_fn", lambda model, mlp, name: torch.tanh)
    tokens = model.to_tokens(ROWS[0]["clean_prefix"])
    with pytest.raises(RelPLensError, match=r"blocks\.0\.mlp\.hook_post is not f\(hook_pre\) · hook_pre_linear "
                                            r"with the activation tanh"):
        with relp(model):
            model(tokens)
    with pytest.raises(RelPLensError, match=r"at layer 0, blocks\.0\.mlp\.hook_post is not f\(hook_pre\)"):
        structure.check_neuron_directions(model)
    assert hooks_left(model) == []


def test_the_check_is_one_cached_forward_and_leaves_no_hook():
    model = wrapped("phi3")
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        start = time.perf_counter()
        first = structure.structure_report(model)
        first_s = time.perf_counter() - start
        assert structure.structure_report(model) is first  # cached: no second forward
        assert len(calls) == 1
    finally:
        handle.remove()
    assert first == [] and first_s < 2.0
    assert hooks_left(model) == []
    with torch.no_grad():
        model.blocks[0].mlp.out.weight.mul_(1.0)  # an in-place edit: measured again
    structure.structure_report(model)
