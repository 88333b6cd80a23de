"""The circuit data model: a set of scored nodes (and optional weighted edges), what is needed to reproduce them,
and every annotation a circuit carries — one module, importing nothing else of :mod:`relp_lens.circuits`.

1. The types. :class:`CircuitNode` and :class:`CircuitEdge` make up a :class:`Circuit`; its annotations are typed,
   each made by one step of :mod:`relp_lens.circuits` or :mod:`relp_lens.analysis` and stored here:

   - :class:`IOEdges` (``Circuit.io_edges``): embedding → neuron, neuron → metric and embedding → metric edges
     (:func:`relp_lens.circuits.io_edges.attribute_io_edges`);
   - :class:`HeadSplits` of :class:`HeadSplit` (``Circuit.heads``): how each edge splits over attention heads
     (:func:`relp_lens.circuits.heads.attribute_head_splits`), keyed by :func:`edge_key`;
   - :class:`NeuronGroups` of :class:`NeuronGroup` (``Circuit.groups``): neuron groups
     (:func:`relp_lens.analysis.groups.group_neurons`);
   - :class:`Evaluation` (``Circuit.evaluation``): faithfulness and completeness
     (:func:`relp_lens.circuits.ablation.evaluate_circuit`);
   - ``Circuit.stats``: what each annotating step cost (:class:`StepStats` and its subclasses, by step name),
     in memory only.

   Dicts appear only at the file boundary (:meth:`Circuit.to_dict`, :meth:`Circuit.from_dict`): a ``Circuit``
   built by hand (or an annotation assigned later) with the JSON form of an annotation gets it converted, after
   the checks loading applies. :class:`Evaluation` and :class:`HeadSplits` (and the sweep results of
   :mod:`relp_lens.circuits.ablation`) still answer ``obj["key"]`` as the dicts they replace did, with a
   ``DeprecationWarning`` (:class:`LegacyKeys`).
2. Nodes are chosen from an attribution by :mod:`relp_lens.circuits.selection` (top-k or threshold); nodes are
   position-specific ``(layer, pos, index)`` or position-aggregated (``pos=None``: the neuron at every position).
   Positions follow :mod:`relp_lens.core.positions` (negative: counted from the end).
3. Save / load as JSON (:meth:`Circuit.save`, :meth:`Circuit.load`): schema ``relp_lens.circuits.circuit``,
   version 2 (version-1 files still load), written atomically. Loading checks every field's type and range and
   names the file and the field that is wrong (the rules: :mod:`relp_lens.circuits.schema`, which checks plain
   dicts); a folder, a missing, binary (not UTF-8), empty or truncated file, a file from a newer relp_lens and a
   number that is not finite (NaN, ±Infinity, an overflowing ``1e999``) are each refused with their own
   message. Saving refuses what loading would refuse (a NaN score: named by its path in the JSON) before
   anything is written, so a saved file always loads again.
4. :meth:`Circuit.check_model` verifies a circuit fits a model before any evaluation: the model it was made on
   is recorded by name and by a configuration fingerprint (:data:`FINGERPRINT`, :func:`model_fingerprint`:
   layers, widths, heads, vocabulary, norm type, activation, MLP kind, positional embedding, architecture —
   what a ``HookedTransformer`` and a ``TransformerBridge`` of the same weights report alike). Every fingerprint
   field the file records must equal the model's; the names must agree after :func:`canonical_model_name`
   (a shipped model's short name, a Hugging Face id, a GGUF file name and its quantisation suffix all map to
   one name), unless either is a placeholder (``"custom"``, a class name) that identifies nothing. Files
   written before the fingerprint was recorded are checked on the fields they have.
5. :meth:`Circuit.subgraph` restricts a circuit to some of its nodes and edges (pruning, drawing), keeping every
   annotation consistent. The circuit-tracer export is :func:`relp_lens.circuits.graph_export.to_circuit_tracer`.

JSON schema, version 2::

    {"schema": "relp_lens.circuit", "version": 2,
     "model": {"name", "n_layers", "d_model", "d_mlp", "d_vocab", "n_heads", "d_head", "n_key_value_heads",
               "normalization_type", "act_fn", "gated_mlp", "positional_embedding_type", "attn_only",
               "num_experts", "architecture"},        # name + fingerprint (older files: the first five)
     "basis": "mlp_post", "hook_names": [...one per layer...], "node_width": 1536,
     "method": "relp", "metric": "logit_diff",
     "baseline": "patch" | "zero" | "mean",              # what attribution compared activations with
     "ablation": "mean" | "zero" | "counterfactual",      # how evaluation removes nodes (default: consistent)
     "positions": {"rule": "absolute" | "end", "n_shared": int, "labels": {"-1": "' of'", ...}},
     "data": {"task": str|null, "rows": [...JSONL rows...]|null, "n_prompts": int,
              "prepend_bos": bool},                   # prompts started with BOS (absent: true, as before)
     "selection": {"k": int|null, "tau": float|null, "aggregate_pos": bool, "include_fixed": bool,
                   "excluded_positions": [int], "excluded_neurons": [[layer, index]]},
     "nodes": [{"layer": int, "pos": int|null, "index": int, "score": float}],   # pos < 0: from the end
     "edges": [{"source": node#, "target": node#, "weight": float}],
     "evaluation": {"faithfulness", "completeness", "f_model", "f_empty", "f_circuit", "f_complement",
                    "n_nodes", "n_prompts", "ablation", "prepend_bos", "verdict"}|null,     # Evaluation
     "io_edges": {"positions": [int], "input": [[row, node#, float]], "output": [float per node],   # optional
                  "direct": [float per position], "metric": float,
                  "targets": [{"name", "sign", "output": [float per node], "direct": [float per position]}]},
     "heads": {"rule": "last head", "n_heads": int, "top": int|null, "method": str,          # optional
               "max_nodes": int (only the drawn graph was split), "totals_exact": bool,
               "edges": {"L3/100@-1 -> L5/20@-1": {"residual": float, "heads": [[block, head, float]],
                                                   "other": float}},   # also "E@-2 -> …", "… -> out"
               "totals": [[block, head, float]]},    # HeadSplits, see relp_lens.circuits.heads
     "groups": {"method": "spectral", "features": ["attribution", "activation", "edges"],   # optional
                "seed": int, "n_prompts": int, "pruned": bool,
                "stability": {"ari": float, "ari_seeds": [float], "ari_subsets": [float], "subset_fraction"},
                "groups": [{"name": "G1", "label": str, "members": ["L3/100@-1", ...], "score": float,
                            "stability": float, "promoted": [str]}]}}   # NeuronGroups, see relp_lens.analysis.groups

Version 1 had no baseline, ablation or positions: positions were absolute, the baseline the patch prompts
(paired) or zero, and evaluation mean ablation.

``select_top_k`` and ``select_threshold`` lived here before; they are in :mod:`relp_lens.circuits.selection`
now, and the old names still answer here with a ``DeprecationWarning`` (a module ``__getattr__`` that imports
the selection module when first asked, through ``importlib``: this module imports nothing of the circuits stage
but :mod:`relp_lens.circuits.schema`, which the layout test checks).
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Iterable, KeysView, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from relp_lens.circuits import schema
# the file format's names, public here too (FINGERPRINT: step 4)
from relp_lens.circuits.schema import ABLATIONS, BASELINES, FEATURES, FINGERPRINT, SCHEMA, VERSION  # noqa: F401
from relp_lens.core import backends, nodes
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import AblationKind, CircuitBaseline
from relp_lens.core.files import read_input, write_json_atomic
from relp_lens.core.validate import is_int, show

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer


def consistent_ablation(baseline: CircuitBaseline) -> AblationKind:
    """The ablation that measures what a baseline's scores estimate.

    Args:
        baseline: the attribution's baseline, ``"patch"``, ``"zero"`` or ``"mean"``.

    Returns:
        The patch prompts' mean for paired data (Marks et al.), zero for a zero baseline, the mean for a mean
        baseline (and for anything else).
    """
    return {"patch": "mean", "zero": "zero", "mean": "mean"}.get(baseline, "mean")


# -- names of the graph's nodes and edges (stable under pruning: labels, not numbers) ---------------------------
OUT = "out"  # the output (metric) node of a full graph


def embedding_key(position: int) -> str:
    """The graph key of the embedding node at an aligned position.

    Args:
        position: the aligned position (negative: counted from the end).

    Returns:
        ``"E@{position}"``.
    """
    return f"E@{position}"


def edge_key(source: str, target: str) -> str:
    """The key of an edge's split in :attr:`HeadSplits.edges`.

    Args:
        source: the source's label (:meth:`CircuitNode.label`, :func:`embedding_key`).
        target: the target's label (:meth:`CircuitNode.label` or :data:`OUT`).

    Returns:
        ``"{source} -> {target}"``: node labels, stable under pruning.
    """
    return f"{source} -> {target}"


class LegacyKeys:
    """Read-only ``obj["key"]`` (and ``obj.get``, ``"key" in obj``, ``obj.keys()``) on a result that used to be a
    dict, answered from :meth:`to_dict` with a ``DeprecationWarning``; use the attributes instead."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        """The JSON form.

        Returns:
            The dict the result used to be.
        """
        raise NotImplementedError

    def _legacy(self, what: str) -> dict[str, Any]:
        warnings.warn(f"{type(self).__name__}{what} is deprecated: {type(self).__name__} is a dataclass now; read "
                      f"its attributes (or .to_dict())", DeprecationWarning, stacklevel=3)
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._legacy(f"[{key!r}]")[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``to_dict().get(key, default)``, deprecated (a ``DeprecationWarning``).

        Args:
            key: a key of the JSON form.
            default: what to return when it has no such key.

        Returns:
            The value.
        """
        return self._legacy(f".get({key!r})").get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._legacy(f": {key!r} in ...")

    def keys(self) -> KeysView[str]:
        """``to_dict().keys()``, deprecated (a ``DeprecationWarning``).

        Returns:
            The keys of the JSON form.
        """
        return self._legacy(".keys()").keys()


