"""Circuit files (issue #27): loading refuses every malformed file with a RelPLensError naming the file and the
problem, never another exception, and never changes the file; saving never writes a number JSON cannot hold;
the model a circuit was made on is identified by name and configuration fingerprint."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relp_lens import RelPLensError
from relp_lens.circuits.circuit import (FINGERPRINT, Circuit, CircuitNode, canonical_model_name, model_facts,
                                        model_fingerprint)
from relp_lens.circuits.selection import select_threshold, select_top_k
from helpers import AGREEMENT_ROWS, synthetic_graph, tiny_hf_llama, tiny_llama, word_tokenizer

TINY = dict(name="tiny-a", n_layers=3, d_model=32, d_mlp=48, d_vocab=31, n_heads=4, d_head=8, n_key_value_heads=2,
            normalization_type="RMS", act_fn="silu", gated_mlp=True, positional_embedding_type="rotary",
            attn_only=False, num_experts=None, architecture="LlamaForCausalLM")


def valid_dict() -> dict:
    """A version-2 circuit with every optional field (io_edges, heads, groups, evaluation) filled in."""
    return {
        "schema": "relp_lens.circuit", "version": 2, "model": dict(TINY), "basis": "mlp_post",
        "hook_names": [f"blocks.{l}.mlp.hook_post" for l in range(3)], "node_width": 48, "method": "relp",
        "metric": "logit_diff",
        "data": {"task": "agreement", "rows": copy.deepcopy(AGREEMENT_ROWS[:2]),
                 "eval_rows": copy.deepcopy(AGREEMENT_ROWS[2:]), "n_prompts": 2,
                 "prepend_bos": True},
        "selection": {"k": 3, "tau": None, "aggregate_pos": False, "include_fixed": True, "excluded_positions": [0],
                      "excluded_neurons": [[0, 1]], "positions_not_in_every_prompt": []},
        "baseline": "patch", "ablation": "mean",
        "positions": {"rule": "end", "n_shared": 1, "labels": {"-1": "'cabinet'", "1": "' keys'"}},
        "nodes": [{"layer": 0, "pos": -1, "index": 3, "score": 0.5}, {"layer": 1, "pos": 1, "index": 7, "score": -0.25},
                  {"layer": 2, "pos": None, "index": 47, "score": 0.125}],
        "edges": [{"source": 0, "target": 1, "weight": 0.3}, {"source": 1, "target": 2, "weight": -0.1}],
        "evaluation": {"faithfulness": 0.8, "completeness": 0.1, "f_model": 2.0, "f_empty": 0.5, "f_circuit": 1.7,
                       "f_complement": 0.65, "n_prompts": 2, "n_nodes": 3, "ablation": "mean"},
        "io_edges": {"positions": [0, 1, -1], "metric": 1.5, "input": [[0, 0, 0.2], [2, 1, -0.1]],
                     "output": [0.1, 0.2, 0.3], "direct": [0.0, 0.1, 0.2],
                     "targets": [{"name": "' are'", "sign": 1.0, "output": [0.1, 0.1, 0.1], "direct": [0.0, 0.0, 0.1]},
                                 {"name": "' is'", "sign": -1.0, "output": [0.0, 0.1, 0.2], "direct": [0.1, 0.0, 0.0]}]},
        "heads": {"rule": "last head", "n_heads": 4, "top": 2, "method": "relp", "totals_exact": True,
                  "edges": {"L0/3@-1 -> L1/7@1": {"residual": 0.1, "heads": [[0, 1, 0.05]], "other": 0.0}},
                  "totals": [[0, 1, 0.05]]},
        "groups": {"method": "spectral", "features": ["attribution", "activation"], "seed": 0, "n_prompts": 2,
                   "pruned": False, "stability": {"ari": 0.9, "ari_seeds": [0.9, 0.8], "ari_subsets": [],
                                                  "subset_fraction": 0.8},
                   "groups": [{"name": "G1", "label": "L0-1", "members": ["L0/3@-1", "L1/7@1"], "score": 0.25,
                               "stability": 0.7, "promoted": ["are"]}]},
    }


BASES = {"hand": valid_dict(), "synthetic": synthetic_graph(0, n_layers=3, per_layer=4, n_pos=2).to_dict()}


def write(tmp_path, obj_or_text, name="c.json"):
    path = tmp_path / name
    if isinstance(obj_or_text, bytes):
        path.write_bytes(obj_or_text)
    else:
        path.write_text(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text, indent=1))
    return path


def refused(path, *words):
    with pytest.raises(RelPLensError) as e:
        Circuit.load(path)
    for w in (str(path), *words):
        assert w in str(e.value), (w, str(e.value))
    return str(e.value)


def test_the_valid_dicts_load(tmp_path):
    for name, d in BASES.items():
        c = Circuit.load(write(tmp_path, d))
        assert c.to_dict() == d and c.source == str(tmp_path / "c.json"), name
        c.summary()


# -- every kind of damage: a RelPLensError naming the file, or (only when still valid) a circuit ---------------
def paths(obj, prefix=()):
    """Every path into a JSON value: (key, index, ...) tuples, the root excluded."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out += paths(v, prefix + (k,))
    return out


