"""Prompts are tokenized as the model does: BOS only where ``model.cfg.default_prepend_bos`` says so (Qwen2/Qwen3:
no), ``prepend_bos=`` overrides it, and the choice travels with the attribution and the circuit file.

The check that matters: the activations behind the scores are the model's own on the text — ``attribute``'s
``grad`` scores with a zero baseline are ``a · ∂logit/∂a``, recomputed here from ``model.to_tokens(text)`` and
compared with ``model.run_with_cache(text)``. Models: a tiny HookedTransformer with ``default_prepend_bos=False``
(TransformerLens 3.x) and a tiny Hugging Face Qwen2 wrapped as a TransformerBridge (both TransformerLens
versions; the bridge's Qwen2 adapter sets ``default_prepend_bos=False`` itself).
"""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import relp_lens
from relp_lens import RelPLensError, attribute
from relp_lens.circuits.ablation import evaluate_circuit
from relp_lens.circuits.circuit import Circuit
from relp_lens.circuits.selection import select_top_k
from relp_lens.core import backends
from relp_lens.core.data import Prompts, resolve_prepend_bos, tokenize
from helpers import AGREEMENT_ROWS, WORDS, tiny_hf_qwen2, tiny_llama, word_tokenizer

TEXTS = ["The keys to the cabinet", "The parents", "The author near the doctors"]
HOOKS = [f"blocks.{layer}.mlp.hook_post" for layer in range(2)]


@pytest.fixture(scope="module")
def qwen():
    return relp_lens.wrap_hf_model(tiny_hf_qwen2(), word_tokenizer(), "tiny-qwen2")


