"""Judging circuits by ablation: faithfulness and completeness (Marks et al. 2025; Arora et al. 2026).

1. Tokenize the evaluation prompts (held out from the circuit's own prompts) the way the circuit's
   attribution tokenized its own (with or without BOS: ``circuit.prepend_bos``; ``prepend_bos=`` overrides)
   and group them by length. The metric is checked (one value per example) on the first batch before any
   pass over all of them.
2. Choose what an ablated node becomes (``ablation``, default: the circuit's own, consistent with how
   its scores were computed — see :func:`relp_lens.circuits.circuit.consistent_ablation`):
   ``mean`` — its mean activation at that position over the patch prompts (the clean prompts for unpaired
   data), positions aligned as in :mod:`relp_lens.core.positions` (counted from the end when lengths differ);
   ``zero`` — 0; ``counterfactual`` (paired data) — its value on the prompt's own patch prompt.
3. Resolve every circuit node's position in every prompt; a node at a position some prompt lacks is an
   error naming both (never skipped).
4. Run the model four ways, each hook's nodes either kept or ablated:
   M (nothing ablated), C (everything outside the circuit ablated), M\\C (the circuit ablated),
   ∅ (every node of the basis ablated); F(·) is the mean metric over the prompts.
5. faithfulness = (F(C) − F(∅)) / (F(M) − F(∅)); completeness = (F(M\\C) − F(∅)) / (F(M) − F(∅)), returned
   as an :class:`~relp_lens.circuits.circuit.Evaluation` (the type a circuit stores as ``evaluation``).

A sweep reuses F(M) and F(∅) and runs C and M\\C once per circuit size (one :class:`SweepPoint` per size);
:func:`cpr_cmd` summarises a sweep (:class:`CprCmd`). :func:`verdict` says in words when a circuit explains
little. Results are dataclasses with ``to_dict()``; ``result["key"]`` still works, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends
from relp_lens.core import distributed as dp
from relp_lens.core import splice, validate
from relp_lens.core.attribution import Attribution, _mean_acts, as_prompts
from relp_lens.circuits.circuit import (ABLATIONS, RATIOS, AblationRatios, Circuit, Evaluation, LegacyKeys,
                                        consistent_ablation)
from relp_lens.circuits.selection import select_threshold, select_top_k
from relp_lens.core.data import Prompts, make_batches, tokenize
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import RANKS, AblationKind, Metric, Rank
from relp_lens.core.metrics import MetricFn, check_metric, evaluate_metric, resolve_metric, warn_same_answers
from relp_lens.core.nodes import SAE_NODES, resolve_hooks
from relp_lens.core.positions import Alignment, require

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

Key = tuple[int, int | None, int]
WEAK = 0.5  # below this faithfulness at every size, a circuit "explains little"
UNSTABLE = 0.1  # |F(M) − F(∅)| below this share of |F(M)|: the ratios are not to be trusted


class WeakCircuitWarning(UserWarning):
    """The circuit recovers less than half of the metric: it is not a sparse explanation."""


@dataclass
class SweepPoint(AblationRatios):
    """One circuit size of :func:`faithfulness_sweep`. ``row["faithfulness"]`` etc. still work, with a
    ``DeprecationWarning``.

    The six ratios are those of :class:`~relp_lens.circuits.circuit.AblationRatios`.

    Attributes:
        n_nodes: the circuit's size.
        k: the top-k selection's k (``None`` for a threshold).
        tau: the threshold τ (``None`` for top-k).
        basis: the attribution's basis.
        method: the attribution's method.
        ablation: how nodes were removed.
        n_errors: how many of the nodes are dictionary error nodes (``None`` for other bases).
        rank: how top-k ranked the nodes (``"abs"`` or ``"signed"``).
    """

    n_nodes: int
    k: int | None = None
    tau: float | None = None
    basis: str | None = None
    method: str | None = None
    ablation: AblationKind | None = None
    n_errors: int | None = None
    rank: Rank = "abs"

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict (the form :func:`faithfulness_sweep` returned before).

        Returns:
            The ratios, ``k`` or ``tau``, ``n_nodes``, ``basis``, ``method``, ``ablation``.
        """
        d = {k: getattr(self, k) for k in RATIOS}
        d.update({k: getattr(self, k) for k in ("k", "tau") if getattr(self, k) is not None})
        d.update(n_nodes=self.n_nodes, basis=self.basis, method=self.method, ablation=self.ablation)
        if self.n_errors is not None:
            d["n_errors"] = self.n_errors
        if self.rank != "abs":
            d["rank"] = self.rank
        return d