ODD = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 60), st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 0.5, 2.0, 10 ** 400]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["", "0", "1.5", "NaN", "blocks.0.mlp.hook_post", "L0/3@-1", "a -> b", "end", "zero"]),
    st.just([]), st.just({}), st.lists(st.integers(-2, 5), max_size=3), st.just([[0, 1, 0.5]]),
    st.just([0, 1, math.nan]), st.dictionaries(st.text(max_size=3), st.integers(-1, 3), max_size=2),
    st.just({"layer": 0, "pos": 0, "index": 0}),
).map(copy.deepcopy)  # a fresh object each time: later mutations may go inside it


@st.composite
def damaged(draw):
    d = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(d)))
        parent = d
        for k in where[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw(ODD)
    return d


def check_loads_or_refuses(path):
    before = path.read_bytes()
    try:
        c = Circuit.load(path)
    except RelPLensError as e:
        assert str(path) in str(e)
    else:  # still valid: it saves, loads back the same, and summarises
        again = c.save(path.parent / "again.json")
        assert Circuit.load(again).to_dict() == c.to_dict()
        c.summary()
    assert path.read_bytes() == before


@settings(deadline=None)
@given(damaged())
@example({**valid_dict(), "node_width": True})
@example({**valid_dict(), "nodes": "x"})
@example({**valid_dict(), "nodes": [{"layer": 0, "pos": 0, "index": 0, "score": "0.5"}]})
@example({**valid_dict(), "nodes": [{"layer": True, "pos": 0, "index": 0, "score": 0.5}]})
@example({**valid_dict(), "nodes": [{"layer": 0, "pos": 0, "index": 0, "score": 10 ** 400}]})
@example({**valid_dict(), "positions": {"rule": "end", "n_shared": 1, "labels": []}})
@example({**valid_dict(), "positions": {"rule": "end", "n_shared": "1", "labels": {}}})
@example({**valid_dict(), "evaluation": {"faithfulness": "high"}})
@example({**valid_dict(), "evaluation": {"n_prompts": 2}})
@example({**valid_dict(), "data": {"rows": [1, 2]}, "version": 1})
@example({**valid_dict(), "io_edges": {**valid_dict()["io_edges"], "input": [[-1, 0, 0.5]]}})
@example({**valid_dict(), "io_edges": {**valid_dict()["io_edges"], "input": [[0, 2 ** 70, 0.5]]}})
@example({**valid_dict(), "io_edges": {**valid_dict()["io_edges"], "positions": [True, 1.5, 2]}})
@example({**valid_dict(), "heads": {**valid_dict()["heads"], "n_heads": "4"}})
@example({**valid_dict(), "heads": {**valid_dict()["heads"], "totals": [[0, 9, 0.1]]}})
@example({**valid_dict(), "groups": {**valid_dict()["groups"], "groups": [{"name": "G1", "label": "x",
                                                                              "members": "L0/3@-1", "score": 1.0}]}})
@example({**valid_dict(), "groups": {**valid_dict()["groups"], "stability": {"ari": "0.9"}}})
@example({**valid_dict(), "model": {**TINY, "d_mlp": "48"}})
@example({**valid_dict(), "model": {**TINY, "gated_mlp": 1}})
@example({**valid_dict(), "selection": {"k": 3.0}})
@example({**valid_dict(), "data": {"prepend_bos": None}})
@example([1, 2])
@example({**valid_dict(), "version": True})
def test_a_damaged_file_loads_or_is_refused(d):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        check_loads_or_refuses(write(Path(tmp), json.dumps(d)))  # NaN, Infinity written as JSON's Python tokens


TEXT = json.dumps(valid_dict(), indent=1)


@settings(deadline=None)
@given(st.integers(0, len(TEXT) - 1), st.one_of(st.none(), st.binary(min_size=1, max_size=3)))
@example(len(TEXT) // 2, None)
@example(0, b"\xff")
@example(10, b"\x00")
@example(TEXT.index("0.5"), b"NaN")
@example(TEXT.index("0.5"), b"1e999")
def test_a_cut_or_corrupted_file_loads_or_is_refused(at, junk):
    """The file cut at ``at`` (junk None), or ``junk`` bytes written over it there."""
    import tempfile
    from pathlib import Path

    raw = TEXT.encode()
    raw = raw[:at] if junk is None else raw[:at] + junk + raw[at + len(junk):]
    with tempfile.TemporaryDirectory() as tmp:
        check_loads_or_refuses(write(Path(tmp), raw))


# -- explicit refusals -----------------------------------------------------------------------------------------
def test_folder_missing_binary_empty_truncated(tmp_path):
    refused(tmp_path, "is a folder")
    refused(tmp_path / "missing.json", "not found")
    refused(write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "binary file", "byte 8")
    raw = b'{"schema": "relp_lens.circuit", "name": "\xff"}'
    refused(write(tmp_path, raw), f"not UTF-8 text (byte {raw.index(0xff)})")
    refused(write(tmp_path, "  \n"), "empty")
    text = json.dumps(valid_dict(), indent=1)
    msg = refused(write(tmp_path, text[: len(text) // 2]), "not valid JSON (line", "truncated")
    assert f"line {text[: len(text) // 2].count(chr(10)) + 1}" in msg
    refused(write(tmp_path, "[" * 100_000), "nested too deeply")
    refused(write(tmp_path, '{"x": ' + "9" * 5000 + "}"), "not a circuit")
    assert Circuit.load(write(tmp_path, "\ufeff" + text)).node_width == 48  # a byte-order mark is fine


def test_newer_and_unknown_versions(tmp_path):
    refused(write(tmp_path, dict(valid_dict(), version=3)),
            "format version 3 is not supported: the file was written by a newer relp_lens; this one reads "
            "format versions 1–2")
    for version in (0, -1, "2", 2.0, True, None):
        msg = refused(write(tmp_path, dict(valid_dict(), version=version)), "is not supported", "reads versions 1–2")
        assert "newer relp_lens" not in msg


def test_non_finite_numbers_in_the_text_name_field_and_line(tmp_path):
    text = json.dumps(valid_dict(), indent=1)
    line = text[: text.index('"score": -0.25')].count("\n") + 1
    msg = refused(write(tmp_path, text.replace('"score": -0.25', '"score": NaN')),
                  "nodes[1].score: NaN is not a finite number", f"(line {line})")
    assert "finite numbers only" in msg
    refused(write(tmp_path, text.replace('"metric": 1.5', '"metric": -Infinity')), "io_edges.metric: -Infinity")
    refused(write(tmp_path, text.replace('"weight": 0.3', '"weight": 1e999')), "edges[0].weight: inf")
    # the token inside a string is text, not a number
    ok = text.replace('"task": "agreement"', '"task": "NaN Infinity"')
    assert Circuit.load(write(tmp_path, ok)).data["task"] == "NaN Infinity"


@pytest.mark.parametrize("where", [("nodes", 0, "score"), ("edges", 1, "weight"), ("io_edges", "output", 2),
                                   ("io_edges", "input", 0, 2), ("heads", "totals", 0, 2),
                                   ("heads", "edges", "L0/3@-1 -> L1/7@1", "residual"), ("groups", "groups", 0, "score"),
                                   ("groups", "stability", "ari"), ("evaluation", "faithfulness"),
                                   ("evaluation", "f_model"), ("selection", "tau"), ("data", "rows", 0, "extra")])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_in_a_dict_are_refused(where, bad):
    d = valid_dict()
    parent = d
    for k in where[:-1]:
        parent = parent[k]
    parent[where[-1]] = bad
    with pytest.raises(RelPLensError, match=r"^mine: .*not a finite number"):
        Circuit.from_dict(d, source="mine")


def test_wrong_types_are_refused():
    cases = {"node_width": (True, "node_width must be a positive integer"),
             "nodes": ("x", "field 'nodes' missing or not a list"),
             "hook_names": (["blocks.0.mlp.hook_post", 3, "x"], "hook_names[1] must be a hook name"),
             "baseline": ("half", "baseline must be one of"), "edges": ({}, "edges must be a list or null"),
             "model": ({**TINY, "d_mlp": "48"}, "model.d_mlp must be a non-negative integer or null"),
             "selection": ({"k": 2.5}, "selection.k must be a non-negative integer")}
    for key, (value, words) in cases.items():
        with pytest.raises(RelPLensError, match=re.escape(words)):
            Circuit.from_dict(dict(valid_dict(), **{key: value}))
    d = valid_dict()
    d["nodes"][0]["score"] = "0.5"
    with pytest.raises(RelPLensError, match="node 0: score must be a finite number, got '0.5'"):
        Circuit.from_dict(d)
    d = valid_dict()
    d["nodes"][2]["layer"] = True
    with pytest.raises(RelPLensError, match="node 2: layer must be an integer, got True"):
        Circuit.from_dict(d)


def test_saving_refuses_what_loading_would_refuse(tmp_path):
    c = Circuit.from_dict(valid_dict())
    c.nodes[1] = CircuitNode(1, 1, 7, score=math.nan)
    with pytest.raises(RelPLensError, match=r"cannot save the circuit to .*c\.json: nodes\[1\]\.score: nan"):
        c.save(tmp_path / "c.json")
    c = Circuit.from_dict(valid_dict())
    c.evaluation.completeness = math.inf
    with pytest.raises(RelPLensError, match="evaluation.completeness: inf"):
        c.save(tmp_path / "c.json")
    with pytest.raises(RelPLensError, match="evaluation.completeness: inf"):  # a dict assigned: checked at once
        c.evaluation = dict(valid_dict()["evaluation"], completeness=math.inf)
    assert list(tmp_path.iterdir()) == []  # nothing written
    from relp_lens.core.files import write_json_atomic

    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json_atomic(tmp_path / "x.json", {"x": math.nan})
    assert list(tmp_path.iterdir()) == []


def test_selection_options_are_checked_first():
    # the options are checked before the attribution is touched (None here)
    for k in (0, -3, 2.0, True, "5"):
        with pytest.raises(RelPLensError, match="k must be a positive integer, got"):
            select_top_k(None, None, k)
    for tau in (math.nan, math.inf, -0.1, "0.1", None):
        with pytest.raises(RelPLensError, match="tau must be a finite number ≥ 0, got"):
            select_threshold(None, None, tau)


# -- the model a circuit was made on ---------------------------------------------------------------------------
def test_canonical_model_names():
    same = ["smollm2-135m", "SmolLM2-135M-Instruct.Q4_1", "HuggingFaceTB/SmolLM2-135M-Instruct",
            "/models/SmolLM2-135M-Instruct.Q8_0.gguf", "smollm2-135m-instruct-f16"]
    assert {canonical_model_name(n) for n in same} == {"smollm2-135m-instruct"}
    assert canonical_model_name("HuggingFaceTB/SmolLM2-135M") == "smollm2-135m"  # the base model: another one
    assert canonical_model_name("gemma3-270m") == canonical_model_name("google/gemma-3-270m") == "gemma-3-270m"
    assert canonical_model_name("gemma-3-270m-it") != canonical_model_name("gemma3-270m")
    for placeholder in ("custom", "", None, "LlamaForCausalLM", 7):
        assert canonical_model_name(placeholder) is None


def tiny_bridge(seed: int, name: str):
    from relp_lens.core.backends import wrap_hf_model

    return wrap_hf_model(tiny_hf_llama(seed=seed), word_tokenizer(), name)


@pytest.fixture(scope="module")
def bridges():
    return tiny_bridge(0, "tiny-a"), tiny_bridge(1, "tiny-b")


def circuit_on(facts: dict) -> Circuit:
    return Circuit(nodes=[CircuitNode(1, -1, 5, 0.5)], basis="mlp_post", node_width=48, model=facts,
                   hook_names=[f"blocks.{l}.mlp.hook_post" for l in range(3)])


def test_model_facts_record_name_and_fingerprint(bridges, tmp_path):
    a, _ = bridges
    facts = model_facts(a)
    assert facts == TINY  # the hand-written circuit above is one made on this model
    assert set(FINGERPRINT) <= set(facts) and model_fingerprint(a) == {k: TINY[k] for k in FINGERPRINT}
    path = circuit_on(facts).save(tmp_path / "c.json")
    assert json.loads(path.read_text())["model"] == TINY
    Circuit.load(path).check_model(a)


def test_another_model_of_the_same_shape_is_refused(bridges, tmp_path):
    a, b = bridges
    assert model_fingerprint(a) == model_fingerprint(b)
    c = Circuit.load(circuit_on(model_facts(a)).save(tmp_path / "c.json"))
    with pytest.raises(RelPLensError) as e:
        c.check_model(b)
    msg = str(e.value)
    assert str(tmp_path / "c.json") in msg and "'tiny-a'" in msg and "'tiny-b'" in msg
    old = circuit_on(dict(name="tiny-a", n_layers=3, d_model=32, d_mlp=48, d_vocab=31))  # a version-2 file's facts
    old.check_model(a)
    with pytest.raises(RelPLensError, match="made on model 'tiny-a', the loaded model is 'tiny-b'"):
        old.check_model(b)
    circuit_on(dict(TINY, name="custom")).check_model(b)  # a placeholder name identifies nothing: shape only


def test_another_configuration_is_refused_with_both_names(bridges):
    a, _ = bridges
    for key, value in [("d_vocab", 50), ("n_key_value_heads", 4), ("normalization_type", "LN"), ("act_fn", "gelu"),
                       ("architecture", "MistralForCausalLM"), ("gated_mlp", False)]:
        with pytest.raises(RelPLensError) as e:
            circuit_on(dict(TINY, **{key: value}, name="big")).check_model(a)
        assert f"circuit is for model 'big' with {key}={value}, this model has {key}=" in str(e.value)
        assert "'tiny-a'" in str(e.value)


@pytest.mark.hooked
def test_the_same_configuration_as_hooked_transformer_and_bridge(bridges):
    a, _ = bridges
    hooked = tiny_llama()
    assert model_fingerprint(hooked) == model_fingerprint(a)
    assert model_facts(hooked)["name"] == "custom"
    circuit_on(model_facts(a)).check_model(hooked)  # "custom": TransformerLens' placeholder name
    assert model_fingerprint(tiny_llama(normalization_type="RMSPre"))["normalization_type"] == "RMS"


@pytest.mark.slow
@pytest.mark.hooked
def test_the_shipped_model_on_either_backend_is_the_same_model(smollm):
    import relp_lens

    bridge = relp_lens.load_model(backend="bridge")
    assert model_facts(smollm) == model_facts(bridge)
    hooks = [f"blocks.{l}.mlp.hook_post" for l in range(30)]
    for made, used in ((smollm, bridge), (bridge, smollm)):
        Circuit(nodes=[CircuitNode(3, -1, 100, 0.5)], basis="mlp_post", hook_names=hooks, node_width=1536,
                model=model_facts(made)).check_model(used)
    for name in ("SmolLM2-135M-Instruct.Q4_1", "HuggingFaceTB/SmolLM2-135M-Instruct"):  # --gguf, a Hugging Face id
        Circuit(nodes=[], basis="mlp_post", hook_names=hooks, node_width=1536,
                model=dict(model_facts(bridge), name=name)).check_model(smollm)
    with pytest.raises(RelPLensError, match="'HuggingFaceTB/SmolLM2-135M', the loaded model is 'smollm2-135m'"):
        Circuit(nodes=[], basis="mlp_post", hook_names=hooks, node_width=1536,
                model=dict(model_facts(bridge), name="HuggingFaceTB/SmolLM2-135M")).check_model(smollm)


def test_a_damaged_viewer_index_is_refused(tmp_path):
    from relp_lens.circuits.graph_export import INDEX_FILE, read_index

    for text in ('{"graphs": [{"slug": "a", "score": NaN}]}', '{"graphs": [1, 2]}', "[" * 100_000):
        (tmp_path / INDEX_FILE).write_text(text)
        with pytest.raises(RelPLensError, match="not a circuit-tracer graph index"):
            read_index(tmp_path / INDEX_FILE)


def test_the_file_rules_live_in_schema(tmp_path):
    """circuit.py keeps the data model; relp_lens.circuits.schema holds the file checks (on plain JSON values) and
    the format's names."""
    from relp_lens.circuits import circuit, schema

    assert (circuit.SCHEMA, circuit.VERSION, circuit.FINGERPRINT, circuit.ABLATIONS, circuit.BASELINES) == (
        schema.SCHEMA, schema.VERSION, schema.FINGERPRINT, schema.ABLATIONS, schema.BASELINES)
    fields = schema.check_document(valid_dict())
    assert fields["nodes"][0] == valid_dict()["nodes"][0] and fields["heads"] == valid_dict()["heads"]
    assert Circuit(**fields).to_dict() == valid_dict()  # plain nodes and annotations: converted by the constructor
    with pytest.raises(RelPLensError, match=r"^heads\.n_heads must be a positive integer, got None$"):
        schema.check_document({**valid_dict(), "heads": {**valid_dict()["heads"], "n_heads": None}})
    # a NaN token inside a value refused before the number check is shown as written
    text = json.dumps(valid_dict()).replace('"schema": "relp_lens.circuit"', '"schema": [1, NaN]')
    refused(write(tmp_path, text), "not a relp_lens circuit (schema [1, NaN], expected 'relp_lens.circuit')")
    assert schema.non_finite_line("x: NaN is not a finite number; " + schema.NOT_FINITE, '{\n"a": NaN}') == 2
    assert schema.non_finite_line("another problem", '{"a": NaN}') is None


# -- the typed annotations: through the file and back, and a file written before they were typed -------------------
MAIN_FILE = Path(__file__).parent / "data" / "circuit_v2_main.json"


def test_typed_annotations_survive_save_and_load(tmp_path):
    """Circuit.load(save(c)) gives equal typed annotations, and a second save writes the very same bytes."""
    from relp_lens.circuits.circuit import Evaluation, HeadSplit, HeadSplits, IOEdges, NeuronGroups

    for name, d in BASES.items():
        c = Circuit.from_dict(d)
        path = c.save(tmp_path / f"{name}.json")
        back = Circuit.load(path)
        assert back == c, name
        for field, kind in (("io_edges", IOEdges), ("heads", HeadSplits), ("groups", NeuronGroups),
                            ("evaluation", Evaluation)):
            got = getattr(back, field)
            assert got == getattr(c, field), (name, field)
            assert got is None or isinstance(got, kind), (name, field)
        assert back.save(tmp_path / "again.json").read_bytes() == path.read_bytes()
    c = Circuit.from_dict(valid_dict())
    assert isinstance(c.heads.edges["L0/3@-1 -> L1/7@1"], HeadSplit) and c.heads.totals == [(0, 1, 0.05)]
    assert c.evaluation.faithfulness == 0.8 and c.evaluation.n_nodes == 3 and c.evaluation.verdict is None
    assert c.groups.groups[0].members == ["L0/3@-1", "L1/7@1"]
    assert c.io_edges.input.shape == (3, 3) and c.io_edges.targets == ["' are'", "' is'"]


def test_a_file_written_before_the_typed_model_loads_and_saves_byte_for_byte(tmp_path):
    """tests/data/circuit_v2_main.json was written by relp_lens before its annotations were typed (the tiny test
    Llama; edges, input/output edges, head splits of the drawn graph, pruned after splitting, groups, an
    evaluation with a verdict): it loads with every annotation typed and saves to the same bytes."""
    c = Circuit.load(MAIN_FILE)
    assert c.io_edges is not None and c.io_edges.targets and c.heads.max_nodes == 8 and not c.heads.totals_exact
    assert c.groups.features == ["attribution", "activation", "edges"] and c.evaluation.verdict
    assert c.evaluation.prepend_bos is True and c.evaluation.n_prompts == 2
    assert c.to_dict() == json.loads(MAIN_FILE.read_text())
    assert c.save(tmp_path / "c.json").read_bytes() == MAIN_FILE.read_bytes()


def test_annotations_given_as_dicts_are_checked_and_typed():
    """A circuit built by hand with the JSON form of an annotation (the constructor or a later assignment) gets
    the same checks as a file and the typed value."""
    from relp_lens.circuits.circuit import Evaluation, HeadSplits, IOEdges, NeuronGroups

    d = valid_dict()
    c = Circuit(nodes=d["nodes"], edges=d["edges"], basis="mlp_post", hook_names=d["hook_names"], node_width=48,
                model=d["model"], io_edges=d["io_edges"], heads=d["heads"], groups=d["groups"],
                evaluation=d["evaluation"])
    assert isinstance(c.nodes[0], CircuitNode) and isinstance(c.io_edges, IOEdges)
    assert isinstance(c.heads, HeadSplits) and isinstance(c.groups, NeuronGroups)
    assert isinstance(c.evaluation, Evaluation) and c.evaluation.to_dict() == d["evaluation"]
    with pytest.raises(RelPLensError, match="heads.n_heads must be a positive integer"):
        c.heads = dict(d["heads"], n_heads=0)
    with pytest.raises(RelPLensError, match="member L9/9@0 is not a node of this circuit"):
        c.groups = dict(d["groups"], groups=[dict(d["groups"]["groups"][0], members=["L9/9@0"])])
    with pytest.raises(RelPLensError, match="1 output weights for 3 nodes"):
        c.io_edges = dict(d["io_edges"], output=[0.5])
    with pytest.raises(RelPLensError, match="evaluation.faithfulness: nan"):
        c.evaluation = dict(d["evaluation"], faithfulness=math.nan)
    c.evaluation = {}  # an empty evaluation is none
    assert c.evaluation is None


def test_results_still_answer_as_the_dicts_they_replace():
    """Evaluation and HeadSplits (and the sweep results) answer obj["key"] with a DeprecationWarning."""
    c = Circuit.from_dict(valid_dict())
    with pytest.warns(DeprecationWarning, match=r"Evaluation\['faithfulness'\] is deprecated"):
        assert c.evaluation["faithfulness"] == 0.8
    with pytest.warns(DeprecationWarning):
        assert c.evaluation.get("verdict") is None and "ablation" in c.evaluation
    with pytest.warns(DeprecationWarning):
        assert dict(c.evaluation) == valid_dict()["evaluation"]
    with pytest.warns(DeprecationWarning):
        assert c.heads["n_heads"] == 4 and c.heads["totals"] == [[0, 1, 0.05]]
    with pytest.warns(DeprecationWarning):
        assert c.heads.edges["L0/3@-1 -> L1/7@1"]["residual"] == 0.1
    with pytest.raises(KeyError):
        c.evaluation["nothing"]  # noqa: B018
