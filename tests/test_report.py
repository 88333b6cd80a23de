"""The HTML report: contents, self-containment, errors, and drawing in a real headless browser."""

import html
import json
import re

import pytest

import relp_lens
from relp_lens import RelPLensError
from relp_lens.views.report import ReportInputs, render_report, report_inputs, write_report
from relp_lens.analysis.steering import steering_sweep
from relp_lens.circuits.heads import attribute_head_splits
from relp_lens.circuits.io_edges import attribute_io_edges
from relp_lens.circuits.pruning import readable_graph
from helpers import find_chromium, js_errors, render_in_browser, tiny_llama


def _row(plural: str, singular: str, rest: str, clean_plural: bool) -> dict:
    clean, patch = (plural, singular) if clean_plural else (singular, plural)
    answers = (" are", " is") if clean_plural else (" is", " are")
    return dict(clean_prefix=f"The {clean} {rest}", patch_prefix=f"The {patch} {rest}",
                clean_answer=answers[0], patch_answer=answers[1])


# one template (same length): position-specific circuit nodes exist in every prompt
BUILD = [_row("keys", "key", "to the cabinet", True), _row("authors", "author", "near the doctors", False),
         _row("parents", "parent", "of the doctor", True), _row("doctors", "doctor", "by the cabinets", False)]
HELD_OUT = [_row("authors", "author", "of the key", True), _row("cabinets", "cabinet", "near the parents", False)]


@pytest.fixture(scope="module")
def traced():
    model = tiny_llama()
    build, held_out = BUILD, HELD_OUT
    attr = relp_lens.attribute(model, build, progress=False)
    circuit = relp_lens.select_top_k(attr, model, 15, task="agreement")
    circuit.evaluation = relp_lens.evaluate_circuit(model, circuit, held_out)
    circuit = relp_lens.attribute_edges(model, circuit, build, progress=False)
    circuit = attribute_io_edges(model, circuit, build, progress=False)
    circuit = attribute_head_splits(model, circuit, build, max_nodes=8, progress=False)  # the drawn edges
    top = [(n.layer, n.pos, n.index) for n in circuit.nodes[:3]]
    sweep = steering_sweep(model, [r["clean_prefix"] for r in build], top, [" are", " is"], factors=(-2, 0, 2))
    inputs = report_inputs(model, attr, circuit, held_out=held_out, task="agreement", n_cards=4, sizes=(2, 5, 10),
                           steering=sweep)
    return model, attr, circuit, inputs


def _figure_divs(page: str) -> dict[str, str]:
    """The markup of each figure (``fig-0``, ``fig-1``, …), up to the next figure or the node table."""
    starts = [(m.group(1), m.start()) for m in re.finditer(r'<div id="(fig-\d+)"', page)]
    end = page.find("<table id=\"nodes\"")
    return {name: page[s: (starts[i + 1][1] if i + 1 < len(starts) else end)] for i, (name, s) in enumerate(starts)}


def test_report_inputs(traced):
    model, attr, circuit, inputs = traced
    assert inputs.accuracy.startswith("accuracy ") and "4 prompts" in inputs.accuracy
    assert sorted(r.n_nodes for r in inputs.curves) == [2, 5, 10, 15]  # the circuit's own size is added
    ranked = sorted(circuit.nodes, key=lambda n: -abs(n.score))
    expected = list(dict.fromkeys((n.layer, n.index) for n in ranked))[:4]
    assert [(c.layer, c.index) for c in inputs.cards] == expected
    assert all(len(c.task_activations) == 4 for c in inputs.cards)


def test_page_has_every_part_and_is_self_contained(traced):
    model, attr, circuit, inputs = traced
    page = render_report(attr, circuit, inputs, model_facts={"model": "tiny-llama"})
    figs = _figure_divs(page)
    # heatmap, bars, attribution graph, all nodes, curves, steering
    assert list(figs) == ["fig-0", "fig-1", "fig-2", "fig-3", "fig-4", "fig-5"]
    for title in ("Attribution heatmap", "Top nodes", "Attribution graph", "All circuit nodes",
                  "Faithfulness and completeness", "Steering"):
        assert f"<h2>{title}</h2>" in page
    assert page.count("<script src=") == 0  # nothing loaded from the network: plotly.js is inline, once
    assert "heads carrying the most edge weight" in page and "heads (block.head)" in page
    assert "into clean answer logit" in page and "into patch answer logit" in page  # logit_diff's two targets
    assert page.count("Plotly.newPlot") == 6 and len(page) > 3_000_000 and page.count("plotly.js v") <= 2
    assert page.count("<tr><td class='num'>") >= len(circuit)  # one row per node (card context rows add more)
    carded = {(c.layer, c.index) for c in inputs.cards}
    n_carded = sum((n.layer, n.index) in carded for n in circuit.nodes)
    assert page.count("<details><summary>L") == n_carded >= len(carded)
    assert "faithfulness" in page and "tiny-llama" in page and "accuracy" in page
    assert "4 build prompts" in page and "2 held-out prompts" in page and "The authors of the key" in page


