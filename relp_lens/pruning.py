"""Edge pruning the paper's way, judged by ablation.

The full graph of a circuit has four kinds of edges: embedding → neuron and embedding → output
(:mod:`relp_lens.graph_io`), neuron → neuron (:mod:`relp_lens.edges`) and neuron → output. For each p in
``percents``:

1. keep the top p% of all edges by |weight| (at least one);
2. a neuron survives iff it keeps at least one incoming edge (from the embeddings or a neuron) and at least
   one outgoing edge (to a neuron or the output) — the embeddings and the output count as endpoints;
3. judge the surviving neurons by ablation (faithfulness and completeness on held-out prompts, as
   :func:`relp_lens.ablation.evaluate_circuit`; the ablation statistics are computed once for the sweep).

A neuron whose incoming edges are all pruned is not reached from the input along kept edges, and one whose
outgoing edges are all pruned does not reach the output: the paper drops both. :func:`relp_lens.ablation.cpr_cmd`
with ``key="n_edges"`` summarises the curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from relp_lens.ablation import Ablation, _ratios
from relp_lens.circuit import Circuit
from relp_lens.errors import RelPLensError
from relp_lens.graph_io import IOEdges

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

PAPER_PERCENTS = (0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
INPUT, OUTPUT = -1, -2  # endpoint markers for embedding (source) and output (target)


def graph_edges(circuit: Circuit, io: IOEdges) -> list[tuple[int, int, float]]:
    """Every non-zero edge of the full graph as ``(source, target, weight)``: node numbers, ``INPUT`` for an
    embedding (all positions are one endpoint class) and ``OUTPUT`` for the metric."""
    if io.output.shape[0] != len(circuit.nodes) or io.input.shape[1] != len(circuit.nodes):
        raise RelPLensError(f"input/output edges are for {io.output.shape[0]} nodes, the circuit has "
                            f"{len(circuit.nodes)}: compute them for this circuit")
    edges = [(e.source, e.target, e.weight) for e in circuit.edges]
    for p in range(io.input.shape[0]):
        edges += [(INPUT, t, float(w)) for t, w in enumerate(io.input[p].tolist()) if w != 0]
    edges += [(s, OUTPUT, float(w)) for s, w in enumerate(io.output.tolist()) if w != 0]
    edges += [(INPUT, OUTPUT, float(w)) for w in io.direct.tolist() if w != 0]
    return edges


def survivors(edges: Sequence[tuple[int, int, float]], n_nodes: int, n_keep: int) -> list[int]:
    """Node numbers with ≥ 1 incoming and ≥ 1 outgoing edge among the top ``n_keep`` edges by |weight|."""
    kept = sorted(edges, key=lambda e: -abs(e[2]))[:n_keep]
    has_in, has_out = [False] * n_nodes, [False] * n_nodes
    for s, t, _ in kept:
        if t >= 0:
            has_in[t] = True
        if s >= 0:
            has_out[s] = True
    return [i for i in range(n_nodes) if has_in[i] and has_out[i]]


def edge_pruning_sweep(model: HookedTransformer, circuit: Circuit, io: IOEdges, prompts, *,
                       percents: Sequence[float] = PAPER_PERCENTS, metric=None, ablation: str | None = None,
                       batch_size: int = 16, progress: bool = True) -> list[dict]:
    """Faithfulness/completeness of the neurons that survive keeping the top p% of the full graph's edges.

    Rows: ``percent``, ``n_edges`` (kept), ``n_edges_total``, ``n_nodes`` (surviving neurons) and the ratios of
    :func:`relp_lens.ablation.evaluate_circuit`; an empty survivor set is judged as the empty circuit.
    """
    if not circuit.edges:
        raise RelPLensError("the circuit has no neuron edges: run attribute_edges first")
    bad = [p for p in percents if not 0 < p <= 100]
    if bad:
        raise RelPLensError(f"percents must be in (0, 100], got {bad}")
    edges = graph_edges(circuit, io)
    mode = ablation or circuit.ablation
    abl = Ablation.build(model, circuit.hook_names, prompts, metric or circuit.metric, batch_size, mode)
    f_m, f_empty = abl.score(None), abl.score(abl.masks(set()))
    rows = []
    for p in tqdm(percents, desc="edge pruning sweep", disable=not progress, leave=False):
        n_keep = max(1, math.ceil(p / 100 * len(edges)))
        alive = survivors(edges, len(circuit.nodes), n_keep)
        keep = abl.masks({circuit.nodes[i].key for i in alive})
        r = _ratios(f_m, f_empty, abl.score(keep), abl.score(keep, ablate_kept=True))
        rows.append(dict(r, percent=p, n_edges=n_keep, n_edges_total=len(edges), n_nodes=len(alive),
                         ablation=mode))
    return rows
