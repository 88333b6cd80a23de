"""Edge pruning the paper's way, judged by ablation.

The full graph of a circuit has four kinds of edges: embedding → neuron and embedding → output
(:mod:`relp_lens.circuits.io_edges`), neuron → neuron (:mod:`relp_lens.circuits.edges`) and neuron → output. For each p in
``percents``:

1. keep the top p% of all edges by |weight| (at least one);
2. a neuron survives iff it keeps at least one incoming edge (from the embeddings or a neuron) and at least
   one outgoing edge (to a neuron or the output) — the embeddings and the output count as endpoints;
3. judge the surviving neurons by ablation (faithfulness and completeness on held-out prompts, as
   :func:`relp_lens.circuits.ablation.evaluate_circuit`; the ablation statistics are computed once for the sweep),
   one :class:`PruningPoint` per p.

A neuron whose incoming edges are all pruned is not reached from the input along kept edges, and one whose
outgoing edges are all pruned does not reach the output: the paper drops both. :func:`relp_lens.circuits.ablation.cpr_cmd`
with ``key="n_edges"`` summarises the curve.

:func:`influence_prune` is the other way, circuit-tracer's (Ameisen et al. 2025): on the graph of neurons,
one embedding node per aligned position and the output node,

1. ``A[target, source] = |w|``, each row divided by its sum (a node's incoming shares);
2. a node's influence on the output is the sum over paths of every length, ``e_out·(A + A² + …)`` (the graph
   is acyclic, so the series ends after as many terms as the graph is deep);
3. keep the nodes holding the top ``node_threshold`` of total influence (cumulative share over every node,
   embeddings and output included, as circuit-tracer computes it); the embeddings and the output always stay;
4. on the graph of kept nodes, an edge's score is its normalised weight × (its target's influence, plus 1 for
   the output); keep the edges holding the top ``edge_threshold`` of total edge score;
5. drop neurons left without an incoming or an outgoing kept edge, again until nothing changes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from relp_lens.circuits.ablation import Ablation, _ratios
from relp_lens.core import backends, validate
from relp_lens.circuits.circuit import AblationRatios, Circuit, IOEdges
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import AblationKind, Metric

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from relp_lens.core.data import Prompts

PAPER_PERCENTS = (0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
INPUT, OUTPUT = -1, -2  # endpoint markers for embedding (source) and output (target)


@dataclass
class PruningPoint(AblationRatios):
    """One point of :func:`edge_pruning_sweep`: the neurons that survive keeping the top ``percent`` of edges,
    judged by ablation. ``row["faithfulness"]`` etc. still work, with a ``DeprecationWarning``.

    The six ratios are those of :class:`~relp_lens.circuits.circuit.AblationRatios`.

    Attributes:
        percent: the share of the full graph's edges kept, in percent.
        n_edges: the edges kept.
        n_edges_total: the full graph's non-zero edges.
        n_nodes: the surviving neurons.
        ablation: how nodes were removed.
    """

    percent: float
    n_edges: int
    n_edges_total: int
    n_nodes: int
    ablation: AblationKind

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict (the form :func:`edge_pruning_sweep` returned before).

        Returns:
            The ratios, ``percent``, ``n_edges``, ``n_edges_total``, ``n_nodes``, ``ablation``.
        """
        return dict(vars(self))


def graph_edges(circuit: Circuit, io: IOEdges) -> list[tuple[int, int, float]]:
    """Every non-zero edge of the full graph.

    Args:
        circuit: the circuit (its neuron edges).
        io: its input/output edges.

    Returns:
        ``(source, target, weight)`` per edge: node numbers, ``INPUT`` for an embedding (all positions are one
        endpoint class) and ``OUTPUT`` for the metric.
    """
    if io.output.shape[0] != len(circuit.nodes) or io.input.shape[1] != len(circuit.nodes):
        raise RelPLensError(f"input/output edges are for {io.output.shape[0]} nodes, the circuit has "
                            f"{len(circuit.nodes)}: compute them for this circuit")
    edges = [(e.source, e.target, e.weight) for e in circuit.edges]
    for p in range(io.input.shape[0]):
        edges += [(INPUT, t, float(w)) for t, w in enumerate(io.input[p].tolist()) if w != 0]
    edges += [(s, OUTPUT, float(w)) for s, w in enumerate(io.output.tolist()) if w != 0]
    edges += [(INPUT, OUTPUT, float(w)) for w in io.direct.tolist() if w != 0]
    return edges


