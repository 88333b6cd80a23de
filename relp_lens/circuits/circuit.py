"""Circuits: a set of scored nodes (and optional weighted edges) with what is needed to reproduce them.

1. Build from an :class:`~relp_lens.core.attribution.Attribution` with :func:`select_top_k` (top-k by |mean
   score|) or :func:`select_threshold` (keep |score| ≥ τ·|m|, m the mean clean metric; the paper uses
   τ = 0.005). Nodes are position-specific ``(layer, pos, index)`` or position-aggregated (``pos=None``:
   the neuron at every position; score summed over positions).
   Positions follow :mod:`relp_lens.core.positions` (negative: counted from the end). When the circuit will be
   judged by mean ablation of unpaired data, positions every prompt shares (BOS, a common template start)
   are left out by default — mean ablation cannot move them; ``exclude_neurons`` leaves out chosen
   neurons (e.g. :func:`relp_lens.analysis.cards.always_on_neurons`) at every position.
2. Save / load as JSON (:meth:`Circuit.save`, :meth:`Circuit.load`): schema ``relp_lens.circuits.circuit``,
   version 2 (version-1 files still load), written atomically; loading validates every field and names
   what is wrong.
3. :meth:`Circuit.check_model` verifies a circuit fits a model (layers, widths) before any evaluation.
4. :meth:`Circuit.to_circuit_tracer` exports circuit-tracer's graph JSON (metadata, qParams, nodes,
   links) so its frontend can render a relp_lens circuit.

JSON schema, version 2::

    {"schema": "relp_lens.circuit", "version": 2,
     "model": {"name", "n_layers", "d_model", "d_mlp", "d_vocab"},
     "basis": "mlp_post", "hook_names": [...one per layer...], "node_width": 1536,
     "method": "relp", "metric": "logit_diff",
     "baseline": "patch" | "zero" | "mean",              # what attribution compared activations with
     "ablation": "mean" | "zero" | "counterfactual",      # how evaluation removes nodes (default: consistent)
     "positions": {"rule": "absolute" | "end", "n_shared": int, "labels": {"-1": "' of'", ...}},
     "data": {"task": str|null, "rows": [...JSONL rows...]|null, "n_prompts": int},
     "selection": {"k": int|null, "tau": float|null, "aggregate_pos": bool, "include_fixed": bool,
                   "excluded_positions": [int], "excluded_neurons": [[layer, index]]},
     "nodes": [{"layer": int, "pos": int|null, "index": int, "score": float}],   # pos < 0: from the end
     "edges": [{"source": node#, "target": node#, "weight": float}],
     "evaluation": {...}|null,
     "io_edges": {"positions": [int], "input": [[row, node#, float]], "output": [float per node],   # optional
                  "direct": [float per position], "metric": float,
                  "targets": [{"name", "sign", "output": [float per node], "direct": [float per position]}]},
     "heads": {"rule": "last head", "n_heads": int, "top": int|null, "method": str,          # optional
               "max_nodes": int (only the drawn graph was split), "totals_exact": bool,
               "edges": {"L3/100@-1 -> L5/20@-1": {"residual": float, "heads": [[block, head, float]],
                                                   "other": float}},   # also "E@-2 -> …", "… -> out"
               "totals": [[block, head, float]]},    # see relp_lens.circuits.heads
     "groups": {"method": "spectral", "features": ["attribution", "activation", "edges"],   # optional
                "seed": int, "n_prompts": int, "pruned": bool,
                "stability": {"ari": float, "ari_seeds": [float], "ari_subsets": [float], "subset_fraction"},
                "groups": [{"name": "G1", "label": str, "members": ["L3/100@-1", ...], "score": float,
                            "stability": float, "promoted": [str]}]}}             # see relp_lens.analysis.groups

Version 1 had no baseline, ablation or positions: positions were absolute, the baseline the patch prompts
(paired) or zero, and evaluation mean ablation.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from relp_lens.core.attribution import Attribution
from relp_lens.core.errors import RelPLensError
from relp_lens.core.files import write_json_atomic

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

SCHEMA = "relp_lens.circuit"
VERSION = 2
ABLATIONS = ("mean", "zero", "counterfactual")


def consistent_ablation(baseline: str) -> str:
    """The ablation that measures what a baseline's scores estimate: the patch prompts' mean for paired
    data (Marks et al.), zero for a zero baseline, the mean for a mean baseline."""
    return {"patch": "mean", "zero": "zero", "mean": "mean"}.get(baseline, "mean")


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

    @property
    def key_tuple(self) -> tuple[int, int | None, int]:
        return self.key


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
    baseline: str = "patch"
    ablation: str = "mean"
    positions: dict[str, Any] = field(default_factory=lambda: dict(rule="absolute", n_shared=0, labels={}))
    io_edges: dict[str, Any] | None = None  # relp_lens.circuits.graph_io.IOEdges.to_dict(): embedding/output edges
    heads: dict[str, Any] | None = None  # relp_lens.circuits.heads.attribute_head_splits: edges split over heads
    groups: dict[str, Any] | None = None  # relp_lens.analysis.groups.group_neurons: neuron groups (supernodes)

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise RelPLensError(f"unknown ablation {self.ablation!r}; choose from {list(ABLATIONS)}")
        n_layers = len(self.hook_names)
        seen = set()
        for i, n in enumerate(self.nodes):
            if not (isinstance(n.layer, int) and 0 <= n.layer < n_layers):
                raise RelPLensError(f"node {i}: layer {n.layer!r} outside [0, {n_layers})")
            if not (isinstance(n.index, int) and 0 <= n.index < self.node_width):
                raise RelPLensError(f"node {i}: index {n.index!r} outside [0, {self.node_width})")
            if n.pos is not None and (isinstance(n.pos, bool) or not isinstance(n.pos, int)):
                raise RelPLensError(f"node {i}: pos must be an integer (negative: from the end) or null, "
                                    f"got {n.pos!r}")
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
        if self.positions.get("rule") == "end":
            lines.append("positions: prompts differ in length; negative positions count from the end (-1 = last)")
        for n in sorted(self.nodes, key=lambda n: -abs(n.score))[:k]:
            tok = f" {self.token_label(n.pos, str_tokens)}" if n.pos is not None else ""
            lines.append(f"  layer {n.layer:2d} index {n.index:5d} pos {'all' if n.pos is None else n.pos}{tok}"
                         f"  score {n.score:+.4f}")
        return "\n".join(lines)

    def token_label(self, pos: int, str_tokens: list[str] | None = None) -> str:
        """The token(s) found at node position ``pos`` of the build prompts ('?' when unknown)."""
        labels = self.positions.get("labels") or {}
        if pos in labels:
            return labels[pos]
        if str_tokens is not None:
            from relp_lens.core.positions import resolve

            t = resolve(pos, len(str_tokens))
            return "?" if t is None else repr(str_tokens[t])
        return "?"

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
            "baseline": self.baseline, "ablation": self.ablation,
            "positions": dict(self.positions, labels={str(k): v for k, v in (self.positions.get("labels") or {}).items()}),
            "nodes": [asdict(n) for n in self.nodes], "edges": [asdict(e) for e in self.edges],
            "evaluation": self.evaluation,
            **({"io_edges": self.io_edges} if self.io_edges is not None else {}),
            **({"heads": self.heads} if self.heads is not None else {}),
            **({"groups": self.groups} if self.groups is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "circuit") -> "Circuit":
        if not isinstance(d, dict):
            raise RelPLensError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise RelPLensError(f"{source}: not a relp_lens circuit (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        version = d.get("version")
        if version not in (1, VERSION):
            raise RelPLensError(f"{source}: circuit file version {version!r} is not supported "
                                f"(this relp_lens reads versions 1 and {VERSION})")
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
        data = d.get("data") or {}
        if version == 1:  # absolute positions; patch baseline for paired rows, zero otherwise; mean ablation
            rows = data.get("rows") or []
            baseline = "patch" if rows and "patch_prefix" in rows[0] else "zero"
            extra = dict(baseline=baseline, ablation="mean", positions=dict(rule="absolute", n_shared=0, labels={}))
        else:
            pos = d.get("positions") or {}
            try:
                labels = {int(k): str(v) for k, v in (pos.get("labels") or {}).items()}
            except (TypeError, ValueError, AttributeError):
                raise RelPLensError(f"{source}: positions.labels must map integer positions to labels") from None
            extra = dict(baseline=str(d.get("baseline", "patch")), ablation=str(d.get("ablation", "mean")),
                         positions=dict(rule=pos.get("rule", "absolute"), n_shared=int(pos.get("n_shared", 0)),
                                        labels=labels))
        try:
            io = d.get("io_edges")
            if io is not None:
                from relp_lens.circuits.graph_io import IOEdges

                IOEdges.from_dict(io, len(nodes))  # validates
            heads = d.get("heads")
            if heads is not None:
                _check_heads(heads)
            groups = d.get("groups")
            if groups is not None:
                _check_groups(groups, nodes)
            return cls(nodes=nodes, basis=d["basis"], hook_names=d["hook_names"], node_width=d["node_width"],
                       model=d["model"], method=d.get("method", "?"), metric=d.get("metric", "?"),
                       data=data, selection=d.get("selection") or {}, edges=edges,
                       evaluation=d.get("evaluation"), io_edges=io, heads=heads, groups=groups, **extra)
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
    def to_circuit_tracer(self, prompt_tokens: list[str], prompt: str = "", slug: str = "relp-lens",
                          **kwargs) -> dict:
        """circuit-tracer graph JSON (its viewer's schema): neurons as features, embedding nodes, an output
        node, links = edges plus each neuron's score into the output. See :mod:`relp_lens.circuits.graph_export`
        (``kwargs``: ``token_ids``, ``output_label``, ``output_token``, ``output_prob``)."""
        from relp_lens.circuits.graph_export import circuit_tracer_graph

        if "io" not in kwargs and self.io_edges is not None:
            from relp_lens.circuits.graph_io import IOEdges

            kwargs["io"] = IOEdges.from_dict(self.io_edges, len(self.nodes))
        return circuit_tracer_graph(self, prompt_tokens, prompt=prompt, slug=slug, **kwargs)


def _check_heads(heads: Any) -> None:
    """Validate the optional ``heads`` field (see the schema above)."""
    try:
        int(heads["n_heads"])
        for key, split in heads["edges"].items():
            if not isinstance(key, str) or " -> " not in key:
                raise ValueError(f"edge key {key!r} is not 'source -> target'")
            float(split["residual"]), float(split["other"])
            for l, h, w in split["heads"]:
                int(l), int(h), float(w)
        for l, h, w in heads["totals"]:
            int(l), int(h), float(w)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RelPLensError(f"heads: malformed ({type(e).__name__}: {e})") from None


def _check_groups(groups: Any, nodes: Sequence[CircuitNode]) -> None:
    """Validate the optional ``groups`` field: well formed, members are nodes of the circuit."""
    from relp_lens.analysis.groups import NeuronGroups

    labels = {n.label() for n in nodes}
    for g in NeuronGroups.from_dict(groups).groups:
        missing = [m for m in g.members if m not in labels]
        if missing:
            raise RelPLensError(f"groups: group {g.name} member {missing[0]} is not a node of this circuit")


def model_facts(model: HookedTransformer) -> dict[str, Any]:
    c = model.cfg
    return dict(name=c.model_name, n_layers=c.n_layers, d_model=c.d_model, d_mlp=c.d_mlp, d_vocab=c.d_vocab)


def _node_scores(attr: Attribution, aggregate_pos: bool) -> torch.Tensor:
    """Mean score per node: ``[layer, pos, node]`` (pos axis of size 1 when aggregated)."""
    if aggregate_pos:
        return attr.mean_over_positions()[:, None, :].nan_to_num(0.0)
    return attr.mean().nan_to_num(0.0)


def _candidates(attr: Attribution, s: torch.Tensor, aggregate_pos: bool, ablation: str,
                include_fixed: bool | None, exclude_neurons, everywhere: bool = True) -> tuple[torch.Tensor, dict]:
    """``[layer, pos, node]`` bool: nodes selection may choose, and what was left out (for the file)."""
    ok = torch.ones_like(s, dtype=torch.bool)
    partial = []
    if everywhere and not aggregate_pos:  # a node must exist in every prompt it is applied to
        short = attr.counts < attr.n_examples
        ok[:, short] = False
        partial = [p for p, x in zip(attr.positions, short.tolist()) if x]
    if include_fixed is None:  # mean ablation cannot move a position identical in every prompt
        include_fixed = not (ablation == "mean" and not attr.paired)
    fixed = [] if include_fixed or aggregate_pos else attr.fixed_positions
    if fixed:
        ok[:, : len(fixed)] = False
        if len(fixed) == attr.n_positions:
            warnings.warn("every position is shared by all prompts (identical prompts?), so mean ablation "
                          "cannot move any node and none is selected; pass include_fixed=True or use more "
                          "varied prompts", stacklevel=3)
    excluded = []
    for layer, index in exclude_neurons or ():
        if not (0 <= layer < s.shape[0] and 0 <= index < s.shape[2]):
            raise RelPLensError(f"excluded neuron ({layer}, {index}) outside [0, {s.shape[0]}) × [0, {s.shape[2]})")
        ok[layer, :, index] = False
        excluded.append([int(layer), int(index)])
    return ok, dict(include_fixed=include_fixed, excluded_positions=list(fixed), excluded_neurons=excluded,
                    positions_not_in_every_prompt=partial)


def _from_scores(attr: Attribution, model: HookedTransformer, keep: torch.Tensor, s: torch.Tensor,
                 aggregate_pos: bool, selection: dict, task: str | None, ablation: str) -> Circuit:
    labels = attr.positions
    nodes = [CircuitNode(layer=l, pos=None if aggregate_pos else labels[p], index=i, score=float(s[l, p, i]))
             for l, p, i in keep.nonzero().tolist()]
    nodes.sort(key=lambda n: -abs(n.score))
    rows = attr.prompts.to_rows() if attr.prompts is not None else None
    align = attr.alignment
    positions = dict(rule="end" if align.end_aligned else "absolute", n_shared=align.n_shared,
                     labels=attr.position_labels())
    return Circuit(nodes=nodes, basis=attr.basis, hook_names=list(attr.hook_names), node_width=attr.width,
                   model=model_facts(model), method=attr.method, metric=attr.metric,
                   data=dict(task=task, rows=rows, n_prompts=attr.n_examples),
                   selection=dict(selection, aggregate_pos=aggregate_pos), baseline=attr.baseline,
                   ablation=ablation, positions=positions)


def _ablation(attr: Attribution, ablation: str | None) -> str:
    ablation = ablation or consistent_ablation(attr.baseline)
    if ablation not in ABLATIONS:
        raise RelPLensError(f"unknown ablation {ablation!r}; choose from {list(ABLATIONS)}")
    if ablation == "counterfactual" and not attr.paired:
        raise RelPLensError("counterfactual ablation needs paired data (patch prompts)")
    return ablation


def select_top_k(attr: Attribution, model: HookedTransformer, k: int, *, aggregate_pos: bool = False,
                 task: str | None = None, ablation: str | None = None, include_fixed: bool | None = None,
                 exclude_neurons: Sequence[tuple[int, int]] | None = None, everywhere: bool = True) -> Circuit:
    """The ``k`` nodes with the largest |mean score|.

    ``ablation``: how the circuit will be judged (default: consistent with the attribution's baseline,
    see :func:`consistent_ablation`); with mean ablation of unpaired data, positions shared by every
    prompt are left out unless ``include_fixed=True``. ``exclude_neurons``: ``(layer, index)`` pairs never
    selected. ``everywhere``: only positions every prompt has (prompts of different lengths: the far
    end-counted positions of the longest prompts are left out), so the circuit applies to all of them.
    """
    if k < 0:
        raise RelPLensError(f"k must be >= 0, got {k}")
    ablation = _ablation(attr, ablation)
    s = _node_scores(attr, aggregate_pos)
    ok, left_out = _candidates(attr, s, aggregate_pos, ablation, include_fixed, exclude_neurons, everywhere)
    keep = torch.zeros_like(s, dtype=torch.bool)
    key = s.abs().masked_fill(~ok, -1.0)
    k_eff = min(k, int(ok.sum()))
    if k_eff:
        flat = key.flatten().topk(k_eff).indices
        keep.view(-1)[flat] = True
    return _from_scores(attr, model, keep, s, aggregate_pos, dict(k=k, tau=None, **left_out), task, ablation)


def select_threshold(attr: Attribution, model: HookedTransformer, tau: float = 0.005, *,
                     aggregate_pos: bool = False, task: str | None = None, ablation: str | None = None,
                     include_fixed: bool | None = None,
                     exclude_neurons: Sequence[tuple[int, int]] | None = None, everywhere: bool = True) -> Circuit:
    """Nodes with |mean score| ≥ τ·|m|, m the mean clean metric (other arguments as :func:`select_top_k`)."""
    if not tau >= 0:
        raise RelPLensError(f"tau must be >= 0, got {tau}")
    ablation = _ablation(attr, ablation)
    s = _node_scores(attr, aggregate_pos)
    ok, left_out = _candidates(attr, s, aggregate_pos, ablation, include_fixed, exclude_neurons, everywhere)
    m = attr.metric_clean.mean().abs().item()
    keep = (s.abs() >= tau * m) & ok
    if tau == 0:
        keep &= s != 0
    return _from_scores(attr, model, keep, s, aggregate_pos, dict(k=None, tau=tau, m=m, **left_out), task,
                        ablation)
