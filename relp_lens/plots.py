"""Plotly views of attributions. Every function returns a ``plotly.graph_objects.Figure``.

- :func:`attribution_heatmap`: layers × token positions; a cell is the summed |score| of its nodes (the
  attribution mass) or the single top node's score; hover names the top neuron, its score and activation.
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from relp_lens.attribution import Attribution


def attribution_heatmap(attr: Attribution, *, example: int | None = None, value: str = "mass",
                        title: str | None = None) -> go.Figure:
    """Heatmap of one example (or the mean over examples, on the first example's tokens).

    ``value``: ``"mass"`` (Σ|score| over the nodes of a cell) or ``"top"`` (signed score of the top node).
    """
    if value not in ("mass", "top"):
        raise ValueError(f"value must be 'mass' or 'top', got {value!r}")
    ex = 0 if example is None else example
    s = attr.mean() if example is None else attr.scores[example]  # [layer, pos, node]
    length = attr.lengths[ex]
    s = s[:, :length].nan_to_num(0.0)
    top_val, top_idx = s.abs().max(-1)  # [layer, pos]
    signed_top = torch.gather(s, -1, top_idx[..., None])[..., 0]
    z = s.abs().sum(-1) if value == "mass" else signed_top
    tokens = [f"{i}: {t!r}" for i, t in enumerate(attr.str_tokens[ex][:length])]
    layers = [h.replace(".hook_", ":") for h in attr.hook_names]
    hover = [[f"{layers[l]} @ {tokens[p]}<br>top node {int(top_idx[l, p])} score {float(signed_top[l, p]):+.4f}"
              f"<br>mass {float(s[l, p].abs().sum()):.4f}" for p in range(length)] for l in range(len(layers))]
    fig = go.Figure(go.Heatmap(
        z=z.tolist(), x=tokens, y=layers, text=hover, hoverinfo="text",
        colorscale="Blues" if value == "mass" else "RdBu", zmid=None if value == "mass" else 0.0,
        colorbar=dict(title="Σ|score|" if value == "mass" else "score"),
    ))
    where = "mean over examples" if example is None else f"example {example}"
    fig.update_layout(
        title=title or f"{attr.method} attribution on {attr.basis} ({attr.metric}, {where})",
        xaxis_title="token position", yaxis_title="layer", height=max(400, 18 * len(layers) + 150),
    )
    return fig