def survivors(edges: Sequence[tuple[int, int, float]], n_nodes: int, n_keep: int,
              sources: Sequence[int] = ()) -> list[int]:
    """Node numbers with ≥ 1 incoming and ≥ 1 outgoing edge among the top ``n_keep`` edges by |weight|;
    ``sources`` (dictionary error nodes: no incoming edges by construction) need an outgoing one only."""
    kept = sorted(edges, key=lambda e: -abs(e[2]))[:n_keep]
    has_in, has_out = [False] * n_nodes, [False] * n_nodes
    for i in sources:
        has_in[i] = True
    for s, t, _ in kept:
        if t >= 0:
            has_in[t] = True
        if s >= 0:
            has_out[s] = True
    return [i for i in range(n_nodes) if has_in[i] and has_out[i]]


def edge_pruning_sweep(model: HookedTransformer, circuit: Circuit, prompts: Prompts | Sequence[dict], *former,
                       percents: Sequence[float] = PAPER_PERCENTS, metric: Metric | None = None, ablation: AblationKind | None = None,
                       batch_size: int = 16, progress: bool = True) -> list[PruningPoint]:
    """Faithfulness/completeness of the neurons that survive keeping the top p% of the full graph's edges.

    The former call ``edge_pruning_sweep(model, circuit, io, prompts)`` (``io`` an
    :class:`~relp_lens.circuits.circuit.IOEdges`, or a circuit carrying them) still works, with a
    ``DeprecationWarning``.

    Args:
        model: the model the circuit was made on.
        circuit: a circuit with neuron edges and ``io_edges`` (:func:`relp_lens.circuits.edges.attribute_edges`,
            :func:`relp_lens.circuits.io_edges.attribute_io_edges`).
        prompts: held-out evaluation prompts.
        percents: the shares of edges kept, in (0, 100].
        metric: default the circuit's own.
        ablation: default the circuit's own.
        batch_size: prompts per forward pass.
        progress: show a progress bar.

    Returns:
        One :class:`PruningPoint` per percent: ``percent``, ``n_edges`` (kept), ``n_edges_total``, ``n_nodes``
        (surviving neurons) and the ratios of :func:`relp_lens.circuits.ablation.evaluate_circuit`; an empty
        survivor set is judged as the empty circuit.
    """
    if isinstance(prompts, (IOEdges, Circuit)):  # the former signature (model, circuit, io, prompts)
        if len(former) != 1:
            raise RelPLensError("edge_pruning_sweep(model, circuit, prompts): the circuit carries its io_edges")
        warnings.warn("edge_pruning_sweep(model, circuit, io, prompts) is deprecated: pass the circuit with its "
                      "io_edges (attribute_io_edges returns it), edge_pruning_sweep(model, circuit, prompts)",
                      DeprecationWarning, stacklevel=2)
        circuit = replace(circuit, io_edges=prompts if isinstance(prompts, IOEdges) else prompts.io_edges)
        prompts = former[0]
    elif former:
        raise RelPLensError(f"edge_pruning_sweep takes (model, circuit, prompts), got {2 + len(former)} "
                            f"positional arguments after the model")
    if not circuit.edges:
        raise RelPLensError("the circuit has no neuron edges: run attribute_edges first")
    backends.require_model(model)
    percents = validate.float_list(percents, "percents", low=0.0, high=100.0, low_open=True)
    edges = graph_edges(circuit, _io_of(circuit))
    errors = [i for i, node in enumerate(circuit.nodes) if circuit.is_error(node)]  # sources: no way in
    mode = ablation or circuit.ablation
    abl = Ablation.build(model, circuit.hook_names, prompts, metric or circuit.metric, batch_size, mode)
    f_m, f_empty = abl.score(None), abl.score(abl.masks(set()))
    rows = []
    for p in tqdm(percents, desc="edge pruning sweep", disable=not progress, leave=False):
        n_keep = max(1, math.ceil(p / 100 * len(edges)))
        alive = survivors(edges, len(circuit.nodes), n_keep, errors)
        keep = abl.masks({circuit.nodes[i].key for i in alive})
        r = _ratios(f_m, f_empty, abl.score(keep), abl.score(keep, ablate_kept=True))
        rows.append(PruningPoint(**r, percent=p, n_edges=n_keep, n_edges_total=len(edges), n_nodes=len(alive),
                                 ablation=mode))
    return rows


