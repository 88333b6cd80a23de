"""One self-contained HTML report of a traced circuit (plotly.js embedded once; opens offline).

1. :func:`report_inputs` computes what the page needs beyond the attribution and the circuit: task accuracy
   on the build prompts, a faithfulness/completeness sweep on held-out prompts, and the cards of the top
   circuit neurons (MLP-neuron basis), or of the top latents of a feature circuit (inside the splice).
2. :func:`render_report` lays the page out: the task and model, task accuracy and circuit evaluation, the
   attribution heatmap, the top-neuron bars, the circuit graph, the curves, an optional steering sweep, and a
   table of circuit nodes whose neuron rows open to their cards. It is pure: inputs in, HTML string out.
3. :func:`write_report` does both and writes the file atomically (no partial file on error).
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from relp_lens.core.attribution import Attribution
from relp_lens.analysis.cards import NeuronCard, feature_cards, neuron_cards
from relp_lens.circuits.circuit import Circuit
from relp_lens.core import nodes, splice
from relp_lens.core.errors import RelPLensError
from relp_lens.core.files import write_text_atomic
from relp_lens.views.plots import (HIGHLIGHT_JS, attribution_graph, attribution_heatmap, circuit_graph, faithfulness_curves,
                             steering_plot, top_neurons_bar)

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

DEFAULT_SIZES = (5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass
class ReportInputs:
    """Everything on the page besides the attribution and the circuit."""

    task: str | None = None  # task name or data source
    accuracy: str | None = None  # e.g. str(TaskReport)
    curves: list = field(default_factory=list)  # SweepPoint rows of relp_lens.circuits.ablation.faithfulness_sweep
    cards: list[NeuronCard] = field(default_factory=list)
    steering: dict | None = None  # output of relp_lens.analysis.steering.steering_sweep
    notes: list[str] = field(default_factory=list)  # free lines shown under the summary
    held_out: list[dict] = field(default_factory=list)  # evaluation rows, listed on the page
    graph_nodes: int = 40  # neurons in the drawn attribution graph (relp_lens.circuits.pruning.readable_graph)


def report_inputs(model: HookedTransformer, attr: Attribution, circuit: Circuit, *,
                  held_out: Sequence[dict] | None = None, task: str | None = None, n_cards: int = 12,
                  sizes: Sequence[int] = DEFAULT_SIZES, accuracy: str | None = None,
                  steering: dict | None = None, batch_size: int = 16, progress: bool = True,
                  corpus=None) -> ReportInputs:
    """Task accuracy (unless given), a held-out faithfulness sweep (when ``held_out`` is given) and the cards
    of the top ``n_cards`` circuit neurons (contexts over ``corpus``: see :func:`relp_lens.analysis.cards.neuron_cards`)."""
    from relp_lens.circuits.ablation import faithfulness_sweep
    from relp_lens.core.tasks import task_report

    split_graph = circuit.heads.max_nodes if circuit.heads is not None else None  # draw the split graph
    inputs = ReportInputs(task=task, accuracy=accuracy, steering=steering, held_out=list(held_out or []),
                          graph_nodes=int(split_graph or 40))
    if accuracy is None and attr.prompts is not None and attr.prompts.answers is not None:
        inputs.accuracy = str(task_report(model, attr.prompts, batch_size=batch_size, warn=False))
    if held_out:
        n_max = attr.n_layers * attr.n_positions * attr.width
        grid = sorted({min(int(s), n_max) for s in sizes} | {len(circuit)})
        sel = circuit.selection
        inputs.curves = faithfulness_sweep(model, attr, held_out, sizes=grid, aggregate_pos=_aggregate(circuit),
                                           metric=circuit.metric, ablation=circuit.ablation,
                                           include_fixed=sel.get("include_fixed"),
                                           exclude_neurons=sel.get("excluded_neurons"),
                                           batch_size=batch_size, progress=progress)
    ranked = sorted(circuit.nodes, key=lambda n: -abs(n.score))
    prompts = attr.prompts.clean[:16] if attr.prompts is not None else []
    if circuit.basis == "mlp_post" and n_cards > 0:
        neurons = list(dict.fromkeys((n.layer, n.index) for n in ranked))[:n_cards]
        inputs.cards = neuron_cards(model, neurons, prompts=prompts, corpus=corpus, k=6, progress=progress)
    features = all(h.endswith(nodes.SAE_NODES) for h in circuit.hook_names)
    if features and n_cards > 0 and all(splice.dictionary_at(model, h) is not None for h in circuit.hook_names):
        latents = list(dict.fromkeys((n.layer, n.index) for n in ranked if not circuit.is_error(n)))[:n_cards]
        texts = corpus if corpus is None or isinstance(corpus, (list, tuple)) else None  # index: neurons only
        shown = nodes.layer_numbers(circuit.hook_names)
        if latents:
            inputs.cards = feature_cards(model, [(circuit.hook_names[l], i) for l, i in latents], prompts=prompts,
                                         corpus=texts, k=6, progress=progress)
            for card, (l, _) in zip(inputs.cards, latents):
                card.layer = shown[l]  # the node table and graph find a card by the layer its label shows
    return inputs


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .9em; } td, th { padding: .25em .6em; border-bottom: 1px solid #eee;
  text-align: left; vertical-align: top; } td.where { white-space: nowrap; } th { background: #f6f6f6; }
.num { text-align: right; font-variant-numeric: tabular-nums; } .neg { color: #c0392b; } .pos { color: #1f5fa8; }
code, .tok { font-family: ui-monospace, Menlo, monospace; background: #f3f3f3; padding: 0 .2em; border-radius: 3px; }
details summary { cursor: pointer; } .card { margin: .4em 0 .8em 1em; } .muted { color: #777; }
.warning { color: #a03000; background: #fff4e5; padding: .5em .8em; border-left: 4px solid #e67e22; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; } dt { font-weight: 600; }
"""