@dataclass
class CprCmd(LegacyKeys):
    """MIB's circuit-localization scores of a sweep (:func:`cpr_cmd`). ``scores["cpr"]`` still works, with a
    ``DeprecationWarning``.

    Attributes:
        cpr: circuit performance ratio, ∫₀¹ f(k) dk (higher is better).
        cmd: circuit–model distance, ∫₀¹ |1 − f(k)| dk (lower is better).
        n_points: the measured sizes on the curve.
    """

    cpr: float
    cmd: float
    n_points: int

    def to_dict(self) -> dict[str, Any]:
        """The scores as a dict (the form :func:`cpr_cmd` returned before).

        Returns:
            ``{"cpr", "cmd", "n_points"}``.
        """
        return dict(cpr=self.cpr, cmd=self.cmd, n_points=self.n_points)


def _as_dict(row: Any) -> dict:
    """A result row as a dict: a dict as is, a result dataclass by its ``to_dict()``."""
    return row if isinstance(row, dict) else row.to_dict()


@dataclass
class Ablation:
    """Evaluation prompts tokenized once, with what each ablated node becomes."""

    model: HookedTransformer
    hook_names: list[str]
    metric_fn: MetricFn
    batches: list
    prompts: Prompts
    mode: str  # mean | zero | counterfactual
    alignment: Alignment
    means: list[torch.Tensor] | None  # per hook [column, node] (mode "mean")
    patch_acts: dict[int, list[torch.Tensor]] | None  # batch number → per hook [batch, pos, node]
    n_prompts: int
    width: int  # elements per position of each hook
    prepend_bos: bool = True  # the prompts start with BOS
    latents: list[int | None] | None = None  # per hook: d_sae of a spliced dictionary (latents, then one error node)

    def __post_init__(self) -> None:
        if self.latents is None:
            self.latents = [splice.n_latents(self.model, h) for h in self.hook_names]

    @classmethod
    def build(cls, model: HookedTransformer, hook_names: Sequence[str], prompts, metric: Metric | MetricFn | None = None,
              batch_size: int = 16, mode: AblationKind = "mean", prepend_bos: bool | None = None) -> "Ablation":
        """Tokenize ``prompts`` (with BOS or not as ``prepend_bos``; None: the model's default) and prepare
        what ablated nodes of ``hook_names`` become under ``mode``."""
        if mode not in ABLATIONS:
            raise RelPLensError(f"unknown ablation {mode!r}; choose from {list(ABLATIONS)}")
        validate.positive_int(batch_size, "batch_size")
        data = as_prompts(prompts)
        resolve_hooks(model, list(hook_names))  # unknown names (a dictionary not spliced in) refused by name
        if mode == "counterfactual" and not data.paired:
            raise RelPLensError("counterfactual ablation needs paired evaluation prompts (patch_prefix)")
        metric_name, metric_fn = resolve_metric(metric, data.paired and data.patch_answers is not None)
        tok = tokenize(model, data, prepend_bos)
        warn_same_answers(tok, metric_name)
        batches = make_batches(tok, batch_size)
        check_metric(model, metric_fn, batches[0])  # before the passes over all the prompts
        alignment = tok.alignment
        means = patch_acts = None
        names = list(hook_names)
        if mode == "mean":
            means, _ = _mean_acts(model, batches, names, alignment, patch=data.paired)
            width = means[0].shape[-1]
        else:
            _, cache = backends.capture(model, batches[0].clean_tokens[:1], names[:1])
            width = cache[names[0]].reshape(1, cache[names[0]].shape[1], -1).shape[-1]
        if mode == "counterfactual":
            patch_acts = {}
            for j, b in dp.shard(list(enumerate(batches))):  # only the batches this rank scores
                _, cache = backends.capture(model, b.patch_tokens, names)
                patch_acts[j] = [cache[h].reshape(*b.patch_tokens.shape, -1).cpu() for h in names]
        return cls(model, names, metric_fn, batches, data, mode, alignment, means, patch_acts, len(data), width,
                   tok.prepend_bos)

    def masks(self, keys: set[Key] | None) -> dict[int, list[torch.Tensor]] | None:
        """Per prompt length, per hook ``[pos, node]`` bool: True for circuit nodes. ``None``: the full model.

        Raises when a node's position is missing from a prompt (naming the node and the prompt).
        """
        if keys is None:
            return None
        out: dict[int, list[torch.Tensor]] = {}
        for b in self.batches:
            length = b.clean_tokens.shape[1]
            if length in out:
                continue
            n_nodes = splice.node_width(self.width, self.latents[0])
            m = [torch.zeros(length, n_nodes, dtype=torch.bool) for _ in self.hook_names]
            for layer, pos, idx in keys:
                if not 0 <= idx < n_nodes:
                    raise RelPLensError(f"node L{layer}/{idx}: index outside [0, {n_nodes})")
                if pos is None:
                    m[layer][:, idx] = True
                else:
                    t = require(pos, length, f"L{layer}/{idx}@{pos}", self.prompts.clean[b.indices[0]],
                                self.alignment.tail_start)
                    m[layer][t, idx] = True
            out[length] = [splice.unfold(x, lat, self.width) for x, lat in zip(m, self.latents)]
        return out

    def _value(self, j: int, b, layer: int) -> torch.Tensor:
        """What ablated nodes of hook ``layer`` become in batch ``j``: ``[pos, node]`` or ``[batch, pos, node]``."""
        if self.mode == "mean":
            return self.means[layer][self.alignment.columns(b.clean_tokens.shape[1])]
        if self.mode == "zero":
            return torch.zeros(())
        return self.patch_acts[j][layer]

    def score(self, keep: dict[int, list[torch.Tensor]] | None, ablate_kept: bool = False) -> float:
        """Mean metric with nodes outside ``keep`` (or, with ``ablate_kept``, inside it) ablated."""
        total = 0.0
        mine = dp.shard(list(enumerate(self.batches)))  # data parallel: this rank's batches
        with dp.stage("ablation"):
            for j, b in mine:
                length = b.clean_tokens.shape[1]
                hooks = []
                if keep is not None:
                    for layer, name in enumerate(self.hook_names):
                        mask = keep[length][layer]
                        if ablate_kept:
                            mask = ~mask
                        value = self._value(j, b, layer)

                        def ablate(x, hook, mask=mask, value=value):
                            flat = x.reshape(x.shape[0], x.shape[1], -1)
                            return torch.where(mask.to(x.device), flat, value.to(x.device, x.dtype)).reshape(x.shape)

                        hooks.append((name, ablate))
                with torch.no_grad(), backends.hooks(self.model, fwd_hooks=hooks):
                    logits = self.model(b.clean_tokens.to(self.model.cfg.device))
                    total += evaluate_metric(self.metric_fn, logits, b).sum().item()
        return dp.all_reduce_float(total) / self.n_prompts


