"""The memory and pass planner: hand-checkable parts, monotone in what should grow, the CLI, and (slow) a
measured peak on the shipped model within 25 %."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relp_lens import RelPLensError
from relp_lens.cli import main
from relp_lens.core.plan import KNOWN, ModelShape, plan
from helpers import tiny_llama


def test_known_shapes_have_their_published_sizes():
    assert KNOWN["llama-3.1-8b"].n_params == pytest.approx(8.03e9, rel=0.01)  # Meta's model card: 8.03 B
    assert KNOWN["llama-3.2-1b"].n_params == pytest.approx(1.50e9, rel=0.02)  # 1.24 B + untied unembedding
    model = tiny_llama()
    shape = ModelShape.of(model)
    assert shape.n_params == sum(p.numel() for p in model.parameters()) and shape.n_layers == model.cfg.n_layers


def test_parts_by_hand():
    s = KNOWN["smollm2-135m"]
    p = plan(s, 100, 10, batch_size=8, backend="hooked")
    assert p["weights"] == s.n_params * 4
    assert p["attribution"]["parts"]["unembed_temp"] == s.d_vocab * s.d_model * 4  # HookedTransformer's backward
    bridge = plan(s, 100, 10, batch_size=8, backend="bridge")
    assert bridge["attribution"]["parts"]["unembed_temp"] == 0  # a bridge's lm_head makes no such temporary
    assert p["attribution"]["peak"] - bridge["attribution"]["peak"] == s.d_vocab * s.d_model * 4
    assert p["attribution"]["parts"]["scores"] == s.n_layers * 10 * s.d_mlp * 8  # float64 running sums
    none = plan(s, 100, 10, batch_size=8, reduce="none")
    assert none["attribution"]["parts"]["scores"] == 100 * s.n_layers * 10 * s.d_mlp * 4
    assert p["attribution"]["forward"] == 2 * 13 and p["attribution"]["backward"] == 13  # 13 batches of ≤ 8
    assert plan(s, 100, 10, batch_size=8, paired=False)["attribution"]["forward"] == 13
    assert p["ig"]["backward"] == 13 * s.n_layers * 10
    assert p["edges"]["backward"] == 13 * -(-300 * 8 // 256)
    assert p["evaluation"]["backward"] == 0 and p["evaluation"]["forward"] == 5 * 13


def test_grows_with_batch_tokens_and_shrinks_with_devices():
    base = plan("llama-3.1-8b", 300, 32, dtype="bfloat16")
    for task in ("attribution", "ig", "edges", "evaluation"):
        assert plan("llama-3.1-8b", 300, 64, dtype="bfloat16")[task]["peak"] > base[task]["peak"]
        assert plan("llama-3.1-8b", 300, 32, batch_size=32, dtype="bfloat16")[task]["peak"] > base[task]["peak"]
        assert plan("llama-3.1-8b", 300, 32, dtype="bfloat16", devices=4)[task]["peak"] < base[task]["peak"] / 2
        assert plan("llama-3.1-8b", 300, 32)[task]["peak"] > base[task]["peak"]  # float32 > bfloat16


@pytest.mark.parametrize("kwargs, message", [(dict(n_prompts=0), "n_prompts"), (dict(dtype="int8"), "dtype"),
                                             (dict(reduce="sum"), "reduce"), (dict(model="gpt-9"), "unknown model"),
                                             (dict(backend="jax"), "backend")])
def test_errors(kwargs, message):
    args = dict(model="smollm2-135m", n_prompts=10, tokens=8) | kwargs
    with pytest.raises(RelPLensError, match=message):
        plan(args.pop("model"), args.pop("n_prompts"), args.pop("tokens"), **args)


def test_cli(capsys):
    assert main(["plan", "--model", "llama-3.1-8b", "--prompts", "300", "--tokens", "32", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b: 8.03 B parameters, bfloat16" in out and "attribution" in out and "GiB" in out
    assert main(["plan", "--model", "gpt-9", "--prompts", "3", "--tokens", "3"]) == 2
    assert main(["plan", "--prompts", "3", "--tokens", "3", "--backend", "bridge"]) == 0
    assert "TransformerBridge" in capsys.readouterr().out


def test_default_backend_is_the_loaded_models():
    from relp_lens.core import backends

    assert plan(tiny_llama(), 4, 4)["backend"] == "hooked"
    expected = "hooked" if backends.hooked_transformer_available() else "bridge"
    assert plan("smollm2-135m", 4, 4)["backend"] == expected  # what load_model gives here


@pytest.mark.slow
def test_measured_peak_within_25_percent():
    """One setting of benchmarks/plan_check.py: RelP attribution, batch 32 of 6-token pairs, in a fresh process,
    planned for the backend the process loaded (a HookedTransformer on TransformerLens 3.9, a bridge on 4.x)."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import plan_check

    out = subprocess.run([sys.executable, "-c", plan_check.CHILD, "attribution", "32", "6", "64"],
                         capture_output=True, text=True, env=plan_check.ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    p = plan("smollm2-135m", got["n"], 6, batch_size=32, backend=got["backend"])
    ratio = (p["attribution"]["peak"] - p["weights"]) / got["measured"]
    assert 0.75 <= ratio <= 1.25, ratio
