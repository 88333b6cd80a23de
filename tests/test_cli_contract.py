"""The command line's bad-input contract, by property-based tests (hypothesis):

- every numeric option of every subcommand refuses out-of-range and non-finite values with exit status 2 and
  the option's name, before anything is loaded (the parser alone decides), and accepts every valid value;
- no output of a run may be one of its inputs, however the path is spelled (``./x``, ``d/../x``, a symlink,
  a hard link): exit status 2 before the model loads, the input byte-identical afterwards, no file left behind.
"""

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from relp_lens import cli

# What each numeric option accepts, written out here (not read from the code): (kind, least, open?, most).
INT, FLOAT = "int", "float"
RULES = {
    ("trace", "--batch-size"): (INT, 1, False, None), ("trace", "--k"): (INT, 1, False, None),
    ("trace", "--tau"): (FLOAT, 0.0, False, None), ("trace", "--n-prompts"): (INT, 1, False, None),
    ("trace", "--n-eval"): (INT, 1, False, None), ("trace", "--seed"): (INT, 0, False, None),
    ("trace", "--edge-prompts"): (INT, 1, False, None), ("trace", "--edge-keep"): (FLOAT, 0.0, True, 1.0),
    ("trace", "--influence-prune"): (FLOAT, 0.0, True, 1.0), ("trace", "--graph-nodes"): (INT, 1, False, None),
    ("trace", "--group-prompts"): (INT, 2, False, None), ("trace", "--report-cards"): (INT, 0, False, None),
    ("trace", "--show"): (INT, 0, False, None),
    ("evaluate", "--batch-size"): (INT, 1, False, None), ("evaluate", "--n-eval"): (INT, 1, False, None),
    ("evaluate", "--sweep"): (INT, 1, False, None),
    ("plan", "--prompts"): (INT, 1, False, None), ("plan", "--tokens"): (INT, 1, False, None),
    ("plan", "--batch-size"): (INT, 1, False, None), ("plan", "--k"): (INT, 1, False, None),
    ("plan", "--devices"): (INT, 1, False, None),
}
REQUIRED = {"trace": [], "evaluate": ["circuit.json"], "plan": ["--prompts", "4", "--tokens", "8"]}


def _subparsers():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    return sub.choices


def test_every_numeric_option_is_checked():
    """Each option of each subcommand that takes a number has a rule here and a checking type there: a new
    option parsed with plain ``int``/``float`` fails this test."""
    found = set()
    for name, sp in _subparsers().items():
        for action in sp._actions:
            if action.type in (int, float):
                pytest.fail(f"{name} {action.option_strings}: parsed with plain {action.type.__name__}, unchecked")
            flag = max(action.option_strings, key=len, default=None)
            if (name, flag) in RULES:
                found.add((name, flag))
                assert action.type is not None
    assert found == set(RULES)


def _valid(rule, text: str) -> bool:
    kind, low, low_open, high = rule
    try:
        x = int(text) if kind == INT else float(text)
    except ValueError:
        return False
    if kind == FLOAT and not math.isfinite(x):
        return False
    return (x > low if low_open else x >= low) and (high is None or x <= high)


def _argv(cmd: str, flag: str, text: str) -> list[str]:
    nargs = 2 if flag == "--influence-prune" else 1
    return [cmd, *REQUIRED[cmd], flag + "=" + text if nargs == 1 else flag, *([text] * nargs if nargs == 2 else [])]


NUMBERS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "Infinity", "1e400", "-0", "0", "1", "0.0", "1.0", "2", "True",
                     "", " ", "1,2", "0x10", "1_0", "½", "٣"]),
    st.text(max_size=6),
)


