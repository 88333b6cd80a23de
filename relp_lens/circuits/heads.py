"""How each edge of a circuit's graph splits over the attention heads its paths pass through.

An edge's weight (:mod:`relp_lens.circuits.edges`, :mod:`relp_lens.circuits.io_edges`) sums the direct paths from its source
to its target: every MLP in between is held constant, so each path either stays in the residual stream or
passes through one or more attention heads. The weight is ``∇̃_d m · J̃ · Δu`` with ``J̃`` the (RelP) Jacobian
along those paths, and by the chain rule ``J̃`` is a sum over paths. Each path is credited to the **last**
attention head it passes through (the one that delivers it to the target), or to the residual stream when it
passes through none::

    w(u → d) = w_res(u → d) + Σ_{l,h} w_{l,h}(u → d)
    w_{l,h}(u → d) = Σ_{prompts, positions, d_head} g_{l,h}(d) · t_{l,h}(u)

- ``g_{l,h}(d) = ∇̃_d m · ∂̃d/∂z_{l,h}`` with every other head's output (and every MLP) constant: the target's
  pull on head h of layer l (``blocks.l.attn.hook_z``) along the residual stream alone;
- ``t_{l,h}(u) = ∂̃z_{l,h}/∂u · Δu`` with every MLP constant: the source's push into that head through the
  residual stream and any earlier heads (with the AH rule the patterns are constants and only the OV circuits
  carry it; without it the Q/K paths count too, as they do in the edge weight);
- ``w_res`` = the target's pull at the source (every head constant) · Δu.

The split always sums to the edge weight (tested). A path through one attention layer is credited to its
only head, so for an edge whose paths cross one layer (adjacent layers) the split is exactly per head. A path
through several heads (head A of layer l₁ feeding head B of layer l₂ > l₁) is credited to B; A's share shows
up inside B's weight (composition), not as a term of its own. Edges into the output (neuron → metric,
embedding → metric) and out of the embeddings split the same way.

Algorithm, per batch of prompts of one length:

1. One attribution pass gives ``∇̃_d m`` at every target node and ``Δ`` at every source (as for edges).
2. Pull (reverse mode, RelP rules): a forward pass in which every MLP output, every attention output and the
   embeddings are detached leaves; seeds ``∇̃_d m`` at the targets (rows of one vectorised backward pass per
   layer of targets, or the metric itself for the output) give the target's pull on each block's attention
   output and the residual pull at the sources' leaves, kept at the positions the target reads. Attention
   writes ``z @ W_O`` (checked, :mod:`relp_lens.core.structure`), so ``g_{l,h}(d)`` is that pull times
   ``W_O``ᵀ of head h. Where a norm follows attention (Gemma 2/3's ``ln1_post``), the pull at the attention
   output is taken back through it first (:class:`relp_lens.core.structure.MLPPostNorms`, ``sublayer="attn"``:
   the frozen scale under the LN rule, the norm's true Jacobian otherwise).
3. Push (forward mode, ``torch.func.jvp`` under ``torch.func.vmap``, with the RelP rules' forward-mode
   linearisation — their ``jvp`` is the transpose of their backward): a forward pass with every MLP output
   cut (and its input, so no MLP carries a tangent), run once per chunk of sources with their tangents
   ``W_out[u]·Δu`` (or ``Δe_p``) as one batched stack at the sources' leaves — through the norm after the
   source's MLP where there is one (Gemma 2/3's ``ln2_post``, :class:`~relp_lens.core.structure.MLPPostNorms`);
   the tangents reaching the ``z``
   hooks are ``t_{l,h}(u)``. A chunk starts at its earliest source's block (HookedTransformer); chunks group
   sources of nearby blocks (:func:`_chunks`).
4. Dot products over prompts, positions and head dimensions, for every target × source of a chunk at once
   (one einsum per block), summed over batches in float64 and divided by the number of prompts.

Cost: steps 2 and 4 are small; step 3 is one forward pass per chunk of at most ``edge_batch // batch``
sources, its tangents through attention and the norms only. On the shipped SmolLM2-135M (2 CPU threads),
the 1,104 edges of ``benchmarks/head_splits.py``'s pruned top-300 circuit split in about 4 ms each
(``benchmarks/results/head_splits.json``); the forward-mode implementation it replaced took 30 ms.

The result is a new circuit with ``heads`` (a :class:`~relp_lens.circuits.circuit.HeadSplits`, the data model's
type; :func:`edge_key`, :func:`embedding_key` and :data:`OUT` name its edges and live there too) and
``stats["heads"]`` (:class:`HeadStats`); the input circuit is left unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends
from relp_lens.core import distributed as dp
from relp_lens.core import structure
from relp_lens.core import validate
from relp_lens.core.attribution import batch_gradients
from relp_lens.circuits.circuit import OUT, Circuit, HeadSplit, HeadSplits, StepStats, edge_key, embedding_key
from relp_lens.circuits.edges import check_edge_options, circuit_run, edge_layers, keep_hook, leaf_hook, node_positions, node_seeds
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import GradientMethod, Metric
from relp_lens.circuits.io_edges import EMBED_HOOKS, _embeddings
from relp_lens.circuits.pruning import readable_graph
from relp_lens.core.metrics import evaluate_metric
from relp_lens.core.nodes import attn_out, attn_z, mlp_inputs, mlp_out, resid_pre
from relp_lens.core.relp_mode import RelPConfig, relp

if TYPE_CHECKING:
    from collections.abc import Sequence

    from transformer_lens import HookedTransformer

    from relp_lens.core.data import Prompts

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


def attribute_head_splits(model: HookedTransformer, circuit: Circuit, prompts: Prompts | Sequence[dict], *,
                          method: GradientMethod = "relp",
                          metric: Metric | None = None, rules: RelPConfig | None = None, batch_size: int = 8,
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
    targets = sorted(pairs)  # row order of the accumulators; ("n", 2) before ("n", 10) before ("out",)
    sources = sorted({s for ss in pairs.values() for s in ss})  # column order
    res_m = torch.zeros(len(targets), len(sources), dtype=torch.float64)  # [target, source]
    head_m = torch.zeros(len(targets), len(sources), model.cfg.n_layers, n_heads, dtype=torch.float64)
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
            post = structure.MLPPostNorms(model, [blocks[nodes[s[1]].layer] for s in sources if s[0] == "n"],
                                          frozen=use_relp and run.rules.ln)
            post.capture(model, batch.clean_tokens)  # the norms after the sources' MLPs on this batch
            for s in sorted(x for x in sources if x[0] == "n"):
                n = nodes[s[1]]
                w = w_outs[n.layer][n.index].float()  # [d] on its block's device (layers may sit on several devices)
                t = post.push(blocks[n.layer], deltas[n.layer][..., n.index, None].float().to(w.device) * w)
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
            column = {k: sources.index(k[:2]) for k in tangents}  # an embedding's hooks share its column
            groups, starts = _pull(model, run, batch, circuit, targets, grads, at, blocks, embeds, use_relp,
                                   edge_batch, passes)
            _residual_shares(tangents, column, groups, blocks, res_m)
            _push_and_contract(model, run, batch, tangents, column, groups, starts, blocks, use_relp, edge_batch,
                               passes, head_m)
    res = {(s, t): float(res_m[targets.index(t), sources.index(s)]) for t, ss in pairs.items() for s in ss}
    per_head = {(s, t): head_m[targets.index(t), sources.index(s)] for s, t in res}
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
    values = heads.tolist()
    nz = [(l, h, values[l][h]) for l, h in heads.nonzero().tolist()]
    nz.sort(key=lambda x: -abs(x[2]))
    return [list(x) for x in (nz if top is None else nz[:top])]


@dataclass
class _Pulls:
    """The pulls of a group of targets that read the same positions (step 2).

    Attributes:
        rows: the targets' rows in the accumulators, ``[T]``.
        at: the positions read (a target at one position reads that one; ``slice(None)``: every position).
        pulls: per leaf (``("attn", block)``, ``("mlp", block)`` or an embedding hook), the pull there,
            ``[T, B, P, d]``.
    """

    rows: torch.Tensor
    at: slice
    pulls: dict


def _pull(model, run, batch, circuit, targets, grads, at, blocks, embeds, use_relp, edge_batch,
          passes) -> tuple[list[_Pulls], dict[int, torch.Tensor]]:
    """Reverse mode (step 2): every target's pull on each block's attention output and at the sources' leaves.
    Every attention output, MLP output and embedding is a detached leaf, so the pull runs along the residual
    stream alone; it is kept at the positions the target reads (targets at one position grouped by it).

    Returns the groups and, where the push may start at a block (:func:`_starts`), each block's residual
    input ``[B, pos, d_model]`` from the same forward pass."""
    nodes = circuit.nodes
    tokens = batch.clean_tokens.to(model.cfg.device)
    b = tokens.shape[0]
    leaves: dict = {}
    live: dict[int, torch.Tensor] = {}
    starts: dict[int, torch.Tensor] = {}
    fwd = [(h, leaf_hook(leaves, h)) for h in embeds]
    # a norm after attention (Gemma 2/3's ln1_post) lies between z @ W_O and the attention-output leaf: the
    # pull there is taken back through it (frozen scale under the LN rule), to where the heads write
    attn_post = structure.MLPPostNorms(model, range(model.cfg.n_layers), frozen=use_relp and run.rules.ln,
                                       sublayer="attn")
    fwd += attn_post.hooks()
    for block in range(model.cfg.n_layers):
        if _starts(model):
            fwd.append((resid_pre(block), backends.capture_hook(starts, block, torch.Tensor.detach)))
        if block in blocks:
            layer = blocks.index(block)
            fwd.append((circuit.hook_names[layer], keep_hook(live, layer)))
        fwd += [(mlp_out(block), leaf_hook(leaves, ("mlp", block))),
                (attn_out(block), leaf_hook(leaves, ("attn", block)))]
    by_at: dict = {}  # position read (None: every position) -> [(row, target)]
    for row, t in enumerate(targets):
        by_at.setdefault(None if t == (OUT,) else at[t[1]], []).append((row, t))
    r_max = max(1, edge_batch // b)
    mode = relp(model, **vars(run.rules)) if use_relp else contextlib.nullcontext()
    groups = []
    with torch.enable_grad(), mode, backends.hooks(model, fwd_hooks=fwd):
        logits = model(tokens)
        want = list(leaves)
        for pos, members in by_at.items():
            sel = slice(None) if pos is None else slice(pos, pos + 1)
            parts: dict = {k: [] for k in want}
            rows = []

            def keep(g, R):  # [R, B, pos, d] per leaf (zeros where the pull does not reach it), at sel
                for k, x in zip(want, g):
                    leaf = leaves[k]
                    if x is not None and isinstance(k, tuple) and k[0] == "attn":
                        x = attn_post.pull(k[1], x)
                    parts[k].append(leaf.new_zeros(R, *leaf.shape[:1], len(range(leaf.shape[1])[sel]),
                                                   *leaf.shape[2:]) if x is None else x[:, :, sel])

            for row, t in members:
                if t == (OUT,):
                    m = evaluate_metric(run.metric_fn, logits, batch).sum()
                    g = torch.autograd.grad(m, [leaves[k] for k in want], allow_unused=True, retain_graph=True)
                    passes["pull"] += 1
                    keep([None if x is None else x[None] for x in g], 1)
                    rows.append(row)
            by_layer: dict[int, list] = {}  # a chunk's targets share a layer: its backward crosses one MLP
            for row, t in members:
                if t != (OUT,):
                    by_layer.setdefault(nodes[t[1]].layer, []).append((row, t[1]))
            chunks = [same[i:i + r_max] for _, same in sorted(by_layer.items()) for i in range(0, len(same), r_max)]
            for chunk in chunks:
                seeds = node_seeds(nodes, [i for _, i in chunk], at, grads, live)
                layers = sorted(seeds)
                g = torch.autograd.grad([live[l] for l in layers], [leaves[k] for k in want],
                                        [seeds[l] for l in layers], allow_unused=True, retain_graph=True,
                                        is_grads_batched=True)
                passes["pull"] += 1
                keep(g, len(chunk))
                rows += [r for r, _ in chunk]
            groups.append(_Pulls(rows=torch.tensor(rows), at=sel,
                                 pulls={k: torch.cat(v).float() for k, v in parts.items()}))
    return groups, starts


def _starts(model) -> bool:
    """Whether the push may start at a block from its residual input (a HookedTransformer without shortformer
    positions, whose blocks read positions from the residual stream alone)."""
    return backends.supports_start_at_layer(model) and model.cfg.positional_embedding_type != "shortformer"


def _residual_shares(tangents: dict, column: dict, groups: list[_Pulls], blocks, res_m: torch.Tensor) -> None:
    """Each source's residual share (every head constant): its target's pull at the source's leaf · its tangent,
    summed over prompts and positions, into ``res_m`` ``[target, source]``."""
    for k, (where, tan) in tangents.items():
        leaf = ("mlp", blocks[where]) if isinstance(where, int) else where
        for grp in groups:
            pull = grp.pulls[leaf]  # [T, B, P, d]
            dots = (pull.double() * tan[:, grp.at].to(pull.device).double()).sum((1, 2, 3))
            res_m.index_put_((grp.rows, torch.tensor(column[k])), dots.cpu(), accumulate=True)


def _push_and_contract(model, run, batch, tangents: dict, column: dict, groups: list[_Pulls],
                       starts: dict[int, torch.Tensor], blocks, use_relp: bool, edge_batch: int, passes: dict,
                       head_m: torch.Tensor) -> None:
    """Forward mode (steps 3-4): the tangent each source sends into every head output ``z`` (MLPs constant),
    dotted with every target's pull there, into ``head_m`` ``[target, source, block, head]``.

    ``torch.func.jvp`` under ``vmap``: the batch's forward pass runs once per chunk of at most
    ``edge_batch // B`` sources (:func:`_chunks`), the tangents as one batched stack; the MLPs see no tangent
    (their input is cut where a hook allows it, their output always), so only attention and the norms carry
    one. A target's pull on ``z`` of block l is its pull on the block's attention output times ``W_O``ᵀ. A
    chunk whose sources all sit at or after block s starts at s from the residual input the pull's forward pass
    kept (``starts``), where the model allows it; sources in the last block reach no head and are not pushed."""
    tokens = batch.clean_tokens.to(model.cfg.device)
    b = tokens.shape[0]
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads

    def entry(key):  # the first block whose z the source can reach
        where = tangents[key][0]
        return blocks[where] + 1 if isinstance(where, int) else 0

    order = sorted((k for k in tangents if entry(k) < n_layers), key=entry)
    r_max = max(1, edge_batch // b)
    cut = [next(h for h in mlp_inputs(block) if h in model.hook_dict) for block in range(n_layers)
           if any(h in model.hook_dict for h in mlp_inputs(block))]
    w_o = {blk: backends.W_O(model, blk).float() for blk in range(n_layers)}  # [n_heads·d_head, d_model]
    pulls_z = {}  # (group, block) -> the pull on z, [T, B, P, n_heads, d_head]
    for gi, grp in enumerate(groups):
        for blk in range(n_layers):
            g = grp.pulls[("attn", blk)]
            pulls_z[gi, blk] = (g @ w_o[blk].to(g.device).T).unflatten(-1, (n_heads, -1))
    for chunk in _chunks(order, [entry(k) for k in order], n_layers, r_max):
        first = min(entry(k) for k in chunk)
        begin = first - 1  # the block of the chunk's earliest MLP source (-1: an embedding, from the tokens)
        wheres = list(dict.fromkeys(tangents[k][0] for k in chunk))
        stacks = []  # per entry point: [R, B, pos, d], zero for the chunk's sources that enter elsewhere
        for w in wheres:
            like = next(tangents[k][1] for k in chunk if tangents[k][0] == w)
            stacks.append(torch.stack([tangents[k][1] if tangents[k][0] == w else torch.zeros_like(like)
                                       for k in chunk]))

        def z_of(*deltas):  # the head outputs z of every block, with deltas added at the sources' entry points
            got: dict[int, torch.Tensor] = {}

            def enter(i):  # the tangents sit on their leaf's device already (built from its block's W_out)
                return lambda x, hook: x.detach() + (deltas[i] if deltas[i].dtype == x.dtype else deltas[i].to(x.dtype))

            def record(block):
                def hook(x, hook):
                    got[block] = x

                return hook

            where_of = {w: i for i, w in enumerate(wheres)}
            fwd = [(h, enter(where_of[h])) for h in EMBED_HOOKS if h in where_of]
            fwd += [(h, lambda x, hook: x.detach()) for h in cut]
            for block in range(n_layers):
                layer = blocks.index(block) if block in blocks else None
                fwd.append((mlp_out(block), enter(where_of[layer]) if layer in where_of
                            else (lambda x, hook: x.detach())))
                fwd.append((attn_z(block), record(block)))
            with backends.hooks(model, fwd_hooks=fwd):
                if begin in starts:
                    model(starts[begin], start_at_layer=begin, stop_at_layer=n_layers)
                else:
                    model(tokens, stop_at_layer=n_layers)
            return tuple(got[block] for block in range(first, n_layers))

        zeros = tuple(torch.zeros_like(t[0]) for t in stacks)  # outside vmap: the forward pass runs unbatched

        def push(*tans):
            return torch.func.jvp(z_of, zeros, tans)[1]

        mode = relp(model, **vars(run.rules)) if use_relp else contextlib.nullcontext()
        with torch.no_grad(), mode:
            zt = torch.func.vmap(push)(*stacks)  # per block [R, B, pos, n_heads·d_head] (or [.., n_heads, d_head])
        passes["push"] += 1
        cols = torch.tensor([column[k] for k in chunk])
        for blk in range(first, n_layers):
            t = zt[blk - first].float().reshape(len(chunk), b, zt[blk - first].shape[2], n_heads, -1)
            for gi, grp in enumerate(groups):
                g = pulls_z[gi, blk]
                w = torch.einsum("tbphd,rbphd->trh", g, t[:, :, grp.at].to(g.device)).double()
                head_m.index_put_((grp.rows[:, None], cols[None, :], torch.tensor(blk)), w.cpu(), accumulate=True)


PASS_ROWS = 32  # what one block of a push pass costs beyond its tangents, in tangent rows (measured on CPU)


def _chunks(order: list, entries: list[int], n_layers: int, r_max: int) -> list[list]:
    """``order`` (sorted by ``entries``, the first block each source reaches) cut into chunks of at most
    ``r_max``, minimising Σ over chunks of (blocks the chunk runs) × (:data:`PASS_ROWS` + its sources): a chunk
    runs from its earliest source's block, so mixing early and late sources wastes the late ones' rows, while
    every pass also pays a fixed cost per block. Dynamic programming over the cut points."""
    best = [0.0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(max(0, j - r_max), j):
            cost = best[i] + (n_layers - entries[i]) * (PASS_ROWS + j - i)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], len(order)
    while j:
        bounds.append((cut[j], j))
        j = cut[j]
    return [order[i:j] for i, j in reversed(bounds)]
