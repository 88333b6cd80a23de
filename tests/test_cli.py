"""The relp-lens command line: help, exit codes, files written atomically, errors naming the problem."""

import json
import subprocess
import sys

import pytest

from relp_lens.circuits.circuit import VERSION
from relp_lens.cli import main
from helpers import AGREEMENT_ROWS


def run(*args):
    return subprocess.run([sys.executable, "-m", "relp_lens.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("cmd", [[], ["trace"], ["evaluate"]])
def test_help(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage: relp-lens" in r.stdout
    if cmd == ["trace"]:
        for opt in ("--task", "--data", "--basis", "--method", "--k", "--tau", "--n-prompts", "--edges", "--out"):
            assert opt in r.stdout


def test_no_command_fails():
    assert run().returncode != 0


def test_bad_circuit_files(tmp_path, capsys):
    bad = tmp_path / "c.json"
    bad.write_text('{"schema": "relp_lens.circuit", "version": 7}')
    assert main(["evaluate", str(bad)]) == 2
    assert "version 7 is not supported" in capsys.readouterr().err
    bad.write_text("{oops")
    assert main(["evaluate", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "none.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", str(bad), "--n-eval", "0"]) == 2


def test_trace_report_into_a_folder_fails_early(tmp_path, capsys):
    assert main(["trace", "--k", "5", "--out", str(tmp_path / "c.json"), "--report", str(tmp_path)]) == 2
    assert "--report" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_trace_needs_k_or_tau(tmp_path, capsys):
    assert main(["trace", "--out", str(tmp_path / "c.json")]) == 2
    assert "exactly one of --k N or --tau T" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


@pytest.mark.slow
def test_trace_and_evaluate_on_shipped_model(tmp_path, capsys):
    out, graph, report = tmp_path / "c.json", tmp_path / "g.json", tmp_path / "report.html"
    rc = main(["trace", "--k", "40", "--n-prompts", "16", "--n-eval", "8", "--edges", "--edge-prompts", "2",
               "--edge-keep", "0.5", "--out", str(out), "--export-circuit-tracer", str(graph), "--no-progress",
               "--report", str(report), "--report-cards", "3"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "task accuracy" in text and "faithfulness" in text and "layer" in text
    d = json.loads(out.read_text())
    assert d["version"] == VERSION and d["evaluation"]["n_prompts"] == 8 and d["edges"]
    assert d["selection"]["edge_keep_fraction"] == 0.5
    build = {r["clean_prefix"] for r in d["data"]["rows"]}
    assert not build & {r["clean_prefix"] for r in d["data"]["eval_rows"]}  # held out
    assert json.loads(graph.read_text())["links"]
    page = report.read_text()
    assert "smollm2-135m" in page and "accuracy" in page and page.count("<details>") >= 3
    assert page.count("Plotly.newPlot") == 5  # heatmap, bars, attribution graph, all nodes, held-out curves
    assert main(["evaluate", str(out), "--sweep", "5,20"]) == 0
    text = capsys.readouterr().out
    assert "faithfulness" in text and "    20" in text


@pytest.mark.slow
def test_trace_bad_task_file(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(AGREEMENT_ROWS[0]) + "\n" + json.dumps({"clean_prefix": 5}) + "\n")
    out = tmp_path / "c.json"
    assert main(["trace", "--data", str(data), "--k", "5", "--out", str(out)]) == 2
    assert "rows.jsonl:2: 'clean_prefix' must be a non-empty string" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [data]  # nothing half-written


@pytest.mark.slow
def test_evaluate_rejects_circuit_for_other_model(tmp_path, capsys):
    from relp_lens.circuits.circuit import Circuit, CircuitNode

    c = Circuit(nodes=[CircuitNode(0, 1, 5000)], basis="mlp_post",
                hook_names=[f"blocks.{l}.mlp.hook_post" for l in range(30)], node_width=6000,
                model=dict(name="big", n_layers=30, d_model=576, d_mlp=6000), data={"eval_rows": AGREEMENT_ROWS})
    path = c.save(tmp_path / "c.json")
    assert main(["evaluate", str(path)]) == 2
    assert "d_mlp=6000, this model has d_mlp=1536" in capsys.readouterr().err
