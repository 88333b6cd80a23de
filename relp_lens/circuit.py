"""Circuits: a set of scored nodes (and optional weighted edges) with what is needed to reproduce them.

1. Build from an :class:`~relp_lens.attribution.Attribution` with :func:`select_top_k` (top-k by |mean
   score|) or :func:`select_threshold` (keep |score| ≥ τ·|m|, m the mean clean metric; the paper uses
   τ = 0.005). Nodes are position-specific ``(layer, pos, index)`` or position-aggregated (``pos=None``:
   the neuron at every position; score summed over positions).
2. Save / load as JSON (:meth:`Circuit.save`, :meth:`Circuit.load`): schema ``relp_lens.circuit``,
   version 1, written atomically; loading validates every field and names what is wrong.
3. :meth:`Circuit.check_model` verifies a circuit fits a model (layers, widths) before any evaluation.
4. :meth:`Circuit.to_circuit_tracer` exports circuit-tracer's graph JSON (metadata, qParams, nodes,
   links) so its frontend can render a relp_lens circuit.

JSON schema, version 1::

    {"schema": "relp_lens.circuit", "version": 1,
     "model": {"name", "n_layers", "d_model", "d_mlp", "d_vocab"},
     "basis": "mlp_post", "hook_names": [...one per layer...], "node_width": 1536,
     "method": "relp", "metric": "logit_diff",
     "data": {"task": str|null, "rows": [...JSONL rows...]|null, "n_prompts": int},
     "selection": {"k": int|null, "tau": float|null, "aggregate_pos": bool},
     "nodes": [{"layer": int, "pos": int|null, "index": int, "score": float}],
     "edges": [{"source": node#, "target": node#, "weight": float}],
     "evaluation": {...}|null}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from relp_lens.attribution import Attribution
from relp_lens.errors import RelPLensError
from relp_lens.files import write_json_atomic

SCHEMA = "relp_lens.circuit"
VERSION = 1


@dataclass(frozen=True)
class CircuitNode:
    layer: int  # index into Circuit.hook_names
    pos: int | None  # token position, or None for "all positions"
    index: int  # neuron / dimension within the hook's flattened activation
    score: float = 0.0

    @property
    def key(self) -> tuple[int, int | None, int]:
        return (self.layer, self.pos, self.index)

    def label(self) -> str:
        return f"L{self.layer}/{self.index}@{'all' if self.pos is None else self.pos}"


@dataclass(frozen=True)
class CircuitEdge:
    source: int  # index into Circuit.nodes (upstream)
    target: int  # index into Circuit.nodes (downstream)
    weight: float


@dataclass
class Circuit:
    nodes: list[CircuitNode]
    basis: str
    hook_names: list[str]
    node_width: int
    model: dict[str, Any]
    method: str = "relp"
    metric: str = "logit_diff"
    data: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    edges: list[CircuitEdge] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        n_layers = len(self.hook_names)
        seen = set()
        for i, n in enumerate(self.nodes):
            if not (isinstance(n.layer, int) and 0 <= n.layer < n_layers):
                raise RelPLensError(f"node {i}: layer {n.layer!r} outside [0, {n_layers})")
            if not (isinstance(n.index, int) and 0 <= n.index < self.node_width):
                raise RelPLensError(f"node {i}: index {n.index!r} outside [0, {self.node_width})")
            if n.pos is not None and not (isinstance(n.pos, int) and n.pos >= 0):
                raise RelPLensError(f"node {i}: pos must be a non-negative integer or null, got {n.pos!r}")
            if n.key in seen:
                raise RelPLensError(f"node {i}: duplicate node {n.label()}")
            seen.add(n.key)
        for i, e in enumerate(self.edges):
            for end in (e.source, e.target):
                if not (isinstance(end, int) and 0 <= end < len(self.nodes)):
                    raise RelPLensError(f"edge {i}: node number {end!r} outside [0, {len(self.nodes)})")

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def keys(self) -> set[tuple[int, int | None, int]]:
        return {n.key for n in self.nodes}

    def summary(self, k: int = 10, str_tokens: list[str] | None = None) -> str:
        lines = [f"circuit: {len(self.nodes)} {self.basis} nodes, {len(self.edges)} edges "
                 f"({self.method}, {self.metric}, {self.model.get('name', '?')})"]
        if self.evaluation:
            ev = self.evaluation
            lines.append(f"faithfulness {ev['faithfulness']:+.3f}, completeness {ev['completeness']:+.3f} "
                         f"on {ev.get('n_prompts', '?')} held-out prompts")
        for n in sorted(self.nodes, key=lambda n: -abs(n.score))[:k]:
            tok = ""
            if str_tokens is not None and n.pos is not None and n.pos < len(str_tokens):
                tok = f" {str_tokens[n.pos]!r}"
            lines.append(f"  layer {n.layer:2d} index {n.index:5d} pos {'all' if n.pos is None else n.pos}{tok}"
                         f"  score {n.score:+.4f}")
        return "\n".join(lines)

    # -- model compatibility -----------------------------------------------------------------------
    def check_model(self, model: HookedTransformer) -> None:
        """Raise a clear error when this circuit cannot apply to ``model`` (missing hook, wrong width)."""
        for key in ("n_layers", "d_model", "d_mlp"):
            want, have = self.model.get(key), getattr(model.cfg, key, None)
            if want is not None and have is not None and want != have:
                raise RelPLensError(f"circuit is for a model with {key}={want}, this model has {key}={have}")
        for name in self.hook_names:
            if name not in model.hook_dict:
                raise RelPLensError(f"circuit uses hook {name!r}, which this model does not have (layer missing?)")

    # -- files ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "version": VERSION, "model": self.model, "basis": self.basis,
            "hook_names": self.hook_names, "node_width": self.node_width, "method": self.method,
            "metric": self.metric, "data": self.data, "selection": self.selection,
            "nodes": [asdict(n) for n in self.nodes], "edges": [asdict(e) for e in self.edges],
            "evaluation": self.evaluation,
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "circuit") -> "Circuit":
        if not isinstance(d, dict):
            raise RelPLensError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise RelPLensError(f"{source}: not a relp_lens circuit (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        if d.get("version") != VERSION:
            raise RelPLensError(f"{source}: circuit file version {d.get('version')!r} is not supported "
                                f"(this relp_lens reads version {VERSION})")
        required = {"model": dict, "basis": str, "hook_names": list, "node_width": int, "nodes": list}
        for key, typ in required.items():
            if not isinstance(d.get(key), typ):
                raise RelPLensError(f"{source}: field {key!r} missing or not a {typ.__name__}")
        try:
            nodes = [CircuitNode(layer=n["layer"], pos=n["pos"], index=n["index"], score=float(n.get("score", 0.0)))
                     for n in d["nodes"]]
            edges = [CircuitEdge(source=e["source"], target=e["target"], weight=float(e["weight"]))
                     for e in d.get("edges") or []]
        except (KeyError, TypeError, ValueError) as e:
            raise RelPLensError(f"{source}: malformed node or edge ({type(e).__name__}: {e})") from None
        try:
            return cls(nodes=nodes, basis=d["basis"], hook_names=d["hook_names"], node_width=d["node_width"],
                       model=d["model"], method=d.get("method", "?"), metric=d.get("metric", "?"),
                       data=d.get("data") or {}, selection=d.get("selection") or {}, edges=edges,
                       evaluation=d.get("evaluation"))
        except RelPLensError as e:
            raise RelPLensError(f"{source}: {e}") from None

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (a temp file in the same folder, then rename)."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Circuit":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise RelPLensError(f"circuit file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise RelPLensError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        return cls.from_dict(d, source=str(path))

    # -- circuit-tracer export -----------------------------------------------------------------------
    def to_circuit_tracer(self, prompt_tokens: list[str], prompt: str = "", slug: str = "relp-lens") -> dict:
        """circuit-tracer graph JSON: one node per circuit node, a logit node, links = edges.

        circuit-tracer's frontend knows transcoder features, so neurons are typed as features (``feature``
        = neuron index, ``layer`` = layer); ``clerp`` names them. Each node also links to the logit node
        with its attribution score (its total effect on the metric, not a direct effect).
        """
        last = len(prompt_tokens) - 1
        n_layers = int(self.model.get("n_layers", len(self.hook_names)))
        nodes, ids = [], []
        for n in self.nodes:
            pos = last if n.pos is None else n.pos
            node_id = f"{n.layer}_{n.index}_{pos}"
            ids.append(node_id)
            nodes.append(dict(
                node_id=node_id, feature=n.index, layer=str(n.layer), ctx_idx=pos,
                feature_type="cross layer transcoder", token_prob=0.0, is_target_logit=False, run_idx=0,
                reverse_ctx_idx=0, jsNodeId=f"{n.layer}_{n.index}-{pos}",
                clerp=f"{self.hook_names[n.layer]}[{n.index}]" + (" (all positions)" if n.pos is None else ""),
                influence=abs(n.score), activation=None,
            ))
        logit_id = f"{n_layers + 1}_{self.metric}_{last}"
        nodes.append(dict(node_id=logit_id, feature=0, layer=str(n_layers + 1), ctx_idx=last,
                          feature_type="logit", token_prob=1.0, is_target_logit=True, run_idx=0,
                          reverse_ctx_idx=0, jsNodeId=f"L_0-{last}", clerp=f"metric {self.metric}",
                          influence=None, activation=None))
        links = [dict(source=ids[e.source], target=ids[e.target], weight=e.weight) for e in self.edges]
        links += [dict(source=ids[i], target=logit_id, weight=n.score) for i, n in enumerate(self.nodes)]
        return dict(
            metadata=dict(slug=slug, scan=str(self.model.get("name", "model")), transcoder_list=[],
                          prompt_tokens=prompt_tokens, prompt=prompt,
                          node_threshold=self.selection.get("tau"), schema_version=1),
            qParams=dict(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos=""),
            nodes=nodes, links=links,
        )


def model_facts(model: HookedTransformer) -> dict[str, Any]:
    c = model.cfg
    return dict(name=c.model_name, n_layers=c.n_layers, d_model=c.d_model, d_mlp=c.d_mlp, d_vocab=c.d_vocab)


def _node_scores(attr: Attribution, aggregate_pos: bool) -> torch.Tensor:
    """Mean score per node: ``[layer, pos, node]`` (pos axis of size 1 when aggregated)."""
    if aggregate_pos:
        return attr.scores.nansum(2, keepdim=True).nanmean(0).nan_to_num(0.0)
    return attr.mean().nan_to_num(0.0)


def _from_scores(attr: Attribution, model: HookedTransformer, keep: torch.Tensor, s: torch.Tensor,
                 aggregate_pos: bool, selection: dict, task: str | None) -> Circuit:
    idx = keep.nonzero().tolist()
    nodes = [CircuitNode(layer=l, pos=None if aggregate_pos else p, index=i, score=float(s[l, p, i]))
             for l, p, i in idx]
    nodes.sort(key=lambda n: -abs(n.score))
    rows = attr.prompts.to_rows() if attr.prompts is not None else None
    return Circuit(nodes=nodes, basis=attr.basis, hook_names=list(attr.hook_names), node_width=attr.scores.shape[3],
                   model=model_facts(model), method=attr.method, metric=attr.metric,
                   data=dict(task=task, rows=rows, n_prompts=attr.scores.shape[0]),
                   selection=dict(selection, aggregate_pos=aggregate_pos))


def select_top_k(attr: Attribution, model: HookedTransformer, k: int, *, aggregate_pos: bool = False,
                 task: str | None = None) -> Circuit:
    """The ``k`` nodes with the largest |mean score|."""
    if k < 0:
        raise RelPLensError(f"k must be >= 0, got {k}")
    s = _node_scores(attr, aggregate_pos)
    keep = torch.zeros_like(s, dtype=torch.bool)
    if k:
        flat = s.abs().flatten().topk(min(k, s.numel())).indices
        keep.view(-1)[flat] = True
    return _from_scores(attr, model, keep, s, aggregate_pos, dict(k=k, tau=None), task)


def select_threshold(attr: Attribution, model: HookedTransformer, tau: float = 0.005, *,
                     aggregate_pos: bool = False, task: str | None = None) -> Circuit:
    """Nodes with |mean score| ≥ τ·|m|, m the mean clean metric."""
    if not tau >= 0:
        raise RelPLensError(f"tau must be >= 0, got {tau}")
    s = _node_scores(attr, aggregate_pos)
    m = attr.metric_clean.mean().abs().item()
    keep = s.abs() >= tau * m
    if tau == 0:
        keep &= s != 0
    return _from_scores(attr, model, keep, s, aggregate_pos, dict(k=None, tau=tau, m=m), task)
