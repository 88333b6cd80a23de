"""Dictionaries as a node basis: SAEs and transcoders spliced into a model, latents plus one error node.

Inside ``with splice(model, dictionaries):`` every dictionary ``D`` (read at ``D.hook_in``, reconstructing
``D.hook_out``) replaces the value ``y`` of ``hook_out`` by

    ``y' = decode(f, x) + e``,  ``f = encode(x)``,  ``e = (y − decode(encode(x), x))`` computed without gradient,

so the forward pass is the model's own (``y' = y`` up to rounding) while the backward pass runs through the
dictionary: the latents ``f`` carry the gradient upstream through the encoder, and the error ``e`` has
outgoing effects only (it is a leaf for the backward pass, recomputed from the current input in every forward
pass, as SAELens' error term is). The encoder's gate (ReLU, JumpReLU, TopK) passes the gradient of the
latents it keeps and stops the others, which is the identity rule for it: RelP and the plain gradient agree
on the dictionary and differ only where the rest of the model has rules.

1. **Hook points**, named as SAELens names those of an SAE attached to a hook (:func:`nodes.sae_hook`):
   ``{hook_out}.hook_sae_input`` ``[batch, pos, d_in]``, ``.hook_sae_nodes`` ``[batch, pos, d_sae + d_out]``
   (the latents, then the error vector: the attribution basis), ``.hook_sae_acts_post`` ``[batch, pos,
   d_sae]``, ``.hook_sae_error`` ``[batch, pos, d_out]`` and ``.hook_sae_output`` ``[batch, pos, d_out]``.
   They are registered with :func:`relp_lens.core.backends.added_points`, so ``backends.hooks``,
   ``backends.capture`` and every relp_lens function that takes hook names reach them; they disappear on
   exit, with every hook the splice added (exception or not).
2. **Nodes.** One layer of nodes per dictionary: its ``d_sae`` latents, then **one error node** per position
   (the whole error vector). :func:`fold` turns per-element values of ``hook_sae_nodes`` into per-node
   values (an error node's score is the sum over its elements), :func:`unfold` turns per-node masks back
   into per-element ones (ablating an error node replaces the whole vector).
3. **Conservation.** The score of a ``hook_out`` element basis equals the dictionary's latents + error (+
   the decoder bias's share ``∇·b_dec`` for a zero baseline, + the skip path's share ``∇·Δ(x W_skip)`` for
   a skip transcoder), exactly: the gradient at ``y'`` is the model's gradient at ``y``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from relp_lens.core import backends, nodes, relp_mode
from relp_lens.core.dictionaries import Dictionary, DictionarySet
from relp_lens.core.errors import RelPLensError
from relp_lens.core.rules import ForwardAs

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

Dictionaries = Dictionary | DictionarySet | Sequence[Dictionary]


def _hook_point() -> torch.nn.Module:
    from transformer_lens.hook_points import HookPoint  # at call time, as everywhere in relp_lens

    return HookPoint()


class SplicedDictionary(torch.nn.Module):
    """One dictionary in a model's forward pass, with its hook points (the module docstring, steps 1–2).

    Attributes:
        dictionary: the dictionary, as the model reads it (:meth:`Dictionary.check_against`); its node hook
            point carries it too (:func:`dictionary_at`).
    """

    def __init__(self, dictionary: Dictionary):
        super().__init__()
        self.dictionary = dictionary
        for name in nodes.SAE_SUFFIXES:
            setattr(self, name, _hook_point())
        self.hook_sae_nodes.relp_lens_dictionary = dictionary

    def points(self) -> dict[str, Any]:
        """``{hook name: HookPoint}`` of this dictionary's hook points."""
        out = self.dictionary.hook_out
        return {nodes.sae_hook(out, name): getattr(self, name) for name in nodes.SAE_SUFFIXES}

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` ``[batch, pos, ...]`` the value at ``hook_in``, ``y`` the value at ``hook_out`` → ``y'`` (same
        shape and dtype as ``y``; equal to it up to rounding)."""
        d = self.dictionary
        b, p = y.shape[:2]
        x = self.hook_sae_input(x.reshape(b, p, -1).to(d.W_enc.dtype))
        f = d.encode(x)
        with torch.no_grad():
            error = y.reshape(b, p, -1).to(d.W_dec.dtype) - d.decode(f, x)
        both = self.hook_sae_nodes(torch.cat([f, error], dim=-1))  # [batch, pos, d_sae + d_out]
        f = self.hook_sae_acts_post(both[..., : d.d_sae])
        error = self.hook_sae_error(both[..., d.d_sae:])
        out = self.hook_sae_output(d.decode(f, x) + error)
        return out.to(y.dtype).reshape(y.shape)


def as_list(dictionaries: Any) -> list[Dictionary]:
    """The dictionaries of a :class:`Dictionary`, :class:`DictionarySet` or list of them; anything else refused."""
    if isinstance(dictionaries, Dictionary):
        return [dictionaries]
    if isinstance(dictionaries, DictionarySet):
        return list(dictionaries)
    if isinstance(dictionaries, (list, tuple)) and dictionaries and all(isinstance(d, Dictionary)
                                                                         for d in dictionaries):
        return list(dictionaries)
    raise RelPLensError("dictionaries must be a Dictionary, a DictionarySet or a non-empty list of Dictionary "
                        f"(relp_lens.load_sae / load_transcoders), got {type(dictionaries).__name__}")


def basis_label(dictionaries: Sequence[Dictionary]) -> str:
    """The basis name an attribution on dictionaries records: their kinds, e.g. ``"transcoder features"``."""
    kinds = sorted({d.kind for d in dictionaries})
    return "+".join(kinds) + " features"


def is_dictionaries(basis: Any) -> bool:
    """Whether a ``basis`` argument names dictionaries rather than hooks."""
    return isinstance(basis, (Dictionary, DictionarySet)) or (
        isinstance(basis, (list, tuple)) and bool(basis) and all(isinstance(d, Dictionary) for d in basis))


@contextlib.contextmanager
def splice(model: HookedTransformer, dictionaries: Dictionaries) -> Iterator[list[str]]:
    """Run ``model`` with ``dictionaries`` spliced in (the module docstring): forward passes inside are the
    model's own, and the dictionaries' latents and errors are nodes one can attribute, patch and ablate.

    1. Each dictionary is checked against the model (:meth:`Dictionary.check_against`: hooks, widths, the
       tensor it was trained on) before anything is added; two dictionaries on one ``hook_out`` are refused.
    2. A forward hook on ``hook_in`` keeps the input, one on ``hook_out`` replaces the value by the spliced
       module's output; the spliced hook points are registered by name. A bridge norm that returns Hugging
       Face's own output gives ``hook_normalized`` its full Jacobian (the LN rule sits on its output there):
       inside :func:`relp_lens.relp` with the LN rule, the input read there gets the rule's constant scale.
    3. On exit, hooks and hook points are removed, exception or not.

    Args:
        model: a HookedTransformer or TransformerBridge.
        dictionaries: a :class:`Dictionary`, a :class:`DictionarySet` or a list of dictionaries.

    Yields:
        The node hook of each dictionary (``{hook_out}.hook_sae_nodes``), in block order: the basis to
        attribute.
    """
    backends.require_model(model)
    dicts = as_list(dictionaries)
    outs = [d.hook_out for d in dicts]
    twice = sorted({h for h in outs if outs.count(h) > 1})
    if twice:
        raise RelPLensError(f"two dictionaries reconstruct {twice[0]}: splice one dictionary per hook")
    checked = [d.check_against(model) for d in dicts]
    order = sorted(range(len(checked)), key=lambda i: (checked[i].layer if checked[i].layer is not None else -1, i))
    modules = [SplicedDictionary(checked[i]) for i in order]
    fwd_hooks: list[tuple[str, Any]] = []
    for m in modules:
        d = m.dictionary
        if d.hook_in == d.hook_out:
            fwd_hooks.append((d.hook_out, lambda y, hook, m=m: m(y, y)))
            continue
        kept: dict[str, torch.Tensor] = {}
        norm = backends.native_norm(model, d.hook_in)
        if norm is not None:  # a bridge norm whose hook_normalized has the full Jacobian: remember its input
            fwd_hooks.append((backends.point_names(model)[id(norm.hook_in)], backends.capture_hook(kept, "in")))

        def keep(x, hook, kept=kept, norm=norm):
            rules = relp_mode.active_rules(model)
            if norm is not None and rules is not None and rules.ln and "in" in kept:  # the LN rule, as elsewhere
                x = ForwardAs.apply(x, backends.normalized_surrogate(norm, kept.pop("in")).to(x.dtype))
            kept["x"] = x

        def replace(y, hook, kept=kept, m=m):
            if "x" not in kept:
                raise RelPLensError(f"{m.dictionary.source}: the forward pass reached {m.dictionary.hook_out} "
                                    f"without passing {m.dictionary.hook_in}")
            return m(kept.pop("x"), y)

        fwd_hooks += [(d.hook_in, keep), (d.hook_out, replace)]
    points = {name: point for m in modules for name, point in m.points().items()}
    with backends.added_points(model, points), backends.hooks(model, fwd_hooks=fwd_hooks):
        yield [nodes.sae_hook(m.dictionary.hook_out) for m in modules]


def n_latents(model: HookedTransformer, hook: str) -> int | None:
    """``d_sae`` when ``hook`` is a spliced dictionary's node hook (latents, then the error vector), else None
    (every element is a node)."""
    d = dictionary_at(model, hook)
    return None if d is None else d.d_sae


def dictionary_at(model: HookedTransformer, hook: str) -> Dictionary | None:
    """The dictionary (as the model reads it) whose node hook ``hook`` is, when it is spliced in; else None."""
    point = backends.hook_points(model).get(hook) if hook.endswith(nodes.SAE_NODES) else None
    return getattr(point, "relp_lens_dictionary", None)


def fold(x: torch.Tensor, latents: int | None) -> torch.Tensor:
    """Per-element values ``[..., d_sae + d_out]`` → per-node ``[..., d_sae + 1]``: the latents, then the sum
    over the error's elements. ``latents`` None: ``x`` unchanged."""
    if latents is None:
        return x
    return torch.cat([x[..., :latents], x[..., latents:].sum(-1, keepdim=True)], dim=-1)


def fold_norm(x: torch.Tensor, latents: int | None) -> torch.Tensor:
    """Per-element activations ``[..., d_sae + d_out]`` → per-node ``[..., d_sae + 1]``: the latents, then the
    error vector's norm. ``latents`` None: ``x`` unchanged."""
    if latents is None:
        return x
    return torch.cat([x[..., :latents], x[..., latents:].norm(dim=-1, keepdim=True)], dim=-1)


def unfold(mask: torch.Tensor, latents: int | None, width: int) -> torch.Tensor:
    """Per-node ``[..., d_sae + 1]`` → per-element ``[..., width]`` (the error node's value repeated over its
    ``width − d_sae`` elements). ``latents`` None: ``mask`` unchanged."""
    if latents is None:
        return mask
    err = mask[..., latents:latents + 1]
    return torch.cat([mask[..., :latents], err.expand(*err.shape[:-1], width - latents)], dim=-1)


def elements(index: int, latents: int | None) -> slice:
    """The elements of node ``index``: itself, or (the error node ``index == d_sae``) the whole error vector."""
    if latents is None or index < latents:
        return slice(index, index + 1)
    return slice(latents, None)


def node_width(width: int, latents: int | None) -> int:
    """Nodes per position of a layer with ``width`` elements."""
    return width if latents is None else latents + 1
