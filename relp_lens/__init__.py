"""relp_lens: RelP circuit tracing on the MLP-neuron basis, as a TransformerLens plugin.

Quick start::

    import relp_lens
    model = relp_lens.load_model()                       # shipped SmolLM2-135M-Instruct, offline
    attr = relp_lens.attribute(model, "The keys to the cabinet", " are",
                               patch="The key to the cabinet", patch_answers=" is")
    print(attr.summary())                                # top neurons as L{layer}/{index}@{pos}
    circuit = relp_lens.select_top_k(attr, model, 100)
    relp_lens.evaluate_circuit(model, circuit, held_out_rows)   # faithfulness, completeness
"""

from relp_lens.ablation import evaluate_circuit, faithfulness_sweep
from relp_lens.attribution import METHODS, Attribution, attribute, pearson
from relp_lens.circuit import Circuit, CircuitEdge, CircuitNode, select_threshold, select_top_k
from relp_lens.data import Prompts
from relp_lens.edges import attribute_edges, prune_edges
from relp_lens.errors import RelPLensError
from relp_lens.exact import compare_with_exact
from relp_lens.models import load_model, shipped_gguf_path
from relp_lens.nodes import BASES, resolve_hooks
from relp_lens.relp_mode import RelPConfig, relp, relp_hooks
from relp_lens.steering import steer, steering_direction, steering_sweep
from relp_lens import plots as plot  # relp_lens.plot.circuit_graph(...), as in the docs' spelling

__all__ = [
    "BASES", "METHODS", "Attribution", "Circuit", "CircuitEdge", "CircuitNode", "Prompts", "RelPConfig",
    "RelPLensError", "attribute", "attribute_edges", "compare_with_exact", "evaluate_circuit",
    "faithfulness_sweep", "load_model", "pearson", "prune_edges", "relp", "relp_hooks", "resolve_hooks",
    "select_threshold", "select_top_k", "shipped_gguf_path", "steer", "steering_direction", "steering_sweep",
    "plot",
]
__version__ = "0.1.0"
