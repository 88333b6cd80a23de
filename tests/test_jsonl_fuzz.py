"""Fuzzing the JSONL reader: ``Prompts.from_jsonl`` returns prompts only when every row is valid, otherwise raises
a RelPLensError naming ``file:line`` (or the file, for file-level problems) — never another exception — and
leaves the file byte-identical.

Files are built line by line from tagged pieces (a valid row of the file's format, a row of another format,
wrong types, missing or extra keys, non-objects, non-UTF-8 bytes, truncated JSON, ...), so the expected outcome
is known without re-implementing the reader.
"""

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relp_lens import Prompts, RelPLensError

# formats a file's rows share: which optional keys every row has
FORMATS = [(), ("clean_answer",), ("patch_prefix",), ("patch_prefix", "clean_answer"),
           ("patch_prefix", "clean_answer", "patch_answer")]
HUGE = "x" * 200_000
text = st.one_of(st.text(min_size=1, max_size=12), st.just(HUGE), st.just("é ☃ \u2028 \x85 \x00"))
answer = st.one_of(text, st.lists(text, min_size=1, max_size=3))
any_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                     max_size=3), max_leaves=6)
wrong = st.one_of(st.none(), st.booleans(), st.integers(), st.just(""), st.just([]), st.just([""]),
                  st.lists(st.integers(), min_size=1, max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                  max_size=2))


@st.composite
def row(draw, fmt):
    r = {"clean_prefix": draw(text)}
    for key in fmt:
        r[key] = draw(text if key == "patch_prefix" else answer)
    if draw(st.booleans()):
        r["case"] = draw(any_json)
    return r


def encode(obj, draw) -> bytes:
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8")


KINDS = ["valid", "valid", "valid", "blank", "other_format", "wrong_type", "missing", "extra", "non_object",
         "non_utf8", "truncated", "bigint", "deep", "surrogate", "patch_answer_alone", "bom_inside", "not_json_space"]


@st.composite
def line(draw, fmt):
    """``(bytes, tag)``: tag ``"blank"``, ``("row", format)`` or ``"bad"``."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "valid":
        return encode(draw(row(fmt)), draw), ("row", fmt)
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t", b"  \t ", b"\r"])), "blank"
    if kind == "other_format":
        other = draw(st.sampled_from(FORMATS))
        return encode(draw(row(other)), draw), ("row", other)
    if kind == "wrong_type":
        r = draw(row(fmt))
        r[draw(st.sampled_from(["clean_prefix", *fmt]))] = draw(wrong)
        return encode(r, draw), "bad"
    if kind == "missing":
        r = draw(row(fmt))
        del r["clean_prefix"]
        return encode(r, draw), "bad"
    if kind == "extra":
        r = draw(row(fmt))
        r[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in r and k not in
                                                         {"clean_prefix", "patch_prefix", "clean_answer",
                                                          "patch_answer", "case"}))] = draw(any_json)
        return encode(r, draw), "bad"
    if kind == "non_object":
        return encode(draw(st.one_of(st.lists(any_json, max_size=2), st.integers(), st.text(max_size=5),
                                     st.none(), st.booleans())), draw), "bad"
    if kind == "non_utf8":
        good = encode(draw(row(fmt)), draw)
        at = draw(st.integers(0, len(good)))
        junk = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"]))
        return good[:at] + junk + good[at:], "bad"
    if kind == "truncated":
        good = encode(draw(row(fmt)), draw)
        return good[:draw(st.integers(1, len(good) - 1))], "bad"
    if kind == "bigint":
        return b'{"clean_prefix": "a", "case": ' + b"9" * 5000 + b"}", "bad"
    if kind == "deep":
        return b'{"clean_prefix": "a", "case": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "bad"
    if kind == "surrogate":
        return b'{"clean_prefix": "ok", "clean_answer": "\\ud800"}', "bad"
    if kind == "patch_answer_alone":
        return encode(dict(clean_prefix="a", patch_prefix="b", patch_answer="c"), draw), "bad"
    if kind == "bom_inside":
        return b"\xef\xbb\xbf" + encode(draw(row(fmt)), draw), ("bom", fmt)  # fine at the file's start only
    return draw(st.sampled_from(["\x0c", "\u3000", "\x0b", "\u00a0"])).encode("utf-8"), "bad"


@st.composite
def jsonl_file(draw):
    """``(content, tags)``: the file's bytes and one tag per line."""
    fmt = draw(st.sampled_from(FORMATS))
    lines = draw(st.lists(line(fmt), max_size=6))
    content = draw(st.sampled_from([b"\n", b"\r\n"])).join(b for b, _ in lines)
    if lines and draw(st.booleans()):
        content += b"\n"
    file_bom = draw(st.booleans())
    if file_bom:
        content = b"\xef\xbb\xbf" + content  # a UTF-8 BOM at the start of the file is fine
    tags = [tag for _, tag in lines]
    # a row after a BOM is a row when that BOM opens the file, else bad
    tags = [("row", t[1]) if t[0] == "bom" and i == 0 and not file_bom else "bad" if t[0] == "bom" else t
            for i, t in enumerate(tags)]
    return content, tags


