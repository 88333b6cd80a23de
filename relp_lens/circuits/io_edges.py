"""Input and output edges of a circuit: token embeddings → neurons, neurons → metric, embeddings → metric.

Edges between neurons (:mod:`relp_lens.circuits.edges`) are direct effects with every MLP in between held constant.
This module adds the graph's two ends with the same definition and the same RelP rules:

- ``w(E_p → d) = Σ_dims  ∇̃_d m · (∂̃d/∂e_p) · Δe_p`` — the embedding at aligned position ``p`` into node ``d``,
  along paths through the residual stream and attention only;
- ``w(u → out) = ∇̃^direct_u m · Δu`` — node ``u``'s direct effect on the metric (every later MLP constant);
- ``w(E_p → out) = ∇̃^direct_{e_p} m · Δe_p`` — the direct path from the embedding to the metric;
- for ``logit_diff`` also the same two kinds of edges into each target logit (the clean answer's and the
  patch answer's): the metric's edges are the clean ones minus the patch ones.

``Δ`` is what the node scores multiply with: ``patch − clean`` for paired data, ``clean − 0`` for the zero
baseline. (The mean baseline of unpaired data has no embedding reference yet: refused.) The embedding is
``hook_embed`` plus, where the model has one, ``hook_pos_embed`` (both in one input node per position).
Weights are averaged over prompts, like node scores and neuron edges.

**Consistency** (tested against the node scores): on a bias-free model with every rule and the AH rule on,
zero baseline, the model is linear in (embeddings, MLP outputs) along these paths, and relevance is conserved,
so for every node ``d``

    score(d) = Σ_{u upstream, every neuron} w(u → d) + Σ_p w(E_p → d)

and for the metric

    m = Σ_{u every neuron} w(u → out) + Σ_p w(E_p → out).

A circuit keeps a subset of neurons; what the rest carry is ``score(d)`` minus the circuit's incoming edges.

Algorithm, per batch of prompts of one length:

1. One RelP attribution pass gives ``∇̃_d m`` and ``Δ`` at every node.
2. One forward pass in RelP mode with every MLP output (``hook_mlp_out``) and the embeddings replaced by
   detached leaves (so gradients reach a leaf only along paths that avoid every MLP); the circuit's node
   activations are remembered.
3. Output edges: one backward pass of the metric to all leaves; a neuron's direct gradient is
   ``W_out[u] · ∂m/∂(MLP output)``, through the norm's Jacobian where an RMSNorm follows the MLP (Gemma
   2/3; :class:`relp_lens.core.structure.MLPPostNorms`, as for edges).
4. Input edges: seeds ``∇̃_d m`` at each node ``d`` (chunks of ``edge_batch`` rows), vectorised backward passes
   to the embedding leaves only.
   **Dictionary features** (inside :func:`relp_lens.splice`): a latent's direct gradient is ``W_dec[u] · ∂m/∂y'``
   at its dictionary's spliced output, an error node's output edge ``Σ ∂m/∂y' · Δe`` over its vector; error
   nodes are leaves, so they have no input edges. On the residual stream the spliced residual is the leaf
   and the blocks stay live (:func:`relp_lens.circuits.edges.output_leaves`): with an SAE at every layer,
   only the first layer's features have input edges and only the last layer's output edges.
5. The result is a new circuit with ``io_edges`` (an :class:`~relp_lens.circuits.circuit.IOEdges`, the type
   of the data model, importable from here too) and ``stats["io_edges"]``; the input circuit is left unchanged.

This module was ``relp_lens.circuits.graph_io`` (a name that still imports it, with a warning); it computes
edges, it reads and writes no file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends
from relp_lens.core import distributed as dp
from relp_lens.core import splice, structure
from relp_lens.core.attribution import batch_gradients
from relp_lens.circuits.circuit import Circuit, IOEdges
from relp_lens.circuits.edges import (EdgeStats, check_edge_options, circuit_run, edge_layers, keep_hook, leaf_hook,
                                      node_positions, node_seeds, output_leaves)
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import GradientMethod, Metric
from relp_lens.core.metrics import evaluate_metric
from relp_lens.core.nodes import mlp_out
from relp_lens.core.relp_mode import RelPConfig, relp

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from relp_lens.core.data import Prompts
    from relp_lens.core.metrics import MetricFn

EMBED_HOOKS = ("hook_embed", "hook_pos_embed")
__all__ = ["EMBED_HOOKS", "IOEdges", "attribute_io_edges", "metric_targets"]  # IOEdges: the data model's type


def attribute_io_edges(model: HookedTransformer, circuit: Circuit, prompts: Prompts | Sequence[dict], *, method: GradientMethod = "relp",
                       metric: Metric | None = None, rules: RelPConfig | None = None, batch_size: int = 8, edge_batch: int = 256,
                       progress: bool = True) -> Circuit:
    """The circuit with its input and output edges (see the module docstring).

    Args:
        model: the model the circuit was made on (checked).
        circuit: a circuit of MLP neurons (basis ``mlp_post``); left unchanged.
        prompts: paired prompts, or unpaired ones traced with the zero baseline (the embedding needs a reference).
        method: ``"relp"`` or ``"grad"``.
        metric: a metric name; default the circuit's own.
        rules: the RelP rules (default: all).
        batch_size: prompts per forward pass.
        edge_batch: the most rows of one backward pass (nodes per pass × prompts per batch).
        progress: show a progress bar.

    Returns:
        A new circuit with ``io_edges`` (an :class:`~relp_lens.circuits.circuit.IOEdges`, means over the
        prompts) and ``stats["io_edges"]`` (an :class:`~relp_lens.circuits.edges.EdgeStats`).
    """
    check_edge_options(model, method, batch_size, edge_batch)
    circuit.check_model(model)
    if not circuit.nodes:
        raise RelPLensError("the circuit is empty: no edges to attribute")
    dicts = [splice.dictionary_at(model, h) for h in circuit.hook_names]  # None: not a dictionary's nodes
    features = all(d is not None for d in dicts)
    if not (circuit.hook_names[0].endswith("mlp.hook_post") or features):
        raise RelPLensError("input/output edges are defined for MLP neurons (basis mlp_post) and for the features of "
                            "dictionaries spliced in at hook_mlp_out or the residual stream")
    blocks = edge_layers(circuit.hook_names)
    sites, hold_mlps = output_leaves(dicts, blocks)
    # neuron directions (neurons only), and the embedding as the first residual
    structure.check_structure(model, mlp=not features, embed=True)
    data, run, batches = circuit_run(model, circuit, prompts, metric, rules, batch_size, embed=True)
    embeds = [h for h in EMBED_HOOKS if h in model.hook_dict]
    nodes = circuit.nodes
    n_cols = run.alignment.n_columns
    w_in = torch.zeros(n_cols, len(nodes), dtype=torch.float64)
    w_out = torch.zeros(len(nodes), dtype=torch.float64)
    w_direct = torch.zeros(n_cols, dtype=torch.float64)
    m_total = 0.0
    targets = metric_targets(run.metric_fn)
    t_out = torch.zeros(len(targets), len(nodes), dtype=torch.float64)
    t_direct = torch.zeros(len(targets), n_cols, dtype=torch.float64)
    use_relp = method == "relp"
    # what a node writes into its layer's output leaf: W_out rows (neurons) or W_dec rows (latents)
    w_outs = {layer: dicts[layer].W_dec if features else backends.W_out(model, blocks[layer])
              for layer in {n.layer for n in nodes}}
    passes, rows_per_pass = 0, 0

    with dp.stage("input/output edges"):  # under torchrun: this rank's batches; the sums are combined below
        for batch in tqdm(dp.shard(batches), desc="input/output edges", disable=not progress, leave=False):
            _, grads, deltas, _, _ = batch_gradients(run, batch, use_relp)  # per layer [B, pos, node]
            length, b = batch.clean_tokens.shape[1], len(batch)
            cols = run.alignment.columns(length)
            at = node_positions(nodes, batch, data, run)
            e_ref = _embeddings(model, batch.patch_tokens, embeds) if run.paired else None
            leaves: dict[str | int, torch.Tensor] = {}
            live: dict[int, torch.Tensor] = {}
            fwd = [(h, leaf_hook(leaves, h)) for h in embeds]
            for layer, site in enumerate(sites):
                fwd += [(circuit.hook_names[layer], keep_hook(live, layer)), (site, leaf_hook(leaves, layer))]
            for block in set(range(model.cfg.n_layers)) - set(blocks) if hold_mlps else ():
                fwd.append((mlp_out(block), leaf_hook(leaves, f"other.{block}")))  # MLPs outside: constants too
            post = structure.MLPPostNorms(model, [] if features else [blocks[n.layer] for n in nodes],
                                          frozen=use_relp and run.rules.ln)
            fwd += post.hooks()  # the norms after the nodes' MLPs, read in this forward pass
            mode = relp(model, **vars(run.rules)) if use_relp else contextlib.nullcontext()
            with torch.enable_grad(), mode, backends.hooks(model, fwd_hooks=fwd):
                logits = model(batch.clean_tokens.to(model.cfg.device))
                m = evaluate_metric(run.metric_fn, logits, batch)
                m_total += m.detach().double().sum().item()
                embeds = [h for h in embeds if h in leaves]  # a bridge lists hook_pos_embed, which may never fire
                sign = -1 if run.paired else 1  # Δe: patch − clean (paired), clean − 0 (zero baseline)
                d_emb = [(leaves[h].detach() - (e_ref[h] if e_ref is not None else 0)).float() * sign for h in embeds]
                # 3. output edges: the metric's (and each target logit's) direct gradient at every leaf
                keys = embeds + list(range(len(blocks)))
                outs = [(m.sum(), w_direct, w_out)] + [(value(logits[:, -1], batch).sum(), t_direct[t], t_out[t])
                                                       for t, (_, _, value) in enumerate(targets)]
                for scalar, to_direct, to_out in outs:
                    g = torch.autograd.grad(scalar, [leaves[k] for k in keys], allow_unused=True, retain_graph=True)
                    passes += 1
                    for h, gh, de in zip(embeds, g, d_emb):
                        if gh is not None:
                            to_direct.index_add_(0, cols, (gh.float() * de).sum((0, 2)).double().cpu())
                    at_x = {layer: post.pull(blocks[layer], g[len(embeds) + layer].float())  # through the post-norm
                            for layer in w_outs if g[len(embeds) + layer] is not None}
                    for k, n in enumerate(nodes):
                        gl = at_x.get(n.layer)
                        if gl is None:
                            continue
                        d = dicts[n.layer]
                        if d is not None and n.index >= d.d_sae:  # an error node: Σ over its vector
                            contrib = (gl * deltas[n.layer][..., d.d_sae:].float()).sum(-1)
                        else:
                            direct = gl @ w_outs[n.layer][n.index].float()  # [B, pos]: ∂m/∂u, direct paths
                            contrib = direct * deltas[n.layer][..., n.index].float()
                        to_out[k] += (contrib.sum() if at[k] is None else contrib[:, at[k]].sum()).double().cpu()
                # 4. input edges: seed ∇̃_d m at each node, backward to the embedding leaves
                r_max = max(1, edge_batch // b)
                # error nodes are leaves: no input edges
                order = [k for k, n in enumerate(nodes) if dicts[n.layer] is None or n.index < dicts[n.layer].d_sae]
                for start in range(0, len(order), r_max):
                    chunk = order[start:start + r_max]
                    R = len(chunk)
                    seeds = node_seeds(nodes, chunk, at, grads, live)
                    layers = sorted(seeds)
                    gi = torch.autograd.grad([live[l] for l in layers], [leaves[h] for h in embeds],
                                             [seeds[l] for l in layers], allow_unused=True, retain_graph=True,
                                             is_grads_batched=True)
                    passes += 1
                    rows_per_pass = max(rows_per_pass, R * b)
                    for gh, de in zip(gi, d_emb):  # gh: [R, B, pos, d_model]
                        if gh is None:
                            continue
                        per_pos = (gh.float() * de[None]).sum((1, 3))  # [R, pos]
                        w_in[:, chunk] += torch.zeros(n_cols, R, dtype=torch.float64).index_add_(
                            0, cols, per_pos.T.double().cpu())
    w_in, w_out, w_direct, t_out, t_direct = (dp.all_reduce(x) for x in (w_in, w_out, w_direct, t_out, t_direct))
    m_total = dp.all_reduce_float(m_total)
    n = len(data)
    io = IOEdges(positions=list(run.alignment.labels), input=w_in / n, output=w_out / n, direct=w_direct / n,
                 metric=m_total / n, targets=[name for name, _, _ in targets], signs=[s for _, s, _ in targets],
                 target_output=t_out / n if targets else None, target_direct=t_direct / n if targets else None)
    stats = EdgeStats(n_prompts=n, backward_passes=passes, downstream_nodes=len(nodes), rows_per_pass=rows_per_pass)
    return replace(circuit, io_edges=io, stats={**circuit.stats, "io_edges": stats})


def metric_targets(metric_fn: MetricFn) -> list[tuple[str, float, object]]:
    """The target logits a metric is a signed sum of.

    Args:
        metric_fn: the resolved metric function.

    Returns:
        ``(name, sign, fn(logits [batch, d_vocab], batch))`` per target: ``logit_diff`` → the clean answer's logit
        (+1) and the patch answer's (−1); other metrics: none (``logit`` is already one target node, ``logprob``
        is not a sum of logits, a callable is opaque).
    """
    from relp_lens.core import metrics

    if metric_fn is metrics.logit_diff:
        return [("clean answer logit", 1.0, metrics.logit),
                ("patch answer logit", -1.0, lambda logits, batch: metrics._gather_sum(logits, batch.patch_answer_ids))]
    return []


def _embeddings(model, tokens: torch.Tensor, embeds: list[str]) -> dict[str, torch.Tensor]:
    """The embedding hooks' values [batch, pos, d_model] for ``tokens`` (no gradient)."""
    return backends.capture(model, tokens, embeds, stop_at_layer=1)[1]
