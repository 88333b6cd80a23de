"""relp_lens on a TransformerBridge (compatibility mode) as well as on a HookedTransformer.

Fast tests use a tiny random Hugging Face ``LlamaForCausalLM`` (the word tokenizer of ``helpers``) wrapped by
:func:`relp_lens.core.backends.wrap_hf_model`; where TransformerLens has ``HookedTransformer`` (3.x), the same
weights are also loaded into one and every result is compared. Slow tests do the same on the shipped
SmolLM2-135M-Instruct: ``load_model(backend="bridge")`` (transformers' own GGUF loader) against
``load_model()`` (relp_lens's HookedTransformer). Tests that need a HookedTransformer skip on TransformerLens 4.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
import torch

import relp_lens
from relp_lens.core import backends
from relp_lens.core.errors import RelPLensError
from relp_lens.core.relp_mode import embedding_relevance, relp

from helpers import AGREEMENT_ROWS, WORDS, hooks_left, tiny_hf_llama, word_tokenizer

needs_hooked = pytest.mark.hooked  # skipped on TransformerLens 4 (conftest)
PROMPT = "The keys to the cabinet"


# --- tiny models: one Hugging Face Llama (helpers.tiny_hf_llama), as a bridge and (TL 3.x) as a HookedTransformer
def hooked_from_hf(hf):
    """The same weights as a HookedTransformer (TransformerLens 3.x only)."""
    import einops
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    c = hf.config
    n, n_kv, d_head = c.num_attention_heads, c.num_key_value_heads, c.hidden_size // c.num_attention_heads
    cfg = HookedTransformerConfig(
        n_layers=c.num_hidden_layers, d_model=c.hidden_size, d_head=d_head, n_heads=n, n_key_value_heads=n_kv,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps,
        act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True,
        positional_embedding_type="rotary", rotary_dim=d_head, rotary_base=c.rope_parameters["rope_theta"],
        rotary_adjacent_pairs=False, original_architecture="LlamaForCausalLM", init_weights=False,
        default_prepend_bos=True, model_name="tiny-llama")
    sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    out = {"embed.W_E": sd["model.embed_tokens.weight"], "ln_final.w": sd["model.norm.weight"],
           "unembed.W_U": sd["lm_head.weight"].T, "unembed.b_U": torch.zeros(c.vocab_size)}
    for layer in range(c.num_hidden_layers):
        p, b = f"model.layers.{layer}.", f"blocks.{layer}."
        out[b + "ln1.w"] = sd[p + "input_layernorm.weight"]
        out[b + "ln2.w"] = sd[p + "post_attention_layernorm.weight"]
        out[b + "attn.W_Q"] = einops.rearrange(sd[p + "self_attn.q_proj.weight"], "(n h) m -> n m h", n=n)
        out[b + "attn._W_K"] = einops.rearrange(sd[p + "self_attn.k_proj.weight"], "(n h) m -> n m h", n=n_kv)
        out[b + "attn._W_V"] = einops.rearrange(sd[p + "self_attn.v_proj.weight"], "(n h) m -> n m h", n=n_kv)
        out[b + "attn.W_O"] = einops.rearrange(sd[p + "self_attn.o_proj.weight"], "m (n h) -> n h m", n=n)
        out[b + "attn.b_Q"] = torch.zeros(n, d_head)
        out[b + "attn._b_K"] = torch.zeros(n_kv, d_head)
        out[b + "attn._b_V"] = torch.zeros(n_kv, d_head)
        out[b + "attn.b_O"] = torch.zeros(c.hidden_size)
        out[b + "mlp.W_gate"] = sd[p + "mlp.gate_proj.weight"].T
        out[b + "mlp.W_in"] = sd[p + "mlp.up_proj.weight"].T
        out[b + "mlp.W_out"] = sd[p + "mlp.down_proj.weight"].T
        out[b + "mlp.b_in"] = torch.zeros(c.intermediate_size)
        out[b + "mlp.b_out"] = torch.zeros(c.hidden_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=word_tokenizer(), move_to_device=False)
    missing, unexpected = model.load_state_dict(out, strict=False)
    assert not unexpected and not ({n for n, _ in model.named_parameters()} & set(missing))
    model.eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def tiny_hf():
    return tiny_hf_llama()


@pytest.fixture(scope="module")
def bridge(tiny_hf):
    return backends.wrap_hf_model(tiny_hf, word_tokenizer(), "tiny-llama")


@pytest.fixture(scope="module")
def hooked():
    if not backends.hooked_transformer_available():
        pytest.skip("needs HookedTransformer (TransformerLens 3.x)")
    return hooked_from_hf(tiny_hf_llama())  # same seed, same weights (wrapping rebuilds the HF model's modules)


def hooks_left(model) -> list[str]:
    return [n for n, hp in model.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks]


def assert_close_scores(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= rel * scale, (a - b).abs().max().item() / scale


# --- TransformerLens 4 ----------------------------------------------------------------------------------
TL4_IMPORT = r"""
import importlib, sys
import transformer_lens
if hasattr(transformer_lens, "__dict__") and "HookedTransformer" in vars(transformer_lens):
    # simulate TransformerLens 4 on 3.x: the legacy names raise ImportError, their modules are gone
    for name in ("HookedTransformer", "HookedTransformerConfig"):
        delattr(transformer_lens, name)
    def __getattr__(name):
        if name in ("HookedTransformer", "HookedTransformerConfig"):
            raise ImportError(f"{name!r} was removed in TransformerLens 4.0", name=name)
        raise AttributeError(name)
    transformer_lens.__getattr__ = __getattr__
    for mod in ("transformer_lens.HookedTransformer", "transformer_lens.HookedTransformerConfig",
                "transformer_lens.components", "transformer_lens.components.mlps",
                "transformer_lens.components.mlps.moe"):
        sys.modules[mod] = None
