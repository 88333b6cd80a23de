"""``make demo``: RelP neuron attribution on the shipped SmolLM2 for subject–verb agreement.

1. Load the shipped model offline and build 16 agreement pairs ("The keys to the cabinet" → are / is).
2. Report task accuracy (clean logit difference > 0) — a circuit of a behaviour the model lacks means little.
3. RelP attribution on the MLP neurons (``mlp_post``), paired clean/patch, metric logit difference.
4. Check against ground truth: exact single-neuron patching on a node sample, Pearson r for relp and grad.
5. Take the top-100 neurons as a circuit, weigh its edges (direct effects, intermediate MLPs held constant)
   and measure faithfulness and completeness by mean ablation on held-out pairs.
6. Steer the circuit's top-20 neurons along their singular-minus-plural mean activation difference
   (factors −2…4) on plural held-out prompts and record P(" are") and P(" is").
7. Print the top neurons with their token positions and write ``summary.txt``, ``top_neurons.json`` and a
   self-contained ``report.html`` (plotly.js embedded; opens offline): heatmap, circuit graph, faithfulness
   curves, steering sweep, neuron cards.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import relp_lens
from relp_lens.circuits.ablation import evaluate_circuit
from relp_lens.core.tasks import agreement_rows
from relp_lens.circuits.edges import attribute_edges
from relp_lens.circuits.selection import select_top_k
from relp_lens.core.files import write_text_atomic
from relp_lens.views.report import report_inputs, write_report
from relp_lens.analysis.steering import steering_direction, steering_sweep
from relp_lens.core.validate import arg, nonneg_int, positive_int


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    ap.add_argument("--n-prompts", type=arg(positive_int), default=16)
    ap.add_argument("--n-exact", type=arg(positive_int), default=32, help="nodes patched exactly for the correlation check")
    ap.add_argument("--n-cards", type=arg(nonneg_int), default=12, help="neuron cards in the report")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        ap.error(f"--out {out} is a file; the demo writes a folder")
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    model = relp_lens.load_model()
    all_rows = agreement_rows(model, args.n_prompts + 8, simple_fraction=0.0)  # one template: positions align
    rows, held_out = all_rows[: args.n_prompts], all_rows[args.n_prompts:]
    print(f"loaded {model.cfg.model_name} ({model.cfg.n_layers} layers, d_mlp {model.cfg.d_mlp}) "
          f"in {time.time() - t0:.1f}s; {len(rows)} agreement pairs, e.g. {rows[0]['clean_prefix']!r} → "
          f"{rows[0]['clean_answer']!r} / {rows[0]['patch_prefix']!r} → {rows[0]['patch_answer']!r}")

    t0 = time.time()
    attr = relp_lens.attribute(model, rows, method="relp", basis="mlp_post")
    t_relp = time.time() - t0
    acc = (attr.metric_clean > 0).float().mean().item()
    lines = [
        f"task accuracy {acc:.0%} (mean logit diff clean {attr.metric_clean.mean():+.2f}, "
        f"patch {attr.metric_ref.nanmean():+.2f})",
        f"RelP attribution over {attr.scores.shape[1] * attr.scores.shape[3]} neurons × positions "
        f"in {t_relp:.1f}s",
        "",
        "top neurons (mean paired score = ∇̃m · (a_patch − a_clean); negative: the neuron carries the clean answer)",
    ]
    top = attr.top_k(15)
    for (layer, pos, idx), score in top:
        tok = attr.token_at(pos)
        lines.append(f"  layer {layer:2d} neuron {idx:4d} at position {pos} ({tok!r}): {score:+.4f}")
    mass = attr.scores.abs().sum((0, 2, 3))
    lines.append("")
    lines.append("attribution mass per layer: " + " ".join(f"{m:.2f}" for m in (mass / mass.sum()).tolist()))

    t0 = time.time()
    cmp = relp_lens.compare_with_exact(model, rows[:8], methods=("relp", "grad"), n_nodes=args.n_exact,
                                       progress=False)
    lines += ["", cmp.table() + f"   ({time.time() - t0:.1f}s, {len(rows[:8])} pairs)"]
    circuit = select_top_k(attr, model, 100, task="agreement")
    circuit = attribute_edges(model, circuit, rows[:4], progress=False)
    ev = circuit.evaluation = evaluate_circuit(model, circuit, held_out)
    lines += ["", f"circuit of the top {len(circuit)} neurons on {len(held_out)} held-out pairs: "
                  f"faithfulness {ev.faithfulness:+.3f}, completeness {ev.completeness:+.3f}; "
                  f"{len(circuit.edges)} edges"]
    top20 = [(n.layer, n.pos, n.index) for n in sorted(circuit.nodes, key=lambda n: -abs(n.score))[:20]]
    plural = [r for r in rows if r["clean_answer"] == " are"]
    direction = steering_direction(model, top20, [r["clean_prefix"] for r in plural], [r["patch_prefix"] for r in plural])
    prompts = [r["clean_prefix"] for r in held_out if r["clean_answer"] == " are"]
    sweep = steering_sweep(model, prompts, top20, [" are", " is"], factors=(-2, -1, 0, 1, 2, 4), mode="add",
                           direction=direction)
    lines += ["", f"steering the top 20 circuit neurons by factor × (singular − plural mean activation) on "
                  f"{len(prompts)} plural held-out prompts (factor: P(' are') / P(' is')): "
                  + ", ".join(f"{f:+g}: {a:.2f}/{b:.2f}" for f, a, b in
                              zip(sweep["factors"], sweep["probs"][" are"], sweep["probs"][" is"]))]
    text = "\n".join(lines)
    print(text)

    write_text_atomic(out / "summary.txt", text + "\n")
    write_text_atomic(out / "top_neurons.json", json.dumps(
        [dict(layer=l, pos=p, neuron=i, score=s, hook=attr.hook_names[l]) for (l, p, i), s in top], indent=1))
    inputs = report_inputs(model, attr, circuit, held_out=held_out, task="subject–verb agreement (nounpp)",
                           n_cards=args.n_cards, sizes=(5, 10, 20, 50, 100, 200, 500), steering=sweep)
    write_report(out / "report.html", model, attr, circuit, inputs=inputs)
    print(f"\nwrote {out}/summary.txt, {out}/top_neurons.json and {out}/report.html (open in a browser)")


if __name__ == "__main__":
    main()
