"""Token positions that mean the same thing in every prompt of a data set.

The rule (one for the whole package):

1. A node position is an integer with Python's indexing meaning: ``pos >= 0`` counts from the start of a
   prompt (0 is its first token: BOS where the prompts start with one, else the first token of the text —
   Qwen2/Qwen3 prepend none, see :func:`relp_lens.core.data.resolve_prepend_bos`), ``pos < 0`` from its end (-1 is the last token, where every metric is
   read). ``pos=None`` means every position. A node applied to a prompt that does not have its position
   is an error naming the node and the prompt — never silently skipped. (In mixed-length data a negative
   position that would land on a shared-prefix token is absent from that prompt, see 3.)
2. When every prompt of a data set has the same token length, attribution reports absolute positions
   (``0 … n-1``): token t is the same slot of the template everywhere.
3. When lengths differ, the tokens every prompt shares at its start (BOS where there is one and a common
   template start, at least one token shorter than the shortest prompt; possibly none) keep absolute positions ``0 … n_shared-1``; every
   later token is counted from the end (``-1`` last), so "position -2" is the same template slot in every
   prompt of a templated set whose variable part sits earlier.
4. An :class:`Alignment` maps each prompt's tokens to the columns of a score tensor
   ``[..., n_columns, ...]``; ``labels[c]`` is the node position of column c, and :meth:`Alignment.columns`
   gives the column of each token of a prompt of length L.

Shared-prefix positions have identical activations in every prompt (the model is causal), so mean
ablation cannot move them and a mean baseline scores them 0: :func:`relp_lens.circuits.selection.select_top_k`
leaves them out by default when the circuit is judged by mean ablation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from relp_lens.core.errors import RelPLensError
from relp_lens.core.validate import is_int as _is_integer


@dataclass(frozen=True)
class Alignment:
    """Columns of a score tensor for a data set whose prompts have token lengths ``lengths``."""

    n_shared: int  # leading tokens identical in every prompt (absolute positions)
    n_columns: int
    end_aligned: bool  # False: all prompts have one length and every position is absolute

    @classmethod
    def of(cls, tokens: Sequence[torch.Tensor]) -> "Alignment":
        """The alignment of prompts given as token tensors (each ``[pos]``)."""
        if not tokens:
            raise RelPLensError("no prompts to align")
        lengths = [len(t) for t in tokens]
        shared = _shared_prefix(tokens)
        if len(set(lengths)) == 1:
            return cls(n_shared=shared, n_columns=lengths[0], end_aligned=False)
        shared = min(shared, min(lengths) - 1)  # every prompt keeps at least its last token in the tail
        return cls(n_shared=shared, n_columns=max(lengths), end_aligned=True)

    @property
    def labels(self) -> list[int]:
        """The node position of each column."""
        if not self.end_aligned:
            return list(range(self.n_columns))
        tail = self.n_columns - self.n_shared
        return list(range(self.n_shared)) + list(range(-tail, 0))

    def columns(self, length: int) -> torch.Tensor:
        """``[length]`` column index of each token of a prompt of ``length`` tokens."""
        t = torch.arange(length)
        if not self.end_aligned:
            if length != self.n_columns:
                raise RelPLensError(f"a {length}-token prompt in data aligned for {self.n_columns} tokens")
            return t
        return torch.where(t < self.n_shared, t, self.n_columns - length + t)

    @property
    def tail_start(self) -> int:
        """``n_shared`` for :func:`resolve`: 0 unless positions are counted from the end."""
        return self.n_shared if self.end_aligned else 0

    def column(self, pos: int) -> int:
        """The column holding node position ``pos``; an error when no column does."""
        labels = self.labels
        if pos not in labels:
            raise RelPLensError(f"position {pos} is not one of this data's positions "
                                f"({_describe(labels)})")
        return labels.index(pos)


def resolve(pos: int, length: int, n_shared: int = 0) -> int | None:
    """The absolute index of node position ``pos`` in a prompt of ``length`` tokens, or None if it has none.

    ``n_shared``: in end-aligned data, the shared-prefix tokens are counted from the start only, so a
    negative position that would land on one of them is absent from that prompt (as in attribution).
    """
    if pos >= 0:
        return pos if pos < length else None
    t = length + pos
    return t if t >= n_shared else None


def is_int(x) -> bool:
    """True for an integer index (``bool`` excluded: ``True`` is no position or neuron number): a Python ``int``,
    :func:`relp_lens.core.validate.is_int` without numpy integers."""
    return _is_integer(x, numpy=False)


def check_position(pos, what: str) -> None:
    """A clear error unless ``pos`` is an int or None."""
    if pos is not None and not is_int(pos):
        raise RelPLensError(f"{what}: position must be an integer (negative counts from the end) or None, "
                            f"got {pos!r}")


def require(pos: int, length: int, node: str, prompt: str, n_shared: int = 0) -> int:
    """:func:`resolve`, or an error naming the node and the prompt that lacks its position."""
    t = resolve(pos, length, n_shared)
    if t is None:
        why = (f" (its token there is one of the {n_shared} every prompt starts with, counted from the start)"
               if pos < 0 and length + pos >= 0 else "")
        raise RelPLensError(f"node {node} is at position {pos}, which the {length}-token prompt {prompt!r} "
                            f"does not have{why}; positions >= 0 count from the start, < 0 from the end")
    return t


def column_tokens(alignment: Alignment, str_tokens: Sequence[Sequence[str]]) -> list[Counter]:
    """Per column, how often each token string occurs there over the prompts."""
    out = [Counter() for _ in range(alignment.n_columns)]
    for toks in str_tokens:
        for t, c in enumerate(alignment.columns(len(toks)).tolist()):
            out[c][toks[t]] += 1
    return out


def token_label(counts: Counter, n_prompts: int | None = None) -> str:
    """What a column holds: ``' of'`` when one token fills it in every prompt; ``' of' 60%`` when one token
    holds at least half of the prompts; else ``16 tokens, e.g. ' Dallas'`` (a slot that varies); with
    ``(5/16 prompts)`` when only some prompts reach the position."""
    if not counts:
        return "?"
    tok, n = counts.most_common(1)[0]
    total = sum(counts.values())
    n_prompts = n_prompts or total
    if n == total == n_prompts:
        return repr(tok)
    reach = f" ({total}/{n_prompts} prompts)" if total < n_prompts else ""
    if n / n_prompts >= 0.5:
        return f"{tok!r} {n / n_prompts:.0%}{reach}"
    return f"{len(counts)} tokens, e.g. {tok!r}{reach}"


def _shared_prefix(tokens: Sequence[torch.Tensor]) -> int:
    first = tokens[0]
    n = min(len(t) for t in tokens)
    for t in tokens[1:]:
        same = (t[:n] == first[:n]).tolist()
        n = same.index(False) if False in same else n
    return n


def _describe(labels: list[int]) -> str:
    if len(labels) <= 8:
        return ", ".join(map(str, labels))
    return f"{labels[0]}, {labels[1]}, …, {labels[-1]}"