def __getattr__(name: str) -> Any:
    """``MeanAblation``, the name of :class:`Ablation` before zero and counterfactual ablation existed, still works
    for one release, with a DeprecationWarning.

    1. Warns and returns :class:`Ablation` for ``MeanAblation``.
    2. Raises AttributeError for any other missing name.

    Args:
        name: the attribute asked for.

    Returns:
        :class:`Ablation` for ``MeanAblation``.
    """
    if name == "MeanAblation":
        warnings.warn("relp_lens.circuits.ablation.MeanAblation is deprecated: use Ablation (mean ablation is "
                      "its default)", DeprecationWarning, stacklevel=2)
        return Ablation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _ratios(f_m: float, f_empty: float, f_c: float, f_comp: float) -> dict:
    denom = f_m - f_empty
    if abs(denom) < 1e-9:
        raise RelPLensError(f"F(M) = F(∅) = {f_m:.4g}: ablating the whole basis does not change the metric, "
                            f"so faithfulness is undefined")
    return dict(faithfulness=(f_c - f_empty) / denom, completeness=(f_comp - f_empty) / denom,
                f_model=f_m, f_empty=f_empty, f_circuit=f_c, f_complement=f_comp)


def verdict(rows: Any) -> str | None:
    """A sentence when a circuit (or every circuit of a sweep) explains little, else None.

    Also when ablating the whole basis moves the metric by less than 10% (F(M) ≈ F(∅)): the ratios
    then divide by a small, noisy difference. Faithfulness below 0.5 at every size tried means the chosen nodes
    do not carry the behaviour on these prompts — whether because the model has no sparse circuit for it or
    because the setup (data, metric, baseline, ablation) is wrong; it must not be read as a sparse circuit.

    Args:
        rows: one result (an :class:`~relp_lens.circuits.circuit.Evaluation`, a :class:`SweepPoint`, a
            :class:`~relp_lens.circuits.pruning.PruningPoint`, or their dict form) or a sequence of them.

    Returns:
        The sentence, or None.
    """
    rows = [rows] if isinstance(rows, (dict, LegacyKeys)) else list(rows)
    rows = [_as_dict(r) for r in rows]
    if not rows:
        return None
    f_m, f_0 = rows[0].get("f_model"), rows[0].get("f_empty")
    if f_m is not None and f_0 is not None and abs(f_m - f_0) < UNSTABLE * abs(f_m):
        return (f"unstable ratios: ablating every node changes the metric only from {f_m:+.3f} to {f_0:+.3f} "
                f"(less than {UNSTABLE:.0%}), so faithfulness and completeness divide by a small, noisy "
                f"difference; the metric is dominated by what the ablation keeps (e.g. a raw logit shared by "
                f"every answer of the task) — use a metric of what differs between prompts (logprob, a logit "
                f"difference) or paired data.")
    best = max(rows, key=lambda r: r["faithfulness"])
    if best["faithfulness"] >= WEAK:
        return None
    sizes = "the size tried" if len(rows) == 1 else f"every size tried (up to {max(r['n_nodes'] for r in rows)} nodes)"
    hint = (" Zero ablation moves every other neuron far from its usual values; a mean baseline with mean "
            "ablation is the other consistent choice." if best.get("ablation") == "zero" else "")
    return (f"weak circuit: faithfulness below {WEAK} at {sizes}; best {best['faithfulness']:+.2f} with "
            f"{best['n_nodes']} nodes, completeness {best['completeness']:+.2f}. These nodes do not explain the "
            f"behaviour on the held-out prompts — do not read this as a sparse circuit.{hint}")


