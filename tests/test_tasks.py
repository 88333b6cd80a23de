"""Task generators (formats, filters, determinism), task reports and JSONL tasks."""

import json
import warnings

import pytest

from relp_lens import Prompts, RelPLensError
from relp_lens.core import tasks
from relp_lens.core.tasks import TaskWarning, load_task, task_report

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", tasks.AGREEMENT_SETS)
def test_agreement_sets(smollm, kind):
    rows = tasks.agreement(smollm, kind, 24, seed=1)
    assert len(rows) == 24
    assert rows == tasks.agreement(smollm, kind, 24, seed=1) and rows != tasks.agreement(smollm, kind, 24, seed=2)
    Prompts.from_rows(rows)  # valid JSONL rows
    for r in rows:
        assert set(r) == {"clean_prefix", "patch_prefix", "clean_answer", "patch_answer", "case"}
        assert r["case"].startswith(kind + ":")
        assert len(smollm.to_tokens(r["clean_prefix"])[0]) == len(smollm.to_tokens(r["patch_prefix"])[0])
        for a in (r["clean_answer"], r["patch_answer"]):
            assert len(smollm.to_tokens(a, prepend_bos=False)[0]) == 1
        c, p = r["clean_prefix"].split(), r["patch_prefix"].split()
        diff = [i for i, (x, y) in enumerate(zip(c, p)) if x != y]
        assert len(diff) == 1  # exactly the controlling noun flips
        # which noun controls agreement: the head noun (word 1), or the embedded noun for within_rc
        assert diff[0] == (len(c) - 1 if kind == "within_rc" else 1)
    if kind == "rc":
        assert all(" that the " in r["clean_prefix"] for r in rows)


def test_agreement_rejects_unknown_set(smollm):
    with pytest.raises(RelPLensError, match="unknown agreement set 'pp'"):
        tasks.agreement(smollm, "pp")


def test_capitals_cover_fifty_states(smollm):
    assert len({s for _, s, _ in tasks.CAPITALS}) == 50
    assert all(state not in city for city, state, _ in tasks.CAPITALS)
    for hop in ("two_hop", "city_to_state", "state_to_capital"):
        rows = tasks.capitals(smollm, hop, 50)
        assert len(rows) >= 45 and all(len(smollm.to_tokens(r["clean_answer"], prepend_bos=False)[0]) == 1
                                       for r in rows)
    dallas = [r for r in tasks.capitals(smollm, "two_hop", 50) if "Dallas" in r["clean_prefix"]][0]
    assert dallas == {"clean_prefix": "Fact: the capital of the state containing Dallas is",
                      "clean_answer": " Austin", "case": "two_hop:Texas"}
    chat = tasks.capitals(smollm, "state_to_capital", 5, form="chat")
    assert all(r["clean_prefix"].endswith("<|im_start|>assistant\n") for r in chat)


def test_addition_and_antonyms(smollm):
    rows = tasks.addition(smollm, 30)
    assert len(rows) == 30 and len({r["clean_prefix"] for r in rows}) == 30
    for r in rows:
        x, y = (int(v) for v in r["case"].split("+"))
        assert x < 100 and y < 100 and str(x + y).startswith(r["clean_answer"].strip())
    ant = tasks.antonyms(smollm, 48)
    langs = {r["case"].split(":")[0] for r in ant}
    assert langs == {"en", "fr", "es", "de"}
    assert {"clean_prefix": "The opposite of big is", "clean_answer": " small", "case": "en:big"} in \
        tasks.antonyms(smollm, 100, languages=("en",))


def test_task_report_and_warning(smollm):
    good = task_report(smollm, tasks.agreement(smollm, "simple", 16))
    assert good.accuracy > 0.9 and good.mean_logit_diff > 0
    with pytest.warns(TaskWarning, match="gets only"):
        weak = task_report(smollm, tasks.capitals(smollm, "two_hop", 30))
    assert weak.accuracy < 0.5 and weak.mean_logit_diff is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task_report(smollm, tasks.capitals(smollm, "two_hop", 5), warn=False)


def test_load_task(smollm, tmp_path):
    assert load_task(smollm, "nounpp", 5) == tasks.agreement(smollm, "nounpp", 5)
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in tasks.agreement(smollm, "rc", 3)) + "\n")
    assert load_task(smollm, str(path), 10) == tasks.agreement(smollm, "rc", 3)
    path.write_text(json.dumps({"clean_prefix": "x", "clean_answer": 7}) + "\n")
    with pytest.raises(RelPLensError, match=r"mine.jsonl:1: 'clean_answer' must be"):
        load_task(smollm, str(path))
    with pytest.raises(RelPLensError, match="unknown task 'sports'"):
        load_task(smollm, "sports")


def test_chat_fallback_answers_after_a_space():
    """A tokenizer without a chat template (Gemma 3 270M's GGUF has none) gets the ``Question: …\\nAnswer:``
    form, whose answer follows a space (`` Utah``); after a template's turn marker it follows directly."""
    from types import SimpleNamespace

    from relp_lens.core.tasks import _reply, chat

    bare = SimpleNamespace(tokenizer=SimpleNamespace(chat_template=None))
    prompt = chat(bare, "Which US state is Provo in?")
    assert prompt == "Question: Which US state is Provo in?\nAnswer:" and _reply(prompt, "Utah") == " Utah"
    assert _reply("<|im_start|>assistant\n", "Utah") == "Utah"


def test_only_correct_reuses_a_task_report(smollm):
    rows = tasks.agreement(smollm, "rc", 24, seed=3)
    report = task_report(smollm, rows, warn=False)
    assert len(report.correct) == 24 and sum(report.correct) == round(report.accuracy * 24)
    assert tasks.only_correct(smollm, rows, report=report) == tasks.only_correct(smollm, rows)
    with pytest.raises(RelPLensError, match="covers 24 prompts, not these 23"):
        tasks.only_correct(smollm, rows[:23], report=report)
