"""Cost of RelP node attribution on the shipped SmolLM2-135M, all figures from one run.

32 agreement pairs ("The keys to the cabinet" → are / is), batch size 32, CPU. Reports (median of
``--repeats`` runs, the timed variants interleaved A B C … A B C so drift hits all alike, unless noted):

1. plain forward (no grad) of the clean prompts;
2. plain forward + backward of the metric with frozen parameters (gradient down to the embeddings);
3. RelP attribution on mlp_post, unpaired (a · ∇̃m: one forward, one backward);
4. RelP attribution on mlp_post, paired (adds the no-grad forward of the patch prompts);
5. plain attribution patching (``grad``), paired — the same work without the RelP rules;
6. IG with 10 steps, paired (one run: n_layers × 10 forward+backward; ``--ig-prompts N`` on the first N prompts,
   its ratio then against RelP on the same N; ``--skip-ig`` leaves it out);
7. peak RSS of the process.

Ratios: relp_unpaired / plain_fwd_bwd, relp_paired / (plain_fwd_bwd + plain_fwd), relp_paired / grad_paired
(the overhead of the rules alone), ig10 / relp_paired.

Usage: ``.venv/bin/python benchmarks/bench_attribution.py [--repeats 5] [--skip-ig | --ig-prompts N]
[--out benchmarks/results/attribution.json]``; the JSON records the command, machine and versions
(``benchmarks/_common.py``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

import relp_lens
from relp_lens.core.tasks import agreement_rows
from relp_lens.core.data import Prompts, make_batches, tokenize
from _common import write_result


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turns (A B C A B C ...) so drift on the machine hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--skip-ig", action="store_true", help="leave IG out (its ratio is known; it takes minutes)")
    ap.add_argument("--ig-prompts", type=int, default=None,
                    help="time IG (and RelP, for its ratio) on the first N prompts only (default: all prompts)")
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
    runs = {
        "plain_fwd_s": plain_forward,
        "plain_fwd_bwd_s": plain_forward_backward,
        "relp_unpaired_s": lambda: relp_lens.attribute(model, unpaired, method="relp", **kw),
        "relp_paired_s": lambda: relp_lens.attribute(model, rows, method="relp", **kw),
        "grad_paired_s": lambda: relp_lens.attribute(model, rows, method="grad", **kw),
    }
    for fn in runs.values():  # warm-up
        fn()
    figures = interleaved(runs, args.repeats)
    if not args.skip_ig:  # IG once, and RelP on the same prompts for its ratio (IG's cost is per batch, not prompt)
        ig_rows = rows[: min(args.ig_prompts or len(rows), len(rows))]
        t0 = time.perf_counter()
        relp_lens.attribute(model, ig_rows, method="ig", ig_steps=10, **kw)
        figures["ig10_paired_s"] = time.perf_counter() - t0
        figures["ig_prompts"] = len(ig_rows)
        figures["relp_paired_ig_prompts_s"] = (figures["relp_paired_s"] if len(ig_rows) == len(rows) else
                                               interleaved({"relp": lambda: relp_lens.attribute(
                                                   model, ig_rows, method="relp", **kw)}, args.repeats)["relp"])
    figures["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2

    ratios = {
        "relp_unpaired / plain_fwd_bwd": figures["relp_unpaired_s"] / figures["plain_fwd_bwd_s"],
        "relp_paired / (plain_fwd_bwd + plain_fwd)":
            figures["relp_paired_s"] / (figures["plain_fwd_bwd_s"] + figures["plain_fwd_s"]),
        "relp_paired / grad_paired": figures["relp_paired_s"] / figures["grad_paired_s"],
    }
    if "ig10_paired_s" in figures:  # on the IG prompts
        ratios["ig10 / relp_paired"] = figures["ig10_paired_s"] / figures["relp_paired_ig_prompts_s"]
    result = dict(
        n_prompts=len(rows), token_lengths=sorted({len(b.clean_tokens[0]) for b in batches}),
        figures=figures, ratios=ratios,
        targets={"relp unpaired / plain fwd+bwd": "<= 1.05", "relp paired / (fwd+bwd + fwd)": "<= 1.05",
                 "ig10 / relp": ">= 8", "peak RSS": "<= 4 GB"},
    )
    for k, v in figures.items():
        print(f"{k:>28s}: {v:8.3f}")
    for k, v in ratios.items():
        print(f"{k:>44s}: {v:6.2f}x")
    write_result(args.out, result, f"RelP unpaired {ratios['relp_unpaired / plain_fwd_bwd']:.3f}x plain fwd+bwd, "
                                   f"paired {ratios['relp_paired / (plain_fwd_bwd + plain_fwd)']:.3f}x fwd+bwd+fwd "
                                   f"({figures['relp_unpaired_s']:.3f} s / {figures['plain_fwd_bwd_s']:.3f} s)")


if __name__ == "__main__":
    main()
