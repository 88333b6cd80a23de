"""Throughput of data-parallel RelP attribution: 1 process vs N processes (torchrun, Gloo) on this machine.

256 agreement pairs (relp_lens.core.tasks.agreement_rows), RelP on mlp_post, ``reduce="mean"``, batch 32. Each run starts fresh;
the clock runs from when every process has loaded the model and made the prompts (a barrier) to when the
combined result exists on every rank, so it counts the attribution and the all_reduce, not loading. With 2
cores, 1 process gets ``OMP_NUM_THREADS=2`` and 2 processes 1 thread each: the same cores, split two ways.

    .venv/bin/python benchmarks/dp_throughput.py [--prompts 256] [--procs 2]

Writes benchmarks/results/dp_throughput.json; also checks that the two runs give the same mean scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from _common import write_result


def child(n_prompts: int, out: str) -> None:
    import torch

    import relp_lens
    from relp_lens.core import distributed as dp
    from relp_lens.core.tasks import agreement_rows

    model = relp_lens.load_model()
    rows = agreement_rows(model, n_prompts, simple_fraction=0.0)
    with dp.data_parallel() as where:
        if dp.active():
            import torch.distributed as dist

            dist.barrier()
        t0 = time.perf_counter()
        attr = relp_lens.attribute(model, rows, reduce="mean", batch_size=32, progress=False)
        seconds = time.perf_counter() - t0
        if dp.is_writer():
            torch.save(attr.score_sum, out + ".pt")
            Path(out).write_text(json.dumps(dict(world=where["world"], seconds=seconds, prompts=len(rows))))


def run(procs: int, n_prompts: int, folder: str) -> dict:
    out = os.path.join(folder, f"run{procs}.json")
    threads = str(max(1, (os.cpu_count() or 1) // procs))
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    me = [__file__, "--child", "--prompts", str(n_prompts), "--out", out]
    cmd = ([sys.executable, *me] if procs == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *me])
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return json.loads(Path(out).read_text()) | dict(threads=int(threads), scores=out + ".pt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.child:
        return child(args.prompts, args.out)
    import torch

    with tempfile.TemporaryDirectory() as folder:
        one = run(1, args.prompts, folder)
        many = run(args.procs, args.prompts, folder)
        a, b = torch.load(one["scores"]), torch.load(many["scores"])
        diff = float((a - b).abs().max() / a.abs().max())
    rows = []
    for r in (one, many):
        rows.append(dict(processes=r["world"], threads_each=r["threads"], seconds=r["seconds"],
                         prompts_per_second=r["prompts"] / r["seconds"]))
        print(f"{r['world']} process(es) × {r['threads']} thread(s): {r['seconds']:.1f} s, "
              f"{r['prompts'] / r['seconds']:.1f} prompts/s")
    print(f"speed-up {one['seconds'] / many['seconds']:.2f}×; largest score difference {diff:.1e} of the largest score")
    write_result("benchmarks/results/dp_throughput.json", dict(runs=rows, max_rel_diff=diff))


if __name__ == "__main__":
    main()
