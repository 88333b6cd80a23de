"""Steering neurons: exact activation edits, clean-up, sweeps, and the agreement case on the shipped model."""

import pytest
import torch

from relp_lens import RelPLensError
from relp_lens.analysis.steering import steer, steering_direction, steering_sweep
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


def test_one_value_per_node(llama):
    base = post(llama)
    with steer(llama, [(1, 2, 5), (1, 3, 5), (1, None, 7)], [2.0, -1.0, 0.5], mode="add"):
        a = post(llama)
    assert a[2, 5] == pytest.approx(base[2, 5].item() + 2) and a[3, 5] == pytest.approx(base[3, 5].item() - 1)
    assert torch.allclose(a[:, 7], base[:, 7] + 0.5)
    with pytest.raises(RelPLensError, match="2 steering values for 3 nodes"):
        with steer(llama, [(1, 2, 5), (1, 3, 5), (1, None, 7)], [1.0, 2.0]):
            pass
    assert hooks_left(llama) == []


def test_direction_is_a_mean_difference_and_sweeps_along_it(llama):
    nodes = [(1, 1, 5), (0, None, 3)]
    source, target = ["The keys to the cabinet", "The parents near the doctor"], ["The key to the cabinet"]

    def acts(p):
        _, cache = llama.run_with_cache(llama.to_tokens(p))
        return cache["blocks.1.mlp.hook_post"][0, 1, 5].item(), cache["blocks.0.mlp.hook_post"][0, :, 3].mean().item()

    d = steering_direction(llama, nodes, source, target)
    src = [acts(p) for p in source]
    assert d[0] == pytest.approx(acts(target[0])[0] - (src[0][0] + src[1][0]) / 2, rel=1e-5, abs=1e-6)
    assert d[1] == pytest.approx(acts(target[0])[1] - (src[0][1] + src[1][1]) / 2, rel=1e-5, abs=1e-6)
    res = steering_sweep(llama, PROMPT, nodes, ["are"], factors=[0.0, 2.0], mode="add", direction=d)
    with steer(llama, nodes, [2 * v for v in d], mode="add"), torch.no_grad():
        p2 = llama(llama.to_tokens(PROMPT))[0, -1].softmax(-1)[llama.to_single_token("are")].item()
    assert res["probs"]["are"][1] == pytest.approx(p2, rel=1e-5) and res["mode"] == "add × direction"
    with pytest.raises(RelPLensError, match="no target prompts"):
        steering_direction(llama, nodes, source, [])
    with pytest.raises(RelPLensError, match="does not have"):
        steering_direction(llama, [(1, 9, 5)], source, target)


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


def test_batched_sweep_equals_one_prompt_at_a_time(llama):
    prompts = [PROMPT, "The parents", "The author near the doctors", "The doctor"]  # several token lengths
    many = steering_sweep(llama, prompts, [(2, -1, 4), (1, 0, 7)], ["are", "is"], factors=[-2, 0.5], batch_size=3)
    for t in ("are", "is"):
        single = [steering_sweep(llama, [p], [(2, -1, 4), (1, 0, 7)], [t], factors=[-2, 0.5])["probs"][t]
                  for p in prompts]
        assert many["probs"][t] == pytest.approx([sum(v) / len(prompts) for v in zip(*single)], rel=1e-5)


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
    with pytest.raises(RelPLensError, match=r"layer must be an integer in \[0, 3\)"):
        with steer(llama, [(5, 0, 0)], 1.0):
            pass
    with pytest.raises(RelPLensError, match=r"index must be an integer in \[0, 48\)"):
        with steer(llama, [(0, 0, 999)], 2.0):
            llama(llama.to_tokens(PROMPT))
    # issue 9, case 5: each of these was a silent no-op, NaN logits or a raw IndexError
    with pytest.raises(RelPLensError, match="position 9 does not exist"):
        with steer(llama, [(0, 9, 0)], 2.0):
            llama(llama.to_tokens(PROMPT))
    with pytest.raises(RelPLensError, match="must be finite"):
        with steer(llama, [(0, 1, 0)], float("nan")):
            pass
    with pytest.raises(RelPLensError, match="index must be an integer"):
        steering_direction(llama, [(0, 1, 2.0)], [PROMPT], [PROMPT])
    with pytest.raises(RelPLensError, match="index must be an integer"):
        steering_direction(llama, [(0, 1, 48)], [PROMPT], [PROMPT])
    with pytest.raises(RelPLensError, match="position must be an integer"):
        steering_direction(llama, [(0, 1.0, 3)], [PROMPT], [PROMPT])
    with pytest.raises(RelPLensError, match="not a single token"):
        steering_sweep(llama, PROMPT, [(0, 0, 0)], ["are is"])
    assert hooks_left(llama) == []


