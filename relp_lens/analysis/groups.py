"""Neuron groups (supernodes): a circuit's neurons clustered into units that act together.

The paper groups a circuit's neurons by hand (city → state → capital) and names automatic grouping as an
open question. relp_lens groups them from what the neurons share:

1. Profiles over the build prompts (or ``rows``), per circuit node ``(layer, pos, index)``:
   - its attribution score on each prompt, ``[prompt, node]`` (the circuit's gradient method, RelP for
     anything else; ``pos=None``: summed over the prompt's positions, as selection sums it);
   - its clean activation on each prompt at its position (``pos=None``: the mean over the prompt's positions).
   Prompts are tokenized as the circuit's were (with BOS or not, ``circuit.prepend_bos``).
   A position is found in each prompt as evaluation finds it (:func:`relp_lens.core.positions.resolve` with these
   prompts' shared prefix). A node absent from some prompts (a warning names it) counts as attribution 0
   there, and its activation as its mean over the other prompts; absent from every prompt is an error.
2. Affinities between nodes, each in [0, 1]:
   - ``attribution``: cosine similarity of score profiles, negative values clipped to 0 — neurons that
     matter on the same prompts, in the same direction;
   - ``activation``: Pearson correlation of activation profiles, clipped to 0 — co-activation;
   - ``edges`` (only when the circuit has edges): cosine similarity of the nodes' |weight| rows — edges in
     from every other node and from the embeddings, then edges out to every other node and to the output —
     so neurons that read from and write to the same places group together. A direct edge A → B puts
     nothing in a shared coordinate: the steps of a chain are not pulled into one group by their link.
   The affinity is the mean of the kinds used (default: all that are available).
3. Spectral clustering (scikit-learn, precomputed affinity, k-means on the spectral embedding) into ``k``
   groups; with ``n_groups=None``, ``k`` in ``[2, max_groups]`` maximises the silhouette score of the
   distance 1 − affinity.
4. Stability: the clustering is repeated with ``n_seeds`` other seeds, and on ``n_subsets`` random subsets of
   the prompts (``subset_fraction`` of them; profiles from those prompts only, edges — computed on all
   prompts — kept; with ``edges`` alone there are no prompt profiles and only seeds are tried), each compared with the reference by the adjusted Rand index (ARI: 1 = the same
   partition, ≈ 0 = chance). Per group: the mean over those runs of its best Jaccard overlap with a group
   of the run. The stability score is the mean ARI over the subsets (seeds alone, when there are fewer than
   4 prompts): re-drawing the data is the harder test — k-means seeds rarely move a partition.
5. Labels, like a neuron card for the whole group: its layers and positions, and the tokens its mean write
   promotes — Σ over members of (mean clean activation × the member's output direction, ``W_out`` row
   times the final norm weight), read through ``W_U``.

Groups are stored in the circuit (``circuit.groups``, a :class:`~relp_lens.circuits.circuit.NeuronGroups`: the
data model's type, importable from here too) and in its file (field ``groups``), members named by node label
(``L3/100@-1``) so pruning keeps them valid (:meth:`~relp_lens.circuits.circuit.Circuit.subgraph` drops members
that leave); what the grouping cost is in ``circuit.stats["groups"]``.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from relp_lens.circuits.circuit import FEATURES, Circuit, NeuronGroup, NeuronGroups, StepStats
from relp_lens.core import backends
from relp_lens.core import distributed as dp
from relp_lens.core import validate
from relp_lens.core.errors import RelPLensError
from relp_lens.core.metrics import METRICS

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

__all__ = ["FEATURES", "NeuronGroup", "NeuronGroups", "affinity", "best_jaccard", "choose_k", "cluster",
           "edge_profiles", "group_neurons", "group_nodes", "groups_of", "node_profiles", "stability"]


# -- step 2: affinities ------------------------------------------------------------------------------------
def _cosine(x: np.ndarray) -> np.ndarray:
    """``[node, node]`` cosine similarity of the columns of ``x`` (``[features, node]``); 0 for a zero column."""
    norm = np.linalg.norm(x, axis=0)
    y = x / np.where(norm > 0, norm, 1.0)
    return y.T @ y


def affinity(scores: np.ndarray | None = None, acts: np.ndarray | None = None,
             edges: np.ndarray | None = None) -> np.ndarray:
    """The mean affinity (step 2) of the kinds given, ``[node, node]``.

    ``scores``, ``acts``: ``[prompt, node]`` profiles; ``edges``: ``[edge slot, node]`` |weight| profiles —
    per node, its edges in from each possible source, then its edges out to each possible target
    (:func:`edge_profiles`).
    """
    parts = []
    if scores is not None:
        parts.append(np.clip(_cosine(scores), 0, 1))
    if acts is not None:
        parts.append(np.clip(_cosine(acts - acts.mean(0, keepdims=True)), 0, 1))
    if edges is not None:
        parts.append(np.clip(_cosine(np.abs(edges)), 0, 1))
    if not parts:
        raise RelPLensError("no features to group by")
    out = sum(parts) / len(parts)
    np.fill_diagonal(out, 1.0)
    return out


# -- step 3: clustering -------------------------------------------------------------------------------------
def cluster(aff: np.ndarray, n_groups: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering of a ``[node, node]`` affinity into ``n_groups`` labels (``[node]`` ints)."""
    from sklearn.cluster import SpectralClustering

    n = aff.shape[0]
    if not 1 <= n_groups <= n:
        raise RelPLensError(f"cannot split {n} nodes into {n_groups} groups")
    if n_groups == 1:
        return np.zeros(n, dtype=int)
    a = aff + 1e-6  # keeps the affinity graph connected (isolated nodes would make the embedding degenerate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = SpectralClustering(n_clusters=n_groups, affinity="precomputed", random_state=seed,
                                   assign_labels="kmeans", n_init=10)
        labels = model.fit_predict(a)
    return np.unique(labels, return_inverse=True)[1].reshape(-1)  # 0..g-1 (k-means can leave a cluster empty)


