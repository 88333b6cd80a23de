"""Node attribution: how much each node (default: each MLP neuron) drives a metric m.

Score conventions (one per data kind, as in the field):

- paired (clean/patch): ``score = ∇̃m(clean) · (a_patch − a_clean)`` — the first-order estimate of how m
  changes when the node takes its patch value (negative for nodes that carry the clean behaviour).
- unpaired: ``score = ∇̃m · (a − a_ref)`` with ``a_ref`` zero (``baseline="zero"``: ``a · ∇̃m``) or the
  node's mean activation per position over the data (``baseline="mean"``) — the node's contribution to m.

Methods:

1. ``relp``: one clean forward (with the reference forward for paired data or ``mean``) and one backward in
   RelP mode (:func:`relp_lens.relp`); ∇̃ is the RelP modified gradient.
2. ``grad``: the same with the plain gradient (attribution patching).
3. ``ig``: integrated gradients along clean → reference with ``ig_steps`` points (α = 0, 1/s, …, (s−1)/s),
   interpolating one layer's nodes at a time with downstream layers recomputed (Marks et al. 2025);
   ``n_layers × ig_steps`` forward+backward passes.
4. ``exact``: ground truth by activation patching — each node in ``nodes`` alone is set to its reference
   value and m is measured again (same sign convention as above). Other entries are NaN.

Prompts are tokenized as the model does (BOS prepended when ``model.cfg.default_prepend_bos`` says so) unless
``prepend_bos=`` overrides it; :attr:`Attribution.prepend_bos` records the choice, and circuits built from the
attribution carry it so that their evaluation tokenizes the same way.

The metric is held to one value per example (:mod:`relp_lens.core.metrics`): a wrong shape is an error on the
first batch's clean forward, before any backward pass, and rows where it is identically 0 are named in a
:class:`~relp_lens.core.metrics.ZeroMetricWarning`.

Activations are captured through TransformerLens hooks added in a ``model.hooks()`` context, so the model
keeps no hook after a call, whether it succeeds or raises.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends
from relp_lens.core import distributed as dp
from relp_lens.core import splice, validate
from relp_lens.core.data import Batch, Prompts, make_batches, str_tokens_of, tokenize, warn_unlikely_answers
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import BASELINES, METHODS, REDUCTIONS, Baseline, Method, Metric, Reduce  # noqa: F401
from relp_lens.core.metrics import (MetricFn, check_metric, evaluate_metric, resolve_metric, warn_same_answers,
                                    warn_zero_rows)
from relp_lens.core.nodes import basis_name, layer_numbers, resid_pre, resolve_hooks, unit_label
from relp_lens.core.positions import Alignment, check_position, is_int, column_tokens, require, resolve, token_label
from relp_lens.core.relp_mode import RelPConfig, relp

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import ActivationCache, HookedTransformer

Node = tuple[int, int | None, int]  # (layer, pos or None for all positions, index)
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class Attribution:
    """Node scores with everything needed to read them.

    Positions follow :mod:`relp_lens.core.positions`: column ``c`` of the position axis is node position
    ``positions[c]`` (absolute when every prompt has one length; else the shared prefix from the start and
    the rest counted from the end, ``-1`` = last token).

    ``scores``: ``[batch, layer, pos, node]`` per example (``reduce="none"``); entries an example does not
    reach hold 0 (NaN for ``exact``, which also holds NaN for nodes it did not patch). With
    ``reduce="mean"`` only running float64 sums are kept: ``score_sum`` ``[layer, pos, node]`` and
    ``counts`` ``[pos]`` (examples that reach each column), and ``scores`` is None.

    ``prepend_bos``: whether every prompt started with the BOS token (the model's default unless
    ``attribute(prepend_bos=...)`` chose); :meth:`activations` tokenizes the same way.
    """

    scores: torch.Tensor | None  # [batch, layer, pos, node], or None when reduced
    str_tokens: list[list[str]]
    hook_names: list[str]
    basis: str
    method: str
    metric: str
    paired: bool
    metric_clean: torch.Tensor  # [batch]
    metric_ref: torch.Tensor | None = None  # [batch]: metric on the patch prompts (paired data)
    prompts: Prompts | None = field(default=None, repr=False)
    alignment: Alignment | None = None
    baseline: str = "patch"  # "patch" (paired), "zero" or "mean"
    score_sum: torch.Tensor | None = field(default=None, repr=False)  # [layer, pos, node] float64
    counts: torch.Tensor | None = None  # [pos] examples reaching each column
    prepend_bos: bool = True  # prompts started with BOS

    def __post_init__(self) -> None:
        if self.alignment is None:  # built by hand: one length, absolute positions
            n = self.scores.shape[2]
            self.alignment = Alignment(n_shared=0, n_columns=n, end_aligned=False)
        if self.counts is None:
            self.counts = self.valid().sum(0)

    # -- shape ---------------------------------------------------------------------------------------
    @property
    def reduced(self) -> bool:
        return self.scores is None

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.str_tokens]

    @property
    def n_examples(self) -> int:
        return len(self.metric_clean)

    @property
    def n_layers(self) -> int:
        return len(self.hook_names)

    @property
    def n_positions(self) -> int:
        return self.alignment.n_columns

    @property
    def width(self) -> int:
        return (self.score_sum if self.reduced else self.scores).shape[-1]

    @property
    def positions(self) -> list[int]:
        """Node position of each column of the position axis."""
        return self.alignment.labels

    @property
    def fixed_positions(self) -> list[int]:
        """Positions whose tokens — and so activations — are the same in every prompt (BOS where prompts start
        with it, a shared template start): mean ablation cannot move them."""
        return self.positions[: self.alignment.n_shared]

    def _per_example(self, what: str) -> torch.Tensor:
        if self.reduced:
            raise RelPLensError(f"{what} needs per-example scores; this attribution was run with reduce='mean' "
                                f"(run attribute(..., reduce='none') for per-example scores)")
        return self.scores

    def valid(self) -> torch.Tensor:
        """``[batch, pos]`` mask: True where the example has a token in that column."""
        out = torch.zeros(len(self.str_tokens), self.alignment.n_columns, dtype=torch.bool)
        for i, n in enumerate(self.lengths):
            out[i, self.alignment.columns(n)] = True
        return out

    # -- reading scores ------------------------------------------------------------------------------
    def mean(self) -> torch.Tensor:
        """Signed mean over the examples that reach each column (NaN where none does). → ``[layer, pos, node]``."""
        if self.reduced:
            out = self.score_sum / self.counts[None, :, None].clamp(min=1)
            return out.float().masked_fill(self.counts[None, :, None] == 0, float("nan"))
        s = self.scores.masked_fill(~self.valid()[:, None, :, None], float("nan"))
        return s.nanmean(0)

    def mean_over_positions(self) -> torch.Tensor:
        """Per node summed over positions, averaged over examples. → ``[layer, node]``."""
        if self.reduced:
            return (self.score_sum.sum(1) / self.n_examples).float()
        return self.scores.nansum(2).nanmean(0)

    def sum_pos(self) -> torch.Tensor:
        """Sum over positions (NaN-aware). → ``[batch, layer, node]``."""
        return self._per_example("sum_pos").nansum(2)

    def top_k(self, k: int = 20, *, aggregate_pos: bool = False, example: int | None = None,
              signed: bool = False, include_fixed: bool = True,
              everywhere: bool = False) -> list[tuple[Node, float]]:
        """The ``k`` nodes with the largest |score| (or largest score with ``signed=True``).

        Scores are the mean over examples (or one ``example``), per position, or summed over
        positions with ``aggregate_pos=True`` (then pos is ``None``). ``include_fixed=False`` leaves out
        :attr:`fixed_positions`; ``everywhere=True`` keeps only positions every example has.
        Returns ``[((layer, pos, index), score)]``.
        """
        if example is not None:
            s = self._per_example("top_k(example=...)")[example]
            s = s.nansum(1, keepdim=True) if aggregate_pos else s
        elif aggregate_pos:
            s = self.mean_over_positions()[:, None, :]
        else:
            s = self.mean()
        s = s.nan_to_num(0.0)  # [layer, pos, node]
        key = s if signed else s.abs()
        if not aggregate_pos and example is None:
            drop = torch.zeros(self.n_positions, dtype=torch.bool)
            if not include_fixed:
                drop[: self.alignment.n_shared] = True
            if everywhere:
                drop |= self.counts < self.n_examples
            key = key.masked_fill(drop[None, :, None], -float("inf"))
        k = min(k, int(torch.isfinite(key).sum()))
        flat = key.flatten().topk(k).indices
        labels = self.positions
        out = []
        for f in flat.tolist():
            layer, rem = divmod(f, s.shape[1] * s.shape[2])
            col, idx = divmod(rem, s.shape[2])
            out.append(((layer, None if aggregate_pos else labels[col], idx), float(s[layer, col, idx])))
        return out

    def node_label(self, node: Node, example: int | None = None) -> str:
        layer, pos, idx = node
        hook = self.hook_names[layer]
        where = "all" if pos is None else f"{pos}:{self.token_label(pos, example)}"
        return f"L{layer_numbers(self.hook_names)[layer]}/{unit_label(hook, idx, self.width)}@{where}"

    def token_label(self, pos: int, example: int | None = None) -> str:
        """The token at node position ``pos``: of ``example``, or over all prompts — the token when every
        prompt has the same one there, else the most common one and its share (``' of' 60%``)."""
        if example is not None:
            return repr(self.token_at(pos, example))
        col = self.alignment.column(pos)
        return token_label(self._column_tokens()[col], self.n_examples)

    def position_labels(self) -> dict[int, str]:
        """``{pos: token label}`` for every position of the data."""
        counts = self._column_tokens()
        return {p: token_label(c, self.n_examples) for p, c in zip(self.positions, counts)}

    def _column_tokens(self):
        if not hasattr(self, "_col_tok"):
            self._col_tok = column_tokens(self.alignment, self.str_tokens)
        return self._col_tok

    def token_at(self, pos: int, example: int | None = None) -> str:
        """The token at node position ``pos`` of ``example`` (default: the most common token there)."""
        if example is None:
            counts = self._column_tokens()[self.alignment.column(pos)]
            return counts.most_common(1)[0][0] if counts else "?"
        toks = self.str_tokens[example]
        t = resolve(pos, len(toks))
        return "?" if t is None else toks[t]

    def correlation(self, other: "Attribution", *, mean_over_examples: bool = False) -> float:
        """Pearson r with ``other`` over the entries both define (e.g. the nodes ``exact`` patched)."""
        a, b = self._per_example("correlation"), other._per_example("correlation")
        if a.shape != b.shape:
            raise RelPLensError(f"score shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        if mean_over_examples:
            a, b = a.nanmean(0), b.nanmean(0)
        mask = torch.isfinite(a) & torch.isfinite(b)
        if int(mask.sum()) < 2:
            raise RelPLensError("fewer than 2 entries defined in both attributions")
        return pearson(a[mask], b[mask])

    def activations(self, model: HookedTransformer, example: int | None = None,
                    batch_size: int = 32) -> torch.Tensor:
        """Clean-prompt activations of the attributed nodes, from a no-grad forward on ``model``.

        ``example``: that example's activations; ``None``: the per-column mean over the examples that reach
        each column (as :meth:`mean` averages scores). → ``[layer, pos, node]`` (columns the example, or
        every example, lacks hold NaN). On dictionaries (run it inside :func:`relp_lens.splice`), an error
        node's activation is the norm of its (mean) error vector.
        """
        if self.prompts is None:
            raise RelPLensError("this attribution keeps no prompts; activations need them")
        if example is not None and not 0 <= example < self.n_examples:
            raise RelPLensError(f"example {example} outside [0, {self.n_examples})")
        prompts = self.prompts if example is None else self.prompts.subset([example])
        tok = tokenize(model, prompts, self.prepend_bos)
        if tok.lengths != (self.lengths if example is None else [self.lengths[example]]):
            raise RelPLensError("this model tokenizes the prompts differently from the attribution's model")
        batches = make_batches(tok, batch_size)
        align = self.alignment
        means, counts = _mean_acts(model, batches, self.hook_names, align)  # per hook [pos, element]
        # a dictionary's error node: the norm of its error vector
        out = torch.stack([splice.fold_norm(m, splice.n_latents(model, h)) for m, h in zip(means, self.hook_names)])
        return out.masked_fill((counts == 0)[None, :, None], float("nan"))

    # -- TransformerLens-native (relp_lens.core.tl_cache) ----------------------------------------------------
    def to_cache(self, model: HookedTransformer, *, reduce: Reduce | None = None) -> ActivationCache:
        """The scores as a ``transformer_lens.ActivationCache`` keyed by hook name (:attr:`hook_names`).

        Args:
            model: the ``HookedTransformer`` or ``TransformerBridge`` the attribution was computed on.
            reduce: ``"none"``: per-example scores; ``"mean"``: the mean over the examples that reach each
                column (:meth:`mean`); None (default): per-example unless this attribution keeps only means.

        Returns:
            ``ActivationCache``: ``cache[name]`` ``[batch, pos, d]`` = ``scores[:, layer]`` (columns an example
            does not reach hold 0), or ``[pos, d]`` = ``mean()[layer]`` with ``has_batch_dim=False``. Column
            ``c`` of pos is node position :attr:`positions` ``[c]`` (absolute when all prompts have one length,
            else end-aligned). See :func:`relp_lens.core.tl_cache.to_cache`.
        """
        from transformer_lens import ActivationCache  # at call time, as everywhere in relp_lens

        backends.require_model(model)
        hooks = list(self.hook_names)
        if len(set(hooks)) != len(hooks):
            raise RelPLensError(f"the attribution names a hook twice ({hooks}); a cache holds one entry per hook")
        resolve_hooks(model, hooks)  # every hook exists on this model (a clear error with suggestions if not)
        if reduce is None:
            reduce = "mean" if self.reduced else "none"
        if reduce not in REDUCTIONS:
            raise RelPLensError(f"unknown reduce {reduce!r}; choose from {list(REDUCTIONS)}")
        if reduce == "none":
            scores = self._per_example("to_cache(reduce='none')")  # [batch, layer, pos, d]
            return ActivationCache({h: scores[:, layer].clone() for layer, h in enumerate(hooks)}, model,
                                   has_batch_dim=True)
        mean = self.mean()  # [layer, pos, d]
        return ActivationCache({h: mean[layer].clone() for layer, h in enumerate(hooks)}, model, has_batch_dim=False)

    def summary(self, k: int = 10) -> str:
        where = ("positions counted from the end (-1 = last token); prompts differ in length"
                 if self.alignment.end_aligned else "absolute positions")
        lines = [f"{self.method} attribution on {self.basis} ({len(self.hook_names)} layers), "
                 f"{self.n_examples} examples, metric {self.metric} "
                 f"(clean mean {self.metric_clean.mean():.3f}); {where}"]
        if self.alignment.end_aligned:
            lines[0] += "; top nodes at positions every prompt has"
        for node, score in self.top_k(k, everywhere=True):
            lines.append(f"  {self.node_label(node):>28s}  {score:+.4f}")
        return "\n".join(lines)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().flatten(), y.double().flatten()
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).item()
    return float((x @ y).item() / denom) if denom > 0 else float("nan")


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[batch, pos, ...] → [batch, pos, node]."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _cache_acts(model: HookedTransformer, tokens: torch.Tensor, hooks: list[str], resume: bool = False):
    """No-grad forward → (logits [batch, pos, vocab], [acts [batch, pos, node] per hook], resume points).

    With ``resume``, also keeps each needed ``blocks.{L}.hook_resid_pre`` so that later passes which
    patch a hook inside block L can start there (see :func:`_forward_from`).
    """
    wanted = list(hooks)
    resume = resume and backends.supports_start_at_layer(model)
    if resume:
        wanted += [resid_pre(layer) for h in hooks if (layer := _block_of(model, h)) is not None]
    logits, cache = backends.capture(model, tokens, wanted)  # reaches a spliced dictionary's hook points too
    starts = {layer: cache[resid_pre(layer)] for h in hooks
              if resume and (layer := _block_of(model, h)) is not None}
    return logits, [_flat(cache[h]) for h in hooks], starts


def _block_of(model: HookedTransformer, hook_name: str) -> int | None:
    """The block a hook lives in, when a forward pass may start at that block's residual input."""
    match = _BLOCK.match(hook_name)
    if match is None or model.cfg.positional_embedding_type == "shortformer":
        return None
    return int(match.group(1))


