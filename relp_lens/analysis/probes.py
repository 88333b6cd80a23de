"""Hypothesis probes: how well each node's activation separates prompts by a label (ROC-AUC).

The paper tests hypotheses about single neurons this way (e.g. "mod-n neurons" in addition: activation at the
last token separates sums by their ones digit mod 2, 5 or 10; AUROC ≥ 0.9 or ≤ 0.1).

1. Tokenize the prompts as the model does (BOS when ``model.cfg.default_prepend_bos`` says so, unless
   ``prepend_bos=`` overrides it; each checked against ``n_ctx``, never truncated), batch them by token length,
   and run one no-grad forward per batch caching only the basis hooks.
2. Read every node at ``position`` of each prompt (negative: counted from the end, so prompts of different
   lengths line up at their last token; a prompt without that position is an error naming it).
3. AUROC per node = Mann–Whitney U / (n_pos · n_neg): the probability that a positive prompt's activation
   exceeds a negative one's, ties counting one half. Computed from average ranks, all nodes at once (each
   node's values are sorted once). 0.5: no separation; 1: higher on every positive; 0: lower on every one.
4. More than two classes: one-vs-rest, one map per class in :func:`classes_of` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends
from relp_lens.core import validate
from relp_lens.core.data import length_groups, prompt_tokens
from relp_lens.core.errors import RelPLensError
from relp_lens.core.nodes import resolve_hooks

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens import HookedTransformer


def classes_of(labels: Sequence[Any]) -> list[Any]:
    """The distinct labels, sorted; for two classes the second is the positive one (``True``, ``1``, …)."""
    try:
        return sorted(set(labels))
    except TypeError as e:
        raise RelPLensError("labels must be comparable (all numbers, all strings or all booleans)") from e


def auroc(values: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of each column of ``values`` ``[n, nodes]`` for the boolean ``positive`` ``[n]`` (ties: ½)."""
    positive = torch.as_tensor(positive, dtype=torch.bool)
    if values.ndim != 2 or positive.shape != (values.shape[0],):
        raise RelPLensError(f"values must be [n, nodes] and positive [n]; got {tuple(values.shape)} and "
                            f"{tuple(positive.shape)}")
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise RelPLensError(f"AUROC needs both classes: {n_pos} positive and {n_neg} negative prompts")
    x = values.double().T.contiguous()  # [nodes, n]
    if not torch.isfinite(x).all():
        raise RelPLensError("activations contain NaN or infinite values")
    ordered = x.sort(dim=1).values
    below = torch.searchsorted(ordered, x, side="left")  # values strictly smaller
    upto = torch.searchsorted(ordered, x, side="right")  # values smaller or equal
    ranks = (below + upto + 1).double() / 2  # 1-based average ranks
    u = ranks[:, positive].sum(1) - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).float()


