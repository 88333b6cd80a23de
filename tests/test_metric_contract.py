"""The metric contract: one finite value per example, refused otherwise before the expensive passes; rows whose
metric is identically zero are named in a warning (file:line for JSONL data)."""

import json
import warnings

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from relp_lens import Prompts, RelPLensError, attribute
from relp_lens.circuits import ablation as ablation_mod
from relp_lens.circuits.ablation import evaluate_circuit
from relp_lens.circuits.selection import select_top_k
from relp_lens.core import attribution as attribution_mod
from relp_lens.core.metrics import ZeroMetricWarning
from helpers import AGREEMENT_ROWS, hooks_left, tiny_llama

pytestmark = pytest.mark.hooked

UNPAIRED = ["The keys to the cabinet", "The parents", "The author near the doctors", "The doctor"]


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def scalar(logits):
    return logits[:, 3].mean()  # one number for the whole batch: was spread over the examples


def column(logits):
    return logits[:, 3:4]  # [batch, 1]


@pytest.fixture
def no_backward(monkeypatch):
    """Any backward pass or pass over all the data fails the test: the metric error must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("an expensive pass ran before the metric was checked")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(attribution_mod, "_mean_acts", forbidden)
    monkeypatch.setattr(ablation_mod, "_mean_acts", forbidden)


@pytest.mark.parametrize("method", ["relp", "grad", "ig", "exact"])
def test_scalar_metric_is_refused(llama, method, no_backward):
    with pytest.raises(RelPLensError, match=r"must return shape \[batch\] = \[\d+\].*metric 'scalar' returned a "
                                            r"scalar \(shape \[\]\)"):
        attribute(llama, AGREEMENT_ROWS, metric=scalar, method=method, nodes=[(0, 1, 1)], ig_steps=2,
                  progress=False)
    assert hooks_left(llama) == []


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_scalar_metric_is_refused_unpaired(llama, baseline, no_backward):
    with pytest.raises(RelPLensError, match=r"returned a scalar"):
        attribute(llama, UNPAIRED, metric=lambda logits, batch: logits[:, 2].sum(), baseline=baseline,
                  progress=False)
    assert hooks_left(llama) == []


def test_column_metric_is_refused(llama):
    with pytest.raises(RelPLensError, match=r"shape \[batch\].*returned shape \[\d+, 1\]"):
        attribute(llama, AGREEMENT_ROWS, metric=column, progress=False)


def test_single_example_scalar_is_refused_too(llama):
    with pytest.raises(RelPLensError, match=r"returned a scalar"):
        attribute(llama, UNPAIRED[:1], metric=scalar, progress=False)


def test_evaluation_refuses_a_scalar_metric_before_the_mean_pass(llama, monkeypatch):
    circuit = select_top_k(attribute(llama, AGREEMENT_ROWS, progress=False), llama, 5)
    monkeypatch.setattr(ablation_mod, "_mean_acts", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    with pytest.raises(RelPLensError, match=r"returned a scalar"):
        evaluate_circuit(llama, circuit, AGREEMENT_ROWS, metric=scalar, warn=False)


def test_non_tensor_metric(llama):
    with pytest.raises(RelPLensError, match=r"must return a tensor of shape \[batch\].*got float"):
        attribute(llama, UNPAIRED, metric=lambda logits: 1.0, progress=False)


def same_answer_rows():
    rows = [dict(r) for r in AGREEMENT_ROWS]
    rows[1]["patch_answer"] = rows[1]["clean_answer"]
    return rows


def test_same_clean_and_patch_answer_is_named(llama):
    with pytest.warns(ZeroMetricWarning, match=r"row 1: clean and patch answers are the same token\(s\)"):
        attr = attribute(llama, same_answer_rows(), progress=False)
    assert attr.metric_clean[1] == 0
    assert attr.scores[1].abs().max() == 0  # the row adds nothing, as the warning says


def test_same_answer_names_file_and_line(llama, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in same_answer_rows()) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attribute(llama, Prompts.from_jsonl(path), progress=False)
    zero = [w for w in caught if issubclass(w.category, ZeroMetricWarning)]
    assert len(zero) == 1  # named once: not again for its clean metric of exactly 0
    assert f"{path}:2: clean and patch answers" in str(zero[0].message)


def test_same_answer_list_in_another_order(llama):
    rows = [dict(r) for r in AGREEMENT_ROWS]
    rows[2].update(clean_answer=[" is", " are"], patch_answer=[" are", " is"])
    with pytest.warns(ZeroMetricWarning, match=r"row 2"):
        attribute(llama, rows, progress=False)


def test_evaluation_names_same_answer_rows(llama):
    circuit = select_top_k(attribute(llama, AGREEMENT_ROWS, progress=False), llama, 5)
    with pytest.warns(ZeroMetricWarning, match=r"row 1"):
        evaluate_circuit(llama, circuit, same_answer_rows(), warn=False)


def test_zero_clean_metric_is_named(llama):
    def zero_on_row_2(logits, batch):
        keep = torch.tensor([0.0 if i == 2 else 1.0 for i in batch.indices], device=logits.device)
        return logits[:, 3] * keep

    with pytest.warns(ZeroMetricWarning, match=r"row 2: the metric is exactly 0 on the clean prompt"):
        attribute(llama, UNPAIRED, metric=zero_on_row_2, progress=False)


def test_no_warning_for_good_data(llama):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroMetricWarning)
        attribute(llama, AGREEMENT_ROWS, progress=False)
        attribute(llama, UNPAIRED, progress=False, baseline="mean")


SHAPES = {"per example": lambda v: v, "scalar": lambda v: v.sum(), "mean": lambda v: v.mean(),
          "column": lambda v: v[:, None], "one more": lambda v: torch.cat([v, v[:1]]), "one less": lambda v: v[1:],
          "matrix": lambda v: torch.stack([v, v], 1), "first only": lambda v: v[:1]}


@given(shape=st.sampled_from(sorted(SHAPES)), method=st.sampled_from(["relp", "grad", "ig"]),
       n=st.integers(1, 4), paired=st.booleans())
@example(shape="scalar", method="relp", n=4, paired=False)
@example(shape="first only", method="grad", n=1, paired=True)
def test_metric_shape_property(llama, shape, method, n, paired):
    """Whatever a metric returns, attribution runs only on one value per example: every other shape is refused
    by name (even where it happens to broadcast, as a [1] for a single example), and no hook is left."""
    def metric(logits):  # [batch, d_vocab]
        return SHAPES[shape](logits[:, 3])

    prompts = AGREEMENT_ROWS[:n] if paired else UNPAIRED[:n]
    ok = shape == "per example" or (shape == "first only" and n == 1)
    if ok:
        attr = attribute(llama, prompts, metric=metric, method=method, ig_steps=2, progress=False)
        assert attr.n_examples == n
    else:
        with pytest.raises(RelPLensError, match=r"metric must return"):
            attribute(llama, prompts, metric=metric, method=method, ig_steps=2, progress=False)
    assert hooks_left(llama) == []