# -- nodes and edges ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitNode:
    """One node of a circuit: a unit of the basis at a token position.

    Attributes:
        layer: index into :attr:`Circuit.hook_names` (the hook the node lives at), not necessarily the block.
        pos: token position (negative: counted from the end, :mod:`relp_lens.core.positions`), or ``None`` for
            the unit at every position (position-aggregated).
        index: the unit within the hook's flattened activation (a neuron of ``d_mlp``, a dimension of ``d_model``).
        score: its attribution score, the mean over the build prompts (summed over positions when ``pos`` is
            ``None``), in the metric's units (a logit difference for ``logit_diff``).
    """

    layer: int
    pos: int | None
    index: int
    score: float = 0.0

    @property
    def key(self) -> tuple[int, int | None, int]:
        """What identifies the node (the score does not).

        Returns:
            ``(layer, pos, index)``.
        """
        return (self.layer, self.pos, self.index)

    def label(self) -> str:
        """The node's name, stable under pruning (head splits and groups refer to nodes by it).

        Returns:
            ``"L{layer}/{index}@{pos}"`` (``@all`` for every position).
        """
        return f"L{self.layer}/{self.index}@{'all' if self.pos is None else self.pos}"


@dataclass(frozen=True)
class CircuitEdge:
    """A weighted edge between two nodes of a circuit (a direct effect, :mod:`relp_lens.circuits.edges`).

    Attributes:
        source: the upstream node, an index into :attr:`Circuit.nodes`.
        target: the downstream node, an index into :attr:`Circuit.nodes`.
        weight: the direct effect of the source on the target's contribution to the metric, averaged over the
            prompts (the metric's units).
    """

    source: int
    target: int
    weight: float