@given(option=st.sampled_from(sorted(RULES)), text=NUMBERS)
@example(option=("trace", "--k"), text="-3")
@example(option=("trace", "--tau"), text="nan")
@example(option=("trace", "--edge-keep"), text="0")
@example(option=("trace", "--influence-prune"), text="1.5")
@example(option=("evaluate", "--sweep"), text="-1")
def test_numeric_options(option, text, capsys):
    """Out of range or not a number: exit status 2 naming the option; in range: parsed to the value."""
    cmd, flag = option
    rule = RULES[option]
    if flag == "--sweep":  # a comma list: each item follows the rule
        items = [t for t in text.split(",") if t.strip()]
        ok = bool(items) and all(_valid(rule, t) for t in items)
    else:
        ok = _valid(rule, text)
    try:
        args = cli.build_parser().parse_args(_argv(cmd, flag, text))
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
        assert not ok, f"{flag} {text!r} refused: {err}"
        assert flag in err and "Traceback" not in err
        return
    assert ok, f"{cmd} {flag} {text!r} accepted"
    value = getattr(args, flag.lstrip("-").replace("-", "_"))
    values = value if isinstance(value, list) else [value]
    for v in values:
        assert isinstance(v, int if rule[0] == INT else float) and not isinstance(v, bool)
        assert math.isfinite(v)


# -- outputs never touch inputs ------------------------------------------------------------------------------
ROW = {"clean_prefix": "The keys", "patch_prefix": "The key", "clean_answer": " are", "patch_answer": " is"}


class _Loaded(Exception):
    """Raised in place of loading the model: the run got past every input/output check."""


SPELLINGS = ["plain", "dot", "dotdot", "double_slash", "absolute", "symlink", "symlink_dir", "hardlink"]


def _spell(how: str, target: Path, work: Path) -> str:
    """Another path naming the file ``target`` (in ``work``)."""
    rel = os.path.relpath(target, Path.cwd())
    if how == "plain":
        return rel
    if how == "dot":
        return os.path.join(".", rel)
    if how == "dotdot":
        (work / "sub").mkdir(exist_ok=True)
        return os.path.join(os.path.dirname(rel), "sub", "..", os.path.basename(rel))
    if how == "double_slash":
        return os.path.dirname(str(target)) + "//" + target.name
    if how == "absolute":
        return str(target.resolve())
    if how == "symlink":
        link = work / f"link-{target.name}"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        return str(link)
    if how == "symlink_dir":
        link = work / "linked-dir"
        if not link.exists():
            link.symlink_to(work, target_is_directory=True)
        return str(link / target.name)
    if how == "hardlink":
        link = work / f"hard-{target.name}"
        link.unlink(missing_ok=True)
        os.link(target, link)
        return str(link)
    raise AssertionError(how)


@given(how=st.sampled_from(SPELLINGS), flag=st.sampled_from(["--out", "--report", "--export-circuit-tracer"]),
       input_flag=st.sampled_from(["--data", "--gguf"]))
@example(how="plain", flag="--out", input_flag="--data")
@example(how="hardlink", flag="--out", input_flag="--data")
@example(how="symlink", flag="--report", input_flag="--gguf")
def test_output_over_input_refused(how, flag, input_flag, tmp_path_factory, monkeypatch, capsys):
    work = tmp_path_factory.mktemp("io")
    monkeypatch.chdir(work)
    data = work / "prompts.json"  # a .json name, so that --export-circuit-tracer's own naming rule passes
    data.write_text(json.dumps(ROW) + "\n")
    gguf = work / "model.json"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00not really")
    monkeypatch.setattr(cli, "_load_model", lambda args, say: (_ for _ in ()).throw(_Loaded()))
    target = data if input_flag == "--data" else gguf
    before = {p: p.read_bytes() for p in (data, gguf)}
    listing = sorted(p.name for p in work.iterdir())
    argv = ["trace", "--data", str(data), "--gguf", str(gguf), "--k", "3", "--no-progress"]
    argv += [flag, _spell(how, target, work)]
    if flag != "--out":
        argv += ["--out", str(work / "out.json")]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "is the input" in err and flag in err and input_flag in err
    assert {p: p.read_bytes() for p in (data, gguf)} == before
    new = sorted(p.name for p in work.iterdir())
    assert [n for n in new if n not in listing and not n.startswith(("link-", "hard-", "linked-", "sub"))] == []


def test_distinct_output_passes_the_check(tmp_path, monkeypatch):
    """The same check lets a run through when no output is an input (the property above cannot pass vacuously)."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    monkeypatch.setattr(cli, "_load_model", lambda args, say: (_ for _ in ()).throw(_Loaded()))
    with pytest.raises(_Loaded):
        cli.main(["trace", "--data", str(data), "--k", "3", "--out", "./circuit.json", "--no-progress"])
    assert data.read_text() == json.dumps(ROW) + "\n"