def node_values(model: HookedTransformer, prompts: Sequence[str], *, basis: str | Sequence[str] = "mlp_post",
                position: int = -1, batch_size: int = 16, progress: bool = True,
                prepend_bos: bool | None = None) -> torch.Tensor:
    """Each prompt's activations at ``position``: ``[n_prompts, layer, width]`` (float32, on the CPU).

    ``prepend_bos``: prompts start with BOS (True) or not (False); None: as the model does.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise RelPLensError("no prompts")
    validate.positive_int(batch_size, "batch_size")
    hooks = resolve_hooks(model, basis, live=False)  # activations read only
    tokens = [prompt_tokens(model, p, f"prompt {i}", prepend_bos) for i, p in enumerate(prompts)]
    for i, t in enumerate(tokens):
        if not -len(t) <= position < len(t):
            raise RelPLensError(f"prompt {i} ({prompts[i]!r}) has {len(t)} tokens: no position {position}")
    out: torch.Tensor | None = None
    groups = length_groups(tokens, batch_size)
    wanted = set(hooks)
    for idx in tqdm(groups, desc="probe activations", disable=not progress, leave=False):
        batch = torch.stack([tokens[i] for i in idx])
        _, got = backends.capture(model, batch, hooks,  # each value kept as [batch, width]
                                  keep=lambda x: x.detach()[:, position].reshape(len(idx), -1).float().cpu())
        acts = torch.stack([got[h] for h in hooks], 1)  # [batch, layer, width]
        if out is None:
            out = torch.zeros(len(prompts), *acts.shape[1:])
        out[idx] = acts
    return out


def neuron_auroc(model: HookedTransformer, prompts: Sequence[str], labels: Sequence[Any], *,
                 basis: str | Sequence[str] = "mlp_post", position: int = -1, batch_size: int = 16,
                 progress: bool = True, prepend_bos: bool | None = None) -> torch.Tensor:
    """ROC-AUC of every node's activation at ``position`` for ``labels`` (one per prompt; ``prepend_bos`` as
    :func:`node_values`).

    Two classes: ``[layer, width]``, the second of :func:`classes_of` being positive (``True``, ``1``, …).
    More: ``[n_classes, layer, width]``, one-vs-rest in :func:`classes_of` order.
    """
    labels = list(labels)
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(labels) != len(prompts):
        raise RelPLensError(f"{len(labels)} labels for {len(prompts)} prompts")
    classes = classes_of(labels)
    if len(classes) < 2:
        raise RelPLensError(f"AUROC needs at least two classes; every label is {classes[0]!r}" if classes
                            else "no labels")
    values = node_values(model, prompts, basis=basis, position=position, batch_size=batch_size,
                         progress=progress, prepend_bos=prepend_bos)  # [n, layer, width]
    flat = values.reshape(len(prompts), -1)
    maps = [auroc(flat, torch.tensor([l == c for l in labels])).reshape(values.shape[1:])
            for c in (classes[1:] if len(classes) == 2 else classes)]
    return maps[0] if len(classes) == 2 else torch.stack(maps)


def selective_neurons(auc: torch.Tensor, *, threshold: float = 0.9, k: int | None = 20) -> list[tuple[int, int, float]]:
    """Nodes of a ``[layer, width]`` AUROC map with AUROC ≥ ``threshold`` or ≤ 1 − ``threshold`` (the paper's
    0.9 / 0.1), most selective first, as ``(layer, index, auroc)``; at most ``k`` (``None``: all)."""
    if auc.ndim != 2:
        raise RelPLensError(f"expected a [layer, width] AUROC map, got shape {tuple(auc.shape)}")
    if not 0.5 < threshold <= 1:
        raise RelPLensError(f"threshold must be in (0.5, 1], got {threshold}")
    hit = (auc >= threshold) | (auc <= 1 - threshold)
    found = [(l, i, float(auc[l, i])) for l, i in hit.nonzero().tolist()]
    found.sort(key=lambda x: -abs(x[2] - 0.5))
    return found if k is None else found[:k]


def auroc_heatmap(auc: torch.Tensor, *, title: str = "AUROC by layer", bins: int = 20) -> go.Figure:
    """Per layer, how many nodes fall in each AUROC bin (log colour), with the best node's AUROC on hover."""
    import plotly.graph_objects as go

    if auc.ndim != 2:
        raise RelPLensError(f"expected a [layer, width] AUROC map, got shape {tuple(auc.shape)}")
    edges = torch.linspace(0, 1, bins + 1)
    counts = torch.stack([torch.histc(row.float(), bins=bins, min=0, max=1) for row in auc])  # [layer, bins]
    best = [max(range(auc.shape[1]), key=lambda i, r=row: abs(float(r[i]) - 0.5)) for row in auc]
    hover = [[f"layer {l}, AUROC {float(edges[b]):.2f}–{float(edges[b + 1]):.2f}: {int(counts[l, b])} nodes"
              f"<br>most selective: index {best[l]} ({float(auc[l, best[l]]):.3f})" for b in range(bins)]
             for l in range(auc.shape[0])]
    fig = go.Figure(go.Heatmap(z=(counts + 1).log10().tolist(), x=[f"{float(e):.2f}" for e in edges[:-1]],
                               y=list(range(auc.shape[0])), text=hover, hoverinfo="text",
                               colorscale="Viridis", colorbar=dict(title="log10(1 + nodes)")))
    fig.update_layout(title=title, xaxis_title="AUROC (bin start)", yaxis_title="layer")
    return fig
