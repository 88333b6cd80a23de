"""Peak memory of attribution against the number of prompts: ``reduce="mean"`` keeps running float64 sums,
so 1,024 prompts should cost about what 64 do (target: peak RSS ratio <= 1.15x).

Each measurement runs in a fresh process (peak RSS is per process): load the shipped model, make N
agreement pairs (relp_lens.core.tasks.agreement_rows, one template), RelP attribution on ``mlp_post``, batch 32.

    .venv/bin/python benchmarks/memory_reduce.py            # prints the table and the ratio

Writes benchmarks/results/memory_reduce.json.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from _common import write_result

CHILD = r"""
import resource, sys, time, warnings
warnings.simplefilter("ignore")
import relp_lens
from relp_lens.core.tasks import agreement_rows
n, reduce = int(sys.argv[1]), sys.argv[2]
model = relp_lens.load_model()
rows = agreement_rows(model, n, simple_fraction=0.0)
assert len(rows) == n, f"only {len(rows)} agreement pairs"
t0 = time.time()
attr = relp_lens.attribute(model, rows, reduce=reduce, batch_size=32, progress=False)
seconds = time.time() - t0
kept = attr.score_sum.numel() * 8 if attr.reduced else attr.scores.numel() * 4
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, seconds, kept)
"""


def measure(n: int, reduce: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), reduce], capture_output=True, text=True, check=True)
    rss, seconds, kept = out.stdout.split()
    return dict(n=n, reduce=reduce, peak_rss=int(rss), seconds=float(seconds), scores_bytes=int(kept))


def main() -> None:
    runs = [measure(64, "mean"), measure(1024, "mean"), measure(64, "none"), measure(1024, "none")]
    print("| prompts | reduce | peak RSS | attribution s | scores kept |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['n']} | {r['reduce']} | {r['peak_rss'] / 2**30:.2f} GiB | {r['seconds']:.1f} | "
              f"{r['scores_bytes'] / 2**20:.1f} MiB |")
    ratio = runs[1]["peak_rss"] / runs[0]["peak_rss"]
    ratio_none = runs[3]["peak_rss"] / runs[2]["peak_rss"]
    print(f"\npeak RSS 1024 / 64 prompts: reduce='mean' {ratio:.3f}x (target <= 1.15x), reduce='none' {ratio_none:.3f}x")
    write_result("benchmarks/results/memory_reduce.json",
                 dict(runs=runs, ratio_mean=ratio, ratio_none=ratio_none, when=time.strftime("%Y-%m-%d %H:%M")),
                 f"peak RSS 1024 / 64 prompts: reduce='mean' {ratio:.3f}x, reduce='none' {ratio_none:.3f}x")


if __name__ == "__main__":
    main()
