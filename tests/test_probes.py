"""Hypothesis probes: AUROC against brute force and hand-built cases, and on a tiny model's own neurons."""

import itertools

import pytest
import torch

from relp_lens import RelPLensError
from relp_lens.analysis.probes import auroc, auroc_heatmap, classes_of, neuron_auroc, node_values, selective_neurons
from helpers import hooks_left, tiny_llama

PROMPTS = ["The keys to the cabinet", "The key", "The parents of the doctor", "The author near the doctors",
           "The doctors", "The cabinet of the parents", "The parent", "The keys"]  # several token lengths


def brute_auroc(x: list[float], pos: list[bool]) -> float:
    """P(x_pos > x_neg) + ½ P(x_pos = x_neg) over every pair."""
    pairs = [(a, b) for (a, pa), (b, pb) in itertools.product(zip(x, pos), repeat=2) if pa and not pb]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_auroc_hand_cases():
    v = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert auroc(v, torch.tensor([False, False, True, True])).item() == 1.0
    assert auroc(v, torch.tensor([True, True, False, False])).item() == 0.0
    assert auroc(torch.ones(4, 1), torch.tensor([True, False, True, False])).item() == 0.5  # all tied
    assert auroc(v, torch.tensor([False, True, False, True])).item() == pytest.approx(0.75)  # 2>1, 4>1, 4>3; 2<3


def test_auroc_matches_brute_force_with_ties():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (23, 7), generator=g).float()  # many ties
    positive = torch.rand(23, generator=g) < 0.4
    got = auroc(values, positive)
    for j in range(values.shape[1]):
        assert got[j].item() == pytest.approx(brute_auroc(values[:, j].tolist(), positive.tolist()), abs=1e-6)


def test_auroc_errors():
    with pytest.raises(RelPLensError, match="both classes"):
        auroc(torch.ones(3, 2), torch.tensor([True, True, True]))
    with pytest.raises(RelPLensError, match="NaN"):
        auroc(torch.tensor([[float("nan")], [1.0]]), torch.tensor([True, False]))


@pytest.mark.hooked
def test_neuron_auroc_finds_the_neuron_that_defines_the_label():
    """Label the prompts by one neuron's own last-token activation: that neuron gets AUROC 1 (and its negation
    0); multi-class maps are one-vs-rest; prompts of different lengths line up at their last token."""
    model = tiny_llama()
    values = node_values(model, PROMPTS, progress=False)  # [n, layer, width]
    assert values.shape == (len(PROMPTS), model.cfg.n_layers, model.cfg.d_mlp)
    layer, index = 1, 7
    x = values[:, layer, index]
    high = (x > x.median()).tolist()
    auc = neuron_auroc(model, PROMPTS, high, progress=False)
    assert auc.shape == (model.cfg.n_layers, model.cfg.d_mlp)
    assert auc[layer, index].item() == 1.0
    assert neuron_auroc(model, PROMPTS, [not h for h in high], progress=False)[layer, index].item() == 0.0
    assert (layer, index, 1.0) in selective_neurons(auc, threshold=0.99, k=None)
    three = [int(v > x.quantile(0.33)) + int(v > x.quantile(0.66)) for v in x.tolist()]
    multi = neuron_auroc(model, PROMPTS, three, progress=False)
    assert multi.shape == (3, model.cfg.n_layers, model.cfg.d_mlp)
    flat = values.reshape(len(PROMPTS), -1)
    for c in classes_of(three):
        want = auroc(flat, torch.tensor([t == c for t in three])).reshape(values.shape[1:])
        assert torch.equal(multi[c], want)
    assert multi[2, layer, index].item() == 1.0 and multi[0, layer, index].item() == 0.0
    assert len(auroc_heatmap(auc).data) == 1
    assert hooks_left(model) == []


@pytest.mark.hooked
def test_neuron_auroc_errors():
    model = tiny_llama()
    with pytest.raises(RelPLensError, match="3 labels for 8 prompts"):
        neuron_auroc(model, PROMPTS, [True, False, True], progress=False)
    with pytest.raises(RelPLensError, match="two classes"):
        neuron_auroc(model, PROMPTS, [1] * 8, progress=False)
    with pytest.raises(RelPLensError, match="no position -5"):
        neuron_auroc(model, PROMPTS, [i % 2 for i in range(8)], position=-5, progress=False)
    with pytest.raises(RelPLensError, match="threshold"):
        selective_neurons(torch.zeros(2, 3), threshold=0.4)
    assert hooks_left(model) == []
