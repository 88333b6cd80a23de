"""Edges between circuit nodes: direct effects, with every intermediate MLP held constant.

For an upstream node u (layer s) and a downstream node d (layer t > s)::

    w(u → d) = Σ_positions ∇̃_d m · (∂̃d/∂u) · Δu

with Δu = a_patch − a_clean (paired) or a − a_ref (unpaired; a_ref as the circuit's baseline), ∇̃_d m the (RelP) gradient of the metric at d
in the full model, and ∂̃d/∂u taken with every MLP strictly between s and t made constant, so only direct
paths — through the residual stream and attention — count. RelP rules apply in every backward pass.

Algorithm (one backward pass serves many downstream nodes):

1. One attribution pass gives ∇̃_d m and Δu for every node of the basis, per example.
2. One forward pass, up to the last downstream block, replaces every MLP output (``hook_mlp_out``) by a
   detached leaf for what follows, while remembering the live node activations. A leaf cuts its MLP off
   from everything upstream, so the gradient from a live node at layer t reaches the leaf of layer s < t
   only along paths that avoid every MLP in between: exactly the direct effect.
3. Downstream nodes are taken in chunks of R. Seed r holds ∇̃_d m at downstream node chunk[r] (its
   positions, its index) and zeros elsewhere; one vectorised backward pass
   (``torch.autograd.grad(..., is_grads_batched=True)``) gives ∇̃_d m · ∂̃d/∂(MLP output of layer s) for
   all R seeds at once — the forward pass is shared by all of them.
4. Node positions are resolved per prompt length (negative positions count from the end, see
   :mod:`relp_lens.core.positions`), so prompts of different lengths share one circuit; a node at a position
   some prompt lacks is an error naming both.
5. For neurons, ∂d/∂u = W_out[u] · ∂d/∂(MLP output), so only the circuit's neurons are projected;
   multiplying by Δu and summing over positions gives the edge weights, averaged over examples. That
   reading needs ``hook_mlp_out = hook_post @ W_out + b_out``, added to the residual stream as is, or that
   through an RMSNorm after the MLP (Gemma 2/3's ``ln2_post``): there the gradient at ``hook_mlp_out`` is
   first taken through the norm's Jacobian at this forward pass (``diag(w / r)`` with the LN rule's frozen
   scale ``r``, the true Jacobian for the grad method; :class:`relp_lens.core.structure.MLPPostNorms`, whose
   hooks read ``r`` in the forward pass of step 2). The identities are checked on the model itself, one
   small cached forward pass (:func:`relp_lens.core.structure.check_neuron_directions`), and a model that
   breaks them (another norm after the MLP, whatever it is called) is refused naming the layer.
   **Dictionary features** (transcoders, SAEs on ``hook_mlp_out``; :mod:`relp_lens.core.splice`, run inside the
   splice): the spliced output ``y' = f @ W_dec + b_dec (+ x @ W_skip) + e`` is the leaf, so ∂d/∂f_u =
   W_dec[u] · ∂d/∂y' and an error node's edge is ``Σ ∂d/∂y' · Δe`` over its vector; error nodes have
   outgoing edges only (the error is a leaf of every backward pass). SAEs on the residual stream
   (``hook_resid_pre``/``_mid``/``_post``): the spliced residual is the leaf and the blocks in between stay
   live (:func:`output_leaves`): with an SAE at every layer, edges join adjacent layers' features.
6. The result is a new circuit with the edges (the input is left unchanged), its run statistics in
   ``circuit.stats["edges"]`` (:class:`EdgeStats`). Head splits of the old edges are dropped, and so are groups
   made from them (stale).

The helpers (:func:`circuit_run`, :func:`node_positions`, :func:`node_seeds`, the leaf hooks) serve the other edge
computations too (:mod:`relp_lens.circuits.io_edges`, :mod:`relp_lens.circuits.heads`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends
from relp_lens.core import distributed as dp
from relp_lens.core import splice, structure
from relp_lens.core import validate
from relp_lens.core.attribution import BASELINES, DEFAULT_BASELINE, as_prompts, batch_gradients, prepare_run
from relp_lens.circuits.circuit import Circuit, CircuitEdge, StepStats
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import GRADIENT_METHODS, GradientMethod, Metric
from relp_lens.core.metrics import METRICS
from relp_lens.core.nodes import attn_pattern, attn_scores, mlp_out
from relp_lens.core.positions import require
from relp_lens.core.relp_mode import RelPConfig, relp

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

    from relp_lens.circuits.circuit import IOEdges
    from relp_lens.core.data import Prompts

_EDGE_HOOK = re.compile(r"^blocks\.(\d+)\.(mlp\.hook_post|hook_mlp_out|"
                        r"(?:hook_mlp_out|hook_resid_pre|hook_resid_mid|hook_resid_post)\.hook_sae_nodes)$")


@dataclass(kw_only=True)
class EdgeStats(StepStats):
    """What an edge computation cost (``circuit.stats["edges"]``, ``circuit.stats["io_edges"]``).

    Attributes:
        n_prompts: the prompts the edges were averaged over.
        backward_passes: vectorised backward passes (one serves up to ``edge_batch`` rows).
        downstream_nodes: the nodes seeded (edge targets).
        rows_per_pass: the most rows (seeds × prompts) of one backward pass.
    """

    downstream_nodes: int = 0
    rows_per_pass: int = 0


def edge_layers(hook_names: Sequence[str]) -> list[int]:
    """Block index of each hook; edges are defined for MLP neurons (mlp_post), MLP outputs (mlp_out) and the
    features of dictionaries that reconstruct MLP outputs (transcoders, SAEs on ``hook_mlp_out``) or the
    residual stream (SAEs on ``hook_resid_pre``/``_mid``/``_post``)."""
    blocks = []
    for name in hook_names:
        match = _EDGE_HOOK.match(name)
        if match is None:
            raise RelPLensError(f"edges need MLP nodes (blocks.L.mlp.hook_post or blocks.L.hook_mlp_out) or the "
                                f"features of dictionaries that reconstruct blocks.L.hook_mlp_out or the residual "
                                f"stream (blocks.L.hook_resid_pre/_mid/_post); got hook {name!r}")
        blocks.append(int(match.group(1)))
    if blocks != sorted(set(blocks)):
        raise RelPLensError(f"edge hooks must be one per block in increasing order, got blocks {blocks}")
    return blocks


def output_leaves(dicts: Sequence, blocks: Sequence[int]) -> tuple[list[str], bool]:
    """Where each node layer's output becomes a detached leaf, and whether the MLPs outside the basis are held
    constant.

    1. Neurons, MLP outputs and dictionaries reconstructing ``hook_mlp_out``: the layer's ``hook_mlp_out``; every
       other MLP is held constant too (edges are direct effects with intermediate MLPs constant).
    2. A dictionary on the residual stream: its ``hook_out`` (the spliced residual). Its reconstruction carries
       everything the stream holds, so the leaves of the basis already cut every indirect path; the blocks in
       between (attention and MLPs) stay live, and an edge runs from one spliced residual to the next.

    Args:
        dicts: per node layer, the spliced dictionary (:func:`relp_lens.core.splice.dictionary_at`) or None.
        blocks: per node layer, its block (:func:`edge_layers`).

    Returns:
        ``(leaf hook per layer, hold the other MLPs constant)``.
    """
    sites = [mlp_out(b) if d is None else d.hook_out for d, b in zip(dicts, blocks)]
    return sites, all(s == mlp_out(b) for s, b in zip(sites, blocks))


def leaf_hook(store: dict, key):
    """Forward hook: the value becomes a detached leaf, kept in ``store[key]``; what follows depends on it
    only through the leaf (a constant for everything upstream), and its gradient can be read there. ``key``
    is bound here, never read from ``hook.name`` (a bridge's may be an alias's)."""
    def hook(x, hook):
        store[key] = x.detach().requires_grad_(True)
        return store[key]

    return hook


def keep_hook(store: dict, key):
    """Forward hook: remember the live value in ``store[key]`` (its graph kept), leave it unchanged (returned,
    so that a bridge computes on with this very tensor: see :func:`relp_lens.core.attribution.gradient_hooks`)."""
    def hook(x, hook):
        store[key] = x
        return x

    return hook


class BatchedSoftmax(torch.autograd.Function):
    """Forward: an attention pattern as is. Backward: the softmax's own gradient ``p · (g − Σ_k g·p)`` to its
    scores, in plain tensor ops. Torch's fused softmax backward has no batching rule, so a vectorised backward
    pass (``is_grads_batched=True``) would loop over its rows one by one; these ops batch."""

    generate_vmap_rule = True

    @staticmethod
    def forward(pattern: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return pattern.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0].detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (p,) = ctx.saved_tensors  # [batch, head, q_pos, k_pos]
        return None, p * (grad - (grad * p).sum(-1, keepdim=True))


def softmax_hooks(model: HookedTransformer, blocks: Sequence[int], use_relp: bool, rules: RelPConfig):
    """Forward hooks that route each block's attention-pattern gradient through :class:`BatchedSoftmax`, for
    vectorised backward passes: none on a bridge (its attention may not be one softmax between the two hook
    points) or with the AH rule (patterns are constants there)."""
    if backends.is_bridge(model) or (use_relp and rules.attention):
        return []
    hooks = []
    for block in blocks:
        live: dict[str, torch.Tensor] = {}

        def pattern(p, hook, live=live):
            return BatchedSoftmax.apply(p, live.pop("scores"))

        hooks += [(attn_scores(block), keep_hook(live, "scores")), (attn_pattern(block), pattern)]
    return hooks


def node_positions(nodes: Sequence, batch, data, run) -> list[int | None]:
    """Each node's absolute position in ``batch``'s prompts (``None``: every position); a node at a position
    the batch's prompts lack is an error naming both (see :func:`relp_lens.core.positions.require`)."""
    length = batch.clean_tokens.shape[1]
    prompt = data.clean[batch.indices[0]]
    return [None if n.pos is None else require(n.pos, length, f"{i} ({n.label()})", prompt,
                                                run.alignment.tail_start) for i, n in enumerate(nodes)]


