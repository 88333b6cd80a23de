"""TransformerLens-native results: scores and gradients as ``ActivationCache`` objects keyed by hook name, and
attributions built from scores computed with hooks.

TransformerLens users index results by hook name (``cache["blocks.3.mlp.hook_post"]``, ``cache.stack_activation``)
and compare against the attribution-patching recipe built on ``run_with_cache`` and backward hooks. Three
bridges:

1. :func:`to_cache` (also :meth:`Attribution.to_cache <relp_lens.core.attribution.Attribution.to_cache>`): an
   :class:`~relp_lens.core.attribution.Attribution`'s scores as a ``transformer_lens.ActivationCache``, one
   entry per hook of its basis: ``[batch, pos, d]`` per example, or ``[pos, d]`` (``has_batch_dim=False``) for
   the mean over examples.
2. :func:`gradients`: the gradients a score multiplies, ``d metric / d activation`` per hook (RelP's modified
   gradient for ``method="relp"``, the plain one for ``"grad"``), from the same forward and backward pass
   :func:`~relp_lens.core.attribution.attribute` runs; with ``return_acts=True`` also the clean activations and
   the activation differences, so that ``score = grads[name] * deltas[name]`` exactly.
3. :func:`from_cache` (``relp_lens.attribution_from_cache``):
   an :class:`~relp_lens.core.attribution.Attribution` from scores a user computed (a baseline written with
   hooks), so that it goes through selection (:func:`relp_lens.select_top_k`), evaluation and plots.

**The pos axis.** Column ``c`` of every entry's pos axis is node position ``attr.positions[c]``
(:mod:`relp_lens.core.positions`): when every prompt has one token length these are the absolute positions
``0 … n-1``, exactly the pos axis of ``model.run_with_cache`` on those prompts. When lengths differ, the tokens
every prompt shares at its start keep their absolute positions and every later token is counted from the end
(end-aligned: the last column holds every prompt's last token); columns an example does not reach hold 0.
:meth:`Alignment.columns <relp_lens.core.positions.Alignment.columns>` (``attr.alignment.columns(n_tokens)``)
gives the column of each token of an ``n_tokens``-token prompt.

**The width axis** is the hook's activation flattened after pos (``d_mlp`` for ``mlp_post``, ``d_model`` for
``mlp_out``/``attn_out``/``resid_*``; ``hook_z`` ``[batch, pos, head, d_head]`` becomes ``head * d_head``:
``.unflatten(-1, (n_heads, d_head))`` restores it).

The caches hold only the hooks of the basis, on the CPU, in float32: ``stack_activation`` works when the basis
has one hook per layer (``cache.stack_activation("post")`` for ``mlp_post``); methods that need other hooks
(``accumulated_resid``, ``decompose_resid``) raise TransformerLens' ``KeyError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends, validate
from relp_lens.core.attribution import (BASELINES, DEFAULT_BASELINE, Attribution, _check_memory,
                                        as_prompts, batch_gradients, prepare_run)
from relp_lens.core.data import Prompts, make_batches, str_tokens_of, tokenize
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import (GRADIENT_METHODS, PADDING_SIDES, Baseline, GradientMethod, Metric, PaddingSide,
                                    Reduce)
from relp_lens.core.metrics import MetricFn, evaluate_metric, resolve_metric, warn_same_answers, warn_zero_rows
from relp_lens.core.nodes import BASES, basis_name, resolve_hooks
from relp_lens.core.relp_mode import RelPConfig

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import ActivationCache, HookedTransformer



def _activation_cache(entries: dict[str, torch.Tensor], model: Any, has_batch_dim: bool) -> ActivationCache:
    from transformer_lens import ActivationCache  # at call time, as everywhere in relp_lens

    return ActivationCache(entries, model, has_batch_dim=has_batch_dim)


def _unique(hooks: Sequence[str], what: str) -> None:
    seen = set()
    for h in hooks:
        if h in seen:
            raise RelPLensError(f"{what} names hook {h!r} twice; a cache holds one entry per hook name")
        seen.add(h)


# --- 1. scores → ActivationCache ---------------------------------------------------------------------------
def to_cache(attr: Attribution, model: HookedTransformer, *, reduce: Reduce | None = None) -> ActivationCache:
    """An attribution's scores as a ``transformer_lens.ActivationCache`` keyed by hook name.

    Args:
        attr: the attribution.
        model: the ``HookedTransformer`` or ``TransformerBridge`` it was computed on (the cache's ``model``:
            ``stack_activation`` reads ``model.cfg.n_layers``); every hook of ``attr.hook_names`` must exist on
            it.
        reduce: ``"none"``: per-example scores (needs an attribution run with ``reduce="none"``);
            ``"mean"``: the mean over the examples that reach each column (:meth:`Attribution.mean`; with one
            prompt length simply the mean over examples); None (default): ``"none"`` unless the attribution
            keeps only means (``attribute(..., reduce="mean")``).

    Returns:
        ``ActivationCache`` with one entry per hook of ``attr.hook_names`` (copies; float32 on the CPU):

        - ``reduce="none"``: ``cache[name]`` is ``[batch, pos, d]`` = ``attr.scores[:, layer]``
        (``has_batch_dim=True``); columns an example does not reach hold 0 (NaN for ``exact``, which
        also holds NaN for the nodes it did not patch).
        - ``reduce="mean"``: ``cache[name]`` is ``[pos, d]`` = ``attr.mean()[layer]`` (``has_batch_dim=False``).

        Column ``c`` of pos is node position ``attr.positions[c]`` (module docstring); ``d`` is
        ``attr.width``. With one hook per layer, ``cache.stack_activation("post")`` (``mlp_post``) gives
        ``[layer, batch, pos, d]`` (``[layer, pos, d]`` for the mean).
    """
    return attr.to_cache(model, reduce=reduce)  # the method holds the code: attribution is below this module


# --- 2. gradients → ActivationCache ------------------------------------------------------------------------
class GradientCaches(NamedTuple):
    """What :func:`gradients` returns with ``return_acts=True``: three caches with the same keys and shapes
    (``[batch, pos, d]`` per hook), ``grads * deltas`` being :func:`~relp_lens.core.attribution.attribute`'s
    scores."""

    grads: ActivationCache  # d metric / d activation on the clean run (RelP's modified gradient for "relp")
    acts: ActivationCache  # clean-run activations
    deltas: ActivationCache  # paired: a_patch − a_clean; unpaired: a − a_ref


def gradients(
    model: HookedTransformer,
    prompts: Prompts | Sequence[dict] | str | Sequence[str],
    answers: str | Sequence | None = None,
    *,
    patch: str | Sequence[str] | None = None,
    patch_answers: str | Sequence | None = None,
    basis: str | Sequence[str] = "mlp_post",
    method: GradientMethod = "relp",
    metric: Metric | MetricFn | None = None,
    baseline: Baseline | None = None,
    rules: RelPConfig | None = None,
    batch_size: int = 16,
    progress: bool = True,
    prepend_bos: bool | None = None,
    return_acts: bool = False,
) -> ActivationCache | GradientCaches:
    """The gradient of the metric with respect to every hook of ``basis``, as a ``transformer_lens.ActivationCache``.

    The same clean forward and backward pass that :func:`~relp_lens.core.attribution.attribute` runs for
    ``method="relp"`` and ``"grad"`` (:func:`~relp_lens.core.attribution.batch_gradients`; arguments as there):
    ``method="relp"`` gives RelP's modified gradient (the backward pass in :func:`relp_lens.relp` mode),
    ``"grad"`` the plain gradient. The gradient is of the metric summed over the batch, so entry ``i`` is
    ``d m_i / d a_i`` for example ``i`` (examples do not interact).

    The score attribution reports is the gradient times the activation difference, elementwise::

        g = relp_lens.gradients(model, rows, method="grad", return_acts=True)
        attr = relp_lens.attribute(model, rows, method="grad")
        attr.to_cache(model)[name] == g.grads[name] * g.deltas[name]   # exactly

    where the difference is ``a_patch − a_clean`` for paired data (the first-order change of the metric when
    the node takes its patch value) and ``a_clean − a_ref`` for unpaired data (``a_ref`` = 0 for
    ``baseline="zero"``, the per-position mean activation for ``"mean"``).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        prompts: as in :func:`~relp_lens.core.attribution.attribute` (the data, in any form it accepts).
        answers: as in :func:`~relp_lens.core.attribution.attribute` (the data, in any form it accepts).
        patch: as in :func:`~relp_lens.core.attribution.attribute` (the data, in any form it accepts).
        patch_answers: as in :func:`~relp_lens.core.attribution.attribute` (the data, in any form it accepts).
        basis: node basis, hook name, ``{L}`` template or list of hook names; hooks may differ in width.
        method: ``"relp"`` (default) or ``"grad"``.
        metric: as in :func:`~relp_lens.core.attribution.attribute`.
        baseline: as in :func:`~relp_lens.core.attribution.attribute`.
        rules: as in :func:`~relp_lens.core.attribution.attribute`.
        batch_size: as in :func:`~relp_lens.core.attribution.attribute`.
        progress: as in :func:`~relp_lens.core.attribution.attribute`.
        prepend_bos: as in :func:`~relp_lens.core.attribution.attribute`.
        return_acts: also return the clean activations and the activation differences.

    Returns:
        ``ActivationCache`` (``has_batch_dim=True``, float32 on the CPU) with ``cache[name]``
        ``[batch, pos, d]`` for each hook of the basis; with ``return_acts=True`` a :class:`GradientCaches`
        ``(grads, acts, deltas)`` of three such caches. The pos axis is the attribution's (module docstring:
        absolute positions when every prompt has one length, else end-aligned columns); columns an example
        does not reach hold 0.
    """
    backends.require_model(model)
    batch_size = validate.positive_int(batch_size, "batch_size")
    if method not in GRADIENT_METHODS:
        raise RelPLensError(f"gradients has method 'relp' or 'grad', got {method!r} (integrated gradients and "
                            f"exact patching have no single gradient)")
    if not isinstance(return_acts, bool):
        raise RelPLensError(f"return_acts must be True or False, got {return_acts!r}")
    data = as_prompts(prompts, answers, patch, patch_answers)
    run, batches, tok, _ = prepare_run(model, data, basis, metric, baseline, rules, batch_size, progress,
                                       prepend_bos)
    hooks, align = run.hooks, run.alignment
    _unique(hooks, f"basis {basis_name(basis)!r}")
    _check_memory(model, tok, hooks, batch_size, "none")
    kinds = ("grads", "acts", "deltas") if return_acts else ("grads",)
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in kinds}
    n = len(data)
    for batch in tqdm(batches, desc=f"{method} gradients", disable=not progress, leave=False):
        acts, grads, deltas, m, _ = batch_gradients(run, batch, use_relp=method == "relp")
        warn_zero_rows(m, batch, data, run.known_zero)
        rows = torch.tensor(batch.indices)[:, None]  # [b, 1]
        cols = align.columns(batch.clean_tokens.shape[1])[None, :]  # [1, pos]
        got = dict(grads=grads, acts=acts, deltas=deltas)
        for kind in kinds:
            for h, v in zip(hooks, got[kind]):
                v = v.float().cpu()  # float32, as attribute multiplies them, also for half models
                if h not in out[kind]:
                    out[kind][h] = torch.zeros(n, align.n_columns, v.shape[-1])
                out[kind][h][rows, cols] = v
    caches = {k: _activation_cache(out[k], model, has_batch_dim=True) for k in kinds}
    return GradientCaches(**caches) if return_acts else caches["grads"]


# --- 3. ActivationCache / dict of scores → Attribution -------------------------------------------------------
def _entries(cache) -> tuple[dict[str, Any], bool]:
    """``({hook name: value}, has_batch_dim)`` of an ActivationCache or a mapping."""
    if hasattr(cache, "cache_dict") and hasattr(cache, "has_batch_dim"):  # an ActivationCache
        return dict(cache.cache_dict), bool(cache.has_batch_dim)
    if isinstance(cache, Mapping):
        return dict(cache), True
    raise RelPLensError(f"scores must be a transformer_lens.ActivationCache or a dict of hook name → tensor "
                        f"[batch, pos, d]; got {type(cache).__name__}")


def _check_values(entries: dict[str, Any], has_batch_dim: bool) -> dict[str, torch.Tensor]:
    """Each value a finite real tensor with a batch and a pos axis (or a pos axis only, ``has_batch_dim=False``);
    flattened after pos and given a batch axis. → ``{name: [batch, pos, d]}`` (float32)."""
    if not entries:
        raise RelPLensError("the cache of scores is empty; it needs one entry per hook, [batch, pos, d] each")
    out = {}
    lead = "[batch, pos, d]" if has_batch_dim else "[pos, d] (an ActivationCache without batch dimension)"
    for name, v in entries.items():
        if not isinstance(name, str) or not name:
            raise RelPLensError(f"cache keys must be hook names (strings), got {name!r}")
        if not isinstance(v, torch.Tensor):
            raise RelPLensError(f"scores of hook {name!r} must be a torch.Tensor {lead}, got {type(v).__name__}")
        if v.is_complex() or v.dtype == torch.bool:
            raise RelPLensError(f"scores of hook {name!r} must be real numbers, got dtype {v.dtype}")
        if v.ndim < (3 if has_batch_dim else 2):
            raise RelPLensError(f"scores of hook {name!r} have shape {list(v.shape)}; expected {lead}")
        v = v.detach().to("cpu", torch.float32)
        if not has_batch_dim:
            v = v.unsqueeze(0)
        v = v.reshape(v.shape[0], v.shape[1], -1)
        bad = ~torch.isfinite(v)
        if bad.any():
            where = [int(i) for i in bad.nonzero()[0].tolist()]
            where = where[1:] if not has_batch_dim else where
            raise RelPLensError(f"scores of hook {name!r} are not finite (NaN or inf) at {where} "
                                f"({int(bad.sum())} entries); every score must be a number")
        out[name] = v
    shapes = {n: tuple(v.shape) for n, v in out.items()}
    first = next(iter(out))
    for name, v in out.items():
        if v.shape[:2] != out[first].shape[:2]:
            raise RelPLensError(f"hooks {first!r} and {name!r} have different batch or pos axes: "
                                f"{list(shapes[first][:2])} vs {list(shapes[name][:2])}")
        if v.shape[2] != out[first].shape[2]:
            raise RelPLensError(f"hooks {first!r} and {name!r} have different widths ({shapes[first][2]} vs "
                                f"{shapes[name][2]}); an attribution holds one width: build one per basis, or "
                                f"pass basis= to choose the hooks")
    return out


def _hook_widths(model: HookedTransformer, tokens: torch.Tensor, hooks: list[str]) -> dict[str, tuple[int, ...]]:
    """The shape of each hook's activation on a no-grad forward of ``tokens`` ``[1, pos]``."""
    return backends.capture(model, tokens, hooks, keep=lambda x: tuple(x.shape))[1]


