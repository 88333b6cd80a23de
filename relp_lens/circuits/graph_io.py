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
   ``W_out[u] · ∂m/∂(MLP output)``.
4. Input edges: seeds ``∇̃_d m`` at each node ``d`` (chunks of ``edge_batch`` rows), vectorised backward passes
   to the embedding leaves only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends
from relp_lens.core import distributed as dp
from relp_lens.core import structure
from relp_lens.core.attribution import batch_gradients
from relp_lens.circuits.circuit import Circuit
from relp_lens.circuits.edges import check_edge_options, circuit_run, edge_layers, keep_hook, leaf_hook, node_positions, node_seeds
from relp_lens.core.errors import RelPLensError
from relp_lens.core.metrics import evaluate_metric
from relp_lens.core.relp_mode import RelPConfig, relp

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

EMBED_HOOKS = ("hook_embed", "hook_pos_embed")


@dataclass
class IOEdges:
    """A circuit's input and output edges (mean over prompts), with the aligned positions they refer to."""

    positions: list[int]  # aligned position of each row of ``input`` / entry of ``direct``
    input: torch.Tensor  # [pos, node]: embedding at a position → circuit node
    output: torch.Tensor  # [node]: circuit node → metric (direct effect)
    direct: torch.Tensor  # [pos]: embedding at a position → metric (direct path)
    metric: float  # the mean metric on the clean prompts
    # a metric that is a signed sum of target logits (logit_diff = clean answer − patch answer) also gets an
    # output node per target: its name, its sign in the metric, and the direct edges into that logit
    targets: list[str] = field(default_factory=list)
    signs: list[float] = field(default_factory=list)
    target_output: torch.Tensor | None = None  # [target, node]
    target_direct: torch.Tensor | None = None  # [target, pos]

    def to_dict(self) -> dict:
        """JSON form (stored in a circuit file as ``io_edges``): non-zero input edges as [row, node, weight]."""
        nz = self.input.nonzero().tolist()
        d = dict(positions=list(self.positions), metric=float(self.metric),
                 input=[[int(r), int(n), float(self.input[r, n])] for r, n in nz],
                 output=[float(w) for w in self.output.tolist()], direct=[float(w) for w in self.direct.tolist()])
        if self.targets:
            d["targets"] = [dict(name=t, sign=float(s), output=[float(w) for w in o.tolist()],
                                 direct=[float(w) for w in dr.tolist()])
                            for t, s, o, dr in zip(self.targets, self.signs, self.target_output, self.target_direct)]
        return d

    @classmethod
    def from_dict(cls, d: dict, n_nodes: int) -> "IOEdges":
        """Read :meth:`to_dict`'s form back, checking it fits a circuit of ``n_nodes`` nodes."""
        try:
            positions = [int(p) for p in d["positions"]]
            output = torch.tensor([float(w) for w in d["output"]], dtype=torch.float64)
            direct = torch.tensor([float(w) for w in d["direct"]], dtype=torch.float64)
            inp = torch.zeros(len(positions), n_nodes, dtype=torch.float64)
            for r, n, w in d["input"]:
                inp[int(r), int(n)] = float(w)
            metric = float(d.get("metric", float("nan")))
            targets = d.get("targets") or []
            names = [str(t["name"]) for t in targets]
            signs = [float(t["sign"]) for t in targets]
            t_out = torch.tensor([[float(w) for w in t["output"]] for t in targets], dtype=torch.float64)
            t_dir = torch.tensor([[float(w) for w in t["direct"]] for t in targets], dtype=torch.float64)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise RelPLensError(f"io_edges: malformed ({type(e).__name__}: {e})") from e
        if output.shape[0] != n_nodes or direct.shape[0] != len(positions):
            raise RelPLensError(f"io_edges: {output.shape[0]} output weights for {n_nodes} nodes, "
                                f"{direct.shape[0]} direct weights for {len(positions)} positions")
        if targets and (t_out.shape != (len(targets), n_nodes) or t_dir.shape != (len(targets), len(positions))):
            raise RelPLensError(f"io_edges: target edges must have {n_nodes} output and {len(positions)} direct "
                                f"weights each")
        return cls(positions=positions, input=inp, output=output, direct=direct, metric=metric, targets=names,
                   signs=signs, target_output=t_out if targets else None, target_direct=t_dir if targets else None)

    def restricted(self, used: list[int]) -> "IOEdges":
        """The same edges for the nodes ``used`` only (node numbers), renumbered in that order."""
        return replace(self, input=self.input[:, used], output=self.output[used],
                       target_output=None if self.target_output is None else self.target_output[:, used])


