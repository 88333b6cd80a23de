"""Figure functions return plotly Figures with the right traces and shapes."""

import plotly.graph_objects as go
import pytest

from relp_lens import attribute
from relp_lens.views.plots import attribution_heatmap
from helpers import AGREEMENT_ROWS, tiny_llama


def test_heatmap_shapes_and_hover():
    model = tiny_llama()
    attr = attribute(model, AGREEMENT_ROWS, progress=False)
    fig = attribution_heatmap(attr)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    hm = fig.data[0]
    assert hm.type == "heatmap"
    assert len(hm.z) == 3 and len(hm.z[0]) == 6  # layers × every position of the data
    # lengths 6, 3, 6, 3: the shared 'BOS The' from the start, the rest from the end, with token shares
    assert list(hm.x) == ["0: '<bos>'", "1: 'The'", "-4: 2 tokens, e.g. 'keys' (2/4 prompts)",
                          "-3: 2 tokens, e.g. 'to' (2/4 prompts)", "-2: 'the' 50% (2/4 prompts)",
                          "-1: 4 tokens, e.g. 'cabinet'"]
    assert "top node" in hm.text[0][0] and "from the end" in fig.layout.xaxis.title.text
    mass = attr.mean().nan_to_num(0).abs().sum(-1)
    assert hm.z[1][4] == pytest.approx(mass[1, 4].item(), rel=1e-5)
    one = attribution_heatmap(attr, example=1, value="top")
    assert len(one.data[0].z[0]) == 3 and one.data[0].zmid == 0
    with pytest.raises(ValueError, match="mass' or 'top'"):
        attribution_heatmap(attr, value="max")


def test_activations_and_heatmap_hover_show_them():
    import torch

    model = tiny_llama()
    attr = attribute(model, AGREEMENT_ROWS, progress=False)  # lengths 6, 3, 6, 3
    _, cache = model.run_with_cache(model.to_tokens(AGREEMENT_ROWS[1]["clean_prefix"]))
    one = attr.activations(model, example=1)  # [layer, pos, node]
    assert one.shape == attr.scores.shape[1:]
    cols = [0, 1, 5]  # 'BOS The parents': shared prefix, then the last column
    assert torch.allclose(one[2, cols], cache["blocks.2.mlp.hook_post"][0], atol=1e-6) and one[:, 2:5].isnan().all()
    mean = attr.activations(model)
    a0 = model.run_with_cache(model.to_tokens(AGREEMENT_ROWS[0]["clean_prefix"]))[1]["blocks.0.mlp.hook_post"][0]
    a2 = model.run_with_cache(model.to_tokens(AGREEMENT_ROWS[2]["clean_prefix"]))[1]["blocks.0.mlp.hook_post"][0]
    assert torch.allclose(mean[0, 4], (a0[4] + a2[4]) / 2, atol=1e-6)  # only the 6-token examples reach pos -2
    fig = attribution_heatmap(attr, example=1, model=model)
    top = attr.scores[1, 2, 1].abs().argmax().item()
    assert f"top node {top} " in fig.data[0].text[2][1]
    assert f"activation {cache['blocks.2.mlp.hook_post'][0, 1, top].item():+.3f}" in fig.data[0].text[2][1]