def _aggregate(circuit: Circuit) -> bool:
    return bool(circuit.selection.get("aggregate_pos", False))


def _selection(circuit: Circuit) -> str:
    sel = circuit.selection
    if sel.get("k") is not None:
        return f"top {sel['k']} by |score|"
    if sel.get("tau") is not None:
        return f"|score| ≥ τ·|metric|, τ = {sel['tau']}"
    return "custom"


def _left_out(circuit: Circuit) -> str:
    sel = circuit.selection
    parts = []
    if sel.get("excluded_positions"):
        parts.append(f"positions {sel['excluded_positions']} (the same tokens in every prompt: "
                     f"{circuit.ablation} ablation cannot move them)")
    if sel.get("excluded_neurons"):
        names = ", ".join(f"L{l}/{i}" for l, i in sel["excluded_neurons"][:20])
        more = f" and {len(sel['excluded_neurons']) - 20} more" if len(sel["excluded_neurons"]) > 20 else ""
        parts.append(f"{len(sel['excluded_neurons'])} always-on neurons ({names}{more})")
    return "; ".join(parts)


def _first_prompt(attr: Attribution) -> str:
    return attr.prompts.clean[0] if attr.prompts is not None else "".join(attr.str_tokens[0])


def _e(x) -> str:
    return html.escape(str(x))


def _tok(t: str) -> str:
    return f"<span class='tok'>{_e(repr(t))}</span>"


def _card_html(card: NeuronCard) -> str:
    promoted = ", ".join(f"{_tok(t)} {v:+.2f}" for t, v in card.promoted)
    suppressed = ", ".join(f"{_tok(t)} {v:+.2f}" for t, v in card.suppressed)
    parts = [f"<div class='card'>" + (f"<i>{_e(card.description)}</i><br>" if card.description else "")
             + f"<b>promotes</b>: {promoted}<br><b>suppresses</b>: {suppressed}"]
    if card.task_activations:
        vals = [v for _, v in card.task_activations]
        parts.append(f"<br><b>on {len(vals)} task prompts</b> (last position): mean {sum(vals) / len(vals):+.3f}, "
                     f"min {min(vals):+.3f}, max {max(vals):+.3f}")
    for name, contexts in (("top-activating contexts", card.top_contexts),
                           ("most negative contexts", card.bottom_contexts)):
        if contexts:
            rows = "".join(f"<tr><td class='num'>{v:+.3f}</td><td>…{_marked(text[-80:])}</td></tr>"
                           for text, v in contexts)
            parts.append(f"<br><b>{name}</b> over {_e(card.corpus)} (activation at the marked token)"
                         f"<table>{rows}</table>")
    return "".join(parts) + "</div>"