@pytest.fixture(scope="module")
def no_bos_llama():
    return tiny_llama(default_prepend_bos=False)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def own_scores(model, text: str, answer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own tokens of ``text`` ``[pos]`` and ``a · ∂logit(answer)/∂a`` ``[layer, pos, d_mlp]`` over
    :data:`HOOKS`, with ``a`` from ``model.run_with_cache(text)``."""
    tokens = model.to_tokens(text)  # [1, pos]: the model's own choice of BOS
    _, cache = model.run_with_cache(text)
    answer_id = int(model.to_tokens(answer, prepend_bos=False)[0, 0])
    got = {}

    def start(x, hook):  # frozen weights: the embedding output starts the graph
        return x.detach().requires_grad_(True)

    def keep(name):
        def hook(x, hook):
            got[name] = x
        return hook

    with torch.enable_grad(), backends.hooks(model, fwd_hooks=[("hook_embed", start)]
                                             + [(h, keep(h)) for h in HOOKS]):
        logits = model(tokens)
        grads = torch.autograd.grad(logits[0, -1, answer_id], [got[h] for h in HOOKS])
    for h in HOOKS:  # the forward above saw the same activations as run_with_cache
        torch.testing.assert_close(got[h].detach(), cache[h], rtol=1e-5, atol=1e-6)
    scores = torch.stack([(g * cache[h])[0].reshape(tokens.shape[1], -1) for g, h in zip(grads, HOOKS)])
    return tokens[0].cpu(), scores


def check_own_activations(model, prepend_bos=None):
    """attribute() scores each text as the model's own run_with_cache on it does (one text at a time)."""
    for text in TEXTS:
        attr = attribute(model, [text], " are", basis=HOOKS, method="grad", metric="logit", baseline="zero",
                         progress=False, prepend_bos=prepend_bos)
        tokens, want = own_scores(model, text, " are")
        assert attr.prepend_bos == resolve_prepend_bos(model)
        assert attr.str_tokens[0] == [model.tokenizer.decode([int(t)]) for t in tokens]
        assert attr.scores.shape[2] == len(tokens)
        torch.testing.assert_close(attr.scores[0], want.float(), rtol=1e-4, atol=1e-6)
        _, cache = model.run_with_cache(text)
        acts = attr.activations(model, example=0)  # [layer, pos, node], re-tokenized as the attribution was
        torch.testing.assert_close(acts, torch.stack([cache[h][0] for h in HOOKS]).float(), rtol=1e-5, atol=1e-6)


def test_bridge_without_bos_scores_the_models_own_activations(qwen):
    assert qwen.cfg.default_prepend_bos is False
    assert "<bos>" not in qwen.to_str_tokens("The keys")
    check_own_activations(qwen)


@pytest.mark.hooked
def test_hooked_without_bos_scores_the_models_own_activations(no_bos_llama):
    check_own_activations(no_bos_llama)
    attr = attribute(no_bos_llama, TEXTS, " are", basis=HOOKS, progress=False)
    assert attr.prepend_bos is False and all(t[0] != "<bos>" for t in attr.str_tokens)


@pytest.mark.hooked
def test_default_true_keeps_bos(llama):
    assert llama.cfg.default_prepend_bos is True
    check_own_activations(llama)
    attr = attribute(llama, TEXTS, " are", basis=HOOKS, progress=False)
    assert attr.prepend_bos is True and all(t[0] == "<bos>" for t in attr.str_tokens)
    assert attr.token_at(0) == "<bos>" and 0 in attr.fixed_positions


def test_prepend_bos_overrides_the_model(qwen):
    on = attribute(qwen, TEXTS, " are", basis=HOOKS, progress=False, prepend_bos=True)
    off = attribute(qwen, TEXTS, " are", basis=HOOKS, progress=False, prepend_bos=False)
    assert on.prepend_bos is True and off.prepend_bos is False
    assert all(t[0] == "<bos>" for t in on.str_tokens) and all(t[0] != "<bos>" for t in off.str_tokens)
    assert on.lengths == [n + 1 for n in off.lengths]
    # no BOS and prompts of different lengths: position 0 is the shared first word, not a BOS
    assert off.alignment.end_aligned and off.token_at(0) == "The" and off.fixed_positions == [0]
    assert on.fixed_positions == [0, 1] and on.token_at(1) == "The"
    tok = tokenize(qwen, Prompts(TEXTS), prepend_bos=True)
    assert tok.prepend_bos is True and int(tok.clean_tokens[0][0]) == qwen.tokenizer.bos_token_id


@pytest.mark.hooked
def test_prepend_bos_false_on_a_bos_model(llama):
    attr = attribute(llama, TEXTS, " are", basis=HOOKS, progress=False, prepend_bos=False)
    assert attr.prepend_bos is False and all(t[0] == "The" for t in attr.str_tokens)


def test_prepend_bos_must_be_a_bool(qwen):
    for bad in ("yes", 1, 0):
        with pytest.raises(RelPLensError, match="prepend_bos must be True, False or None"):
            attribute(qwen, TEXTS, " are", basis=HOOKS, progress=False, prepend_bos=bad)


def test_choice_round_trips_through_a_saved_circuit(qwen, tmp_path):
    attr = attribute(qwen, AGREEMENT_ROWS, basis=HOOKS, progress=False)
    assert attr.prepend_bos is False
    circuit = select_top_k(attr, qwen, 6)
    assert circuit.data["prepend_bos"] is False and circuit.prepend_bos is False
    path = circuit.save(tmp_path / "c.json")
    loaded = Circuit.load(path)
    assert loaded.data["prepend_bos"] is False and loaded.prepend_bos is False
    ev = evaluate_circuit(qwen, loaded, AGREEMENT_ROWS, warn=False)
    assert ev.prepend_bos is False
    assert evaluate_circuit(qwen, loaded, AGREEMENT_ROWS, warn=False, prepend_bos=True).prepend_bos is True
    # a file written before the choice was recorded was built with BOS
    old = loaded.to_dict()
    del old["data"]["prepend_bos"]
    legacy = Circuit.from_dict(old)
    assert legacy.prepend_bos is True
    assert evaluate_circuit(qwen, legacy, AGREEMENT_ROWS, warn=False).prepend_bos is True
    bad = dict(old, data=dict(old["data"], prepend_bos="no"))
    with pytest.raises(RelPLensError, match=r"prepend_bos.*true or false"):
        Circuit.from_dict(bad).prepend_bos


def test_recorded_choice_wins_over_the_model_default(qwen):
    """A circuit built with BOS on a no-BOS model is evaluated with BOS: its positions name those tokens."""
    attr = attribute(qwen, AGREEMENT_ROWS, basis=HOOKS, progress=False, prepend_bos=True)
    circuit = select_top_k(attr, qwen, 6)
    assert circuit.prepend_bos is True
    assert evaluate_circuit(qwen, circuit, AGREEMENT_ROWS, warn=False).prepend_bos is True


@pytest.mark.hooked
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=6), bos=st.sampled_from([None, True, False]),
       default=st.booleans())
@example(words=["The", "keys"], bos=None, default=False)
def test_tokens_are_the_models_own_property(llama, words, bos, default):
    """For any text, any model default and any override: relp_lens' tokens are ``model.to_tokens`` with the same
    choice, and the attribution records that choice."""
    text = " ".join(words)
    before = llama.cfg.default_prepend_bos
    llama.cfg.default_prepend_bos = default
    try:
        tok = tokenize(llama, Prompts([text], [" are"]), prepend_bos=bos)
        choice = default if bos is None else bos
        assert torch.equal(tok.clean_tokens[0], llama.to_tokens(text, prepend_bos=choice)[0].cpu())
        if bos is None:  # the model's own call, no argument: what run_with_cache(text) sees
            assert torch.equal(tok.clean_tokens[0], llama.to_tokens(text)[0].cpu())
        assert resolve_prepend_bos(llama, bos) is choice
    finally:
        llama.cfg.default_prepend_bos = before
