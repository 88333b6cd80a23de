"""Neuron cards: what one MLP neuron writes, and when it fires.

For neuron ``index`` of layer ``layer`` (``blocks.{layer}.mlp.hook_post``):

1. Output direction read through the unembedding: ``(W_out[index] ⊙ w_final) @ W_U`` — the logit change per
   unit of activation, ignoring the final norm's per-position scale (``w_final``: the final norm's weight,
   1 for models without one) — top promoted and suppressed tokens.
2. Activation on task prompts: the neuron's value at each prompt's last position and its maximum.
3. Top-activating contexts, the activating token marked ``⟦like this⟧``: the ``k`` (text, token) pairs with the
   highest activation and the ``k`` most negative ones (gated MLP activations are signed: a neuron can matter
   through either end). Over ``corpus``:
   - ``"sotu"``: ~1.2 MB of real English (State of the Union addresses, :mod:`relp_lens.analysis.corpus`), read once
     for every neuron of the model and cached — later cards, in any process, are instant;
   - a :class:`~relp_lens.analysis.corpus.ContextIndex` you built;
   - a list of texts (each read as a whole, token by token, tokenized as the model does: after BOS when
     ``model.cfg.default_prepend_bos`` says so — the BOS position is never a context);
   - ``None``: :data:`CORPUS`, 40 sentences written for this package (fast; for tests and quick looks).
4. A one-line description from 1 and 3 (:func:`describe`): the tokens it fires on most often among its top
   contexts, the tokens it writes, and the tokens of its most negative contexts.

Dictionary latents get the same cards (:func:`feature_cards`): their decoder row as the output direction,
their activation read at SAELens' ``….hook_sae_acts_post`` inside the splice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from relp_lens.core import backends, nodes
from relp_lens.core import validate
from relp_lens.core.data import resolve_prepend_bos, str_tokens_of
from relp_lens.core.errors import RelPLensError
from relp_lens.core.nodes import mlp_post

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

CORPUS = [
    "The keys to the cabinet are on the table.", "The key to the cabinets is on the table.",
    "The teachers near the desk were talking about the exam.", "The teacher near the desks was tired.",
    "The athlete that the managers like is very fast.", "The athletes that the manager likes are very fast.",
    "My parents live in a small house near the river.", "Her brother has three dogs and a cat.",
    "The children were playing in the garden all afternoon.", "A child was reading a book under the tree.",
    "Dallas is a large city in Texas, and the capital of Texas is Austin.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Seattle is in Washington; its capital is Olympia.", "We drove from Chicago to Springfield in Illinois.",
    "36 + 59 = 95, and 12 + 30 = 42.", "What is 7 times 8? It is 56.", "The price rose from 120 to 145 dollars.",
    "The opposite of big is small, and the opposite of hot is cold.", "Le contraire de grand est petit.",
    "Lo contrario de grande es pequeño.", "Das Gegenteil von groß ist klein.",
    "def add(a, b):\n    return a + b", "for i in range(10):\n    print(i)", "import numpy as np",
    "The weather today is sunny with a light breeze.", "It rained heavily during the night.",
    "She said that the doctors were already at the hospital.", "The doctor who treats the patients is kind.",
    "Scientists have discovered a new species of frog.", "The committee has approved the new budget.",
    "Once upon a time, there was a princess who lived in a castle.", "The dogs bark at the mailman every morning.",
    "A dog barks at the cars that pass by.", "The students in the back of the room are sleeping.",
    "The student in the front row is taking notes.", "The pilots flying the plane were experienced.",
    "Water boils at 100 degrees Celsius.", "The sun rises in the east and sets in the west.",
    "He has been working here since 2019.", "They have finished their homework.",
]


@dataclass
class NeuronCard:
    layer: int
    index: int
    promoted: list[tuple[str, float]]  # tokens whose logits the neuron raises most, per unit activation
    suppressed: list[tuple[str, float]]
    task_activations: list[tuple[str, float]] = field(default_factory=list)  # (prompt, last-position value)
    top_contexts: list[tuple[str, float]] = field(default_factory=list)  # ("text up to ⟦token⟧", value)
    bottom_contexts: list[tuple[str, float]] = field(default_factory=list)  # most negative first
    description: str = ""  # one line (describe())
    corpus: str = "package sentences"
    name: str = ""  # how the card is titled: "neuron L3/12" (default), "latent L10/f12" for a dictionary latent

    def summary(self) -> str:
        title = self.name or f"neuron L{self.layer}/{self.index}"
        lines = [title + (f": {self.description}" if self.description else ""),
                 "  promotes:   " + ", ".join(f"{t!r} {v:+.2f}" for t, v in self.promoted),
                 "  suppresses: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in self.suppressed)]
        if self.task_activations:
            vals = [v for _, v in self.task_activations]
            lines.append(f"  on {len(vals)} task prompts (last position): mean {sum(vals) / len(vals):+.3f}, "
                         f"max {max(vals):+.3f}")
        for text, v in self.top_contexts:
            lines.append(f"  {v:+.3f}  …{text[-60:]!r}")
        if self.bottom_contexts:
            lines.append("  most negative:")
            for text, v in self.bottom_contexts:
                lines.append(f"  {v:+.3f}  …{text[-60:]!r}")
        return "\n".join(lines)


MARK = "⟦{}⟧"


def _token_of(context: str) -> str | None:
    """The marked token of a context string."""
    start = context.rfind("⟦")
    return context[start + 1:-1] if start >= 0 and context.endswith("⟧") else None


def describe(card: NeuronCard, n: int = 2) -> str:
    """One line: the tokens a neuron fires on most among its top contexts (with how many of them), what it
    writes (promoted tokens), and what its most negative contexts share."""
    def common(contexts):
        counts: dict[str, int] = {}
        for text, _ in contexts:
            t = _token_of(text)
            if t is not None:
                counts[t] = counts.get(t, 0) + 1
        top = sorted(counts, key=lambda t: -counts[t])[:n]
        return ", ".join(f"{t!r} ({counts[t]}/{len(contexts)})" for t in top)

    parts = []
    if card.top_contexts:
        parts.append(f"fires on {common(card.top_contexts)}")
    if card.promoted:
        parts.append("writes " + ", ".join(repr(t) for t, _ in card.promoted[:3]))
    if card.bottom_contexts:
        parts.append(f"negative on {common(card.bottom_contexts)}")
    return "; ".join(parts)


def neuron_card(model: HookedTransformer, layer: int, index: int, *, prompts: Sequence[str] = (),
                corpus=None, k: int = 8) -> NeuronCard:
    """The card of neuron ``index`` in layer ``layer`` (see the module docstring)."""
    return neuron_cards(model, [(layer, index)], prompts=prompts, corpus=corpus, k=k, progress=False)[0]


def _latent_units(model: HookedTransformer, latents: Sequence[tuple[str, int]]) -> list[tuple[str, int, Any]]:
    """``(hook_sae_acts_post hook, index, dictionary)`` of each ``(node hook, index)`` latent of a spliced
    dictionary, checked."""
    from relp_lens.core import splice

    units = []
    for hook, index in latents:
        d = splice.dictionary_at(model, hook)
        if d is None:
            raise RelPLensError(f"{hook!r} is not the node hook of a dictionary spliced into this model: cards of "
                                f"latents are read inside relp_lens.splice(model, dictionaries)")
        if not (validate.is_int(index) and 0 <= index < d.d_sae):
            raise RelPLensError(f"latent index {index!r} outside [0, {d.d_sae}) at {hook!r} (the error node, "
                                f"index {d.d_sae}, has no card)")
        units.append((nodes.sae_hook(d.hook_out, "hook_sae_acts_post"), int(index), d))
    return units


def feature_cards(model: HookedTransformer, latents: Sequence[tuple[str, int]], *, prompts: Sequence[str] = (),
                  corpus: Sequence[str] | None = None, k: int = 8, progress: bool = True) -> list[NeuronCard]:
    """Cards of dictionary latents, as :func:`neuron_cards` makes them for neurons; call inside
    ``relp_lens.splice(model, dictionaries)``.

    1. Output direction: the latent's decoder row ``W_dec[index]`` (what it writes into the dictionary's
       ``hook_out``) through the final norm's weight and the unembedding.
    2. Activations read at ``{hook_out}.hook_sae_acts_post`` (SAELens' name): on ``prompts`` (last position)
       and over ``corpus``: the package sentences (``None``) or texts you pass. The cached per-neuron context
       index (``"sotu"``) covers neurons only; pass its texts
       (``relp_lens.analysis.corpus.corpus_texts("sotu")``) to read latents over it.

    Args:
        model: the model, with the dictionaries spliced in.
        latents: ``(node hook, index)`` pairs: the ``….hook_sae_nodes`` hook of a circuit's layer
            (``circuit.hook_names[node.layer]``) and the latent's index (``< d_sae``).
        prompts: prompts whose last position's activation the card shows.
        corpus: ``None`` (the package sentences) or texts to read top contexts from.
        k: contexts kept (top and most negative), and tokens listed.
        progress: show a progress bar.

    Returns:
        One card per latent (``card.name`` ``"latent L10/f12"``; ``card.layer`` the block).
    """
    if isinstance(corpus, str) or not (corpus is None or isinstance(corpus, Sequence)):
        raise RelPLensError(f"feature cards read contexts from texts (corpus=[...]) or the package sentences "
                            f"(corpus=None); got {corpus!r} (the cached context index covers neurons only)")
    if not latents:
        raise RelPLensError("no latents given: pass (node hook, index) pairs, e.g. "
                            "[(circuit.hook_names[n.layer], n.index) for n in circuit.nodes if not circuit.is_error(n)]")
    units = _latent_units(model, latents)
    blocks = [nodes.layer_numbers([h])[0] for h, _ in latents]  # the node hook's block
    return _cards(model, [(h, i) for h, i, _ in units], [d.W_dec[i] for _, i, d in units],
                  [f"latent L{b}/f{i}" for (_, i, _), b in zip(units, blocks)], blocks,
                  prompts=prompts, corpus=corpus, k=k, progress=progress)


def neuron_cards(model: HookedTransformer, neurons: Sequence[tuple[int, int]], *, prompts: Sequence[str] = (),
                 corpus=None, k: int = 8, progress: bool = True) -> list[NeuronCard]:
    """Cards of several ``(layer, index)`` neurons; each prompt and corpus text is run once for all of them
    (``corpus``: see the module docstring, step 3)."""
    neurons = [(int(layer), int(index)) for layer, index in neurons]
    for layer, index in neurons:
        if not 0 <= layer < model.cfg.n_layers:
            raise RelPLensError(f"layer {layer} outside [0, {model.cfg.n_layers})")
        if model.cfg.d_mlp is None or not 0 <= index < model.cfg.d_mlp:
            raise RelPLensError(f"neuron index {index} outside [0, {model.cfg.d_mlp})")
        if mlp_post(layer) not in model.hook_dict:
            raise RelPLensError(f"model has no MLP neuron hook {mlp_post(layer)!r}")
    with torch.no_grad():
        directions = [backends.W_out(model, layer)[index] for layer, index in neurons]
    return _cards(model, [(mlp_post(layer), index) for layer, index in neurons], directions, [""] * len(neurons),
                  [layer for layer, _ in neurons], prompts=prompts, corpus=corpus, k=k, progress=progress,
                  neurons=neurons)


def _cards(model: HookedTransformer, units: list[tuple[str, int]], directions: list[torch.Tensor], names: list[str],
           layers: list[int], *, prompts: Sequence[str], corpus, k: int, progress: bool,
           neurons: list[tuple[int, int]] | None = None) -> list[NeuronCard]:
    """The cards of ``units`` (``(hook, index)``: the value read) writing ``directions`` (``[d_model]`` each);
    ``neurons`` (``(layer, index)``) where the units are MLP neurons, whose contexts a context index may hold."""
    from relp_lens.analysis.corpus import ContextIndex, context_index, model_key

    hooks = sorted({hook for hook, _ in units})

    first = 1 if resolve_prepend_bos(model) else 0  # the first real token (after BOS, where there is one)

    def acts(text: str) -> tuple[torch.Tensor, list[str]]:
        tokens = model.to_tokens(text, prepend_bos=bool(first))
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in hooks)
        values = torch.stack([cache[hook][0, :, index].cpu()  # layers may sit on several devices
                              for hook, index in units])
        return values.float().cpu(), str_tokens_of(model, tokens[0])  # [unit, pos], tokens

    task = [acts(p)[0][:, -1].tolist() for p in prompts]  # [prompt][neuron], last position
    found: list[list[tuple[str, float]]] = [[] for _ in units]
    ctx = corpus if isinstance(corpus, ContextIndex) else None
    if isinstance(corpus, str):
        ctx = context_index(model, corpus, k=max(k, 8), progress=progress)
    elif ctx is not None and ctx.model_key != model_key(model):
        raise RelPLensError("this context index was built with another model (its activations differ); build it "
                            "with relp_lens.analysis.corpus.context_index(model, ...)")
    if ctx is not None:
        if neurons is None:
            raise RelPLensError("a context index holds neurons' contexts only")
        if len(ctx.hook_names) != model.cfg.n_layers or ctx.top_values.shape[-1] != model.cfg.d_mlp:
            raise RelPLensError("this context index was built for a model of another shape")
        if k > ctx.top_values.shape[0]:
            raise RelPLensError(f"the context index keeps {ctx.top_values.shape[0]} contexts per neuron; k={k}")
        for j, (layer, idx) in enumerate(neurons):
            for negative in (False, True):
                found[j] += [(prefix + MARK.format(tok), v)
                             for prefix, tok, v in ctx.contexts(model, layer, idx, negative=negative, k=k)]
    texts = [] if ctx is not None else CORPUS if corpus is None else corpus
    for text in tqdm(texts, desc=f"cards of {len(units)} units", disable=not progress, leave=False):
        a, toks = acts(text)
        for pos in range(first, len(toks)):  # skip the BOS position, where there is one
            context = "".join(toks[first: pos]) + MARK.format(toks[pos])
            for j in range(len(units)):
                found[j].append((context, float(a[j, pos])))
    cards = []
    with torch.no_grad():
        w_final = backends.final_norm_weight(model)
        for j, ((_, index), layer) in enumerate(zip(units, layers)):
            w_u = backends.W_U(model)
            direction = directions[j].to(w_u.device, w_u.dtype)  # [d_model]
            if w_final is not None:
                direction = direction * w_final.to(w_u.device)
            logits = direction @ w_u  # [d_vocab]
            top, bottom = logits.topk(k), (-logits).topk(k)
            promoted = [(model.to_string(int(i)), float(v)) for v, i in zip(top.values, top.indices)]
            suppressed = [(model.to_string(int(i)), -float(v)) for v, i in zip(bottom.values, bottom.indices)]
            ranked = sorted(found[j], key=lambda t: -t[1])
            bottom = [c for c in ranked[::-1][:k] if c[1] < 0]
            card = NeuronCard(layer, index, promoted, suppressed, [(p, vals[j]) for p, vals in zip(prompts, task)],
                              [c for c in ranked[:k] if ctx is None or c[1] > 0], bottom,
                              corpus=("package sentences" if corpus is None else
                                      f"{ctx.corpus}, {ctx.n_bytes / 1e6:.2f} MB" if ctx is not None
                                      else f"{len(texts)} texts"), name=names[j])
            card.description = describe(card)
            cards.append(card)
    return cards


def always_on_neurons(model: HookedTransformer, texts: Sequence[str] | None = None, *, quantile: float = 0.99,
                      min_fraction: float = 0.9, layers: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Neurons with a large activation on nearly every token: ``(layer, index)`` pairs.

    "Large" is |activation| above the ``quantile`` of |activation| over all neurons and tokens of that
    layer (BOS excluded); a neuron is always on when it is large on at least ``min_fraction`` of the tokens
    of ``texts`` (default: the package corpus). Such neurons (the paper keeps a blacklist of them) carry
    position or bias-like signals rather than a behaviour, so selection can leave them out
    (``exclude_neurons=`` of :func:`relp_lens.circuits.selection.select_top_k`).
    """
    backends.require_model(model)
    validate.finite_float(quantile, "quantile", low=0.0, high=1.0, low_open=True, high_open=True)
    validate.fraction(min_fraction, "min_fraction")
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(l) for l in layers]
    hooks = {mlp_post(l): l for l in layers}
    missing = [h for h in hooks if h not in model.hook_dict]
    if missing:
        raise RelPLensError(f"model has no MLP neuron hook {missing[0]!r}")
    acts: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    first = 1 if resolve_prepend_bos(model) else 0  # BOS, where the model prepends it, is left out
    for text in CORPUS if texts is None else texts:
        with torch.no_grad():
            _, cache = model.run_with_cache(model.to_tokens(text, prepend_bos=bool(first)),
                                            names_filter=lambda n: n in hooks)
        for name, l in hooks.items():
            acts[l].append(cache[name][0, first:].abs().float().cpu())  # [pos, d_mlp], BOS excluded
    out = []
    for l in layers:
        a = torch.cat(acts[l])  # [tokens, d_mlp]
        if a.shape[0] == 0:
            raise RelPLensError("the texts have no tokens besides BOS")
        sample = a.flatten()
        if sample.numel() > 4_000_000:  # torch.quantile's limit; a strided sample estimates it well
            sample = sample[:: sample.numel() // 4_000_000 + 1]
        large = a > torch.quantile(sample, quantile)
        out += [(l, int(i)) for i in (large.float().mean(0) >= min_fraction).nonzero()[:, 0].tolist()]
    return out