def _marked(text: str) -> str:
    """A context with its ``⟦token⟧`` highlighted."""
    return _e(text).replace("⟦", "<mark>").replace("⟧", "</mark>")


def _groups_html(circuit: Circuit) -> str:
    """The neuron groups table (and how they were found), or nothing without groups."""
    if circuit.groups is None:
        return ""
    groups = circuit.groups
    st = groups.stability
    ari = st.get("ari")
    rows = "".join(f"<tr><td>{_e(g.name)}</td><td class='num'>{len(g.members)}</td><td class='num'>{g.score:+.3f}</td>"
                   f"<td class='num'>{'' if g.stability is None else f'{g.stability:.2f}'}</td><td>{_e(g.label)}</td></tr>"
                   for g in groups.groups)
    how = (f"Spectral clustering of the circuit's neurons on {', '.join(groups.features)} over "
           f"{groups.n_prompts} prompts (relp_lens.analysis.groups). Stability: adjusted Rand index "
           + (f"{ari:.2f}" if ari is not None else "n/a")
           + (f" against re-clustering on random {st.get('subset_fraction', 0.7):.0%} subsets of the prompts; "
              if st.get("ari_subsets") else " against re-clustering with other k-means seeds; ")
           + "per group, the mean best Jaccard overlap with a group of those runs."
           + (" Pruning removed members after grouping." if groups.pruned else ""))
    return (f"<h2>Neuron groups</h2><p class='muted'>{_e(how)} Outlined in the attribution graph by group.</p>"
            "<table id='groups'><tr><th>group</th><th>neurons</th><th>score</th><th>stability</th><th>label "
            "(layers @ positions → tokens the group's mean write promotes)</th></tr>" + rows + "</table>")


def _card_text(card: NeuronCard) -> str:
    """One hover line of a card: the tokens the neuron's output promotes and suppresses."""
    promoted = ", ".join(f"{t!r}" for t, _ in card.promoted[:4])
    suppressed = ", ".join(f"{t!r}" for t, _ in card.suppressed[:3])
    return f"promotes {_e(promoted)}<br>suppresses {_e(suppressed)}"


def _graph_notes(circuit: Circuit) -> str:
    """What the attribution graph shows, and the heads that carry the most edge weight (with head splits)."""
    parts = ["<p class='muted'>Hover a node to see only its incoming and outgoing edges; hover an edge's middle "
             "marker for its weight" + (" and the attention heads it passes through (each path credited to the "
                                        "last head on it)" if circuit.heads else "")
             + ". Edge weights are direct effects (every MLP in between held constant).</p>"]
    heads = circuit.heads.totals if circuit.heads is not None else []
    if heads:
        rows = "".join(f"<tr><td>{l}.{h}</td><td class='num {'neg' if w < 0 else 'pos'}'>{w:+.4f}</td></tr>"
                       for l, h, w in heads[:10])
        listed = "" if circuit.heads.totals_exact in (True, None) else ", their listed top heads"
        parts.append(f"<details><summary>heads carrying the most edge weight (over {len(circuit.heads.edges)} "
                     f"split edges{listed})</summary><table><tr><th>block.head</th><th>summed weight</th></tr>{rows}"
                     f"</table></details>")
    return "".join(parts)


