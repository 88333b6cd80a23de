"""Ground truth: how well does each attribution method predict real single-node activation patching?

The RelP paper's headline measure is the Pearson correlation between a method's scores and the exact
effect of patching each node alone. :func:`compare_with_exact`:

1. attributes the prompts with every method to be judged;
2. picks a sample that favours none of them: half of ``n_nodes`` split evenly over the methods' own
   top nodes by mean |score| (their union), the rest uniformly at random over (layer, position, index)
   among the positions every prompt has — so both strong and typical nodes are present;
3. patches each chosen node alone (``method="exact"``);
4. returns Pearson r of each method against exact, over (example, node) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from relp_lens.core import validate
from relp_lens.core.attribution import Attribution, Node, attribute
from relp_lens.core.data import Prompts
from relp_lens.core.errors import RelPLensError

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer


@dataclass
class ExactComparison:
    nodes: list[Node]
    exact: Attribution
    attributions: dict[str, Attribution]
    correlations: dict[str, float]  # method → Pearson r with exact patching

    def table(self) -> str:
        rows = [f"{m:>6s}  r = {r:+.3f}" for m, r in self.correlations.items()]
        return f"correlation with exact patching of {len(self.nodes)} nodes:\n" + "\n".join(rows)


def sample_nodes(attributions: Attribution | Sequence[Attribution], n_nodes: int, seed: int = 0) -> list[Node]:
    """A neutral node sample: the union of each attribution's top ``n_nodes // 2 // len(attributions)``
    nodes by mean |score|, filled up to ``n_nodes`` with uniformly random (layer, position, index) nodes
    at positions every prompt has."""
    attrs = [attributions] if isinstance(attributions, Attribution) else list(attributions)
    per_method = max(1, n_nodes // 2 // len(attrs))
    chosen: set[Node] = set()
    for a in attrs:
        chosen |= {node for node, _ in a.top_k(per_method, everywhere=True)}
    first = attrs[0]
    everywhere = [p for p, n in zip(first.positions, first.counts.tolist()) if n == first.n_examples]
    gen = torch.Generator().manual_seed(seed)
    n_layers, width = first.n_layers, first.width
    while len(chosen) < min(n_nodes, n_layers * len(everywhere) * width):
        layer = int(torch.randint(n_layers, (1,), generator=gen))
        pos = everywhere[int(torch.randint(len(everywhere), (1,), generator=gen))]
        idx = int(torch.randint(width, (1,), generator=gen))
        chosen.add((layer, pos, idx))
    return sorted(chosen, key=lambda n: (n[0], n[1], n[2]))


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
    """Correlate ``methods`` with exact single-node patching on ``nodes`` (a neutral sample when not given,
    see :func:`sample_nodes`).

    ``kwargs`` go to every :func:`relp_lens.attribute` call (basis, metric, batch_size, ...).
    """
    if not methods or "exact" in methods:
        raise RelPLensError(f"methods must be a non-empty list of relp/grad/ig, got {list(methods)}")
    validate.positive_int(n_nodes, "n_nodes")
    validate.nonneg_int(seed, "seed")
    attributions = {m: attribute(model, prompts, method=m, **kwargs) for m in methods}
    if nodes is None:
        nodes = sample_nodes(list(attributions.values()), n_nodes, seed)
    nodes = [tuple(n) for n in nodes]
    exact = attribute(model, prompts, method="exact", nodes=nodes, **kwargs)
    corr = {m: attributions[m].correlation(exact) for m in methods}
    return ExactComparison(nodes=list(nodes), exact=exact, attributions=attributions, correlations=corr)
