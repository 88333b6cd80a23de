"""The shipped SmolLM2-135M-Instruct: faithful to transformers' own GGUF loader, and RelP holds on it."""

import pytest
import torch

import relp_lens
from relp_lens.core import models
from relp_lens.core.models import load_gguf_tokenizer, shipped_gguf_path
from relp_lens.core.relp_mode import embedding_relevance
from helpers import hooks_left

pytestmark = pytest.mark.slow
PROMPTS = ["The capital of France is", "The keys to the cabinet", "def add(a, b):\n    return"]


@pytest.mark.hooked  # relp_lens's own HookedTransformer config and parameter names
def test_config_facts(smollm):
    c = smollm.cfg
    assert (c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.d_head, c.n_key_value_heads) == (30, 576, 1536, 9, 64, 3)
    assert c.eps == pytest.approx(1e-5) and c.rotary_base == 100000 and c.gated_mlp and c.act_fn == "silu"
    assert c.normalization_type == "RMS" and c.d_vocab == 49152
    assert all(not p.requires_grad for p in smollm.parameters())
    torch.testing.assert_close(smollm.W_U, smollm.W_E.T)  # tied embeddings
    assert all((b == 0).all() for n, b in smollm.named_parameters() if n.split(".")[-1].startswith(("b_", "_b_")))


def test_matches_transformers_gguf_loader(smollm):
    from transformers import AutoModelForCausalLM

    path = shipped_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    hf.eval()
    for prompt in PROMPTS:
        tokens = smollm.to_tokens(prompt)
        with torch.no_grad():
            ours, theirs = smollm(tokens), hf(tokens).logits
        # two float32 computations of logits up to ~30 in different summation orders: measured 7e-5 with two
        # threads, 1.01e-4 with one (pytest -n 2 gives each worker one); a wrong weight moves them by > 0.1
        assert (ours - theirs).abs().max().item() < 3e-4, prompt


@pytest.mark.hooked  # relp_lens's own GGUF conversion (the bridge uses transformers' loader)
def test_rotary_unpermute_is_needed(smollm, monkeypatch):
    """Without undoing llama.cpp's q/k permutation, the model still runs but logits are far off."""
    monkeypatch.setattr(models, "_unpermute_rotary", lambda w, n_heads: w)
    broken = relp_lens.load_model()
    tokens = smollm.to_tokens(PROMPTS[0])
    with torch.no_grad():
        assert (broken(tokens) - smollm(tokens)).abs().max().item() > 0.5


def test_generates_paris(smollm):
    with torch.no_grad():
        logits = smollm(smollm.to_tokens("The capital of France is"))
    assert smollm.to_string(logits[0, -1].argmax()) == " Paris"


def test_bos_default_and_tokenizer_cache(smollm, tmp_path, monkeypatch):
    assert smollm.to_tokens("Hi")[0, 0].item() == 0  # <|endoftext|>
    monkeypatch.setenv("RELP_LENS_CACHE", str(tmp_path))
    tok = load_gguf_tokenizer(shipped_gguf_path(), bos="<|im_start|>")
    assert tok.bos_token_id == 1
    cached = list((tmp_path / "tokenizers").iterdir())
    assert len(cached) == 1 and (cached[0] / "tokenizer_config.json").is_file()
    again = load_gguf_tokenizer(shipped_gguf_path(), bos="<|im_start|>")
    assert again("The keys")["input_ids"] == tok("The keys")["input_ids"]
    assert again.name_or_path == str(cached[0])  # served from the cache


def test_bad_model_names(tmp_path):
    with pytest.raises(ValueError, match="unknown shipped model 'gpt-5'"):
        relp_lens.load_model("gpt-5")
    with pytest.raises(relp_lens.RelPLensError, match="GGUF file not found"):
        relp_lens.load_model(gguf_path=tmp_path / "missing.gguf")


def test_relp_forward_identical_and_conservation(smollm):
    tokens = smollm.to_tokens("The keys to the cabinet")
    with torch.no_grad():
        outside = smollm(tokens)
        with relp_lens.relp(smollm, attention=True):
            inside = smollm(tokens)
    assert torch.equal(inside, outside)
    target = smollm.to_single_token(" are")
    logit, relevance = embedding_relevance(smollm, tokens, target, attention=True)
    assert logit == inside[0, -1, target].item()
    assert relevance == pytest.approx(logit, rel=1e-3)
    assert hooks_left(smollm) == []


def test_relp_tracks_exact_patching_on_agreement(smollm):
    rows = [
        dict(clean_prefix="The keys to the cabinet", patch_prefix="The key to the cabinet",
             clean_answer=" are", patch_answer=" is"),
        dict(clean_prefix="The parents", patch_prefix="The parent", clean_answer=" are", patch_answer=" is"),
    ]
    cmp = relp_lens.compare_with_exact(smollm, rows, methods=("relp", "grad"), n_nodes=24, progress=False)
    assert cmp.correlations["relp"] > 0.8
    attr = cmp.attributions["relp"]
    assert (attr.metric_clean > 0).all()  # the model prefers the right verb


def test_relp_circuit_beats_random_circuit(smollm):
    """The paper's claim in miniature: ~100 RelP-chosen neurons carry agreement; 100 random ones don't."""
    from relp_lens.circuits.ablation import evaluate_circuit
    from relp_lens.core.tasks import agreement_rows
    from relp_lens.circuits.circuit import Circuit, CircuitNode
    from relp_lens.circuits.selection import select_top_k

    rows = agreement_rows(smollm, 40, simple_fraction=0.0)
    build, held_out = rows[:28], rows[28:]
    attr = relp_lens.attribute(smollm, build, progress=False)
    circuit = select_top_k(attr, smollm, 100)
    ours = evaluate_circuit(smollm, circuit, held_out)
    gen = torch.Generator().manual_seed(0)
    keys = set()
    while len(keys) < 100:
        keys.add((int(torch.randint(30, (1,), generator=gen)), int(torch.randint(6, (1,), generator=gen)),
                  int(torch.randint(1536, (1,), generator=gen))))
    random_c = Circuit(nodes=[CircuitNode(*k) for k in keys], basis="mlp_post", hook_names=circuit.hook_names,
                       node_width=1536, model=circuit.model)
    theirs = evaluate_circuit(smollm, random_c, held_out)
    assert ours.faithfulness > 0.7
    assert theirs.faithfulness < 0.2
    assert ours.faithfulness - theirs.faithfulness > 0.5
