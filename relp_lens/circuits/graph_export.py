"""circuit-tracer graph files: a circuit as the JSON that circuit-tracer's own viewer loads.

circuit-tracer (PyPI ``circuit-tracer``, ``circuit_tracer.frontend.graph_models.Model``) reads
``{data_dir}/{slug}.json`` and an index ``{data_dir}/graph-metadata.json`` = ``{"graphs": [metadata, ...]}``
(served by ``circuit_tracer.frontend.local_server.serve(data_dir)`` at ``/index.html?slug=SLUG``).

How a circuit maps onto that schema:

1. **Neurons** are typed as features (the viewer knows transcoder features): ``node_id`` =
   ``{layer}_{neuron}_{pos}``; ``feature`` = the Cantor pairing of (layer, neuron), as circuit-tracer writes it,
   so the viewer's label ``L{layer}/{neuron}`` is right and features are unique across layers; ``clerp`` names
   the hook and neuron. An aggregated node (``pos=None``) sits at the last position. **Dictionary latents**
   (:mod:`relp_lens.core.splice`) are features the same way; a dictionary's **error node** is circuit-tracer's
   ``mlp reconstruction error`` node: ``node_id`` ``0_{layer}_{pos}`` (``err_{layer}_{pos}`` where a layer-0
   latent holds that id: circuit-tracer's two schemes meet there), ``feature`` −1. ``layer`` is the model's
   block (``blocks.10.…`` → 10), also for a basis of some layers.
2. **Influence** is circuit-tracer's cumulative share: nodes sorted by |score|, ``influence`` = running sum of
   |score| / total, so the most important node has the smallest value and the viewer's pruning slider
   (``influence <= threshold``) removes the least important first. No ``node_threshold`` is written (the
   circuit is already selected).
3. **Embedding nodes** ``E_{token_id}_{pos}`` at every prompt position (the viewer labels its x axis from them).
4. **One output node** for the metric: ``{n_layers + 1}_{target}_{last}`` (``target``: the answer token id,
   or 0), flagged ``is_target_logit``, its ``clerp`` in the viewer's form ``Output "label" (p=0.123)``.
5. **Links**: the circuit's edges (direct effects), and each neuron → output with its attribution score (its
   total effect on the metric) — or, given the input/output edges (:mod:`relp_lens.circuits.io_edges`), embedding →
   neuron, neuron → output and embedding → output direct effects.
6. **Scores**: with input/output edges, the metadata carries circuit-tracer's ``replacement_score`` and
   ``completeness_score`` of the graph (:func:`relp_lens.circuits.pruning.graph_scores`; 1 for neuron graphs,
   which have no error node).
7. ``scan`` is a local path (``./data/features-{slug}``), so clicking a node never sends requests for feature
   details to the internet; the model's name goes into the index entry's ``title_prefix``.

:func:`to_circuit_tracer` makes the graph of a circuit (with its own input/output edges), :func:`write_circuit_tracer`
writes it and its index entry. (``Circuit.to_circuit_tracer`` was the method before; it still works, with a
warning.)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relp_lens.core.errors import RelPLensError
from relp_lens.core.files import write_text_atomic
from relp_lens.core.nodes import layer_numbers

if TYPE_CHECKING:
    from relp_lens.circuits.circuit import Circuit, IOEdges

INDEX_FILE = "graph-metadata.json"
_SLUG = re.compile(r"^[A-Za-z0-9_-]+$")


def cantor_pairing(x: int, y: int) -> int:
    """circuit-tracer's feature number for (layer, index); its viewer unpairs it to label ``L{x}/{y}``."""
    return (x + y) * (x + y + 1) // 2 + y


