"""Judging circuits by mean ablation: faithfulness and completeness (Marks et al. 2025; Arora et al. 2026).

1. Tokenize the evaluation prompts (held out from the circuit's own prompts) and group them by length.
2. For every hook of the circuit's basis, take the mean activation per position over the patch
   (corrupted) prompts of each length — over the clean prompts for unpaired data.
3. Run the model four ways, each hook's nodes either kept or replaced by their mean:
   M (nothing ablated), C (everything outside the circuit ablated), M\\C (the circuit ablated),
   ∅ (every node of the basis ablated); F(·) is the mean metric over the prompts.
4. faithfulness = (F(C) − F(∅)) / (F(M) − F(∅)); completeness = (F(M\\C) − F(∅)) / (F(M) − F(∅)).

A sweep reuses F(M) and F(∅) and runs C and M\\C once per circuit size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from relp_lens.attribution import Attribution, as_prompts
from relp_lens.circuit import Circuit, select_threshold, select_top_k
from relp_lens.data import Prompts, make_batches, tokenize
from relp_lens.errors import RelPLensError
from relp_lens.metrics import MetricFn, evaluate_metric, resolve_metric

Key = tuple[int, int | None, int]


@dataclass
class MeanAblation:
    """Evaluation prompts tokenized once, with per-length mean activations of every hook of a basis."""

    model: HookedTransformer
    hook_names: list[str]
    metric_fn: MetricFn
    batches: list
    means: dict[int, list[torch.Tensor]]  # length → per hook [pos, node]
    n_prompts: int
    max_len: int

    @classmethod
    def build(cls, model: HookedTransformer, hook_names: Sequence[str], prompts, metric: str | MetricFn | None = None,
              batch_size: int = 16) -> "MeanAblation":
        data = as_prompts(prompts)
        for name in hook_names:
            if name not in model.hook_dict:
                raise RelPLensError(f"model has no hook {name!r}")
        _, metric_fn = resolve_metric(metric, data.paired and data.patch_answers is not None)
        tok = tokenize(model, data)
        batches = make_batches(tok, batch_size)
        sums: dict[int, list[torch.Tensor]] = {}
        counts: dict[int, int] = {}
        names = set(hook_names)
        for b in batches:
            src = b.patch_tokens if b.patch_tokens is not None else b.clean_tokens
            with torch.no_grad():
                _, cache = model.run_with_cache(src.to(model.cfg.device), names_filter=lambda n: n in names)
            acts = [cache[h].reshape(*src.shape, -1).sum(0).cpu() for h in hook_names]
            length = src.shape[1]
            sums[length] = acts if length not in sums else [s + a for s, a in zip(sums[length], acts)]
            counts[length] = counts.get(length, 0) + len(b)
        means = {length: [s / counts[length] for s in acts] for length, acts in sums.items()}
        return cls(model, list(hook_names), metric_fn, batches, means, len(data), max(tok.lengths))

    def masks(self, keys: set[Key] | None) -> list[torch.Tensor] | None:
        """Per hook ``[max_len, node]`` bool: True for circuit nodes. ``None`` keys: the full model."""
        if keys is None:
            return None
        width = self.means[next(iter(self.means))][0].shape[-1]
        out = [torch.zeros(self.max_len, width, dtype=torch.bool) for _ in self.hook_names]
        for layer, pos, idx in keys:
            if pos is None:
                out[layer][:, idx] = True
            elif pos < self.max_len:
                out[layer][pos, idx] = True
        return out

    def score(self, keep: list[torch.Tensor] | None, ablate_kept: bool = False) -> float:
        """Mean metric with nodes outside ``keep`` (or, with ``ablate_kept``, inside it) set to their mean."""
        total = 0.0
        for b in self.batches:
            length = b.clean_tokens.shape[1]
            hooks = []
            if keep is not None:
                for layer, name in enumerate(self.hook_names):
                    mask = keep[layer][:length]
                    if ablate_kept:
                        mask = ~mask
                    mean = self.means[length][layer]

                    def ablate(x, hook, mask=mask, mean=mean):
                        flat = x.reshape(x.shape[0], x.shape[1], -1)
                        m = mask.to(x.device)
                        return torch.where(m, flat, mean.to(x.device, x.dtype)).reshape(x.shape)

                    hooks.append((name, ablate))
            with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
                logits = self.model(b.clean_tokens.to(self.model.cfg.device))
                total += evaluate_metric(self.metric_fn, logits, b).sum().item()
        return total / self.n_prompts


def _ratios(f_m: float, f_empty: float, f_c: float, f_comp: float) -> dict:
    denom = f_m - f_empty
    if abs(denom) < 1e-9:
        raise RelPLensError(f"F(M) = F(∅) = {f_m:.4g}: ablating the whole basis does not change the metric, "
                            f"so faithfulness is undefined")
    return dict(faithfulness=(f_c - f_empty) / denom, completeness=(f_comp - f_empty) / denom,
                f_model=f_m, f_empty=f_empty, f_circuit=f_c, f_complement=f_comp)


def evaluate_circuit(model: HookedTransformer, circuit: Circuit, prompts: Prompts | Sequence[dict], *,
                     metric: str | MetricFn | None = None, batch_size: int = 16) -> dict:
    """Faithfulness and completeness of ``circuit`` on ``prompts`` (use prompts it was not built on)."""
    circuit.check_model(model)
    if not circuit.nodes:
        raise RelPLensError("the circuit is empty: nothing to evaluate")
    metric = metric if metric is not None else circuit.metric
    abl = MeanAblation.build(model, circuit.hook_names, prompts, metric, batch_size)
    keep = abl.masks(circuit.keys)
    result = _ratios(abl.score(None), abl.score(abl.masks(set())), abl.score(keep), abl.score(keep, ablate_kept=True))
    return dict(result, n_nodes=len(circuit), n_prompts=abl.n_prompts)


def faithfulness_sweep(model: HookedTransformer, attr: Attribution, prompts: Prompts | Sequence[dict], *,
                       sizes: Sequence[int] | None = None, taus: Sequence[float] | None = None,
                       aggregate_pos: bool = False, metric: str | MetricFn | None = None,
                       batch_size: int = 16, progress: bool = True) -> list[dict]:
    """Faithfulness/completeness against circuit size: top-k for each k in ``sizes``, or τ in ``taus``."""
    if (sizes is None) == (taus is None):
        raise RelPLensError("give exactly one of sizes= (top-k) or taus= (thresholds)")
    metric = metric if metric is not None else attr.metric
    abl = MeanAblation.build(model, attr.hook_names, prompts, metric, batch_size)
    f_m, f_empty = abl.score(None), abl.score(abl.masks(set()))
    grid = [("k", k) for k in sizes] if sizes is not None else [("tau", t) for t in taus]
    rows = []
    for kind, value in tqdm(grid, desc="ablation sweep", disable=not progress, leave=False):
        circuit = (select_top_k(attr, model, value, aggregate_pos=aggregate_pos) if kind == "k"
                   else select_threshold(attr, model, value, aggregate_pos=aggregate_pos))
        keep = abl.masks(circuit.keys)
        r = _ratios(f_m, f_empty, abl.score(keep), abl.score(keep, ablate_kept=True))
        rows.append(dict(r, **{kind: value}, n_nodes=len(circuit), basis=attr.basis, method=attr.method))
    return rows