# -- io_edges ---------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class IOEdges:
    """A circuit's input and output edges (mean over prompts), with the aligned positions they refer to.

    Made by :func:`relp_lens.circuits.io_edges.attribute_io_edges`; stored as ``Circuit.io_edges``. Tensors are
    float64 on the CPU; weights are in the metric's units. Two are equal when their JSON forms are.

    Attributes:
        positions: the aligned position of each row of ``input`` / entry of ``direct``.
        input: ``[pos, node]``: the embedding at a position → a circuit node.
        output: ``[node]``: a circuit node → the metric (direct effect).
        direct: ``[pos]``: the embedding at a position → the metric (direct path).
        metric: the mean metric on the clean prompts (``None``: not recorded).
        targets: for a metric that is a signed sum of target logits (``logit_diff`` = clean answer − patch answer),
            the name of each target's output node; empty otherwise.
        signs: each target's sign in the metric.
        target_output: ``[target, node]``: a circuit node → each target logit.
        target_direct: ``[target, pos]``: the embedding at a position → each target logit.
    """

    positions: list[int]
    input: torch.Tensor
    output: torch.Tensor
    direct: torch.Tensor
    metric: float | None
    targets: list[str] = field(default_factory=list)
    signs: list[float] = field(default_factory=list)
    target_output: torch.Tensor | None = None
    target_direct: torch.Tensor | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IOEdges) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (a circuit file's ``io_edges``).

        Returns:
            ``{"positions", "metric", "input", "output", "direct"}`` (and ``"targets"`` when there are targets);
            ``input`` lists only the non-zero edges, as ``[row, node, weight]``.
        """
        nz = self.input.nonzero().tolist()
        d = dict(positions=list(self.positions))
        if self.metric is not None:
            d["metric"] = float(self.metric)
        d.update(input=[[int(r), int(n), float(self.input[r, n])] for r, n in nz],
                 output=[float(w) for w in self.output.tolist()], direct=[float(w) for w in self.direct.tolist()])
        if self.targets:
            d["targets"] = [dict(name=t, sign=float(s), output=[float(w) for w in o.tolist()],
                                 direct=[float(w) for w in dr.tolist()])
                            for t, s, o, dr in zip(self.targets, self.signs, self.target_output, self.target_direct)]
        return d

    @classmethod
    def from_dict(cls, d: dict, n_nodes: int) -> IOEdges:
        """Read :meth:`to_dict`'s form back, checking it fits a circuit of ``n_nodes`` nodes.

        Args:
            d: the JSON form.
            n_nodes: the number of nodes of the circuit it belongs to.

        Returns:
            The edges; a :class:`~relp_lens.core.errors.RelPLensError` when malformed or of the wrong lengths.
        """
        try:
            positions = [int(p) for p in d["positions"]]
            output = torch.tensor([float(w) for w in d["output"]], dtype=torch.float64)
            direct = torch.tensor([float(w) for w in d["direct"]], dtype=torch.float64)
            inp = torch.zeros(len(positions), n_nodes, dtype=torch.float64)
            for r, n, w in d["input"]:
                inp[int(r), int(n)] = float(w)
            metric = None if d.get("metric") is None else float(d["metric"])
            targets = d.get("targets") or []
            names = [str(t["name"]) for t in targets]
            signs = [float(t["sign"]) for t in targets]
            t_out = torch.tensor([[float(w) for w in t["output"]] for t in targets], dtype=torch.float64)
            t_dir = torch.tensor([[float(w) for w in t["direct"]] for t in targets], dtype=torch.float64)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise RelPLensError(f"io_edges: malformed ({type(e).__name__}: {e})") from e
        if output.shape[0] != n_nodes or direct.shape[0] != len(positions):
            raise RelPLensError(f"io_edges: {output.shape[0]} output weights for {n_nodes} nodes, "
                                f"{direct.shape[0]} direct weights for {len(positions)} positions")
        if targets and (t_out.shape != (len(targets), n_nodes) or t_dir.shape != (len(targets), len(positions))):
            raise RelPLensError(f"io_edges: target edges must have {n_nodes} output and {len(positions)} direct "
                                f"weights each")
        return cls(positions=positions, input=inp, output=output, direct=direct, metric=metric, targets=names,
                   signs=signs, target_output=t_out if targets else None, target_direct=t_dir if targets else None)

    def restricted(self, used: Sequence[int]) -> IOEdges:
        """The same edges for some nodes only.

        Args:
            used: node numbers, in the order of the new numbering.

        Returns:
            New edges whose node axis is ``used``.
        """
        used = list(used)
        return replace(self, input=self.input[:, used], output=self.output[used],
                       target_output=None if self.target_output is None else self.target_output[:, used])


# -- heads ------------------------------------------------------------------------------------------------------
def _triples(value: Iterable) -> list[tuple[int, int, float]]:
    return [(int(l), int(h), float(w)) for l, h, w in value]


@dataclass
class HeadSplit(LegacyKeys):
    """How one edge's weight splits over the attention heads its paths pass through (each path credited to the
    last head on it; :mod:`relp_lens.circuits.heads`). ``residual + Σ heads + other`` is the edge's weight.

    ``split["residual"]`` etc. still work, with a ``DeprecationWarning`` (:class:`LegacyKeys`).

    Attributes:
        residual: the share of the paths through no attention head.
        heads: the top heads by |weight|, ``(block, head, weight)``, largest |weight| first.
        other: what the heads not listed carry together.
    """

    residual: float
    heads: list[tuple[int, int, float]]
    other: float

    def __post_init__(self) -> None:
        self.heads = _triples(self.heads)

    @property
    def total(self) -> float:
        """The edge's weight, as the split adds it up.

        Returns:
            ``residual + Σ heads + other``.
        """
        return self.residual + sum(w for *_, w in self.heads) + self.other

    def to_dict(self) -> dict[str, Any]:
        """The JSON form.

        Returns:
            ``{"residual", "heads": [[block, head, weight], ...], "other"}``.
        """
        return dict(residual=float(self.residual), heads=[list(t) for t in self.heads], other=float(self.other))

    @classmethod
    def from_dict(cls, d: dict) -> HeadSplit:
        """Read :meth:`to_dict`'s form back (checked by :func:`relp_lens.circuits.schema.check_heads` first).

        Args:
            d: the JSON form.

        Returns:
            The split.
        """
        return cls(residual=float(d["residual"]), heads=_triples(d["heads"]), other=float(d["other"]))


@dataclass
class HeadSplits(LegacyKeys):
    """Every split edge of a circuit, and every head's total (``Circuit.heads``, made by
    :func:`relp_lens.circuits.heads.attribute_head_splits`).

    ``obj["edges"]``, ``obj["totals"]`` etc. still work, with a ``DeprecationWarning``: the JSON form's values
    (:class:`LegacyKeys`).

    Attributes:
        n_heads: attention heads per block.
        edges: each split edge by :func:`edge_key` (``"L3/100@-1 -> L5/20@-1"``, ``"E@-2 -> …"``, ``"… -> out"``).
        totals: every head's total over the split edges, ``(block, head, weight)``, largest |weight| first.
        top: how many heads each split lists (``None``: all of them, so the totals stay exact).
        method: the gradient method of the split (``"relp"`` or ``"grad"``).
        rule: how paths are credited (``"last head"``).
        totals_exact: whether ``totals`` are exact (after pruning they sum the listed heads of the remaining
            edges; exact when no edge had heads left out).
        max_nodes: only the edges of the readable graph of at most this many neurons were split (``None``: all).
    """

    n_heads: int
    edges: dict[str, HeadSplit]
    totals: list[tuple[int, int, float]]
    top: int | None = None
    method: str | None = None
    rule: str | None = "last head"
    totals_exact: bool | None = True
    max_nodes: int | None = None

    def __post_init__(self) -> None:
        self.totals = _triples(self.totals)
        self.edges = {k: v if isinstance(v, HeadSplit) else HeadSplit.from_dict(v) for k, v in self.edges.items()}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (a circuit file's ``heads``), keys in the order relp_lens has always written them.

        Returns:
            ``{"rule", "n_heads", "top", "method", "edges", "totals", "totals_exact", "max_nodes"}``; ``rule``,
            ``method``, ``totals_exact`` and ``max_nodes`` only when not ``None``.
        """
        d: dict[str, Any] = {}
        if self.rule is not None:
            d["rule"] = self.rule
        d.update(n_heads=self.n_heads, top=self.top)
        if self.method is not None:
            d["method"] = self.method
        d.update(edges={k: s.to_dict() for k, s in self.edges.items()}, totals=[list(t) for t in self.totals])
        if self.totals_exact is not None:
            d["totals_exact"] = self.totals_exact
        if self.max_nodes is not None:
            d["max_nodes"] = self.max_nodes
        return d

    @classmethod
    def from_dict(cls, d: dict) -> HeadSplits:
        """Read :meth:`to_dict`'s form back (checked by :func:`relp_lens.circuits.schema.check_heads` first).

        Args:
            d: the JSON form.

        Returns:
            The splits.
        """
        try:
            return cls(n_heads=int(d["n_heads"]), edges={str(k): HeadSplit.from_dict(v) for k, v in d["edges"].items()},
                       totals=_triples(d.get("totals") or []), top=d.get("top"), method=d.get("method"),
                       rule=d.get("rule"), totals_exact=d.get("totals_exact"), max_nodes=d.get("max_nodes"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RelPLensError(f"heads: malformed ({type(e).__name__}: {e})") from e

    def restricted(self, keys: set[str]) -> HeadSplits:
        """The splits of the edges ``keys`` only (after pruning).

        Args:
            keys: the :func:`edge_key` of every edge that remains.

        Returns:
            New splits; when edges were dropped, ``totals`` sum the listed heads of the remaining edges and
            ``totals_exact`` says whether no remaining edge had heads left out (``other == 0``).
        """
        kept = {k: v for k, v in self.edges.items() if k in keys}
        out = replace(self, edges=kept)
        if len(kept) < len(self.edges):  # totals over the remaining edges: from their listed heads
            totals: dict[tuple[int, int], float] = {}
            for split in kept.values():
                for l, h, w in split.heads:
                    totals[(l, h)] = totals.get((l, h), 0.0) + w
            out.totals = [(l, h, w) for (l, h), w in sorted(totals.items(), key=lambda x: -abs(x[1]))]
            out.totals_exact = all(split.other == 0 for split in kept.values())
        return out


# -- groups (FEATURES: what neurons can be grouped by, from relp_lens.circuits.schema) -----------------------------


@dataclass
class NeuronGroup:
    """One group of a circuit's neurons (a supernode).

    Attributes:
        name: ``"G1"``, ``"G2"``, … in order of |total score|.
        label: its layers, positions and promoted tokens.
        members: its nodes' labels (:meth:`CircuitNode.label`, ``"L3/100@-1"``).
        score: the sum of the members' circuit scores (the metric's units).
        stability: the mean best Jaccard overlap across re-clusterings (``None``: not measured).
        promoted: the tokens the group's mean write raises most.
    """

    name: str
    label: str
    members: list[str]
    score: float
    stability: float | None = None
    promoted: list[str] = field(default_factory=list)


@dataclass
class NeuronGroups:
    """A circuit's neuron groups (``Circuit.groups``, made by :func:`relp_lens.analysis.groups.group_neurons`).

    Attributes:
        groups: the groups; no node in two of them, none empty.
        features: what they were grouped by (:data:`FEATURES`).
        seed: the clustering's seed.
        n_prompts: the prompts the profiles were computed on.
        stability: ``{"ari": mean, "ari_seeds": [...], "ari_subsets": [...], "subset_fraction", "kind"}``.
        method: the clustering (``"spectral"``).
        pruned: members were removed by pruning after grouping.
    """

    groups: list[NeuronGroup]
    features: list[str]
    seed: int = 0
    n_prompts: int = 0
    stability: dict[str, Any] = field(default_factory=dict)
    method: str = "spectral"
    pruned: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.features if f not in FEATURES]
        if bad:
            raise RelPLensError(f"groups: unknown feature {bad[0]!r}; choose from {list(FEATURES)}")
        seen: set[str] = set()
        for g in self.groups:
            if not g.members:
                raise RelPLensError(f"groups: group {g.name} has no members")
            twice = seen.intersection(g.members)
            if twice:
                raise RelPLensError(f"groups: node {sorted(twice)[0]} is in more than one group")
            seen.update(g.members)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (a circuit file's ``groups``).

        Returns:
            Every field, in order (``dataclasses.asdict``).
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> NeuronGroups:
        """Read :meth:`to_dict`'s form back.

        Args:
            d: the JSON form.

        Returns:
            The groups; a :class:`~relp_lens.core.errors.RelPLensError` when malformed.
        """
        try:
            groups = [NeuronGroup(name=str(g["name"]), label=str(g["label"]), members=[str(m) for m in g["members"]],
                                  score=float(g["score"]),
                                  stability=None if g.get("stability") is None else float(g["stability"]),
                                  promoted=[str(t) for t in g.get("promoted", [])])
                      for g in d["groups"]]
            return cls(groups=groups, features=[str(f) for f in d["features"]], seed=int(d.get("seed", 0)),
                       n_prompts=int(d.get("n_prompts", 0)), stability=dict(d.get("stability") or {}),
                       method=str(d.get("method", "spectral")), pruned=bool(d.get("pruned", False)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RelPLensError(f"groups: malformed ({type(e).__name__}: {e})") from e

    def assignment(self, labels: Sequence[str]) -> list[int]:
        """Each node's group number.

        Args:
            labels: node labels.

        Returns:
            The index into :attr:`groups` of each label's group, -1 for a node in no group.
        """
        where = {m: i for i, g in enumerate(self.groups) for m in g.members}
        return [where.get(label, -1) for label in labels]

    def restricted(self, labels: Sequence[str]) -> NeuronGroups | None:
        """Only the members among ``labels`` (after pruning).

        Args:
            labels: the labels of the nodes that remain.

        Returns:
            The groups without the members that left (groups left empty are dropped; ``pruned`` set when a
            member left), or ``None`` when no group is left.
        """
        keep = set(labels)
        groups = [replace(g, members=[m for m in g.members if m in keep]) for g in self.groups]
        groups = [g for g in groups if g.members]
        if not groups:
            return None
        changed = sum(len(g.members) for g in groups) < sum(len(g.members) for g in self.groups)
        return replace(self, groups=groups, pruned=self.pruned or changed)

    def summary(self) -> str:
        """Lines for people.

        Returns:
            The groups, their sizes, scores, stability and labels.
        """
        st = self.stability.get("ari")
        lines = [f"{len(self.groups)} neuron groups from {', '.join(self.features)} ({self.method}"
                 + (f", stability ARI {st:.2f}" if st is not None else "") + ")"]
        for g in self.groups:
            stab = "" if g.stability is None else f", stability {g.stability:.2f}"
            lines.append(f"  {g.name}: {len(g.members)} neurons, score {g.score:+.3f}{stab} — {g.label}")
        return "\n".join(lines)


# -- evaluation -------------------------------------------------------------------------------------------------
@dataclass
class AblationRatios(LegacyKeys):
    """The six numbers of one ablation judgement, shared by the sweep results (:class:`Evaluation` carries the
    same ones, first among its fields, in the file's order).

    Attributes:
        faithfulness: as in :class:`Evaluation`.
        completeness: as in :class:`Evaluation`.
        f_model: as in :class:`Evaluation`.
        f_empty: as in :class:`Evaluation`.
        f_circuit: as in :class:`Evaluation`.
        f_complement: as in :class:`Evaluation`.
    """

    faithfulness: float
    completeness: float
    f_model: float
    f_empty: float
    f_circuit: float
    f_complement: float


RATIOS = ("faithfulness", "completeness", "f_model", "f_empty", "f_circuit", "f_complement")


@dataclass
class Evaluation(LegacyKeys):
    """How much of the model's behaviour a circuit carries, by ablation (``Circuit.evaluation``, made by
    :func:`relp_lens.circuits.ablation.evaluate_circuit`).

    ``F(·)`` is the mean metric over the evaluation prompts (the metric's units): F(M) with nothing ablated,
    F(∅) with every node of the basis ablated, F(C) with everything outside the circuit ablated, F(M\\C) with the
    circuit ablated. ``ev["faithfulness"]`` etc. still work, with a ``DeprecationWarning`` (:class:`LegacyKeys`).

    Attributes:
        faithfulness: (F(C) − F(∅)) / (F(M) − F(∅)).
        completeness: (F(M\\C) − F(∅)) / (F(M) − F(∅)).
        f_model: F(M), nothing ablated.
        f_empty: F(∅), every node of the basis ablated.
        f_circuit: F(C), everything outside the circuit ablated.
        f_complement: F(M\\C), the circuit ablated.
        n_nodes: the circuit's size.
        n_prompts: the evaluation prompts.
        ablation: how nodes were removed (``mean``, ``zero``, ``counterfactual``).
        prepend_bos: whether the prompts started with BOS.
        verdict: a sentence when the circuit explains little (:func:`relp_lens.circuits.ablation.verdict`).
        metric: the metric's name, where recorded.
        extra: any other key of a file's ``evaluation`` (kept as read, written back after the known ones).
    """

    faithfulness: float
    completeness: float
    f_model: float | None = None
    f_empty: float | None = None
    f_circuit: float | None = None
    f_complement: float | None = None
    n_nodes: int | None = None
    n_prompts: int | None = None
    ablation: AblationKind | None = None
    prepend_bos: bool | None = None
    verdict: str | None = None
    metric: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (a circuit file's ``evaluation``; the dict ``evaluate_circuit`` returned before).

        Returns:
            The fields that are not ``None``, in order, then :attr:`extra`.
        """
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in d.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        """Read :meth:`to_dict`'s form back (checked by :func:`relp_lens.circuits.schema.check_evaluation` first).

        Args:
            d: the JSON form, with at least ``faithfulness`` and ``completeness``.

        Returns:
            The evaluation; keys it does not know go to :attr:`extra`.
        """
        known = {f.name for f in fields(cls)} - {"extra"}
        try:
            return cls(**{k: v for k, v in d.items() if k in known},
                       extra={k: v for k, v in d.items() if k not in known})
        except TypeError as e:
            raise RelPLensError(f"evaluation: malformed ({e})") from e


# -- statistics of the annotating steps -------------------------------------------------------------------------
@dataclass(kw_only=True)
class StepStats:
    """What one step that annotates a circuit cost (``Circuit.stats[step]``; in memory only, never in the file).

    Attributes:
        n_prompts: the prompts the step ran on.
        backward_passes: the step's own backward passes (vectorised ones count once; the attribution pass each
            batch starts with is not counted).
    """

    n_prompts: int
    backward_passes: int


# -- the circuit ------------------------------------------------------------------------------------------------
_ANNOTATIONS = ("evaluation", "io_edges", "heads", "groups")


@dataclass
class Circuit:
    """Scored nodes of a model, optional edges between them, how they were found, and their annotations.

    Built by :func:`relp_lens.circuits.selection.select_top_k` / ``select_threshold``; annotated by the
    ``attribute_*`` steps (each returns a new circuit) and :func:`relp_lens.circuits.ablation.evaluate_circuit`;
    saved and loaded as JSON (module docstring). An annotation given as its JSON form (a dict), to the
    constructor or assigned later, is checked as loading checks it and converted to its type; so are nodes and
    edges given as dicts (``Circuit(**relp_lens.circuits.schema.check_document(d))`` is ``from_dict`` without the
    file's name).

    Attributes:
        nodes: the nodes, by decreasing |score| when selected.
        basis: the node basis (``"mlp_post"``: MLP neurons, ``"mlp_out"``, ``"resid_post"``, ...).
        hook_names: one hook per layer of the basis; :attr:`CircuitNode.layer` indexes it.
        node_width: units per hook (``d_mlp`` for neurons).
        model: the model's name and fingerprint (:func:`model_facts`).
        method: the attribution method (``"relp"``, ``"grad"``, ``"ig"``).
        metric: the metric's name (``"logit_diff"``, ...).
        data: the build prompts (``rows``), their number, the task, ``prepend_bos``, held-out ``eval_rows``.
        selection: how the nodes were chosen (``k`` or ``tau``, what was left out, pruning thresholds).
        edges: weighted edges between nodes (:func:`relp_lens.circuits.edges.attribute_edges`).
        evaluation: faithfulness and completeness (:class:`Evaluation`), or ``None``.
        baseline: what the attribution compared activations with (``"patch"``, ``"zero"``, ``"mean"``).
        ablation: how evaluation removes nodes (``"mean"``, ``"zero"``, ``"counterfactual"``).
        positions: ``{"rule": "absolute" | "end", "n_shared": int, "labels": {pos: token}}``.
        io_edges: input and output edges (:class:`IOEdges`), or ``None``.
        heads: edges split over attention heads (:class:`HeadSplits`), or ``None``.
        groups: neuron groups (:class:`NeuronGroups`), or ``None``.
        source: the file it was loaded from (for messages); not compared, not written.
        stats: what each annotating step cost, by step name (``"edges"``, ``"io_edges"``, ``"heads"``,
            ``"groups"``: a :class:`StepStats`); in memory only, not compared, not written.
    """

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
    evaluation: Evaluation | None = None
    baseline: CircuitBaseline = "patch"
    ablation: AblationKind = "mean"
    positions: dict[str, Any] = field(default_factory=lambda: dict(rule="absolute", n_shared=0, labels={}))
    io_edges: IOEdges | None = None
    heads: HeadSplits | None = None
    groups: NeuronGroups | None = None
    source: str | None = field(default=None, repr=False, compare=False)
    stats: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _ANNOTATIONS and isinstance(value, dict):  # the JSON form: checked, then typed
            value = self._annotation(name, value)
        elif name in ("nodes", "edges") and isinstance(value, list) and any(isinstance(x, dict) for x in value):
            kind = CircuitNode if name == "nodes" else CircuitEdge
            try:
                value = [kind(**x) if isinstance(x, dict) else x for x in value]
            except TypeError as e:
                raise RelPLensError(f"{name}: malformed ({e})") from None
        object.__setattr__(self, name, value)

    def _annotation(self, name: str, value: dict) -> Any:
        """An annotation's JSON form checked as :meth:`from_dict` checks it, and converted to its type."""
        if name == "evaluation" and not value:
            return None
        schema.check_finite(value, name)
        nodes = self.__dict__.get("nodes") or []
        if name == "evaluation":
            schema.check_evaluation(value)
            return Evaluation.from_dict(value)
        if name == "io_edges":
            schema.check_io_edges(value, len(nodes))
            return IOEdges.from_dict(value, len(nodes))
        if name == "heads":
            schema.check_heads(value)
            return HeadSplits.from_dict(value)
        schema.check_groups(value, {n.label() for n in nodes})
        return NeuronGroups.from_dict(value)

    def __post_init__(self) -> None:
        # a circuit's own containers: a step builds its result with dataclasses.replace, and the result must not
        # share a dict or list with its input (``c2.data[...] = x`` leaves ``c1`` as it was)
        self.stats = dict(self.stats)
        for name in ("data", "selection", "model", "positions"):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, dict(getattr(self, name)))
        for name in ("nodes", "edges", "hook_names"):
            if isinstance(getattr(self, name), (list, tuple)):
                setattr(self, name, list(getattr(self, name)))
        if self.ablation not in ABLATIONS:
            raise RelPLensError(f"unknown ablation {self.ablation!r}; choose from {list(ABLATIONS)}")
        if not is_int(self.node_width, numpy=False) or self.node_width < 1:
            raise RelPLensError(f"node_width must be a positive integer, got {show(self.node_width)}")
        n_layers = len(self.hook_names)
        seen = set()
        for i, n in enumerate(self.nodes):
            if not (is_int(n.layer, numpy=False) and 0 <= n.layer < n_layers):
                raise RelPLensError(f"node {i}: layer {n.layer!r} outside [0, {n_layers})")
            if not (is_int(n.index, numpy=False) and 0 <= n.index < self.node_width):
                raise RelPLensError(f"node {i}: index {n.index!r} outside [0, {self.node_width})")
            if n.pos is not None and not is_int(n.pos, numpy=False):
                raise RelPLensError(f"node {i}: pos must be an integer (negative: from the end) or null, "
                                    f"got {n.pos!r}")
            if n.key in seen:
                raise RelPLensError(f"node {i}: duplicate node {n.label()}")
            seen.add(n.key)
        for i, e in enumerate(self.edges):
            for end in (e.source, e.target):
                if not (is_int(end, numpy=False) and 0 <= end < len(self.nodes)):
                    raise RelPLensError(f"edge {i}: node number {end!r} outside [0, {len(self.nodes)})")

    def __len__(self) -> int:
        return len(self.nodes)

    def is_error(self, node: CircuitNode) -> bool:
        """Whether ``node`` is a dictionary's error node: the last node (``index == d_sae``) of a layer of
        dictionary features (hook ``….hook_sae_nodes``, :mod:`relp_lens.core.splice`).

        Args:
            node: one of the circuit's nodes.

        Returns:
            True for an error node, False for a neuron, a latent or any other node.
        """
        return self.hook_names[node.layer].endswith(nodes.SAE_NODES) and node.index == self.node_width - 1

    def node_label(self, node: CircuitNode) -> str:
        """A node's name for people: ``L3/123@5`` a neuron, ``L3/f123@5`` a dictionary latent, ``L3/err@5`` an
        error node (``@all``: every position), ``L3`` the block of the node's hook (a basis of some layers names
        them as the model does; :func:`relp_lens.core.nodes.layer_numbers`). Display only:
        ``CircuitNode.label()`` stays the node's identity.

        Args:
            node: one of the circuit's nodes.

        Returns:
            The label.
        """
        hook = self.hook_names[node.layer]
        unit = nodes.unit_label(hook, node.index, self.node_width)
        shown = nodes.layer_numbers(self.hook_names)[node.layer]
        return f"L{shown}/{unit}@{'all' if node.pos is None else node.pos}"

    def node_hook(self, node: CircuitNode) -> str:
        """Where a node's activation lives: ``blocks.3.mlp.hook_post[123]``, a latent's
        ``….hook_sae_acts_post[123]`` or an error node's ``….hook_sae_error`` (:func:`relp_lens.core.nodes.unit_hook`).

        Args:
            node: one of the circuit's nodes.

        Returns:
            The hook name, with the index where the node is one unit of it.
        """
        return nodes.unit_hook(self.hook_names[node.layer], node.index, self.node_width)

    @property
    def keys(self) -> set[tuple[int, int | None, int]]:
        """The nodes' identities.

        Returns:
            Every node's ``(layer, pos, index)``.
        """
        return {n.key for n in self.nodes}

    @property
    def prepend_bos(self) -> bool:
        """Whether the attribution's prompts started with BOS, so that evaluation tokenizes the same way.

        Returns:
            ``data["prepend_bos"]``; True where the circuit does not say (files written before it was recorded).
        """
        value = self.data.get("prepend_bos", True) if isinstance(self.data, dict) else True
        if not isinstance(value, bool):
            raise RelPLensError(f"circuit data.prepend_bos must be true or false, got {value!r}")
        return value

    def summary(self, k: int = 10, str_tokens: list[str] | None = None) -> str:
        """Lines for people: the circuit's size, its evaluation and its top nodes.

        Args:
            k: how many nodes to list (by |score|).
            str_tokens: one prompt's tokens, to name positions the circuit has no label for.

        Returns:
            The text.
        """
        lines = [f"circuit: {len(self.nodes)} {self.basis} nodes, {len(self.edges)} edges "
                 f"({self.method}, {self.metric}, {self.model.get('name', '?')})"]
        if self.evaluation is not None:
            ev = self.evaluation
            lines.append(f"faithfulness {ev.faithfulness:+.3f}, completeness {ev.completeness:+.3f} "
                         f"on {'?' if ev.n_prompts is None else ev.n_prompts} held-out prompts")
        if self.positions.get("rule") == "end":
            lines.append("positions: prompts differ in length; negative positions count from the end (-1 = last)")
        for n in sorted(self.nodes, key=lambda n: -abs(n.score))[:k]:
            tok = f" {self.token_label(n.pos, str_tokens)}" if n.pos is not None else ""
            unit = nodes.unit_label(self.hook_names[n.layer], n.index, self.node_width)
            what = "error" if unit == "err" else ("latent" if unit.startswith("f") else "index")
            shown = "" if what == "error" else f"{n.index:5d}"
            layer = nodes.layer_numbers(self.hook_names)[n.layer]
            lines.append(f"  layer {layer:2d} {what} {shown} pos {'all' if n.pos is None else n.pos}{tok}"
                         f"  score {n.score:+.4f}")
        return "\n".join(lines)

    def token_label(self, pos: int, str_tokens: list[str] | None = None) -> str:
        """The token(s) found at a node position of the build prompts.

        Args:
            pos: the node position (negative: from the end).
            str_tokens: one prompt's tokens, used when the circuit has no label for ``pos``.

        Returns:
            The label, ``'?'`` when unknown.
        """
        labels = self.positions.get("labels") or {}
        if pos in labels:
            return labels[pos]
        if str_tokens is not None:
            from relp_lens.core.positions import resolve

            t = resolve(pos, len(str_tokens))
            return "?" if t is None else repr(str_tokens[t])
        return "?"

    # -- step 4: model compatibility ----------------------------------------------------------------------------
    def check_model(self, model: HookedTransformer) -> None:
        """Raise a clear error when this circuit cannot apply to ``model`` (step 4).

        Every fingerprint field (:data:`FINGERPRINT`) the circuit records must equal the model's (a field the
        circuit does not record, or records as null, is not checked: older files); then the model names must
        agree after :func:`canonical_model_name`, unless either is a placeholder; then every hook the circuit
        uses must exist. The message names the circuit's file, the model it was made on and the loaded model.

        Args:
            model: a ``HookedTransformer`` or ``TransformerBridge``.

        Returns:
            None; raises :class:`~relp_lens.core.errors.RelPLensError` when the circuit does not fit.
        """
        backends.require_model(model)
        where = f"{self.source}: " if self.source else ""
        made_on = self.model.get("name")
        loaded = getattr(model.cfg, "model_name", None)
        facts = model_fingerprint(model)
        for key in FINGERPRINT:
            want, have = self.model.get(key), facts.get(key)
            if want is not None and have is not None and want != have:
                raise RelPLensError(f"{where}circuit is for model {made_on!r} with {key}={want}, this model has "
                                    f"{key}={have} (the loaded model is {loaded!r})")
        a, b = canonical_model_name(made_on), canonical_model_name(loaded)
        if a is not None and b is not None and a != b:
            raise RelPLensError(
                f"{where}circuit was made on model {made_on!r}, the loaded model is {loaded!r}: the same "
                f"configuration, but another model (a circuit's neurons are those of the weights it was found "
                f"in); load {made_on!r}, or, for the same weights under another name, set "
                f"model.cfg.model_name = {made_on!r}")
        hook_dict = backends.hook_points(model)  # with the points of spliced dictionaries
        for name in self.hook_names:
            if name not in hook_dict and name.endswith(nodes.SAE_SUFFIXES):
                raise RelPLensError(f"{where}circuit uses the dictionary hook {name!r}, which exists only while "
                                    "the dictionary is spliced in: run this inside `with relp_lens.splice(model, "
                                    "dictionaries):` with the dictionaries the circuit was found with")
            if name not in hook_dict:
                raise RelPLensError(f"{where}circuit uses hook {name!r}, which this model does not have "
                                    f"(layer missing?)")

    # -- step 5: restriction ------------------------------------------------------------------------------------
    def subgraph(self, used: Sequence[int], kept: Sequence[CircuitEdge], *, io: IOEdges | None = None,
                 selection: dict | None = None) -> Circuit:
        """The circuit restricted to some of its nodes and neuron edges, every annotation kept consistent (the
        evaluation, which described the whole circuit, is dropped: evaluate the restriction anew).

        Input/output edges are ``io`` (over the old numbering, pruned edges zeroed) or the circuit's own,
        restricted to ``used`` and renumbered. Head splits are kept for exactly the edges that remain (their keys
        are node labels: nothing to renumber; :meth:`HeadSplits.restricted`); neuron groups keep the members that
        remain (groups left empty are dropped; :meth:`NeuronGroups.restricted`).

        Args:
            used: the node numbers kept, increasing.
            kept: the edges kept (over the old numbering).
            io: the input/output edges to keep instead of the circuit's own.
            selection: entries added to :attr:`selection` (how it was restricted).

        Returns:
            A new circuit; this one is left unchanged.
        """
        used = list(used)
        renumber = {old: new for new, old in enumerate(used)}
        nodes = [self.nodes[i] for i in used]
        edges = [CircuitEdge(renumber[e.source], renumber[e.target], e.weight) for e in kept]
        if io is None:
            io = self.io_edges
        if io is not None:
            io = io.restricted(used)
        heads = self.heads
        if heads is not None:
            label = [n.label() for n in nodes]
            keys = {edge_key(label[e.source], label[e.target]) for e in edges}
            if io is not None:
                keys |= {edge_key(embedding_key(io.positions[r]), label[n]) for r, n in io.input.nonzero().tolist()}
                keys |= {edge_key(label[j], OUT) for j in io.output.nonzero().flatten().tolist()}
                keys |= {edge_key(embedding_key(io.positions[r]), OUT) for r in io.direct.nonzero().flatten().tolist()}
            heads = heads.restricted(keys)
        groups = None if self.groups is None else self.groups.restricted([n.label() for n in nodes])
        return replace(self, nodes=nodes, edges=edges, selection=dict(self.selection, **(selection or {})),
                       io_edges=io, heads=heads, groups=groups, evaluation=None)  # judged anew: fewer nodes

    # -- step 3: files ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what :meth:`save` writes; the module docstring's schema).

        Returns:
            A dict of JSON values; the optional ``io_edges``, ``heads`` and ``groups`` only when present.
        """
        return {
            "schema": SCHEMA, "version": VERSION, "model": self.model, "basis": self.basis,
            "hook_names": self.hook_names, "node_width": self.node_width, "method": self.method,
            "metric": self.metric, "data": self.data, "selection": self.selection,
            "baseline": self.baseline, "ablation": self.ablation,
            "positions": dict(self.positions, labels={str(k): v for k, v in (self.positions.get("labels") or {}).items()}),
            "nodes": [asdict(n) for n in self.nodes], "edges": [asdict(e) for e in self.edges],
            "evaluation": None if self.evaluation is None else self.evaluation.to_dict(),
            **({"io_edges": self.io_edges.to_dict()} if self.io_edges is not None else {}),
            **({"heads": self.heads.to_dict()} if self.heads is not None else {}),
            **({"groups": self.groups.to_dict()} if self.groups is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "circuit") -> Circuit:
        """A circuit from :meth:`to_dict`'s form, every field checked (step 3).

        Args:
            d: the parsed JSON object (or a dict built in Python: the same checks, NaN and infinities included).
            source: what to call it in messages (the file's path).

        Returns:
            The circuit; a :class:`~relp_lens.core.errors.RelPLensError` naming ``source`` and the field otherwise.
        """
        try:
            return cls._from_checked(d, source)
        except RelPLensError as e:
            raise RelPLensError(f"{source}: {e}") from None
        except RecursionError:
            raise RelPLensError(f"{source}: nested too deeply to be a circuit") from None

    @classmethod
    def _from_checked(cls, d: Any, source: str) -> Circuit:
        """:func:`relp_lens.circuits.schema.check_document`'s plain fields, typed."""
        f = schema.check_document(d)
        nodes = [CircuitNode(**n) for n in f.pop("nodes")]
        edges = [CircuitEdge(**e) for e in f.pop("edges")]
        ev, io, heads, groups = (f.pop(k) for k in _ANNOTATIONS)
        return cls(nodes=nodes, edges=edges, **f, source=source,
                   evaluation=Evaluation.from_dict(ev) if ev else None,
                   io_edges=None if io is None else IOEdges.from_dict(io, len(nodes)),
                   heads=None if heads is None else HeadSplits.from_dict(heads),
                   groups=None if groups is None else NeuronGroups.from_dict(groups))

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (a temp file in the same folder, then rename).

        Args:
            path: the file to write (folders are made).

        Returns:
            ``path``. What :meth:`load` would refuse (a NaN score, a malformed field) is an error naming the field
            before anything is written.
        """
        d = self.to_dict()
        try:
            type(self)._from_checked(d, str(path))
        except RelPLensError as e:
            raise RelPLensError(f"cannot save the circuit to {path}: {e}") from None
        return write_json_atomic(path, d)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read and check a circuit file (step 3).

        Args:
            path: a file :meth:`save` wrote.

        Returns:
            The circuit; a :class:`~relp_lens.core.errors.RelPLensError` naming ``path`` and the problem for a
            folder, a missing, unreadable, binary, empty, truncated or invalid file, a newer version, or any field
            of the wrong type or range.
        """
        path = Path(path)
        text, d = schema.read_json(read_input(path, "circuit file"), path)
        try:
            return cls.from_dict(d, source=str(path))
        except RelPLensError as e:
            line = schema.non_finite_line(str(e), text)
            if line is None:
                raise
            raise RelPLensError(f"{e} (line {line})") from None

    def to_circuit_tracer(self, prompt_tokens: list[str], prompt: str = "", slug: str = "relp-lens",
                          **kwargs: Any) -> dict:
        """Deprecated: :func:`relp_lens.circuits.graph_export.to_circuit_tracer` (a ``DeprecationWarning``).

        Args:
            prompt_tokens: as in :func:`~relp_lens.circuits.graph_export.to_circuit_tracer`.
            prompt: as in :func:`~relp_lens.circuits.graph_export.to_circuit_tracer`.
            slug: as in :func:`~relp_lens.circuits.graph_export.to_circuit_tracer`.
            **kwargs: as in :func:`~relp_lens.circuits.graph_export.to_circuit_tracer`.

        Returns:
            circuit-tracer's graph dict.
        """
        warnings.warn("Circuit.to_circuit_tracer is deprecated: use relp_lens.circuits.graph_export."
                      "to_circuit_tracer(circuit, ...) (relp_lens.to_circuit_tracer)", DeprecationWarning, stacklevel=2)
        export = importlib.import_module("relp_lens.circuits.graph_export")  # a later module: no import edge
        return export.to_circuit_tracer(self, prompt_tokens, prompt=prompt, slug=slug, **kwargs)


# -- step 4: which model ---------------------------------------------------------------------------------
_QUANT_SUFFIX = re.compile(r"[._-](?:gguf|i?q[0-9]+(?:_[a-z0-9]+)*|f16|f32|bf16|fp16|fp32)$")
_PLACEHOLDER_NAMES = {"", "?", "custom", "unknown", "none", "model"}


def canonical_model_name(name: Any) -> str | None:
    """The name a model is compared by: ``None`` (unknown) for a placeholder, else a normalised name.

    A shipped model's short name (``"smollm2-135m"``) becomes its GGUF file's name; then the last path component
    (a Hugging Face id ``"HuggingFaceTB/SmolLM2-135M-Instruct"``, a file path), lower case, without ``.gguf`` and
    quantisation suffixes (``.Q4_1``, ``-q4_k_m``, ``.f16``). So ``"smollm2-135m"`` (either backend),
    ``"SmolLM2-135M-Instruct.Q4_1"`` (``--gguf``) and ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` are one model,
    and ``"HuggingFaceTB/SmolLM2-135M"`` (the base model, same shape) another. Placeholders identify nothing:
    TransformerLens' default ``"custom"``, an empty name, a class name (``"LlamaForCausalLM"``).

    Args:
        name: ``cfg.model_name`` or a circuit file's ``model.name``.

    Returns:
        The normalised name, or ``None`` when the name cannot tell models apart.
    """
    if not isinstance(name, str):
        return None
    text = name.strip()
    from relp_lens.core.models import SHIPPED_MODELS

    if text in SHIPPED_MODELS:
        text = SHIPPED_MODELS[text].filename
    text = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()
    while (shorter := _QUANT_SUFFIX.sub("", text)) != text:
        text = shorter
    if text in _PLACEHOLDER_NAMES or re.fullmatch(r"\w*for(causallm|conditionalgeneration)", text):
        return None
    return text


def model_fingerprint(model: HookedTransformer) -> dict[str, Any]:
    """The model's configuration as a circuit file records it (:data:`FINGERPRINT`), normalised so that a
    ``HookedTransformer`` and a ``TransformerBridge`` of the same weights give the same dict.

    Folded norms count as their kind (``LNPre`` as ``LN``, ``RMSPre`` as ``RMS``); no separate key/value head
    count means one per head; the architecture is ``cfg.original_architecture`` (HookedTransformer) or
    ``cfg.architecture`` (bridge).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.

    Returns:
        ``{field: value}`` for every field of :data:`FINGERPRINT` (``None`` where the model does not say).
    """
    c = model.cfg

    def get(key: str) -> Any:
        value = getattr(c, key, None)
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    norm = getattr(c, "normalization_type", None)
    if isinstance(norm, str) and norm.endswith("Pre"):
        norm = norm[: -len("Pre")]
    arch = getattr(c, "original_architecture", None) or getattr(c, "architecture", None)
    return dict(n_layers=get("n_layers"), d_model=get("d_model"), d_mlp=get("d_mlp"), d_vocab=get("d_vocab"),
                n_heads=get("n_heads"), d_head=get("d_head"),
                n_key_value_heads=get("n_key_value_heads") or get("n_heads"),
                normalization_type=norm if isinstance(norm, str) else None,
                act_fn=getattr(c, "act_fn", None) if isinstance(getattr(c, "act_fn", None), str) else None,
                gated_mlp=bool(getattr(c, "gated_mlp", False)),
                positional_embedding_type=getattr(c, "positional_embedding_type", None)
                if isinstance(getattr(c, "positional_embedding_type", None), str) else None,
                attn_only=bool(getattr(c, "attn_only", False)), num_experts=get("num_experts") or None,
                architecture=arch if isinstance(arch, str) else None)


def model_facts(model: HookedTransformer) -> dict[str, Any]:
    """The ``model`` field of a circuit file: ``cfg.model_name`` and :func:`model_fingerprint`.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.

    Returns:
        ``{"name": ..., "n_layers": ..., ...}``.
    """
    name = getattr(model.cfg, "model_name", None)
    return dict(name=None if name is None else str(name), **model_fingerprint(model))


# -- names that moved to relp_lens.circuits.selection -------------------------------------------------------------
_MOVED = ("select_top_k", "select_threshold")


def __getattr__(name: str) -> Any:
    """``select_top_k`` / ``select_threshold`` from their new module, with a ``DeprecationWarning``.

    The module is imported through ``importlib`` when first asked (no import edge from the data model to
    selection; the layout test does not see it, by design).

    Args:
        name: the attribute asked for.

    Returns:
        The function from :mod:`relp_lens.circuits.selection`; ``AttributeError`` for any other name.
    """
    if name in _MOVED:
        warnings.warn(f"relp_lens.circuits.circuit.{name} moved to relp_lens.circuits.selection.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("relp_lens.circuits.selection"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