@pytest.mark.slow
def test_agreement_neurons_flip_the_verb(smollm):
    """Steering the top RelP neurons of a plural-subject circuit moves P(are) − P(is) far more than random ones."""
    import relp_lens
    from relp_lens.core import tasks

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


@pytest.mark.slow
def test_worked_case_circuit_direction_flips_the_verb(smollm):
    """The README's worked case: adding the singular-minus-plural mean difference on the top-20 circuit neurons
    turns plural held-out prompts from " are" to " is"; the same on 20 random neurons (same slots) does nothing."""
    import relp_lens
    from relp_lens.core.tasks import agreement_rows

    rows = agreement_rows(smollm, 64, simple_fraction=0.0)
    build, held = rows[:40], rows[40:]
    attr = relp_lens.attribute(smollm, build, progress=False)
    circuit = relp_lens.select_top_k(attr, smollm, 20)
    nodes = [(n.layer, n.pos, n.index) for n in circuit.nodes]
    gen = torch.Generator().manual_seed(0)
    rand = [(layer, pos, int(torch.randint(smollm.cfg.d_mlp, (1,), generator=gen))) for layer, pos, _ in nodes]
    plural_build = [r for r in build if r["clean_answer"] == " are"]
    prompts = [r["clean_prefix"] for r in held if r["clean_answer"] == " are"]

    def share_are(nodes):  # P(are) / (P(are) + P(is)) at factors 0 and 2
        d = steering_direction(smollm, nodes, [r["clean_prefix"] for r in plural_build],
                               [r["patch_prefix"] for r in plural_build])
        res = steering_sweep(smollm, prompts, nodes, [" are", " is"], factors=[0.0, 2.0], mode="add", direction=d)
        return [a / (a + b) for a, b in zip(res["probs"][" are"], res["probs"][" is"])]

    (before, after), (_, random_after) = share_are(nodes), share_are(rand)
    assert before > 0.7  # the model prefers " are" for plural subjects
    assert after < 0.3  # flipped to " is"
    assert random_after > 0.7  # random neurons in the same slots leave the verb alone


def test_negative_positions_steer_the_last_token(llama):
    """pos -1 is the last token of every forward pass, whatever the prompt's length."""
    for prompt in ("The keys", PROMPT):
        n = llama.to_tokens(prompt).shape[1]
        with steer(llama, [(1, -1, 4)], 3.0, mode="set"), torch.no_grad():
            _, cache = llama.run_with_cache(llama.to_tokens(prompt))
        assert cache["blocks.1.mlp.hook_post"][0, n - 1, 4].item() == 3.0
        assert cache["blocks.1.mlp.hook_post"][0, n - 2, 4].item() != 3.0
    d = steering_direction(llama, [(1, -1, 4)], ["The keys"], [PROMPT])
    with torch.no_grad():
        _, a = llama.run_with_cache(llama.to_tokens("The keys"))
        _, b = llama.run_with_cache(llama.to_tokens(PROMPT))
    assert d[0] == pytest.approx(b["blocks.1.mlp.hook_post"][0, -1, 4].item()
                                 - a["blocks.1.mlp.hook_post"][0, -1, 4].item(), rel=1e-5)
    assert hooks_left(llama) == []


