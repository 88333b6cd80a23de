"""relp_lens: RelP circuit tracing on the MLP-neuron basis, as a TransformerLens plugin.

Quick start::

    import relp_lens
    model = relp_lens.load_model()                       # shipped SmolLM2-135M-Instruct, offline
    attr = relp_lens.attribute(model, "The keys to the cabinet", " are",
                               patch="The key to the cabinet", patch_answers=" is")
    print(attr.summary())                                # top neurons as L{layer}/{index}@{pos}
    circuit = relp_lens.select_top_k(attr, model, 100)
    relp_lens.evaluate_circuit(model, circuit, held_out_rows)   # faithfulness, completeness

The package is grouped by stage, data flowing model → attribution → circuit → evaluation → view:

- ``relp_lens.core``: errors, files, backends (HookedTransformer / TransformerBridge), models (the shipped
  GGUF models), rules and relp_mode (RelP), nodes, data, positions, metrics, tasks, attribution, exact
  patching, distributed (data parallel), plan (memory and passes), dictionaries (SAEs and transcoders);
- ``relp_lens.circuits``: circuit (the data model: the circuit and every annotation it stores), selection
  (top-k, threshold), ablation (faithfulness, completeness), edges, io_edges (input/output edges), heads (head
  splits), pruning, graph_export (circuit-tracer's format);
- ``relp_lens.analysis``: steering, cards, corpus (real-text contexts), probes, groups;
- ``relp_lens.views``: plots, report;
- ``relp_lens.cli`` and ``relp_lens.demo``: the command line and the demo.

Imports are lazy (PEP 562): ``import relp_lens`` loads no submodule, so no torch or transformer_lens;
the first use of a public name imports the submodule that defines it. This keeps ``relp-lens --help`` fast.

1. ``_EXPORTS`` maps each public name to ``(submodule, attribute)``; ``attribute`` ``None`` means the
   submodule itself (``relp_lens.plot`` is the ``relp_lens.views.plots`` module, as in the docs' spelling).
2. Module ``__getattr__`` imports the submodule, caches the value in the package namespace (later
   look-ups skip ``__getattr__``) and returns it; unknown names raise ``AttributeError`` as usual.
3. The modules lived flat in ``relp_lens`` before (``relp_lens.attribution``, ``relp_lens.agreement``, …), and
   some were renamed inside their stage (``relp_lens.circuits.graph_io``): :data:`MOVED` says where each went;
   importing or reaching an old path gives the module from its new place with a ``DeprecationWarning``
   (:mod:`relp_lens._moved`).
4. Type checkers and IDEs see ordinary imports under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from relp_lens import _moved

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str | None]] = {
    "evaluate_circuit": ("circuits.ablation", "evaluate_circuit"),
    "faithfulness_sweep": ("circuits.ablation", "faithfulness_sweep"),
    "METHODS": ("core.options", "METHODS"),
    "Attribution": ("core.attribution", "Attribution"),
    "attribute": ("core.attribution", "attribute"),
    "pearson": ("core.attribution", "pearson"),
    "gradients": ("core.tl_cache", "gradients"),
    "attribution_from_cache": ("core.tl_cache", "from_cache"),  # an Attribution from scores computed elsewhere
    "Circuit": ("circuits.circuit", "Circuit"),
    "CircuitEdge": ("circuits.circuit", "CircuitEdge"),
    "CircuitNode": ("circuits.circuit", "CircuitNode"),
    "IOEdges": ("circuits.circuit", "IOEdges"),
    "HeadSplits": ("circuits.circuit", "HeadSplits"),
    "NeuronGroups": ("circuits.circuit", "NeuronGroups"),
    "Evaluation": ("circuits.circuit", "Evaluation"),
    "select_threshold": ("circuits.selection", "select_threshold"),
    "select_top_k": ("circuits.selection", "select_top_k"),
    "Prompts": ("core.data", "Prompts"),
    "attribute_edges": ("circuits.edges", "attribute_edges"),
    "prune_edges": ("circuits.edges", "prune_edges"),
    "RelPLensError": ("core.errors", "RelPLensError"),
    "compare_with_exact": ("core.exact", "compare_with_exact"),
    "load_model": ("core.models", "load_model"),
    "wrap_hf_model": ("core.backends", "wrap_hf_model"),
    "shipped_gguf_path": ("core.models", "shipped_gguf_path"),
    "BASES": ("core.nodes", "BASES"),
    "resolve_hooks": ("core.nodes", "resolve_hooks"),
    "RelPConfig": ("core.relp_mode", "RelPConfig"),
    "relp": ("core.relp_mode", "relp"),
    "relp_hooks": ("core.relp_mode", "relp_hooks"),
    "steer": ("analysis.steering", "steer"),
    "steering_direction": ("analysis.steering", "steering_direction"),
    "steering_sweep": ("analysis.steering", "steering_sweep"),
    "plot": ("views.plots", None),  # relp_lens.plot.circuit_graph(...)
    "always_on_neurons": ("analysis.cards", "always_on_neurons"),
    "only_correct": ("core.tasks", "only_correct"),
    "write_circuit_tracer": ("circuits.graph_export", "write_circuit_tracer"),
    "to_circuit_tracer": ("circuits.graph_export", "to_circuit_tracer"),
    "attribute_io_edges": ("circuits.io_edges", "attribute_io_edges"),
    "edge_pruning_sweep": ("circuits.pruning", "edge_pruning_sweep"),
    "cpr_cmd": ("circuits.ablation", "cpr_cmd"),
    "attribute_head_splits": ("circuits.heads", "attribute_head_splits"),
    "influence_prune": ("circuits.pruning", "influence_prune"),
    "neuron_auroc": ("analysis.probes", "neuron_auroc"),
    "group_neurons": ("analysis.groups", "group_neurons"),
    "groups_of": ("analysis.groups", "groups_of"),
    "group_steering": ("analysis.steering", "group_steering"),
    "data_parallel": ("core.distributed", "data_parallel"),
    "trace": ("pipeline", "trace"),  # the whole pipeline of `relp-lens trace`, above the stages
    "TraceOptions": ("pipeline", "TraceOptions"),
    "TraceResult": ("pipeline", "TraceResult"),
    "split_prompts": ("pipeline", "split_prompts"),
    "task_prompts": ("pipeline", "task_prompts"),
    "Dictionary": ("core.dictionaries", "Dictionary"),
    "DictionarySet": ("core.dictionaries", "DictionarySet"),
    "load_sae": ("core.dictionaries", "load_sae"),
    "load_transcoders": ("core.dictionaries", "load_transcoders"),
    "load_dictionaries": ("core.dictionaries", "load_dictionaries"),
    "splice": ("core.splice", "splice"),
}
# the stage subpackages and entry points, reachable as attributes after a bare ``import relp_lens``
_SUBMODULES = {"core", "circuits", "analysis", "views", "pipeline", "cli", "demo"}
# where the modules of the flat layout went (relp_lens.agreement became part of relp_lens.core.tasks), and the
# modules renamed inside a stage (dotted old paths)
MOVED = {
    **{m: f"core.{m}" for m in ("errors", "files", "backends", "models", "rules", "relp_mode", "nodes", "data",
                                "positions", "metrics", "attribution", "exact", "distributed", "plan", "tasks")},
    "agreement": "core.tasks",
    **{m: f"circuits.{m}" for m in ("circuit", "ablation", "edges", "heads", "pruning", "graph_export")},
    "graph_io": "circuits.io_edges",
    "circuits.graph_io": "circuits.io_edges",
    **{m: f"analysis.{m}" for m in ("steering", "cards", "corpus", "probes", "groups")},
    **{m: f"views.{m}" for m in ("plots", "report")},
}

__all__ = [
    "BASES", "METHODS", "Attribution", "Circuit", "CircuitEdge", "CircuitNode", "Prompts", "RelPConfig",
    "RelPLensError", "attribute", "attribute_edges", "compare_with_exact", "evaluate_circuit",
    "faithfulness_sweep", "load_model", "pearson", "prune_edges", "relp", "relp_hooks", "resolve_hooks",
    "select_threshold", "select_top_k", "shipped_gguf_path", "steer", "steering_direction", "steering_sweep",
    "plot", "always_on_neurons", "only_correct", "wrap_hf_model", "write_circuit_tracer", "attribute_io_edges",
    "edge_pruning_sweep", "cpr_cmd", "attribute_head_splits", "influence_prune", "neuron_auroc",
    "group_neurons", "groups_of", "group_steering", "data_parallel", "IOEdges", "HeadSplits", "NeuronGroups",
    "Evaluation", "to_circuit_tracer", "trace", "TraceOptions", "TraceResult", "split_prompts", "task_prompts",
    "gradients", "attribution_from_cache", "Dictionary", "DictionarySet", "load_sae", "load_transcoders",
    "load_dictionaries", "splice",
]
_moved.install(__name__, MOVED)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in MOVED:  # relp_lens.plots.… of the flat layout: the module from its new place (dotted: never an attribute)
        return _moved.old_module(name)
    try:
        module_name, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(f"{__name__}.{module_name}")
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from relp_lens.analysis.cards import always_on_neurons
    from relp_lens.analysis.groups import group_neurons, groups_of
    from relp_lens.analysis.probes import neuron_auroc
    from relp_lens.analysis.steering import group_steering, steer, steering_direction, steering_sweep
    from relp_lens.circuits.ablation import cpr_cmd, evaluate_circuit, faithfulness_sweep
    from relp_lens.circuits.circuit import (Circuit, CircuitEdge, CircuitNode, Evaluation, HeadSplits, IOEdges,
                                            NeuronGroups)
    from relp_lens.circuits.edges import attribute_edges, prune_edges
    from relp_lens.circuits.graph_export import to_circuit_tracer, write_circuit_tracer
    from relp_lens.circuits.io_edges import attribute_io_edges
    from relp_lens.circuits.selection import select_threshold, select_top_k
    from relp_lens.circuits.heads import attribute_head_splits
    from relp_lens.circuits.pruning import edge_pruning_sweep, influence_prune
    from relp_lens.core.attribution import Attribution, attribute, pearson
    from relp_lens.core.options import METHODS
    from relp_lens.core.backends import wrap_hf_model
    from relp_lens.core.data import Prompts
    from relp_lens.core.dictionaries import Dictionary, DictionarySet, load_dictionaries, load_sae, load_transcoders
    from relp_lens.core.distributed import data_parallel
    from relp_lens.pipeline import TraceOptions, TraceResult, split_prompts, task_prompts, trace
    from relp_lens.core.errors import RelPLensError
    from relp_lens.core.exact import compare_with_exact
    from relp_lens.core.models import load_model, shipped_gguf_path
    from relp_lens.core.nodes import BASES, resolve_hooks
    from relp_lens.core.relp_mode import RelPConfig, relp, relp_hooks
    from relp_lens.core.splice import splice
    from relp_lens.core.tasks import only_correct
    from relp_lens.core.tl_cache import from_cache as attribution_from_cache
    from relp_lens.core.tl_cache import gradients
    from relp_lens.views import plots as plot