def choose_k(aff: np.ndarray, max_groups: int = 8, seed: int = 0) -> int:
    """The ``k`` in ``[2, max_groups]`` whose clustering has the largest silhouette score on 1 − affinity."""
    from sklearn.metrics import silhouette_score

    n = aff.shape[0]
    dist = np.clip(1.0 - aff, 0, None)
    np.fill_diagonal(dist, 0.0)
    best, best_k = -2.0, 2
    for k in range(2, min(max_groups, n - 1) + 1):
        labels = cluster(aff, k, seed)
        if len(set(labels.tolist())) < 2:
            continue
        s = silhouette_score(dist, labels, metric="precomputed")
        if s > best + 1e-9:
            best, best_k = s, k
    return best_k


# -- step 4: stability -------------------------------------------------------------------------------------
def best_jaccard(ref: np.ndarray, other: np.ndarray) -> list[float]:
    """Per group of ``ref``: its largest Jaccard overlap with a group of ``other`` (same nodes)."""
    out = []
    for g in sorted(set(ref.tolist())):
        a = set(np.flatnonzero(ref == g).tolist())
        out.append(max(len(a & b) / len(a | b) for b in (set(np.flatnonzero(other == h).tolist())
                                                        for h in set(other.tolist()))))
    return out


def stability(profiles: dict[str, np.ndarray | None], labels: np.ndarray, n_groups: int, *, seed: int = 0,
              n_seeds: int = 5, n_subsets: int = 5, subset_fraction: float = 0.7,
              aff: np.ndarray | None = None) -> tuple[dict, list[float]]:
    """ARI of re-clusterings against ``labels`` (step 4) → (``{"ari", "ari_seeds", "ari_subsets", …}``,
    per-group mean best Jaccard). ``aff``: the profiles' affinity, when the caller already has it."""
    from sklearn.metrics import adjusted_rand_score

    if aff is None:
        aff = affinity(profiles.get("scores"), profiles.get("acts"), profiles.get("edges"))
    runs, seeds_ari, subsets_ari = [], [], []
    for s in range(1, n_seeds + 1):
        other = cluster(aff, n_groups, seed + s)
        seeds_ari.append(float(adjusted_rand_score(labels, other)))
        runs.append(other)
    n_prompts = next((p.shape[0] for k, p in profiles.items() if k != "edges" and p is not None), 0)
    rng = random.Random(seed)
    if n_prompts >= 4:
        m = max(2, round(subset_fraction * n_prompts))
        for _ in range(n_subsets):
            rows = sorted(rng.sample(range(n_prompts), m))
            sub = {k: (p if k == "edges" or p is None else p[rows]) for k, p in profiles.items()}
            other = cluster(affinity(sub.get("scores"), sub.get("acts"), sub.get("edges")), n_groups, seed)
            subsets_ari.append(float(adjusted_rand_score(labels, other)))
            runs.append(other)
    per_group = np.mean([best_jaccard(labels, r) for r in runs], axis=0).tolist() if runs else []
    headline = subsets_ari or seeds_ari
    return dict(ari=float(np.mean(headline)) if headline else None, ari_seeds=seeds_ari, ari_subsets=subsets_ari,
                subset_fraction=subset_fraction, kind="subsets" if subsets_ari else "seeds"), per_group


