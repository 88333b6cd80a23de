"""Choosing a circuit's nodes from an attribution: top-k by |mean score|, or a threshold on it.

1. Scores: the mean score per node over the prompts, ``[layer, pos, node]`` (:func:`_node_scores`; with
   ``aggregate_pos`` the score summed over positions, one position axis entry).
2. Candidates (:func:`_candidates`): only positions every prompt has (``everywhere``; prompts of different
   lengths: the far end-counted positions of the longest prompts are left out), so the circuit applies to all of
   them; when the circuit will be judged by mean ablation of unpaired data, positions every prompt shares (BOS, a
   common template start) are left out by default — mean ablation cannot move them; ``exclude_neurons`` leaves
   out chosen neurons (e.g. :func:`relp_lens.analysis.cards.always_on_neurons`) at every position. What was left
   out is recorded in the circuit's ``selection``.
3. Selection: :func:`select_top_k` (the ``k`` largest |score|) or :func:`select_threshold` (keep |score| ≥ τ·|m|,
   m the mean clean metric; the paper uses τ = 0.005).
4. The :class:`~relp_lens.circuits.circuit.Circuit` (:func:`_from_scores`): nodes by decreasing |score|, the
   model's facts, the prompts, the position labels, the baseline and the ablation it will be judged by (default:
   consistent with the baseline, :func:`~relp_lens.circuits.circuit.consistent_ablation`).

These functions lived in :mod:`relp_lens.circuits.circuit` before (still reachable there, with a warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from relp_lens.circuits.circuit import ABLATIONS, Circuit, CircuitNode, consistent_ablation, model_facts
from relp_lens.core.attribution import Attribution
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import RANKS, AblationKind, Rank
from relp_lens.core.validate import finite_float, positive_int

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer


def _node_scores(attr: Attribution, aggregate_pos: bool) -> torch.Tensor:
    """Mean score per node: ``[layer, pos, node]`` (pos axis of size 1 when aggregated)."""
    if aggregate_pos:
        return attr.mean_over_positions()[:, None, :].nan_to_num(0.0)
    return attr.mean().nan_to_num(0.0)


def _candidates(attr: Attribution, s: torch.Tensor, aggregate_pos: bool, ablation: str,
                include_fixed: bool | None, exclude_neurons, everywhere: bool = True) -> tuple[torch.Tensor, dict]:
    """``[layer, pos, node]`` bool: nodes selection may choose, and what was left out (for the file)."""
    ok = torch.ones_like(s, dtype=torch.bool)
    partial = []
    if everywhere and not aggregate_pos:  # a node must exist in every prompt it is applied to
        short = attr.counts < attr.n_examples
        ok[:, short] = False
        partial = [p for p, x in zip(attr.positions, short.tolist()) if x]
    if include_fixed is None:  # mean ablation cannot move a position identical in every prompt
        include_fixed = not (ablation == "mean" and not attr.paired)
    fixed = [] if include_fixed or aggregate_pos else attr.fixed_positions
    if fixed:
        ok[:, : len(fixed)] = False
        if len(fixed) == attr.n_positions:
            warnings.warn("every position is shared by all prompts (identical prompts?), so mean ablation "
                          "cannot move any node and none is selected; pass include_fixed=True or use more "
                          "varied prompts", stacklevel=3)
    excluded = []
    for layer, index in exclude_neurons or ():
        if not (0 <= layer < s.shape[0] and 0 <= index < s.shape[2]):
            raise RelPLensError(f"excluded neuron ({layer}, {index}) outside [0, {s.shape[0]}) × [0, {s.shape[2]})")
        ok[layer, :, index] = False
        excluded.append([int(layer), int(index)])
    return ok, dict(include_fixed=include_fixed, excluded_positions=list(fixed), excluded_neurons=excluded,
                    positions_not_in_every_prompt=partial)


def _from_scores(attr: Attribution, model: HookedTransformer, keep: torch.Tensor, s: torch.Tensor,
                 aggregate_pos: bool, selection: dict, task: str | None, ablation: str) -> Circuit:
    """The circuit of the nodes ``keep`` (``[layer, pos, node]`` bool) with their scores ``s`` (step 4)."""
    labels = attr.positions
    nodes = [CircuitNode(layer=l, pos=None if aggregate_pos else labels[p], index=i, score=float(s[l, p, i]))
             for l, p, i in keep.nonzero().tolist()]
    nodes.sort(key=lambda n: -abs(n.score))
    rows = attr.prompts.to_rows() if attr.prompts is not None else None
    align = attr.alignment
    positions = dict(rule="end" if align.end_aligned else "absolute", n_shared=align.n_shared,
                     labels=attr.position_labels())
    return Circuit(nodes=nodes, basis=attr.basis, hook_names=list(attr.hook_names), node_width=attr.width,
                   model=model_facts(model), method=attr.method, metric=attr.metric,
                   data=dict(task=task, rows=rows, n_prompts=attr.n_examples, prepend_bos=attr.prepend_bos),
                   selection=dict(selection, aggregate_pos=aggregate_pos), baseline=attr.baseline,
                   ablation=ablation, positions=positions)


def _ablation(attr: Attribution, ablation: str | None) -> str:
    """The ablation the circuit will be judged by: ``ablation``, or the one consistent with the baseline."""
    ablation = ablation or consistent_ablation(attr.baseline)
    if ablation not in ABLATIONS:
        raise RelPLensError(f"unknown ablation {ablation!r}; choose from {list(ABLATIONS)}")
    if ablation == "counterfactual" and not attr.paired:
        raise RelPLensError("counterfactual ablation needs paired data (patch prompts)")
    return ablation


def select_top_k(attr: Attribution, model: HookedTransformer, k: int, *, aggregate_pos: bool = False,
                 task: str | None = None, ablation: AblationKind | None = None, include_fixed: bool | None = None,
                 exclude_neurons: Sequence[tuple[int, int]] | None = None, everywhere: bool = True,
                 rank: Rank = "abs") -> Circuit:
    """The ``k`` nodes with the largest |mean score|, or (``rank="signed"``) that carry the behaviour most
    (steps 1–4).

    Args:
        attr: the attribution to select from.
        model: the model it was computed on (recorded by :func:`~relp_lens.circuits.circuit.model_facts`).
        k: how many nodes, a positive integer (fewer when fewer nodes may be chosen).
        aggregate_pos: nodes are neurons at every position (score summed over positions).
        task: the task's name, recorded in the circuit's ``data``.
        ablation: how the circuit will be judged (default: consistent with the attribution's baseline, see
            :func:`~relp_lens.circuits.circuit.consistent_ablation`).
        include_fixed: also choose positions shared by every prompt (default: not under mean ablation of
            unpaired data, which cannot move them).
        exclude_neurons: ``(layer, index)`` pairs never selected.
        everywhere: only positions every prompt has, so the circuit applies to all of them.
        rank: ``"abs"`` (default): by |mean score|; ``"signed"``: by the signed score in the direction that
            carries the behaviour (``−score`` for paired data, ``+score`` for unpaired), so nodes that work
            against it are chosen last (recorded as ``selection["rank"]``).

    Returns:
        The circuit, nodes by decreasing |score|.
    """
    k = positive_int(k, "k")
    if rank not in RANKS:
        raise RelPLensError(f"unknown rank {rank!r}; choose from {list(RANKS)}")
    ablation = _ablation(attr, ablation)
    s = _node_scores(attr, aggregate_pos)
    ok, left_out = _candidates(attr, s, aggregate_pos, ablation, include_fixed, exclude_neurons, everywhere)
    keep = torch.zeros_like(s, dtype=torch.bool)
    key = s.abs() if rank == "abs" else (-s if attr.paired else s)
    key = key.masked_fill(~ok, -float("inf"))
    k_eff = min(k, int(ok.sum()))
    if k_eff:
        flat = key.flatten().topk(k_eff).indices
        keep.view(-1)[flat] = True
    extra = {} if rank == "abs" else dict(rank=rank)  # files of |score| circuits stay as they were
    return _from_scores(attr, model, keep, s, aggregate_pos, dict(k=k, tau=None, **left_out, **extra), task,
                        ablation)


def select_threshold(attr: Attribution, model: HookedTransformer, tau: float = 0.005, *,
                     aggregate_pos: bool = False, task: str | None = None, ablation: AblationKind | None = None,
                     include_fixed: bool | None = None,
                     exclude_neurons: Sequence[tuple[int, int]] | None = None, everywhere: bool = True) -> Circuit:
    """Nodes with |mean score| ≥ τ·|m|, m the mean clean metric (steps 1–4).

    Args:
        attr: the attribution to select from.
        model: the model it was computed on.
        tau: the threshold τ, a finite number ≥ 0 (0: every node with a non-zero score).
        aggregate_pos: as in :func:`select_top_k`.
        task: as in :func:`select_top_k`.
        ablation: as in :func:`select_top_k`.
        include_fixed: as in :func:`select_top_k`.
        exclude_neurons: as in :func:`select_top_k`.
        everywhere: as in :func:`select_top_k`.

    Returns:
        The circuit, nodes by decreasing |score|.
    """
    tau = finite_float(tau, "tau", low=0.0)
    ablation = _ablation(attr, ablation)
    s = _node_scores(attr, aggregate_pos)
    ok, left_out = _candidates(attr, s, aggregate_pos, ablation, include_fixed, exclude_neurons, everywhere)
    m = attr.metric_clean.mean().abs().item()
    keep = (s.abs() >= tau * m) & ok
    if tau == 0:
        keep &= s != 0
    return _from_scores(attr, model, keep, s, aggregate_pos, dict(k=None, tau=tau, m=m, **left_out), task,
                        ablation)
