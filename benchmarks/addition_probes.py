"""The paper's mod-n neuron analysis for addition on the shipped SmolLM2-135M.

1. ``--n`` prompts ``"x + y = "`` (x, y < 100, distinct pairs); how often the model's top next token is the
   sum's first digit (the model's addition accuracy).
2. MLP neuron activations at the last token (:func:`relp_lens.analysis.probes.node_values`).
3. AUROC of every neuron for the ones digit of the sum mod 2 (binary), mod 5 and mod 10 (one-vs-rest per
   class); a neuron is selective for a class at AUROC ≥ 0.9 or ≤ 0.1 (the paper's cut). Control: the same
   counts with the labels shuffled.

Usage: ``.venv/bin/python benchmarks/addition_probes.py [--n 1000]``
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

import relp_lens
from relp_lens.analysis.probes import auroc, node_values, selective_neurons
from _common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/addition_probes.json")
    args = ap.parse_args()
    model = relp_lens.load_model()
    rng = random.Random(args.seed)
    pairs = rng.sample([(x, y) for x in range(100) for y in range(100)], args.n)
    prompts = [f"{x} + {y} = " for x, y in pairs]
    sums = [x + y for x, y in pairs]
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(prompts), 64):
            chunk = prompts[start:start + 64]
            toks = [model.to_tokens(p)[0] for p in chunk]
            for length in sorted({len(t) for t in toks}):
                idx = [i for i, t in enumerate(toks) if len(t) == length]
                top = model(torch.stack([toks[i] for i in idx]))[:, -1].argmax(-1).tolist()
                for i, t in zip(idx, top):
                    correct += model.tokenizer.decode([t]).strip() == str(sums[start + i])[0]
    values = node_values(model, prompts, progress=False).reshape(len(prompts), -1)  # [n, layer·width]
    width = model.cfg.d_mlp
    out = dict(n=args.n, accuracy_first_digit=correct / len(prompts), seconds=None, mods={})
    print(f"{args.n} prompts 'x + y = ' (x, y < 100): the model's top token is the sum's first digit on "
          f"{correct / len(prompts):.1%}")
    shuffled_rng = random.Random(args.seed + 1)
    for mod in (2, 5, 10):
        labels = [s % 10 % mod for s in sums]
        control = labels[:]
        shuffled_rng.shuffle(control)
        classes = sorted(set(labels))
        rows = []
        for c in (classes[1:] if mod == 2 else classes):
            auc = auroc(values, torch.tensor([l == c for l in labels])).reshape(-1, width)
            null = auroc(values, torch.tensor([l == c for l in control])).reshape(-1, width)
            hits = selective_neurons(auc, threshold=0.9, k=None)
            rows.append(dict(cls=c, n_selective=len(hits), n_selective_shuffled=len(selective_neurons(null, k=None)),
                             best=[[l, i, round(a, 4)] for l, i, a in selective_neurons(auc, threshold=0.5 + 1e-9, k=5)],
                             top_selective=[[l, i, round(a, 4)] for l, i, a in hits[:10]]))
        out["mods"][mod] = rows
        print(f"ones digit mod {mod}:")
        for r in rows:
            best = ", ".join(f"L{l}/{i} {a:.3f}" for l, i, a in r["best"][:3])
            print(f"  class {r['cls']}: {r['n_selective']} neurons with AUROC ≥ 0.9 or ≤ 0.1 "
                  f"(shuffled labels: {r['n_selective_shuffled']}); most selective: {best}")
    out["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, out)


if __name__ == "__main__":
    main()