def _prompts_html(attr: Attribution, held_out: list[dict], limit: int = 50) -> str:
    """Collapsible lists of the build prompts (with the clean metric) and the held-out prompts."""
    p = attr.prompts
    if p is None:
        return ""
    rows = []
    for i, clean in enumerate(p.clean[:limit]):
        answer = " / ".join(map(repr, p.answers[i])) if p.answers else ""
        patch = f"{p.patch[i]!r} → {' / '.join(map(repr, p.patch_answers[i]))}" if p.patch and p.patch_answers else ""
        rows.append(f"<tr><td>{_e(repr(clean))} → {_e(answer)}</td><td>{_e(patch)}</td>"
                    f"<td class='num'>{float(attr.metric_clean[i]):+.3f}</td></tr>")
    more = f" (first {limit})" if len(p.clean) > limit else ""
    parts = [f"<h2>Prompts</h2><details><summary>{len(p.clean)} build prompts{more}</summary><table>"
             f"<tr><th>clean → answer</th><th>patch → answer</th><th>{_e(attr.metric)}</th></tr>"
             + "".join(rows) + "</table></details>"]
    if held_out:
        items = "".join(f"<li>{_e(repr(r.get('clean_prefix', '')))} → {_e(repr(r.get('clean_answer', '')))}</li>"
                        for r in held_out[:limit])
        parts.append(f"<details><summary>{len(held_out)} held-out prompts (faithfulness curves)</summary>"
                     f"<ul>{items}</ul></details>")
    return "".join(parts)