def expect(tags) -> str:
    """``"ok"``, ``"line"`` (an error naming a line) or ``"file"`` (no rows)."""
    rows = [t for t in tags if t != "blank"]
    if "bad" in rows:
        return "line"
    if not rows:
        return "file"
    return "ok" if len({t[1] for t in rows}) == 1 else "line"


def read(content: bytes):
    with tempfile.TemporaryDirectory(prefix="relp-jsonl-") as folder:
        path = Path(folder) / "data.jsonl"
        path.write_bytes(content)
        try:
            return path, Prompts.from_jsonl(path), None
        except RelPLensError as e:
            return path, None, str(e)
        finally:
            assert path.read_bytes() == content  # only read


@settings(deadline=None)
@given(jsonl_file())
@example((b"", []))
@example((b'\xef\xbb\xbf{"clean_prefix": "0"}', [("row", ())]))
@example((b'\xef\xbb\xbf\xef\xbb\xbf{"clean_prefix": "0"}', ["bad"]))
@example((b"\xef\xbb\xbf" + json.dumps({"clean_prefix": "a"}).encode(), [("row", ())]))
@example((b'{"clean_prefix": "a", "case": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ["bad"]))
@example((b'{"clean_prefix": "a", "case": ' + b"9" * 5000 + b"}", ["bad"]))
@example((b'{"clean_prefix": "ok", "clean_answer": "\\ud800"}', ["bad"]))
@example((b'{"clean_prefix": "a", "patch_prefix": "b", "patch_answer": "c"}', ["bad"]))
@example((b'{"clean_prefix": "a"}\n\x0c', [("row", ()), "bad"]))
@example((b'{"clean_prefix": "a"}\n{"clean_prefix": "b", "clean_answer": "c"}', [("row", ()), ("row", ("clean_answer",))]))
def test_reader_returns_prompts_or_names_the_line(case):
    content, tags = case
    path, prompts, error = read(content)
    want = expect(tags)
    if want == "ok":
        assert error is None, error
        rows = [t for t in tags if t != "blank"]
        assert len(prompts) == len(rows)
        assert prompts.paired == ("patch_prefix" in rows[0][1])
        return
    assert prompts is None, f"accepted a file that should fail ({want})"
    if want == "file":
        assert str(path) in error
        return
    found = re.search(re.escape(str(path)) + r":(\d+)\b", error)
    assert found, error
    lines = content.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    n = int(found.group(1))
    assert 1 <= n <= len(lines) and lines[n - 1].strip(b" \t\r"), (n, error)
    assert len(error) < 1000  # a huge row does not make a huge message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(RelPLensError, match="data file not found"):
        Prompts.from_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(RelPLensError, match="is a folder"):
        Prompts.from_jsonl(tmp_path)
    with pytest.raises(RelPLensError, match="cannot be read"):
        Prompts.from_jsonl(str(tmp_path / "a\x00b.jsonl"))