def _forward_from(model: HookedTransformer, tokens: torch.Tensor, starts: dict[int, torch.Tensor],
                  layer: int | None, reps: int = 1) -> torch.Tensor:
    """Logits of ``tokens`` repeated ``reps`` times, skipping the blocks before ``layer`` when its cached
    residual input is known (the skipped blocks are unaffected by a patch at or after ``layer``)."""
    if layer is None or layer not in starts or not backends.supports_start_at_layer(model):
        return model(tokens.repeat(reps, 1))  # a bridge cannot skip blocks: the full pass, same result
    return model(starts[layer].repeat(reps, 1, 1), start_at_layer=layer)


@dataclass
class _Run:
    """Everything fixed for one attribute() call."""

    model: HookedTransformer
    hooks: list[str]
    metric_fn: MetricFn
    paired: bool
    baseline: str  # "patch" (paired), "zero" or "mean"
    mean_acts: list[torch.Tensor] | None  # per hook [column, node]
    rules: RelPConfig
    alignment: Alignment
    prompts: Prompts
    progress: bool = False
    known_zero: set[int] = field(default_factory=set)  # examples already warned about (same answers)
    latents: list[int | None] = field(default_factory=list)  # per hook: d_sae of a spliced dictionary, else None

    def __post_init__(self) -> None:
        if not self.latents:
            self.latents = [splice.n_latents(self.model, h) for h in self.hooks]

    def reference(self, batch: Batch) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Reference activations per hook [batch, pos, node] and the metric on the patch run."""
        pos = batch.clean_tokens.shape[1]
        if self.paired:
            logits, acts, _ = _cache_acts(self.model, batch.patch_tokens.to(self.model.cfg.device), self.hooks)
            # the metric on the patch run is informative (e.g. for thresholds), never a hard error; it
            # is skipped while the targets are still unknown, or the patch run would choose them
            m_ref = None
            if batch.answer_ids is not None:
                with torch.no_grad():
                    try:
                        m_ref = evaluate_metric(self.metric_fn, logits, batch)
                    except RelPLensError:
                        pass
            return acts, m_ref
        if self.baseline == "mean":
            cols = self.alignment.columns(pos)
            return [m[cols].unsqueeze(0) for m in self.mean_acts], None
        return [torch.zeros(1, 1, 1)] * len(self.hooks), None

    def delta(self, clean: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The activation difference a score multiplies with the gradient."""
        return ref - clean if self.paired else clean - ref


