"""Neuron groups: planted structure is recovered, stability separates real groups from noise, and groups
live in the circuit file through pruning."""

import numpy as np
import pytest
import torch

import relp_lens
from relp_lens import RelPLensError
from relp_lens.circuits.circuit import Circuit
from relp_lens.circuits.edges import attribute_edges, prune_edges
from relp_lens.analysis.groups import (NeuronGroups, affinity, choose_k, cluster, group_neurons, group_nodes, groups_of,
                              node_profiles, stability)
from helpers import hooks_left, same_length_rows, tiny_llama


def ari(a, b):
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


def planted(seed=0, n_prompts=40, sizes=(8, 6, 10), noise=0.3):
    """Profiles of nodes in planted groups: each group follows its own latent signal over the prompts."""
    rng = np.random.default_rng(seed)
    truth = np.concatenate([[g] * s for g, s in enumerate(sizes)])
    latent_s = rng.normal(size=(n_prompts, len(sizes)))
    latent_a = rng.normal(size=(n_prompts, len(sizes)))
    w = rng.uniform(0.5, 2.0, size=len(truth))
    scores = latent_s[:, truth] * w + noise * rng.normal(size=(n_prompts, len(truth)))
    acts = latent_a[:, truth] * w + noise * rng.normal(size=(n_prompts, len(truth)))
    return truth, scores, acts


