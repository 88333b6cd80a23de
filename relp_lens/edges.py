"""Edges between circuit nodes: direct effects, with every intermediate MLP held constant.

For an upstream node u (layer s) and a downstream node d (layer t > s)::

    w(u → d) = Σ_positions ∇̃_d m · (∂̃d/∂u) · Δu

with Δu = a_patch − a_clean (paired) or a − a_ref (unpaired), ∇̃_d m the (RelP) gradient of the metric at d
in the full model, and ∂̃d/∂u taken with every MLP strictly between s and t made constant, so only direct
paths — through the residual stream and attention — count. RelP rules apply in every backward pass.

Algorithm (one backward pass serves many downstream nodes, as circuit-tracer does):

1. One attribution pass gives ∇̃_d m and Δu for every node of the basis, per example.
2. Downstream nodes are taken in chunks of R; the batch is repeated R times (rows = R × examples).
3. A forward pass up to the last downstream layer of the chunk replaces every layer's basis activation by
   a detached leaf for what follows, while remembering the live activation. A leaf cuts its MLP off from
   everything upstream, so the gradient from a live activation at layer t reaches a leaf at layer s < t
   only along paths that avoid every MLP in between: exactly the direct effect.
4. Row block r is seeded at its downstream node with ∇̃_d m (its positions, its index); one backward
   pass gives ∇̃_d m · ∂̃d/∂(leaf) for all R nodes at once; multiplying by Δu at each upstream node and
   summing over positions gives the edge weights, averaged over examples.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from relp_lens.attribution import as_prompts, batch_gradients, prepare_run
from relp_lens.circuit import Circuit, CircuitEdge, CircuitNode
from relp_lens.errors import RelPLensError
from relp_lens.relp_mode import RelPConfig, relp

_EDGE_HOOK = re.compile(r"^blocks\.(\d+)\.(mlp\.hook_post|hook_mlp_out)$")


@dataclass
class EdgeStats:
    backward_passes: int
    downstream_nodes: int
    rows_per_pass: int


def edge_layers(hook_names: Sequence[str]) -> list[int]:
    """Block index of each hook; edges are defined for MLP neurons (mlp_post) and MLP outputs (mlp_out)."""
    blocks = []
    for name in hook_names:
        match = _EDGE_HOOK.match(name)
        if match is None:
            raise RelPLensError(f"edges need MLP nodes (blocks.L.mlp.hook_post or blocks.L.hook_mlp_out); "
                                f"got hook {name!r}")
        blocks.append(int(match.group(1)))
    if blocks != sorted(set(blocks)):
        raise RelPLensError(f"edge hooks must be one per block in increasing order, got blocks {blocks}")
    return blocks


def _gather(t: torch.Tensor, nodes: list[CircuitNode]) -> torch.Tensor:
    """Σ over each node's positions of ``t[..., pos, index]``. t: [..., pos, node] → [..., n_nodes]."""
    cols = []
    for n in nodes:
        cols.append(t[..., :, n.index].sum(-1) if n.pos is None else t[..., n.pos, n.index])
    return torch.stack(cols, -1)


