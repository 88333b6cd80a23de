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
   version 2 (version-1 files still load), written atomically. Loading checks every field's type and range and
   names the file and the field that is wrong (the rules: :mod:`relp_lens.circuits.schema`); a folder, a missing, binary (not UTF-8), empty or truncated
   file, a file from a newer relp_lens and a number that is not finite (NaN, ±Infinity, an overflowing
   ``1e999``) are each refused with their own message. Saving refuses what loading would refuse (a NaN score:
   named by its path in the JSON) before anything is written, so a saved file always loads again.
3. :meth:`Circuit.check_model` verifies a circuit fits a model before any evaluation: the model it was made on
   is recorded by name and by a configuration fingerprint (:data:`FINGERPRINT`, :func:`model_fingerprint`:
   layers, widths, heads, vocabulary, norm type, activation, MLP kind, positional embedding, architecture —
   what a ``HookedTransformer`` and a ``TransformerBridge`` of the same weights report alike). Every fingerprint
   field the file records must equal the model's; the names must agree after :func:`canonical_model_name`
   (a shipped model's short name, a Hugging Face id, a GGUF file name and its quantisation suffix all map to
   one name), unless either is a placeholder (``"custom"``, a class name) that identifies nothing. Files
   written before the fingerprint was recorded are checked on the fields they have.
4. :meth:`Circuit.to_circuit_tracer` exports circuit-tracer's graph JSON (metadata, qParams, nodes,
   links) so its frontend can render a relp_lens circuit.

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

import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from relp_lens.circuits import schema
# the file format's names, public here too (FINGERPRINT: step 3)
from relp_lens.circuits.schema import ABLATIONS, BASELINES, FINGERPRINT, SCHEMA, VERSION  # noqa: F401
from relp_lens.core import backends
from relp_lens.core.attribution import Attribution
from relp_lens.core.errors import RelPLensError
from relp_lens.core.files import read_input, write_json_atomic
from relp_lens.core.validate import finite_float, is_int, positive_int, show

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer


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
    source: str | None = field(default=None, repr=False, compare=False)  # the file it was loaded from (messages)

    def __post_init__(self) -> None:
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

    @property
    def keys(self) -> set[tuple[int, int | None, int]]:
        return {n.key for n in self.nodes}

    @property
    def prepend_bos(self) -> bool:
        """Whether the attribution's prompts started with BOS (``data["prepend_bos"]``), so that evaluation
        tokenizes the same way; True where the circuit does not say (files written before it was recorded)."""
        value = self.data.get("prepend_bos", True) if isinstance(self.data, dict) else True
        if not isinstance(value, bool):
            raise RelPLensError(f"circuit data.prepend_bos must be true or false, got {value!r}")
        return value

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
        """Raise a clear error when this circuit cannot apply to ``model`` (step 3).

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
        for name in self.hook_names:
            if name not in model.hook_dict:
                raise RelPLensError(f"{where}circuit uses hook {name!r}, which this model does not have "
                                    f"(layer missing?)")

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
        """A circuit from :meth:`to_dict`'s form, every field checked (step 2).

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
    def _from_checked(cls, d: Any, source: str) -> "Circuit":
        return cls(**schema.check_document(d), source=source)

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
    def load(cls, path: str | Path) -> "Circuit":
        """Read and check a circuit file (step 2).

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


# -- step 3: which model ---------------------------------------------------------------------------------
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
                   data=dict(task=task, rows=rows, n_prompts=attr.n_examples, prepend_bos=attr.prepend_bos),
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

    Args:
        attr: the attribution to select from.
        model: the model it was computed on (recorded by :func:`model_facts`).
        k: how many nodes, a positive integer (fewer when fewer nodes may be chosen).
        aggregate_pos, task, ablation, include_fixed, exclude_neurons, everywhere: as above.

    Returns:
        The circuit, nodes by decreasing |score|.
    """
    k = positive_int(k, "k")
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
    """Nodes with |mean score| ≥ τ·|m|, m the mean clean metric (other arguments as :func:`select_top_k`).

    Args:
        attr: the attribution to select from.
        model: the model it was computed on.
        tau: the threshold τ, a finite number ≥ 0 (0: every node with a non-zero score).

    Returns:
        The circuit, nodes by decreasing |score|.
    """
    tau = finite_float(tau, "tau", low=0.0)
    ablation = _ablation(attr, ablation)
    s = _node_scores(attr, aggregate_pos)
    ok, left_out = _candidates(attr, s, aggregate_pos, ablation, include_fixed, exclude_neurons, everywhere)
    m = attr.metric_clean.mean().abs().item()
    keep = (s.abs() >= tau * m) & ok
    if tau == 0:
        keep &= s != 0
    return _from_scores(attr, model, keep, s, aggregate_pos, dict(k=None, tau=tau, m=m, **left_out), task,
                        ablation)