def chain_edges(truth, seed=0):
    """Edge profiles of a chain G0 → G1 → G2: each group reads from the one before and writes to the next."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    a = np.zeros((n, n))  # [target, source]
    for t in range(n):
        for s in range(n):
            if truth[t] == truth[s] + 1:
                a[t, s] = rng.uniform(0.5, 1.5)
    return np.concatenate([a.T, a], axis=0)  # edges in (row), then edges out (column)


@pytest.mark.parametrize("kind", ["attribution", "activation", "all"])
def test_planted_groups_are_recovered(kind):
    truth, scores, acts = planted()
    aff = affinity(scores if kind in ("attribution", "all") else None, acts if kind in ("activation", "all") else None)
    assert choose_k(aff, max_groups=6) == 3
    assert ari(truth, cluster(aff, 3)) == pytest.approx(1.0)


def test_chain_steps_stay_apart_from_edges_alone():
    """Edges A → B do not pull A and B together; shared inputs and outputs do: a 3-step chain splits in 3."""
    truth, _, _ = planted()
    aff = affinity(edges=chain_edges(truth))
    assert ari(truth, cluster(aff, 3)) == pytest.approx(1.0)


def test_stability_separates_structure_from_noise():
    truth, scores, acts = planted()
    labels = cluster(affinity(scores, acts), 3)
    st, per_group = stability(dict(scores=scores, acts=acts, edges=None), labels, 3)
    assert st["ari"] > 0.95 and min(per_group) > 0.95
    assert len(st["ari_seeds"]) == 5 and len(st["ari_subsets"]) == 5
    rng = np.random.default_rng(1)
    noise_s, noise_a = rng.normal(size=scores.shape), rng.normal(size=acts.shape)
    labels = cluster(affinity(noise_s, noise_a), 3)
    st_noise, _ = stability(dict(scores=noise_s, acts=noise_a, edges=None), labels, 3)
    assert st_noise["ari"] < 0.6 and st_noise["ari"] == np.mean(st_noise["ari_subsets"])  # random profiles: re-clustering a subset gives another partition


def test_affinity_hand_case():
    scores = np.array([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0]])  # cos(n0, n1) = 1, cos(n0, n2) = -1 → clipped to 0
    aff = affinity(scores)
    assert aff[0, 1] == pytest.approx(1.0) and aff[0, 2] == pytest.approx(0.0) and aff[1, 2] == 0.0
    assert np.allclose(np.diag(aff), 1)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llama()
    rows = same_length_rows(model)
    attr = relp_lens.attribute(model, rows, progress=False)
    circuit = relp_lens.select_top_k(attr, model, 14)
    return model, rows, circuit


def test_profiles_of_prompts_of_different_lengths():
    """End-aligned prompts: each node is read at its own token in every prompt (negative positions from the
    end); a node some prompts lack is named in a warning and counts as no attribution there."""
    from helpers import AGREEMENT_ROWS

    model = tiny_llama()
    rows = AGREEMENT_ROWS
    attr = relp_lens.attribute(model, rows, progress=False)
    assert attr.alignment.end_aligned
    circuit = relp_lens.select_top_k(attr, model, 12)
    with pytest.warns(UserWarning) if any(n.pos is not None and n.pos < -4 for n in circuit.nodes) else _none():
        scores, acts = node_profiles(model, circuit, rows)
    for i, r in enumerate(rows):
        tokens = model.to_tokens(r["clean_prefix"])
        _, cache = model.run_with_cache(tokens)
        cols = attr.alignment.columns(tokens.shape[1])
        for j, n in enumerate(circuit.nodes):
            t = tokens.shape[1] + n.pos if n.pos < 0 else n.pos
            if t < attr.alignment.tail_start or t >= tokens.shape[1]:
                assert scores[i, j] == 0
                continue
            assert scores[i, j] == pytest.approx(float(attr.scores[i, n.layer, cols[t], n.index]), abs=1e-6)
            assert acts[i, j] == pytest.approx(float(cache[circuit.hook_names[n.layer]][0, t, n.index]), abs=1e-5)


class _none:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_profiles_match_attribution_and_cache(tiny):
    model, rows, circuit = tiny
    scores, acts = node_profiles(model, circuit, rows)
    attr = relp_lens.attribute(model, rows, progress=False)
    _, cache = model.run_with_cache(model.to_tokens([r["clean_prefix"] for r in rows]))
    for j, n in enumerate(circuit.nodes):
        c = attr.alignment.column(n.pos)
        assert np.allclose(scores[:, j], attr.scores[:, n.layer, c, n.index].numpy(), atol=1e-6)
        a = cache[circuit.hook_names[n.layer]][:, n.pos, n.index]  # one length: absolute positions
        assert np.allclose(acts[:, j], a.detach().numpy(), atol=1e-5)
    # the circuit's mean score is the mean of the per-prompt profile
    assert np.allclose(scores.mean(0), [n.score for n in circuit.nodes], atol=1e-5)


def test_group_neurons_end_to_end(tiny, tmp_path):
    model, rows, circuit = tiny
    circuit = attribute_edges(model, circuit, rows, progress=False)
    grouped = group_neurons(model, circuit, n_seeds=2, n_subsets=2)
    assert not hooks_left(model)
    groups = groups_of(grouped)
    assert groups is grouped.groups and isinstance(groups, NeuronGroups) and circuit.groups is None
    assert grouped.stats["groups"].n_prompts == len(circuit.data["rows"]) and grouped.stats["groups"].backward_passes
    assert "edges" in grouped.stats  # the earlier step's statistics are kept
    assert groups.features == ["attribution", "activation", "edges"]
    members = [m for g in groups.groups for m in g.members]
    assert sorted(members) == sorted(n.label() for n in circuit.nodes)  # a partition of the circuit
    assert 2 <= len(groups.groups) <= 8 and -1 <= groups.stability["ari"] <= 1
    assert [abs(g.score) for g in groups.groups] == sorted((abs(g.score) for g in groups.groups), reverse=True)
    assert all(g.label.startswith("L") and len(g.promoted) == 3 for g in groups.groups)
    nodes = group_nodes(grouped, "G1")
    assert len(nodes) == len(groups.groups[0].members) and all(len(n) == 3 for n in nodes)
    loaded = Circuit.load(grouped.save(tmp_path / "c.json"))
    assert groups_of(loaded) == groups
    pruned = prune_edges(loaded, 0.2)
    kept = {n.label() for n in pruned.nodes}
    assert len(kept) < len(circuit.nodes)  # pruning removed neurons
    left = groups_of(pruned)
    assert all(m in kept for g in left.groups for m in g.members) and left.pruned
    assert sum(len(g.members) for g in left.groups) == len(kept)
    # re-weighing edges makes groups built from edges stale: they are dropped
    again = attribute_edges(model, grouped, rows, progress=False)
    assert again.groups is None
    print(groups.summary())


def test_group_errors(tiny):
    model, rows, circuit = tiny
    with pytest.raises(RelPLensError, match="needs a circuit with edges"):
        group_neurons(model, circuit, rows, features=["edges"])
    with pytest.raises(RelPLensError, match="unknown feature"):
        group_neurons(model, circuit, rows, features=["vibes"])
    with pytest.raises(RelPLensError, match="n_groups"):
        group_neurons(model, circuit, rows, n_groups=99)
    with pytest.raises(RelPLensError, match="no neuron groups"):
        groups_of(circuit)
    grouped = group_neurons(model, circuit, rows, n_groups=2, n_seeds=1, n_subsets=1)
    assert len(groups_of(grouped).groups) == 2
    with pytest.raises(RelPLensError, match="no group 'G9'"):
        group_nodes(grouped, "G9")
    d = grouped.to_dict()
    d["groups"]["groups"][0]["members"][0] = "L0/9999@-1"
    with pytest.raises(RelPLensError, match="is not a node of this circuit"):
        Circuit.from_dict(d)
    d = grouped.to_dict()
    d["groups"]["groups"][1]["members"].append(d["groups"]["groups"][0]["members"][0])
    with pytest.raises(RelPLensError, match="more than one group"):
        Circuit.from_dict(d)
    assert not hooks_left(model)


def test_groups_in_graph_and_report(tiny):
    from relp_lens.views.plots import GROUP_COLOURS, attribution_graph
    from relp_lens.views.report import ReportInputs, render_report

    model, rows, circuit = tiny
    circuit = attribute_edges(model, circuit, rows, progress=False)
    grouped = group_neurons(model, circuit, rows, n_groups=3, n_seeds=1, n_subsets=2)
    groups = groups_of(grouped)
    fig = attribution_graph(grouped, max_nodes=14)
    legend = [t.name for t in fig.data if t.name and t.name.startswith("G")]
    assert legend == [f"{g.name} ({len(g.members)})" for g in groups.groups]
    neurons = next(t for t in fig.data if t.name == "neurons")
    drawn = {n.label() for n in grouped.nodes}
    for text, colour in zip(neurons.text, neurons.marker.line.color):
        label = text.split("</b>")[0][3:]
        k = groups.assignment([label])[0]
        assert label in drawn and colour == GROUP_COLOURS[k] and f"group {groups.groups[k].name}: " in text
    attr = relp_lens.attribute(model, rows, progress=False)
    page = render_report(attr, grouped, ReportInputs())
    assert "<h2>Neuron groups</h2>" in page and page.count("<tr><td>G") == 3
    assert "<th>group</th>" in page
    plain = render_report(attr, circuit, ReportInputs())
    assert "Neuron groups" not in plain and "<th>group</th>" not in plain


def test_steering_a_group_by_number_after_pruning_names_the_right_group(tiny):
    """Pruning can empty a group; group numbers then follow the remaining groups, and so do the names."""
    from relp_lens.analysis.steering import group_steering
    from relp_lens.circuits.edges import subgraph

    model, rows, circuit = tiny
    grouped = group_neurons(model, circuit, rows, n_groups=3, n_seeds=1, n_subsets=1)
    first = groups_of(grouped).groups[0]
    keep = [i for i, n in enumerate(grouped.nodes) if n.label() not in first.members]
    pruned = grouped.subgraph(keep, [])
    assert subgraph(grouped, keep, []) == pruned  # the former function: the same circuit
    names = [g.name for g in groups_of(pruned).groups]
    assert first.name not in names and len(names) == 2
    res = group_steering(model, pruned, 0, [rows[0]["clean_prefix"]], ["are"], factors=[0, 1], n_random=1)
    assert res["group"] == names[0] and res["size"] == len(groups_of(pruned).groups[0].members)


def test_cluster_labels_are_contiguous():
    aff = np.ones((6, 6))  # identical points: k-means may leave clusters empty
    labels = cluster(aff, 3)
    assert sorted(set(labels.tolist())) == list(range(len(set(labels.tolist()))))
