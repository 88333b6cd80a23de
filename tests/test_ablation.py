"""Mean-ablation faithfulness and completeness, checked against hand-written hooks."""

import pytest
import torch

from relp_lens import RelPLensError, attribute
from relp_lens.circuits.ablation import evaluate_circuit, faithfulness_sweep
from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts
from relp_lens.circuits.selection import select_top_k
from helpers import AGREEMENT_ROWS, hooks_left, tiny_llama

ROWS6 = [AGREEMENT_ROWS[0], AGREEMENT_ROWS[2]]


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def hand_metric(model, rows, keep, ablate_kept=False):
    """Mean logit diff with mean ablation written out by hand (all rows 6 tokens)."""
    hooks = [f"blocks.{l}.mlp.hook_post" for l in range(3)]
    patch = torch.cat([model.to_tokens(r["patch_prefix"]) for r in rows])
    clean = torch.cat([model.to_tokens(r["clean_prefix"]) for r in rows])
    _, pc = model.run_with_cache(patch)
    fwd = []
    for l, h in enumerate(hooks):
        mask = torch.zeros(6, 48, dtype=torch.bool)
        for (layer, pos, idx) in keep:
            if layer == l and pos is None:
                mask[:, idx] = True
            elif layer == l:
                mask[pos, idx] = True
        if ablate_kept:
            mask = ~mask
        mean = pc[h].mean(0)
        fwd.append((h, lambda x, hook, mask=mask, mean=mean: torch.where(mask, x, mean)))
    logits = model.run_with_hooks(clean, fwd_hooks=fwd)[:, -1]
    good = [model.to_single_token(r["clean_answer"].strip()) for r in rows]
    bad = [model.to_single_token(r["patch_answer"].strip()) for r in rows]
    return (logits[range(len(rows)), good] - logits[range(len(rows)), bad]).mean().item()


def circuit_of(model, keys):
    return Circuit(nodes=[CircuitNode(*k) for k in keys], basis="mlp_post",
                   hook_names=[f"blocks.{l}.mlp.hook_post" for l in range(3)], node_width=48,
                   model=model_facts(model), metric="logit_diff")


def test_matches_hand_computation(llama):
    keys = [(0, 2, 3), (1, None, 5), (2, 5, 7), (2, 5, 8)]
    ev = evaluate_circuit(llama, circuit_of(llama, keys), ROWS6)
    with torch.no_grad():
        f_c = hand_metric(llama, ROWS6, keys)
        f_comp = hand_metric(llama, ROWS6, keys, ablate_kept=True)
        f_empty = hand_metric(llama, ROWS6, [])
    assert ev.f_circuit == pytest.approx(f_c, abs=1e-5)
    assert ev.f_complement == pytest.approx(f_comp, abs=1e-5)
    assert ev.f_empty == pytest.approx(f_empty, abs=1e-5)
    denom = ev.f_model - f_empty
    assert ev.faithfulness == pytest.approx((f_c - f_empty) / denom)
    assert ev.completeness == pytest.approx((f_comp - f_empty) / denom)
    assert hooks_left(llama) == []


def test_full_circuit_is_fully_faithful(llama):
    everything = [(l, None, i) for l in range(3) for i in range(48)]
    ev = evaluate_circuit(llama, circuit_of(llama, everything), ROWS6)
    assert ev.faithfulness == pytest.approx(1.0, abs=1e-5)
    assert ev.completeness == pytest.approx(0.0, abs=1e-5)


def test_sweep_grows_towards_one(llama):
    attr = attribute(llama, ROWS6, progress=False)  # one length: every one of the 3 × 6 × 48 nodes selectable
    rows = faithfulness_sweep(llama, attr, ROWS6, sizes=[1, 10, 100, 48 * 3 * 6], progress=False)
    assert [r.k for r in rows] == [1, 10, 100, 864]
    assert rows[-1].faithfulness == pytest.approx(1.0, abs=1e-4)
    assert rows[-1].n_nodes == 864
    by_tau = faithfulness_sweep(llama, attr, ROWS6, taus=[0.5, 0.01], progress=False)
    assert by_tau[0].n_nodes <= by_tau[1].n_nodes
    for r in rows:
        single = evaluate_circuit(llama, select_top_k(attr, llama, r.k), ROWS6)
        assert single.faithfulness == pytest.approx(r.faithfulness)


def test_bad_input(llama):
    with pytest.raises(RelPLensError, match="circuit is empty"):
        evaluate_circuit(llama, circuit_of(llama, []), ROWS6)
    attr = attribute(llama, AGREEMENT_ROWS, progress=False)
    with pytest.raises(RelPLensError, match="exactly one of"):
        faithfulness_sweep(llama, attr, ROWS6)


def test_cpr_cmd_by_hand():
    from relp_lens.circuits.ablation import cpr_cmd

    # f = 0.5 at half the nodes: the curve (0,0)-(0.5,0.5)-(1,1) is the diagonal
    assert cpr_cmd([dict(n_nodes=50, faithfulness=0.5)], 100).to_dict() == dict(cpr=0.5, cmd=0.5, n_points=1)
    # f = 1 at half: CPR = 0.25 + 0.5, CMD = the triangle under 1 - f from 0 to 0.5
    got = cpr_cmd([dict(n_nodes=5, faithfulness=1.0)], 10)
    assert got.cpr == pytest.approx(0.75) and got.cmd == pytest.approx(0.25)
    # overshoot: f = 2 at k = 0.5; 1 - f goes 1 → -1 → 0, crossing zero at k = 0.25 (two triangles, not 0)
    got = cpr_cmd([dict(n_nodes=1, faithfulness=2.0)], 2)
    assert got.cpr == pytest.approx(0.5 * 2 * 0.5 + 0.5 * 3 * 0.5)
    assert got.cmd == pytest.approx(0.5 * 0.25 * 1 + 0.5 * 0.25 * 1 + 0.5 * 0.5 * 1)
    # repeated sizes are averaged; NaN and sizes beyond the total are errors
    assert cpr_cmd([dict(n_nodes=50, faithfulness=0.4), dict(n_nodes=50, faithfulness=0.6)], 100).cpr == 0.5
    with pytest.raises(RelPLensError, match="NaN"):
        cpr_cmd([dict(n_nodes=5, faithfulness=float("nan"))], 10)
    with pytest.raises(RelPLensError, match="outside"):
        cpr_cmd([dict(n_nodes=11, faithfulness=1.0)], 10)


def test_mean_ablation_is_a_deprecated_name_for_ablation():
    from relp_lens.circuits import ablation

    with pytest.warns(DeprecationWarning, match="MeanAblation is deprecated"):
        assert ablation.MeanAblation is ablation.Ablation
    with pytest.raises(AttributeError):
        ablation.NoSuchName  # noqa: B018
