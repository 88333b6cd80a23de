"""Which attention heads carry the edges of the agreement circuit on the shipped SmolLM2-135M.

1. RelP attribution on ``--n-build`` agreement pairs; the circuit is the top ``--k`` nodes, with its full graph
   (neuron → neuron, embedding → neuron, neuron → output, embedding → output edges) on ``--n-edge`` pairs.
2. :func:`relp_lens.circuits.edges.prune_edges` keeps the top ``--keep`` fraction of neuron edges (a readable graph).
3. :func:`relp_lens.circuits.heads.attribute_head_splits` splits every edge of the pruned graph over attention heads
   (each path credited to the last head it passes through); the time it takes (ms per split edge), how much of
   the graph's |weight| goes through heads rather than the residual stream, and the heads with the largest
   totals.
4. With ``--reference``, the forward-mode implementation it replaced (``tests/reference_heads.py``) is timed on
   the same graph, alternating with the current one (A B A B, medians), and the largest difference between
   their splits is recorded.

Prints a one-line summary last; writes ``--out`` (JSON) with the command, the machine (platform, torch
threads) and the torch / TransformerLens versions.

Usage: ``.venv/bin/python benchmarks/head_splits.py [--k 300] [--keep 0.02] [--reference]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
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
    ap.add_argument("--reference", action="store_true",
                    help="also time the forward-mode implementation it replaced (tests/reference_heads.py)")
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
    timed = {"current": lambda: attribute_head_splits(model, pruned, edge_rows, progress=False)}
    if args.reference:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import reference_heads

        timed["reference"] = lambda: reference_heads.attribute_head_splits(model, pruned, edge_rows, progress=False)
    seconds: dict[str, list[float]] = {name: [] for name in timed}
    results = {}
    for _ in range(2 if args.reference else 1):  # A B A B: drift on the machine hits both alike
        for name, fn in timed.items():
            t0 = time.perf_counter()
            results[name] = fn()
            seconds[name].append(time.perf_counter() - t0)
    split = results["current"]
    t_heads = statistics.median(seconds["current"])
    edges = split.heads.edges
    ms_per_edge = 1000 * t_heads / len(edges)
    via_heads = sum(abs(s.other + sum(w for *_, w in s.heads)) for s in edges.values())
    via_res = sum(abs(s.residual) for s in edges.values())
    totals = [list(t) for t in split.heads.totals[:10]]
    print(f"top-{args.k} circuit, {len(circuit.edges)} neuron edges in {t_edges:.1f} s; pruned to "
          f"{len(pruned.nodes)} nodes / {len(pruned.edges)} neuron edges; input/output edges {t_io:.1f} s")
    print(f"|weight| through heads {via_heads:.3f} vs residual stream {via_res:.3f}")
    print("heads with the largest totals (block.head: summed weight):")
    for l, h, w in totals:
        print(f"  {l:2d}.{h}: {w:+.4f}")
    out = dict(vars(args), n_edges_split=len(edges), n_nodes=len(pruned.nodes), edges_seconds=t_edges, io_seconds=t_io,
               heads_seconds=t_heads, heads_seconds_runs=seconds["current"], ms_per_edge=ms_per_edge,
               through_heads=via_heads, through_residual=via_res, top_heads=totals)
    summary = (f"head splits: {len(edges)} edges ({model.cfg.n_layers} layers x {model.cfg.n_heads} heads) in "
               f"{t_heads:.2f} s = {ms_per_edge:.2f} ms/edge")
    if args.reference:
        ref = results["reference"].heads.edges
        t_ref = statistics.median(seconds["reference"])
        worst = max(_difference(edges[key], ref[key]) for key in ref)
        out.update(reference_seconds=t_ref, reference_seconds_runs=seconds["reference"],
                   reference_ms_per_edge=1000 * t_ref / len(ref), speedup=t_ref / t_heads,
                   max_difference_vs_reference=worst)
        summary += (f"; the forward-mode implementation it replaced {1000 * t_ref / len(ref):.1f} ms/edge "
                    f"({t_ref / t_heads:.1f}x), largest difference {worst:.1e} of the edge's largest share")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, out, summary)


def _difference(a, b) -> float:
    """The largest difference between two splits of one edge, relative to the edge's largest |share| in ``b``:
    the residual share, what all heads carry together, and every head both list among their top heads (a head
    just outside one side's top list is in its ``other``)."""
    ha, hb = {(l, h): w for l, h, w in a.heads}, {(l, h): w for l, h, w in b.heads}
    scale = max([abs(b.residual), *map(abs, hb.values()), abs(b.other)]) or 1.0
    diffs = [abs(a.residual - b.residual), abs(a.other + sum(ha.values()) - b.other - sum(hb.values()))]
    diffs += [abs(ha[k] - hb[k]) for k in ha.keys() & hb.keys()]
    return max(diffs) / scale

if __name__ == "__main__":
    main()
