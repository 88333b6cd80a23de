"""Reproduce the paper's agreement experiments on a shipped model (CPU scale; default SmolLM2-135M).

For each agreement set (simple, nounpp, rc, within_rc):

1. generate pairs (seeded), split into a build set and a held-out evaluation set; report task accuracy;
2. for each node basis {mlp_post, mlp_out, resid_post, attn_out}: attribute the build set with relp, grad
   and ig (10 steps, one layer at a time);
3. correlation of relp / grad / ig with exact single-node patching on a node sample (half top nodes by
   |grad|, half random) over the first ``--exact-prompts`` build pairs;
4. faithfulness and completeness against circuit size (top-k grid) for relp and ig circuits, evaluated by
   mean ablation on the held-out set;
5. the first grid size at which faithfulness reaches 0.8 and 0.9, and the ratio mlp_out / mlp_post of
   those sizes (the paper: neuron circuits are far smaller than MLP-output circuits).

Writes ``OUT/paper_reproduction.json``, ``OUT/tables.md`` and ``OUT/faithfulness.html`` (Plotly, plotly.js
embedded), plus PNGs where a static renderer (kaleido) is installed.

Usage::

    .venv/bin/python benchmarks/paper_reproduction.py            # full CPU run (~25-30 min on 2 cores)
    .venv/bin/python benchmarks/paper_reproduction.py --quick    # CI-sized smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import relp_lens
from relp_lens.circuits.ablation import faithfulness_sweep
from relp_lens.core.exact import sample_nodes
from relp_lens.core.models import SHIPPED_MODELS
from relp_lens.core.tasks import AGREEMENT_SETS, agreement, task_report
from _common import curves_figure, write_result

BASES = ("mlp_post", "mlp_out", "resid_post", "attn_out")
GRID = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def first_reaching(curve: list[dict], level: float) -> int | None:
    for row in curve:
        if row["faithfulness"] >= level:
            return row["n_nodes"]
    return None


def run(args) -> dict:
    model = relp_lens.load_model(args.model)
    results: dict = {"config": vars(args), "sets": {}}
    t_start = time.time()
    for kind in args.sets:
        rows = agreement(model, kind, args.n_build + args.n_eval, seed=args.seed)
        build, held_out = rows[: args.n_build], rows[args.n_build:]
        rep = task_report(model, held_out, warn=False)
        out = {"n_build": len(build), "n_eval": len(held_out), "example": build[0],
               "task_accuracy": rep.accuracy, "mean_logit_diff": rep.mean_logit_diff, "bases": {}}
        print(f"[{kind}] {len(build)} build / {len(held_out)} held-out pairs, held-out {rep}", flush=True)
        exact_rows = build[: args.exact_prompts]
        for basis in args.bases:
            t0 = time.time()
            kw = dict(basis=basis, progress=False, batch_size=32)
            attrs = {m: relp_lens.attribute(model, build, method=m, ig_steps=args.ig_steps, **kw)
                     for m in ("relp", "grad", "ig")}
            exact_sub = relp_lens.attribute(model, exact_rows, method="grad", **kw)
            nodes = sample_nodes(exact_sub, args.exact_nodes, seed=args.seed)
            exact = relp_lens.attribute(model, exact_rows, method="exact", nodes=nodes, **kw)
            n_ex = len(exact_rows)
            corr = {}
            for m in attrs:  # on the exact prompts alone: aligned as the exact scores are (lengths may differ)
                a_sub = relp_lens.attribute(model, exact_rows, method=m, ig_steps=args.ig_steps, **kw)
                corr[m] = a_sub.correlation(exact)
            curves = {}
            for m in ("relp", "ig"):
                n_total = attrs[m].scores[0].numel()
                sizes = [k for k in args.grid if k <= n_total]
                curves[m] = [{k: getattr(r, k) for k in ("n_nodes", "faithfulness", "completeness")}
                             for r in faithfulness_sweep(model, attrs[m], held_out, sizes=sizes, progress=False)]
            out["bases"][basis] = {
                "correlation_with_exact": corr, "exact_nodes": len(nodes), "exact_prompts": n_ex,
                "curves": curves,
                "size_at_0.8": {m: first_reaching(c, 0.8) for m, c in curves.items()},
                "size_at_0.9": {m: first_reaching(c, 0.9) for m, c in curves.items()},
                "seconds": round(time.time() - t0, 1),
            }
            print(f"  {basis:>10s}: r(relp, grad, ig) = {corr['relp']:+.3f} {corr['grad']:+.3f} {corr['ig']:+.3f}; "
                  f"k@0.8 relp {out['bases'][basis]['size_at_0.8']['relp']} ig {out['bases'][basis]['size_at_0.8']['ig']}"
                  f"  ({time.time() - t0:.0f}s)", flush=True)
        ratios = {}
        if "mlp_post" in out["bases"] and "mlp_out" in out["bases"]:
            for level in ("0.8", "0.9"):
                for m in ("relp", "ig"):
                    a = out["bases"]["mlp_out"][f"size_at_{level}"][m]
                    b = out["bases"]["mlp_post"][f"size_at_{level}"][m]
                    ratios[f"{m}@{level}"] = None if a is None or b is None else a / b
        out["mlp_out_over_mlp_post"] = ratios
        results["sets"][kind] = out
    results["total_seconds"] = round(time.time() - t_start, 1)
    return results


def tables(results: dict) -> str:
    lines = ["# Reproduction tables (generated by benchmarks/paper_reproduction.py)", "",
             f"Config: `{json.dumps({k: v for k, v in results['config'].items() if k != 'out_dir'})}`; "
             f"total {results['total_seconds']:.0f} s.", ""]
    for kind, s in results["sets"].items():
        lines += [f"## {kind}", "", f"Example: `{s['example']['clean_prefix']}` → `{s['example']['clean_answer']}` "
                  f"(patch `{s['example']['patch_prefix']}` → `{s['example']['patch_answer']}`). Held-out task "
                  f"accuracy {s['task_accuracy']:.1%}, mean logit diff {s['mean_logit_diff']:+.2f}.", "",
                  "| basis | r relp | r grad | r ig | k@0.8 relp | k@0.8 ig | k@0.9 relp | k@0.9 ig |",
                  "|---|---|---|---|---|---|---|---|"]
        for basis, b in s["bases"].items():
            c = b["correlation_with_exact"]
            lines.append(f"| {basis} | {c['relp']:+.3f} | {c['grad']:+.3f} | {c['ig']:+.3f} | "
                         f"{b['size_at_0.8']['relp']} | {b['size_at_0.8']['ig']} | "
                         f"{b['size_at_0.9']['relp']} | {b['size_at_0.9']['ig']} |")
        if s["mlp_out_over_mlp_post"]:
            lines += ["", "mlp_out size / mlp_post size: " + ", ".join(
                f"{k} = {'n/a' if v is None else f'{v:.2f}'}" for k, v in s["mlp_out_over_mlp_post"].items())]
        lines += ["", "Faithfulness / completeness by circuit size (relp):", "",
                  "| k | " + " | ".join(s["bases"]) + " |", "|---|" + "---|" * len(s["bases"])]
        grid = sorted({r["n_nodes"] for b in s["bases"].values() for r in b["curves"]["relp"]})
        for k in grid:
            cells = []
            for b in s["bases"].values():
                row = next((r for r in b["curves"]["relp"] if r["n_nodes"] == k), None)
                cells.append("" if row is None else f"{row['faithfulness']:.2f} / {row['completeness']:.2f}")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def figure(results: dict):
    colours = {"mlp_post": "#1f77b4", "mlp_out": "#d62728", "resid_post": "#2ca02c", "attn_out": "#9467bd"}
    panels = {kind: [(f"{basis} · {m}", colours.get(basis), dash, b["curves"][m])
                     for basis, b in s["bases"].items() for m, dash in (("relp", "solid"), ("ig", "dot"))]
              for kind, s in results["sets"].items()}
    name = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}.get(results["config"].get("model"), "SmolLM2-135M")
    return curves_figure(panels, f"Faithfulness vs circuit size on {name} (mean ablation, held-out pairs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized run: one set, two bases, tiny data")
    ap.add_argument("--sets", nargs="+", default=list(AGREEMENT_SETS), choices=AGREEMENT_SETS)
    ap.add_argument("--bases", nargs="+", default=list(BASES))
    ap.add_argument("--n-build", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=24)
    ap.add_argument("--ig-steps", type=int, default=10)
    ap.add_argument("--exact-nodes", type=int, default=48)
    ap.add_argument("--exact-prompts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None, help="default docs/results (SmolLM2), docs/results/<model> (others)")
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(SHIPPED_MODELS))
    args = ap.parse_args()
    args.grid = list(GRID)
    if args.quick:
        args.sets, args.bases = ["simple"], ["mlp_post", "mlp_out"]
        args.n_build, args.n_eval, args.ig_steps, args.exact_nodes, args.exact_prompts = 6, 6, 2, 12, 3
        args.grid = [1, 10, 100, 1000]
    results = run(args)
    out = Path(args.out_dir or ("docs/results" if args.model == "smollm2-135m" else f"docs/results/{args.model}"))
    out.mkdir(parents=True, exist_ok=True)
    write_result(out / "paper_reproduction.json", results, f"{len(args.sets)} sets, {len(args.bases)} bases in "
                 f"{results['total_seconds']:.0f} s; tables.md and faithfulness.html beside it")
    (out / "tables.md").write_text(tables(results))
    fig = figure(results)
    fig.write_html(out / "faithfulness.html", include_plotlyjs=True)
    try:
        fig.write_image(out / "faithfulness.png")
        print(f"wrote {out / 'faithfulness.png'}")
    except Exception as e:  # no static renderer (kaleido) installed
        print(f"no PNG: {type(e).__name__}: {str(e).splitlines()[0][:120]}")


if __name__ == "__main__":
    main()
