"""The model and the attribution: what everything else is built on.

- ``errors``, ``validate``, ``files``: the package's error type; the option checks the API and the command line
  share; input files read and output files written atomically.
- ``backends``, ``structure``, ``models``: HookedTransformer (TransformerLens 3.x) and TransformerBridge (4.x)
  behind one interface; the identities edges rely on, checked numerically on the model; the shipped GGUF models,
  loaded offline.
- ``rules``, ``relp_mode``: RelP's backward rules (LN, identity, half, AH) and the context that splices them in.
- ``nodes``, ``data``, ``positions``, ``metrics``, ``tasks``: what is scored, the prompts and their batches,
  position alignment, the metric, the task generators.
- ``attribution``, ``exact``: node scores (RelP, gradients, integrated gradients, exact patching).
- ``tl_cache``: scores and gradients as TransformerLens ``ActivationCache`` objects, and attributions from them.
- ``distributed``, ``plan``: data-parallel runs under ``torchrun``; the memory and pass planner.
- ``dictionaries``: SAEs and transcoders read from SAELens, sparsify, circuit-tracer and Gemma Scope 2 files.
"""

from relp_lens._lazy import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, ["errors", "validate", "files", "backends", "structure", "models",
                                                  "rules", "relp_mode",
                                                  "nodes", "data", "positions", "metrics", "tasks", "attribution",
                                                  "exact", "tl_cache", "distributed", "plan",
                                                  "dictionaries"])
