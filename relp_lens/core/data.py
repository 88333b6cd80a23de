"""Prompts for attribution: paired (clean/patch) or unpaired, validated and batched without padding.

Paired rows use the field's JSONL format ``{clean_prefix, patch_prefix, clean_answer, patch_answer}``
(Marks et al.). Unpaired rows need only ``clean_prefix`` (answers optional: the model's top-1 token is the
target when absent).

1. :class:`Prompts` validates shapes and types on construction.
2. :func:`tokenize` turns every prompt into tokens as the model does (BOS prepended when
   ``model.cfg.default_prepend_bos`` says so — TransformerLens' own default; Qwen2/Qwen3 say no — unless
   ``prepend_bos=`` overrides it, see :func:`resolve_prepend_bos`) and every answer into exactly one token
   id; a clean/patch pair must have equal token length.
3. :func:`make_batches` groups examples of equal token length into batches of at most ``batch_size``, so
   no padding ever enters the model; each batch remembers the example indices it holds.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from relp_lens.core.errors import RelPLensError
from relp_lens.core.files import read_input
from relp_lens.core.validate import positive_int, show
from relp_lens.core.positions import Alignment

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer


def _as_targets(answer, what: str, i: int) -> list[str]:
    if isinstance(answer, str):
        return [answer]
    if isinstance(answer, Sequence) and answer and all(isinstance(a, str) for a in answer):
        return list(answer)
    raise RelPLensError(f"example {i}: {what} must be a string or a non-empty list of strings, got {answer!r}")


@dataclass
class Prompts:
    """Attribution data. ``answers[i]``/``patch_answers[i]`` are lists of target strings (usually one)."""

    clean: list[str]
    answers: list[list[str]] | None = None
    patch: list[str] | None = None
    patch_answers: list[list[str]] | None = None
    cases: list[str] | None = None
    where: list[str] | None = None  # how errors name each example ("file:line"; default "row i")

    def __post_init__(self) -> None:
        if isinstance(self.clean, str):
            self.clean = [self.clean]
        if isinstance(self.patch, str):
            self.patch = [self.patch]
        if not self.clean:
            raise RelPLensError("no prompts given (empty input)")
        n = len(self.clean)
        for i, s in enumerate(self.clean):
            if not isinstance(s, str) or not s:
                raise RelPLensError(f"example {i}: clean prompt must be a non-empty string, got {s!r}")
        if self.answers is not None:
            self.answers = self._targets(self.answers, "answer")
        if self.patch is not None:
            if len(self.patch) != n:
                raise RelPLensError(f"{n} clean prompts but {len(self.patch)} patch prompts")
            for i, s in enumerate(self.patch):
                if not isinstance(s, str) or not s:
                    raise RelPLensError(f"example {i}: patch prompt must be a non-empty string, got {s!r}")
        if self.patch_answers is not None:
            if self.answers is None:
                raise RelPLensError("patch answers given without clean answers")
            self.patch_answers = self._targets(self.patch_answers, "patch answer")
        if self.where is not None and len(self.where) != n:
            raise RelPLensError(f"{n} prompts but {len(self.where)} row labels")

    def label(self, i: int) -> str:
        """How errors name example ``i``: its ``file:line`` when read from JSONL, else ``row i``."""
        return self.where[i] if self.where is not None else f"row {i}"

    def _targets(self, answers, what: str) -> list[list[str]]:
        if isinstance(answers, str):
            answers = [answers] * len(self.clean)
        answers = list(answers)
        if len(answers) != len(self.clean):
            raise RelPLensError(f"{len(self.clean)} prompts but {len(answers)} {what}s")
        return [_as_targets(a, what, i) for i, a in enumerate(answers)]

    @property
    def paired(self) -> bool:
        return self.patch is not None

    def __len__(self) -> int:
        return len(self.clean)

    def subset(self, indices: Iterable[int]) -> "Prompts":
        idx = list(indices)

        def pick(xs):
            return None if xs is None else [xs[i] for i in idx]

        return Prompts(pick(self.clean), pick(self.answers), pick(self.patch), pick(self.patch_answers),
                       pick(self.cases), pick(self.where) if self.where is not None
                       else [f"row {i}" for i in idx])

    @classmethod
    def from_rows(cls, rows: Sequence[dict], where: Sequence[str] | None = None) -> "Prompts":
        """Rows ``{clean_prefix, clean_answer?, patch_prefix?, patch_answer?, case?}`` (JSONL format).

        ``where[i]`` names row i in error messages (default ``"row i"``; JSONL files pass ``"file:line"``).
        """
        rows = list(rows)
        if not rows:
            raise RelPLensError("no prompts given (empty input)")
        where = list(where) if where is not None else [f"row {i}" for i in range(len(rows))]
        for row, at in zip(rows, where):
            validate_row(row, at)
        first = rows[0]
        for row, at in zip(rows, where):
            for key in ("patch_prefix", "clean_answer", "patch_answer"):
                if (key in row) != (key in first):
                    state = "has" if key in row else "lacks"
                    raise RelPLensError(f"{at}: {state} {key!r} unlike the first row (rows must share a format)")
        return cls(
            clean=[r["clean_prefix"] for r in rows],
            answers=[r["clean_answer"] for r in rows] if "clean_answer" in first else None,
            patch=[r["patch_prefix"] for r in rows] if "patch_prefix" in first else None,
            patch_answers=[r["patch_answer"] for r in rows] if "patch_answer" in first else None,
            cases=[str(r.get("case", "")) for r in rows],
            where=where,
        )

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "Prompts":
        """The prompts of a JSONL file: one JSON object per line (see :meth:`from_rows`).

        Lines holding only JSON whitespace are skipped; a UTF-8 byte-order mark at the start of the file is
        allowed. Any problem is a :class:`RelPLensError` naming ``file:line`` (or the file for file-level
        problems: missing, a folder, unreadable, no rows). The file is only read.
        """
        rows, where = [], []
        path = Path(path)
        for lineno, raw in enumerate(read_input(path, "data file").split(b"\n"), 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM (Windows editors)
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RelPLensError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line)") from e
            if not line.strip(JSON_WHITESPACE):
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RelPLensError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            except (ValueError, RecursionError) as e:  # e.g. a 5000-digit integer, nesting too deep
                raise RelPLensError(f"{path}:{lineno}: JSON that cannot be read "
                                    f"({type(e).__name__}: {str(e)[:200]})") from None
            where.append(f"{path}:{lineno}")
        if not rows:
            raise RelPLensError(f"{path}: no rows (empty input)")
        return cls.from_rows(rows, where)

    def to_rows(self) -> list[dict]:
        """The JSONL-style rows (first answer of each example)."""
        rows = []
        for i in range(len(self)):
            row = {"clean_prefix": self.clean[i]}
            if self.patch is not None:
                row["patch_prefix"] = self.patch[i]
            if self.answers is not None:
                row["clean_answer"] = self.answers[i] if len(self.answers[i]) > 1 else self.answers[i][0]
            if self.patch_answers is not None:
                pa = self.patch_answers[i]
                row["patch_answer"] = pa if len(pa) > 1 else pa[0]
            if self.cases is not None and self.cases[i]:
                row["case"] = self.cases[i]
            rows.append(row)
        return rows


ROW_KEYS = {"clean_prefix", "patch_prefix", "clean_answer", "patch_answer", "case"}
JSON_WHITESPACE = " \t\r\n"  # what JSON allows between tokens: a line of only these is empty


def _is_text(s: str) -> bool:
    """False for strings no tokenizer can take: lone surrogates (``"\\ud800"`` in JSON) are not UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_row(row, where: str) -> None:
    """A clear error naming ``where`` when a row is not a valid prompt row."""
    if not isinstance(row, dict):
        raise RelPLensError(f"{where}: expected an object with 'clean_prefix', got {type(row).__name__}")
    if "clean_prefix" not in row:
        raise RelPLensError(f"{where}: expected an object with 'clean_prefix', got keys {sorted(row)}")
    unknown = set(row) - ROW_KEYS
    if unknown:
        raise RelPLensError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(ROW_KEYS)}")
    for key in ("clean_prefix", "patch_prefix"):
        if key in row and (not isinstance(row[key], str) or not row[key]):
            raise RelPLensError(f"{where}: {key!r} must be a non-empty string, got {show(row[key], 200, length=True)}")
    for key in ("clean_answer", "patch_answer"):
        if key in row:
            a = row[key]
            ok = isinstance(a, str) and a or (isinstance(a, list) and a and all(isinstance(x, str) and x for x in a))
            if not ok:
                raise RelPLensError(f"{where}: {key!r} must be a non-empty string or list of strings, "
                                    f"got {show(a, 200, length=True)}")
    for key in ("clean_prefix", "patch_prefix", "clean_answer", "patch_answer"):
        texts = [row.get(key)] if isinstance(row.get(key), str) else row.get(key) or []
        if not all(_is_text(t) for t in texts):
            raise RelPLensError(f"{where}: {key!r} holds a lone surrogate (e.g. '\\ud800'), which is not text")
    if "patch_answer" in row and "patch_prefix" not in row:
        raise RelPLensError(f"{where}: 'patch_answer' without 'patch_prefix'")
    if "patch_answer" in row and "clean_answer" not in row:
        raise RelPLensError(f"{where}: 'patch_answer' without 'clean_answer'")


