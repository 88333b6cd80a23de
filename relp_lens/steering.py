"""Steering: change chosen neurons' activations and watch the output move.

1. :func:`steer` — context manager; for each node ``(layer, pos, index)`` of a basis (default the MLP
   neurons, ``blocks.{L}.mlp.hook_post``) it scales, sets or adds to the activation at that position
   (``pos=None``: every position, including tokens produced by ``model.generate``).
2. :func:`steering_sweep` — for each factor, the probabilities of chosen tokens at the last position.

Position-specific nodes apply only to forward passes that contain that position; with ``model.generate``
use ``pos=None`` nodes, or ``use_past_kv_cache=False`` so every step sees the whole sequence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from transformer_lens import HookedTransformer

from relp_lens.data import answer_token
from relp_lens.errors import RelPLensError
from relp_lens.nodes import resolve_hooks

Node = tuple[int, int | None, int]
MODES = ("scale", "set", "add")


def _group(model: HookedTransformer, nodes: Iterable[Node], basis) -> dict[str, list[tuple[int | None, int]]]:
    hooks = resolve_hooks(model, basis)
    by_hook: dict[str, list[tuple[int | None, int]]] = {}
    for node in nodes:
        if len(node) != 3:
            raise RelPLensError(f"bad node {node!r}: expected (layer, pos or None, index)")
        layer, pos, idx = node
        if not 0 <= layer < len(hooks):
            raise RelPLensError(f"node {node!r}: layer outside [0, {len(hooks)})")
        by_hook.setdefault(hooks[layer], []).append((pos, idx))
    if not by_hook:
        raise RelPLensError("no nodes to steer")
    return by_hook


@contextlib.contextmanager
def steer(model: HookedTransformer, nodes: Sequence[Node], value: float, *, mode: str = "scale",
          basis="mlp_post") -> Iterator[HookedTransformer]:
    """Inside the block, every forward pass has ``nodes`` scaled by / set to / shifted by ``value``."""
    if mode not in MODES:
        raise RelPLensError(f"unknown steering mode {mode!r}; choose from {list(MODES)}")
    by_hook = _group(model, nodes, basis)

    def make(items):
        def hook(x, hook):  # x: [batch, pos, ...]
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            width = flat.shape[-1]
            out = flat.clone()
            for pos, idx in items:
                if not 0 <= idx < width:
                    raise RelPLensError(f"neuron index {idx} outside [0, {width}) at {hook.name}")
                if pos is not None and pos >= flat.shape[1]:
                    continue  # this pass does not contain the position (e.g. a cached generation step)
                sl = slice(None) if pos is None else pos
                if mode == "scale":
                    out[:, sl, idx] = flat[:, sl, idx] * value
                elif mode == "set":
                    out[:, sl, idx] = value
                else:
                    out[:, sl, idx] = flat[:, sl, idx] + value
            return out.reshape(x.shape)
        return hook

    with model.hooks(fwd_hooks=[(name, make(items)) for name, items in by_hook.items()]):
        yield model


def steering_sweep(model: HookedTransformer, prompts: str | Sequence[str], nodes: Sequence[Node],
                   tokens: Sequence[str], factors: Sequence[float] = (-4, -2, -1, 0, 1, 2, 4), *,
                   mode: str = "scale", basis="mlp_post") -> dict:
    """Mean probability of each of ``tokens`` (single tokens) at the last position, per steering factor.

    Returns ``{"factors": [...], "probs": {token: [p per factor]}, "mode": mode}``; prompts of different
    token lengths are run one at a time.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise RelPLensError("no prompts to steer")
    ids = [answer_token(model, t) for t in tokens]
    probs = {t: [] for t in tokens}
    for f in factors:
        acc = torch.zeros(len(ids))
        with steer(model, nodes, f, mode=mode, basis=basis), torch.no_grad():
            for p in prompts:
                acc += model(model.to_tokens(p))[0, -1].softmax(-1)[ids].cpu()
        for t, v in zip(tokens, (acc / len(prompts)).tolist()):
            probs[t].append(v)
    return {"factors": list(factors), "probs": probs, "mode": mode}
