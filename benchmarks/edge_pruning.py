"""The paper's edge-pruning curve for subject–verb agreement on a shipped model (default SmolLM2-135M; --model).

1. RelP attribution on ``--n-build`` agreement pairs (nounpp and rc); the circuit is the top ``--k`` nodes.
2. Its full graph: neuron → neuron edges (:func:`relp_lens.attribute_edges`) and embedding → neuron,
   neuron → output, embedding → output edges (:func:`relp_lens.circuits.io_edges.attribute_io_edges`), on
   ``--n-edge`` of the build pairs.
3. :func:`relp_lens.circuits.pruning.edge_pruning_sweep` at p ∈ {0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}%: surviving
   neurons judged by mean and by counterfactual ablation on ``--n-eval`` held-out pairs; CPR/CMD of the curve over the edge fraction.

The paper reports that about 10% of candidate edges keep faithfulness above 80%.

Usage: ``.venv/bin/python benchmarks/edge_pruning.py [--k 300] [--out benchmarks/results/edge_pruning.json]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import relp_lens
from relp_lens.core.models import SHIPPED_MODELS
from relp_lens.circuits.ablation import cpr_cmd
from relp_lens.core.tasks import agreement_rows
from relp_lens.circuits.io_edges import attribute_io_edges
from relp_lens.circuits.pruning import edge_pruning_sweep
from _common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=300)
    ap.add_argument("--n-build", type=int, default=32)
    ap.add_argument("--n-edge", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=32)
    ap.add_argument("--ablations", nargs="+", default=["mean", "counterfactual"])
    ap.add_argument("--out", default="benchmarks/results/edge_pruning.json")
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(SHIPPED_MODELS))
    args = ap.parse_args()
    model = relp_lens.load_model(args.model)
    rows = agreement_rows(model, args.n_build + args.n_eval, simple_fraction=0.0)
    build, held_out = rows[: args.n_build], rows[args.n_build:]
    t0 = time.perf_counter()
    attr = relp_lens.attribute(model, build, progress=False)
    circuit = relp_lens.select_top_k(attr, model, args.k)
    circuit = relp_lens.attribute_edges(model, circuit, build[: args.n_edge], progress=False)
    circuit = attribute_io_edges(model, circuit, build[: args.n_edge], progress=False)
    t_graph = time.perf_counter() - t0
    out = dict(k=args.k, n_build=args.n_build, n_edge=args.n_edge, n_eval=args.n_eval, graph_seconds=t_graph,
               n_neuron_edges=len(circuit.edges))
    for ablation in args.ablations:
        whole = relp_lens.evaluate_circuit(model, circuit, held_out, ablation=ablation, warn=False)
        sweep = edge_pruning_sweep(model, circuit, held_out, ablation=ablation, progress=False)
        scores = cpr_cmd(sweep, sweep[0].n_edges_total, key="n_edges")
        print(f"[{ablation} ablation] top-{args.k} circuit: faithfulness {whole.faithfulness:+.3f}, "
              f"completeness {whole.completeness:+.3f}; graph of {sweep[0].n_edges_total} edges "
              f"({len(circuit.edges)} neuron→neuron) built in {t_graph:.1f} s")
        print(" edges %   kept   neurons  faithfulness  completeness")
        for r in sweep:
            print(f"{r.percent:7.1f}  {r.n_edges:6d}  {r.n_nodes:7d}  {r.faithfulness:+12.3f}  "
                  f"{r.completeness:+12.3f}")
        print(f"edge CPR {scores.cpr:.3f}, CMD {scores.cmd:.3f}")
        out[ablation] = dict(circuit=whole.to_dict(), sweep=[r.to_dict() for r in sweep], **scores.to_dict())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, out)


if __name__ == "__main__":
    main()