def render_report(attr: Attribution, circuit: Circuit, inputs: ReportInputs | None = None, *,
                  model_facts: dict | None = None, title: str | None = None, model=None) -> str:
    """The report page as one HTML string (plotly.js inlined in the first figure). With ``model``, the
    heatmap's hover also shows activations."""
    inputs = inputs or ReportInputs()
    if not circuit.nodes:
        raise RelPLensError("the circuit is empty: nothing to report")
    facts = dict(model_facts or {})
    facts.setdefault("model", circuit.model.get("name", "?") if isinstance(circuit.model, dict) else "?")
    title = title or f"relp_lens circuit report — {inputs.task or circuit.data.get('task') or 'custom prompts'}"

    figures: list[tuple[str, go.Figure]] = [
        ("Attribution heatmap", attribution_heatmap(attr, title="attribution mass per layer and position "
                                                                "(mean over build prompts)", model=model)),
        ("Top nodes", top_neurons_bar(attr, 20, aggregate_pos=_aggregate(circuit))),
        ("Attribution graph", attribution_graph(circuit, max_nodes=inputs.graph_nodes,
                                                cards={(c.layer, c.index): _card_text(c) for c in inputs.cards})),
        ("All circuit nodes", circuit_graph(circuit)),
    ]
    if inputs.curves:
        figures.append(("Faithfulness and completeness", faithfulness_curves(inputs.curves)))
    if inputs.steering:
        figures.append(("Steering", steering_plot(inputs.steering)))

    ev = circuit.evaluation
    summary = [
        ("model", facts.pop("model")),
        *[(k, v) for k, v in facts.items()],
        ("task", inputs.task or circuit.data.get('task') or "custom prompts"),
        ("build prompts", f"{len(attr.lengths)}, e.g. {_first_prompt(attr)!r}"),
        ("task accuracy", inputs.accuracy or "not computed (no answers)"),
        ("attribution", f"{attr.method} on {attr.basis}, metric {attr.metric}"
                        + (", paired clean/patch" if attr.paired else f", unpaired, {attr.baseline} baseline")),
        ("positions", "prompts differ in length: positions count from the end (-1 = last token) after the "
                      f"{attr.alignment.n_shared} token(s) every prompt starts with"
                      if attr.alignment.end_aligned else "absolute (every prompt has the same token length)"),
        ("circuit", f"{len(circuit)} nodes ({_selection(circuit)}), {len(circuit.edges)} edges"),
    ]
    left_out = _left_out(circuit)
    if left_out:
        summary.append(("left out of selection", left_out))
    if ev is not None:
        summary.append(("evaluation", f"faithfulness {ev.faithfulness:+.3f}, completeness "
                                      f"{ev.completeness:+.3f} on {'?' if ev.n_prompts is None else ev.n_prompts} "
                                      f"held-out prompts ({ev.ablation or circuit.ablation} ablation)"))
    from relp_lens.circuits.ablation import verdict

    weak = verdict(inputs.curves) if inputs.curves else (verdict(ev) if ev is not None else None)
    body = [f"<h1>{_e(title)}</h1>",
            "<dl class='facts'>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in summary) + "</dl>"]
    if weak:
        body.append(f"<p class='warning'><b>{_e(weak)}</b></p>")
    body += [f"<p class='muted'>{_e(n)}</p>" for n in inputs.notes]
    for i, (name, fig) in enumerate(figures):
        body.append(f"<h2>{_e(name)}</h2>")
        body.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"responsive": True},
                                div_id=f"fig-{i}", post_script=HIGHLIGHT_JS if name == "Attribution graph" else None))
        if name == "Attribution graph":
            body.append(_graph_notes(circuit))
            body.append(_groups_html(circuit))

    cards = {(c.layer, c.index): c for c in inputs.cards}
    from relp_lens.views.plots import _groups

    group_list, group_of = _groups(circuit)
    group_name = {n.key: group_list[k].name for n, k in zip(circuit.nodes, group_of) if k >= 0}
    rows = []
    shown = nodes.layer_numbers(circuit.hook_names)  # cards are keyed by the layer a label shows
    for rank, n in enumerate(sorted(circuit.nodes, key=lambda n: -abs(n.score)), 1):
        where = "all" if n.pos is None else f"{n.pos} <span class='tok'>{_e(circuit.token_label(n.pos))}</span>"
        cls = "neg" if n.score < 0 else "pos"
        card = cards.get((shown[n.layer], n.index))
        label = circuit.node_label(n).rsplit("@", 1)[0]  # L3/123, a latent L3/f123, an error node L3/err
        cell = (f"<details><summary>{label}</summary>{_card_html(card)}</details>" if card else label)
        grp = f"<td>{_e(group_name.get(n.key, ''))}</td>" if group_list else ""
        hook = circuit.node_hook(n).split("[")[0]
        rows.append(f"<tr><td class='num'>{rank}</td><td>{cell}</td><td>{_e(hook)}</td>"
                    f"<td class='where'>{where}</td><td class='num {cls}'>{n.score:+.4f}</td>{grp}</tr>")
    n_errors = sum(circuit.is_error(n) for n in circuit.nodes)
    features = bool(circuit.hook_names) and all(h.endswith(nodes.SAE_NODES) for h in circuit.hook_names)
    errors = (f" {n_errors} of the {len(circuit.nodes)} nodes are dictionary error nodes (<code>L…/err</code>: "
              f"the part of a layer's output its dictionary does not reconstruct, one node per position; "
              f"latents are <code>L…/f…</code>)." if n_errors else "")
    body.append(f"<h2>Circuit nodes</h2><p class='muted'>Sorted by |score|.{errors} "
                + (f"{len(cards)} latent cards (click a node): decoder row read through the unembedding, "
                   f"activation on the task prompts, top-activating contexts." if cards and features else
                   f"{len(cards)} neuron cards (click a node): output direction read through the unembedding, "
                   f"activation on the task prompts, top-activating contexts. Gated-MLP "
                   f"activations can be negative: such a neuron then writes the opposite of its promoted tokens."
                   if cards else "") + "</p>")
    body.append("<table id='nodes'><tr><th>#</th><th>node</th><th>hook</th><th>position</th><th>score</th>"
                + ("<th>group</th>" if group_list else "") + "</tr>" + "".join(rows) + "</table>")
    body.append(_prompts_html(attr, inputs.held_out))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from relp_lens import __version__

    body.append(f"<p class='muted'>relp_lens {__version__}, {stamp}</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def write_report(path: str | Path, model: HookedTransformer, attr: Attribution, circuit: Circuit, *,
                 inputs: ReportInputs | None = None, held_out: Sequence[dict] | None = None,
                 task: str | None = None, n_cards: int = 12, title: str | None = None,
                 batch_size: int = 16, progress: bool = True) -> Path:
    """Compute the report's inputs (unless given), render, write ``path`` atomically; returns the path."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise RelPLensError(f"report path {path} is a folder; give a file name")
    if inputs is None:
        inputs = report_inputs(model, attr, circuit, held_out=held_out, task=task, n_cards=n_cards,
                               batch_size=batch_size, progress=progress)
    facts = {"model": model.cfg.model_name,
             "architecture": f"{model.cfg.n_layers} layers, d_model {model.cfg.d_model}, d_mlp {model.cfg.d_mlp}"}
    write_text_atomic(path, render_report(attr, circuit, inputs, model_facts=facts, title=title, model=model))
    return path
