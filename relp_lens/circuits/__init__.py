"""Circuits: selected nodes, how they are judged, and the graph between them.

- ``circuit``: the data model: the circuit (nodes, edges) and every annotation it stores (``IOEdges``,
  ``HeadSplits``, ``NeuronGroups``, ``Evaluation``), its file format (rules: ``schema``) and ``subgraph``.
- ``selection``: top-k and threshold selection of a circuit's nodes from an attribution.
- ``ablation``: faithfulness and completeness by mean (or counterfactual) ablation; sweeps, CPR/CMD.
- ``edges``: neuron → neuron direct effects (intermediate MLPs held constant).
- ``io_edges``, ``heads``: embedding → neuron and neuron → output edges; how each edge splits over heads.
- ``pruning``, ``graph_export``: edge pruning and influence pruning; circuit-tracer's graph format.

``graph_io`` was the name of ``io_edges`` (still importable, with a ``DeprecationWarning``).
"""

from relp_lens._lazy import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, ["circuit", "schema", "selection", "ablation", "edges", "io_edges",
                                                  "heads", "pruning", "graph_export"], moved={"graph_io": "io_edges"})