def evaluate_circuit(model: HookedTransformer, circuit: Circuit, prompts: Prompts | Sequence[dict], *,
                     metric: Metric | MetricFn | None = None, ablation: AblationKind | None = None,
                     batch_size: int = 16, warn: bool = True, prepend_bos: bool | None = None) -> Evaluation:
    """Faithfulness and completeness of ``circuit`` on ``prompts`` (use prompts it was not built on).

    Args:
        model: the model the circuit was built on (checked: layers, widths).
        circuit: the circuit.
        prompts: evaluation prompts (a :class:`Prompts` or JSONL-style rows).
        metric: default the circuit's own.
        ablation: ``mean`` | ``zero`` | ``counterfactual`` (default: the circuit's own, consistent with its
            attribution baseline).
        batch_size: examples per forward pass.
        warn: issue the ``verdict`` as a :class:`WeakCircuitWarning`.
        prepend_bos: start every prompt with BOS (True) or not (False); None (default): as the circuit's
            attribution did (:attr:`Circuit.prepend_bos`; True for files that do not record it), so node
            positions mean the same tokens.

    Returns:
        An :class:`~relp_lens.circuits.circuit.Evaluation`: faithfulness, completeness, f_model, f_empty,
        f_circuit, f_complement, n_nodes, n_prompts, ablation, prepend_bos, and a ``verdict`` sentence when the
        circuit explains little (store it as ``circuit.evaluation``; ``ev["faithfulness"]`` still works, with a
        ``DeprecationWarning``).
    """
    circuit.check_model(model)
    if not circuit.nodes:
        raise RelPLensError("the circuit is empty: nothing to evaluate")
    metric = metric if metric is not None else circuit.metric
    mode = ablation or circuit.ablation
    bos = circuit.prepend_bos if prepend_bos is None else prepend_bos
    abl = Ablation.build(model, circuit.hook_names, prompts, metric, batch_size, mode, bos)
    keep = abl.masks(circuit.keys)
    result = _ratios(abl.score(None), abl.score(abl.masks(set())), abl.score(keep), abl.score(keep, ablate_kept=True))
    result = Evaluation(**result, n_nodes=len(circuit), n_prompts=abl.n_prompts, ablation=mode,
                        prepend_bos=abl.prepend_bos)
    note = verdict(result)
    if note:
        result.verdict = note
        if warn:
            warnings.warn(note, WeakCircuitWarning, stacklevel=2)
    return result