def attribute_io_edges(model: HookedTransformer, circuit: Circuit, prompts, *, method: str = "relp",
                       metric=None, rules: RelPConfig | None = None, batch_size: int = 8, edge_batch: int = 256,
                       progress: bool = True) -> IOEdges:
    """Input and output edges of ``circuit`` (see the module docstring)."""
    check_edge_options(model, method, batch_size, edge_batch)
    circuit.check_model(model)
    if not circuit.nodes:
        raise RelPLensError("the circuit is empty: no edges to attribute")
    if not circuit.hook_names[0].endswith("mlp.hook_post"):
        raise RelPLensError("input/output edges are defined for MLP neurons (basis mlp_post)")
    blocks = edge_layers(circuit.hook_names)
    structure.check_structure(model, mlp=True, embed=True)  # neuron directions, and the embedding as the first residual
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
    w_outs = {layer: backends.W_out(model, blocks[layer]) for layer in {n.layer for n in nodes}}

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
            for layer, block in enumerate(blocks):
                fwd += [(circuit.hook_names[layer], keep_hook(live, layer)),
                        (f"blocks.{block}.hook_mlp_out", leaf_hook(leaves, layer))]
            for block in set(range(model.cfg.n_layers)) - set(blocks):  # MLPs outside the basis: constants too
                fwd.append((f"blocks.{block}.hook_mlp_out", leaf_hook(leaves, f"other.{block}")))
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
                    for h, gh, de in zip(embeds, g, d_emb):
                        if gh is not None:
                            to_direct.index_add_(0, cols, (gh.float() * de).sum((0, 2)).double().cpu())
                    for k, n in enumerate(nodes):
                        gl = g[len(embeds) + n.layer]
                        if gl is None:
                            continue
                        direct = gl.float() @ w_outs[n.layer][n.index].float()  # [B, pos]: ∂m/∂post_u, direct paths
                        contrib = direct * deltas[n.layer][..., n.index].float()
                        to_out[k] += (contrib.sum() if at[k] is None else contrib[:, at[k]].sum()).double().cpu()
                # 4. input edges: seed ∇̃_d m at each node, backward to the embedding leaves
                r_max = max(1, edge_batch // b)
                order = list(range(len(nodes)))
                for start in range(0, len(order), r_max):
                    chunk = order[start:start + r_max]
                    R = len(chunk)
                    seeds = node_seeds(nodes, chunk, at, grads, live)
                    layers = sorted(seeds)
                    gi = torch.autograd.grad([live[l] for l in layers], [leaves[h] for h in embeds],
                                             [seeds[l] for l in layers], allow_unused=True, retain_graph=True,
                                             is_grads_batched=True)
                    for gh, de in zip(gi, d_emb):  # gh: [R, B, pos, d_model]
                        if gh is None:
                            continue
                        per_pos = (gh.float() * de[None]).sum((1, 3))  # [R, pos]
                        w_in[:, chunk] += torch.zeros(n_cols, R, dtype=torch.float64).index_add_(
                            0, cols, per_pos.T.double().cpu())
    w_in, w_out, w_direct, t_out, t_direct = (dp.all_reduce(x) for x in (w_in, w_out, w_direct, t_out, t_direct))
    m_total = dp.all_reduce_float(m_total)
    n = len(data)
    return IOEdges(positions=list(run.alignment.labels), input=w_in / n, output=w_out / n, direct=w_direct / n,
                   metric=m_total / n, targets=[name for name, _, _ in targets], signs=[s for _, s, _ in targets],
                   target_output=t_out / n if targets else None, target_direct=t_direct / n if targets else None)


def metric_targets(metric_fn) -> list[tuple[str, float, object]]:
    """The target logits a metric is a signed sum of, as ``(name, sign, fn(logits [batch, d_vocab], batch))``:
    ``logit_diff`` → the clean answer's logit (+1) and the patch answer's (−1); other metrics: none (``logit``
    is already one target node, ``logprob`` is not a sum of logits, a callable is opaque)."""
    from relp_lens.core import metrics

    if metric_fn is metrics.logit_diff:
        return [("clean answer logit", 1.0, metrics.logit),
                ("patch answer logit", -1.0, lambda logits, batch: metrics._gather_sum(logits, batch.patch_answer_ids))]
    return []


def _embeddings(model, tokens: torch.Tensor, embeds: list[str]) -> dict[str, torch.Tensor]:
    """The embedding hooks' values [batch, pos, d_model] for ``tokens`` (no gradient)."""
    got: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(x, hook):
            got[name] = x.detach()

        return hook

    with torch.no_grad(), backends.hooks(model, fwd_hooks=[(h, grab(h)) for h in embeds]):
        model(tokens.to(model.cfg.device), stop_at_layer=1)
    return got