def attribute_edges(
    model: HookedTransformer,
    circuit: Circuit,
    prompts,
    *,
    method: str = "relp",
    metric=None,
    rules: RelPConfig | None = None,
    batch_size: int = 8,
    edge_batch: int = 256,
    progress: bool = True,
) -> tuple[Circuit, EdgeStats]:
    """The circuit with its edges weighted (direct effects); plus pass counts for benchmarks.

    ``edge_batch`` bounds the rows of one pass (downstream nodes per pass × examples per batch); with
    ``edge_batch <= batch_size`` every downstream node gets its own backward pass.
    """
    if method not in ("relp", "grad"):
        raise RelPLensError(f"edge method must be 'relp' or 'grad', got {method!r}")
    circuit.check_model(model)
    if not circuit.nodes:
        raise RelPLensError("the circuit is empty: no edges to attribute")
    blocks = edge_layers(circuit.hook_names)
    data = as_prompts(prompts)
    if metric is None:
        metric = circuit.metric if circuit.metric in ("logit_diff", "logit", "logprob") else None
    run, batches, tok, _ = prepare_run(model, data, circuit.hook_names, metric, None, rules, batch_size)
    max_len = max(tok.lengths)
    for i, n in enumerate(circuit.nodes):
        if n.pos is not None and n.pos >= min(tok.lengths):
            raise RelPLensError(f"node {i} ({n.label()}) is at position {n.pos}, beyond the shortest prompt "
                                f"({min(tok.lengths)} tokens)")

    nodes = circuit.nodes
    by_layer: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        by_layer.setdefault(n.layer, []).append(i)
    targets = sorted((i for i, n in enumerate(nodes) if n.layer > min(by_layer)), key=lambda i: nodes[i].layer)
    weights = torch.zeros(len(nodes), len(nodes), dtype=torch.float64)  # [source, target]
    passes, rows_per_pass = 0, 0
    use_relp = method == "relp"

    for batch in tqdm(batches, desc="edge attribution", disable=not progress, leave=False):
        _, grads, deltas, _, _ = batch_gradients(run, batch, use_relp)  # per layer [B, pos, node]
        b = len(batch)
        r_max = max(1, edge_batch // b)
        tokens = batch.clean_tokens.to(model.cfg.device)
        for start in range(0, len(targets), r_max):
            chunk = targets[start:start + r_max]
            R = len(chunk)
            t_max = max(nodes[i].layer for i in chunk)
            live: dict[int, torch.Tensor] = {}
            leaves: dict[int, torch.Tensor] = {}

            def split(x, hook):
                layer = circuit.hook_names.index(hook.name)
                live[layer] = x
                leaves[layer] = x.detach().requires_grad_(True)
                return leaves[layer]

            hook_list = [(circuit.hook_names[l], split) for l in range(t_max + 1)]
            mode = relp(model, **vars(run.rules)) if use_relp else contextlib.nullcontext()
            with torch.enable_grad(), mode, model.hooks(fwd_hooks=hook_list):
                model(tokens.repeat(R, 1), stop_at_layer=blocks[t_max] + 1)
                seeds = {}
                for r, i in enumerate(chunk):
                    n = nodes[i]
                    x = live[n.layer]
                    s = seeds.setdefault(n.layer, torch.zeros_like(x).reshape(R, b, x.shape[1], -1))
                    if n.pos is None:
                        s[r, :, :, n.index] = grads[n.layer][:, :, n.index]
                    else:
                        s[r, :, n.pos, n.index] = grads[n.layer][:, n.pos, n.index]
                out_layers = sorted(seeds)
                src_layers = [l for l in sorted(by_layer) if l < t_max]
                g = torch.autograd.grad([live[l] for l in out_layers],
                                        [leaves[l] for l in src_layers],
                                        [seeds[l].reshape(live[l].shape) for l in out_layers], allow_unused=True)
            passes += 1
            rows_per_pass = max(rows_per_pass, R * b)
            for layer, grad in zip(src_layers, g):
                if grad is None:
                    continue
                src = by_layer[layer]
                contrib = grad.reshape(R, b, grad.shape[1], -1) * deltas[layer][None]  # [R, B, pos, node]
                w = _gather(contrib, [nodes[j] for j in src]).sum(1)  # [R, n_src]
                for r, i in enumerate(chunk):
                    if nodes[i].layer > layer:
                        weights[src, i] += w[r].double().cpu()

    weights /= len(data)
    edges = [CircuitEdge(source=int(s), target=int(t), weight=float(weights[s, t]))
             for s, t in weights.nonzero().tolist()]
    edges.sort(key=lambda e: -abs(e.weight))
    sel = dict(circuit.selection, edge_method=method)
    stats = EdgeStats(backward_passes=passes, downstream_nodes=len(targets), rows_per_pass=rows_per_pass)
    return replace(circuit, edges=edges, selection=sel), stats


def prune_edges(circuit: Circuit, keep_fraction: float) -> Circuit:
    """Keep the top ``keep_fraction`` of edges by |weight|; drop nodes left with no edge at all."""
    if not 0 < keep_fraction <= 1:
        raise RelPLensError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if not circuit.edges:
        raise RelPLensError("the circuit has no edges to prune; run attribute_edges first")
    ranked = sorted(circuit.edges, key=lambda e: -abs(e.weight))
    kept = ranked[: max(1, round(keep_fraction * len(ranked)))]
    used = sorted({e.source for e in kept} | {e.target for e in kept})
    renumber = {old: new for new, old in enumerate(used)}
    return replace(
        circuit,
        nodes=[circuit.nodes[i] for i in used],
        edges=[CircuitEdge(renumber[e.source], renumber[e.target], e.weight) for e in kept],
        selection=dict(circuit.selection, edge_keep_fraction=keep_fraction),
    )
