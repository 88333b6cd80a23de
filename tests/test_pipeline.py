"""relp_lens.trace(): the pipeline of ``relp-lens trace`` as one library call.

The command line is parse → load → prompts → split → trace() → write; the library call with the same options
writes the same circuit file, byte for byte (tiny model here, the shipped model in the slow test), and equals
the steps called one by one. Options are checked before any computation."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import relp_lens
import relp_lens.cli as cli
from relp_lens.core.data import Prompts
from relp_lens.core.errors import RelPLensError
from relp_lens.pipeline import TraceOptions, split_prompts, trace
from helpers import AGREEMENT_ROWS, tiny_llama

PAIRS = Path(__file__).resolve().parent.parent / "examples" / "pairs.jsonl"


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in AGREEMENT_ROWS * 2))
    return path


def cli_and_library(model_factory, data: Path, tmp_path, monkeypatch, flags: list[str], **options):
    """The circuit file ``relp-lens trace`` writes and the one ``trace()`` gives for the same options."""
    monkeypatch.setattr(cli, "_model", lambda args: model_factory())
    n_prompts, n_eval, seed = (int(flags[flags.index(f) + 1]) for f in ("--n-prompts", "--n-eval", "--seed"))
    assert cli.main(["trace", "--data", str(data), *flags, "--out", str(tmp_path / "cli.json"), "--no-progress"]) == 0
    build, held_out = split_prompts(Prompts.from_jsonl(data), n_prompts, n_eval, seed)
    result = trace(model_factory(), build, held_out=held_out, source=str(data), progress=False, **options)
    result.circuit.save(tmp_path / "library.json")
    return (tmp_path / "cli.json").read_bytes(), (tmp_path / "library.json").read_bytes(), result


def test_library_trace_writes_the_cli_circuit_file(tmp_path, monkeypatch, rows_file, capsys):
    flags = ["--k", "6", "--n-prompts", "4", "--n-eval", "4", "--seed", "3", "--batch-size", "2", "--edges",
             "--edge-prompts", "2", "--heads", "--groups", "--group-prompts", "4"]
    a, b, result = cli_and_library(tiny_llama, rows_file, tmp_path, monkeypatch, flags, k=6, batch_size=2, edges=True,
                                   edge_prompts=2, heads=True, groups=True, group_prompts=4)
    assert a == b
    c = result.circuit
    assert c.edges and c.io_edges is not None and c.heads is not None and c.groups is not None
    assert result.evaluation is c.evaluation and c.evaluation.n_prompts == 4
    assert set(result.stats) >= {"edges", "io_edges", "heads", "groups"}
    out = capsys.readouterr().out
    assert all(line in out for line in result.log if not line.startswith("warning: "))  # the CLI prints the log


def test_trace_is_the_steps_in_order(rows_file):
    """trace() = attribute(reduce="mean") → select_top_k → attribute_edges → attribute_io_edges → evaluate."""
    model = tiny_llama()
    build, held_out = split_prompts(Prompts.from_jsonl(rows_file), 4, 4, seed=1)
    result = trace(model, build, held_out=held_out, k=5, edges=True, batch_size=2, progress=False)
    attr = relp_lens.attribute(model, build, reduce="mean", batch_size=2, progress=False)
    c = relp_lens.select_top_k(attr, model, 5)
    c.data["eval_rows"], c.data["source"] = held_out.to_rows(), "prompts"
    c = relp_lens.attribute_edges(model, c, build, batch_size=2, progress=False)
    c = relp_lens.attribute_io_edges(model, c, build, batch_size=2, progress=False)
    c.evaluation = relp_lens.evaluate_circuit(model, c, held_out, batch_size=2, warn=False)
    assert result.circuit.to_dict() == c.to_dict()
    assert result.attribution.score_sum.equal(attr.score_sum)


def test_held_out_is_optional():
    model = tiny_llama()
    result = trace(model, AGREEMENT_ROWS, k=3, batch_size=2, progress=False)
    assert result.evaluation is None and result.held_out is None and len(result.circuit) == 3


@pytest.mark.parametrize("options, message", [
    (dict(), "exactly one of k"),
    (dict(k=3, tau=0.1), "exactly one of k"),
    (dict(k=3, heads=True), "heads needs edges=True"),
    (dict(k=3, edges=True, heads=True, basis="mlp_out"), "needs the mlp_post basis"),
    (dict(k=3, influence_prune=(0.5,)), r"influence_prune must be \(node_threshold, edge_threshold\)"),
    (dict(k=3, group_prompts=8), "group_prompts needs groups=True"),
    (dict(k=1, groups=True), "at least 2 neurons"),
    (dict(k=3, method="ig2"), "unknown method 'ig2'"),
    (dict(k=3, baseline="patch"), "unknown baseline 'patch'"),
    (dict(k=3, edges="yes"), "edges must be True or False"),
    (dict(k=3, kk=3), "unknown option 'kk'"),
    (dict(k=3, exclude_always_on=True, basis="mlp_out"), "exclude_always_on needs the mlp_post basis"),
])
def test_bad_options_fail_before_any_computation(options, message):
    class NoModel:  # any use of the model fails the test
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name})")

    with pytest.raises(RelPLensError, match=message):
        trace(NoModel(), AGREEMENT_ROWS, **options)


@pytest.mark.parametrize("options, message", [
    (dict(k=3, ablation="counterfactual"), "counterfactual ablation needs paired data"),
    (dict(k=3, edges=True, influence_prune=(0.5, 0.5)), "influence_prune needs input/output edges"),
])
def test_what_unpaired_prompts_cannot_do_fails_before_the_model(options, message):
    class NoModel:
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name})")

    unpaired = [dict(clean_prefix=r["clean_prefix"], clean_answer=r["clean_answer"]) for r in AGREEMENT_ROWS]
    with pytest.raises(RelPLensError, match=message):
        trace(NoModel(), unpaired, **options)


@given(value=st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=3), st.none()))
def test_counts_are_positive_integers(value):
    for name in ("edge_prompts", "graph_nodes", "batch_size"):
        with pytest.raises(RelPLensError, match=name):
            TraceOptions(k=3, **{name: value})
    with pytest.raises(RelPLensError, match=r"\bk\b (must be|and tau)|exactly one of k"):
        TraceOptions(k=value)


@given(value=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(float("nan"))))
def test_edge_keep_is_a_fraction(value):
    with pytest.raises(RelPLensError, match="edge_keep"):
        TraceOptions(k=3, edge_keep=value)


def test_split_is_seeded_and_disjoint():
    prompts = Prompts.from_rows(AGREEMENT_ROWS * 3)
    a = split_prompts(prompts, 6, 4, seed=2)
    b = split_prompts(prompts, 6, 4, seed=2)
    assert [p.to_rows() for p in a] == [p.to_rows() for p in b]
    assert len(a[0]) == 6 and len(a[1]) == 4
    with pytest.raises(RelPLensError, match="at least 2 prompts"):
        split_prompts(prompts.subset([0]), 1, 1)


@pytest.mark.slow
def test_library_trace_writes_the_cli_circuit_file_on_the_shipped_model(smollm, tmp_path, monkeypatch):
    flags = ["--k", "30", "--n-prompts", "8", "--n-eval", "4", "--seed", "0", "--batch-size", "4", "--edges",
             "--edge-prompts", "4"]
    a, b, result = cli_and_library(lambda: smollm, PAIRS, tmp_path, monkeypatch, flags, k=30, batch_size=4,
                                   edges=True, edge_prompts=4)
    assert a == b
    assert len(result.circuit) == 30 and result.circuit.io_edges is not None
    assert result.evaluation.faithfulness == json.loads(a)["evaluation"]["faithfulness"]


def test_a_step_leaves_its_input_alone(rows_file):
    """Steps return new circuits that share no dict or list with their input; a restriction is not the whole
    circuit's evaluation."""
    model = tiny_llama()
    build, held_out = split_prompts(Prompts.from_jsonl(rows_file), 4, 4, seed=1)
    whole = trace(model, build, held_out=held_out, k=6, edges=True, batch_size=2, progress=False).circuit
    before = whole.to_dict()
    part = relp_lens.prune_edges(whole, 0.5)
    part.data["eval_rows"] = []
    part.selection["note"] = "mine"
    part.nodes.append(part.nodes[0])
    assert whole.to_dict() == before
    assert whole.evaluation is not None and part.evaluation is None