def _normalise(adjacency: torch.Tensor) -> torch.Tensor:
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-30)


def _influence(a: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``weights·(A + A² + …)`` for a nilpotent (acyclic) ``A``."""
    total = torch.zeros_like(weights)
    current = weights @ a
    for _ in range(a.shape[0] + 1):
        if not current.any():
            return total
        total += current
        current = current @ a
    raise RelPLensError("the graph has a cycle: influence does not converge")


def _threshold(scores: torch.Tensor, share: float) -> float:
    """The smallest score among the largest ones that hold ``share`` of the total."""
    ranked = scores.sort(descending=True).values
    total = ranked.sum()
    if total <= 0:
        return 0.0
    cumulative = ranked.cumsum(0) / total
    i = min(int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))), len(ranked) - 1)
    return float(ranked[i])


def graph_adjacency(circuit: Circuit, io: IOEdges) -> torch.Tensor:
    """The full graph as a matrix.

    Args:
        circuit: the circuit (its neuron edges).
        io: its input/output edges.

    Returns:
        ``A[target, source] = w`` over nodes ``[neurons…, one embedding per row of io.positions…, output]``.
    """
    n, p = len(circuit.nodes), len(io.positions)
    a = torch.zeros(n + p + 1, n + p + 1, dtype=torch.float64)
    for e in circuit.edges:
        a[e.target, e.source] += e.weight
    a[:n, n:n + p] = io.input.T
    a[n + p, :n] = io.output
    a[n + p, n:n + p] = io.direct
    return a


def graph_scores(circuit: Circuit) -> tuple[float, float]:
    """circuit-tracer's replacement and completeness scores of a circuit's full graph (``compute_graph_scores`` in
    its ``graph.py``, written here from its definition), with the output node weighted 1.

    1. ``A`` = :func:`graph_adjacency`, each row normalised by its absolute sum; influence = ``w·(A + A² + …)``
       from the output.
    2. Replacement: the share of the embeddings' influence in that of embeddings and error nodes together.
    3. Completeness: the mean, weighted by each node's influence (the output's own weight included), of the
       share of its normalised incoming weight that does not come from error nodes.

    Neuron graphs have no error node: both scores are 1 by construction. Dictionary graphs score below 1 as far
    as their error nodes carry the computation; the scores are of the graph as selected (circuit-tracer's graphs
    hold every error node).

    Args:
        circuit: a circuit with edges and input/output edges.

    Returns:
        ``(replacement, completeness)``.
    """
    io = _io_of(circuit)
    a = _normalise(graph_adjacency(circuit, io))
    n, p = len(circuit.nodes), len(io.positions)
    errors = torch.tensor([circuit.is_error(node) for node in circuit.nodes] + [False] * (p + 1))
    weights = torch.zeros(n + p + 1, dtype=torch.float64)
    weights[n + p] = 1.0
    influence = _influence(a, weights)
    tokens, error = influence[n:n + p].sum(), influence[errors].sum()
    replacement = float(tokens / (tokens + error)) if tokens + error > 0 else 1.0
    non_error = 1.0 - a[:, errors].sum(1)
    total = influence + weights
    return replacement, float((non_error * total).sum() / total.sum())


def _io_of(circuit: Circuit) -> IOEdges:
    if not circuit.edges or circuit.io_edges is None:
        raise RelPLensError("this needs the full graph: run attribute_edges and attribute_io_edges "
                            "(relp-lens trace --edges) first")
    return circuit.io_edges


def influence_prune(circuit: Circuit, *, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Circuit:
    """circuit-tracer's influence pruning of the full graph (see the module docstring).

    Args:
        circuit: a circuit with edges and input/output edges; left unchanged.
        node_threshold: the share of total influence the kept nodes hold, in (0, 1].
        edge_threshold: the share of total edge score the kept edges hold, in (0, 1].

    Returns:
        A new circuit of the surviving neurons, their kept edges (input/output edges too), their head splits and
        groups (:meth:`~relp_lens.circuits.circuit.Circuit.subgraph`).
    """
    node_threshold = validate.fraction(node_threshold, "node_threshold")
    edge_threshold = validate.fraction(edge_threshold, "edge_threshold")
    io = _io_of(circuit)
    n, p = len(circuit.nodes), len(io.positions)
    a = graph_adjacency(circuit, io)
    weights = torch.zeros(a.shape[0], dtype=torch.float64)
    weights[-1] = 1.0
    influence = _influence(_normalise(a), weights)
    keep_node = influence >= _threshold(influence, node_threshold)  # over every node, as circuit-tracer
    keep_node[n:] = True  # embeddings and the output always stay
    pruned = a.clone()
    pruned[~keep_node] = 0
    pruned[:, ~keep_node] = 0
    norm = _normalise(pruned)
    edge_score = norm * (_influence(norm, weights) + weights)[:, None]
    keep_edge = (edge_score >= _threshold(edge_score.flatten(), edge_threshold)) & (pruned != 0)
    is_error = torch.tensor([circuit.is_error(node) for node in circuit.nodes], dtype=torch.bool)
    while True:  # a neuron needs a kept incoming and a kept outgoing edge (an error node: no way in by construction)
        alive = keep_node.clone()
        alive[:n] &= keep_edge[:, :n].any(0) & (keep_edge[:n].any(1) | is_error)
        keep_edge &= alive[:, None] & alive[None, :]
        if torch.equal(alive, keep_node):
            break
        keep_node = alive
    used = [i for i in range(n) if keep_node[i]]
    kept = [e for e in circuit.edges if keep_edge[e.target, e.source]]
    io = replace(io, input=torch.where(keep_edge[:n, n:n + p].T, io.input, 0.0),
                 output=torch.where(keep_edge[n + p, :n], io.output, 0.0),
                 direct=torch.where(keep_edge[n + p, n:n + p], io.direct, 0.0),
                 target_output=_masked(io.target_output, keep_edge[n + p, :n]),
                 target_direct=_masked(io.target_direct, keep_edge[n + p, n:n + p]))
    return circuit.subgraph(used, kept, io=io,
                            selection=dict(node_threshold=node_threshold, edge_threshold=edge_threshold))


def readable_graph(circuit: Circuit, max_nodes: int = 40) -> Circuit:
    """The largest top-edges graph with at most ``max_nodes`` neurons, for drawing.

    With input/output edges: the top n edges of the full graph by |weight|, keeping the neurons on a path
    from an embedding to the output along them (the paper's rule, repeated until every drawn neuron has a
    drawn way in and out), for the largest n that leaves ≤ ``max_nodes`` neurons; drawn are the top-n edges
    between those neurons and the endpoints. Without them: the top n neuron edges and their ends.
    Without edges: the ``max_nodes`` nodes of largest |score|.

    Args:
        circuit: the circuit; left unchanged.
        max_nodes: the most neurons drawn.

    Returns:
        A new circuit (:meth:`~relp_lens.circuits.circuit.Circuit.subgraph`), ``selection["drawn_nodes"]`` set.
    """
    validate.positive_int(max_nodes, "max_nodes")
    n = len(circuit.nodes)
    if not circuit.edges:
        used = sorted(sorted(range(n), key=lambda i: -abs(circuit.nodes[i].score))[:max_nodes])
        return circuit.subgraph(used, [], selection=dict(drawn_nodes=max_nodes))
    if circuit.io_edges is None:
        ranked = sorted(circuit.edges, key=lambda e: -abs(e.weight))

        def ends(k):
            return sorted({e.source for e in ranked[:k]} | {e.target for e in ranked[:k]})

        if len(ends(1)) > max_nodes:  # even the strongest edge has too many ends: the top nodes, no edges
            used = sorted(sorted(range(n), key=lambda i: -abs(circuit.nodes[i].score))[:max_nodes])
            return circuit.subgraph(used, [], selection=dict(drawn_nodes=max_nodes))
        k = _largest(len(ranked), lambda k: len(ends(k)) <= max_nodes)
        return circuit.subgraph(ends(k), ranked[:k], selection=dict(drawn_nodes=max_nodes))
    io = circuit.io_edges
    edges = sorted(graph_edges(circuit, io), key=lambda e: -abs(e[2]))
    errors = {i for i, node in enumerate(circuit.nodes) if circuit.is_error(node)}  # sources: no way in
    k = _largest(len(edges), lambda k: len(_connected(edges[:k], n, errors)) <= max_nodes)
    alive = _connected(edges[:k], n, errors)
    cut = abs(edges[k - 1][2])  # the k-th largest |weight|: keep every edge at least this large between live ends
    kept = [e for e in circuit.edges if abs(e.weight) >= cut and e.source in alive and e.target in alive]
    big = lambda w: w.abs() >= cut  # noqa: E731
    live = torch.tensor([i in alive for i in range(n)])
    io = replace(io, input=torch.where(big(io.input) & live[None, :], io.input, 0.0),
                 output=torch.where(big(io.output) & live, io.output, 0.0),
                 direct=torch.where(big(io.direct), io.direct, 0.0),
                 target_output=_masked(io.target_output, big(io.output) & live),
                 target_direct=_masked(io.target_direct, big(io.direct)))
    return circuit.subgraph(sorted(alive), kept, io=io, selection=dict(drawn_nodes=max_nodes))


def _connected(kept: Sequence[tuple[int, int, float]], n_nodes: int, sources: set[int] = frozenset()) -> set[int]:
    """Neurons on a path embedding (or a ``sources`` node: an error node) → … → output along ``kept`` edges:
    :func:`survivors`' rule repeated until no neuron loses its last incoming or outgoing edge to a dropped one
    (for drawing)."""
    alive = set(range(n_nodes))
    while True:
        live = [(s, t) for s, t, _ in kept if (s < 0 or s in alive) and (t < 0 or t in alive)]
        now = ({t for _, t in live if t >= 0} | (sources & alive)) & {s for s, _ in live if s >= 0}
        if now == alive:
            return alive
        alive = now


def _masked(per_target: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
    """Per-target output edges ``[target, …]`` kept where the metric's edge is kept."""
    return None if per_target is None else torch.where(keep[None, :], per_target, 0.0)


def _largest(n: int, fits) -> int:
    """The largest k in [1, n] with ``fits(k)``, searched by doubling then bisection (1 if none fits)."""
    lo, hi = 1, 1
    while hi < n and fits(min(n, hi * 2)):
        lo = hi = min(n, hi * 2)
    hi = min(n, hi * 2)
    if fits(hi):
        return hi
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
