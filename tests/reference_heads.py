"""Head splits as relp_lens computed them before they were vectorised (commit 86531dc), the reference the
tests hold :func:`relp_lens.circuits.heads.attribute_head_splits` to: one forward-mode tangent pass
(``torch.autograd.forward_ad``) per chunk of sources, one copy of the batch per source, and a Python loop of
dot products per (edge, block). Kept verbatim apart from this docstring; do not optimise it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.autograd.forward_ad as fwAD
from tqdm.auto import tqdm

from relp_lens.core import backends
from relp_lens.core import distributed as dp
from relp_lens.core import structure
from relp_lens.core import validate
from relp_lens.core.attribution import batch_gradients
from relp_lens.circuits.circuit import OUT, Circuit, HeadSplit, HeadSplits, StepStats, edge_key, embedding_key
from relp_lens.circuits.edges import check_edge_options, circuit_run, edge_layers, keep_hook, leaf_hook, node_positions, node_seeds
from relp_lens.core.errors import RelPLensError
from relp_lens.circuits.io_edges import EMBED_HOOKS, _embeddings
from relp_lens.circuits.pruning import readable_graph
from relp_lens.core.metrics import evaluate_metric
from relp_lens.core.nodes import attn_z, mlp_out
from relp_lens.core.relp_mode import RelPConfig, relp

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

RULE = "last head"
__all__ = ["OUT", "RULE", "HeadStats", "attribute_head_splits", "edge_key", "embedding_key"]


@dataclass(kw_only=True)
class HeadStats(StepStats):
    """What a head split cost (``circuit.stats["heads"]``).

    Attributes:
        n_prompts: the prompts the splits were averaged over.
        backward_passes: the pull's backward passes (step 2; vectorised ones count once).
        push_passes: the push's forward-mode passes (step 3).
        n_edges: the edges split.
    """

    push_passes: int = 0
    n_edges: int = 0


def attribute_head_splits(model: HookedTransformer, circuit: Circuit, prompts, *, method: str = "relp",
                          metric=None, rules: RelPConfig | None = None, batch_size: int = 8,
                          edge_batch: int = 256, top: int | None = 12, max_nodes: int | None = None,
                          progress: bool = True) -> Circuit:
    """The circuit with how each of its edges splits over attention heads (see the module docstring).

    Splits every neuron → neuron edge, and, when the circuit has ``io_edges``, every embedding → neuron,
    neuron → output and embedding → output edge. Use the prompts, method and rules the edges were computed
    with: the splits then sum to the stored weights.

    Args:
        model: the model the circuit was made on (checked).
        circuit: a circuit of MLP neurons with edges (and optionally ``io_edges``); left unchanged.
        prompts: the prompts the edges were computed on.
        method: ``"relp"`` or ``"grad"``.
        metric: a metric name; default the circuit's own.
        rules: the RelP rules (default: all).
        batch_size: prompts per forward pass.
        edge_batch: the most rows of one backward (or forward-mode) pass.
        top: heads listed per edge (``None``: every head, so totals stay exact).
        max_nodes: split only the edges of the readable graph of at most that many neurons
            (:func:`relp_lens.circuits.pruning.readable_graph`, what the report draws); the whole circuit is
            returned.
        progress: show a progress bar.

    Returns:
        A new circuit whose ``heads`` (:class:`~relp_lens.circuits.circuit.HeadSplits`) holds, per edge (keyed
        ``"L3/100@-1 -> L5/20@-1"``, ``"E@-2 -> …"``, ``"… -> out"``), the residual share, the ``top`` heads by
        |weight| as ``(block, head, weight)`` and what the other heads carry (``other``); and ``totals``, every
        head's exact total over all split edges (after pruning, :meth:`~relp_lens.circuits.circuit.Circuit.subgraph`
        sums the listed heads of the remaining edges and sets ``totals_exact`` to whether nothing was left out);
        and ``stats["heads"]`` (:class:`HeadStats`).
    """
    check_edge_options(model, method, batch_size, edge_batch)
    if top is not None:
        validate.nonneg_int(top, "top")
    if max_nodes is not None:
        validate.positive_int(max_nodes, "max_nodes")

        drawn = attribute_head_splits(model, readable_graph(circuit, max_nodes), prompts, method=method,
                                      metric=metric, rules=rules, batch_size=batch_size, edge_batch=edge_batch,
                                      top=top, progress=progress)
        return replace(circuit, heads=replace(drawn.heads, max_nodes=max_nodes),
                       stats={**circuit.stats, "heads": drawn.stats["heads"]})
    circuit.check_model(model)
    if not circuit.edges and circuit.io_edges is None:
        raise RelPLensError("the circuit has no edges to split: run attribute_edges (and attribute_io_edges) first")
    if not circuit.hook_names[0].endswith("mlp.hook_post"):
        raise RelPLensError("head splits are defined for MLP neurons (basis mlp_post)")
    blocks = edge_layers(circuit.hook_names)
    z_names = [attn_z(b) for b in range(model.cfg.n_layers)]
    missing = [n for n in z_names if n not in model.hook_dict]
    if missing:
        raise RelPLensError(f"head splits need every attention layer's hook_z; this model lacks {missing[:3]}")
    # neuron directions; attention writes only through hook_z; the embedding as the first residual (io edges)
    structure.check_structure(model, mlp=True, embed=circuit.io_edges is not None, heads=True)
    data, run, batches = circuit_run(model, circuit, prompts, metric, rules, batch_size,
                                     embed=circuit.io_edges is not None)
    nodes = circuit.nodes
    io = circuit.io_edges
    if io is not None and list(run.alignment.labels) != list(io.positions):
        raise RelPLensError(f"the input/output edges were computed on prompts aligned at positions {io.positions}, "
                            f"these prompts at {list(run.alignment.labels)}: split them on the same prompts")
    n_heads = model.cfg.n_heads
    # which (source, target) pairs to split: sources ('n', node#) | ('e', row); targets ('n', node#) | ('out',)
    pairs: dict[tuple, set] = {}
    for e in circuit.edges:
        pairs.setdefault(("n", e.target), set()).add(("n", e.source))
    if io is not None:
        for r, n in io.input.nonzero().tolist():
            pairs.setdefault(("n", n), set()).add(("e", r))
        out = pairs.setdefault((OUT,), set())
        out.update(("n", j) for j in io.output.nonzero().flatten().tolist())
        out.update(("e", r) for r in io.direct.nonzero().flatten().tolist())
    res = {(s, t): 0.0 for t, ss in pairs.items() for s in ss}
    per_head = {(s, t): torch.zeros(model.cfg.n_layers, n_heads, dtype=torch.float64) for s, t in res}
    w_outs = {layer: backends.W_out(model, blocks[layer]) for layer in {n.layer for n in nodes}}
    use_relp = method == "relp"
    embeds = [h for h in EMBED_HOOKS if h in model.hook_dict]
    passes = {"push": 0, "pull": 0}

    with dp.stage("head splits"):  # under torchrun: this rank's batches; the sums are combined below
        for batch in tqdm(dp.shard(batches), desc="head splits", disable=not progress, leave=False):
            _, grads, deltas, _, _ = batch_gradients(run, batch, use_relp)  # per layer [B, pos, node]
            b, length = len(batch), batch.clean_tokens.shape[1]
            at = node_positions(nodes, batch, data, run)
            cols = run.alignment.columns(length).tolist()  # aligned column of each position
            labels = list(run.alignment.labels)
            e_ref = _embeddings(model, batch.patch_tokens, embeds) if (io is not None and run.paired) else None
            e_clean = _embeddings(model, batch.clean_tokens, embeds) if io is not None else None
            tangents: dict[tuple, tuple[str | int, torch.Tensor]] = {}  # key -> (where it enters, [B, pos, d])
            sources = {s for ss in pairs.values() for s in ss}
            for s in sorted(x for x in sources if x[0] == "n"):
                n = nodes[s[1]]
                w = w_outs[n.layer][n.index].float()  # [d] on its block's device (layers may sit on several devices)
                t = deltas[n.layer][..., n.index, None].float().to(w.device) * w  # [B, pos, d]
                if at[s[1]] is not None:
                    mask = torch.zeros(length, 1, device=t.device)
                    mask[at[s[1]]] = 1
                    t = t * mask
                tangents[s] = (n.layer, t)
            if io is not None:
                fired = [h for h in embeds if h in e_clean]  # a bridge lists hook_pos_embed even where it never fires
                d_emb = {h: (e_clean[h] - e_ref[h]) * -1 if e_ref is not None else e_clean[h] for h in fired}
                for s in sorted(x for x in sources if x[0] == "e"):  # Δe: patch − clean (paired), clean − 0 (zero)
                    where = [p for p in range(length) if labels[cols[p]] == io.positions[s[1]]]
                    if not where:
                        continue  # these prompts have no token at that aligned position
                    mask = torch.zeros(length, 1)
                    mask[where] = 1
                    for h in fired:
                        tangents[s + (h,)] = (h, d_emb[h].float() * mask.to(d_emb[h].device))
            if not tangents:
                continue
            push = _push(model, run, batch, tangents, blocks, z_names, use_relp, edge_batch, passes)  # key -> per block z
            _pull_and_contract(model, run, batch, circuit, pairs, tangents, push, grads, at, blocks, z_names, embeds,
                               use_relp, edge_batch, res, per_head, passes)
    keys = sorted(res)  # one order on every rank (set iteration order is not): ("n", 2) before ("n", 10)
    if keys:
        sums = dp.all_reduce(torch.tensor([res[k] for k in keys], dtype=torch.float64))
        stacked = dp.all_reduce(torch.stack([per_head[k] for k in keys]))  # [pair, layer, head]
        res = {k: float(sums[i]) for i, k in enumerate(keys)}
        per_head = {k: stacked[i] for i, k in enumerate(keys)}
    n_prompts = len(data)
    labels_of = {("n", i): n.label() for i, n in enumerate(nodes)}
    if io is not None:
        labels_of.update({("e", r): embedding_key(p) for r, p in enumerate(io.positions)})
    labels_of[(OUT,)] = OUT
    splits, totals = {}, torch.zeros(model.cfg.n_layers, n_heads, dtype=torch.float64)
    for (s, t), r in res.items():
        heads = per_head[(s, t)] / n_prompts
        totals += heads
        splits[edge_key(labels_of[s], labels_of[t])] = _compact(r / n_prompts, heads, top)
    info = HeadSplits(rule=RULE, n_heads=n_heads, top=top, method=method, edges=splits,
                      totals=_triples(totals, None), totals_exact=True)
    stats = HeadStats(n_prompts=n_prompts, backward_passes=passes["pull"], push_passes=passes["push"],
                      n_edges=len(splits))
    return replace(circuit, heads=info, stats={**circuit.stats, "heads": stats})


def _compact(residual: float, heads: torch.Tensor, top: int | None) -> HeadSplit:
    """One edge's split: residual, the top heads as (block, head, weight), the others' sum."""
    kept = _triples(heads, top)
    other = float(heads.sum()) - sum(w for _, _, w in kept)
    return HeadSplit(residual=float(residual), heads=kept, other=other)


def _triples(heads: torch.Tensor, top: int | None) -> list[list]:
    """Non-zero entries of ``[block, head]`` as ``[block, head, weight]``, largest |weight| first."""
    nz = [(l, h, float(heads[l, h])) for l, h in heads.nonzero().tolist()]
    nz.sort(key=lambda x: -abs(x[2]))
    return [list(x) for x in (nz if top is None else nz[:top])]


def _push(model, run, batch, tangents: dict, blocks, z_names, use_relp: bool, edge_batch: int,
          passes: dict) -> dict:
    """Forward mode: the tangent each source sends into every head output ``z`` (MLP outputs cut).

    Returns ``{source key: {block: [B, pos, n_heads·d_head]}}``; one copy of the batch per source."""
    tokens = batch.clean_tokens.to(model.cfg.device)
    b = tokens.shape[0]
    keys = list(tangents)
    r_max = max(1, edge_batch // b)
    out: dict = {k: {} for k in keys}
    for start in range(0, len(keys), r_max):
        chunk = keys[start:start + r_max]
        R = len(chunk)
        got: dict[int, torch.Tensor] = {}

        def enter(where):  # the leaf where sources of this kind put their tangent
            def hook(x, hook):
                t = torch.zeros(R * b, *x.shape[1:], dtype=x.dtype, device=x.device)
                for r, k in enumerate(chunk):
                    if tangents[k][0] == where:
                        t[r * b:(r + 1) * b] = tangents[k][1].to(x.device, x.dtype)
                return fwAD.make_dual(x.detach(), t)

            return hook

        def record(block):
            def hook(x, hook):
                t = fwAD.unpack_dual(x).tangent
                if t is not None:
                    got[block] = t.detach().reshape(R, b, x.shape[1], -1)

            return hook

        fwd = [(h, enter(h)) for h in EMBED_HOOKS if h in model.hook_dict]
        for block in range(model.cfg.n_layers):
            layer = blocks.index(block) if block in blocks else None
            fwd.append((mlp_out(block), enter(layer) if layer is not None
                        else (lambda x, hook: x.detach())))
            fwd.append((z_names[block], record(block)))
        mode = relp(model, **vars(run.rules)) if use_relp else contextlib.nullcontext()
        with torch.no_grad(), fwAD.dual_level(), mode, backends.hooks(model, fwd_hooks=fwd):
            model(tokens.repeat(R, 1), stop_at_layer=model.cfg.n_layers)
        passes["push"] += 1
        for block, t in got.items():
            for r, k in enumerate(chunk):
                out[k][block] = t[r]
    return out


def _pull_and_contract(model, run, batch, circuit, pairs, tangents, push, grads, at, blocks, z_names, embeds,
                       use_relp, edge_batch, res, per_head, passes) -> None:
    """Reverse mode: each target's pull on every head output and on the sources' leaves, dotted with the
    sources' tangents and pushes into ``res`` (residual share) and ``per_head`` ([block, head])."""
    nodes = circuit.nodes
    tokens = batch.clean_tokens.to(model.cfg.device)
    b = tokens.shape[0]
    n_heads = model.cfg.n_heads
    leaves: dict = {}
    live: dict[int, torch.Tensor] = {}
    fwd = [(h, leaf_hook(leaves, h)) for h in embeds]
    for block in range(model.cfg.n_layers):
        if block in blocks:
            layer = blocks.index(block)
            fwd.append((circuit.hook_names[layer], keep_hook(live, layer)))
        fwd += [(mlp_out(block), leaf_hook(leaves, ("mlp", block))),
                (z_names[block], leaf_hook(leaves, ("z", block)))]
    targets = [t for t in pairs if t[0] == "n"]
    mode = relp(model, **vars(run.rules)) if use_relp else contextlib.nullcontext()
    with torch.enable_grad(), mode, backends.hooks(model, fwd_hooks=fwd):
        logits = model(tokens)
        z_keys = [("z", blk) for blk in range(model.cfg.n_layers)]
        src_keys = [("mlp", blocks[nodes[s[1]].layer]) for s in tangents if s[0] == "n"]
        src_keys += [h for h in embeds if h in leaves]
        want = list(dict.fromkeys(z_keys + src_keys))
        if (OUT,) in pairs:
            m = evaluate_metric(run.metric_fn, logits, batch).sum()
            g = torch.autograd.grad(m, [leaves[k] for k in want], allow_unused=True, retain_graph=True)
            passes["pull"] += 1
            _contract({k: (None if x is None else x[None]) for k, x in zip(want, g)}, [(OUT,)], pairs, tangents,
                      push, blocks, nodes, b, n_heads, res, per_head)
        r_max = max(1, edge_batch // b)
        order = [t[1] for t in targets]
        for start in range(0, len(order), r_max):
            chunk = order[start:start + r_max]
            seeds = node_seeds(nodes, chunk, at, grads, live)
            layers = sorted(seeds)
            g = torch.autograd.grad([live[l] for l in layers], [leaves[k] for k in want],
                                    [seeds[l] for l in layers], allow_unused=True, retain_graph=True,
                                    is_grads_batched=True)
            passes["pull"] += 1
            _contract(dict(zip(want, g)), [("n", i) for i in chunk], pairs, tangents, push, blocks, nodes, b,
                      n_heads, res, per_head)


def _contract(g: dict, rows: Sequence[tuple], pairs, tangents, push, blocks, nodes, b, n_heads, res,
              per_head) -> None:
    """``g[key]``: ``[R, B, pos, …]`` pulls of the targets ``rows`` (row r = rows[r]) at each leaf."""
    for r, t in enumerate(rows):
        for s in pairs[t]:
            parts = [k for k in tangents if k[:2] == s] if s[0] == "e" else ([s] if s in tangents else [])
            for k in parts:
                where, tan = tangents[k]
                leaf = ("mlp", blocks[where]) if s[0] == "n" else where
                pull = g.get(leaf)
                if pull is not None:
                    res[(s, t)] += float((pull[r].float() * tan).sum())
                for block, z in push[k].items():
                    gz = g.get(("z", block))
                    if gz is None:
                        continue
                    prod = (gz[r].float().reshape(z.shape) * z.float()).reshape(b, z.shape[1], n_heads, -1)
                    per_head[(s, t)][block] += prod.sum((0, 1, 3)).double().cpu()