import pkgutil
import relp_lens
from relp_lens.core import backends
for info in pkgutil.walk_packages(relp_lens.__path__, "relp_lens."):  # every module of every stage
    importlib.import_module(info.name)
for name in relp_lens.__all__:
    getattr(relp_lens, name)
assert not backends.hooked_transformer_available()
assert backends.resolve_backend("auto") == "bridge"
try:
    backends.resolve_backend("hooked")
except relp_lens.RelPLensError as e:
    assert "backend='bridge'" in str(e)
else:
    raise AssertionError("backend='hooked' without HookedTransformer must fail")
print("ok")
"""


def test_every_module_imports_without_hooked_transformer():
    """``import relp_lens`` and every submodule work where ``HookedTransformer`` is gone (TL 4, or simulated)."""
    done = subprocess.run([sys.executable, "-c", TL4_IMPORT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_backend_detection(bridge):
    assert backends.is_bridge(bridge) and not backends.is_hooked_transformer(bridge)
    assert not backends.supports_start_at_layer(bridge)
    assert backends.resolve_backend("bridge") == "bridge"
    want = "hooked" if backends.hooked_transformer_available() else "bridge"
    assert backends.resolve_backend("auto") == want
    assert backends.transformer_lens_version() >= (3, 9)
    with pytest.raises(RelPLensError, match="unknown backend"):
        backends.resolve_backend("jax")
    with pytest.raises(RelPLensError, match="unknown backend"):
        relp_lens.load_model(backend="jax")


# --- wrapping a Hugging Face model ----------------------------------------------------------------------
def test_wrap_hf_model_is_ready(bridge, tiny_hf):
    assert bridge.compatibility_mode and not bridge.training
    assert not any(p.requires_grad for p in tiny_hf.parameters())
    assert bridge.cfg.model_name == "tiny-llama"
    tokens = bridge.to_tokens(PROMPT)
    assert tokens[0, 0].item() == 0 and tokens.shape == (1, 6)  # <bos> prepended once
    with torch.no_grad():
        assert torch.equal(bridge(tokens), tiny_hf(tokens).logits)  # the Hugging Face model's own numbers
    assert backends.W_out(bridge, 1).shape == (48, 32) and backends.W_U(bridge).shape == (32, len(WORDS) + 2)
    assert torch.equal(backends.W_out(bridge, 1), tiny_hf.model.layers[1].mlp.down_proj.weight.T)
    assert torch.equal(backends.final_norm_weight(bridge), tiny_hf.model.norm.weight)


def test_bridge_outside_compatibility_mode_is_refused():
    bare = backends.bridge_class().boot_transformers("tiny", hf_model=tiny_hf_llama(1), tokenizer=word_tokenizer(),
                                                     device="cpu")
    with pytest.raises(RelPLensError, match="enable_compatibility_mode"):
        relp_lens.attribute(bare, PROMPT, " are", progress=False)
    with pytest.raises(RelPLensError, match="enable_compatibility_mode"):
        with relp(bare):
            pass


def test_tiny_bridge_matches_hooked_transformer(bridge, hooked):
    tokens = bridge.to_tokens([PROMPT, "The key to the cabinet"])
    assert torch.equal(tokens, hooked.to_tokens([PROMPT, "The key to the cabinet"]))
    with torch.no_grad():
        assert (bridge(tokens) - hooked(tokens)).abs().max().item() < 1e-5


# --- RelP mode on the bridge ----------------------------------------------------------------------------
@pytest.mark.parametrize("rules", [{}, dict(attention=True), dict(ln=False, identity=False, half=False)])
def test_forward_is_bit_identical_in_relp_mode(bridge, rules):
    tokens = bridge.to_tokens([PROMPT, "The key to the cabinet"])
    with torch.no_grad():
        plain = bridge(tokens)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning from the bridge's norms
            with relp(bridge, **rules):
                inside = bridge(tokens)
    assert torch.equal(inside, plain)
    assert hooks_left(bridge) == []


def test_conservation_on_bridge(bridge):
    """Bias-free Llama, all four rules: Σ embedding · ∇̃logit = logit."""
    tokens = bridge.to_tokens(PROMPT)
    target = bridge.to_single_token("are")
    logit, total = embedding_relevance(bridge, tokens, target, attention=True)
    assert total == pytest.approx(logit, rel=1e-4, abs=1e-5)
    # without the rules the two differ: the rules, not an accident, make them equal
    logit, plain = embedding_relevance(bridge, tokens, target, ln=False, identity=False, half=False)
    assert abs(plain - logit) > 1e-3 * abs(logit)
    assert hooks_left(bridge) == []


def test_relp_gradients_equal_hooked_transformer(bridge, hooked):
    """The RelP gradient at the embeddings, rule by rule, is the same on both backends."""
    tokens = bridge.to_tokens(PROMPT)
    target = bridge.to_single_token("are")
    for rules in ({}, dict(attention=True), dict(ln=False), dict(half=False), dict(identity=False)):
        got = embedding_relevance(bridge, tokens, target, **rules)
        want = embedding_relevance(hooked, tokens, target, **rules)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), rules


def test_hooks_context_on_bridge(bridge):
    """backends.hooks: the bridge's hook_dict read once, hooks at a level of their own (the caller's stay),
    aliases resolved, an unknown name an error (the bridge's own hooks() skips it silently)."""
    seen = []
    tokens = bridge.to_tokens(PROMPT)
    keep = ("blocks.0.hook_mlp_out", lambda x, hook: seen.append("outer"))
    with bridge.hooks(fwd_hooks=[keep]):
        with backends.hooks(bridge, fwd_hooks=[("unembed.hook_out", lambda x, hook: seen.append("alias")),
                                               ("blocks.0.mlp.hook_post", lambda x, hook: x * 0)]):
            with torch.no_grad():
                zeroed = bridge(tokens)
        with torch.no_grad():
            plain = bridge(tokens)
        assert seen == ["outer", "alias", "outer"]  # ours fired once (an alias too), the caller's in both passes
    assert not torch.equal(zeroed, plain)
    assert hooks_left(bridge) == []
    with pytest.raises(RelPLensError, match="no hook point 'blocks.0.mlp.hook_nope'"):
        with backends.hooks(bridge, fwd_hooks=[("blocks.0.mlp.hook_post", lambda x, hook: x),
                                               ("blocks.0.mlp.hook_nope", lambda x, hook: x)]):
            pass
    assert hooks_left(bridge) == [] and bridge.context_level == 0


def test_gated_bias_is_not_added_twice():
    """A bridge's ``mlp.b_in`` is the up-projection bias, already inside ``hook_pre_linear``: with unfrozen
    weights its RelP gradient is exactly what flows through ``hook_pre_linear`` (adding it to the surrogate
    again would add the gradient at ``hook_post`` on top)."""
    hf = tiny_hf_llama(2, mlp_bias=True)
    model = backends.wrap_hf_model(hf, word_tokenizer(), freeze_weights=False)
    assert model.blocks[1].mlp.b_in is not None
    assert backends.gated_post_bias(model, model.blocks[1].mlp) is None
    seen = {}

    def keep(x, hook):
        x.retain_grad()
        seen["lin"] = x

    tokens = model.to_tokens(PROMPT)
    with relp(model), model.hooks(fwd_hooks=[("blocks.1.mlp.hook_pre_linear", keep)]):
        model(tokens)[0, -1, model.to_single_token("are")].backward()
    bias = hf.model.layers[1].mlp.up_proj.bias
    assert torch.allclose(bias.grad, seen["lin"].grad.sum((0, 1)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cap", [30.0, 3.0])
def test_final_logit_softcap_on_bridge(cap):
    """Gemma-2's final-logit soft-cap on a bridge (applied by the Hugging Face forward, after
    ``unembed.hook_out``) gets the identity rule: forward bit-identical, relevance conserved, config restored."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=cap,
                       max_position_embeddings=16, sliding_window=8, query_pre_attn_scalar=8, bos_token_id=0,
                       eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    hf = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.3)
    model = backends.wrap_hf_model(hf, word_tokenizer())
    tokens, target = model.to_tokens(PROMPT), model.to_single_token("are")
    with torch.no_grad():
        outside = model(tokens)
        with relp(model):
            assert model.original_model.config.final_logit_softcapping is None  # applied by the rule's hook
            inside = model(tokens)
    assert torch.equal(inside, outside)
    assert model.original_model.config.final_logit_softcapping == cap and hooks_left(model) == []
    logit, relevance = embedding_relevance(model, tokens, target, attention=True)
    assert relevance == pytest.approx(logit, rel=1e-4)  # without the rule: 1.27 vs 2.27 at cap 3


def test_mixture_of_experts_bridge_is_refused():
    """A bridge's MoE block (``MoEBridge``) runs Hugging Face's expert loop with no per-expert hook points, so
    the rules cannot reach its activations: relp() and attribute() refuse it on entry, leaving no hooks."""
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=16, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = backends.wrap_hf_model(MixtralForCausalLM(cfg).eval(), word_tokenizer())
    with pytest.raises(RelPLensError, match="blocks.0.mlp is a MoEBridge mixture of experts"):
        with relp(model):
            pass
    with pytest.raises(RelPLensError, match="mixture of experts"):
        relp_lens.attribute(model, AGREEMENT_ROWS[:1], progress=False)
    assert hooks_left(model) == []


def tiny_hf_gpt2(seed: int = 0):
    """A random 2-layer GPT-2 (LayerNorm, GELU MLP, learned positions, biases everywhere)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(WORDS) + 2, n_positions=16, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                     eos_token_id=0)
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if ".ln_" in name and
                                                                          name.endswith("weight") else 0.0))
    return hf.eval()


