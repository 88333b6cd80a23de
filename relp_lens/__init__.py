"""relp_lens: RelP circuit tracing on the MLP-neuron basis, as a TransformerLens plugin.

Quick start::

    import relp_lens
    model = relp_lens.load_model()                       # shipped SmolLM2-135M-Instruct, offline
    attr = relp_lens.attribute(model, "The keys to the cabinet", " are",
                               patch="The key to the cabinet", patch_answers=" is")
    print(attr.summary())                                # top neurons as L{layer}/{index}@{pos}
    circuit = relp_lens.select_top_k(attr, model, 100)
    relp_lens.evaluate_circuit(model, circuit, held_out_rows)   # faithfulness, completeness

Imports are lazy (PEP 562): ``import relp_lens`` loads no submodule, so no torch or transformer_lens;
the first use of a public name imports the submodule that defines it. This keeps ``relp-lens --help`` fast.

1. ``_EXPORTS`` maps each public name to ``(submodule, attribute)``; ``attribute`` ``None`` means the
   submodule itself (``relp_lens.plot`` is the ``relp_lens.plots`` module, as in the docs' spelling).
2. Module ``__getattr__`` imports the submodule, caches the value in the package namespace (later
   look-ups skip ``__getattr__``) and returns it; unknown names raise ``AttributeError`` as usual.
3. Type checkers and IDEs see ordinary imports under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str | None]] = {
    "evaluate_circuit": ("ablation", "evaluate_circuit"),
    "faithfulness_sweep": ("ablation", "faithfulness_sweep"),
    "METHODS": ("attribution", "METHODS"),
    "Attribution": ("attribution", "Attribution"),
    "attribute": ("attribution", "attribute"),
    "pearson": ("attribution", "pearson"),
    "Circuit": ("circuit", "Circuit"),
    "CircuitEdge": ("circuit", "CircuitEdge"),
    "CircuitNode": ("circuit", "CircuitNode"),
    "select_threshold": ("circuit", "select_threshold"),
    "select_top_k": ("circuit", "select_top_k"),
    "Prompts": ("data", "Prompts"),
    "attribute_edges": ("edges", "attribute_edges"),
    "prune_edges": ("edges", "prune_edges"),
    "RelPLensError": ("errors", "RelPLensError"),
    "compare_with_exact": ("exact", "compare_with_exact"),
    "load_model": ("models", "load_model"),
    "wrap_hf_model": ("backends", "wrap_hf_model"),
    "shipped_gguf_path": ("models", "shipped_gguf_path"),
    "BASES": ("nodes", "BASES"),
    "resolve_hooks": ("nodes", "resolve_hooks"),
    "RelPConfig": ("relp_mode", "RelPConfig"),
    "relp": ("relp_mode", "relp"),
    "relp_hooks": ("relp_mode", "relp_hooks"),
    "steer": ("steering", "steer"),
    "steering_direction": ("steering", "steering_direction"),
    "steering_sweep": ("steering", "steering_sweep"),
    "plot": ("plots", None),  # relp_lens.plot.circuit_graph(...)
    "always_on_neurons": ("cards", "always_on_neurons"),
    "only_correct": ("tasks", "only_correct"),
    "write_circuit_tracer": ("graph_export", "write_circuit_tracer"),
    "attribute_io_edges": ("graph_io", "attribute_io_edges"),
    "edge_pruning_sweep": ("pruning", "edge_pruning_sweep"),
    "cpr_cmd": ("ablation", "cpr_cmd"),
    "attribute_head_splits": ("heads", "attribute_head_splits"),
    "influence_prune": ("pruning", "influence_prune"),
    "neuron_auroc": ("probes", "neuron_auroc"),
    "group_neurons": ("groups", "group_neurons"),
    "groups_of": ("groups", "groups_of"),
    "group_steering": ("steering", "group_steering"),
    "data_parallel": ("distributed", "data_parallel"),
}
# submodules reachable as attributes after a bare ``import relp_lens`` (``relp_lens.plots.…``), as before
_SUBMODULES = {"ablation", "agreement", "attribution", "backends", "cards", "circuit", "cli", "corpus", "data", "demo",
               "distributed", "plan",
               "edges", "errors", "exact", "files", "graph_export", "graph_io", "groups", "heads", "metrics", "models", "nodes",
               "plots", "positions", "probes", "pruning", "relp_mode", "report", "rules", "steering", "tasks"}

__all__ = [
    "BASES", "METHODS", "Attribution", "Circuit", "CircuitEdge", "CircuitNode", "Prompts", "RelPConfig",
    "RelPLensError", "attribute", "attribute_edges", "compare_with_exact", "evaluate_circuit",
    "faithfulness_sweep", "load_model", "pearson", "prune_edges", "relp", "relp_hooks", "resolve_hooks",
    "select_threshold", "select_top_k", "shipped_gguf_path", "steer", "steering_direction", "steering_sweep",
    "plot", "always_on_neurons", "only_correct", "wrap_hf_model", "write_circuit_tracer", "attribute_io_edges",
    "edge_pruning_sweep", "cpr_cmd", "attribute_head_splits", "influence_prune", "neuron_auroc",
    "group_neurons", "groups_of", "group_steering", "data_parallel",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
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
    from relp_lens import plots as plot
    from relp_lens.ablation import cpr_cmd, evaluate_circuit, faithfulness_sweep
    from relp_lens.attribution import METHODS, Attribution, attribute, pearson
    from relp_lens.backends import wrap_hf_model
    from relp_lens.cards import always_on_neurons
    from relp_lens.circuit import Circuit, CircuitEdge, CircuitNode, select_threshold, select_top_k
    from relp_lens.data import Prompts
    from relp_lens.distributed import data_parallel
    from relp_lens.graph_export import write_circuit_tracer
    from relp_lens.graph_io import attribute_io_edges
    from relp_lens.groups import group_neurons, groups_of
    from relp_lens.heads import attribute_head_splits
    from relp_lens.probes import neuron_auroc
    from relp_lens.pruning import edge_pruning_sweep, influence_prune
    from relp_lens.edges import attribute_edges, prune_edges
    from relp_lens.errors import RelPLensError
    from relp_lens.exact import compare_with_exact
    from relp_lens.models import load_model, shipped_gguf_path
    from relp_lens.nodes import BASES, resolve_hooks
    from relp_lens.relp_mode import RelPConfig, relp, relp_hooks
    from relp_lens.steering import group_steering, steer, steering_direction, steering_sweep
    from relp_lens.tasks import only_correct
