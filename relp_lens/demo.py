"""``make demo``: RelP neuron attribution on the shipped SmolLM2 for subject–verb agreement.

1. Load the shipped model offline and build 16 agreement pairs ("The keys to the cabinet" → are / is).
2. Report task accuracy (clean logit difference > 0) — a circuit of a behaviour the model lacks means little.
3. RelP attribution on the MLP neurons (``mlp_post``), paired clean/patch, metric logit difference.
4. Check against ground truth: exact single-neuron patching on a node sample, Pearson r for relp and grad.
5. Take the top-100 neurons as a circuit and measure its faithfulness and completeness by mean ablation on
   held-out pairs.
6. Print the top neurons with their token positions and write ``summary.txt``, ``top_neurons.json`` and a
   self-contained ``heatmap.html`` (plotly.js embedded; opens offline).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import relp_lens
from relp_lens.ablation import evaluate_circuit
from relp_lens.agreement import agreement_rows
from relp_lens.circuit import select_top_k
from relp_lens.files import write_text_atomic
from relp_lens.plots import attribution_heatmap


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--n-exact", type=int, default=32, help="nodes patched exactly for the correlation check")
    args = ap.parse_args(argv)
    out = Path(args.out)
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
    circuit = select_top_k(attr, model, 100)
    ev = evaluate_circuit(model, circuit, held_out)
    lines += ["", f"circuit of the top {len(circuit)} neurons on {len(held_out)} held-out pairs: "
                  f"faithfulness {ev['faithfulness']:+.3f}, completeness {ev['completeness']:+.3f}"]
    text = "\n".join(lines)
    print(text)

    write_text_atomic(out / "summary.txt", text + "\n")
    write_text_atomic(out / "top_neurons.json", json.dumps(
        [dict(layer=l, pos=p, neuron=i, score=s, hook=attr.hook_names[l]) for (l, p, i), s in top], indent=1))
    fig = attribution_heatmap(attr, title="RelP neuron attribution, subject–verb agreement (mean over pairs)")
    write_text_atomic(out / "heatmap.html", fig.to_html(include_plotlyjs=True, full_html=True))
    print(f"\nwrote {out}/summary.txt, {out}/top_neurons.json and {out}/heatmap.html (open in a browser)")


if __name__ == "__main__":
    main()
