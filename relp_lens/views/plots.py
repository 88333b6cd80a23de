"""Plotly views of attributions. Every function returns a ``plotly.graph_objects.Figure``.

- :func:`attribution_heatmap`: layers × token positions; a cell is the summed |score| of its nodes (the
  attribution mass) or the single top node's score; hover names the top neuron and its score.
- :func:`top_neurons_bar`: the top nodes as bars.
- :func:`circuit_graph`: every circuit node placed by token position (x) and layer (y), sized and coloured
  by score, edges drawn by weight.
- :func:`attribution_graph`: the readable graph — a pruned graph of a few dozen neurons
  (:func:`relp_lens.circuits.pruning.readable_graph`), token embeddings along the bottom and the output at the top,
  edge width by |weight|; hover shows a node's label, score and card summary and an edge's weight and top
  heads; with :data:`HIGHLIGHT_JS` (the report adds it) hovering a node highlights its incoming and outgoing
  edges.
- :func:`faithfulness_curves`: faithfulness/completeness against circuit size, several bases/methods.
- :func:`steering_plot`: token probabilities against the steering factor.
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from relp_lens.core import nodes
from relp_lens.core.attribution import Attribution


def attribution_heatmap(attr: Attribution, *, example: int | None = None, value: str = "mass",
                        title: str | None = None, model=None) -> go.Figure:
    """Heatmap of one example, or of the mean over examples at every position of the data.

    Positions follow :mod:`relp_lens.core.positions` (counted from the end when prompt lengths differ); the
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
    width = s.shape[-1]
    spliced = [h.endswith(nodes.SAE_NODES) for h in attr.hook_names]  # a dictionary's last node: its error
    hover = [[f"{layers[l]} @ {tokens[p]}<br>top node {nodes.unit_label(attr.hook_names[l], int(top_idx[l, p]), width)}"
              f" score {float(signed_top[l, p]):+.4f}"
              + ("" if act is None else f", activation {float(act[l, p]):+.3f}")
              + f"<br>mass {float(s[l, p].abs().sum()):.4f}"
              + (f", error node {float(s[l, p, -1]):+.4f}" if spliced[l] else "") for p in range(n_pos)]
             for l in range(len(layers))]
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
    """Horizontal bars of the ``k`` nodes with the largest |mean score| (labels ``L{layer}/{index}@pos``;
    ``L{layer}/f{index}`` a dictionary latent, ``L{layer}/err`` its error node),
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
    hover = [f"<b>{circuit.node_label(n)}</b><br>{circuit.node_hook(n)}<br>pos {'all' if n.pos is None else n.pos}"
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
                      yaxis=dict(title="layer", tickvals=list(range(len(circuit.hook_names))),
                                 ticktext=[str(l) for l in nodes.layer_numbers(circuit.hook_names)]), height=700,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig


# Hovering a node shows only its own edges (report pages pass it as plotly's post_script).
HIGHLIGHT_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !gd.on) { return; }
  var edgeIdx = [], base = [];
  gd.data.forEach(function (t, i) { if (t.meta && t.meta.edge) { edgeIdx.push(i); base.push(t.opacity); } });
  gd.on('plotly_hover', function (ev) {
    var id = ev.points[0].customdata;
    if (typeof id !== 'string' || edgeIdx.length === 0) { return; }
    var op = edgeIdx.map(function (i) { var m = gd.data[i].meta; return (m.s === id || m.t === id) ? 1.0 : 0.05; });
    Plotly.restyle(gd, {opacity: op}, edgeIdx);
  });
  gd.on('plotly_unhover', function () { if (edgeIdx.length) { Plotly.restyle(gd, {opacity: base}, edgeIdx); } });
})();
"""


GROUP_COLOURS = ["#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f"]


def _noun(circuit) -> str:
    """What a circuit's nodes are, for titles: neurons, dictionary features (latents and error nodes), or nodes."""
    hooks = circuit.hook_names
    if hooks and all(h.endswith(nodes.SAE_NODES) for h in hooks):
        return "features"
    return "neurons" if hooks and all(h.endswith("mlp.hook_post") for h in hooks) else "nodes"


