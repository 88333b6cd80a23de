"""Cost of edge attribution among 200 circuit neurons and of a 20-size mean-ablation sweep (shipped model).

1. RelP attribution on agreement pairs, top-200 neurons (mlp_post) as the circuit.
2. Edges over ``--edge-prompts`` prompts, batched (``--edge-batch`` 256: ⌈200·B/256⌉ vectorised backward
   passes sharing one forward pass) — passes, time (median of ``--repeats``, interleaved with 3), peak RSS.
3. The same with one backward pass per downstream node (``edge_batch`` = prompts per batch), still
   sharing the forward pass; and "one forward + backward per downstream node", which adds one forward pass
   (to the last downstream block) per node: measured forward time × (nodes − 1) on top of (3).
   The edge weights of 2 and 3 are compared (they must agree).
4. Faithfulness/completeness sweep over ``--sweep-sizes`` (20) circuit sizes on held-out prompts — time.

Usage: ``.venv/bin/python benchmarks/bench_circuits.py [--edge-prompts 8] [--sweep-sizes 20]
[--out benchmarks/results/circuits.json]``; the JSON records the command, machine and versions
(``benchmarks/_common.py``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

import relp_lens
from relp_lens.circuits.ablation import faithfulness_sweep
from relp_lens.core.tasks import agreement_rows
from relp_lens.circuits.selection import select_top_k
from relp_lens.circuits.edges import attribute_edges
from _common import write_result


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--edge-prompts", type=int, default=8)
    ap.add_argument("--build", type=int, default=64)
    ap.add_argument("--eval", type=int, default=32)
    ap.add_argument("--edge-batch", type=int, default=256, help="rows per vectorised backward pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each edge variant (median)")
    ap.add_argument("--sweep-sizes", type=int, default=20, help="circuit sizes in the sweep (make bench: fewer)")
    ap.add_argument("--out", default="benchmarks/results/circuits.json")
    args = ap.parse_args()

    model = relp_lens.load_model()
    rows = agreement_rows(model, args.build + args.eval, simple_fraction=0.0)
    build, held_out = rows[: args.build], rows[args.build:]
    attr = relp_lens.attribute(model, build, progress=False)
    circuit = select_top_k(attr, model, args.nodes)
    edge_rows = build[: args.edge_prompts]
    B = len(edge_rows)
    fig = {"nodes": len(circuit), "edge_prompts": B,
           "downstream_nodes": sum(n.layer > min(x.layer for x in circuit.nodes) for n in circuit.nodes)}

    # the two variants timed in turns (A B A B ...), medians: drift on the machine hits both alike
    times: dict[int, list[float]] = {args.edge_batch: [], B: []}
    out = {}
    for _ in range(args.repeats):
        for eb in times:
            t0 = time.perf_counter()
            out[eb] = attribute_edges(model, circuit, edge_rows, edge_batch=eb, progress=False)
            times[eb].append(time.perf_counter() - t0)
    batched, single = out[args.edge_batch], out[B]
    stats, stats1 = batched.stats["edges"], single.stats["edges"]
    fig["batched_s"] = statistics.median(times[args.edge_batch])
    fig["batched_backward_passes"] = stats.backward_passes
    fig["batched_rows_per_pass"] = stats.rows_per_pass
    fig["one_backward_per_node_s"] = statistics.median(times[B])
    fig["one_backward_per_node_passes"] = stats1.backward_passes
    fig["peak_rss_after_edges_gb"] = rss_gb()
    wa = {(e.source, e.target): e.weight for e in batched.edges}
    wb = {(e.source, e.target): e.weight for e in single.edges}
    fig["max_abs_weight_difference"] = max(abs(wa.get(k, 0.0) - wb.get(k, 0.0)) for k in set(wa) | set(wb))
    fig["n_edges"] = len(batched.edges)

    tokens = torch.cat([model.to_tokens(r["clean_prefix"]) for r in edge_rows])
    last_block = max(n.layer for n in circuit.nodes) + 1
    with relp_lens.relp(model), torch.enable_grad():
        t0 = time.perf_counter()
        for _ in range(3):
            model(tokens, stop_at_layer=last_block)
        forward_s = (time.perf_counter() - t0) / 3
    fig["forward_to_last_block_s"] = forward_s
    fig["one_fwd_bwd_per_node_s"] = fig["one_backward_per_node_s"] + forward_s * (fig["downstream_nodes"] - 1)

    sizes = sorted({int(x) for x in torch.logspace(0, 3.3, args.sweep_sizes).round().tolist()})
    while len(sizes) < args.sweep_sizes:
        sizes.append(sizes[-1] + 100)
    t0 = time.perf_counter()
    sweep = faithfulness_sweep(model, attr, held_out, sizes=sizes, progress=False)
    fig["sweep_s"] = time.perf_counter() - t0
    fig["sweep_sizes"] = len(sizes)
    fig["sweep_eval_prompts"] = len(held_out)
    fig["peak_rss_gb"] = rss_gb()

    ratios = {
        "backward passes: one per node / batched": fig["one_backward_per_node_passes"] / fig["batched_backward_passes"],
        "time: one fwd+bwd per node / batched": fig["one_fwd_bwd_per_node_s"] / fig["batched_s"],
        "time: one bwd per node (shared fwd) / batched": fig["one_backward_per_node_s"] / fig["batched_s"],
    }
    for k, v in fig.items():
        print(f"{k:>40s}: {v:.4g}" if isinstance(v, float) else f"{k:>40s}: {v}")
    for k, v in ratios.items():
        print(f"{k:>48s}: {v:6.2f}x")
    print("sweep (k, faithfulness, completeness):")
    for r in sweep:
        print(f"  {r.k:5d} {r.faithfulness:+.3f} {r.completeness:+.3f}")
    write_result(args.out, dict(figures=fig, ratios=ratios,
                                sweep=[{k: getattr(r, k) for k in ("k", "n_nodes", "faithfulness", "completeness")}
                                       for r in sweep]),
                 f"edges {ratios['time: one bwd per node (shared fwd) / batched']:.2f}x faster than one backward per "
                 f"node (shared forward), {fig['batched_s']:.2f} s for {fig['n_edges']} edges; sweep "
                 f"{fig['sweep_s']:.1f} s ({len(sizes)} sizes)")


if __name__ == "__main__":
    main()