def slug_of(name: str) -> str:
    """A URL-safe slug (``[A-Za-z0-9_-]``) from a file name or label."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")
    return slug or "relp-lens"


def to_circuit_tracer(circuit: Circuit, prompt_tokens: list[str], *, prompt: str = "", slug: str = "relp-lens",
                      token_ids: list[int] | None = None, output_label: str | None = None,
                      output_token: int | None = None, output_prob: float | None = None,
                      io: IOEdges | None = None) -> dict:
    """circuit-tracer's graph JSON of a circuit (its viewer's schema; see the module docstring for the mapping):
    neurons as features, embedding nodes, an output node, links = edges plus each neuron's link into the output.

    Args:
        circuit: the circuit; its ``io_edges``, when it has them, give the input and output links.
        prompt_tokens: as in :func:`circuit_tracer_graph`.
        prompt: as in :func:`circuit_tracer_graph`.
        slug: as in :func:`circuit_tracer_graph`.
        token_ids: as in :func:`circuit_tracer_graph`.
        output_label: as in :func:`circuit_tracer_graph`.
        output_token: as in :func:`circuit_tracer_graph`.
        output_prob: as in :func:`circuit_tracer_graph`.
        io: input/output edges to draw instead of the circuit's own.

    Returns:
        The graph dict (write it with :func:`write_circuit_tracer`).
    """
    return circuit_tracer_graph(circuit, prompt_tokens, prompt=prompt, slug=slug, token_ids=token_ids,
                                output_label=output_label, output_token=output_token, output_prob=output_prob,
                                io=io if io is not None else circuit.io_edges)


def circuit_tracer_graph(circuit: Circuit, prompt_tokens: list[str], *, prompt: str = "", slug: str = "relp-lens",
                         token_ids: list[int] | None = None, output_label: str | None = None,
                         output_token: int | None = None, output_prob: float | None = None,
                         io: IOEdges | None = None) -> dict:
    """The circuit as a circuit-tracer graph dict, with the input/output edges ``io`` only when given (see
    :func:`to_circuit_tracer`, which takes the circuit's own).

    Args:
        circuit: the circuit.
        prompt_tokens: the prompt's tokens as strings (the x axis), e.g. ``attr.str_tokens[0]``.
        prompt: the prompt text (shown in the viewer's graph menu).
        slug: the graph's name in the viewer (``[A-Za-z0-9_-]``).
        token_ids: the prompt's token ids, for the embedding node ids; positions stand in when not given.
        output_label: the output node's label (default: the metric's name).
        output_token: the output node's token id (default 0).
        output_prob: its probability, shown as ``(p=...)`` (default: not known, shown as 1.000).
        io: the circuit's input/output edges (:func:`relp_lens.circuits.io_edges.attribute_io_edges`): then the
            graph has embedding → neuron and embedding → output links, and neuron → output links carry the direct
            effect instead of the attribution score.

    Returns:
        The graph dict.
    """
    if not _SLUG.match(slug):
        raise RelPLensError(f"slug {slug!r} must be letters, digits, '-' or '_' (the viewer uses it in URLs)")
    n_pos = len(prompt_tokens)
    if n_pos == 0:
        raise RelPLensError("the prompt has no tokens")
    if token_ids is not None and len(token_ids) != n_pos:
        raise RelPLensError(f"{len(token_ids)} token ids for {n_pos} prompt tokens")
    last = n_pos - 1
    n_layers = int(circuit.model.get("n_layers") or len(circuit.hook_names))
    for e in circuit.edges:
        if not math.isfinite(e.weight):
            raise RelPLensError(f"edge {e.source} → {e.target} has weight {e.weight}; the viewer cannot read it")
    scores = [abs(n.score) for n in circuit.nodes]
    if not all(math.isfinite(s) for s in scores):
        raise RelPLensError("a circuit node has a non-finite score; the viewer cannot read it")
    total, running = sum(scores), 0.0
    influence = [1.0] * len(scores)  # all-zero scores: nothing to rank
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        running += scores[i]
        if total > 0:
            influence[i] = min(1.0, running / total)

    nodes, ids = [], []
    shown = layer_numbers(circuit.hook_names)

    def position(n) -> int:
        pos = last if n.pos is None else n.pos if n.pos >= 0 else n_pos + n.pos
        if not 0 <= pos <= last:
            raise RelPLensError(f"node {n.label()} is outside the {n_pos}-token prompt")
        return pos

    # circuit-tracer's ids; its error-node id 0_{layer}_{pos} is a layer-0 feature's too (feature index = layer):
    # such an error node is written err_{layer}_{pos} instead
    feature_ids = {f"{shown[n.layer]}_{n.index}_{position(n)}" for n in circuit.nodes if not circuit.is_error(n)}
    for n, infl in zip(circuit.nodes, influence):
        pos = position(n)
        error = circuit.is_error(n)
        block = shown[n.layer]  # the model's layer (a basis may skip some)
        node_id = f"{block}_{n.index}_{pos}"
        if error:
            node_id = f"0_{block}_{pos}" if f"0_{block}_{pos}" not in feature_ids else f"err_{block}_{pos}"
        if node_id in ids:
            raise RelPLensError(f"two circuit nodes land on {node_id} (an aggregated node and one at the last "
                                f"position); export one kind")
        ids.append(node_id)
        where = " (all positions)" if n.pos is None else ""
        hook = circuit.hook_names[n.layer]
        if error:
            nodes.append(dict(
                node_id=node_id, feature=-1, layer=str(block), ctx_idx=pos, feature_type="mlp reconstruction error",
                token_prob=0.0, is_target_logit=False, run_idx=0, reverse_ctx_idx=last - pos,
                jsNodeId=f"{block}_{pos}-0", influence=infl, activation=None,
                clerp=f"Err: {hook.removesuffix('.hook_sae_nodes')} score {n.score:+.3g}{where}"))
            continue
        nodes.append(dict(
            node_id=node_id, feature=cantor_pairing(block, n.index), layer=str(block), ctx_idx=pos,
            feature_type="cross layer transcoder", token_prob=0.0, is_target_logit=False, run_idx=0,
            reverse_ctx_idx=last - pos, jsNodeId=f"{block}_{n.index}-0",
            clerp=f"{circuit.node_hook(n)} score {n.score:+.3g}{where}",
            influence=infl, activation=None,
        ))
    for pos in range(n_pos):
        tid = token_ids[pos] if token_ids is not None else pos
        nodes.append(dict(node_id=f"E_{tid}_{pos}", feature=pos, layer="E", ctx_idx=pos, feature_type="embedding",
                          token_prob=0.0, is_target_logit=False, run_idx=0, reverse_ctx_idx=last - pos,
                          jsNodeId=f"E_{tid}-{pos}", clerp="", influence=None, activation=None))
    target = int(output_token) if output_token is not None else 0
    prob = 1.0 if output_prob is None else float(output_prob)
    label = (output_label or circuit.metric).replace('"', "'")
    out_id = f"{n_layers + 1}_{target}_{last}"
    nodes.append(dict(node_id=out_id, feature=target, layer=str(n_layers + 1), ctx_idx=last, feature_type="logit",
                      token_prob=prob, is_target_logit=True, run_idx=0, reverse_ctx_idx=0,
                      jsNodeId=f"L_{target}-{last}", clerp=f'Output "{label}" (p={prob:.3f})',
                      influence=None, activation=None))
    links = [dict(source=ids[e.source], target=ids[e.target], weight=float(e.weight)) for e in circuit.edges]
    if io is None:
        links += [dict(source=ids[i], target=out_id, weight=float(n.score)) for i, n in enumerate(circuit.nodes)]
    else:
        from relp_lens.core.positions import resolve

        if io.output.shape[0] != len(circuit.nodes):
            raise RelPLensError(f"input/output edges are for {io.output.shape[0]} nodes, the circuit has "
                                f"{len(circuit.nodes)}")
        emb = [n["node_id"] for n in nodes if n["layer"] == "E"]
        links += [dict(source=ids[i], target=out_id, weight=float(w)) for i, w in enumerate(io.output.tolist())
                  if w != 0]
        for row, label in enumerate(io.positions):
            pos = resolve(label, n_pos)
            if pos is None:
                continue
            links += [dict(source=emb[pos], target=ids[i], weight=float(w))
                      for i, w in enumerate(io.input[row].tolist()) if w != 0]
            if io.direct[row] != 0:
                links.append(dict(source=emb[pos], target=out_id, weight=float(io.direct[row])))
        bad = [l for l in links if not math.isfinite(l["weight"])]
        if bad:
            raise RelPLensError(f"link {bad[0]['source']} → {bad[0]['target']} has weight {bad[0]['weight']}")
    metadata = dict(slug=slug, scan=f"./data/features-{slug}", transcoder_list=[], prompt_tokens=list(prompt_tokens),
                    prompt=prompt, node_threshold=None, schema_version=1)
    if io is not None and circuit.edges:
        from relp_lens.circuits.pruning import graph_scores

        metadata["replacement_score"], metadata["completeness_score"] = graph_scores(replace(circuit, io_edges=io))
    return dict(
        metadata=metadata,
        qParams=dict(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos=""),
        nodes=nodes, links=links,
    )


def check_graph_path(path: str | Path) -> str:
    """The slug a graph written to ``path`` gets (its stem), after checking the name suits the viewer (which
    loads ``{slug}.json``) and that an index beside it, if any, can be read: an error before any slow work."""
    path = Path(path)
    if path.suffix != ".json" or not _SLUG.match(path.stem):
        raise RelPLensError(f"{path}: circuit-tracer's viewer loads {{slug}}.json with a slug of letters, digits, "
                            f"'-' or '_'; name the file e.g. {slug_of(path.stem)}.json")
    read_index(path.parent / INDEX_FILE)
    return path.stem


def read_index(index_path: Path) -> dict[str, Any]:
    """The viewer's graph index (``{"graphs": [...]}``); empty when absent; a damaged one is an error."""
    if not index_path.exists():
        return {"graphs": []}
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"), parse_constant=_no_constant)
        if not isinstance(index, dict) or not isinstance(index.get("graphs"), list):
            raise ValueError("no 'graphs' list")
        if not all(isinstance(g, dict) for g in index["graphs"]):
            raise ValueError("an entry of 'graphs' is not an object")
    except (ValueError, OSError, RecursionError) as e:
        raise RelPLensError(f"{index_path}: not a circuit-tracer graph index ({e}); move it away") from e
    return index


def _no_constant(token: str) -> None:
    raise ValueError(f"{token} is not a JSON number")


def updated_index(index_path: Path, graph: dict, title: str | None = None) -> dict[str, Any]:
    """The index at ``index_path`` with ``graph``'s entry added, or replacing the entry of the same slug."""
    index = read_index(index_path)
    entry = {k: v for k, v in graph["metadata"].items() if k != "prompt_tokens"}
    if title:
        entry["title_prefix"] = title
    index["graphs"] = [g for g in index["graphs"] if g.get("slug") != entry["slug"]] + [entry]
    return index


def to_json(obj: Any) -> str:
    """JSON text for the viewer: NaN or infinity is an error (the browser's JSON parser rejects them)."""
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def write_circuit_tracer(path: str | Path, graph: dict, *, title: str | None = None) -> Path:
    """Write ``graph`` as ``path`` (``{slug}.json``) and add its entry to ``graph-metadata.json`` beside it
    (replacing one of the same slug), so the folder can be served by circuit-tracer's viewer. Both texts are
    made before either file is written; each file is written atomically."""
    path = Path(path)
    if check_graph_path(path) != graph["metadata"]["slug"]:
        raise RelPLensError(f"graph {graph['metadata']['slug']!r} must be written to "
                            f"{graph['metadata']['slug']}.json (the viewer loads {{slug}}.json), not {path.name}")
    index_path = path.parent / INDEX_FILE
    graph_text, index_text = to_json(graph), to_json(updated_index(index_path, graph, title))
    write_text_atomic(path, graph_text)
    write_text_atomic(index_path, index_text)
    return path