def _groups(circuit) -> tuple[list, list[int]]:
    """The circuit's neuron groups (none without a ``groups`` field) and each node's group number (-1: none)."""
    if circuit.groups is None:
        return [], [-1] * len(circuit.nodes)
    groups = circuit.groups
    return groups.groups, groups.assignment([n.label() for n in circuit.nodes])


def attribution_graph(circuit, *, max_nodes: int = 40, cards: dict | None = None,
                      str_tokens: list[str] | None = None) -> go.Figure:
    """The readable attribution graph of a circuit (see :func:`relp_lens.circuits.pruning.readable_graph`).

    Token embeddings sit along the bottom (one node per position, labelled by its token), neurons at
    (position, layer), the output at the top; edge width ∝ |weight|, blue positive, red negative. Hover: a
    node's label, token, score and, from ``cards`` (``{(block, index): text}``), its card summary; an edge's
    (marker at its middle) weight and its top heads when the circuit has head splits
    (:func:`relp_lens.circuits.heads.attribute_head_splits`). Neuron groups (:func:`relp_lens.group_neurons`) outline
    their members in one colour each (legend) and name the group on hover.
    """
    from relp_lens.circuits.circuit import OUT, edge_key, embedding_key
    from relp_lens.circuits.pruning import readable_graph

    g = readable_graph(circuit, max_nodes)
    noun = _noun(g)
    shown_layers = nodes.layer_numbers(g.hook_names)  # blocks (a basis of some layers names them as the model does)
    order, labels = _position_axis(g, str_tokens)
    io = g.io_edges
    if io is not None:
        order = sorted(set(order) | set(io.positions), key=lambda p: (p < 0, p))
    column = {p: i for i, p in enumerate(order)}
    n_pos = len(order)
    n_layers = len(g.hook_names)
    cells: dict[tuple[int, int], list[int]] = {}
    for i, n in enumerate(g.nodes):
        cells.setdefault((n_pos if n.pos is None else column[n.pos], n.layer), []).append(i)
    pos_xy: dict[str, tuple[float, float]] = {}
    for (x, layer), members in cells.items():
        members.sort(key=lambda i: -abs(g.nodes[i].score))
        for rank, i in enumerate(members):  # 0, +1, −1, +2, … spread over ±0.4 of the cell
            slot = (rank + 1) // 2 * (1 if rank % 2 else -1)
            pos_xy[f"n{i}"] = (x + (0.0 if len(members) == 1 else 0.8 * slot / len(members)), float(layer))
    names = {f"n{i}": n.label() for i, n in enumerate(g.nodes)}  # identities: head splits are keyed by them
    shown = {f"n{i}": g.node_label(n) for i, n in enumerate(g.nodes)}
    links: list[tuple[str, str, float]] = [(f"n{e.source}", f"n{e.target}", e.weight) for e in g.edges]
    if io is not None:
        for r, p in enumerate(io.positions):
            pos_xy[f"e{r}"] = (float(column[p]), -1.0)
            names[f"e{r}"] = embedding_key(p)
        pos_xy[OUT], names[OUT] = (float(n_pos - 1), float(n_layers)), OUT  # above the last token
        links += [(f"e{r}", f"n{j}", float(io.input[r, j])) for r, j in io.input.nonzero().tolist()]
        links += [(f"n{j}", OUT, float(w)) for j, w in enumerate(io.output.tolist()) if w]
        links += [(f"e{r}", OUT, float(w)) for r, w in enumerate(io.direct.tolist()) if w]
    splits = g.heads.edges if g.heads is not None else {}
    wmax = max((abs(w) for *_, w in links), default=1.0) or 1.0
    traces = []
    mid_x, mid_y, mid_text = [], [], []
    for s, t, w in sorted(links, key=lambda x: abs(x[2])):  # strongest drawn last, on top
        (x0, y0), (x1, y1) = pos_xy[s], pos_xy[t]
        colour = "rgb(31,119,180)" if w >= 0 else "rgb(214,39,40)"
        traces.append(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color=colour, width=0.5 + 6 * abs(w) / wmax), opacity=0.55,
                                 meta=dict(edge=True, s=s, t=t)))
        text = f"{shown.get(s, names[s])} → {shown.get(t, names[t])}<br>weight {w:+.4g}"
        if t == OUT and io.targets:  # the metric's edge = Σ sign · the edges into each target logit
            per = (io.target_output if s.startswith("n") else io.target_direct)[:, int(s[1:])]  # [target]
            text += "".join(f"<br>into {name} {float(v):+.4g}" for name, v in zip(io.targets, per))
        split = splits.get(edge_key(names[s], names[t]))
        if split:
            heads = " · ".join(f"{l}.{h} {v:+.3g}" for l, h, v in split.heads[:4])
            text += f"<br>heads (block.head): {heads or 'none'}<br>residual stream {split.residual:+.3g}"
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
        mid_text.append(text)
    traces.append(go.Scatter(x=mid_x, y=mid_y, mode="markers", text=mid_text, hoverinfo="text", name="edges",
                             marker=dict(size=5, color="rgba(80,80,80,0.35)"), showlegend=False))
    scores = [n.score for n in g.nodes]
    biggest = max((abs(v) for v in scores), default=1.0) or 1.0
    n_in = {k: 0 for k in pos_xy}
    n_out = dict(n_in)
    for s, t, _ in links:
        n_out[s] += 1
        n_in[t] += 1
    groups, group_of = _groups(g)
    hover = []
    for i, n in enumerate(g.nodes):
        tok = f" {labels[n.pos]}" if n.pos is not None and n.pos in labels else ""
        card = (cards or {}).get((shown_layers[n.layer], n.index))  # keyed by the layer shown
        grp = groups[group_of[i]] if group_of[i] >= 0 else None
        hover.append(f"<b>{g.node_label(n)}</b>{tok}<br>{g.node_hook(n)}<br>score {n.score:+.4g}"
                     f"<br>{n_in[f'n{i}']} edges in, {n_out[f'n{i}']} out" + (f"<br>{card}" if card else "")
                     + (f"<br>group {grp.name}: {grp.label}" if grp else ""))
    outline = [GROUP_COLOURS[k % len(GROUP_COLOURS)] if k >= 0 else "black" for k in group_of]
    for k, grp in enumerate(groups):  # legend entries: one per group, drawn as its outline colour
        traces.append(go.Scatter(x=[None], y=[None], mode="markers", name=f"{grp.name} ({len(grp.members)})",
                                 marker=dict(size=11, color="white", line=dict(width=3, color=GROUP_COLOURS[
                                     k % len(GROUP_COLOURS)])), hoverinfo="skip"))
    traces.append(go.Scatter(
        x=[pos_xy[f"n{i}"][0] for i in range(len(g.nodes))], y=[pos_xy[f"n{i}"][1] for i in range(len(g.nodes))],
        mode="markers", text=hover, hoverinfo="text", name=noun, customdata=[f"n{i}" for i in range(len(g.nodes))],
        marker=dict(size=[8 + 22 * abs(v) / biggest for v in scores], color=scores, colorscale="RdBu", cmid=0.0,
                    symbol=["x" if g.is_error(n) else "circle" for n in g.nodes],
                    colorbar=dict(title="score"),
                    line=dict(width=[3 if k >= 0 else 0.5 for k in group_of], color=outline))))
    if io is not None:
        emb = [k for k in pos_xy if k.startswith("e")]
        traces.append(go.Scatter(
            x=[pos_xy[k][0] for k in emb], y=[pos_xy[k][1] for k in emb], mode="markers+text", name="tokens",
            text=[labels.get(io.positions[int(k[1:])], str(io.positions[int(k[1:])])) for k in emb],
            textposition="bottom center", customdata=emb, hoverinfo="text",
            hovertext=[f"embedding at {names[k]}: {labels.get(io.positions[int(k[1:])], '?')}<br>"
                       f"{n_out[k]} edges out" for k in emb],
            marker=dict(size=12, symbol="square", color="lightgrey", line=dict(width=1, color="black"))))
        traces.append(go.Scatter(
            x=[pos_xy[OUT][0]], y=[pos_xy[OUT][1]], mode="markers+text", name="output", text=[g.metric],
            textposition="top center", customdata=[OUT], hoverinfo="text",
            hovertext=[f"output: {g.metric}" + ("" if io.metric is None else f" (mean {io.metric:+.4g})")
                       + f"<br>{n_in[OUT]} edges in"],
            marker=dict(size=16, symbol="diamond", color="gold", line=dict(width=1, color="black"))))
    fig = go.Figure(traces)
    ticktext = [f"{labels[p]}" if p in labels else str(p) for p in order] + (
        ["all"] if any(n.pos is None for n in g.nodes) else [])
    y_ticks = ([-1] if io is not None else []) + list(range(n_layers)) + ([n_layers] if io is not None else [])
    y_text = (["tokens"] if io is not None else []) + [str(l) for l in shown_layers] + (
        ["output"] if io is not None else [])
    how = (f"top edges leaving ≤ {max_nodes} {noun} with an input and an output edge" if io is not None
           else f"top edges between ≤ {max_nodes} {noun}" if circuit.edges else f"top {max_nodes} nodes, no edges")
    errors = sum(g.is_error(n) for n in g.nodes)
    fig.update_layout(
        title=f"attribution graph: {len(g.nodes)} of {len(circuit.nodes)} {noun}, {len(links)} edges ({how})"
              + (f"<br>{errors} error nodes (×): what the dictionaries do not reconstruct" if errors else ""),
        xaxis=dict(title="token position" + (" (from the end)" if g.positions.get("rule") == "end" else ""),
                   tickvals=list(range(len(ticktext))), ticktext=ticktext, zeroline=False),
        yaxis=dict(title="layer", tickvals=y_ticks, ticktext=y_text, zeroline=False),
        height=750, hovermode="closest", legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig


def faithfulness_curves(rows: list) -> go.Figure:
    """Faithfulness (solid) and completeness (dashed) against circuit size, one colour per basis · method.

    Args:
        rows: the rows of :func:`relp_lens.circuits.ablation.faithfulness_sweep` (several sweeps may be
            concatenated; their dict form works too).

    Returns:
        The figure.
    """
    rows = [r if isinstance(r, dict) else r.to_dict() for r in rows]
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
    """Token probabilities against the steering factor (output of :func:`relp_lens.analysis.steering.steering_sweep`)."""
    fig = go.Figure([go.Scatter(x=sweep["factors"], y=p, mode="lines+markers", name=repr(t))
                     for t, p in sweep["probs"].items()])
    fig.update_layout(title=f"steering ({sweep.get('mode', 'scale')})", xaxis_title="factor",
                      yaxis_title="probability at the last position")
    return fig


def group_steering_plot(result: dict) -> go.Figure:
    """A group's steering sweep (:func:`relp_lens.analysis.steering.group_steering`): per token, the group's curve and
    the random groups' mean ± one standard deviation as a band."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    fig = go.Figure()
    x = list(result["factors"])
    for j, (t, p) in enumerate(result["probs"].items()):
        c = colors[j % len(colors)]
        mean, std = result.get("random_mean", {}).get(t), result.get("random_std", {}).get(t)
        if mean:
            upper = [m + s for m, s in zip(mean, std)]
            lower = [max(0.0, m - s) for m, s in zip(mean, std)]
            fig.add_trace(go.Scatter(x=x + x[::-1], y=upper + lower[::-1], fill="toself", fillcolor=c, opacity=0.15,
                                     line=dict(width=0), hoverinfo="skip", showlegend=False))
            fig.add_trace(go.Scatter(x=x, y=mean, mode="lines", line=dict(color=c, dash="dot"),
                                     name=f"{t!r}, {len(result['random'][t])} random groups"))
        fig.add_trace(go.Scatter(x=x, y=p, mode="lines+markers", line=dict(color=c), name=f"{t!r}, {result['group']}"))
    fig.update_layout(title=f"steering group {result['group']} ({result['size']} neurons) × factor",
                      xaxis_title="factor (activation multiplier)", yaxis_title="probability at the last position")
    return fig
