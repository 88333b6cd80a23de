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

Activations are captured through TransformerLens hooks added in a ``model.hooks()`` context, so the model
keeps no hook after a call, whether it succeeds or raises.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from relp_lens.data import Batch, Prompts, make_batches, tokenize
from relp_lens.errors import RelPLensError
from relp_lens.metrics import MetricFn, evaluate_metric, resolve_metric
from relp_lens.nodes import basis_name, resolve_hooks
from relp_lens.relp_mode import RelPConfig, relp

METHODS = ("relp", "grad", "ig", "exact")
Node = tuple[int, int | None, int]  # (layer, pos or None for all positions, index)
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class Attribution:
    """Per-example node scores with everything needed to read them.

    ``scores``: ``[batch, layer, pos, node]``; positions past an example's length hold 0 (NaN for
    ``exact``, which also holds NaN for nodes it did not patch). ``layer`` indexes ``hook_names``.
    """

    scores: torch.Tensor  # [batch, layer, pos, node]
    str_tokens: list[list[str]]
    hook_names: list[str]
    basis: str
    method: str
    metric: str
    paired: bool
    metric_clean: torch.Tensor  # [batch]
    metric_ref: torch.Tensor | None = None  # [batch]: metric on the patch prompts (paired data)
    prompts: Prompts | None = field(default=None, repr=False)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.str_tokens]

    @property
    def n_layers(self) -> int:
        return self.scores.shape[1]

    def valid(self) -> torch.Tensor:
        """``[batch, pos]`` mask: True where the position exists in that example."""
        return torch.arange(self.scores.shape[2])[None, :] < torch.tensor(self.lengths)[:, None]

    def mean(self) -> torch.Tensor:
        """Signed mean over the examples that reach each position (NaN-aware). → ``[layer, pos, node]``."""
        s = self.scores.masked_fill(~self.valid()[:, None, :, None], float("nan"))
        return s.nanmean(0)

    def sum_pos(self) -> torch.Tensor:
        """Sum over positions (NaN-aware). → ``[batch, layer, node]``."""
        return self.scores.nansum(2)

    def top_k(self, k: int = 20, *, aggregate_pos: bool = False, example: int | None = None,
              signed: bool = False) -> list[tuple[Node, float]]:
        """The ``k`` nodes with the largest |score| (or largest score with ``signed=True``).

        Scores are the mean over examples (or one ``example``), per position, or summed over
        positions with ``aggregate_pos=True`` (then pos is ``None``). Returns ``[((layer, pos, index), score)]``.
        """
        if example is not None:
            s = self.scores[example]
            s = s.nansum(1, keepdim=True) if aggregate_pos else s
        elif aggregate_pos:
            s = self.scores.nansum(2, keepdim=True).nanmean(0)
        else:
            s = self.mean()
        s = s.nan_to_num(0.0)  # [layer, pos, node]
        key = s if signed else s.abs()
        k = min(k, key.numel())
        flat = key.flatten().topk(k).indices
        out = []
        for f in flat.tolist():
            layer, rem = divmod(f, s.shape[1] * s.shape[2])
            pos, idx = divmod(rem, s.shape[2])
            out.append(((layer, None if aggregate_pos else pos, idx), float(s[layer, pos, idx])))
        return out

    def node_label(self, node: Node, example: int | None = None) -> str:
        layer, pos, idx = node
        return f"L{layer}/{idx}@" + ("all" if pos is None else f"{pos}:{self.token_at(pos, example)!r}")

    def token_at(self, pos: int, example: int | None = None) -> str:
        """The token at ``pos`` of ``example`` (default: the first example long enough)."""
        if example is None:
            example = next((i for i, n in enumerate(self.lengths) if n > pos), 0)
        toks = self.str_tokens[example]
        return toks[pos] if pos < len(toks) else "?"

    def correlation(self, other: "Attribution", *, mean_over_examples: bool = False) -> float:
        """Pearson r with ``other`` over the entries both define (e.g. the nodes ``exact`` patched)."""
        if self.scores.shape != other.scores.shape:
            raise RelPLensError(f"score shapes differ: {tuple(self.scores.shape)} vs {tuple(other.scores.shape)}")
        a, b = self.scores, other.scores
        if mean_over_examples:
            a, b = a.nanmean(0), b.nanmean(0)
        mask = torch.isfinite(a) & torch.isfinite(b)
        if int(mask.sum()) < 2:
            raise RelPLensError("fewer than 2 entries defined in both attributions")
        return pearson(a[mask], b[mask])

    def activations(self, model: HookedTransformer, example: int | None = None,
                    batch_size: int = 32) -> torch.Tensor:
        """Clean-prompt activations of the attributed nodes, from a no-grad forward on ``model``.

        ``example``: that example's activations; ``None``: the per-position mean over the examples that reach
        each position (as :meth:`mean` averages scores). → ``[layer, pos, node]`` (positions past the example,
        or past every example, hold NaN).
        """
        if self.prompts is None:
            raise RelPLensError("this attribution keeps no prompts; activations need them")
        max_len = self.scores.shape[2]
        if example is not None and not 0 <= example < self.scores.shape[0]:
            raise RelPLensError(f"example {example} outside [0, {self.scores.shape[0]})")
        prompts = self.prompts if example is None else Prompts([self.prompts.clean[example]])
        tok = tokenize(model, prompts)
        if tok.lengths != (self.lengths if example is None else [self.lengths[example]]):
            raise RelPLensError("this model tokenizes the prompts differently from the attribution's model")
        batches = make_batches(tok, batch_size)
        means = _mean_acts(model, batches, self.hook_names, max_len)  # per hook [pos, node]
        out = torch.stack(means)  # [layer, pos, node]
        reached = self.valid().any(0) if example is None else self.valid()[example]  # [pos]
        return out.masked_fill(~reached[None, :, None], float("nan"))

    def summary(self, k: int = 10) -> str:
        lines = [f"{self.method} attribution on {self.basis} ({len(self.hook_names)} layers), "
                 f"{self.scores.shape[0]} examples, metric {self.metric} "
                 f"(clean mean {self.metric_clean.mean():.3f})"]
        for node, score in self.top_k(k):
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
    wanted = set(hooks)
    if resume:
        wanted |= {f"blocks.{layer}.hook_resid_pre" for h in hooks if (layer := _block_of(model, h)) is not None}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    starts = {layer: cache[f"blocks.{layer}.hook_resid_pre"] for h in hooks
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
    if layer is None or layer not in starts:
        return model(tokens.repeat(reps, 1))
    return model(starts[layer].repeat(reps, 1, 1), start_at_layer=layer)


@dataclass
class _Run:
    """Everything fixed for one attribute() call."""

    model: HookedTransformer
    hooks: list[str]
    metric_fn: MetricFn
    paired: bool
    baseline: str
    mean_acts: list[torch.Tensor] | None  # per hook [pos, node]
    rules: RelPConfig

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
            return [m[:pos].unsqueeze(0) for m in self.mean_acts], None
        return [torch.zeros(1, 1, 1)] * len(self.hooks), None

    def delta(self, clean: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The activation difference a score multiplies with the gradient."""
        return ref - clean if self.paired else clean - ref


def batch_gradients(run: _Run, batch: Batch, use_relp: bool):
    """One clean forward + one backward (RelP or plain) of ``batch``.

    Returns ``(acts, grads, deltas, m, m_ref)``: per hook ``[batch, pos, node]`` activations, gradients of
    the summed metric and the activation differences a score multiplies them with; the metric ``[batch]``
    on the clean run and (paired data) on the patch run.
    """
    model, hooks = run.model, run.hooks
    ref, m_ref = run.reference(batch)
    captured: dict[str, torch.Tensor] = {}

    def capture(x, hook):
        if not x.requires_grad:  # frozen weights: the first captured hook starts the graph
            x = x.detach().requires_grad_(True)
            captured[hook.name] = x
            return x
        captured[hook.name] = x
        return None

    mode = relp(model, **vars(run.rules)) if use_relp else contextlib.nullcontext()
    with torch.enable_grad(), mode, model.hooks(fwd_hooks=[(h, capture) for h in hooks]):
        logits = model(batch.clean_tokens.to(model.cfg.device))
        m = evaluate_metric(run.metric_fn, logits, batch)
        xs = [captured.pop(h) for h in hooks]
        grads = torch.autograd.grad(m.sum(), xs, allow_unused=True)
    acts = [_flat(x.detach()) for x in xs]
    grads = [torch.zeros_like(a) if g is None else _flat(g) for a, g in zip(acts, grads)]
    deltas = [run.delta(a, r.to(a.device)) for a, r in zip(acts, ref)]
    return acts, grads, deltas, m.detach().cpu(), m_ref


def _grad_batch(run: _Run, batch: Batch, use_relp: bool):
    _, grads, deltas, m, m_ref = batch_gradients(run, batch, use_relp)
    scores = [(g * d).cpu() for g, d in zip(grads, deltas)]
    return torch.stack(scores, 1), m, m_ref  # [batch, layer, pos, node]


def _ig_batch(run: _Run, batch: Batch, steps: int):
    model, hooks = run.model, run.hooks
    tokens = batch.clean_tokens.to(model.cfg.device)
    logits, clean, starts = _cache_acts(model, tokens, hooks, resume=True)
    m_clean = evaluate_metric(run.metric_fn, logits, batch)
    ref, m_ref = run.reference(batch)
    scores = []
    for layer, hook_name in enumerate(hooks):
        block = _block_of(model, hook_name)
        a, r = clean[layer], ref[layer].to(clean[layer].device).expand_as(clean[layer])
        grad_sum = torch.zeros_like(a)
        for step in range(steps):
            alpha = step / steps
            # the path runs from clean (alpha = 0) towards the reference
            point = ((1 - alpha) * a + alpha * r).detach().requires_grad_(True)

            def patch(x, hook, point=point):
                return point.reshape(x.shape)

            with torch.enable_grad(), model.hooks(fwd_hooks=[(hook_name, patch)]):
                m = evaluate_metric(run.metric_fn, _forward_from(model, tokens, starts, block), batch)
                (g,) = torch.autograd.grad(m.sum(), [point], allow_unused=True)
            if g is not None:
                grad_sum += g
        scores.append(((grad_sum / steps) * run.delta(a, r)).cpu())
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
    scores = torch.full((b, len(hooks), pos, clean[0].shape[-1]), float("nan"))
    # sorted by layer so that a chunk can skip the blocks before its first patched layer
    todo = sorted((n for n in nodes if n[1] is None or n[1] < pos), key=lambda n: (n[0], n[1] or 0, n[2]))
    chunk = max(1, node_batch // b)
    for start in range(0, len(todo), chunk):
        group = todo[start:start + chunk]
        reps = len(group)
        rows = torch.arange(reps * b, device=tokens.device).view(reps, b)  # [node, batch]
        by_hook: dict[int, list[tuple[int, Node]]] = {}
        for j, node in enumerate(group):
            by_hook.setdefault(node[0], []).append((j, node))
        fwd_hooks = []
        for layer, items in by_hook.items():
            def patch(x, hook, items=items, layer=layer):
                flat = x.reshape(x.shape[0], x.shape[1], -1).clone()
                for j, (_, p, idx) in items:
                    sl = slice(None) if p is None else slice(p, p + 1)
                    flat[rows[j], sl, idx] = ref[layer][:, sl, idx]
                return flat.reshape(x.shape)

            fwd_hooks.append((hooks[layer], patch))
        with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
            big = tokens.repeat(reps, 1)
            first = [blocks[layer] for layer in by_hook]
            out = _forward_from(model, tokens, starts, None if None in first else min(first), reps)
            rep_batch = Batch(indices=batch.indices * reps, clean_tokens=big, patch_tokens=None,
                              answer_ids=None if batch.answer_ids is None else batch.answer_ids * reps,
                              patch_answer_ids=None if batch.patch_answer_ids is None
                              else batch.patch_answer_ids * reps)
            m = evaluate_metric(run.metric_fn, out, rep_batch).view(reps, b)
        for j, (layer, p, idx) in enumerate(group):
            effect = (m[j] - m_clean) if run.paired else (m_clean - m[j])
            if p is None:
                scores[:, layer, :, idx] = 0.0
                scores[:, layer, 0, idx] = effect.cpu()  # all-position node: effect stored at pos 0
            else:
                scores[:, layer, p, idx] = effect.cpu()
    return scores, m_clean.cpu(), m_ref


def _mean_acts(model: HookedTransformer, batches: list[Batch], hooks: list[str], max_len: int):
    """Per-position mean activation over the examples that reach that position. → per hook [pos, node]."""
    sums, counts = None, torch.zeros(max_len, 1)
    for batch in batches:
        _, acts, _ = _cache_acts(model, batch.clean_tokens.to(model.cfg.device), hooks)
        if sums is None:
            sums = [torch.zeros(max_len, a.shape[-1]) for a in acts]
        pos = batch.clean_tokens.shape[1]
        for s, a in zip(sums, acts):
            s[:pos] += a.sum(0).cpu()
        counts[:pos] += len(batch)
    return [s / counts.clamp(min=1) for s in sums]


def as_prompts(prompts, answers=None, patch=None, patch_answers=None) -> Prompts:
    """A :class:`Prompts` from any accepted form: Prompts, JSONL-style rows, a string or list of strings."""
    if isinstance(prompts, Prompts):
        return prompts
    if isinstance(prompts, str):
        return Prompts([prompts], answers, patch, patch_answers)
    if isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], dict):
        return Prompts.from_rows(prompts)
    return Prompts(list(prompts), answers, patch, patch_answers)


def prepare_run(model: HookedTransformer, data: Prompts, basis, metric=None, baseline: str | None = None,
                rules: RelPConfig | None = None, batch_size: int = 16):
    """Validate the arguments and tokenize: ``(run, batches, tokenized, metric_name)``."""
    hooks = resolve_hooks(model, basis)
    paired = data.paired
    metric_name, metric_fn = resolve_metric(metric, paired and data.patch_answers is not None)
    if baseline is not None and paired:
        raise RelPLensError("baseline applies to unpaired data; paired data uses the patch activations")
    baseline = baseline or "zero"
    if baseline not in ("zero", "mean"):
        raise RelPLensError(f"unknown baseline {baseline!r}; choose 'zero' or 'mean'")
    tok = tokenize(model, data)
    batches = make_batches(tok, batch_size)
    mean_acts = _mean_acts(model, batches, hooks, max(tok.lengths)) if (not paired and baseline == "mean") else None
    run = _Run(model, hooks, metric_fn, paired, baseline, mean_acts, rules or RelPConfig())
    return run, batches, tok, metric_name


def attribute(
    model: HookedTransformer,
    prompts: Prompts | Sequence[dict] | str | Sequence[str],
    answers: str | Sequence | None = None,
    *,
    patch: str | Sequence[str] | None = None,
    patch_answers: str | Sequence | None = None,
    basis: str | Sequence[str] = "mlp_post",
    method: str = "relp",
    metric: str | MetricFn | None = None,
    baseline: str | None = None,
    nodes: Sequence[Node] | None = None,
    ig_steps: int = 10,
    rules: RelPConfig | None = None,
    batch_size: int = 16,
    node_batch: int = 64,
    progress: bool = True,
) -> Attribution:
    """Score every node of ``basis`` for ``metric`` on ``prompts``.

    Args:
        model: any ``HookedTransformer`` (the shipped one: :func:`relp_lens.load_model`).
        prompts: a :class:`Prompts`, JSONL-style rows (``clean_prefix``, ``patch_prefix``, ``clean_answer``,
            ``patch_answer``), a prompt string or a list of them.
        answers, patch, patch_answers: with string prompts: the clean answers (one token each), patch prompts
            (same token length as the clean ones), patch answers.
        basis: ``mlp_post`` (neurons; default), ``mlp_out``, ``attn_out``, ``resid_pre``, ``resid_post``, a
            hook name, a ``{L}`` template or a list of hook names (see :mod:`relp_lens.nodes`).
        method: ``relp`` | ``grad`` | ``ig`` | ``exact``.
        metric: ``logit_diff`` (paired default) | ``logit`` (unpaired default) | ``logprob`` | a callable.
        baseline: unpaired data only: ``zero`` (default) or ``mean`` (per-position mean over the prompts).
        nodes: for ``exact``: the ``(layer, pos, index)`` nodes to patch (``pos=None``: all positions).
        ig_steps: integration points for ``ig``.
        rules: RelP rule switches for ``relp`` (default: the paper's set, AH rule off).
        batch_size: examples per forward pass (memory is bounded by it); prompts are grouped by length.
        node_batch: rows per forward pass for ``exact`` (nodes × examples).
        progress: show a tqdm progress bar.
    """
    # -- validate everything before touching the model -------------------------------------------------
    if method not in METHODS:
        raise RelPLensError(f"unknown method {method!r}; choose from {list(METHODS)}")
    data = as_prompts(prompts, answers, patch, patch_answers)
    if method == "ig" and ig_steps < 1:
        raise RelPLensError(f"ig_steps must be >= 1, got {ig_steps}")
    if method == "exact":
        if not nodes:
            raise RelPLensError("method 'exact' needs nodes=[(layer, pos, index), ...] to patch")
        nodes = [tuple(n) for n in nodes]
        n_hooks = len(resolve_hooks(model, basis))
        for n in nodes:
            if len(n) != 3 or not 0 <= n[0] < n_hooks or (n[1] is not None and n[1] < 0) or n[2] < 0:
                raise RelPLensError(f"bad node {n!r}: expected (layer in [0, {n_hooks}), pos >= 0 or None, index >= 0)")
    run, batches, tok, metric_name = prepare_run(model, data, basis, metric, baseline, rules, batch_size)
    hooks, paired = run.hooks, run.paired
    max_len = max(tok.lengths)

    # -- run ---------------------------------------------------------------------------------------
    results: list[tuple[Batch, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for batch in tqdm(batches, desc=f"{method} attribution", disable=not progress, leave=False):
        if method in ("relp", "grad"):
            s, m, m_ref = _grad_batch(run, batch, use_relp=method == "relp")
        elif method == "ig":
            s, m, m_ref = _ig_batch(run, batch, ig_steps)
        else:
            s, m, m_ref = _exact_batch(run, batch, list(nodes), node_batch)
        results.append((batch, s, m, m_ref))

    n_node = results[0][1].shape[-1]
    for batch, s, _, _ in results:
        if s.shape[-1] != n_node:
            raise RelPLensError(f"hooks of basis {basis_name(basis)!r} have different widths; attribute them separately")
    fill = float("nan") if method == "exact" else 0.0
    scores = torch.full((len(data), len(hooks), max_len, n_node), fill)
    metric_clean = torch.zeros(len(data))
    metric_ref = torch.zeros(len(data)) if paired else None
    for batch, s, m, m_ref in results:
        idx = torch.tensor(batch.indices)
        scores[idx, :, : s.shape[2]] = s
        metric_clean[idx] = m
        if metric_ref is not None:
            metric_ref[idx] = m_ref if m_ref is not None else float("nan")
    str_tokens = [model.to_str_tokens(t) for t in tok.clean_tokens]
    return Attribution(scores=scores, str_tokens=str_tokens, hook_names=hooks, basis=basis_name(basis),
                       method=method, metric=metric_name, paired=paired, metric_clean=metric_clean,
                       metric_ref=metric_ref, prompts=data)