@contextlib.contextmanager
def gradient_hooks(run: _Run, use_relp: bool) -> Iterator[dict]:
    """RelP mode (``use_relp``) and the hooks that capture ``run.hooks``, entered once for all the batches of a
    call (adding and removing ~300 hooks costs ~5-10 ms, as much as the rules' forward work on a batch).

    Yields the dict :func:`batch_gradients` reads; the hooks capture only while it holds ``"on"``, so the
    reference passes of paired data (forward values unchanged by the rules) run inside the context too.
    """
    captured: dict = {}

    def capture(name):  # the name is bound here: a bridge's hook.name may be the canonical one behind an alias
        def hook(x, hook):
            if "on" not in captured:
                return None
            if not x.requires_grad:  # frozen weights: the first captured hook starts the graph
                x = x.detach().requires_grad_(True)
            captured[name] = x
            # returned, not just kept: a bridge hands some hooks (attn.hook_z, hook_q, ...) a reshaped copy and
            # computes on with its own tensor unless the hook returns one, so only a returned copy is in the graph
            return x

        return hook

    mode = relp(run.model, **vars(run.rules)) if use_relp else contextlib.nullcontext()
    with mode, backends.hooks(run.model, fwd_hooks=[(h, capture(h)) for h in run.hooks]):
        yield captured