@dataclass
class Batch:
    """Examples of one token length. Token tensors are ``[batch, pos]``."""

    indices: list[int]
    clean_tokens: torch.Tensor  # [batch, pos]
    patch_tokens: torch.Tensor | None  # [batch, pos]
    answer_ids: list[list[int]] | None
    patch_answer_ids: list[list[int]] | None = None
    extra: dict = field(default_factory=dict)
    # per answer of answer_ids: the id of the same text with a leading space, where the answer has none
    answer_alt_ids: list[list[int | None]] | None = None

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Tokenized:
    prompts: Prompts
    clean_tokens: list[torch.Tensor]  # each [pos]
    patch_tokens: list[torch.Tensor] | None  # each [pos]
    answer_ids: list[list[int]] | None
    patch_answer_ids: list[list[int]] | None
    answer_alt_ids: list[list[int | None]] | None = None
    prepend_bos: bool = True  # whether every prompt starts with the BOS token

    def same_answers(self) -> list[int]:
        """Examples whose clean and patch answers are the same tokens (``logit_diff`` is 0 there, always)."""
        if self.answer_ids is None or self.patch_answer_ids is None:
            return []
        return [i for i, (a, b) in enumerate(zip(self.answer_ids, self.patch_answer_ids))
                if sorted(a) == sorted(b)]

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.clean_tokens]

    @property
    def alignment(self) -> Alignment:
        return Alignment.of(self.clean_tokens)


