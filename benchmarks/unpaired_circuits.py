"""Unpaired circuits on the shipped model: which attribution baseline, ablation, data and metric give
circuits that explain held-out prompts?

For each task (city_to_state, state_to_capital, antonyms, addition) the prompts (all token lengths; positions
counted from the end) are split in half, seeded: RelP attribution on the build half, top-k neuron circuits
(k in SIZES), faithfulness/completeness on the held-out half. Settings:

- ``zero/mean``: zero baseline, mean ablation, every position selectable (relp_lens 0.1's default)
- ``zero/zero``: zero baseline, zero ablation (the paper's no-pair setting; consistent)
- ``mean/mean``: mean baseline, mean ablation, shared-prefix positions left out (consistent)
- ``... correct``: the same on the prompts the model gets right (build and held out)
- ``... always-on``: also leaving out always-on neurons (``relp_lens.analysis.cards.always_on_neurons``)
- ``... contrastive``: metric = target logit − mean logit of the task's other answers
- ``... in-sample``: built and judged on the same (held-out) prompts — separates "no sparse circuit" from
  "the circuit is specific to the entities it was built on"
- ``per-prompt``: each held-out prompt's own top-k (reduce="none"), judged on that prompt alone with the
  held-out set's means; the median over prompts

    .venv/bin/python benchmarks/unpaired_circuits.py [--tasks city_to_state,...] [--out FILE]

Writes benchmarks/results/unpaired_circuits.json and prints one markdown table per task.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from pathlib import Path

import torch

import relp_lens
from relp_lens.core.models import SHIPPED_MODELS
from relp_lens.circuits.ablation import faithfulness_sweep
from relp_lens.analysis.cards import always_on_neurons
from relp_lens.core.data import Prompts
from relp_lens.core.tasks import load_task, only_correct, task_report
from _common import write_result

SIZES = [10, 30, 100, 300, 1000, 3000, 10000]
TASKS = ["city_to_state", "state_to_capital", "antonyms", "addition"]
SETTINGS = [
    # name, baseline, ablation, include_fixed, only correct, always-on excluded, contrastive metric
    ("zero/mean", "zero", "mean", True, False, False, False),
    ("zero/zero", "zero", "zero", None, False, False, False),
    ("mean/mean", "mean", "mean", None, False, False, False),
    ("zero/zero correct", "zero", "zero", None, True, False, False),
    ("mean/mean correct", "mean", "mean", None, True, False, False),
    ("mean/mean correct always-on", "mean", "mean", None, True, True, False),
    ("mean/mean correct contrastive", "mean", "mean", None, True, False, True),
    ("zero/zero correct contrastive", "zero", "zero", None, True, False, True),
    ("zero/mean in-sample", "zero", "mean", True, False, False, False),
    ("mean/mean in-sample", "mean", "mean", None, False, False, False),
    ("mean/mean correct in-sample", "mean", "mean", None, True, False, False),
]


def per_prompt(model, held, sizes, baseline="mean"):
    """Median faithfulness of each prompt's own top-k circuit, judged on that prompt (held-out means)."""
    import copy
    import statistics

    from relp_lens.circuits.ablation import Ablation, _ratios
    from relp_lens.circuits.selection import select_top_k
    from relp_lens.core.data import make_batches, tokenize

    data = Prompts.from_rows(held)
    attr = relp_lens.attribute(model, data, baseline=baseline, progress=False)
    abl = Ablation.build(model, attr.hook_names, data, None, 16, "mean")
    faith = {k: [] for k in sizes}
    for i in range(len(data)):
        one = copy.copy(abl)
        one.batches, one.n_prompts = make_batches(tokenize(model, data.subset([i])), 1), 1
        f_m, f_0 = one.score(None), one.score(one.masks(set()))
        single = copy.copy(attr)
        single.scores = attr.scores[i: i + 1]
        single.str_tokens, single.metric_clean = attr.str_tokens[i: i + 1], attr.metric_clean[i: i + 1]
        single.counts = single.valid().sum(0)
        for k in sizes:
            c = select_top_k(single, model, k, ablation="mean")
            keep = one.masks(c.keys)
            try:
                faith[k].append(_ratios(f_m, f_0, one.score(keep), one.score(keep, ablate_kept=True))["faithfulness"])
            except Exception:
                pass
    return [round(statistics.median(faith[k]), 3) if faith[k] else None for k in sizes]


def contrastive(answer_ids: list[int]):
    ids = torch.tensor(sorted(set(answer_ids)))

    def metric(logits, batch):  # logits [batch, d_vocab] at the last position
        target = torch.stack([logits[i, row].sum() for i, row in enumerate(batch.answer_ids)])
        return target - logits[:, ids.to(logits.device)].mean(-1)

    metric.__name__ = "contrastive"
    return metric


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out", default="benchmarks/results/unpaired_circuits.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(SHIPPED_MODELS))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    model = relp_lens.load_model(args.model)
    always_on = always_on_neurons(model)
    print(f"always-on neurons (package corpus, top-1% |activation| on >= 90% of tokens): {len(always_on)}")
    results = dict(sizes=SIZES, always_on=always_on, tasks={})
    for task in args.tasks.split(","):
        rows = load_task(model, task, 64, args.seed)
        random.Random(args.seed).shuffle(rows)
        build, held = rows[: len(rows) // 2], rows[len(rows) // 2:]
        report = task_report(model, rows, warn=False)
        lengths = sorted({len(model.to_tokens(r["clean_prefix"])[0]) for r in rows})
        print(f"\n## {task}: {len(rows)} prompts, token lengths {lengths}, {report}")
        res = results["tasks"][task] = dict(n=len(rows), lengths=lengths, accuracy=report.accuracy, settings={})
        answer_ids = [model.to_single_token(r["clean_answer"]) for r in rows]
        for name, baseline, ablation, include_fixed, correct, skip_on, contra in SETTINGS:
            t0 = time.time()
            b, h = (only_correct(model, build), only_correct(model, held)) if correct else (build, held)
            if "in-sample" in name:
                b = h
            metric = contrastive(answer_ids) if contra else None
            attr = relp_lens.attribute(model, Prompts.from_rows(b), baseline=baseline, metric=metric,
                                       reduce="mean", progress=False)
            sweep = faithfulness_sweep(model, attr, h, sizes=SIZES, metric=metric, ablation=ablation,
                                       include_fixed=include_fixed, exclude_neurons=always_on if skip_on else None,
                                       progress=False)
            faith = [round(r.faithfulness, 3) for r in sweep]
            comp = [round(r.completeness, 3) for r in sweep]
            k08 = next((r.k for r in sweep if r.faithfulness >= 0.8), None)
            res["settings"][name] = dict(n_build=len(b), n_held=len(h), faithfulness=faith, completeness=comp,
                                         k_at_0_8=k08, f_model=sweep[0].f_model, f_empty=sweep[0].f_empty,
                                         seconds=round(time.time() - t0, 1))
            print(f"| {name} ({len(b)}/{len(h)}) | " + " | ".join(f"{f:+.2f}/{c:+.2f}" for f, c in zip(faith, comp))
                  + f" | {k08} |", flush=True)
        t0 = time.time()
        med = per_prompt(model, held, SIZES)
        res["settings"]["per-prompt mean/mean"] = dict(median_faithfulness=med, seconds=round(time.time() - t0, 1))
        print(f"| per-prompt mean/mean (median over {len(held)}) | " + " | ".join(
            "—" if f is None else f"{f:+.2f}" for f in med) + " | |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
