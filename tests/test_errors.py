"""Bad input: a RelPLensError whose message names the problem, and no hook left on the model."""

import json

import pytest
import torch

from relp_lens import Prompts, RelPLensError, attribute
from helpers import AGREEMENT_ROWS, hooks_left, tiny_attn_only, tiny_llama


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def check(model, match, **kwargs):
    kwargs.setdefault("progress", False)
    prompts = kwargs.pop("prompts", AGREEMENT_ROWS)
    with pytest.raises(RelPLensError, match=match):
        attribute(model, prompts, **kwargs)
    assert hooks_left(model) == []


def test_clean_patch_lengths_differ(llama):
    row = dict(clean_prefix="The keys", patch_prefix="The key to the", clean_answer=" are", patch_answer=" is")
    check(llama, r"row 0: clean prompt 'The keys' has 3 tokens but patch prompt 'The key to the' has 5",
          prompts=[row])


def test_answer_not_single_token(llama):
    row = dict(AGREEMENT_ROWS[0], clean_answer=" are is")
    check(llama, r"answer ' are is' is 2 tokens", prompts=[row])


def test_unknown_basis(llama):
    check(llama, r"unknown node basis or hook 'mlp_pots'", basis="mlp_pots")
    check(llama, r"did you mean", basis="blocks.0.mlp.hook_pots")
    check(llama, r"no hook 'blocks.9.hook_resid_pre'", basis=["blocks.9.hook_resid_pre"])


def test_model_without_mlp():
    model = tiny_attn_only()
    check(model, r"no MLP neuron hooks", basis="mlp_post")


def test_empty_input(llama):
    check(llama, r"empty input", prompts=[])
    with pytest.raises(RelPLensError, match="empty input"):
        Prompts([])


@pytest.mark.parametrize("method", ["relp", "grad", "ig", "exact"])
def test_nan_metric(llama, method):
    def bad(logits):
        out = logits[:, 0].clone()
        out[-1] = float("nan")
        return out
    check(llama, r"non-finite values \(NaN/inf\) for examples", metric=bad, method=method,
          nodes=[(0, 1, 1)], ig_steps=2)


def test_inf_metric(llama):
    check(llama, r"non-finite", metric=lambda logits: logits[:, 0] + float("inf"))


def test_other_bad_arguments(llama):
    check(llama, r"unknown method 'relp2'", method="relp2")
    check(llama, r"unknown metric 'acc'", metric="acc")
    check(llama, r"logit_diff' needs paired", prompts=["The keys"], metric="logit_diff")
    check(llama, r"baseline applies to unpaired", baseline="mean")
    check(llama, r"needs nodes", method="exact")
    check(llama, r"bad node", method="exact", nodes=[(7, 0, 0)])
    check(llama, r"batch_size must be", batch_size=0)
    check(llama, r"metric must return shape", metric=lambda logits: logits[:, :2])
    check(llama, r"3 prompts but 2 answers", prompts=["The keys", "The key", "The parents"], answers=[" are", " is"])


def test_error_inside_forward_leaves_no_hooks(llama):
    def explode(logits):
        raise RuntimeError("metric crashed")
    for method in ("relp", "ig", "exact"):
        with pytest.raises(RuntimeError, match="metric crashed"):
            attribute(llama, AGREEMENT_ROWS, metric=explode, method=method, nodes=[(0, 1, 1)], progress=False)
        assert hooks_left(llama) == []


def test_bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(AGREEMENT_ROWS[0]) + "\n{not json\n")
    with pytest.raises(RelPLensError, match=r"bad.jsonl:2: not valid JSON"):
        Prompts.from_jsonl(path)
    path.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(RelPLensError, match=r"bad.jsonl:1: expected an object with 'clean_prefix'"):
        Prompts.from_jsonl(path)
    good = json.dumps(AGREEMENT_ROWS[0])
    cases = [
        (dict(AGREEMENT_ROWS[0], clean_answer=3), r"bad.jsonl:4: 'clean_answer' must be a non-empty string"),
        (dict(AGREEMENT_ROWS[0], clean_prefix=""), r"bad.jsonl:4: 'clean_prefix' must be a non-empty string"),
        (dict(AGREEMENT_ROWS[0], verb="are"), r"bad.jsonl:4: unknown field\(s\) \['verb'\]"),
        ({"clean_prefix": "The keys", "clean_answer": " are"}, r"bad.jsonl:4: lacks 'patch_prefix' unlike the first row"),
        ([1, 2], r"bad.jsonl:4: expected an object"),
    ]
    for row, match in cases:
        path.write_text(good + "\n" + good + "\n\n" + json.dumps(row) + "\n")  # line 3 is blank
        with pytest.raises(RelPLensError, match=match):
            Prompts.from_jsonl(path)
    path.write_text("\n")
    with pytest.raises(RelPLensError, match="no rows"):
        Prompts.from_jsonl(path)
    with pytest.raises(RelPLensError, match="data file not found"):
        Prompts.from_jsonl(tmp_path / "nope.jsonl")
