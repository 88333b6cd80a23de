"""Circuits: selected nodes, how they are judged, and the graph between them.

- ``circuit``: the circuit (nodes, edges, selection) and its file format; top-k and threshold selection.
- ``ablation``: faithfulness and completeness by mean (or counterfactual) ablation; sweeps, CPR/CMD.
- ``edges``: neuron → neuron direct effects (intermediate MLPs held constant).
- ``graph_io``, ``heads``: embedding → neuron and neuron → output edges; how each edge splits over heads.
- ``pruning``, ``graph_export``: edge pruning and influence pruning; circuit-tracer's graph format.
"""

from relp_lens._lazy import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, ["circuit", "ablation", "edges", "graph_io", "heads", "pruning",
                                                  "graph_export"])
