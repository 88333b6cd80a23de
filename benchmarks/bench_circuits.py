"""Cost of edge attribution among 200 circuit neurons and of a 20-size mean-ablation sweep (shipped model).

1. RelP attribution on agreement pairs, top-200 neurons (mlp_post) as the circuit.
2. Edges over ``--edge-prompts`` prompts, batched (``edge_batch=256``: ⌈200·B/256⌉ vectorised backward
   passes sharing one forward pass) — passes, time, peak RSS.
3. The same with one backward pass per downstream node (``edge_batch`` = prompts per batch), still
   sharing the forward pass; and "one forward + backward per downstream node", which adds one forward pass
   (to the last downstream block) per node: measured forward time × (nodes − 1) on top of (3).
   The edge weights of 2 and 3 are compared (they must agree).
4. Faithfulness/completeness sweep over 20 circuit sizes on held-out prompts — time.

Usage: ``.venv/bin/python benchmarks/bench_circuits.py [--edge-prompts 8] [--out benchmarks/results/circuits.json]``
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

import relp_lens
from relp_lens.circuits.ablation import faithfulness_sweep
from relp_lens.core.tasks import agreement_rows
from relp_lens.circuits.selection import select_top_k
from relp_lens.circuits.edges import attribute_edges


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--edge-prompts", type=int, default=8)
    ap.add_argument("--build", type=int, default=64)
    ap.add_argument("--eval", type=int, default=32)
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

    t0 = time.perf_counter()
    batched = attribute_edges(model, circuit, edge_rows, edge_batch=256, progress=False)
    stats = batched.stats["edges"]
    fig["batched_s"] = time.perf_counter() - t0
    fig["batched_backward_passes"] = stats.backward_passes
    fig["batched_rows_per_pass"] = stats.rows_per_pass
    fig["peak_rss_after_batched_gb"] = rss_gb()

    t0 = time.perf_counter()
    single = attribute_edges(model, circuit, edge_rows, edge_batch=B, progress=False)
    stats1 = single.stats["edges"]
    fig["one_backward_per_node_s"] = time.perf_counter() - t0
    fig["one_backward_per_node_passes"] = stats1.backward_passes
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

    sizes = sorted({int(x) for x in torch.logspace(0, 3.3, 20).round().tolist()})
    while len(sizes) < 20:
        sizes.append(sizes[-1] + 100)
    t0 = time.perf_counter()
    sweep = faithfulness_sweep(model, attr, held_out, sizes=sizes, progress=False)
    fig["sweep_20_sizes_s"] = time.perf_counter() - t0
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(command=f"benchmarks/bench_circuits.py --nodes {args.nodes} "
                                            f"--edge-prompts {args.edge_prompts} --build {args.build} --eval {args.eval}",
                                   figures=fig, ratios=ratios,
                                   sweep=[{k: getattr(r, k) for k in ("k", "n_nodes", "faithfulness", "completeness")} for r in sweep]),
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
