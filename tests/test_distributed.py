"""Data parallel runs (torch.distributed, Gloo on localhost): 2 processes give the single-process result;
a failing rank stops every rank with a clear error and no output file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dp_worker
from helpers import assert_same
from relp_lens import RelPLensError
from relp_lens.core import distributed as dp

WORKER = Path(__file__).parent / "dp_worker.py"


def torchrun(nproc: int, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def single():
    return dp_worker.compute(*dp_worker.data())


@pytest.mark.hooked  # the worker builds a tiny HookedTransformer
def test_two_gloo_processes_equal_one(single, tmp_path):
    out = tmp_path / "dp.json"
    proc = torchrun(2, WORKER, out, "ok")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world"] == 2
    assert [n[:3] for n in got["nodes"]] == [n[:3] for n in single["nodes"]]  # the same circuit
    for key in ("nodes", "edges", "mean", "per_example", "metric_clean", "metric_ref", "counts", "unpaired", "io",
                "heads", "head_totals", "profiles", "contexts"):
        assert_same(got[key], single[key])
    for key in ("faithfulness", "completeness", "cf_faithfulness"):
        assert got[key] == pytest.approx(single[key], abs=1e-6)
    assert single["edges"] and any(single["per_example"]) and single["heads"] and any(single["io"][0])
    assert got["contexts_found"] and single["contexts_found"]


@pytest.mark.hooked
def test_a_failing_rank_stops_every_rank_and_writes_nothing(tmp_path):
    out = tmp_path / "dp.json"
    proc = torchrun(2, WORKER, out, "fail")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "rank 1 of 2 failed during relp attribution: ValueError: boom on purpose" in text
    assert text.count("RelPLensError") >= 2  # rank 0 raises it too, instead of waiting in a collective
    assert not out.exists() and not list(tmp_path.iterdir())


def test_outside_torchrun_nothing_changes():
    with dp.data_parallel() as where:
        assert where == {"rank": 0, "world": 1, "device": "cpu"} and not dp.active()
        assert dp.shard([1, 2, 3]) == [1, 2, 3] and dp.is_writer()


def test_sharding_and_too_few_batches():
    dp._state.update(active=True, rank=1, world=4)
    try:
        with pytest.raises(RelPLensError, match="3 batches for 4 processes"):
            dp.shard([0, 1, 2])
        assert dp.shard(list(range(9))) == [1, 5]
    finally:
        dp._state.update(active=False, rank=0, world=1)


@pytest.mark.slow
def test_cli_trace_under_torchrun_equals_one_process(tmp_path):
    """``torchrun --nproc_per_node=2 -m relp_lens.cli trace ...`` on the shipped model writes (rank 0 only) the
    circuit a single process writes: same nodes, scores, edges and faithfulness up to summation order."""
    from relp_lens.circuits.circuit import Circuit

    pairs = Path(__file__).parent.parent / "examples" / "pairs.jsonl"
    common = ["trace", "--data", pairs, "--k", "20", "--n-prompts", "8", "--n-eval", "4", "--edges",
              "--edge-prompts", "4", "--batch-size", "2", "--no-progress"]
    one = subprocess.run([sys.executable, "-m", "relp_lens.cli", *map(str, common), "--out", tmp_path / "one.json"],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    # one thread, as each torchrun process has: the same BLAS arithmetic per batch, only the sums combine differently
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(2, "-m", "relp_lens.cli", *common, "--out", tmp_path / "two.json", timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "data parallel: 2 processes (gloo)" in two.stderr
    assert two.stdout.count("wrote ") == 1  # rank 0 alone prints and writes
    a, b = Circuit.load(tmp_path / "one.json"), Circuit.load(tmp_path / "two.json")
    assert [n.key for n in a.nodes] == [n.key for n in b.nodes]
    assert_same([n.score for n in a.nodes], [n.score for n in b.nodes])
    assert [(e.source, e.target) for e in a.edges] == [(e.source, e.target) for e in b.edges]
    assert_same([e.weight for e in a.edges], [e.weight for e in b.edges])
    for key in ("faithfulness", "completeness"):
        assert getattr(a.evaluation, key) == pytest.approx(getattr(b.evaluation, key), abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"]  # no partial files