# -- step 1: profiles ---------------------------------------------------------------------------------------
def node_profiles(model: HookedTransformer, circuit: Circuit, rows: Sequence[dict], *, batch_size: int = 16,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt attribution scores and clean activations of the circuit's nodes (step 1).

    Args:
        model: the model the circuit was made on.
        circuit: the circuit.
        rows: the prompts (JSONL-style rows).
        batch_size: prompts per pass.
        progress: show a progress bar.

    Returns:
        ``(scores, activations)``, each ``[prompt, node]``.
    """
    scores, acts, _ = _node_profiles(model, circuit, rows, batch_size=batch_size, progress=progress)
    return scores, acts


def _node_profiles(model: HookedTransformer, circuit: Circuit, rows: Sequence[dict], *, batch_size: int,
                   progress: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`node_profiles`, and the number of batches (one attribution backward pass each)."""
    from relp_lens.core.attribution import attribute

    method = circuit.method if circuit.method in ("relp", "grad") else "relp"
    paired = bool(rows) and "patch_prefix" in rows[0]
    attr = attribute(model, list(rows), basis=circuit.hook_names, method=method,
                     metric=circuit.metric if circuit.metric in METRICS else None,
                     baseline=None if paired else circuit.baseline, batch_size=batch_size, progress=progress,
                     prepend_bos=circuit.prepend_bos)  # tokenized as the circuit's own prompts: same positions
    scores = attr.scores  # [prompt, layer, pos, node]
    align = attr.alignment
    from relp_lens.core.data import make_batches, tokenize
    from relp_lens.core.positions import resolve

    tok = tokenize(model, attr.prompts, attr.prepend_bos)
    hooks = sorted({circuit.hook_names[n.layer] for n in circuit.nodes})
    n_ex, n = attr.n_examples, len(circuit.nodes)
    out_s, out_a = np.zeros((n_ex, n)), np.zeros((n_ex, n))
    seen = np.zeros((n_ex, n))  # 1 where the node has a position in the prompt
    batches = make_batches(tok, batch_size)
    mine = {id(b) for b in dp.shard(batches)}  # under torchrun: activations of this rank's batches only
    with dp.stage("group profiles"):
        for batch in batches:
            length = batch.clean_tokens.shape[1]
            cols = align.columns(length)  # [pos] column of each token
            sb = scores[torch.tensor(batch.indices)]  # [batch, layer, column, node]
            cache = None
            if id(batch) in mine:
                with torch.no_grad():
                    _, cache = model.run_with_cache(batch.clean_tokens.to(model.cfg.device),
                                                    names_filter=lambda name: name in hooks)
            for j, node in enumerate(circuit.nodes):
                t = None if node.pos is None else resolve(node.pos, length, align.tail_start)  # as evaluation does
                if node.pos is not None and t is None:
                    continue  # absent from prompts of this length: no score, activation filled below
                if node.pos is None:  # every position: summed scores, mean activation
                    out_s[batch.indices, j] = sb[:, node.layer, cols, node.index].sum(-1).numpy()
                else:
                    out_s[batch.indices, j] = sb[:, node.layer, int(cols[t]), node.index].numpy()
                if cache is not None:
                    a = cache[circuit.hook_names[node.layer]]
                    a = a.reshape(a.shape[0], length, -1)[:, :, node.index].float().cpu()  # [batch, pos]
                    out_a[batch.indices, j] = (a.mean(1) if t is None else a[:, t]).numpy()
                    seen[batch.indices, j] = 1
    out_a = dp.all_reduce(torch.from_numpy(out_a)).numpy()
    seen = dp.all_reduce(torch.from_numpy(seen)).numpy()
    out_a[seen == 0] = np.nan
    missing = np.isnan(out_a)
    if missing.all(0).any():
        j = int(np.flatnonzero(missing.all(0))[0])
        raise RelPLensError(f"node {circuit.nodes[j].label()} has no position in any of the {n_ex} prompts")
    if missing.any():
        bad = [circuit.nodes[j].label() for j in np.flatnonzero(missing.any(0))]
        warnings.warn(f"{len(bad)} node(s) (e.g. {bad[0]}) are absent from some prompts: their attribution there "
                      f"counts as 0 and their activation as their mean over the other prompts", stacklevel=3)
        out_a = np.where(missing, np.nanmean(out_a, axis=0, keepdims=True), out_a)
    return out_s, out_a, len(batches)


def edge_profiles(circuit: Circuit) -> np.ndarray | None:
    """The |weight| profiles of step 2's ``edges`` affinity.

    Args:
        circuit: the circuit (its edges and input/output edges).

    Returns:
        ``[edge slot, node]``: per node, its edges in from every node and every embedding position, then its edges
        out to every node and the output; None without edges.
    """
    n = len(circuit.nodes)
    if not circuit.edges and circuit.io_edges is None:
        return None
    inputs, io = 0, circuit.io_edges
    if io is not None:
        inputs = io.input.shape[0]
    a = np.zeros((n + 1, n + inputs))  # [target (nodes, output), source (nodes, embeddings)]
    for e in circuit.edges:
        a[e.target, e.source] += abs(e.weight)
    if io is not None:
        a[:n, n:] = io.input.abs().T.numpy()
        a[n, :n] = io.output.abs().numpy()
    return np.concatenate([a[:n].T, a[:, :n]], axis=0)  # [(n + inputs) + (n + 1), node]


def _promoted(model: HookedTransformer, circuit: Circuit, members: Sequence[int], mean_acts: np.ndarray,
              k: int = 3) -> list[str]:
    """Tokens the group's mean write raises most (step 5); empty for bases without neuron directions."""
    if circuit.basis != "mlp_post":
        return []
    with torch.no_grad():
        w_u = backends.W_U(model).float()  # layers may sit on several devices: sum on the unembedding's
        w_final = backends.final_norm_weight(model)
        write = None
        for j in members:
            node = circuit.nodes[j]
            d = backends.W_out(model, node.layer)[node.index].float().to(w_u.device) * float(mean_acts[j])
            write = d if write is None else write + d  # [d_model]
        if w_final is not None:
            write = write * w_final.float().to(w_u.device)
        logits = write @ w_u  # [d_vocab]
        return [model.to_string(int(i)) for i in logits.topk(k).indices]


def _label(circuit: Circuit, members: Sequence[int], promoted: Sequence[str]) -> str:
    layers = sorted({circuit.nodes[j].layer for j in members})
    span = f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}–{layers[-1]}"
    positions: dict[Any, int] = {}
    for j in members:
        positions[circuit.nodes[j].pos] = positions.get(circuit.nodes[j].pos, 0) + 1
    top = sorted(positions, key=lambda p: -positions[p])[:2]
    def at(p):
        if p is None:
            return "all positions"
        tok = circuit.token_label(p)
        return f"pos {p}" + (f" {tok}" if tok != "?" and len(tok) <= 14 else "")

    where = ", ".join(at(p) for p in top)
    more = "…" if len(positions) > 2 else ""
    writes = f" → {', '.join(repr(t) for t in promoted)}" if promoted else ""
    return f"{span} @ {where}{more}{writes}"