def test_page_escapes_text(traced):
    model, attr, circuit, inputs = traced
    evil = ReportInputs(task="<script>alert(1)</script>", accuracy=inputs.accuracy, cards=inputs.cards,
                        notes=["a < b & c"])
    page = render_report(attr, circuit, evil)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt; b &amp; c" in page


def test_write_report_errors_leave_nothing(traced, tmp_path):
    model, attr, circuit, inputs = traced
    with pytest.raises(RelPLensError, match="is a folder"):
        write_report(tmp_path, model, attr, circuit, inputs=inputs)
    empty = relp_lens.select_top_k(attr, model, 1)
    empty.nodes = []
    with pytest.raises(RelPLensError, match="circuit is empty"):
        write_report(tmp_path / "r.html", model, attr, empty, inputs=inputs)
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file
    out = write_report(tmp_path / "r.html", model, attr, circuit, inputs=inputs)
    assert out.read_text().startswith("<!DOCTYPE html>") and list(tmp_path.iterdir()) == [out]


CHROMIUM = find_chromium()
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed and could not be installed "
                                   "(make test runs apt-get install chromium; no apt here?)")


@needs_browser
def test_browser_catches_script_errors(tmp_path):
    """The check below can fail: a page with a broken script is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>notAFunction();</script></body></html>")
    dom, console = render_in_browser(bad, CHROMIUM)
    assert "<p>x</p>" in dom
    assert any("notAFunction" in line for line in js_errors(console))


@needs_browser
def test_report_draws_in_headless_chromium(traced, tmp_path):
    model, attr, circuit, inputs = traced
    path = write_report(tmp_path / "report.html", model, attr, circuit, inputs=inputs)
    dom, console = render_in_browser(path, CHROMIUM)
    assert js_errors(console) == []
    figs = _figure_divs(dom)
    assert len(figs) == 6
    for name, markup in figs.items():
        assert "js-plotly-plot" in markup.split(">", 1)[0], f"{name} was not turned into a plot"
        assert 'class="main-svg"' in markup, f"{name} has no rendered SVG"
    assert 'class="hm"' in figs["fig-0"]  # the heatmap layer
    assert figs["fig-1"].count('class="point"') == 20  # the top-20 bars
    assert inputs.graph_nodes == 8  # the report draws the graph whose edges were split (max_nodes=8)
    graph = readable_graph(circuit, inputs.graph_nodes)
    assert figs["fig-2"].count('class="point"') >= len(graph.nodes)  # a marker per drawn neuron
    assert figs["fig-2"].count('class="js-line"') >= len(graph.edges)  # an edge trace per drawn edge
    assert figs["fig-3"].count('class="point"') >= len(circuit)  # every circuit node
    assert "<details>" in dom and "promotes" in dom  # the cards


@needs_browser
def test_hovering_a_node_highlights_its_edges(traced, tmp_path):
    """Hovering a neuron of the attribution graph (plotly's hover event, as plotly emits it) keeps its edges and
    fades the rest."""
    model, attr, circuit, inputs = traced
    path = write_report(tmp_path / "report.html", model, attr, circuit, inputs=inputs)
    probe = """<script>
    window.addEventListener('load', function () { setTimeout(function () {
      var gd = document.getElementById('fig-2');
      var node = gd.data.findIndex(function (t) { return t.name === 'neurons'; });
      var id = gd.data[node].customdata[0];
      gd.emit('plotly_hover', {points: [{curveNumber: node, pointNumber: 0, customdata: id}]});
      var out = gd.data.filter(function (t) { return t.meta && t.meta.edge; }).map(function (t) {
        return [(t.meta.s === id || t.meta.t === id) ? 1 : 0, t.opacity]; });
      document.body.setAttribute('data-probe', JSON.stringify(out));
    }, 500); });
    </script></body>"""
    path.write_text(path.read_text().replace("</body>", probe))
    dom, console = render_in_browser(path, CHROMIUM)
    assert js_errors(console) == []
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, "the probe did not run"
    pairs = json.loads(html.unescape(found.group(1)))
    assert any(own for own, _ in pairs) and any(not own for own, _ in pairs)
    assert all(op == (1.0 if own else 0.05) for own, op in pairs), pairs


def test_report_for_another_basis_and_position_free_nodes(tmp_path):
    """mlp_out nodes have no neuron cards; position-aggregated nodes show as "all"."""
    model = tiny_llama()
    attr = relp_lens.attribute(model, BUILD, basis="mlp_out", progress=False)
    circuit = relp_lens.select_top_k(attr, model, 6, aggregate_pos=True)
    inputs = report_inputs(model, attr, circuit, held_out=HELD_OUT, sizes=(2, 4))
    assert inputs.cards == [] and {r.n_nodes for r in inputs.curves} == {2, 4, 6}
    page = write_report(tmp_path / "r.html", model, attr, circuit, inputs=inputs).read_text()
    assert "<details><summary>L" not in page and page.count("<td class='where'>all</td>") == 6 and "mlp_out" in page