def str_tokens_of(model: HookedTransformer, tokens: torch.Tensor) -> list[str]:
    """One string per token of ``tokens`` [pos], each decoded alone, as ``to_str_tokens`` does.

    relp_lens decodes itself rather than call ``model.to_str_tokens``, whose TransformerLens 3.9 version raised
    TypeError with some tokenizers (Gemma 3's, in the TransformerLens 4 issue's check).
    """
    return [model.tokenizer.decode([int(t)]) for t in tokens]


def answer_token(model: HookedTransformer, answer: str, where: str | None = None) -> int:
    """The single token id of ``answer``; a clear error (naming ``where``) when it is not exactly one token."""
    ids = model.to_tokens(answer, prepend_bos=False, truncate=False)[0]
    if len(ids) != 1:
        pieces = str_tokens_of(model, ids)
        at = f"{where}: " if where else ""
        raise RelPLensError(f"{at}answer {answer!r} is {len(ids)} tokens {pieces}, not a single token")
    return int(ids[0])


def length_groups(tokens: Sequence[torch.Tensor], batch_size: int) -> list[list[int]]:
    """Indices of ``tokens`` (each ``[pos]``) in batches of equal length, at most ``batch_size`` each, in order of
    first appearance (as :func:`make_batches` groups prompts)."""
    batch_size = positive_int(batch_size, "batch_size")
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tokens):
        by_length[len(t)].append(i)
    return [idx[s:s + batch_size] for idx in by_length.values() for s in range(0, len(idx), batch_size)]


