"""What found neurons do: steering, descriptions, probes, groups.

- ``steering``: scale, set or shift neurons (and groups of them) and watch the output.
- ``cards``, ``corpus``: neuron cards (what a neuron writes, where it fires) over package text or real text.
- ``probes``: how well one neuron separates a hypothesis's classes (AUROC).
- ``groups``: neurons that work together, by attribution, co-activation and shared edges.
"""

from relp_lens._lazy import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, ["steering", "cards", "corpus", "probes", "groups"])