def faithfulness_sweep(model: HookedTransformer, attr: Attribution, prompts: Prompts | Sequence[dict], *,
                       sizes: Sequence[int] | None = None, taus: Sequence[float] | None = None,
                       aggregate_pos: bool = False, metric: Metric | MetricFn | None = None,
                       ablation: AblationKind | None = None, include_fixed: bool | None = None,
                       exclude_neurons: Sequence[tuple[int, int]] | None = None,
                       batch_size: int = 16, progress: bool = True,
                       prepend_bos: bool | None = None, rank: Rank = "abs") -> list[SweepPoint]:
    """Faithfulness/completeness against circuit size: top-k for each k in ``sizes``, or τ in ``taus``.

    Selection and ablation as :func:`relp_lens.circuits.selection.select_top_k` and :func:`evaluate_circuit`
    (default ablation: consistent with the attribution's baseline).

    Args:
        model: the model the attribution was computed on.
        attr: the attribution to select from.
        prompts: held-out evaluation prompts.
        sizes: the k of each top-k circuit (give this or ``taus``).
        taus: the τ of each threshold circuit.
        aggregate_pos: as in :func:`~relp_lens.circuits.selection.select_top_k`.
        ablation: as in :func:`~relp_lens.circuits.selection.select_top_k`.
        include_fixed: as in :func:`~relp_lens.circuits.selection.select_top_k`.
        exclude_neurons: as in :func:`~relp_lens.circuits.selection.select_top_k`.
        metric: default the attribution's own.
        batch_size: prompts per forward pass.
        progress: show a progress bar.
        prepend_bos: default the attribution's own (:attr:`~relp_lens.core.attribution.Attribution.prepend_bos`).
        rank: top-k by ``"abs"`` |score| (default) or ``"signed"`` score (as
            :func:`~relp_lens.circuits.selection.select_top_k`); sizes only.

    Returns:
        One :class:`SweepPoint` per size (``to_dict()``: the dict rows this returned before); on dictionary
        features, ``n_errors`` counts the error nodes among the ``n_nodes`` (they count as nodes).
    """
    if (sizes is None) == (taus is None):
        raise RelPLensError("give exactly one of sizes= (top-k) or taus= (thresholds)")
    if rank not in RANKS:
        raise RelPLensError(f"unknown rank {rank!r}; choose from {list(RANKS)}")
    if rank != "abs" and taus is not None:
        raise RelPLensError("rank='signed' ranks top-k circuits: give sizes=, not taus=")
    if sizes is not None:
        sizes = validate.int_list(sizes, "sizes")
    else:
        taus = validate.float_list(taus, "taus", low=0.0)
    metric = metric if metric is not None else attr.metric
    mode = ablation or consistent_ablation(attr.baseline)
    bos = attr.prepend_bos if prepend_bos is None else prepend_bos
    abl = Ablation.build(model, attr.hook_names, prompts, metric, batch_size, mode, bos)
    f_m, f_empty = abl.score(None), abl.score(abl.masks(set()))
    grid = [("k", k) for k in sizes] if sizes is not None else [("tau", t) for t in taus]
    rows = []
    opts = dict(aggregate_pos=aggregate_pos, ablation=mode, include_fixed=include_fixed,
                exclude_neurons=exclude_neurons)
    for kind, value in tqdm(grid, desc="ablation sweep", disable=not progress, leave=False):
        circuit = (select_top_k(attr, model, value, **opts, rank=rank) if kind == "k"
                   else select_threshold(attr, model, value, **opts))
        keep = abl.masks(circuit.keys)
        r = _ratios(f_m, f_empty, abl.score(keep), abl.score(keep, ablate_kept=True))
        errors = (sum(circuit.is_error(n) for n in circuit.nodes)
                  if any(h.endswith(SAE_NODES) for h in circuit.hook_names) else None)
        rows.append(SweepPoint(**r, **{kind: value}, n_nodes=len(circuit), basis=attr.basis, method=attr.method,
                               ablation=mode, n_errors=errors, rank=rank))
    return rows