def resolve_prepend_bos(model: HookedTransformer, prepend_bos: bool | None = None) -> bool:
    """Whether prompts start with BOS: ``prepend_bos`` when given, else the model's own choice
    (``model.cfg.default_prepend_bos``, as ``model.to_tokens`` and ``model.run_with_cache(text)`` do; True
    where the config does not say).

    Args:
        model: a HookedTransformer or TransformerBridge.
        prepend_bos: True / False to override the model's default; None to follow it.

    Returns:
        The choice as a bool; a :class:`RelPLensError` when ``prepend_bos`` is neither None nor a bool.
    """
    if prepend_bos is None:
        return bool(getattr(model.cfg, "default_prepend_bos", True))
    if not isinstance(prepend_bos, bool):
        raise RelPLensError(f"prepend_bos must be True, False or None (the model's default), got {prepend_bos!r}")
    return prepend_bos


def prompt_tokens(model: HookedTransformer, text: str, where: str, prepend_bos: bool | None = None) -> torch.Tensor:
    """``[pos]`` tokens of one prompt, never truncated: a prompt longer than the model's context (``n_ctx``)
    is an error naming ``where`` and its token count.

    ``prepend_bos``: start with BOS (True), not (False), or as the model does (None, see
    :func:`resolve_prepend_bos`).
    """
    bos = resolve_prepend_bos(model, prepend_bos)
    n_ctx = getattr(model.cfg, "n_ctx", None)
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    if n_ctx and n_bytes > 64 * n_ctx:  # no tokenizer makes fewer tokens than bytes/64
        raise RelPLensError(f"{where}: prompt of {len(text):,} characters is far longer than the model's "
                            f"context ({n_ctx} tokens)")
    tokens = model.to_tokens(text, prepend_bos=bos, truncate=False)[0].cpu()
    if n_ctx and len(tokens) > n_ctx:
        raise RelPLensError(f"{where}: prompt has {len(tokens)} tokens, more than the model's context of "
                            f"{n_ctx} (n_ctx); shorten it")
    return tokens


