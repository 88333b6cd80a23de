"""Ground truth: how well does each attribution method predict real single-node activation patching?

The RelP paper's headline measure is the Pearson correlation between a method's scores and the exact
effect of patching each node alone. :func:`compare_with_exact`:

1. attributes the prompts with plain gradients (``grad``), to choose where to look;
2. picks ``n_nodes`` nodes: half the largest by mean |grad score|, half uniformly at random over
   (layer, position, index) of the shortest prompt — so both strong and typical nodes are present;
3. patches each chosen node alone (``method="exact"``) and scores every requested method;
4. returns Pearson r of each method against exact, over (example, node) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from relp_lens.attribution import Attribution, Node, attribute
from relp_lens.data import Prompts


@dataclass
class ExactComparison:
    nodes: list[Node]
    exact: Attribution
    attributions: dict[str, Attribution]
    correlations: dict[str, float]  # method → Pearson r with exact patching

    def table(self) -> str:
        rows = [f"{m:>6s}  r = {r:+.3f}" for m, r in self.correlations.items()]
        return f"correlation with exact patching of {len(self.nodes)} nodes:\n" + "\n".join(rows)


def sample_nodes(grad: Attribution, n_nodes: int, seed: int = 0) -> list[Node]:
    """Half top nodes by mean |score|, half uniformly random (layer, pos, index) within the shortest prompt."""
    top = [node for node, _ in grad.top_k(n_nodes // 2)]
    gen = torch.Generator().manual_seed(seed)
    n_layers, n_node = grad.scores.shape[1], grad.scores.shape[3]
    min_len = min(grad.lengths)
    chosen = set(top)
    while len(chosen) < min(n_nodes, n_layers * min_len * n_node):
        layer = int(torch.randint(n_layers, (1,), generator=gen))
        pos = int(torch.randint(min_len, (1,), generator=gen))
        idx = int(torch.randint(n_node, (1,), generator=gen))
        chosen.add((layer, pos, idx))
    return sorted(chosen)


def compare_with_exact(
    model: HookedTransformer,
    prompts: Prompts | Sequence[dict],
    *,
    methods: Sequence[str] = ("relp", "grad", "ig"),
    nodes: Sequence[Node] | None = None,
    n_nodes: int = 64,
    seed: int = 0,
    **kwargs,
) -> ExactComparison:
    """Correlate ``methods`` with exact single-node patching on ``nodes`` (sampled when not given).

    ``kwargs`` go to every :func:`relp_lens.attribute` call (basis, metric, batch_size, ...).
    """
    attributions: dict[str, Attribution] = {}
    if nodes is None:
        attributions["grad"] = attribute(model, prompts, method="grad", **kwargs)
        nodes = sample_nodes(attributions["grad"], n_nodes, seed)
    nodes = [tuple(n) for n in nodes]
    exact = attribute(model, prompts, method="exact", nodes=nodes, **kwargs)
    for m in methods:
        if m not in attributions:
            attributions[m] = attribute(model, prompts, method=m, **kwargs)
    corr = {m: attributions[m].correlation(exact) for m in methods}
    return ExactComparison(nodes=list(nodes), exact=exact, attributions=attributions, correlations=corr)