def _area_abs(xs: Sequence[float], ys: Sequence[float]) -> float:
    """∫|y| dx of the piecewise-linear curve through (xs, ys), exact (segments split where y crosses 0)."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 * y1 < 0:  # crosses zero at xc: two triangles
            xc = x0 + (x1 - x0) * y0 / (y0 - y1)
            area += 0.5 * (abs(y0) * (xc - x0) + abs(y1) * (x1 - xc))
        else:
            area += 0.5 * (abs(y0) + abs(y1)) * (x1 - x0)
    return area


def cpr_cmd(rows: Sequence[Any], n_total: int, *, key: str = "n_nodes") -> CprCmd:
    """MIB's circuit-localization summary scores of a faithfulness sweep (rows of :func:`faithfulness_sweep`).

    With ``k`` = circuit size / ``n_total`` (the share of all candidate nodes, or of edges with
    ``key="n_edges"``) and ``f(k)`` its faithfulness, on the piecewise-linear curve through the measured points
    plus, where not measured, ``f(0) = 0`` (the empty circuit) and ``f(1) = 1`` (the whole model), both by
    definition of faithfulness (when ``n_total`` counts one circuit's edges, measure ``f(1)``: it is that
    circuit's faithfulness, not 1):

    - **CPR** (circuit performance ratio) = ∫₀¹ f(k) dk — higher is better;
    - **CMD** (circuit–model distance) = ∫₀¹ |1 − f(k)| dk — lower is better (0: the circuit matches the model
      at every size).

    Points at the same size are averaged.

    Args:
        rows: the sweep (:class:`SweepPoint` or :class:`~relp_lens.circuits.pruning.PruningPoint` rows, or dicts
            with ``key`` and ``faithfulness``).
        n_total: all candidate nodes (or edges).
        key: the size field, ``"n_nodes"`` or ``"n_edges"``.

    Returns:
        A :class:`CprCmd` (``cpr``, ``cmd``, ``n_points``).
    """
    validate.positive_int(n_total, "n_total")
    by_k: dict[float, list[float]] = {}
    for r in map(_as_dict, rows):
        k = r[key] / n_total
        if not 0 <= k <= 1:
            raise RelPLensError(f"a circuit of {r[key]} out of {n_total} is outside [0, 1]")
        f = float(r["faithfulness"])
        if f != f:  # NaN: an unstable ratio (F(M) = F(∅)) has no place on the curve
            raise RelPLensError(f"faithfulness is NaN at {key}={r[key]}; CPR/CMD are undefined")
        by_k.setdefault(k, []).append(f)
    n_points = len(by_k)
    by_k.setdefault(0.0, [0.0])  # measured ends win: with n_total the edges of one circuit, f(1) is measured
    by_k.setdefault(1.0, [1.0])
    xs = sorted(by_k)
    fs = [sum(by_k[x]) / len(by_k[x]) for x in xs]
    cpr = sum(0.5 * (f0 + f1) * (x1 - x0) for x0, x1, f0, f1 in zip(xs, xs[1:], fs, fs[1:]))
    return CprCmd(cpr=cpr, cmd=_area_abs(xs, [1 - f for f in fs]), n_points=n_points)