def tokenize(model: HookedTransformer, prompts: Prompts, prepend_bos: bool | None = None) -> Tokenized:
    """Every prompt into tokens (checked against ``n_ctx``), every answer into one token id.

    Args:
        model: a HookedTransformer or TransformerBridge with a tokenizer.
        prompts: the data.
        prepend_bos: start every prompt with BOS (True), not (False), or as the model does (None: its
            ``cfg.default_prepend_bos``, see :func:`resolve_prepend_bos`).

    Returns:
        A :class:`Tokenized` (prompt tokens each ``[pos]``; ``prepend_bos`` records the choice).
    """
    if model.tokenizer is None:
        raise RelPLensError("model has no tokenizer; pass tokens through a model with a tokenizer")
    bos = resolve_prepend_bos(model, prepend_bos)
    clean = [prompt_tokens(model, s, prompts.label(i), bos) for i, s in enumerate(prompts.clean)]
    patch = None
    if prompts.patch is not None:
        patch = [prompt_tokens(model, s, prompts.label(i), bos) for i, s in enumerate(prompts.patch)]
        for i, (c, p) in enumerate(zip(clean, patch)):
            if len(c) != len(p):
                raise RelPLensError(
                    f"{prompts.label(i)}: clean prompt {prompts.clean[i]!r} has {len(c)} tokens but patch "
                    f"prompt {prompts.patch[i]!r} has {len(p)}; paired prompts must have equal token length"
                )
    cache: dict[str, int] = {}

    def ids(targets: list[str], i: int) -> list[int]:
        out = []
        for a in targets:
            if a not in cache:
                cache[a] = answer_token(model, a, prompts.label(i))
            out.append(cache[a])
        return out

    def alt(a: str) -> int | None:
        if not a or a[0].isspace():
            return None
        key = "\0 " + a
        if key not in cache:
            ids_ = model.to_tokens(" " + a, prepend_bos=False, truncate=False)[0]
            cache[key] = int(ids_[0]) if len(ids_) == 1 else -1
        return None if cache[key] < 0 else cache[key]

    answer_ids = None if prompts.answers is None else [ids(a, i) for i, a in enumerate(prompts.answers)]
    patch_ids = None if prompts.patch_answers is None else [ids(a, i) for i, a in enumerate(prompts.patch_answers)]
    alt_ids = None if prompts.answers is None else [[alt(x) for x in a] for a in prompts.answers]
    return Tokenized(prompts, clean, patch, answer_ids, patch_ids, alt_ids, prepend_bos=bos)


def warn_unlikely_answers(logits: torch.Tensor, batch: Batch, prompts: Prompts, *, floor: float = 1e-3) -> None:
    """Warn, naming the row, when an answer is near-impossible but the same text with a leading space is
    likely (``"are"`` for ``" are"``): the circuit would explain a token the model never predicts.

    ``logits``: ``[batch, d_vocab]`` at the last position.
    """
    if batch.answer_ids is None or batch.answer_alt_ids is None:
        return
    probs = logits.detach().float().softmax(-1)
    for r, (ids, alts) in enumerate(zip(batch.answer_ids, batch.answer_alt_ids)):
        for a, b in zip(ids, alts):
            if b is None:
                continue
            p, q = float(probs[r, a]), float(probs[r, b])
            if p < floor and q > max(10 * p, 0.01):
                i = batch.indices[r]
                warnings.warn(f"{prompts.label(i)}: answer {prompts.answers[i][ids.index(a)]!r} has probability "
                              f"{p:.1e}, but with a leading space it has {q:.2f}; did you mean "
                              f"{' ' + prompts.answers[i][ids.index(a)]!r}?", AnswerWarning, stacklevel=3)


class AnswerWarning(UserWarning):
    """An answer token the model almost never predicts where a close variant is likely."""


def make_batches(tok: Tokenized, batch_size: int) -> list[Batch]:
    """Batches of equal-length examples, at most ``batch_size`` each, in order of first appearance."""
    batch_size = positive_int(batch_size, "batch_size")
    groups: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tok.clean_tokens):
        groups[len(t)].append(i)
    batches = []
    for idx_all in groups.values():
        for start in range(0, len(idx_all), batch_size):
            idx = idx_all[start:start + batch_size]
            batches.append(
                Batch(
                    indices=idx,
                    clean_tokens=torch.stack([tok.clean_tokens[i] for i in idx]),
                    patch_tokens=None if tok.patch_tokens is None
                    else torch.stack([tok.patch_tokens[i] for i in idx]),
                    answer_ids=None if tok.answer_ids is None else [tok.answer_ids[i] for i in idx],
                    patch_answer_ids=None if tok.patch_answer_ids is None
                    else [tok.patch_answer_ids[i] for i in idx],
                    answer_alt_ids=None if tok.answer_alt_ids is None else [tok.answer_alt_ids[i] for i in idx],
                )
            )
    return batches
