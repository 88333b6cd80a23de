"""TransformerBridge vs HookedTransformer on the shipped SmolLM2-135M, all figures from one run.

Both backends are loaded in one process (TransformerLens 3.9 has both; on 4.x there is no HookedTransformer to
compare with) and timed alternately, so drift on the machine hits both alike. 32 agreement pairs, batch 32,
CPU; median of ``--repeats`` runs of:

1. plain forward (no grad) of the clean prompts;
2. plain forward + backward of the logit difference (frozen parameters, gradient to the embeddings);
3. RelP attribution on mlp_post, paired (``relp_lens.attribute``);
4. the same inside ``relp()`` by hand: one forward + backward in RelP mode (the rules' own cost on each).

Ratios: bridge / HookedTransformer for each, and the largest |Δ| of the logits and relative |Δ| of the scores
(the two must compute the same thing).

Usage: ``.venv/bin/python benchmarks/bench_backends.py [--repeats 5] [--out benchmarks/results/backends.json]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import relp_lens
from relp_lens.core.tasks import agreement_rows
from _common import write_result


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
    ap.add_argument("--out", default="benchmarks/results/backends.json")
    args = ap.parse_args()
    import importlib.metadata as md

    models = {"hooked": relp_lens.load_model(backend="hooked"), "bridge": relp_lens.load_model(backend="bridge")}
    rows = agreement_rows(models["hooked"], args.n_prompts)
    clean = [r["clean_prefix"] for r in rows]
    results: dict[str, dict[str, float]] = {"hooked": {}, "bridge": {}}
    outputs: dict[str, dict[str, torch.Tensor]] = {"hooked": {}, "bridge": {}}

    for name, model in models.items():  # warm-up, and the values to compare
        tokens = model.to_tokens(clean)  # [batch, pos] (left-aligned; padding is ignored by the last-token read)
        with torch.no_grad():
            outputs[name]["logits"] = model(tokens)
        outputs[name]["scores"] = relp_lens.attribute(model, rows, progress=False, batch_size=args.n_prompts).scores

    def cases(model):
        tokens = model.to_tokens(clean)
        good, bad = model.to_single_token(" are"), model.to_single_token(" is")

        def forward():
            with torch.no_grad():
                model(tokens)

        def fwd_bwd():
            resid = []

            def leaf(x, hook):
                x = x.detach().requires_grad_(True)
                resid.append(x)
                return x

            with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)]):
                logits = model(tokens)[:, -1]
                (logits[:, good] - logits[:, bad]).sum().backward()

        def relp_fwd_bwd():
            with relp_lens.relp(model):
                fwd_bwd()

        def attribution():
            relp_lens.attribute(model, rows, progress=False, batch_size=args.n_prompts)

        return {"forward": forward, "forward_backward": fwd_bwd, "relp_forward_backward": relp_fwd_bwd,
                "relp_attribution": attribution}

    all_cases = {name: cases(m) for name, m in models.items()}
    for what in all_cases["hooked"]:
        for name in ("hooked", "bridge"):  # alternate, so drift hits both
            results[name][what] = timed(all_cases[name][what], args.repeats)
            print(f"{name:7s} {what:22s} {results[name][what]:.3f} s", flush=True)

    ratios = {what: results["bridge"][what] / results["hooked"][what] for what in results["hooked"]}
    logits_diff = (outputs["bridge"]["logits"] - outputs["hooked"]["logits"]).abs().max().item()
    s_b, s_h = outputs["bridge"]["scores"], outputs["hooked"]["scores"]
    score_diff = ((s_b - s_h).abs().max() / s_h.abs().max()).item()
    print("\nbridge / HookedTransformer:")
    for what, r in ratios.items():
        print(f"  {what:22s} {r:.2f}x")
    print(f"max |Δ logits| {logits_diff:.2e}; max |Δ score| / max |score| {score_diff:.2e}")
    out = dict(seconds=results, ratios=ratios, max_logit_diff=logits_diff, max_rel_score_diff=score_diff,
               n_prompts=args.n_prompts, repeats=args.repeats, transformers=md.version("transformers"))
    write_result(args.out, out, ", ".join(f"{what} {r:.2f}x" for what, r in ratios.items()))


if __name__ == "__main__":
    main()
