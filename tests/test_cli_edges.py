"""Sharp edges of the relp-lens command line (issue #9): fast --help without torch, one-line errors before the
model loads, all-or-nothing outputs, progress lines, and a damaged tokenizer cache that heals itself.

Most tests replace ``relp_lens.cli._model`` with a tiny random Llama (or with a function that fails the test),
so they run in seconds and prove which checks come before the model load.
"""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import relp_lens.cli as cli
from relp_lens.cli import main
from helpers import AGREEMENT_ROWS, tiny_llama


# -- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the checks under test must come first."""
    def load(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "_model", load)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(cli, "_model", lambda args: tiny_llama())


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in AGREEMENT_ROWS))
    return path


def one_error_line(capsys) -> str:
    """The one error line on stderr (warnings about the circuit aside), never a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("relp-lens: error: "), err
    return lines[0]


TRACE_TINY = ["trace", "--k", "5", "--n-prompts", "2", "--n-eval", "2", "--batch-size", "2"]


# -- 1. --help answers at once, without torch ------------------------------------------------------------------
def test_task_names_match_the_tasks_module():
    import relp_lens.core.tasks

    assert cli.TASK_NAMES == ("agreement", *relp_lens.core.tasks.TASKS)


def test_parser_and_help_import_no_torch():
    script = """
