"""The model and the attribution: what everything else is built on.

- ``errors``, ``files``: the package's error type; atomic writes.
- ``backends``, ``models``: HookedTransformer (TransformerLens 3.x) and TransformerBridge (4.x) behind one
  interface; the shipped GGUF models, loaded offline.
- ``rules``, ``relp_mode``: RelP's backward rules (LN, identity, half, AH) and the context that splices them in.
- ``nodes``, ``data``, ``positions``, ``metrics``, ``tasks``: what is scored, the prompts and their batches,
  position alignment, the metric, the task generators.
- ``attribution``, ``exact``: node scores (RelP, gradients, integrated gradients, exact patching).
- ``distributed``, ``plan``: data-parallel runs under ``torchrun``; the memory and pass planner.
"""

from relp_lens._lazy import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, ["errors", "files", "backends", "models", "rules", "relp_mode",
                                                  "nodes", "data", "positions", "metrics", "tasks", "attribution",
                                                  "exact", "distributed", "plan"])