def _planted_group_circuit(model, token="are", size=3):
    """A circuit whose group G1 is last-layer neurons at the last position writing straight into ``token``'s
    unembedding (each neuron's W_out row set to sign(activation) × W_U[:, token]): scaling the group up must
    raise P(token), scaling it down or negating it must lower it."""
    from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts
    from relp_lens.analysis.groups import NeuronGroup, NeuronGroups

    layer = model.cfg.n_layers - 1
    acts = post(model, layer)[-1]  # [d_mlp] at the last position
    idx = acts.abs().topk(size).indices.tolist()
    t = model.to_single_token(token)
    with torch.no_grad():
        for i in idx:
            model.blocks[layer].mlp.W_out[i] = torch.sign(acts[i]) * model.W_U[:, t] / model.W_U[:, t].norm()
    hooks = [f"blocks.{l}.mlp.hook_post" for l in range(model.cfg.n_layers)]
    nodes = [CircuitNode(layer, -1, i, 1.0) for i in idx] + [CircuitNode(0, -1, 0, 0.1)]
    groups = NeuronGroups([NeuronGroup("G1", "planted", [n.label() for n in nodes[:size]], float(size)),
                           NeuronGroup("G2", "other", [nodes[-1].label()], 0.1)], ["attribution"])
    return Circuit(nodes, "mlp_post", hooks, model.cfg.d_mlp, model_facts(model), groups=groups.to_dict()), idx


def test_group_steering_moves_the_planted_token():
    from relp_lens.analysis.steering import FACTORS, group_steering, random_groups

    model = tiny_llama(seed=3)
    circuit, idx = _planted_group_circuit(model)
    res = group_steering(model, circuit, "G1", [PROMPT], ["are", "is"], n_random=4)
    assert hooks_left(model) == []
    assert res["factors"] == list(FACTORS) and res["group"] == "G1" and res["size"] == 3
    p = dict(zip(res["factors"], res["probs"]["are"]))
    base = model(model.to_tokens(PROMPT))[0, -1].softmax(-1)[model.to_single_token("are")].item()
    assert p[1] == pytest.approx(base, rel=1e-5)  # factor 1 is the unsteered model
    assert p[4] > p[2] > p[1] > p[0] > p[-1] > p[-4]  # the planted direction: monotone in the factor
    with steer(model, [(circuit.nodes[0].layer, -1, i) for i in idx], 0.0, mode="set"):
        zeroed = model(model.to_tokens(PROMPT))[0, -1].softmax(-1)[model.to_single_token("are")].item()
    assert p[0] == pytest.approx(zeroed, rel=1e-5)  # factor 0 zero-ablates the group
    # random groups: same size, layer and position, other neurons; they barely move the token
    assert len(res["random"]["are"]) == 4 and len(res["random_mean"]["are"]) == len(FACTORS)
    spread = max(res["random_mean"]["are"]) - min(res["random_mean"]["are"])
    assert spread < (p[4] - p[-4]) / 3
    others = random_groups([n.key for n in circuit.nodes[:3]], model.cfg.d_mlp, 5, seed=1,
                           exclude=[n.key for n in circuit.nodes])
    for g in others:
        assert len(g) == 3 and {(l, q) for l, q, _ in g} == {(circuit.nodes[0].layer, -1)}
        assert not {i for *_, i in g} & set(idx) and len({i for *_, i in g}) == 3
    with pytest.raises(RelPLensError, match="no group 'G7'"):
        group_steering(model, circuit, "G7", [PROMPT], ["are"])


def test_group_steering_plot():
    from relp_lens.views.plots import group_steering_plot
    from relp_lens.analysis.steering import group_steering

    model = tiny_llama(seed=3)
    circuit, _ = _planted_group_circuit(model)
    fig = group_steering_plot(group_steering(model, circuit, 0, [PROMPT, "The parents"], ["are"], n_random=2))
    names = [t.name for t in fig.data if t.name]
    assert names == ["'are', 2 random groups", "'are', G1"] and "G1" in fig.layout.title.text