def batch_gradients(run: _Run, batch: Batch, use_relp: bool, hooked: dict | None = None):
    """One clean forward + one backward (RelP or plain) of ``batch``.

    ``hooked``: the dict of an open :func:`gradient_hooks` context (None: one is opened for this batch).
    Returns ``(acts, grads, deltas, m, m_ref)``: per hook ``[batch, pos, node]`` activations, gradients of
    the summed metric and the activation differences a score multiplies them with; the metric ``[batch]``
    on the clean run and (paired data) on the patch run.
    """
    if hooked is None:
        with gradient_hooks(run, use_relp) as hooked:
            return batch_gradients(run, batch, use_relp, hooked)
    model, hooks = run.model, run.hooks
    ref, m_ref = run.reference(batch)
    hooked["on"] = True
    try:
        with torch.enable_grad():
            logits = model(batch.clean_tokens.to(model.cfg.device))
            m = evaluate_metric(run.metric_fn, logits, batch)
            warn_unlikely_answers(logits[:, -1], batch, run.prompts)
            xs = [hooked.pop(h) for h in hooks]
            grads = torch.autograd.grad(m.sum(), xs, allow_unused=True)
    finally:
        hooked.clear()
    acts = [_flat(x.detach()) for x in xs]
    grads = [torch.zeros_like(a) if g is None else _flat(g) for a, g in zip(acts, grads)]
    deltas = [run.delta(a, r.to(a.device)) for a, r in zip(acts, ref)]
    return acts, grads, deltas, m.detach().cpu(), m_ref


