"""The Python API's bad-input contract: every public function refuses a bad option with RelPLensError, naming
the option, before any computation, and leaves no hook on the model; exceptions of the caller's own code (a
metric, the body of ``with relp(...)``) and KeyboardInterrupt come through unchanged.

The options and what each accepts are written out here (not read from the code); hypothesis draws the values.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import relp_lens
from relp_lens import RelPLensError
from relp_lens.core import backends
from helpers import hooks_left, same_length_rows, tiny_hf_llama, word_tokenizer


@pytest.fixture(scope="module")
def model():
    """A tiny Llama as a TransformerBridge: the same on both TransformerLens versions."""
    return backends.wrap_hf_model(tiny_hf_llama(), word_tokenizer(), "tiny-llama")


@pytest.fixture(scope="module")
def rows(model):
    return same_length_rows(model)


@pytest.fixture(scope="module")
def attr(model, rows):
    return relp_lens.attribute(model, rows, progress=False)


@pytest.fixture(scope="module")
def circuit(model, attr, rows):
    c = relp_lens.attribute_edges(model, relp_lens.select_top_k(attr, model, 6), rows[:2], progress=False)
    return relp_lens.attribute_io_edges(model, c, rows[:2], progress=False)


@pytest.fixture(scope="module")
def grouped(model, circuit, rows):
    return relp_lens.group_neurons(model, circuit, rows, n_groups=2, n_seeds=1, n_subsets=0)


# Each case: (function name, option, rule, how to call it with that option set).
FINITE_LIST, PERCENT_LIST, NONNEG_LIST, POS_LIST = "finite list", "percent list", "list >= 0", "int list"
POS, NONNEG, FRACTION, OPEN_UNIT, FINITE_NONNEG = "positive int", "non-negative int", "fraction", "(0, 1)", "finite >= 0"


def _cases():
    """(function, option, rule, call): ``call(f, value)`` runs the function on the fixtures ``f`` with the
    option set to ``value``."""
    rl = relp_lens
    q = dict(progress=False)
    return [
        ("attribute", "batch_size", POS, lambda f, v: rl.attribute(f["model"], f["rows"], batch_size=v, **q)),
        ("attribute", "ig_steps", POS, lambda f, v: rl.attribute(f["model"], f["rows"], method="ig", ig_steps=v, **q)),
        ("select_top_k", "k", POS, lambda f, v: rl.select_top_k(f["attr"], f["model"], k=v)),
        ("select_threshold", "tau", FINITE_NONNEG, lambda f, v: rl.select_threshold(f["attr"], f["model"], tau=v)),
        ("evaluate_circuit", "batch_size", POS,
         lambda f, v: rl.evaluate_circuit(f["model"], f["circuit"], f["rows"], batch_size=v)),
        ("attribute_edges", "batch_size", POS,
         lambda f, v: rl.attribute_edges(f["model"], f["circuit"], f["rows"], batch_size=v, **q)),
        ("attribute_edges", "edge_batch", POS,
         lambda f, v: rl.attribute_edges(f["model"], f["circuit"], f["rows"], edge_batch=v, **q)),
        ("attribute_io_edges", "batch_size", POS,
         lambda f, v: rl.attribute_io_edges(f["model"], f["circuit"], f["rows"], batch_size=v, **q)),
        ("attribute_head_splits", "edge_batch", POS,
         lambda f, v: rl.attribute_head_splits(f["model"], f["circuit"], f["rows"], edge_batch=v, **q)),
        ("attribute_head_splits", "max_nodes", POS,
         lambda f, v: rl.attribute_head_splits(f["model"], f["circuit"], f["rows"], max_nodes=v, **q)),
        ("prune_edges", "keep_fraction", FRACTION, lambda f, v: rl.prune_edges(f["circuit"], keep_fraction=v)),
        ("influence_prune", "node_threshold", FRACTION, lambda f, v: rl.influence_prune(f["circuit"], node_threshold=v)),
        ("influence_prune", "edge_threshold", FRACTION, lambda f, v: rl.influence_prune(f["circuit"], edge_threshold=v)),
        ("steering_sweep", "batch_size", POS,
         lambda f, v: rl.steering_sweep(f["model"], "The keys", [(0, -1, 1)], [" are"], batch_size=v)),
        ("neuron_auroc", "batch_size", POS,
         lambda f, v: rl.neuron_auroc(f["model"], ["The keys", "The key"], [1, 0], batch_size=v, **q)),
        ("always_on_neurons", "quantile", OPEN_UNIT, lambda f, v: rl.always_on_neurons(f["model"], quantile=v)),
        ("always_on_neurons", "min_fraction", FRACTION, lambda f, v: rl.always_on_neurons(f["model"], min_fraction=v)),
        ("compare_with_exact", "n_nodes", POS, lambda f, v: rl.compare_with_exact(f["model"], f["rows"], n_nodes=v)),
        ("group_neurons", "subset_fraction", OPEN_UNIT,
         lambda f, v: rl.group_neurons(f["model"], f["circuit"], f["rows"], subset_fraction=v)),
        ("group_neurons", "n_seeds", POS, lambda f, v: rl.group_neurons(f["model"], f["circuit"], f["rows"], n_seeds=v)),
        ("group_steering", "n_random", NONNEG,
         lambda f, v: rl.group_steering(f["model"], f["grouped"], 0, "The keys", [" are"], n_random=v)),
        ("steering_sweep", "factors", FINITE_LIST,
         lambda f, v: rl.steering_sweep(f["model"], "The keys", [(0, -1, 1)], [" are"], factors=v)),
        ("edge_pruning_sweep", "percents", PERCENT_LIST,
         lambda f, v: rl.edge_pruning_sweep(f["model"], f["circuit"], f["rows"], percents=v, progress=False)),
        ("faithfulness_sweep", "taus", NONNEG_LIST,
         lambda f, v: rl.faithfulness_sweep(f["model"], f["attr"], f["rows"], taus=v)),
        ("faithfulness_sweep", "sizes", POS_LIST,
         lambda f, v: rl.faithfulness_sweep(f["model"], f["attr"], f["rows"], sizes=v)),
        ("group_neurons", "batch_size", POS,
         lambda f, v: rl.group_neurons(f["model"], f["circuit"], f["rows"], batch_size=v)),
    ]


CASES = _cases()
BAD = {
    POS: st.one_of(st.integers(-10**6, 0), st.booleans(), st.floats(allow_nan=True).filter(lambda x: x != int(x)
                   if math.isfinite(x) else True), st.just(2.0), st.text(max_size=3), st.none()),
    NONNEG: st.one_of(st.integers(-10**6, -1), st.booleans(), st.just(1.5), st.text(max_size=3)),
    FRACTION: st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(math.nan),
                        st.just(math.inf), st.booleans(), st.text(max_size=3), st.none()),
    OPEN_UNIT: st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan), st.booleans(),
                         st.text(max_size=3)),
    FINITE_LIST: st.one_of(
        st.tuples(st.lists(st.floats(-10, 10), max_size=2),
                  st.sampled_from([math.nan, math.inf, -math.inf, "1", None, True])).map(lambda t: t[0] + [t[1]]),
        st.just([]), st.floats(-10, 10), st.text(max_size=3)),  # a single number or a string is not a list
    PERCENT_LIST: st.lists(st.one_of(st.floats(max_value=0.0), st.floats(min_value=100.0, exclude_min=True),
                                     st.just(math.nan)), min_size=1, max_size=2) | st.floats(1, 100) | st.just([]),
    NONNEG_LIST: st.one_of(st.lists(st.one_of(st.floats(max_value=-1e-9), st.just(math.nan), st.just(math.inf)),
                                    min_size=1, max_size=2), st.just([]), st.floats(0, 1), st.text(max_size=2)),
    POS_LIST: st.one_of(st.lists(st.one_of(st.integers(max_value=0), st.just(1.5), st.booleans()), min_size=1,
                                 max_size=2), st.just([]), st.integers(1, 5), st.text(max_size=2)),
    FINITE_NONNEG: st.one_of(st.floats(max_value=0.0, exclude_max=True), st.just(math.nan), st.just(math.inf),
                             st.booleans(), st.text(max_size=3)),
}


@pytest.mark.parametrize("fn, option, rule, run", CASES, ids=[f"{f}-{o}" for f, o, _, _ in CASES])
@given(data=st.data())
def test_bad_option_is_refused(fn, option, rule, run, data, request):
    value = data.draw(BAD[rule], label=option)
    if rule == POS and value is None and option == "max_nodes":
        return  # None means "every node" there
    fixtures = {name: request.getfixturevalue(name) for name in ("model", "rows", "attr", "circuit")}
    if fn == "group_steering":
        fixtures["grouped"] = request.getfixturevalue("grouped")
    with pytest.raises(RelPLensError, match=rf"\b{option}\b"):
        run(fixtures, value)
    assert hooks_left(fixtures["model"]) == []


def test_callers_own_errors_pass_through(model, rows):
    """A metric that raises, and the body of ``with relp(...)``, keep their own exception type; no hook stays."""
    class Mine(Exception):
        pass

    def metric(logits):
        raise Mine("from the caller's metric")

    with pytest.raises(Mine):
        relp_lens.attribute(model, rows, metric=metric, progress=False)
    assert hooks_left(model) == []
    with pytest.raises(Mine):
        with relp_lens.relp(model):
            raise Mine("from the body")
    assert hooks_left(model) == []
    with pytest.raises(KeyboardInterrupt):
        relp_lens.attribute(model, rows, metric=lambda logits: (_ for _ in ()).throw(KeyboardInterrupt()),
                            progress=False)
    assert hooks_left(model) == []


def test_wrong_kind_of_model(rows, circuit):
    """A model argument that is not a TransformerLens model is named as such, not an AttributeError inside."""
    for bad in ("smollm2-135m", None, torch.nn.Linear(2, 2)):
        for call in (lambda: relp_lens.attribute(bad, rows, progress=False),
                     lambda: relp_lens.evaluate_circuit(bad, circuit, rows),
                     lambda: relp_lens.attribute_edges(bad, circuit, rows, progress=False),
                     lambda: relp_lens.group_neurons(bad, circuit, rows),
                     lambda: relp_lens.steering_sweep(bad, "The keys", [(0, -1, 1)], [" are"]),
                     lambda: circuit.check_model(bad)):
            with pytest.raises(RelPLensError, match=r"model must be a TransformerLens"):
                call()


def test_prompts_as_any_iterable_of_strings(model):
    """A generator or a tuple of strings is as good as a list (as before the prompt checks)."""
    answers = [" are", " is"]
    want = relp_lens.attribute(model, ["The keys", "The key"], answers, progress=False).scores
    for given in (("The keys", "The key"), (p for p in ["The keys", "The key"])):
        assert torch.equal(relp_lens.attribute(model, given, answers, progress=False).scores, want)


def test_wrong_kind_of_prompts(model):
    for bad in (3, None, [3, 4], {"clean_prefix": 3}, [{"clean_prefix": "The keys"}, "The key"]):
        with pytest.raises(RelPLensError):
            relp_lens.attribute(model, bad, progress=False)
    assert hooks_left(model) == []


def test_errors_are_chained_to_their_cause(tmp_path):
    """A RelPLensError that stands for another exception keeps it as ``__cause__`` (the traceback shows both)."""
    from relp_lens import Circuit, Prompts

    bad = tmp_path / "c.json"
    bad.write_bytes(b'{"schema": "\xff"}')
    with pytest.raises(RelPLensError) as info:
        Circuit.load(bad)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"clean_prefix": \n')
    with pytest.raises(RelPLensError, match=r"rows.jsonl:1: not valid JSON") as info:
        Prompts.from_jsonl(rows)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(RelPLensError) as info:
        relp_lens.load_model(device="cpu:x:y")
    assert info.value.__cause__ is not None