import contextlib, io, sys
import relp_lens.cli
parser = relp_lens.cli.build_parser()
for cmd in ([], ["trace"], ["evaluate"]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            parser.parse_args([*cmd, "--help"])
        except SystemExit:
            pass
    assert "usage: relp-lens" in out.getvalue()
print(sorted(m for m in ("torch", "transformer_lens", "transformers", "numpy") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_package_import_is_lazy_and_complete():
    r = subprocess.run([sys.executable, "-c", "import sys, relp_lens; print('torch' in sys.modules, "
                        "relp_lens.__version__)"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["False", "0.1.0"], r.stderr

    import relp_lens
    import relp_lens.views.plots
    from relp_lens import attribute, select_top_k  # noqa: F401  (the documented spelling keeps working)

    assert relp_lens.plot is relp_lens.views.plots
    assert relp_lens.attribute is relp_lens.core.attribution.attribute
    for name in relp_lens.__all__:
        assert getattr(relp_lens, name) is not None, name
    assert set(relp_lens.__all__) <= set(dir(relp_lens))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        relp_lens.nope


@pytest.mark.parametrize("cmd", [["-m", "relp_lens.cli", "--help"], ["-m", "relp_lens.cli", "trace", "--help"],
                                 ["relp-lens", "--help"]])
def test_help_answers_at_once(cmd):
    if cmd[0] == "relp-lens":
        script = Path(sys.executable).with_name("relp-lens")
        if not script.exists():
            pytest.skip("the relp-lens entry point is not installed beside this python")
        argv = [str(script), *cmd[1:]]
    else:
        argv = [sys.executable, *cmd]
    start = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0 and "usage: relp-lens" in r.stdout
    assert time.perf_counter() - start < 3


# -- 2. one-line errors, before the model loads ----------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["trace", "evaluate"])
def test_data_errors_come_before_the_model(cmd, tmp_path, capsys, no_model, rows_file):
    circuit = tmp_path / "c.json"
    if cmd == "evaluate":
        from relp_lens.circuits.circuit import Circuit, CircuitNode

        Circuit(nodes=[CircuitNode(0, 1, 3)], basis="mlp_post", hook_names=[f"blocks.{l}.mlp.hook_post"
                for l in range(3)], node_width=48, model=dict(name="tiny", n_layers=3, d_model=32, d_mlp=48),
                data={}).save(circuit)
        argv = lambda data: ["evaluate", str(circuit), "--data", str(data)]  # noqa: E731
    else:
        argv = lambda data: [*TRACE_TINY, "--data", str(data), "--out", str(circuit)]  # noqa: E731
    before = set(tmp_path.iterdir())

    assert main(argv(tmp_path)) == 2  # a folder
    assert "folder" in one_error_line(capsys)

    bad = tmp_path / "utf16.jsonl"
    bad.write_bytes(b"\xff\xfe{\x00\"\x00")
    assert main(argv(bad)) == 2
    line = one_error_line(capsys)
    assert "utf16.jsonl" in line and "not UTF-8 text (byte 0" in line

    bad.write_bytes(json.dumps(AGREEMENT_ROWS[0]).encode() + b"\n{\"clean_prefix\": \"caf\xe9\"}\n")
    assert main(argv(bad)) == 2
    assert "not UTF-8 text" in one_error_line(capsys)

    bad.write_text(json.dumps(AGREEMENT_ROWS[0]) + "\n" + json.dumps({"clean_prefix": 5}) + "\n")
    assert main(argv(bad)) == 2
    assert "utf16.jsonl:2: 'clean_prefix' must be a non-empty string" in one_error_line(capsys)
    assert set(tmp_path.iterdir()) == before | {bad}


def test_evaluate_without_held_out_prompts_fails_before_the_model(tmp_path, capsys, no_model):
    from relp_lens.circuits.circuit import Circuit, CircuitNode

    path = Circuit(nodes=[CircuitNode(0, 1, 3)], basis="mlp_post", node_width=48,
                   hook_names=[f"blocks.{l}.mlp.hook_post" for l in range(3)],
                   model=dict(name="tiny", n_layers=3, d_model=32, d_mlp=48), data={}).save(tmp_path / "c.json")
    assert main(["evaluate", str(path)]) == 2
    assert "stores no held-out prompts" in one_error_line(capsys)
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys)
    path.write_bytes(b'{"schema": "relp_lens.circuit", "name": "\xff"}')
    assert main(["evaluate", str(path)]) == 2
    assert "not UTF-8 text (byte 41)" in one_error_line(capsys)


def test_unwritable_outputs_fail_before_the_model(tmp_path, capsys, no_model, rows_file):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    base = [*TRACE_TINY, "--data", str(rows_file)]
    cases = [
        (["--out", str(tmp_path / "missing" / "c.json")], "folder " + str(tmp_path / "missing") + " does not exist"),
        (["--out", str(a_file / "c.json")], "is not a folder"),
        (["--out", str(tmp_path)], "--out " + str(tmp_path) + " is a folder"),
        (["--out", str(tmp_path / "c.json"), "--report", str(tmp_path / "nope" / "r.html")], "--report"),
        (["--out", str(tmp_path / "c.json"), "--export-circuit-tracer", str(tmp_path)], "--export-circuit-tracer"),
        (["--out", str(tmp_path / "c.json"), "--report", str(tmp_path / "c.json")], "name the same file"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        assert message in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "rows.jsonl"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder_fails_before_the_model(tmp_path, capsys, no_model, rows_file):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main([*TRACE_TINY, "--data", str(rows_file), "--out", str(locked / "c.json")]) == 2
        assert "is not writable" in one_error_line(capsys)
    finally:
        locked.chmod(0o700)


def test_gguf_not_found_fails_before_the_model(tmp_path, capsys, no_model, rows_file):
    assert main([*TRACE_TINY, "--data", str(rows_file), "--out", str(tmp_path / "c.json"),
                 "--gguf", str(tmp_path / "none.gguf")]) == 2
    assert "none.gguf: file not found" in one_error_line(capsys)


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 40000000000000 bytes.\nError code 12 (Cannot allocate memory)"),
    "real",
])
def test_out_of_memory_is_one_line(error, tmp_path, capsys, monkeypatch, rows_file):
    def load(args):
        if error == "real":
            import torch

            torch.empty(10**13)  # ~40 TB: fails at once, whatever the machine
        raise error

    monkeypatch.setattr(cli, "_model", load)
    assert main([*TRACE_TINY, "--data", str(rows_file), "--out", str(tmp_path / "c.json"), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "out of memory" in line and "try a smaller --batch-size or fewer/shorter prompts" in line
    if not isinstance(error, MemoryError):
        assert "tried to allocate 37252.9 GiB" in line


def test_other_runtime_errors_are_not_hidden(tmp_path, monkeypatch, rows_file):
    def load(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_model", load)
    with pytest.raises(RuntimeError, match="a bug"):
        main([*TRACE_TINY, "--data", str(rows_file), "--out", str(tmp_path / "c.json")])


# -- 3 and 4. all-or-nothing outputs; progress lines (tiny model) ------------------------------------------------
def outputs(tmp_path):
    return {name: tmp_path / name for name in ("c.json", "g.json", "r.html")}


def trace_all(tmp_path, rows_file, *extra):
    o = outputs(tmp_path)
    return main([*TRACE_TINY, "--data", str(rows_file), "--edges", "--edge-prompts", "2", "--report-cards", "2",
                 "--out", str(o["c.json"]), "--export-circuit-tracer", str(o["g.json"]), "--report", str(o["r.html"]),
                 *extra])


def test_trace_writes_all_outputs_and_reports_progress(tmp_path, capsys, tiny, rows_file):
    assert trace_all(tmp_path, rows_file) == 0
    captured = capsys.readouterr()
    o = outputs(tmp_path)
    assert json.loads(o["c.json"].read_text())["evaluation"]["n_prompts"] == 2
    assert "nodes" in json.loads(o["g.json"].read_text())
    assert "<html" in o["r.html"].read_text().lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "g.json", "graph-metadata.json", "r.html",
                                                          "rows.jsonl"]
    assert [g["slug"] for g in json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]] == ["g"]
    progress = [line for line in captured.err.splitlines() if line.endswith(" ...")]
    assert [line.split()[0] for line in progress] == ["loading", "attributing", "weighing", "evaluating", "building"]
    assert progress[3] == "evaluating 5 nodes on 2 held-out prompts (mean ablation) ..."
    assert "wrote " + str(o["r.html"]) in captured.out

    assert main(["evaluate", str(o["c.json"])]) == 0
    err = capsys.readouterr().err
    assert "loading smollm2-135m ..." in err and "held-out prompts ..." in err
    assert main(["evaluate", str(o["c.json"]), "--no-progress"]) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: ")]


def test_failing_report_write_leaves_nothing_and_keeps_old_files(tmp_path, capsys, tiny, rows_file, monkeypatch):
    import relp_lens.views.report

    o = outputs(tmp_path)
    o["c.json"].write_text("old circuit\n")

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(relp_lens.views.report, "write_report", full_disk)
    assert trace_all(tmp_path, rows_file, "--no-progress") == 2
    line = one_error_line(capsys)
    assert f"could not write {o['r.html']} (No space left on device)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "rows.jsonl"]  # no hidden staged files
    assert o["c.json"].read_text() == "old circuit\n"


def test_failing_rename_removes_the_files_already_renamed(tmp_path, capsys, tiny, rows_file, monkeypatch):
    o = outputs(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == o["r.html"]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert trace_all(tmp_path, rows_file, "--no-progress") == 2
    assert "could not write " + str(o["r.html"]) in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


# -- 5. a damaged tokenizer cache is rebuilt -------------------------------------------------------------------
def test_damaged_tokenizer_cache_is_rebuilt(tmp_path, monkeypatch):
    from relp_lens.core.models import load_gguf_tokenizer, shipped_gguf_path

    monkeypatch.setenv("RELP_LENS_CACHE", str(tmp_path))
    sentence = "The keys to the cabinet are on the table."
    first = load_gguf_tokenizer(shipped_gguf_path())
    (cached,) = (tmp_path / "tokenizers").iterdir()
    for damage in ("tokenizer.json", "tokenizer_config.json"):
        text = (cached / damage).read_text()
        (cached / damage).write_text(text[: len(text) // 2])  # truncated: invalid JSON
        with pytest.warns(UserWarning, match="tokenizer cache .* is damaged"):
            again = load_gguf_tokenizer(shipped_gguf_path())
        assert again(sentence)["input_ids"] == first(sentence)["input_ids"]
        assert again.bos_token == first.bos_token
        assert [p.name for p in (tmp_path / "tokenizers").iterdir()] == [cached.name]  # rebuilt in place
        assert (cached / damage).read_text() == text


def test_trace_heads_and_influence_pruning(tmp_path, capsys, tiny, rows_file):
    """--heads splits the drawn graph's edges (stored in the circuit file); --influence-prune prunes the graph."""
    out = tmp_path / "c.json"
    assert main([*TRACE_TINY, "--k", "12", "--data", str(rows_file), "--edges", "--edge-prompts", "2",
                 "--influence-prune", "0.9", "0.98", "--heads", "--graph-nodes", "6", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "influence pruning kept" in printed and "head splits of" in printed
    saved = json.loads(out.read_text())
    assert saved["heads"]["max_nodes"] == 6 and saved["heads"]["edges"] and saved["heads"]["totals"]
    assert saved["selection"]["node_threshold"] == 0.9 and len(saved["nodes"]) < 12  # pruning removed neurons
    assert f"influence pruning kept {len(saved['nodes'])} of 12 neurons" in printed


@pytest.mark.parametrize("extra, message", [(["--heads"], "--heads needs --edges"),
                                            (["--influence-prune", "0.8", "0.98"], "--influence-prune needs --edges"),
                                            (["--edges", "--influence-prune", "0", "1"], "argument --influence-prune: must be a number in (0, 1]"),
                                            (["--graph-nodes", "0"], "argument --graph-nodes: must be a positive integer"),
                                            (["--edges", "--heads", "--basis", "mlp_out"], "needs the mlp_post basis"),
                                            (["--group-prompts", "8"], "--group-prompts needs --groups"),
                                            (["--groups", "--group-prompts", "1"], "argument --group-prompts: must be an integer ≥ 2"),
                                            (["--groups", "--k", "1"], "at least 2 neurons"),
                                            (["--corpus", "sotu"], "needs --report")])
def test_graph_options_are_checked_before_the_model_loads(extra, message, no_model, rows_file, tmp_path, capsys):
    assert main([*TRACE_TINY, "--data", str(rows_file), *extra, "--out", str(tmp_path / "c.json")]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "c.json").exists()


def test_trace_groups(tmp_path, capsys, tiny, rows_file):
    """--groups groups the circuit's neurons and stores them in the circuit file."""
    out = tmp_path / "c.json"
    assert main([*TRACE_TINY, "--k", "12", "--data", str(rows_file), "--edges", "--edge-prompts", "2", "--groups",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "neuron groups from attribution, activation, edges" in printed
    saved = json.loads(out.read_text())
    members = [m for g in saved["groups"]["groups"] for m in g["members"]]
    assert len(members) == len(saved["nodes"]) == 12


def test_influence_pruning_of_unpaired_data_needs_the_zero_baseline(no_model, tmp_path, capsys):
    rows = tmp_path / "unpaired.jsonl"
    rows.write_text("".join(json.dumps(dict(clean_prefix=r["clean_prefix"])) + "\n" for r in AGREEMENT_ROWS))
    assert main([*TRACE_TINY, "--data", str(rows), "--edges", "--influence-prune", "0.8", "0.98",
                 "--out", str(tmp_path / "c.json")]) == 2  # default --baseline mean: no embedding reference
    assert "paired data or --baseline zero" in one_error_line(capsys)