def _grad_batch(run: _Run, batch: Batch, use_relp: bool, hooked: dict):
    _, grads, deltas, m, m_ref = batch_gradients(run, batch, use_relp, hooked)
    width = splice.node_width(grads[0].shape[-1], run.latents[0])
    scores = torch.empty(len(batch), len(grads), grads[0].shape[1], width)  # [batch, layer, pos, node] on the CPU
    for layer, (g, d) in enumerate(zip(grads, deltas)):
        s = splice.fold(g.float() * d.float(), run.latents[layer])  # float32 also for half models
        if s.shape[-1] != width:
            raise RelPLensError(f"the layers of this basis have different widths ({run.hooks[0]}: {width} nodes, "
                                f"{run.hooks[layer]}: {s.shape[-1]}); attribute them separately")
        scores[:, layer] = s
    return scores, m, m_ref


def _ig_batch(run: _Run, batch: Batch, steps: int):
    model, hooks = run.model, run.hooks
    tokens = batch.clean_tokens.to(model.cfg.device)
    logits, clean, starts = _cache_acts(model, tokens, hooks, resume=True)
    m_clean = evaluate_metric(run.metric_fn, logits, batch)
    ref, m_ref = run.reference(batch)
    scores = []
    layers = tqdm(list(enumerate(hooks)), desc=f"IG-{steps} over layers ({len(batch)} prompts)",
                  disable=not run.progress, leave=False)
    for layer, hook_name in layers:
        block = _block_of(model, hook_name)
        a, r = clean[layer], ref[layer].to(clean[layer].device).expand_as(clean[layer])
        grad_sum = torch.zeros_like(a, dtype=torch.float32)  # summed in float32, also for half models
        for step in range(steps):
            alpha = step / steps
            # the path runs from clean (alpha = 0) towards the reference
            point = ((1 - alpha) * a + alpha * r).detach().requires_grad_(True)

            def patch(x, hook, point=point):
                return point.reshape(x.shape)

            with torch.enable_grad(), backends.hooks(model, fwd_hooks=[(hook_name, patch)]):
                m = evaluate_metric(run.metric_fn, _forward_from(model, tokens, starts, block), batch)
                (g,) = torch.autograd.grad(m.sum(), [point], allow_unused=True)
            if g is not None:
                grad_sum += g.float()
        scores.append(splice.fold((grad_sum / steps) * run.delta(a, r).float(), run.latents[layer]).cpu())
    return torch.stack(scores, 1), m_clean.cpu(), m_ref


