"""Neuron cards: unembedding readout, task activations and top contexts, checked by hand."""

import pytest
import torch

from relp_lens import RelPLensError
from relp_lens.cards import CORPUS, neuron_card, neuron_cards
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
