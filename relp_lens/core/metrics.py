"""Metrics m(logits) → one value per example, read at the last position of each prompt.

- ``logit_diff``: logit(clean answer) − logit(patch answer) (paired data; the default there).
- ``logit``: the sum of the target logits (the default for unpaired data).
- ``logprob``: log of the total probability of the targets.
- any callable ``fn(logits)`` or ``fn(logits, batch)``: ``logits`` is ``[batch, d_vocab]`` at the last
  position, ``batch`` a :class:`relp_lens.core.data.Batch` (``batch.answer_ids`` etc.); returns ``[batch]``.

Targets absent from the data (unpaired prompts without answers) are the model's top-1 token on the clean
prompt, fixed before the backward pass.

The contract, checked by :func:`evaluate_metric` every time a metric is read:

1. A metric returns a tensor of shape ``[batch]``, one finite value per example; anything else (a scalar
   such as ``logits[:, t].mean()``, a ``[batch, 1]`` column) is a :class:`RelPLensError` saying what came
   back and what is expected. Attribution reads the metric on the first batch's clean forward before any
   backward pass; where a full pass over the data comes first (a ``mean`` baseline, mean or counterfactual
   ablation), :func:`check_metric` reads it on the first batch before that pass.
2. A row whose metric is identically zero contributes nothing to any score, silently: a
   :class:`ZeroMetricWarning` names such rows — at tokenization when a paired row's clean and patch
   answers are the same tokens (``logit_diff`` ≡ 0, :func:`warn_same_answers`), and after the clean
   forward for any row whose metric is exactly 0.0 (:func:`warn_zero_rows`).
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from relp_lens.core.data import Batch, Prompts, Tokenized
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import METRICS, Metric  # noqa: F401

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

MetricFn = Callable[..., torch.Tensor]


def _gather_sum(values: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
    """Σ over each row's targets: values [batch, d_vocab], ids ragged → [batch]."""
    return torch.stack([values[i, row].sum() for i, row in enumerate(ids)])


def _targets(logits: torch.Tensor, batch: Batch) -> list[list[int]]:
    if batch.answer_ids is None:
        batch.answer_ids = logits.detach().argmax(-1)[:, None].tolist()
    return batch.answer_ids


def logit_diff(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    if batch.patch_answer_ids is None:
        raise RelPLensError("metric 'logit_diff' needs patch answers (paired data with patch_answer)")
    return _gather_sum(logits, _targets(logits, batch)) - _gather_sum(logits, batch.patch_answer_ids)


def logit(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    return _gather_sum(logits, _targets(logits, batch))


def logprob(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    logp = logits.log_softmax(-1)
    ids = _targets(logits, batch)
    return torch.stack([logp[i, row].logsumexp(0) for i, row in enumerate(ids)])


def resolve_metric(metric: str | MetricFn | None, paired_with_answers: bool) -> tuple[str, MetricFn]:
    """(name, fn(logits [batch, d_vocab], batch) → [batch])."""
    if metric is None:
        metric = "logit_diff" if paired_with_answers else "logit"
    if isinstance(metric, str):
        table = {"logit_diff": logit_diff, "logit": logit, "logprob": logprob}
        if metric not in table:
            raise RelPLensError(f"unknown metric {metric!r}; choose from {list(METRICS)} or pass a callable")
        if metric == "logit_diff" and not paired_with_answers:
            raise RelPLensError("metric 'logit_diff' needs paired data with clean and patch answers")
        return metric, table[metric]
    if not callable(metric):
        raise RelPLensError(f"metric must be a name or a callable, got {metric!r}")
    try:
        n_params = len(inspect.signature(metric).parameters)
    except (TypeError, ValueError):
        n_params = 2
    name = getattr(metric, "__name__", "custom")
    if n_params >= 2:
        return name, metric

    def fn(logits, batch):
        return metric(logits)

    fn.__name__ = name  # errors name the user's metric
    return name, fn


def evaluate_metric(fn: MetricFn, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``fn`` at the last position, held to the contract (module docstring, 1).

    Args:
        fn: ``fn(logits [batch, d_vocab], batch) → [batch]`` (as :func:`resolve_metric` returns).
        logits: ``[batch, pos, d_vocab]``.
        batch: the examples ``logits`` belong to.

    Returns:
        ``[batch]``: one finite value per example; a :class:`RelPLensError` for any other shape (a scalar is
        never spread over the batch) or a non-finite value.
    """
    values = fn(logits[:, -1, :], batch)
    if not isinstance(values, torch.Tensor):
        raise RelPLensError(f"metric must return a tensor of shape [batch] (one value per example), got "
                            f"{type(values).__name__}")
    if values.shape != (len(batch),):
        what = "a scalar (shape [])" if values.ndim == 0 else f"shape {list(values.shape)}"
        hint = (" — reduce over the vocabulary only, not over examples (e.g. logits[:, t], not "
                "logits[:, t].mean())" if values.ndim == 0 else "")
        raise RelPLensError(f"metric must return shape [batch] = [{len(batch)}], one value per example; metric "
                            f"{_name(fn)} returned {what} for a batch of {len(batch)} examples{hint}")
    bad = ~torch.isfinite(values.detach())
    if bad.any():
        which = [batch.indices[i] for i in bad.nonzero()[:, 0].tolist()]
        raise RelPLensError(f"metric returned non-finite values (NaN/inf) for examples {which}")
    return values


def _name(fn: MetricFn) -> str:
    return repr(getattr(fn, "__name__", type(fn).__name__))


def check_metric(model: HookedTransformer, fn: MetricFn, batch: Batch) -> None:
    """The metric contract (module docstring, 1) on ``batch``'s clean forward (no grad), before a pass over
    all the data; ``batch`` itself is left as it was (targets still unset where the data has none)."""
    with torch.no_grad():
        logits = model(batch.clean_tokens.to(model.cfg.device))  # [batch, pos, d_vocab]
        evaluate_metric(fn, logits, dataclasses.replace(batch))


class ZeroMetricWarning(UserWarning):
    """Rows whose metric is zero: they add nothing to any score (the same clean and patch answer?)."""


def _rows(prompts: Prompts, indices: list[int], limit: int = 5) -> str:
    named = ", ".join(prompts.label(i) for i in indices[:limit])
    return named + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def warn_same_answers(tok: Tokenized, metric: str) -> list[int]:
    """Warn, naming the rows, when paired rows have the same clean and patch answer tokens and ``metric`` is
    ``logit_diff`` (then identically 0 there). Decided from the tokens alone. Returns those example indices."""
    same = tok.same_answers() if metric == "logit_diff" else []
    if same:
        warnings.warn(f"{_rows(tok.prompts, same)}: clean and patch answers are the same token(s), so "
                      f"logit_diff is 0 there and the row adds nothing to any score; give different answers",
                      ZeroMetricWarning, stacklevel=3)
    return same


def warn_zero_rows(values: torch.Tensor, batch: Batch, prompts: Prompts, known: set[int] = frozenset()) -> None:
    """Warn, naming the rows, where the clean metric ``values`` ``[batch]`` is exactly 0.0 (rows in ``known``,
    already warned about, left out)."""
    zero = [batch.indices[r] for r in (values.detach() == 0).nonzero()[:, 0].tolist()]
    zero = [i for i in zero if i not in known]
    if zero:
        warnings.warn(f"{_rows(prompts, zero)}: the metric is exactly 0 on the clean prompt; if it is identically "
                      f"0 there (e.g. the same target counted with both signs), the row adds nothing to any score",
                      ZeroMetricWarning, stacklevel=3)