def node_seeds(nodes: Sequence, chunk: Sequence[int], at: Sequence[int | None], grads: Sequence[torch.Tensor],
               live: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Backward seeds for a chunk of downstream nodes, one row each: row r holds ∇̃_d m of node ``chunk[r]``
    at its position(s) and index and zeros elsewhere. ``grads``: per layer ``[batch, pos, node]``;
    ``live``: the node activations per layer; returns per layer of the chunk ``[R, *live[layer].shape]``."""
    R = len(chunk)
    layers = sorted({nodes[i].layer for i in chunk})
    seeds = {l: torch.zeros(R, *live[l].shape, device=live[l].device, dtype=live[l].dtype) for l in layers}
    for r, i in enumerate(chunk):
        n = nodes[i]
        x = live[n.layer]
        s = seeds[n.layer].view(R, x.shape[0], x.shape[1], -1)  # [R, batch, pos, node]
        if n.pos is None:
            s[r, :, :, n.index] = grads[n.layer][:, :, n.index].to(s.dtype)
        else:
            s[r, :, at[i], n.index] = grads[n.layer][:, at[i], n.index].to(s.dtype)
    return seeds


def check_edge_options(model: HookedTransformer, method: GradientMethod, batch_size: int, edge_batch: int) -> None:
    """The options every edge computation shares (edges, input/output edges, head splits), checked before any
    pass: a TransformerLens model, ``method`` relp or grad, positive ``batch_size`` and ``edge_batch``."""
    backends.require_model(model)
    if method not in GRADIENT_METHODS:
        raise RelPLensError(f"edge method must be one of {list(GRADIENT_METHODS)}, got {method!r}")
    validate.positive_int(batch_size, "batch_size")
    validate.positive_int(edge_batch, "edge_batch")


def circuit_run(model: HookedTransformer, circuit: Circuit, prompts, metric, rules: RelPConfig | None,
                batch_size: int, *, embed: bool = False):
    """The prompts, attribution run and batches that recompute what ``circuit`` was scored with, for its edges,
    input/output edges and head splits: its metric unless ``metric`` is given (a named one only: a callable is
    not stored) and, for unpaired prompts, its baseline. ``embed``: the caller needs an embedding reference
    (input edges), which the mean baseline lacks: refused before any pass. Returns ``(data, run, batches)``."""
    data = as_prompts(prompts)
    if metric is None:
        metric = circuit.metric if circuit.metric in METRICS else None
    baseline = None if data.paired or circuit.baseline not in BASELINES else circuit.baseline
    if embed and not data.paired and (baseline or DEFAULT_BASELINE) == "mean":
        raise RelPLensError("input edges need an embedding reference: paired data or the zero baseline "
                            "(the mean baseline has none yet)")
    run, batches, _, _ = prepare_run(model, data, circuit.hook_names, metric, baseline, rules, batch_size,
                                     prepend_bos=circuit.prepend_bos)  # tokenized as the circuit was traced
    return data, run, batches


def attribute_edges(
    model: HookedTransformer,
    circuit: Circuit,
    prompts: Prompts | Sequence[dict],
    *,
    method: GradientMethod = "relp",
    metric: Metric | None = None,
    rules: RelPConfig | None = None,
    batch_size: int = 8,
    edge_batch: int = 256,
    progress: bool = True,
) -> Circuit:
    """The circuit with its edges weighted (direct effects; see the module docstring).

    Args:
        model: the model the circuit was made on (checked).
        circuit: the circuit (MLP nodes, one hook per block); left unchanged.
        prompts: the prompts to average over (a :class:`~relp_lens.core.data.Prompts` or JSONL-style rows).
        method: ``"relp"`` (RelP rules in every backward pass) or ``"grad"``.
        metric: a metric name; default the circuit's own.
        rules: the RelP rules (default: all).
        batch_size: prompts per forward pass.
        edge_batch: the most rows of one backward pass (downstream nodes per pass × prompts per batch); with
            ``edge_batch <= batch_size`` every downstream node gets its own backward pass.
        progress: show a progress bar.

    Returns:
        A new circuit with ``edges`` (by decreasing |weight|), ``selection["edge_method"]``, no head splits,
        no groups made from edges, and ``stats["edges"]`` an :class:`EdgeStats` (backward passes, downstream
        nodes, rows per pass, prompts).
    """
    check_edge_options(model, method, batch_size, edge_batch)
    circuit.check_model(model)
    if not circuit.nodes:
        raise RelPLensError("the circuit is empty: no edges to attribute")
    blocks = edge_layers(circuit.hook_names)
    if circuit.hook_names[0].endswith("mlp.hook_post"):
        structure.check_neuron_directions(model)
    dicts = [splice.dictionary_at(model, h) for h in circuit.hook_names]  # None: not a dictionary's nodes
    sites, hold_mlps = output_leaves(dicts, blocks)
    data, run, batches = circuit_run(model, circuit, prompts, metric, rules, batch_size)
    # every node's position in every prompt (negative: from the end); a missing one is an error
    where = {batch.clean_tokens.shape[1]: node_positions(circuit.nodes, batch, data, run) for batch in batches}

    nodes = circuit.nodes
    neurons = circuit.hook_names[0].endswith("mlp.hook_post")
    by_layer: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        by_layer.setdefault(n.layer, []).append(i)
    def is_error(n) -> bool:  # a dictionary's error node: a leaf, no incoming edges
        return dicts[n.layer] is not None and n.index >= dicts[n.layer].d_sae

    targets = sorted((i for i, n in enumerate(nodes) if n.layer > min(by_layer) and not is_error(n)),
                     key=lambda i: nodes[i].layer)
    t_max = max((nodes[i].layer for i in targets), default=0)
    src_layers = [l for l in sorted(by_layer) if l < t_max]
    weights = torch.zeros(len(nodes), len(nodes), dtype=torch.float64)  # [source, target]
    passes, rows_per_pass = 0, 0
    use_relp = method == "relp"

    mine = dp.shard(batches) if targets else []
    with dp.stage("edge attribution"):
        for batch in tqdm(mine, desc="edge attribution", disable=not progress,
                          leave=False):  # under relp_lens.data_parallel: this rank's batches, weights summed below
            _, grads, deltas, _, _ = batch_gradients(run, batch, use_relp)  # per layer [B, pos, node]
            b = len(batch)
            at = where[batch.clean_tokens.shape[1]]  # absolute position of each node in this batch
            at_mask = {}  # per source layer [pos, n_src]: 1 at each node's position (everywhere for pos None)
            for layer in src_layers:
                mask = torch.zeros(batch.clean_tokens.shape[1], len(by_layer[layer]))
                for k, j in enumerate(by_layer[layer]):
                    mask[slice(None) if at[j] is None else at[j], k] = 1.0
                at_mask[layer] = mask.to(deltas[layer].device)
            live: dict[int, torch.Tensor] = {}
            leaves: dict[int, torch.Tensor] = {}

            fwd = []
            for layer in range(t_max + 1):  # every layer's output becomes a leaf: constants for what follows
                fwd += [(circuit.hook_names[layer], keep_hook(live, layer)), (sites[layer], leaf_hook(leaves, layer))]
            for block in sorted(set(range(blocks[t_max] + 1)) - set(blocks)) if hold_mlps else ():
                fwd.append((mlp_out(block), lambda x, hook: x.detach()))  # MLPs outside the basis: constants too
            # the norms after the source MLPs, read in this forward pass (frozen scales under the LN rule)
            post = structure.MLPPostNorms(model, [blocks[l] for l in src_layers] if neurons else [],
                                          frozen=use_relp and run.rules.ln)
            fwd += post.hooks()
            fwd += softmax_hooks(model, range(blocks[t_max] + 1), use_relp, run.rules)
            mode = relp(model, **vars(run.rules)) if use_relp else contextlib.nullcontext()
            with torch.enable_grad(), mode, backends.hooks(model, fwd_hooks=fwd):
                # one forward pass (up to the last downstream block) serves every chunk of downstream nodes
                model(batch.clean_tokens.to(model.cfg.device), stop_at_layer=blocks[t_max] + 1)
                r_max = max(1, edge_batch // b)
                for start in range(0, len(targets), r_max):
                    chunk = targets[start:start + r_max]
                    R = len(chunk)
                    seeds = node_seeds(nodes, chunk, at, grads, live)
                    out_layers = sorted(seeds)
                    chunk_src = [l for l in src_layers if l < max(out_layers)]
                    # one vectorised backward pass: row r of every gradient belongs to downstream node chunk[r]
                    g = torch.autograd.grad([live[l] for l in out_layers], [leaves[l] for l in chunk_src],
                                            [seeds[l] for l in out_layers], allow_unused=True,
                                            retain_graph=True, is_grads_batched=True)
                    passes += 1
                    rows_per_pass = max(rows_per_pass, R * b)
                    chunk_layers = torch.tensor([nodes[i].layer for i in chunk])
                    for layer, grad in zip(chunk_src, g):  # grad: [R, B, pos, d_model] at the MLP output
                        if grad is None:
                            continue
                        src = by_layer[layer]
                        idx = [nodes[j].index for j in src]
                        d = dicts[layer]
                        if d is not None:  # latents through W_dec; error nodes: the gradient at y' · Δe
                            w = _feature_weights(d, grad, idx, deltas[layer], at_mask[layer])
                        else:
                            if neurons:  # ∂d/∂post[j] = W_out[j] · Jᵀ ∂d/∂mlp_out: project only the circuit's neurons
                                grad = post.pull(blocks[layer], grad) @ backends.W_out(model, blocks[layer])[idx].T
                            else:
                                grad = grad[..., idx]
                            # Δu at each source node's own position(s), zero elsewhere: [B, pos, n_src]
                            delta = deltas[layer][..., idx] * at_mask[layer]
                            w = torch.einsum("rbpn,bpn->rn", grad, delta)  # [R, n_src]
                        w = w.masked_fill((chunk_layers <= layer)[:, None].to(w.device), 0.0)  # edges go upwards
                        weights[torch.tensor(src)[:, None], torch.tensor(chunk)[None, :]] += w.T.double().cpu()

    weights = dp.all_reduce(weights) / len(data)
    edges = [CircuitEdge(source=int(s), target=int(t), weight=float(weights[s, t]))
             for s, t in weights.nonzero().tolist()]
    edges.sort(key=lambda e: -abs(e.weight))
    sel = dict(circuit.selection, edge_method=method)
    stats = EdgeStats(n_prompts=len(data), backward_passes=passes, downstream_nodes=len(targets),
                      rows_per_pass=rows_per_pass)
    groups = circuit.groups  # groups made from the old edges are stale too
    if groups is not None and "edges" in groups.features:
        groups = None
    return replace(circuit, edges=edges, selection=sel, heads=None, groups=groups,  # old splits are stale
                   stats={**circuit.stats, "edges": stats})


def _feature_weights(d, grad: torch.Tensor, idx: Sequence[int], delta: torch.Tensor,
                     at_mask: torch.Tensor) -> torch.Tensor:
    """Edge weights ``[R, n_src]`` from one layer's dictionary nodes ``idx`` (latents ``< d_sae``, the error node
    ``d_sae``), given ``grad`` ``[R, B, pos, d_out]`` at the spliced output, ``delta`` ``[B, pos, d_sae + d_out]``
    (per element) and ``at_mask`` ``[pos, n_src]`` (each source's position(s))."""
    n = d.d_sae
    idx_t = torch.tensor(list(idx))
    latent = idx_t < n
    w = torch.zeros(grad.shape[0], len(idx), dtype=grad.dtype, device=grad.device)
    if latent.any():
        lat = idx_t[latent]
        g = grad @ d.W_dec[lat].to(grad.device, grad.dtype).T  # [R, B, pos, n_lat]
        w[:, latent] = torch.einsum("rbpn,bpn->rn", g, delta[..., lat] * at_mask[:, latent])
    if (~latent).any():  # Σ over the error vector at each error node's position(s)
        per_pos = torch.einsum("rbpd,bpd->rbp", grad, delta[..., n:].to(grad.dtype))  # [R, B, pos]
        w[:, ~latent] = torch.einsum("rbp,pn->rn", per_pos, at_mask[:, ~latent])
    return w


def prune_edges(circuit: Circuit, keep_fraction: float) -> Circuit:
    """Keep the top ``keep_fraction`` of edges by |weight|; drop nodes left with no edge at all.

    Args:
        circuit: a circuit with edges; left unchanged.
        keep_fraction: the share of edges kept, in (0, 1] (at least one edge).

    Returns:
        A new circuit (:meth:`~relp_lens.circuits.circuit.Circuit.subgraph`), ``selection["edge_keep_fraction"]``
        recording the fraction.
    """
    keep_fraction = validate.fraction(keep_fraction, "keep_fraction")
    if not circuit.edges:
        raise RelPLensError("the circuit has no edges to prune; run attribute_edges first")
    ranked = sorted(circuit.edges, key=lambda e: -abs(e.weight))
    kept = ranked[: max(1, round(keep_fraction * len(ranked)))]
    used = sorted({e.source for e in kept} | {e.target for e in kept})
    return circuit.subgraph(used, kept, selection=dict(edge_keep_fraction=keep_fraction))


def subgraph(circuit: Circuit, used: Sequence[int], kept: Sequence[CircuitEdge], *, io: IOEdges | None = None,
             selection: dict | None = None) -> Circuit:
    """The circuit restricted to some nodes and edges: :meth:`Circuit.subgraph
    <relp_lens.circuits.circuit.Circuit.subgraph>` (this name is kept for existing code).

    Args:
        circuit: the circuit; left unchanged.
        used: as in :meth:`~relp_lens.circuits.circuit.Circuit.subgraph`.
        kept: as in :meth:`~relp_lens.circuits.circuit.Circuit.subgraph`.
        io: as in :meth:`~relp_lens.circuits.circuit.Circuit.subgraph`.
        selection: as in :meth:`~relp_lens.circuits.circuit.Circuit.subgraph`.

    Returns:
        The restricted circuit.
    """
    return circuit.subgraph(used, kept, io=io, selection=selection)
