"""MIB-style CPR / CMD of RelP node circuits for subject–verb agreement on the shipped SmolLM2-135M.

Build on ``--n-build`` agreement pairs (nounpp and rc mixed, as in tests), evaluate by mean and by
counterfactual ablation on ``--n-eval`` held-out pairs, at circuit sizes that are the MIB fractions {0.001, 0.002, 0.005, 0.01, 0.02,
0.05, 0.1, 0.2, 0.5} of every candidate node (layer × position × neuron), for RelP and for plain gradients
(attribution patching). Prints the curve and ``relp_lens.circuits.ablation.cpr_cmd`` (CPR: higher is better, CMD:
lower is better), and writes them to ``--out``.

Usage: ``.venv/bin/python benchmarks/cpr_cmd.py [--n-build 32] [--n-eval 32] [--out benchmarks/results/cpr_cmd.json]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import relp_lens
from relp_lens.circuits.ablation import cpr_cmd, faithfulness_sweep
from relp_lens.core.tasks import agreement_rows
from _common import write_result

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-build", type=int, default=32)
    ap.add_argument("--n-eval", type=int, default=32)
    ap.add_argument("--ablations", nargs="+", default=["mean", "counterfactual"])
    ap.add_argument("--out", default="benchmarks/results/cpr_cmd.json")
    args = ap.parse_args()
    model = relp_lens.load_model()
    rows = agreement_rows(model, args.n_build + args.n_eval, simple_fraction=0.0)
    build, held_out = rows[: args.n_build], rows[args.n_build:]
    out = {}
    for method in ("relp", "grad"):
        attr = relp_lens.attribute(model, build, method=method, progress=False)
        n_total = attr.n_layers * int(attr.valid().all(0).sum()) * attr.width  # nodes every prompt has
        sizes = sorted({max(1, round(f * n_total)) for f in FRACTIONS})
        for ablation in args.ablations:
            sweep = faithfulness_sweep(model, attr, held_out, sizes=sizes, ablation=ablation, progress=False)
            scores = cpr_cmd(sweep, n_total)
            res = dict(n_total=n_total, curve=[dict(k=r.n_nodes, fraction=r.n_nodes / n_total,
                                                    faithfulness=r.faithfulness,
                                                    completeness=r.completeness) for r in sweep], **scores.to_dict())
            out[f"{method}/{ablation}"] = res
            print(f"{method}, {ablation} ablation: {n_total} candidate nodes; CPR {scores.cpr:.3f}, "
                  f"CMD {scores.cmd:.3f}")
            for r in res["curve"]:
                print(f"  k={r['k']:7d} ({r['fraction']:.3f})  faithfulness {r['faithfulness']:+.3f}  "
                      f"completeness {r['completeness']:+.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, dict(out, n_build=args.n_build, n_eval=args.n_eval))


if __name__ == "__main__":
    main()
