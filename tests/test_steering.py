"""Steering neurons: exact activation edits, clean-up, sweeps, and the agreement case on the shipped model."""

import pytest
import torch

from relp_lens import RelPLensError
from relp_lens.steering import steer, steering_sweep
from helpers import hooks_left, tiny_llama

PROMPT = "The keys to the cabinet"


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def post(model, layer=1):
    _, cache = model.run_with_cache(model.to_tokens(PROMPT), names_filter=f"blocks.{layer}.mlp.hook_post")
    return cache[f"blocks.{layer}.mlp.hook_post"][0]  # [pos, d_mlp]


def test_modes_edit_exactly_the_chosen_activations(llama):
    base = post(llama)
    nodes = [(1, 2, 5), (1, None, 7)]
    with steer(llama, nodes, 3.0, mode="scale"):
        s = post(llama)
    with steer(llama, nodes, 0.25, mode="set"):
        t = post(llama)
    with steer(llama, nodes, -1.0, mode="add"):
        a = post(llama)
    assert s[2, 5] == pytest.approx(3 * base[2, 5].item()) and torch.allclose(s[:, 7], 3 * base[:, 7])
    assert t[2, 5] == 0.25 and (t[:, 7] == 0.25).all()
    assert torch.allclose(a[:, 7], base[:, 7] - 1)
    untouched = torch.ones_like(base, dtype=torch.bool)
    untouched[2, 5] = False
    untouched[:, 7] = False
    for edited in (s, t, a):
        assert torch.equal(edited[untouched], base[untouched])
    assert hooks_left(llama) == []


def test_scale_one_is_identity_and_generate_works(llama):
    tokens = llama.to_tokens(PROMPT)
    with torch.no_grad():
        plain = llama(tokens)
        with steer(llama, [(0, None, 1), (2, 3, 4)], 1.0):
            assert torch.equal(llama(tokens), plain)
        with steer(llama, [(2, None, 4)], 50.0, mode="set"):
            out = llama.generate(PROMPT, max_new_tokens=3, verbose=False, do_sample=False)
    assert isinstance(out, str) and out.startswith(PROMPT)
    assert hooks_left(llama) == []


def test_sweep(llama):
    res = steering_sweep(llama, [PROMPT, "The parents"], [(2, None, 4)], ["are", "is"], factors=[-2, 1, 4])
    assert res["factors"] == [-2, 1, 4] and set(res["probs"]) == {"are", "is"}
    base = llama(llama.to_tokens(PROMPT))[0, -1].softmax(-1)[llama.to_single_token("are")].item()
    other = llama(llama.to_tokens("The parents"))[0, -1].softmax(-1)[llama.to_single_token("are")].item()
    assert res["probs"]["are"][1] == pytest.approx((base + other) / 2, rel=1e-5)


def test_bad_input(llama):
    with pytest.raises(RelPLensError, match="unknown steering mode"):
        with steer(llama, [(0, 0, 0)], 1.0, mode="double"):
            pass
    with pytest.raises(RelPLensError, match="layer outside"):
        with steer(llama, [(5, 0, 0)], 1.0):
            pass
    with pytest.raises(RelPLensError, match="neuron index 999"):
        with steer(llama, [(0, 0, 999)], 2.0):
            llama(llama.to_tokens(PROMPT))
    with pytest.raises(RelPLensError, match="not a single token"):
        steering_sweep(llama, PROMPT, [(0, 0, 0)], ["are is"])
    assert hooks_left(llama) == []


@pytest.mark.slow
def test_agreement_neurons_flip_the_verb(smollm):
    """Steering the top RelP neurons of a plural-subject circuit moves P(are) − P(is) far more than random ones."""
    import relp_lens
    from relp_lens import tasks

    rows = [r for r in tasks.agreement(smollm, "nounpp", 40) if r["clean_answer"] == " are"][:12]
    attr = relp_lens.attribute(smollm, rows, progress=False)
    top = [node for node, _ in attr.top_k(20, aggregate_pos=True)]
    gen = torch.Generator().manual_seed(0)
    rand = [(int(torch.randint(30, (1,), generator=gen)), None, int(torch.randint(1536, (1,), generator=gen)))
            for _ in range(20)]
    prompts = [r["clean_prefix"] for r in rows]

    def margin(nodes):
        res = steering_sweep(smollm, prompts, nodes, [" are", " is"], factors=[1.0, -1.0])
        are, is_ = res["probs"][" are"], res["probs"][" is"]
        return are[0] - is_[0], are[1] - is_[1]

    base, flipped = margin(top)
    _, random_flipped = margin(rand)
    assert base > 0  # the model prefers " are" for plural subjects
    assert flipped < base - 0.02  # negating the circuit's neurons pushes towards " is"
    assert (base - flipped) > 3 * abs(base - random_flipped)
