"""The shared option checkers (relp_lens.core.validate) against the rules written out here, by hypothesis; and
the API's path and device mistakes as RelPLensError, chained to what went wrong, before any weight is read."""

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from relp_lens import RelPLensError, data_parallel, load_model
from relp_lens.core import validate

ANYTHING = st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                     st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2),
                     st.integers(-5, 5).map(np.int64), st.floats(-5, 5).map(np.float32))


def _is_integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@given(v=ANYTHING, low=st.integers(-2, 3))
@example(v=True, low=1)
@example(v=2.0, low=1)
def test_int_at_least(v, low):
    ok = _is_integer(v) and v >= low
    if ok:
        assert validate.int_at_least(v, "n", low) == int(v)
        assert type(validate.int_at_least(v, "n", low)) is int
    else:
        with pytest.raises(RelPLensError, match=r"^n must be .*integer.*, got "):
            validate.int_at_least(v, "n", low)


@given(v=ANYTHING)
@example(v=float("nan"))
@example(v=0.0)
@example(v=1.0)
@example(v=False)
def test_fraction(v):
    ok = _is_real(v) and math.isfinite(float(v)) and 0 < float(v) <= 1
    if ok:
        assert validate.fraction(v, "keep") == float(v)
    else:
        with pytest.raises(RelPLensError, match=r"^keep must be a number in \(0, 1\], got "):
            validate.fraction(v, "keep")


@given(v=ANYTHING)
@example(v=float("inf"))
@example(v=-0.0)
def test_finite_non_negative(v):
    ok = _is_real(v) and math.isfinite(float(v)) and float(v) >= 0
    if ok:
        assert validate.finite_float(v, "tau", low=0.0) == float(v)
    else:
        with pytest.raises(RelPLensError, match=r"^tau must be a finite number ≥ 0, got "):
            validate.finite_float(v, "tau", low=0.0)


@given(vs=st.one_of(st.lists(ANYTHING, max_size=4), st.text(max_size=3), st.none()))
def test_int_list(vs):
    ok = isinstance(vs, list) and len(vs) > 0 and all(_is_integer(v) and v >= 1 for v in vs)
    if ok:
        assert validate.int_list(vs, "sizes") == [int(v) for v in vs]
    else:
        with pytest.raises(RelPLensError, match="sizes"):
            validate.int_list(vs, "sizes")


@given(v=ANYTHING)
@example(v=True)
@example(v=np.int64(3))
def test_is_int(v):
    assert validate.is_int(v) is _is_integer(v)
    assert validate.is_int(v, numpy=False) is (isinstance(v, int) and not isinstance(v, bool))


def test_show_and_need():
    assert validate.show("x") == "'x'"
    assert validate.show("x" * 100) == "'" + "x" * 56 + "..." and len(validate.show("x" * 100)) == 60
    assert validate.show("x" * 100, 20) == "'" + "x" * 16 + "..."
    assert validate.show("x" * 300, 200, length=True) == "'" + "x" * 199 + "… (302 characters)"
    assert validate.show("x" * 10, 200, length=True) == "'" + "x" * 10 + "'"
    validate.need(True, "k", "a positive integer", 0)
    with pytest.raises(RelPLensError, match=r"^selection\.k must be a non-negative integer, got 'x{56}\.\.\.$"):
        validate.need(0, "selection.k", "a non-negative integer", "x" * 80)


@pytest.mark.parametrize("dev", ["cuda", "cuda:3", "mps", "xpu:0", "gpu", "cuda:-1", 7.5, "cpu:x"])
def test_device_refused_before_loading(dev):
    if isinstance(dev, str) and dev.startswith("cuda") and dev != "cuda:-1" and torch.cuda.device_count() > 3:
        pytest.skip("this machine has that GPU")
    with pytest.raises(RelPLensError, match=r"^device ") as info:
        load_model(device=dev)
    assert "Traceback" not in str(info.value)
    with pytest.raises(RelPLensError, match=r"^device "):
        with data_parallel(device=dev):
            pass


def test_device_accepted():
    assert validate.device("cpu") == torch.device("cpu")
    assert validate.device(torch.device("cpu")) == torch.device("cpu")


def test_gguf_path_mistakes(tmp_path):
    with pytest.raises(RelPLensError, match="is a folder"):
        load_model(gguf_path=tmp_path)
    with pytest.raises(RelPLensError, match="not found"):
        load_model(gguf_path=tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\xff\xfe not a gguf file")
    with pytest.raises(RelPLensError, match="not a readable GGUF file"):
        load_model(gguf_path=junk)
    with pytest.raises(RelPLensError, match="n_ctx must be a positive integer"):
        load_model(n_ctx=0)
    with pytest.raises(RelPLensError, match="gguf_path must be a path"):
        load_model(gguf_path=3)