def _exact_batch(run: _Run, batch: Batch, nodes: list[Node], node_batch: int):
    model, hooks = run.model, run.hooks
    tokens = batch.clean_tokens.to(model.cfg.device)
    b, pos = tokens.shape
    logits, clean, starts = _cache_acts(model, tokens, hooks, resume=True)
    m_clean = evaluate_metric(run.metric_fn, logits, batch)
    ref, m_ref = run.reference(batch)
    ref = [r.to(c.device).expand_as(c) for r, c in zip(ref, clean)]
    blocks = [_block_of(model, h) for h in hooks]
    width = splice.node_width(clean[0].shape[-1], run.latents[0])
    scores = torch.full((b, len(hooks), pos, width), float("nan"))
    # every node must exist in every prompt; its position resolved for this length (negative: from the end)
    where = {n: None if n[1] is None else require(n[1], pos, f"L{n[0]}/{n[2]}@{n[1]}",
                                                   run.prompts.clean[batch.indices[0]],
                                                   run.alignment.tail_start) for n in nodes}
    # sorted by layer so that a chunk can skip the blocks before its first patched layer
    todo = sorted(nodes, key=lambda n: (n[0], where[n] or 0, n[2]))
    chunk = max(1, node_batch // b)
    for start in range(0, len(todo), chunk):
        group = todo[start:start + chunk]
        reps = len(group)
        rows = torch.arange(reps * b).view(reps, b)  # [node, batch]; CPU indices work on any device
        by_hook: dict[int, list[tuple[int, Node]]] = {}
        for j, node in enumerate(group):
            by_hook.setdefault(node[0], []).append((j, node))
        fwd_hooks = []
        for layer, items in by_hook.items():
            def patch(x, hook, items=items, layer=layer):
                flat = x.reshape(x.shape[0], x.shape[1], -1).clone()
                for j, node in items:
                    p, idx = where[node], splice.elements(node[2], run.latents[layer])
                    sl = slice(None) if p is None else slice(p, p + 1)
                    flat[rows[j], sl, idx] = ref[layer][:, sl, idx]
                return flat.reshape(x.shape)

            fwd_hooks.append((hooks[layer], patch))
        with torch.no_grad(), backends.hooks(model, fwd_hooks=fwd_hooks):
            big = tokens.repeat(reps, 1)
            first = [blocks[layer] for layer in by_hook]
            out = _forward_from(model, tokens, starts, None if None in first else min(first), reps)
            rep_batch = Batch(indices=batch.indices * reps, clean_tokens=big, patch_tokens=None,
                              answer_ids=None if batch.answer_ids is None else batch.answer_ids * reps,
                              patch_answer_ids=None if batch.patch_answer_ids is None
                              else batch.patch_answer_ids * reps)
            m = evaluate_metric(run.metric_fn, out, rep_batch).view(reps, b)
        for j, node in enumerate(group):
            layer, p, idx = node[0], where[node], node[2]
            effect = ((m[j] - m_clean) if run.paired else (m_clean - m[j])).float()
            if p is None:
                scores[:, layer, :, idx] = 0.0
                scores[:, layer, 0, idx] = effect.cpu()  # all-position node: effect stored at pos 0
            else:
                scores[:, layer, p, idx] = effect.cpu()
    return scores, m_clean.cpu(), m_ref


def _mean_acts(model: HookedTransformer, batches: list[Batch], hooks: list[str], alignment: Alignment,
               patch: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-column mean activation over the examples that reach each column (of the patch prompts with
    ``patch``). → (per hook ``[column, node]``, ``[column]`` example counts)."""
    sums, counts = None, torch.zeros(alignment.n_columns, dtype=torch.long)
    mine = dp.shard(batches)  # under relp_lens.data_parallel: this rank's batches, sums combined below
    with dp.stage("mean activations"):
        for batch in mine:
            tokens = batch.patch_tokens if patch else batch.clean_tokens
            _, acts, _ = _cache_acts(model, tokens.to(model.cfg.device), hooks)
            if sums is None:
                sums = [torch.zeros(alignment.n_columns, a.shape[-1], dtype=torch.float64) for a in acts]
            cols = alignment.columns(tokens.shape[1])
            for s, a in zip(sums, acts):
                s[cols] += a.sum(0).double().cpu()
            counts[cols] += len(batch)
    if dp.active():
        sums, counts = [dp.all_reduce(s) for s in sums], dp.all_reduce(counts)
    return [(s / counts[:, None].clamp(min=1)).float() for s in sums], counts


def as_prompts(prompts, answers=None, patch=None, patch_answers=None) -> Prompts:
    """A :class:`Prompts` from any accepted form: Prompts, JSONL-style rows, a string or list of strings."""
    if isinstance(prompts, Prompts):
        return prompts
    if isinstance(prompts, str):
        return Prompts([prompts], answers, patch, patch_answers)
    if not isinstance(prompts, Iterable) or isinstance(prompts, (bytes, bytearray, dict)):
        raise RelPLensError(f"prompts must be a Prompts, a list of rows (dicts with clean_prefix, ...), a string "
                            f"or a list of strings; got {type(prompts).__name__}")
    items = list(prompts)  # a list, tuple, generator, numpy array or pandas Series
    if items and all(isinstance(r, dict) for r in items):
        return Prompts.from_rows(items)
    odd = next((i for i, p in enumerate(items) if not isinstance(p, str)), None)
    if odd is not None:
        raise RelPLensError(f"prompts must be all rows (dicts) or all strings; item {odd} is a "
                            f"{type(items[odd]).__name__}")
    return Prompts(items, answers, patch, patch_answers)


def prepare_run(model: HookedTransformer, data: Prompts, basis, metric=None, baseline: Baseline | None = None,
                rules: RelPConfig | None = None, batch_size: int = 16, progress: bool = False,
                prepend_bos: bool | None = None):
    """Validate the arguments and tokenize: ``(run, batches, tokenized, metric_name)``.

    ``prepend_bos``: as :func:`relp_lens.core.data.tokenize` (None: the model's default); the choice is
    ``tokenized.prepend_bos``. Rows whose ``logit_diff`` is 0 by their answers are warned about here; with a
    ``mean`` baseline the metric's shape is checked on the first batch before the pass over all the data.
    """
    hooks = resolve_hooks(model, basis)
    paired = data.paired
    metric_name, metric_fn = resolve_metric(metric, paired and data.patch_answers is not None)
    if baseline is not None and paired and baseline != "patch":
        raise RelPLensError("baseline applies to unpaired data; paired data uses the patch activations")
    baseline = "patch" if paired else (baseline or DEFAULT_BASELINE)
    if baseline not in ("patch", *BASELINES):
        raise RelPLensError(f"unknown baseline {baseline!r}; choose from {list(BASELINES)}")
    tok = tokenize(model, data, prepend_bos)
    same = warn_same_answers(tok, metric_name)
    batches = make_batches(tok, batch_size)
    alignment = tok.alignment
    if baseline == "mean":  # a pass over all the data comes before the first metric: check the metric first
        check_metric(model, metric_fn, batches[0])
    mean_acts = _mean_acts(model, batches, hooks, alignment)[0] if baseline == "mean" else None
    run = _Run(model, hooks, metric_fn, paired, baseline, mean_acts, rules or RelPConfig(), alignment, data,
               progress, known_zero=set(same))
    return run, batches, tok, metric_name


def memory_estimate(model: HookedTransformer, lengths: Sequence[int], hooks: Sequence[str], *,
                    batch_size: int, reduce: str, width: int | None = None) -> dict[str, int]:
    """Bytes an attribution needs beyond the weights: the kept scores and one batch's forward+backward.

    ``scores``: ``n × layers × positions × width × 4`` per example (``reduce="none"``) or ``layers ×
    positions × width × 8`` (running float64 sums); ``batch``: what one batch keeps for its backward pass, from
    the planner's calibrated model (:func:`relp_lens.core.plan.batch_bytes`, the same numbers ``relp-lens plan``
    prints).
    """
    from relp_lens.core.plan import batch_bytes

    c = model.cfg
    width = width or (c.d_mlp or c.d_model)
    n_pos, n_layers = max(lengths), len(hooks)
    per_score = n_layers * n_pos * width
    scores = len(lengths) * per_score * 4 if reduce == "none" else per_score * 8
    dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}.get(
        getattr(c, "dtype", torch.float32), "float32")
    batch = sum(batch_bytes(model, min(batch_size, len(lengths)), n_pos, dtype=dtype).values())
    return dict(scores=scores, batch=batch, total=scores + batch)


def available_memory() -> int | None:
    """Bytes the OS reports as available (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_memory(model, tok, hooks, batch_size: int, reduce: str, width: int | None = None) -> None:
    if str(model.cfg.device).startswith("cuda"):
        return  # scores live on the CPU; the device's own limits are torch's to report
    have = available_memory()
    if have is None:
        return
    need = memory_estimate(model, tok.lengths, hooks, batch_size=batch_size, reduce=reduce, width=width)
    if need["total"] > 0.9 * have:
        advice = []
        if reduce == "none" and need["scores"] > 0.3 * have:
            advice.append("reduce='mean' (keeps running sums, not per-example scores)")
        if need["batch"] > 0.3 * have:
            advice.append("a smaller batch_size")
        raise RelPLensError(f"this attribution needs about {need['total'] / 2**30:.1f} GiB (scores "
                            f"{need['scores'] / 2**30:.1f} GiB, one batch {need['batch'] / 2**30:.1f} GiB) but "
                            f"{have / 2**30:.1f} GiB are available; use {' and '.join(advice) or 'fewer prompts'}")


DEFAULT_BASELINE = "zero"


def attribute(
    model: HookedTransformer,
    prompts: Prompts | Sequence[dict] | str | Sequence[str],
    answers: str | Sequence | None = None,
    *,
    patch: str | Sequence[str] | None = None,
    patch_answers: str | Sequence | None = None,
    basis: str | Sequence[str] | splice.Dictionaries = "mlp_post",
    method: Method = "relp",
    metric: Metric | MetricFn | None = None,
    baseline: Baseline | None = None,
    nodes: Sequence[Node] | None = None,
    ig_steps: int = 10,
    rules: RelPConfig | None = None,
    batch_size: int = 16,
    node_batch: int = 64,
    reduce: Reduce = "none",
    progress: bool = True,
    prepend_bos: bool | None = None,
) -> Attribution:
    """Score every node of ``basis`` for ``metric`` on ``prompts``.

    Args:
        model: any ``HookedTransformer`` (the shipped one: :func:`relp_lens.load_model`).
        prompts: a :class:`Prompts`, JSONL-style rows (``clean_prefix``, ``patch_prefix``, ``clean_answer``,
            ``patch_answer``), a prompt string or a list of them.
        answers: with string prompts: the clean answers (one token each).
        patch: with string prompts: the patch prompts (same token length as the clean ones).
        patch_answers: with string prompts: the patch answers.
        basis: ``mlp_post`` (neurons; default), ``mlp_out``, ``attn_out``, ``resid_pre``, ``resid_post``, a
            hook name, a ``{L}`` template or a list of hook names (see :mod:`relp_lens.core.nodes`); or
            dictionaries (a :class:`~relp_lens.core.dictionaries.Dictionary`, ``DictionarySet`` or list of
            them: SAEs, transcoders), spliced in for the call (:func:`relp_lens.core.splice.splice`): each
            layer's nodes are its ``d_sae`` latents and then one error node per position, ``scores[...,
            :d_sae]`` and ``scores[..., d_sae]``; the hooks are ``{hook_out}.hook_sae_nodes``.
        method: ``relp`` | ``grad`` | ``ig`` | ``exact``.
        metric: ``logit_diff`` (paired default) | ``logit`` (unpaired default) | ``logprob`` | a callable.
        baseline: unpaired data only: ``zero`` (default) or ``mean`` (per-position mean over the prompts).
        nodes: for ``exact``: the ``(layer, pos, index)`` nodes to patch (``pos=None``: all positions;
            negative: counted from the end).
        ig_steps: integration points for ``ig``.
        rules: RelP rule switches for ``relp`` (default: the paper's set, AH rule off).
        batch_size: examples per forward pass (memory is bounded by it); prompts are grouped by length.
        node_batch: rows per forward pass for ``exact`` (nodes × examples).
        reduce: ``"none"``: keep per-example scores ``[batch, layer, pos, node]``; ``"mean"``: keep only
            running float64 sums, so memory does not grow with the number of prompts.
        progress: show tqdm progress bars.
        prepend_bos: start every prompt with the BOS token (True) or not (False); None (default): as the
            model does (``model.cfg.default_prepend_bos``: True for most models, False for Qwen2/Qwen3).
            Recorded as :attr:`Attribution.prepend_bos`.

    Returns:
        An :class:`Attribution` (``scores`` ``[batch, layer, pos, node]``, or running sums with
        ``reduce="mean"``).

    The metric must return one value per example (shape ``[batch]``): anything else is an error before any
    backward pass. Rows whose metric is identically 0 (the same clean and patch answer; a clean metric of
    exactly 0.0) are named in a :class:`~relp_lens.core.metrics.ZeroMetricWarning`.

    Positions follow :mod:`relp_lens.core.positions`: absolute when every prompt has one token length, else
    counted from the end after the prefix every prompt shares.
    """
    # -- validate everything before touching the model -------------------------------------------------
    backends.require_model(model)
    batch_size = validate.positive_int(batch_size, "batch_size")
    ig_steps = validate.positive_int(ig_steps, "ig_steps")
    if method not in METHODS:
        raise RelPLensError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if reduce not in REDUCTIONS:
        raise RelPLensError(f"unknown reduce {reduce!r}; choose from {list(REDUCTIONS)}")
    if reduce == "mean" and method == "exact":
        raise RelPLensError("method 'exact' keeps per-example effects of the patched nodes; use reduce='none'")
    if splice.is_dictionaries(basis):  # spliced in for this call only; the basis is their node hooks
        dicts = splice.as_list(basis)
        with splice.splice(model, dicts) as feature_hooks:
            attr = attribute(model, prompts, answers, patch=patch, patch_answers=patch_answers, basis=feature_hooks,
                             method=method, metric=metric, baseline=baseline, nodes=nodes, ig_steps=ig_steps,
                             rules=rules, batch_size=batch_size, node_batch=node_batch, reduce=reduce,
                             progress=progress, prepend_bos=prepend_bos)
        attr.basis = splice.basis_label(dicts)
        return attr
    data = as_prompts(prompts, answers, patch, patch_answers)
    if method == "exact":
        if not nodes:
            raise RelPLensError("method 'exact' needs nodes=[(layer, pos, index), ...] to patch")
        nodes = [tuple(n) for n in nodes]
        n_hooks = len(resolve_hooks(model, basis))
        for n in nodes:
            if (len(n) != 3 or not is_int(n[0]) or not 0 <= n[0] < n_hooks or not is_int(n[2]) or n[2] < 0):
                raise RelPLensError(f"bad node {n!r}: expected (layer in [0, {n_hooks}), pos, index >= 0)")
            check_position(n[1], f"node {n!r}")
    run, batches, tok, metric_name = prepare_run(model, data, basis, metric, baseline, rules, batch_size,
                                                 progress, prepend_bos)
    hooks, paired, align = run.hooks, run.paired, run.alignment
    _check_memory(model, tok, hooks, batch_size, reduce,
                  None if run.latents[0] is None else splice.node_width(0, run.latents[0]))

    # -- run (under relp_lens.data_parallel: this rank's batches, sums combined below) ---------------
    if dp.active() and method == "exact":
        raise RelPLensError("method 'exact' does not run data parallel; run it in one process")
    mine = dp.shard(batches)
    scores = score_sum = None
    counts = torch.zeros(align.n_columns, dtype=torch.long)
    metric_clean = torch.zeros(len(data))
    metric_ref = torch.full((len(data),), float("nan")) if paired else None
    fill = float("nan") if method == "exact" else 0.0
    hooked = gradient_hooks(run, method == "relp") if method in ("relp", "grad") else contextlib.nullcontext()
    with dp.stage(f"{method} attribution"), hooked as hooked:
        for batch in tqdm(mine, desc=f"{method} attribution", disable=not progress, leave=False):
            if method in ("relp", "grad"):
                s, m, m_ref = _grad_batch(run, batch, method == "relp", hooked)
            elif method == "ig":
                s, m, m_ref = _ig_batch(run, batch, ig_steps)
            else:
                s, m, m_ref = _exact_batch(run, batch, list(nodes), node_batch)
            # s: [batch, layer, pos, node]
            if scores is None and score_sum is None:
                width = s.shape[-1]
                if reduce == "none":
                    scores = torch.full((len(data), len(hooks), align.n_columns, width), fill)
                else:
                    score_sum = torch.zeros(len(hooks), align.n_columns, width, dtype=torch.float64)
            if s.shape[-1] != width:
                raise RelPLensError(f"hooks of basis {basis_name(basis)!r} have different widths; "
                                    f"attribute them separately")
            cols = align.columns(s.shape[2])
            idx = torch.tensor(batch.indices)
            if scores is not None:
                block = scores[idx]
                block[:, :, cols] = s
                scores[idx] = block
            else:
                score_sum[:, cols] += s.sum(0).double()
            counts[cols] += len(batch)
            metric_clean[idx] = m.float()
            warn_zero_rows(m, batch, data, run.known_zero)
            if metric_ref is not None and m_ref is not None:
                metric_ref[idx] = m_ref.float().cpu()
    if dp.active():  # each example was scored by one rank (zeros elsewhere): sums combine the shares exactly
        scores = None if scores is None else dp.all_reduce(scores)
        score_sum = None if score_sum is None else dp.all_reduce(score_sum)
        counts, metric_clean = dp.all_reduce(counts), dp.all_reduce(metric_clean)
        if metric_ref is not None:
            known = dp.all_reduce((~metric_ref.isnan()).double())
            metric_ref = dp.all_reduce(metric_ref.nan_to_num(0.0)).masked_fill(known == 0, float("nan"))
    str_tokens = [str_tokens_of(model, t) for t in tok.clean_tokens]
    return Attribution(scores=scores, str_tokens=str_tokens, hook_names=hooks, basis=basis_name(basis),
                       method=method, metric=metric_name, paired=paired, metric_clean=metric_clean,
                       metric_ref=metric_ref, prompts=data, alignment=align, baseline=run.baseline,
                       score_sum=score_sum, counts=counts, prepend_bos=tok.prepend_bos)
