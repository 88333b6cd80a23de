"""Metrics m(logits) → one value per example, read at the last position of each prompt.

- ``logit_diff``: logit(clean answer) − logit(patch answer) (paired data; the default there).
- ``logit``: the sum of the target logits (the default for unpaired data).
- ``logprob``: log of the total probability of the targets.
- any callable ``fn(logits)`` or ``fn(logits, batch)``: ``logits`` is ``[batch, d_vocab]`` at the last
  position, ``batch`` a :class:`relp_lens.core.data.Batch` (``batch.answer_ids`` etc.); returns ``[batch]``.

Targets absent from the data (unpaired prompts without answers) are the model's top-1 token on the clean
prompt, fixed before the backward pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from relp_lens.core.data import Batch
from relp_lens.core.errors import RelPLensError

MetricFn = Callable[..., torch.Tensor]
METRICS = ("logit_diff", "logit", "logprob")


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
    fn = metric if n_params >= 2 else (lambda logits, batch: metric(logits))
    return getattr(metric, "__name__", "custom"), fn


def evaluate_metric(fn: MetricFn, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``fn`` at the last position; checks shape and finiteness. logits: [batch, pos, d_vocab] → [batch]."""
    values = fn(logits[:, -1, :], batch)
    if not isinstance(values, torch.Tensor):
        raise RelPLensError(f"metric must return a tensor, got {type(values).__name__}")
    if values.ndim == 0:
        values = values.expand(len(batch)) / len(batch)
    if values.shape != (len(batch),):
        raise RelPLensError(f"metric must return shape [batch]={len(batch)}, got {tuple(values.shape)}")
    bad = ~torch.isfinite(values.detach())
    if bad.any():
        which = [batch.indices[i] for i in bad.nonzero()[:, 0].tolist()]
        raise RelPLensError(f"metric returned non-finite values (NaN/inf) for examples {which}")
    return values
