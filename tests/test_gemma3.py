"""Gemma 3 270M, a second real model no one here wrote (``load_model("gemma3-270m")``), on both backends.

Where TransformerLens 3.x is installed each test runs on a HookedTransformer (TransformerLens' own Gemma
conversion of the weights transformers dequantizes) and on a TransformerBridge; on TransformerLens 4 on the
bridge only. Gemma 3 brings what SmolLM2 lacks: q/k norms, pre- and post-norms around each sublayer,
``1 + w`` norm weights, a scaled embedding, GELU-tanh gates, local and global attention layers.
"""

import pytest
import torch

import relp_lens
from relp_lens.core import backends
from relp_lens.core.relp_mode import embedding_relevance
from helpers import hooks_left

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("gemma3")]  # one worker loads Gemma once
PROMPTS = ["The capital of France is", "The keys to the cabinet", "def add(a, b):\n    return"]
BACKENDS = ["hooked", "bridge"] if backends.hooked_transformer_available() else ["bridge"]
AGREEMENT = [
    dict(clean_prefix="The keys to the cabinet", patch_prefix="The key to the cabinet",
         clean_answer=" are", patch_answer=" is"),
    dict(clean_prefix="The parents", patch_prefix="The parent", clean_answer=" are", patch_answer=" is"),
]


@pytest.fixture(scope="module")
def fresh_hf():
    """transformers' own GGUF loader, dequantized to float32, straight from the file (never the weight cache)."""
    from relp_lens.core.models import _hf_from_gguf, shipped_gguf_path

    return _hf_from_gguf(shipped_gguf_path("gemma3-270m"), cache=None)


@pytest.fixture(scope="module")
def reference(fresh_hf):
    """transformers' own logits for PROMPTS."""
    from relp_lens.core.models import load_gguf_tokenizer, shipped_gguf_path

    tok = load_gguf_tokenizer(shipped_gguf_path("gemma3-270m"), bos="<bos>")
    with torch.no_grad():
        return {p: fresh_hf(tok(p, return_tensors="pt").input_ids).logits for p in PROMPTS}


def test_weight_cache_is_bit_identical_to_the_file(fresh_hf):
    """load_model keeps transformers' model of the shipped file in the weight cache; what the cache gives back
    equals a fresh conversion bit for bit, tied weights included."""
    from relp_lens.core.models import _cached_architecture, _hf_cache_folder, _hf_from_gguf, shipped_gguf_path

    path = shipped_gguf_path("gemma3-270m")
    folder = _hf_cache_folder(path)
    _hf_from_gguf(path, cache=folder, arch="gemma3")  # built here unless a load_model before did it
    assert _cached_architecture(folder) == "gemma3"
    cached = _hf_from_gguf(path, cache=folder, arch="gemma3")  # read from the cache
    ours, theirs = cached.state_dict(), fresh_hf.state_dict()
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].equal(theirs[k]), k
    assert cached.get_output_embeddings().weight.data_ptr() == cached.get_input_embeddings().weight.data_ptr()


@pytest.fixture(scope="module", params=BACKENDS)
def gemma(request):
    return relp_lens.load_model("gemma3-270m", backend=request.param)


def test_loads_as_asked(gemma):
    assert backends.is_bridge(gemma) != backends.is_hooked_transformer(gemma)
    assert gemma.cfg.model_name == "gemma3-270m"
    c = gemma.cfg
    assert (c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.d_head, c.d_vocab) == (18, 640, 2048, 4, 256, 262144)
    assert all(not p.requires_grad for p in gemma.parameters())
    assert gemma.to_str_tokens("The keys") == ["<bos>", "The", " keys"]  # one BOS, the file's own


def test_logits_match_transformers(gemma, reference):
    for prompt, theirs in reference.items():
        with torch.no_grad():
            ours = gemma(gemma.to_tokens(prompt))
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() < 1e-4, prompt  # measured 1.4e-5


@pytest.mark.parametrize("attention", [False, True])
def test_relp_forward_is_bit_identical(gemma, attention):
    tokens = gemma.to_tokens(PROMPTS[1])
    with torch.no_grad():
        outside = gemma(tokens)
        with relp_lens.relp(gemma, attention=attention):
            inside = gemma(tokens)
    assert torch.equal(inside, outside)
    assert hooks_left(gemma) == []


def test_conservation_with_all_rules(gemma):
    """Bias-free, all rules and the AH rule: the embeddings' relevance sums to the logit (measured 1e-7)."""
    tokens = gemma.to_tokens(PROMPTS[1])
    target = gemma.to_single_token(" are")
    logit, relevance = embedding_relevance(gemma, tokens, target, attention=True)
    assert relevance == pytest.approx(logit, rel=1e-3)
    # and the rules matter: the plain gradient does not conserve on this model
    _, plain = embedding_relevance(gemma, tokens, target, ln=False, identity=False, half=False, attention=True)
    assert abs(plain - logit) > 1e-2 * abs(logit)


def test_relp_tracks_exact_patching_on_agreement(gemma):
    cmp = relp_lens.compare_with_exact(gemma, AGREEMENT, methods=("relp", "grad"), n_nodes=24, progress=False)
    attr = cmp.attributions["relp"]
    assert (attr.metric_clean > 0).all()  # the model prefers the right verb
    assert cmp.correlations["relp"] > 0.8  # measured 0.935 (grad 0.951)


def test_agreement_circuit_beats_random(gemma):
    from relp_lens.circuits.ablation import evaluate_circuit
    from relp_lens.core.tasks import agreement_rows
    from relp_lens.circuits.circuit import Circuit, CircuitNode
    from relp_lens.circuits.selection import select_top_k

    rows = agreement_rows(gemma, 40, simple_fraction=0.0)
    build, held_out = rows[:28], rows[28:]
    attr = relp_lens.attribute(gemma, build, progress=False)
    circuit = select_top_k(attr, gemma, 100)
    ours = evaluate_circuit(gemma, circuit, held_out).faithfulness  # measured 1.23
    gen = torch.Generator().manual_seed(0)
    n_pos = attr.scores.shape[2]  # [batch, layer, pos, node]
    keys = set()
    while len(keys) < 100:
        keys.add(tuple(int(torch.randint(n, (1,), generator=gen)) for n in (18, n_pos, 2048)))
    random_c = Circuit(nodes=[CircuitNode(*k) for k in keys], basis="mlp_post", hook_names=circuit.hook_names,
                       node_width=2048, model=circuit.model)
    theirs = evaluate_circuit(gemma, random_c, held_out).faithfulness
    assert ours > 0.7 and ours - theirs > 0.5
