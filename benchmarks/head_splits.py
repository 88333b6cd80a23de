"""Which attention heads carry the edges of the agreement circuit on the shipped SmolLM2-135M.

1. RelP attribution on ``--n-build`` agreement pairs; the circuit is the top ``--k`` nodes, with its full graph
   (neuron → neuron, embedding → neuron, neuron → output, embedding → output edges) on ``--n-edge`` pairs.
2. :func:`relp_lens.circuits.edges.prune_edges` keeps the top ``--keep`` fraction of neuron edges (a readable graph).
3. :func:`relp_lens.circuits.heads.attribute_head_splits` splits every edge of the pruned graph over attention heads
   (each path credited to the last head it passes through); the time it takes, how much of the graph's
   |weight| goes through heads rather than the residual stream, and the heads with the largest totals.

Usage: ``.venv/bin/python benchmarks/head_splits.py [--k 300] [--keep 0.02]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import relp_lens
from relp_lens.core.tasks import agreement_rows
from relp_lens.circuits.edges import prune_edges
from relp_lens.circuits.io_edges import attribute_io_edges
from relp_lens.circuits.heads import attribute_head_splits
from _common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=300)
    ap.add_argument("--n-build", type=int, default=32)
    ap.add_argument("--n-edge", type=int, default=8)
    ap.add_argument("--keep", type=float, default=0.02)
    ap.add_argument("--out", default="benchmarks/results/head_splits.json")
    args = ap.parse_args()
    model = relp_lens.load_model()
    build = agreement_rows(model, args.n_build, simple_fraction=0.0)
    edge_rows = build[: args.n_edge]
    attr = relp_lens.attribute(model, build, progress=False)
    circuit = relp_lens.select_top_k(attr, model, args.k)
    t0 = time.perf_counter()
    circuit = relp_lens.attribute_edges(model, circuit, edge_rows, progress=False)
    t_edges = time.perf_counter() - t0
    pruned = prune_edges(circuit, args.keep)
    t0 = time.perf_counter()
    pruned = attribute_io_edges(model, pruned, edge_rows, progress=False)
    t_io = time.perf_counter() - t0
    t0 = time.perf_counter()
    split = attribute_head_splits(model, pruned, edge_rows, progress=False)
    t_heads = time.perf_counter() - t0
    edges = split.heads.edges
    via_heads = sum(abs(s.other + sum(w for *_, w in s.heads)) for s in edges.values())
    via_res = sum(abs(s.residual) for s in edges.values())
    totals = [list(t) for t in split.heads.totals[:10]]
    print(f"top-{args.k} circuit, {len(circuit.edges)} neuron edges in {t_edges:.1f} s; pruned to "
          f"{len(pruned.nodes)} nodes / {len(pruned.edges)} neuron edges; input/output edges {t_io:.1f} s")
    print(f"head splits of {len(edges)} edges in {t_heads:.1f} s ({model.cfg.n_layers} layers × "
          f"{model.cfg.n_heads} heads); |weight| through heads {via_heads:.3f} vs residual stream {via_res:.3f}")
    print("heads with the largest totals (block.head: summed weight):")
    for l, h, w in totals:
        print(f"  {l:2d}.{h}: {w:+.4f}")
    out = dict(vars(args), n_edges_split=len(edges), n_nodes=len(pruned.nodes), edges_seconds=t_edges,
               io_seconds=t_io, heads_seconds=t_heads, through_heads=via_heads, through_residual=via_res,
               top_heads=totals)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, out)


if __name__ == "__main__":
    main()