def test_other_figures():
    from relp_lens.circuits.ablation import faithfulness_sweep
    from relp_lens.circuits.edges import attribute_edges
    from relp_lens.circuits.selection import select_top_k
    from relp_lens.views.plots import circuit_graph, faithfulness_curves, steering_plot, top_neurons_bar
    from relp_lens.analysis.steering import steering_sweep

    model = tiny_llama()
    attr = attribute(model, AGREEMENT_ROWS, progress=False)
    bar = top_neurons_bar(attr, 7)
    assert isinstance(bar, go.Figure) and len(bar.data[0].y) == 7
    six = [AGREEMENT_ROWS[0], AGREEMENT_ROWS[2]]
    circuit = attribute_edges(model, select_top_k(attr, model, 12), six, progress=False)
    g = circuit_graph(circuit, attr.str_tokens[0])
    nodes = [t for t in g.data if t.name == "nodes"][0]
    assert len(nodes.x) == 12 and list(nodes.y) == [n.layer for n in circuit.nodes]
    assert any(t.mode == "lines" for t in g.data)
    column = {p: i for i, p in enumerate(attr.positions)}  # 0, 1, -4, -3, -2, -1 in reading order
    for x, n in zip(nodes.x, circuit.nodes):  # each node inside its position's cell
        assert abs(x - column[n.pos]) <= 0.4 + 1e-9
    assert list(g.layout.xaxis.ticktext) == [f"{p}: {attr.position_labels()[p]}" for p in attr.positions]
    assert len({(x, y) for x, y in zip(nodes.x, nodes.y)}) == 12  # no two nodes on the same spot
    few = circuit_graph(circuit, attr.str_tokens[0], max_edges=3)
    drawn = sum(t.x.count(None) for t in few.data if t.mode == "lines")
    assert drawn <= 3 and "strongest 3 drawn" in few.layout.title.text
    rows = faithfulness_sweep(model, attr, six, sizes=[1, 5, 20], progress=False)
    curves = faithfulness_curves(rows)
    assert len(curves.data) == 2 and list(curves.data[0].x) == [1, 5, 20]
    sweep = steering_sweep(model, "The keys", [(1, None, 3)], ["are", "is"], factors=[-1, 0, 1])
    sp = steering_plot(sweep)
    assert len(sp.data) == 2 and list(sp.data[0].x) == [-1, 0, 1]


def test_attribution_graph_layout_and_hover():
    """Tokens along the bottom, the output on top, ≤ max_nodes neurons, width by |weight|, heads on hover."""
    from relp_lens.circuits.circuit import HeadSplits, edge_key
    from relp_lens.views.plots import attribution_graph
    from relp_lens.circuits.pruning import readable_graph
    from helpers import synthetic_graph

    circuit = synthetic_graph(1)
    shown = readable_graph(circuit, 8)
    e = max(shown.edges, key=lambda e: abs(e.weight))  # a drawn neuron → neuron edge
    key = edge_key(shown.nodes[e.source].label(), shown.nodes[e.target].label())
    circuit.heads = dict(rule="last head", n_heads=4, top=12, edges={
        key: dict(residual=0.25 * e.weight, heads=[[2, 3, 0.75 * e.weight]], other=0.0)}, totals=[[2, 3, 1.0]])
    assert isinstance(circuit.heads, HeadSplits)  # the JSON form, assigned: checked and converted
    circuit.positions = dict(rule="absolute", n_shared=0, labels={0: "'The'", 1: "' keys'", 2: "' are'"})
    fig = attribution_graph(circuit, max_nodes=8)
    by_name = {t.name: t for t in fig.data if t.name}
    drawn = readable_graph(circuit, 8)
    assert len(by_name["neurons"].x) == len(drawn.nodes) <= 8
    assert set(by_name["tokens"].y) == {-1.0} and list(by_name["tokens"].text) == ["'The'", "' keys'", "' are'"]
    assert list(by_name["output"].y) == [float(len(circuit.hook_names))]
    assert set(by_name["neurons"].y) <= set(map(float, range(len(circuit.hook_names))))
    lines = [t for t in fig.data if t.meta and t.meta.get("edge")]
    io = drawn.io_edges
    assert len(lines) == len(drawn.edges) + int((io.input != 0).sum() + (io.output != 0).sum() + (io.direct != 0).sum())
    widths = [t.line.width for t in lines]
    assert widths == sorted(widths) and widths[-1] == 6.5  # strongest drawn last, at full width
    hover = " ".join(by_name["edges"].text)
    assert "heads (block.head): 2.3" in hover and "residual stream" in hover
    assert all("edges in" in h for h in by_name["neurons"].text)
