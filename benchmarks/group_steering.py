"""Neuron groups of the agreement circuit on the shipped SmolLM2-135M, and what steering each group does.

1. RelP attribution on ``--n-build`` agreement pairs (half plural subjects); the circuit is the top ``--k``
   nodes, with neuron edges on ``--n-edge`` pairs.
2. :func:`relp_lens.group_neurons` groups its neurons (attribution profiles, co-activation, shared edges;
   ``k`` by silhouette) and measures stability: the adjusted Rand index over 5 seeds and 5 random 70 %
   subsets of the build prompts.
3. :func:`relp_lens.group_steering` scales each of the ``--groups`` largest groups by the paper's factors
   {−4, −2, −1, 0, 1, 2, 4} on held-out plural-subject prompts and on held-out singular ones, reading
   P(" are") and P(" is"), next to ``--n-random`` random groups of the same size, layers and positions.

Usage: ``.venv/bin/python benchmarks/group_steering.py [--k 100] [--groups 3]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import relp_lens
from relp_lens.core.tasks import agreement_rows
from relp_lens.analysis.groups import groups_of
from _common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--n-build", type=int, default=40)
    ap.add_argument("--n-edge", type=int, default=8)
    ap.add_argument("--n-held", type=int, default=40)
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--n-random", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/group_steering.json")
    args = ap.parse_args()
    model = relp_lens.load_model()
    rows = agreement_rows(model, args.n_build + args.n_held, simple_fraction=0.0)
    build, held = rows[: args.n_build], rows[args.n_build:]
    attr = relp_lens.attribute(model, build, progress=False)
    circuit = relp_lens.select_top_k(attr, model, args.k)
    circuit = relp_lens.attribute_edges(model, circuit, build[: args.n_edge], progress=False)
    t0 = time.perf_counter()
    grouped = relp_lens.group_neurons(model, circuit, build)
    t_group = time.perf_counter() - t0
    groups = groups_of(grouped)
    print(f"top-{args.k} agreement circuit ({len(circuit.edges)} edges), grouped in {t_group:.1f} s")
    print(groups.summary())
    st = groups.stability
    print(f"stability: ARI over subsets {st['ari']:.3f} (each: {', '.join(f'{a:.2f}' for a in st['ari_subsets'])}); "
          f"over seeds {sum(st['ari_seeds']) / len(st['ari_seeds']):.3f}")
    plural = [r["clean_prefix"] for r in held if r["clean_answer"] == " are"]
    singular = [r["clean_prefix"] for r in held if r["clean_answer"] == " is"]
    out = dict(k=args.k, n_build=args.n_build, n_held=args.n_held, groups=groups.to_dict(), steering=[])
    for g in groups.groups[: args.groups]:
        for name, prompts in (("plural", plural), ("singular", singular)):
            res = relp_lens.group_steering(model, grouped, g.name, prompts, [" are", " is"], n_random=args.n_random)
            out["steering"].append(dict(res, prompts=name, n_prompts=len(prompts)))
            are, is_ = res["probs"][" are"], res["probs"][" is"]
            ra, ri = res["random_mean"][" are"], res["random_mean"][" is"]
            print(f"{g.name} ({len(g.members)} neurons) on {len(prompts)} {name} prompts:")
            print("   factor  " + "  ".join(f"{f:>6}" for f in res["factors"]))
            print("   P(are)  " + "  ".join(f"{p:6.3f}" for p in are))
            print("   P(is)   " + "  ".join(f"{p:6.3f}" for p in is_))
            print("   random P(are) " + "  ".join(f"{p:6.3f}" for p in ra) + "   P(is) "
                  + "  ".join(f"{p:6.3f}" for p in ri))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