def group_neurons(model: HookedTransformer, circuit: Circuit, rows: Sequence[dict] | None = None, *,
                  n_groups: int | None = None, max_groups: int = 8, features: Sequence[str] | None = None,
                  seed: int = 0, n_seeds: int = 5, n_subsets: int = 5, subset_fraction: float = 0.7,
                  batch_size: int = 16, progress: bool = True) -> Circuit:
    """The circuit with its neurons grouped (see the module docstring).

    Args:
        model: the model the circuit was made on (checked).
        circuit: the circuit (at least 2 nodes); left unchanged.
        rows: prompts for the profiles (default: the circuit's build rows).
        n_groups: the number of groups; ``None`` chooses it in ``[2, max_groups]`` (step 3).
        max_groups: the most groups tried when choosing.
        features: kinds of affinity (``attribution``, ``activation``, ``edges``); default: all available —
            ``edges`` only when the circuit has edges.
        seed: the reference clustering's seed.
        n_seeds: stability runs with other seeds.
        n_subsets: stability runs on random subsets of the prompts.
        subset_fraction: the share of the prompts in each subset.
        batch_size: prompts per pass.
        progress: show a progress bar.

    Returns:
        A new circuit with ``groups`` (a :class:`~relp_lens.circuits.circuit.NeuronGroups`) and
        ``stats["groups"]`` (a :class:`~relp_lens.circuits.circuit.StepStats`: prompts, attribution backward
        passes).
    """
    circuit.check_model(model)
    if n_groups is not None:
        validate.positive_int(n_groups, "n_groups")
    validate.int_at_least(max_groups, "max_groups", 2)
    validate.nonneg_int(seed, "seed")
    validate.positive_int(n_seeds, "n_seeds")
    validate.nonneg_int(n_subsets, "n_subsets")
    validate.finite_float(subset_fraction, "subset_fraction", low=0.0, high=1.0, low_open=True, high_open=True)
    validate.positive_int(batch_size, "batch_size")
    rows = rows if rows is not None else (circuit.data or {}).get("rows")
    if not rows:
        raise RelPLensError("no prompts to group by: the circuit stores no rows; pass rows=")
    if len(rows) < 2:
        raise RelPLensError(f"grouping needs profiles over at least 2 prompts, got {len(rows)}")
    n = len(circuit.nodes)
    if n < 2:
        raise RelPLensError(f"a circuit of {n} node(s) cannot be grouped")
    has_edges = bool(circuit.edges) or circuit.io_edges is not None
    if features is None:
        features = ["attribution", "activation"] + (["edges"] if has_edges else [])
    features = list(features)
    bad = [f for f in features if f not in FEATURES]
    if bad or not features:
        raise RelPLensError(f"unknown feature {bad[0]!r}; choose from {list(FEATURES)}" if bad else "no features")
    if "edges" in features and not has_edges:
        raise RelPLensError("feature 'edges' needs a circuit with edges (relp_lens.attribute_edges)")
    if n_groups is not None and n_groups > n:
        raise RelPLensError(f"n_groups must be in [1, {n}], got {n_groups}")
    scores, acts, n_batches = _node_profiles(model, circuit, rows, batch_size=batch_size, progress=progress)
    profiles = dict(scores=scores if "attribution" in features else None,
                    acts=acts if "activation" in features else None,
                    edges=edge_profiles(circuit) if "edges" in features else None)
    aff = affinity(profiles["scores"], profiles["acts"], profiles["edges"])
    k = choose_k(aff, max_groups, seed) if n_groups is None else n_groups
    labels = cluster(aff, k, seed)
    stab, per_group = stability(profiles, labels, k, seed=seed, n_seeds=n_seeds, n_subsets=n_subsets,
                                subset_fraction=subset_fraction, aff=aff)
    mean_acts = acts.mean(0)
    found = []
    for g in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == g).tolist()
        promoted = _promoted(model, circuit, members, mean_acts)
        found.append((members, promoted, per_group[g] if per_group else None))
    found.sort(key=lambda x: -abs(sum(circuit.nodes[j].score for j in x[0])))
    groups = [NeuronGroup(name=f"G{i + 1}", label=_label(circuit, members, promoted),
                          members=[circuit.nodes[j].label() for j in members],
                          score=float(sum(circuit.nodes[j].score for j in members)), stability=st, promoted=promoted)
              for i, (members, promoted, st) in enumerate(found)]
    result = NeuronGroups(groups=groups, features=features, seed=seed, n_prompts=len(rows), stability=stab)
    stats = StepStats(n_prompts=len(rows), backward_passes=n_batches)
    return replace(circuit, groups=result, stats={**circuit.stats, "groups": stats})


def groups_of(circuit: Circuit) -> NeuronGroups:
    """The circuit's groups.

    Args:
        circuit: a grouped circuit.

    Returns:
        ``circuit.groups``; an error naming the fix when it has none.
    """
    if circuit.groups is None:
        raise RelPLensError("this circuit has no neuron groups; run relp_lens.group_neurons(model, circuit) first")
    return circuit.groups


def group_nodes(circuit: Circuit, group: str | int) -> list[tuple[int, int | None, int]]:
    """The nodes of one of the circuit's groups.

    Args:
        circuit: a grouped circuit.
        group: the group's name (``"G2"``) or number (0-based).

    Returns:
        Its members still in the circuit, as ``(layer, pos, index)``.
    """
    groups = groups_of(circuit)
    names = [g.name for g in groups.groups]
    if isinstance(group, str):
        if group not in names:
            raise RelPLensError(f"no group {group!r}; this circuit has {names}")
        g = groups.groups[names.index(group)]
    else:
        if not 0 <= int(group) < len(names):
            raise RelPLensError(f"group number {group} outside [0, {len(names)})")
        g = groups.groups[int(group)]
    by_label = {n.label(): n.key for n in circuit.nodes}
    return [by_label[m] for m in g.members if m in by_label]