@pytest.mark.hooked
def test_gpt2_style_bridge_equals_hooked_transformer():
    """LayerNorm (computed in Python by the bridge: plain hook_scale rule), a non-gated GELU MLP (identity rule)
    and biases: the bridge's forward is unchanged in relp mode and its scores are the HookedTransformer's."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=128, d_vocab=len(WORDS) + 2,
                                  n_ctx=16, act_fn="gelu_new", normalization_type="LN", eps=1e-5,
                                  positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
                                  init_weights=False, default_prepend_bos=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = HookedTransformer(cfg, tokenizer=word_tokenizer(), move_to_device=False)
    hooked.load_state_dict(convert_gpt2_weights(tiny_hf_gpt2(), cfg), strict=False)
    hooked.eval().requires_grad_(False)
    bridge = backends.wrap_hf_model(tiny_hf_gpt2(), word_tokenizer(), "tiny-gpt2")
    tokens = bridge.to_tokens(PROMPT)
    with torch.no_grad():
        plain = bridge(tokens)
        assert (plain - hooked(tokens)).abs().max().item() < 1e-4
        with relp(bridge, attention=True):
            assert torch.equal(bridge(tokens), plain)
    target = bridge.to_single_token("are")
    for rules in ({}, dict(attention=True), dict(identity=False)):
        got = embedding_relevance(bridge, tokens, target, **rules)
        assert got == pytest.approx(embedding_relevance(hooked, tokens, target, **rules), rel=1e-4, abs=1e-5), rules
    for method in ("relp", "grad"):
        got = relp_lens.attribute(bridge, AGREEMENT_ROWS, method=method, progress=False)
        want = relp_lens.attribute(hooked, AGREEMENT_ROWS, method=method, progress=False)
        assert_close_scores(got.scores, want.scores, rel=1e-4)


# --- attribution and everything built on it -------------------------------------------------------------
@pytest.mark.parametrize("method", ["relp", "grad", "ig"])
@pytest.mark.parametrize("basis", ["mlp_post", "resid_pre", "blocks.{L}.attn.hook_z", "blocks.{L}.attn.hook_q"])
def test_attribution_equals_hooked_transformer(bridge, hooked, method, basis):
    """Also at hooks a bridge hands a reshaped copy (attn.hook_z, hook_q): the captured copy is returned to the
    bridge, so it is the tensor the forward pass computes on (scored 0 beyond the first layer before)."""
    got = relp_lens.attribute(bridge, AGREEMENT_ROWS, method=method, basis=basis, progress=False)
    want = relp_lens.attribute(hooked, AGREEMENT_ROWS, method=method, basis=basis, progress=False)
    assert got.hook_names == want.hook_names and got.positions == want.positions
    assert_close_scores(got.scores, want.scores)
    assert hooks_left(bridge) == []


def test_exact_patching_equals_hooked_transformer(bridge, hooked):
    nodes = [(0, -1, 3), (1, 1, 7), (2, None, 11), (2, -1, 40)]
    got = relp_lens.attribute(bridge, AGREEMENT_ROWS, method="exact", nodes=nodes, progress=False)
    want = relp_lens.attribute(hooked, AGREEMENT_ROWS, method="exact", nodes=nodes, progress=False)
    assert_close_scores(got.scores, want.scores)
    cmp = relp_lens.compare_with_exact(bridge, AGREEMENT_ROWS, methods=("relp", "grad"), n_nodes=16,
                                       progress=False)
    assert set(cmp.correlations) == {"relp", "grad"}


def test_exact_patching_runs_without_hooked_transformer(bridge):
    """On the bridge (every TransformerLens), exact patching of one node equals a hand-made patch."""
    row = AGREEMENT_ROWS[0]
    attr = relp_lens.attribute(bridge, [row], method="exact", nodes=[(1, -1, 5)], progress=False)
    clean, patch = bridge.to_tokens(row["clean_prefix"]), bridge.to_tokens(row["patch_prefix"])
    are, is_ = bridge.to_single_token(" are"), bridge.to_single_token(" is")
    with torch.no_grad():
        _, cache = bridge.run_with_cache(patch, names_filter=lambda n: n == "blocks.1.mlp.hook_post")
        ref = cache["blocks.1.mlp.hook_post"]

        def put(x, hook):
            x = x.clone()
            x[:, -1, 5] = ref[:, -1, 5]
            return x

        base = bridge(clean)[0, -1]
        with bridge.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", put)]):
            patched = bridge(clean)[0, -1]
    want = (patched[are] - patched[is_]) - (base[are] - base[is_])
    assert attr.scores[0, 1, -1, 5].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


def test_circuit_edges_steering_cards_equal_hooked_transformer(bridge, hooked):
    results = {}
    for name, model in (("bridge", bridge), ("hooked", hooked)):
        attr = relp_lens.attribute(model, AGREEMENT_ROWS, progress=False)
        circuit = relp_lens.select_top_k(attr, model, 8)
        ev = relp_lens.evaluate_circuit(model, circuit, AGREEMENT_ROWS, warn=False)
        edged = relp_lens.attribute_edges(model, circuit, AGREEMENT_ROWS, progress=False)
        nodes = [(n.layer, n.pos, n.index) for n in circuit.nodes[:3]]
        sweep = relp_lens.steering_sweep(model, [PROMPT, "The parents"], nodes, ["are", "is"], factors=[-1.0, 2.0])
        with torch.no_grad(), relp_lens.steer(model, [(2, None, 4)], 5.0, mode="set"):
            text = model.generate(PROMPT, max_new_tokens=3, verbose=False, do_sample=False)
        from relp_lens.analysis.cards import neuron_cards

        cards = neuron_cards(model, [(1, 3), (2, 7)], prompts=[PROMPT], corpus=["The doctors near the cabinet are"])
        results[name] = (circuit, ev, edged, sweep, text, cards)
        assert hooks_left(model) == []
    (c1, e1, g1, s1, t1, k1), (c2, e2, g2, s2, t2, k2) = results["bridge"], results["hooked"]
    assert [n.key for n in c1.nodes] == [n.key for n in c2.nodes]
    for key in ("faithfulness", "completeness"):
        assert e1[key] == pytest.approx(e2[key], rel=1e-4, abs=1e-5)
    w1 = {(e.source, e.target): e.weight for e in g1.edges}
    w2 = {(e.source, e.target): e.weight for e in g2.edges}
    assert w1.keys() == w2.keys() and w1
    scale = max(abs(w) for w in w2.values())
    assert all(abs(w1[k] - w2[k]) <= 1e-5 * scale for k in w1)
    for tok in ("are", "is"):
        assert s1["probs"][tok] == pytest.approx(s2["probs"][tok], rel=1e-4, abs=1e-7)
    assert isinstance(t1, str) and t1 == t2
    for a, b in zip(k1, k2):
        assert [t for t, _ in a.promoted] == [t for t, _ in b.promoted]
        assert [v for _, v in a.promoted] == pytest.approx([v for _, v in b.promoted], rel=1e-5)
        assert [v for _, v in a.top_contexts] == pytest.approx([v for _, v in b.top_contexts], rel=1e-5, abs=1e-6)


def test_head_splits_equal_hooked_transformer(bridge, hooked):
    """Forward-mode RelP (the rules' jvp, the bridge's native-norm surrogate) and hook_z's flat layout on a
    bridge: the same per-head splits as the HookedTransformer, summing to the same edge weights."""
    from relp_lens.circuits.heads import attribute_head_splits
    from relp_lens.circuits.io_edges import attribute_io_edges

    got = {}
    for name, model in (("bridge", bridge), ("hooked", hooked)):
        attr = relp_lens.attribute(model, AGREEMENT_ROWS[:2], progress=False)
        circuit = relp_lens.select_top_k(attr, model, 6)
        circuit = relp_lens.attribute_edges(model, circuit, AGREEMENT_ROWS[:2], progress=False)
        circuit = attribute_io_edges(model, circuit, AGREEMENT_ROWS[:2], progress=False)
        split = attribute_head_splits(model, circuit, AGREEMENT_ROWS[:2], top=None, progress=False)
        got[name] = split.heads
        assert hooks_left(model) == []
    a, b = got["bridge"].edges, got["hooked"].edges
    assert a.keys() == b.keys() and a
    scale = max(abs(h[2]) for s in b.values() for h in s.heads)
    for key in a:
        ha = {(l, h): w for l, h, w in a[key].heads}
        hb = {(l, h): w for l, h, w in b[key].heads}
        for lh in ha.keys() | hb.keys():
            assert abs(ha.get(lh, 0.0) - hb.get(lh, 0.0)) <= 1e-5 * scale, (key, lh)
        assert a[key].residual == pytest.approx(b[key].residual, abs=1e-5 * scale)


def test_head_splits_on_bridge_equal_the_reference_implementation(bridge):
    """On a bridge (every TransformerLens), paired and unpaired: the vectorised head splits equal the per-edge
    forward-mode implementation they replaced (tests/reference_heads.py)."""
    import reference_heads
    from test_heads import assert_same_splits

    from relp_lens.circuits.heads import attribute_head_splits
    from relp_lens.circuits.io_edges import attribute_io_edges

    rows = AGREEMENT_ROWS[:2]
    unpaired = relp_lens.attribute(bridge, [r["clean_prefix"] for r in rows], [r["clean_answer"] for r in rows],
                                   metric="logit", baseline="zero", progress=False).prompts
    for data in (rows, unpaired):
        circuit = relp_lens.select_top_k(relp_lens.attribute(bridge, data, progress=False), bridge, 6)
        circuit = relp_lens.attribute_edges(bridge, circuit, data, progress=False)
        circuit = attribute_io_edges(bridge, circuit, data, progress=False)
        options = dict(top=None, batch_size=1, edge_batch=3, progress=False)
        got = attribute_head_splits(bridge, circuit, data, **options)
        want = reference_heads.attribute_head_splits(bridge, circuit, data, **options)
        assert_same_splits(got.heads, want.heads)
    assert hooks_left(bridge) == []


def test_pipeline_runs_on_bridge(bridge, tmp_path):
    """Attribution → circuit → evaluation → edges → report on the bridge alone (every TransformerLens)."""
    attr = relp_lens.attribute(bridge, AGREEMENT_ROWS, progress=False)
    assert attr.scores.shape == (4, 3, 6, 48) and torch.isfinite(attr.scores.nan_to_num(0.0)).all()
    circuit = relp_lens.select_top_k(attr, bridge, 6)
    ev = relp_lens.evaluate_circuit(bridge, circuit, AGREEMENT_ROWS, warn=False)
    assert math.isfinite(ev.faithfulness)
    edged = relp_lens.attribute_edges(bridge, circuit, AGREEMENT_ROWS, progress=False)
    assert edged.stats["edges"].backward_passes >= 1
    from relp_lens.circuits.heads import attribute_head_splits, edge_key

    splits = attribute_head_splits(bridge, edged, AGREEMENT_ROWS, top=None, progress=False).heads.edges
    for e in edged.edges:  # forward-mode RelP on a bridge: the head splits sum to the edge weights
        s = splits[edge_key(edged.nodes[e.source].label(), edged.nodes[e.target].label())]
        assert s.residual + sum(w for *_, w in s.heads) == pytest.approx(e.weight, rel=1e-4, abs=1e-7)
    from relp_lens.views.report import write_report

    path = write_report(tmp_path / "report.html", bridge, attr, edged)
    assert path.is_file() and "tiny-llama" in path.read_text()
    with torch.no_grad(), relp_lens.steer(bridge, [(2, 1, 4)], 3.0, mode="set"):
        out = bridge.generate(PROMPT, max_new_tokens=2, verbose=False, do_sample=False, use_past_kv_cache=True)
    assert out.startswith(PROMPT)
    assert hooks_left(bridge) == []


def test_cli_trace_on_bridge(bridge, tmp_path, capsys, monkeypatch):
    """``relp-lens trace --backend bridge`` passes the backend to load_model; the whole command runs on a bridge."""
    import json

    import relp_lens.cli as cli
    import relp_lens.core.models

    asked = []

    def load(name, gguf_path=None, backend="auto", **kwargs):
        asked.append(backend)
        return bridge

    monkeypatch.setattr(relp_lens.core.models, "load_model", load)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in AGREEMENT_ROWS))
    out, report = tmp_path / "c.json", tmp_path / "r.html"
    assert cli.main(["trace", "--backend", "bridge", "--k", "5", "--n-prompts", "2", "--n-eval", "2",
                     "--batch-size", "2", "--data", str(rows), "--edges", "--edge-prompts", "2", "--report-cards",
                     "2", "--out", str(out), "--report", str(report), "--no-progress"]) == 0
    assert asked == ["bridge"]
    assert json.loads(out.read_text())["evaluation"]["n_prompts"] == 2 and report.is_file()
    assert hooks_left(bridge) == []


# --- the shipped model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm_bridge():
    return relp_lens.load_model(backend="bridge")


@pytest.mark.slow
def test_shipped_bridge_loads(smollm_bridge):
    assert backends.is_bridge(smollm_bridge) and smollm_bridge.cfg.model_name == "smollm2-135m"
    assert smollm_bridge.cfg.n_ctx == 2048
    assert smollm_bridge.to_tokens("Hi")[0, 0].item() == 0  # <|endoftext|>, as load_model's HookedTransformer
    with torch.no_grad():
        logits = smollm_bridge(smollm_bridge.to_tokens("The capital of France is"))
    assert smollm_bridge.to_string(logits[0, -1].argmax()) == " Paris"


@pytest.mark.slow
@needs_hooked
def test_shipped_bridge_logits_match_hooked_transformer(smollm_bridge, smollm):
    prompts = ["The keys to the cabinet", "The capital of France is", "Fact: Dallas is a city in the state of"]
    for p in prompts:
        tokens = smollm.to_tokens(p)
        assert torch.equal(smollm_bridge.to_tokens(p), tokens)
        with torch.no_grad():
            # float32 in two summation orders (1.01e-4 measured with one thread), see test_shipped_model
            assert (smollm_bridge(tokens) - smollm(tokens)).abs().max().item() < 3e-4


@pytest.mark.slow
def test_shipped_bridge_relp_forward_and_conservation(smollm_bridge):
    tokens = smollm_bridge.to_tokens(["The keys to the cabinet", "The key to the cabinet"])
    with torch.no_grad():
        plain = smollm_bridge(tokens)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with relp(smollm_bridge, attention=True):
                assert torch.equal(smollm_bridge(tokens), plain)
    logit, total = embedding_relevance(smollm_bridge, tokens[:1], smollm_bridge.to_single_token(" are"),
                                       attention=True)
    assert total == pytest.approx(logit, rel=1e-3)
    assert hooks_left(smollm_bridge) == []


@pytest.mark.slow
@needs_hooked
def test_shipped_bridge_scores_equal_hooked_transformer(smollm_bridge, smollm):
    from relp_lens.core.tasks import agreement_rows

    rows = agreement_rows(smollm, 6)
    for method in ("relp", "grad"):
        got = relp_lens.attribute(smollm_bridge, rows, method=method, progress=False)
        want = relp_lens.attribute(smollm, rows, method=method, progress=False)
        assert_close_scores(got.scores, want.scores, rel=1e-5)
        assert {n for n, _ in got.top_k(100)} == {n for n, _ in want.top_k(100)}
    nodes = [node for node, _ in want.top_k(4, everywhere=True)]  # positions every prompt has
    got = relp_lens.attribute(smollm_bridge, rows, method="exact", nodes=nodes, progress=False)
    want = relp_lens.attribute(smollm, rows, method="exact", nodes=nodes, progress=False)
    assert_close_scores(got.scores, want.scores, rel=1e-4)


@pytest.mark.slow
@needs_hooked
def test_shipped_bridge_circuit_tools_agree(smollm_bridge, smollm):
    from relp_lens.core.tasks import agreement_rows
    from relp_lens.analysis.cards import neuron_cards

    rows = agreement_rows(smollm, 8)
    out = {}
    for name, model in (("bridge", smollm_bridge), ("hooked", smollm)):
        attr = relp_lens.attribute(model, rows[:4], progress=False)
        circuit = relp_lens.select_top_k(attr, model, 10)
        ev = relp_lens.evaluate_circuit(model, circuit, rows[4:], warn=False)
        edged = relp_lens.attribute_edges(model, circuit, rows[:2], progress=False)
        with torch.no_grad(), relp_lens.steer(model, [(n.layer, None, n.index) for n in circuit.nodes[:5]], -1.0):
            text = model.generate("The keys to the cabinet", max_new_tokens=4, verbose=False, do_sample=False)
        cards = neuron_cards(model, [(circuit.nodes[0].layer, circuit.nodes[0].index)],
                             prompts=[rows[0]["clean_prefix"]], corpus=["The keys to the cabinet are on the table."])
        out[name] = (circuit, ev, edged, text, cards)
    (c1, e1, g1, t1, k1), (c2, e2, g2, t2, k2) = out["bridge"], out["hooked"]
    assert [n.key for n in c1.nodes] == [n.key for n in c2.nodes]
    assert e1.faithfulness == pytest.approx(e2.faithfulness, rel=1e-3, abs=1e-4)
    assert e1.completeness == pytest.approx(e2.completeness, rel=1e-3, abs=1e-4)
    w1 = {(e.source, e.target): e.weight for e in g1.edges}
    w2 = {(e.source, e.target): e.weight for e in g2.edges}
    scale = max(abs(w) for w in w2.values())
    assert w1.keys() == w2.keys() and all(abs(w1[k] - w2[k]) <= 1e-4 * scale for k in w1)
    assert t1 == t2
    assert [t for t, _ in k1[0].promoted] == [t for t, _ in k2[0].promoted]
    assert [v for _, v in k1[0].top_contexts] == pytest.approx([v for _, v in k2[0].top_contexts], rel=1e-3)


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_hooks_whose_value_the_forward_pass_drops_are_refused(backend):
    """backends.dead_hooks agrees with an independent value test (adding noise at a live hook moves the logits,
    at a dead one nothing); attention (z, q, v), MLP and residual hooks are live on both backends (a bridge's
    reshaped copies at hook_z / hook_q are live because attribution returns them); a basis at a dead hook (a
    bridge's hook_pos_embed on a rotary model never fires) is refused instead of scored 0."""
    from helpers import tiny_llama_on

    if backend == "hooked" and not hasattr(__import__("transformer_lens"), "HookedTransformer"):
        pytest.skip("no HookedTransformer in this TransformerLens")
    model = tiny_llama_on(backend)
    n = model.cfg.n_layers
    names = [f"blocks.{l}.{h}" for l in range(n) for h in ("attn.hook_z", "attn.hook_q", "attn.hook_v",
                                                           "hook_attn_out", "hook_mlp_out", "hook_resid_mid")]
    if backend == "bridge":  # a rotary model's bridge lists hook_pos_embed, which never fires
        names.append("hook_pos_embed")
    dead = backends.dead_hooks(model, names)
    assert not {h for h in dead if h.endswith(("attn_out", "mlp_out", "resid_mid", "hook_z", "hook_q"))}
    if backend == "hooked":
        assert dead == []
    else:
        assert dead == ["hook_pos_embed"]
    tokens = model.to_tokens("The keys to the cabinet")
    with torch.no_grad():
        base = model(tokens)
        for name in names:
            noise = lambda x, hook: x + 3.0 * torch.randn_like(x)  # noqa: E731
            with backends.hooks(model, fwd_hooks=[(name, noise)]):
                moved = (model(tokens) - base).abs().max().item() > 1e-3
            assert moved == (name not in dead), name
    for name in dead[:2]:
        with pytest.raises(RelPLensError, match="not one its forward pass computes on"):
            relp_lens.attribute(model, AGREEMENT_ROWS[:1], basis=name, progress=False)
    assert hooks_left(model) == []


def test_attention_patterns_are_refused_as_a_basis_by_name(bridge):
    """[batch, head, query, key] hooks are not per-position nodes: refused naming the hook and what to use
    (before, a position-alignment error about prompt lengths)."""
    for hook in ("blocks.0.attn.hook_pattern", "blocks.{L}.attn.hook_attn_scores"):
        with pytest.raises(RelPLensError, match="not one value per position.*hook_z"):
            relp_lens.attribute(bridge, AGREEMENT_ROWS[:1], basis=hook, progress=False)
