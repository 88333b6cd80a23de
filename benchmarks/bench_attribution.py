"""Cost of RelP node attribution on the shipped SmolLM2-135M, all figures from one run.

32 agreement pairs ("The keys to the cabinet" → are / is), batch size 32, CPU. Reports (median of
``--repeats`` runs unless noted):

1. plain forward (no grad) of the clean prompts;
2. plain forward + backward of the metric with frozen parameters (gradient down to the embeddings);
3. RelP attribution on mlp_post, unpaired (a · ∇̃m: one forward, one backward);
4. RelP attribution on mlp_post, paired (adds the no-grad forward of the patch prompts);
5. plain attribution patching (``grad``), paired — the same work without the RelP rules;
6. IG with 10 steps, paired (one run: n_layers × 10 forward+backward);
7. peak RSS of the process.

Ratios: relp_unpaired / plain_fwd_bwd, relp_paired / (plain_fwd_bwd + plain_fwd), relp_paired / grad_paired
(the overhead of the rules alone), ig10 / relp_paired.

Usage: ``.venv/bin/python benchmarks/bench_attribution.py [--repeats 5] [--out benchmarks/results/attribution.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

import relp_lens
from relp_lens.core.tasks import agreement_rows
from relp_lens.core.data import Prompts, make_batches, tokenize


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/attribution.json")
    args = ap.parse_args()
    torch.manual_seed(0)

    model = relp_lens.load_model()
    rows = agreement_rows(model, args.n_prompts)
    prompts = Prompts.from_rows(rows)
    batches = make_batches(tokenize(model, prompts), batch_size=args.n_prompts)
    good, bad = model.to_single_token(" are"), model.to_single_token(" is")

    def plain_forward():
        with torch.no_grad():
            for b in batches:
                model(b.clean_tokens)

    def plain_forward_backward():
        for b in batches:
            store = []

            def leaf(x, hook):
                x = x.detach().requires_grad_(True)
                store.append(x)
                return x
            with model.hooks(fwd_hooks=[("hook_embed", leaf)]):
                logits = model(b.clean_tokens)[:, -1]
                m = (logits[:, good] - logits[:, bad]).sum()
                torch.autograd.grad(m, store)

    unpaired = Prompts([r["clean_prefix"] for r in rows], [r["clean_answer"] for r in rows])
    kw = dict(basis="mlp_post", batch_size=args.n_prompts, progress=False)
    figures = {}
    plain_forward_backward()  # warm-up
    figures["plain_fwd_s"] = timed(plain_forward, args.repeats)
    figures["plain_fwd_bwd_s"] = timed(plain_forward_backward, args.repeats)
    figures["relp_unpaired_s"] = timed(lambda: relp_lens.attribute(model, unpaired, method="relp", **kw), args.repeats)
    figures["relp_paired_s"] = timed(lambda: relp_lens.attribute(model, rows, method="relp", **kw), args.repeats)
    figures["grad_paired_s"] = timed(lambda: relp_lens.attribute(model, rows, method="grad", **kw), args.repeats)
    figures["ig10_paired_s"] = timed(lambda: relp_lens.attribute(model, rows, method="ig", ig_steps=10, **kw), 1)
    figures["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2

    ratios = {
        "relp_unpaired / plain_fwd_bwd": figures["relp_unpaired_s"] / figures["plain_fwd_bwd_s"],
        "relp_paired / (plain_fwd_bwd + plain_fwd)":
            figures["relp_paired_s"] / (figures["plain_fwd_bwd_s"] + figures["plain_fwd_s"]),
        "relp_paired / grad_paired": figures["relp_paired_s"] / figures["grad_paired_s"],
        "ig10 / relp_paired": figures["ig10_paired_s"] / figures["relp_paired_s"],
    }
    result = dict(
        command="benchmarks/bench_attribution.py " + f"--repeats {args.repeats} --n-prompts {args.n_prompts}",
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        n_prompts=len(rows), token_lengths=sorted({len(b.clean_tokens[0]) for b in batches}),
        figures=figures, ratios=ratios,
        targets={"relp / plain fwd+bwd": "<= 1.15", "ig10 / relp": ">= 8", "peak RSS": "<= 4 GB"},
    )
    for k, v in figures.items():
        print(f"{k:>28s}: {v:8.3f}")
    for k, v in ratios.items():
        print(f"{k:>44s}: {v:6.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
