"""Plotly views of attributions. Every function returns a ``plotly.graph_objects.Figure``.

- :func:`attribution_heatmap`: layers × token positions; a cell is the summed |score| of its nodes (the
  attribution mass) or the single top node's score; hover names the top neuron and its score.
- :func:`top_neurons_bar`: the top nodes as bars.
- :func:`circuit_graph`: nodes placed by token position (x) and layer (y), sized and coloured by score,
  edges drawn by weight.
- :func:`faithfulness_curves`: faithfulness/completeness against circuit size, several bases/methods.
- :func:`steering_plot`: token probabilities against the steering factor.
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from relp_lens.attribution import Attribution


def attribution_heatmap(attr: Attribution, *, example: int | None = None, value: str = "mass",
                        title: str | None = None, model=None) -> go.Figure:
    """Heatmap of one example, or of the mean over examples at every position of the data.

    Positions follow :mod:`relp_lens.positions` (counted from the end when prompt lengths differ); the
    axis shows the token at each position — the most common one and its share when prompts differ there.
    ``value``: ``"mass"`` (Σ|score| over the nodes of a cell) or ``"top"`` (signed score of the top node).
    With ``model``, the hover also shows the top node's clean activation (one no-grad forward pass).
    """
    if value not in ("mass", "top"):
        raise ValueError(f"value must be 'mass' or 'top', got {value!r}")
    if example is None:
        s = attr.mean()  # [layer, pos, node]
        cols = torch.arange(attr.n_positions)
        labels = attr.position_labels()
        tokens = [f"{p}: {labels[p]}" for p in attr.positions]
    else:
        length = attr.lengths[example]
        cols = attr.alignment.columns(length)
        s = attr._per_example("a one-example heatmap")[example][:, cols]
        tokens = [f"{p}: {t!r}" for p, t in zip([attr.positions[c] for c in cols.tolist()], attr.str_tokens[example])]
    s = s.nan_to_num(0.0)
    top_val, top_idx = s.abs().max(-1)  # [layer, pos]
    signed_top = torch.gather(s, -1, top_idx[..., None])[..., 0]
    z = s.abs().sum(-1) if value == "mass" else signed_top
    layers = [h.replace(".hook_", ":") for h in attr.hook_names]
    act = None
    if model is not None:
        acts = attr.activations(model, example)[:, cols]  # [layer, pos, node]
        act = torch.gather(acts, -1, top_idx[..., None])[..., 0]  # [layer, pos]
    n_pos = len(tokens)
    hover = [[f"{layers[l]} @ {tokens[p]}<br>top node {int(top_idx[l, p])} score {float(signed_top[l, p]):+.4f}"
              + ("" if act is None else f", activation {float(act[l, p]):+.3f}")
              + f"<br>mass {float(s[l, p].abs().sum()):.4f}" for p in range(n_pos)] for l in range(len(layers))]
    fig = go.Figure(go.Heatmap(
        z=z.tolist(), x=tokens, y=layers, text=hover, hoverinfo="text",
        colorscale="Blues" if value == "mass" else "RdBu", zmid=None if value == "mass" else 0.0,
        colorbar=dict(title="Σ|score|" if value == "mass" else "score"),
    ))
    where = "mean over examples" if example is None else f"example {example}"
    axis = "token position (from the end: prompts differ in length)" if attr.alignment.end_aligned else "token position"
    fig.update_layout(
        title=title or f"{attr.method} attribution on {attr.basis} ({attr.metric}, {where})",
        xaxis_title=axis, yaxis_title="layer", height=max(400, 18 * len(layers) + 150),
    )
    return fig


def top_neurons_bar(attr: Attribution, k: int = 20, *, aggregate_pos: bool = True,
                    everywhere: bool = True) -> go.Figure:
    """Horizontal bars of the ``k`` nodes with the largest |mean score| (labels ``L{layer}/{index}@pos``),
    at positions every prompt has unless ``everywhere=False`` (as circuit selection does)."""
    top = attr.top_k(k, aggregate_pos=aggregate_pos, everywhere=everywhere)
    labels = [attr.node_label(node) for node, _ in top][::-1]
    scores = [s for _, s in top][::-1]
    fig = go.Figure(go.Bar(x=scores, y=labels, orientation="h",
                           marker_color=["#d62728" if s < 0 else "#1f77b4" for s in scores],
                           hovertemplate="%{y}<br>score %{x:+.4f}<extra></extra>"))
    fig.update_layout(title=f"top {len(top)} {attr.basis} nodes ({attr.method}, {attr.metric})",
                      xaxis_title="mean score", height=max(350, 22 * len(top) + 120))
    return fig


def _position_axis(circuit, str_tokens: list[str] | None) -> tuple[list[int], dict[int, str]]:
    """Positions in reading order (start-counted, then end-counted) and a token label for each."""
    labels = dict(circuit.positions.get("labels") or {})
    if not labels and str_tokens:
        labels = {p: repr(t) for p, t in enumerate(str_tokens)}
    used = {n.pos for n in circuit.nodes if n.pos is not None}
    order = sorted(set(labels) | used, key=lambda p: (p < 0, p))
    return order, labels


def circuit_graph(circuit, str_tokens: list[str] | None = None, *, max_edges: int = 500) -> go.Figure:
    """Circuit nodes at (token position, layer), size ∝ |score|, colour = signed score; edges by |weight|.

    Positions come from the circuit (its token labels; counted from the end when the build prompts
    differed in length), or ``str_tokens`` for a circuit without them. Nodes sharing a (layer, position)
    cell are spread across the cell, strongest in the middle, so each one can be hovered. Only the
    ``max_edges`` strongest edges are drawn (all of them stay in the circuit). Position-aggregated nodes
    (``pos=None``) sit in an "all" column right of the last position.
    """
    order, labels = _position_axis(circuit, str_tokens)
    column = {p: i for i, p in enumerate(order)}
    n_pos = len(order)
    cells: dict[tuple[int, int], list[int]] = {}
    for i, n in enumerate(circuit.nodes):
        cells.setdefault((n_pos if n.pos is None else column[n.pos], n.layer), []).append(i)
    xs, ys = [0.0] * len(circuit.nodes), [float(n.layer) for n in circuit.nodes]
    for (x, _), members in cells.items():
        members.sort(key=lambda i: -abs(circuit.nodes[i].score))
        for rank, i in enumerate(members):  # 0, +1, −1, +2, −2, … spread over ±0.4 of the cell
            slot = (rank + 1) // 2 * (1 if rank % 2 else -1)
            xs[i] = x + (0.0 if len(members) == 1 else 0.8 * slot / len(members))
    scores = [n.score for n in circuit.nodes]
    biggest = max((abs(s) for s in scores), default=1.0) or 1.0
    traces = []
    edges = sorted(circuit.edges, key=lambda e: -abs(e.weight))[:max_edges]
    if edges:
        wmax = abs(edges[0].weight) or 1.0
        for sign, colour in ((1, "rgba(31,119,180,0.35)"), (-1, "rgba(214,39,40,0.35)")):
            ex, ey = [], []
            for e in edges:
                if (e.weight >= 0) == (sign > 0) and abs(e.weight) >= 0.01 * wmax:
                    ex += [xs[e.source], xs[e.target], None]
                    ey += [ys[e.source], ys[e.target], None]
            traces.append(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color=colour, width=1),
                                     hoverinfo="skip", name="positive edges" if sign > 0 else "negative edges"))
    hover = [f"{circuit.hook_names[n.layer]}[{n.index}]<br>pos {'all' if n.pos is None else n.pos}"
             + (f" {labels[n.pos]}" if n.pos is not None and n.pos in labels else "")
             + f"<br>score {n.score:+.4f}" for n in circuit.nodes]
    traces.append(go.Scatter(
        x=xs, y=ys, mode="markers", text=hover, hoverinfo="text", name="nodes",
        marker=dict(size=[6 + 24 * abs(s) / biggest for s in scores], color=scores, colorscale="RdBu",
                    cmid=0.0, colorbar=dict(title="score"), line=dict(width=0.5, color="black")),
    ))
    ticks = list(range(n_pos)) + ([n_pos] if any(n.pos is None for n in circuit.nodes) else [])
    ticktext = [f"{p}: {labels[p]}" if p in labels else str(p) for p in order]
    ticktext += ["all"] if len(ticks) > n_pos else []
    fig = go.Figure(traces)
    shown = f", strongest {len(edges)} drawn" if len(edges) < len(circuit.edges) else ""
    axis = ("token position (from the end: prompts differ in length)" if circuit.positions.get("rule") == "end"
            else "token position")
    fig.update_layout(title=f"circuit: {len(circuit.nodes)} {circuit.basis} nodes, {len(circuit.edges)} edges{shown}",
                      xaxis=dict(title=axis, tickvals=ticks, ticktext=ticktext),
                      yaxis=dict(title="layer"), height=700,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig


def faithfulness_curves(rows: list[dict]) -> go.Figure:
    """Faithfulness (solid) and completeness (dashed) against circuit size, one colour per basis · method.

    ``rows``: output of :func:`relp_lens.ablation.faithfulness_sweep` (several sweeps may be concatenated).
    """
    groups: dict[str, list[dict]] = {}
    for r in rows:
        name = f"{r.get('basis', '?')} · {r.get('method', '?')}" + (f" · {r['ablation']} abl." if "ablation" in r else "")
        groups.setdefault(name, []).append(r)
    fig = go.Figure()
    for i, (name, rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["n_nodes"])
        colour = f"hsl({(i * 67) % 360}, 65%, 45%)"
        fig.add_trace(go.Scatter(x=[r["n_nodes"] for r in rs], y=[r["faithfulness"] for r in rs],
                                 mode="lines+markers", name=f"{name} faithfulness", line=dict(color=colour)))
        fig.add_trace(go.Scatter(x=[r["n_nodes"] for r in rs], y=[r["completeness"] for r in rs],
                                 mode="lines+markers", name=f"{name} completeness",
                                 line=dict(color=colour, dash="dash")))
    sizes = sorted({r["n_nodes"] for r in rows if r["n_nodes"] > 0})
    fig.update_layout(title="faithfulness / completeness vs circuit size",
                      xaxis=dict(type="log", title="nodes in the circuit", tickvals=sizes,
                                 ticktext=[str(k) for k in sizes]),
                      yaxis_title="fraction of the metric recovered")
    return fig


def steering_plot(sweep: dict) -> go.Figure:
    """Token probabilities against the steering factor (output of :func:`relp_lens.steering.steering_sweep`)."""
    fig = go.Figure([go.Scatter(x=sweep["factors"], y=p, mode="lines+markers", name=repr(t))
                     for t, p in sweep["probs"].items()])
    fig.update_layout(title=f"steering ({sweep.get('mode', 'scale')})", xaxis_title="factor",
                      yaxis_title="probability at the last position")
    return fig