def _infer_basis(model: HookedTransformer, hooks: list[str]) -> str:
    for name, template in BASES.items():
        if hooks == [template.format(L=layer) for layer in range(model.cfg.n_layers)]:
            return name
    return basis_name(hooks)


def from_cache(
    cache: ActivationCache | Mapping[str, torch.Tensor],
    model: HookedTransformer,
    prompts: Prompts | Sequence[dict] | str | Sequence[str],
    answers: str | Sequence | None = None,
    *,
    patch: str | Sequence[str] | None = None,
    patch_answers: str | Sequence | None = None,
    basis: str | Sequence[str] | None = None,
    method: str = "custom",
    metric: Metric | MetricFn | None = None,
    baseline: Baseline | None = None,
    prepend_bos: bool | None = None,
    padding_side: PaddingSide | None = None,
    batch_size: int = 16,
) -> Attribution:
    """An :class:`~relp_lens.core.attribution.Attribution` from node scores computed elsewhere (e.g. the classic
    attribution-patching recipe written with ``run_with_cache`` and backward hooks), keyed by hook name.

    Everything is checked before anything runs on the model: the cache's type, keys and values (a real, finite
    tensor per hook, one width for all), the hook names (on ``model``, with suggestions), the batch axis (one
    row per prompt), the pos axis (the prompts' longest token length) and the width (each hook's on ``model``,
    from one forward pass of the shortest prompt). Then the metric is read on every prompt (one no-grad
    forward per batch, and one of the patch prompts for paired data) so that thresholds and summaries work.

    Args:
        cache: ``ActivationCache`` or ``dict`` of hook name → scores ``[batch, pos, d]`` (``[batch, pos, ...]``
            is flattened after pos, as attribution does); an ActivationCache with ``has_batch_dim=False`` holds
            ``[pos, d]``: the scores of the one prompt, or, for several prompts, their per-column mean (as
            :func:`to_cache` writes for ``reduce="mean"``; the attribution then keeps only means).
        model: the ``HookedTransformer`` or ``TransformerBridge`` the scores belong to.
        prompts: as in :func:`~relp_lens.core.attribution.attribute`; kept for evaluation.
        answers: as in :func:`~relp_lens.core.attribution.attribute`; kept for evaluation.
        patch: as in :func:`~relp_lens.core.attribution.attribute`; kept for evaluation.
        patch_answers: as in :func:`~relp_lens.core.attribution.attribute`; kept for evaluation.
        basis: the hooks to take, in this order (a basis name, ``{L}`` template or list; other entries of the
            cache are ignored); None (default): every entry, in the cache's order. The attribution's ``basis``
            is the basis name when the hooks are one of :data:`~relp_lens.core.nodes.BASES` over all layers.
        method: a label for the scores (``"custom"``; recorded in circuits and plots).
        metric: what the scores are of (``logit_diff`` for paired data with answers, else ``logit``; a name or a
            callable as for ``attribute``); read on the clean prompts for ``metric_clean``.
        baseline: unpaired data: ``"zero"`` (default) or ``"mean"``, what the scores compare against (it
            picks the ablation selection judges by); paired data: the patch prompts.
        prepend_bos: tokenize as ``attribute`` does (None: the model's default); must match how the scores were
            computed, or the pos axis will not match.
        padding_side: the layout of the pos axis. None (default): relp_lens' columns (module docstring:
            absolute positions when all prompts have one length, else end-aligned), as :func:`to_cache` writes.
            ``"right"`` / ``"left"``: a batched ``run_with_cache`` over prompts of different lengths, padded on
            that side (TransformerLens pads on the right by default); pad entries are ignored. All three agree
            when every prompt has one length.
        batch_size: prompts per forward pass when the metric is read.

    Returns:
        The attribution: ``scores`` ``[batch, layer, pos, node]`` (layer ``l`` is the ``l``-th hook), or running
        sums for a mean; ready for :meth:`~relp_lens.core.attribution.Attribution.top_k`,
        :func:`relp_lens.select_top_k`, evaluation and plots.
    """
    # -- the cache alone ------------------------------------------------------------------------------------
    backends.require_model(model)
    batch_size = validate.positive_int(batch_size, "batch_size")
    if not isinstance(method, str) or not method:
        raise RelPLensError(f"method must be a non-empty label, got {method!r}")
    if padding_side is not None and padding_side not in PADDING_SIDES:
        raise RelPLensError(f"padding_side must be None (relp_lens' columns), 'right' or 'left'; got {padding_side!r}")
    entries, has_batch_dim = _entries(cache)
    if basis is not None:
        hooks = resolve_hooks(model, basis)
        _unique(hooks, f"basis {basis_name(basis)!r}")
        missing = [h for h in hooks if h not in entries]
        if missing:
            raise RelPLensError(f"the cache has no entry for hook {missing[0]!r}" +
                                (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") +
                                f" of basis {basis_name(basis)!r}; it has {sorted(map(str, entries))[:8]}")
        entries = {h: entries[h] for h in hooks}
    values = _check_values(entries, has_batch_dim)
    hooks = list(values)
    if basis is None:
        resolve_hooks(model, hooks)  # names exist on the model, with suggestions
    # -- against the prompts ------------------------------------------------------------------------------
    data = as_prompts(prompts, answers, patch, patch_answers)
    n_rows, n_pos, width = next(iter(values.values())).shape
    means = not has_batch_dim and len(data) > 1
    if not means and n_rows != len(data):
        raise RelPLensError(f"the scores have {n_rows} examples on their batch axis (hook {hooks[0]!r}) but there "
                            f"are {len(data)} prompts; one row per prompt, in order")
    if means and padding_side is not None:
        raise RelPLensError("per-column means ([pos, d], has_batch_dim=False) are in relp_lens' columns; "
                            "padding_side applies to per-example scores")
    metric_name, metric_fn = resolve_metric(metric, data.paired and data.patch_answers is not None)
    if baseline is not None and data.paired and baseline != "patch":
        raise RelPLensError("baseline applies to unpaired data; paired data uses the patch activations")
    baseline = "patch" if data.paired else (baseline or DEFAULT_BASELINE)
    if baseline not in ("patch", *BASELINES):
        raise RelPLensError(f"unknown baseline {baseline!r}; choose from {list(BASELINES)}")
    tok = tokenize(model, data, prepend_bos)
    align, lengths = tok.alignment, tok.lengths
    longest = max(lengths)
    if n_pos != longest:
        hint = (f"; tokenized with prepend_bos={tok.prepend_bos} — were the scores computed with "
                f"prepend_bos={not tok.prepend_bos}?" if abs(n_pos - longest) == 1 else "")
        raise RelPLensError(f"the scores have {n_pos} positions (hook {hooks[0]!r}) but the longest prompt has "
                            f"{longest} tokens{hint}")
    # -- against the model: each hook's width, from one forward pass of the shortest prompt ------------------
    short = min(range(len(data)), key=lambda i: lengths[i])
    shapes = _hook_widths(model, tok.clean_tokens[short][None], hooks)
    for h in hooks:
        if h not in shapes:
            raise RelPLensError(f"hook {h!r} did not run on a forward pass of this model (a hook point that must "
                                f"be switched on first, e.g. model.set_use_attn_result(True)?)")
        shape = shapes[h]
        if len(shape) < 2 or shape[1] != lengths[short]:
            raise RelPLensError(f"hook {h!r} has no [batch, pos, ...] activation on this model (shape "
                                f"{list(shape)}); node scores are per position")
        have = math.prod(shape[2:])
        if have != width:
            raise RelPLensError(f"the scores of hook {h!r} have width {width} but its activation on this model has "
                                f"{have} values per position (shape {list(shape[2:])})")
    # -- into the attribution's columns ---------------------------------------------------------------------
    stacked = torch.stack([values[h] for h in hooks], 1)  # [batch, layer, pos, d]
    valid = torch.zeros(len(data), align.n_columns, dtype=torch.bool)
    for i, n in enumerate(lengths):
        valid[i, align.columns(n)] = True
    counts = valid.sum(0)
    scores = score_sum = None
    if means:
        score_sum = stacked[0].double() * counts[None, :, None]  # [layer, pos, d]
    elif padding_side is None:
        scores = stacked.masked_fill(~valid[:, None, :, None], 0.0)
    else:
        scores = torch.zeros_like(stacked)
        for i, n in enumerate(lengths):
            src = torch.arange(n) if padding_side == "right" else torch.arange(longest - n, longest)
            scores[i, :, align.columns(n)] = stacked[i, :, src]
    # -- the metric on every prompt -------------------------------------------------------------------------
    same = warn_same_answers(tok, metric_name)
    metric_clean = torch.zeros(len(data))
    metric_ref = torch.full((len(data),), float("nan")) if data.paired else None
    with torch.no_grad():
        for batch in make_batches(tok, batch_size):
            idx = torch.tensor(batch.indices)
            targets_known = batch.answer_ids is not None  # as attribute: no patch metric on guessed targets
            m = evaluate_metric(metric_fn, model(batch.clean_tokens.to(model.cfg.device)), batch)
            warn_zero_rows(m, batch, data, set(same))
            metric_clean[idx] = m.float().cpu()
            if metric_ref is not None and targets_known:
                try:  # informative only, as in attribute
                    logits = model(batch.patch_tokens.to(model.cfg.device))
                    metric_ref[idx] = evaluate_metric(metric_fn, logits, batch).float().cpu()
                except RelPLensError:
                    pass
    basis_label = basis_name(basis) if basis is not None else _infer_basis(model, hooks)
    return Attribution(scores=scores, str_tokens=[str_tokens_of(model, t) for t in tok.clean_tokens],
                       hook_names=hooks, basis=basis_label, method=method, metric=metric_name, paired=data.paired,
                       metric_clean=metric_clean, metric_ref=metric_ref, prompts=data, alignment=align,
                       baseline=baseline, score_sum=score_sum, counts=counts, prepend_bos=tok.prepend_bos)
