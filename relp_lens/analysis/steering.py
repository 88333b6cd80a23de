"""Steering: change chosen neurons' activations and watch the output move.

1. :func:`steer` — context manager; for each node ``(layer, pos, index)`` of a basis (default the MLP
   neurons, ``blocks.{L}.mlp.hook_post``) it scales, sets or adds to the activation at that position
   (``pos=None``: every position, including tokens produced by ``model.generate``).
   ``value`` is one number for all nodes, or one per node.
2. :func:`steering_direction` — per node, the mean activation on target prompts minus that on source prompts
   (e.g. singular minus plural subjects): adding ``f ×`` it moves the nodes from the source behaviour towards
   the target one (``f = 1`` ≈ mean-patching the nodes to the target).
3. :func:`steering_sweep` — for each factor, the probabilities of chosen tokens at the last position; the
   factor is the value itself, or multiplies a per-node ``direction``.
4. :func:`group_steering` — a neuron group (:mod:`relp_lens.analysis.groups`) scaled by the paper's factors
   {−4, −2, −1, 0, 1, 2, 4}, next to random groups of the same size, layers and positions.

Positions follow :mod:`relp_lens.core.positions`: ``pos >= 0`` from the start, ``pos < 0`` from the end of each
forward pass (``-1``: the last token), ``None`` every position. A forward pass that lacks a node's
position is an error naming the node — except a one-token step of ``model.generate`` with the KV cache after
a pass that did contain it (the cached keys and values already carry the steered value). Values must be
finite; indices are integers inside the hook's width.

Prompts are tokenized as the model does (BOS prepended when ``model.cfg.default_prepend_bos`` says so) unless
``prepend_bos=`` overrides it; :func:`group_steering` tokenizes as the circuit's attribution did
(``circuit.prepend_bos``), so the group's positions name the same tokens.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from relp_lens.core import backends
from relp_lens.core import validate
from relp_lens.core.data import answer_token, length_groups, prompt_tokens, resolve_prepend_bos
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import STEER_MODES, SteerMode
from relp_lens.core.nodes import resolve_hooks
from relp_lens.core.positions import check_position, is_int, require, resolve

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

Node = tuple[int, int | None, int]
MODES = STEER_MODES
FACTORS = (-4, -2, -1, 0, 1, 2, 4)  # the paper's steering multipliers


def _width(model: HookedTransformer, hook: str) -> int | None:
    """The number of nodes at one position of ``hook``, where the config tells it."""
    c = model.cfg
    if hook.endswith("mlp.hook_post") or hook.endswith("mlp.hook_pre"):
        return c.d_mlp
    if hook.endswith(("hook_mlp_out", "hook_attn_out", "hook_resid_pre", "hook_resid_post", "hook_resid_mid")):
        return c.d_model
    return None


def _node_hooks(model: HookedTransformer, nodes: Sequence[Node], basis) -> list[str]:
    """The hook name of each ``(layer, pos, index)`` node; a clear error for a malformed or missing node."""
    hooks = resolve_hooks(model, basis)
    names = []
    for node in nodes:
        if not isinstance(node, (tuple, list)) or len(node) != 3:
            raise RelPLensError(f"bad node {node!r}: expected (layer, pos or None, index)")
        layer, pos, idx = node
        if not is_int(layer) or not 0 <= layer < len(hooks):
            raise RelPLensError(f"node {node!r}: layer must be an integer in [0, {len(hooks)})")
        check_position(pos, f"node {node!r}")
        width = _width(model, hooks[layer])
        if not is_int(idx) or idx < 0 or (width is not None and idx >= width):
            raise RelPLensError(f"node {node!r}: index must be an integer in [0, {width if width else 'width'})")
        names.append(hooks[layer])
    if not names:
        raise RelPLensError("no nodes to steer")
    return names


@contextlib.contextmanager
def steer(model: HookedTransformer, nodes: Sequence[Node], value: float | Sequence[float], *,
          mode: SteerMode = "scale", basis="mlp_post") -> Iterator[HookedTransformer]:
    """Inside the block, every forward pass has ``nodes`` scaled by / set to / shifted by ``value`` (a number,
    or one number per node)."""
    if mode not in MODES:
        raise RelPLensError(f"unknown steering mode {mode!r}; choose from {list(MODES)}")
    nodes = list(nodes)
    values = [float(value)] * len(nodes) if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != len(nodes):
        raise RelPLensError(f"got {len(values)} steering values for {len(nodes)} nodes; give one number or one per node")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise RelPLensError(f"steering values must be finite numbers, got {bad[0]!r}")
    by_hook: dict[str, list[tuple[int | None, int, float]]] = {}
    for name, (_, pos, idx), v in zip(_node_hooks(model, nodes, basis), nodes, values):
        by_hook.setdefault(name, []).append((pos, idx, v))
    longest = [0]  # the longest forward pass steered so far in this block

    def make(name, items):  # the name is bound here (a bridge's hook.name may be an alias's canonical one)
        def hook(x, hook):  # x: [batch, pos, ...]
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            width, length = flat.shape[-1], flat.shape[1]
            out = flat.clone()
            for pos, idx, value in items:
                if not 0 <= idx < width:
                    raise RelPLensError(f"neuron index {idx} outside [0, {width}) at {name}")
                t = None if pos is None else resolve(pos, length)
                if pos is not None and t is None:
                    if length == 1 and pos >= 0 and longest[0] > pos:
                        continue  # a cached generation step: the steered position is in the KV cache
                    raise RelPLensError(
                        f"steering node ({name}, pos {pos}, index {idx}): this forward pass has {length} "
                        f"tokens, so position {pos} does not exist (with model.generate and the KV cache, use "
                        f"pos=None or use_past_kv_cache=False)")
                sl = slice(None) if pos is None else t
                if mode == "scale":
                    out[:, sl, idx] = flat[:, sl, idx] * value
                elif mode == "set":
                    out[:, sl, idx] = value
                else:
                    out[:, sl, idx] = flat[:, sl, idx] + value
            longest[0] = max(longest[0], length)
            return out.reshape(x.shape)
        return hook

    with backends.hooks(model, fwd_hooks=[(name, make(name, items)) for name, items in by_hook.items()]):
        yield model


def steering_direction(model: HookedTransformer, nodes: Sequence[Node], source: Sequence[str],
                       target: Sequence[str], *, basis="mlp_post", prepend_bos: bool | None = None) -> list[float]:
    """Per node: mean activation over ``target`` prompts minus mean over ``source`` prompts.

    A node with a position reads that position of every prompt (negative: from the end; a prompt without
    it is an error naming both); ``pos=None`` reads the mean over all positions of each prompt.
    ``prepend_bos``: prompts start with BOS (True) or not (False); None: as the model does.
    """
    bos = resolve_prepend_bos(model, prepend_bos)
    nodes = list(nodes)
    node_hooks = _node_hooks(model, nodes, basis)
    names = set(node_hooks)

    def mean_acts(prompts: Sequence[str], side: str) -> list[float]:
        if not prompts:
            raise RelPLensError(f"no {side} prompts for the steering direction")
        sums = [0.0] * len(nodes)
        for i, p in enumerate(prompts):
            tokens = prompt_tokens(model, p, f"{side} prompt {i}", bos)[None].to(model.cfg.device)  # [1, pos]
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            for j, ((_, pos, idx), name) in enumerate(zip(nodes, node_hooks)):
                acts = cache[name][0].reshape(cache[name].shape[1], -1)[:, idx]  # [pos]
                if pos is None:
                    sums[j] += acts.mean().item()
                else:
                    sums[j] += acts[require(pos, acts.shape[0], str(nodes[j]), p)].item()
        return [s / len(prompts) for s in sums]

    return [t - s for s, t in zip(mean_acts(source, "source"), mean_acts(target, "target"))]


def _last_probs(model: HookedTransformer, prompts: Sequence[str], ids: Sequence[int],
                batch_size: int = 32, prepend_bos: bool | None = None) -> torch.Tensor:
    """Mean probability of each token id at the last position over ``prompts`` (batched by token length).
    → ``[token]``."""
    validate.positive_int(batch_size, "batch_size")
    tokens = [prompt_tokens(model, p, f"prompt {i}", prepend_bos) for i, p in enumerate(prompts)]  # each [pos]
    acc = torch.zeros(len(ids), dtype=torch.float64)
    with torch.no_grad():
        for idx in length_groups(tokens, batch_size):
            batch = torch.stack([tokens[i] for i in idx]).to(model.cfg.device)  # [batch, pos]
            probs = model(batch)[:, -1].float().softmax(-1)[:, list(ids)]  # [batch, token]
            acc += probs.sum(0).double().cpu()
    return (acc / len(prompts)).float()


def steering_sweep(model: HookedTransformer, prompts: str | Sequence[str], nodes: Sequence[Node],
                   tokens: Sequence[str], factors: Sequence[float] = FACTORS, *,
                   mode: SteerMode = "scale", direction: Sequence[float] | None = None, basis="mlp_post",
                   batch_size: int = 32, prepend_bos: bool | None = None) -> dict:
    """Mean probability of each of ``tokens`` (single tokens) at the last position, per steering factor.

    The steering value at factor ``f`` is ``f`` itself, or ``f × direction`` per node when a ``direction``
    is given (e.g. from :func:`steering_direction`, with ``mode="add"``). ``prepend_bos``: prompts start
    with BOS (True) or not (False); None: as the model does.
    Returns ``{"factors": [...], "probs": {token: [p per factor]}, "mode": mode}``; prompts of one token
    length run in batches of ``batch_size``.
    """
    backends.require_model(model)
    validate.positive_int(batch_size, "batch_size")
    factors = validate.float_list(factors, "factors")
    if direction is not None and len(direction) != len(nodes):
        raise RelPLensError(f"direction has {len(direction)} values for {len(nodes)} nodes")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise RelPLensError("no prompts to steer")
    ids = [answer_token(model, t) for t in tokens]
    probs = {t: [] for t in tokens}
    for f in factors:
        value = f if direction is None else [f * d for d in direction]
        with steer(model, nodes, value, mode=mode, basis=basis):
            p = _last_probs(model, prompts, ids, batch_size, prepend_bos)
        for t, v in zip(tokens, p.tolist()):
            probs[t].append(v)
    return {"factors": list(factors), "probs": probs, "mode": mode if direction is None else f"{mode} × direction"}


def random_groups(nodes: Sequence[Node], width: int, n: int, *, seed: int = 0,
                  exclude: Sequence[Node] = ()) -> list[list[Node]]:
    """``n`` random groups matched to ``nodes``: the same layers and positions, other neuron indices (none of
    ``nodes`` or ``exclude``, no index twice in a layer and position)."""
    taken = {(l, p, i) for l, p, i in list(nodes) + list(exclude)}
    per_slot: dict[tuple[int, int | None], int] = {}
    for l, p, _ in nodes:
        per_slot[(l, p)] = per_slot.get((l, p), 0) + 1
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        group = []
        for (l, p), count in per_slot.items():
            free = [i for i in range(width) if (l, p, i) not in taken]
            if len(free) < count:
                raise RelPLensError(f"layer {l} has only {len(free)} free neurons for a random group of {count}")
            group += [(l, p, i) for i in rng.sample(free, count)]
        out.append(group)
    return out


def group_steering(model: HookedTransformer, circuit, group: str | int, prompts: str | Sequence[str],
                   tokens: Sequence[str], factors: Sequence[float] = FACTORS, *, n_random: int = 10,
                   seed: int = 0, batch_size: int = 32, prepend_bos: bool | None = None) -> dict:
    """Multiply a neuron group's activations at its positions by each factor (the paper's −4 … 4) and read
    the probabilities of ``tokens``; the same for ``n_random`` random groups of the same size, layers and
    positions (:func:`random_groups`, neurons outside the circuit).

    ``group``: a group name (``"G1"``) or number of ``circuit``'s neuron groups
    (:func:`relp_lens.analysis.groups.group_neurons`). Returns the group's sweep (as :func:`steering_sweep`) plus
    ``"group"``, ``"size"``, ``"random"`` (``{token: [[p per factor] per random group]}``) and
    ``"random_mean"`` / ``"random_std"`` (``{token: [per factor]}``). ``prepend_bos``: default the
    circuit's own (``circuit.prepend_bos``), so the group's positions name the tokens they were found at.
    """
    from relp_lens.analysis.groups import group_nodes, groups_of

    if circuit.basis != "mlp_post":
        raise RelPLensError(f"group steering scales MLP neurons; this circuit's basis is {circuit.basis!r}")
    circuit.check_model(model)
    nodes = group_nodes(circuit, group)
    if not nodes:
        raise RelPLensError(f"group {group!r} has no members left in this circuit")
    validate.nonneg_int(n_random, "n_random")
    name = group if isinstance(group, str) else groups_of(circuit).groups[int(group)].name
    bos = circuit.prepend_bos if prepend_bos is None else prepend_bos
    out = steering_sweep(model, prompts, nodes, tokens, factors, mode="scale", batch_size=batch_size,
                         prepend_bos=bos)
    in_circuit = {(n.layer, n.index) for n in circuit.nodes}  # a circuit neuron at any position is no random pick
    exclude = [(l, p, i) for l, p, _ in nodes for (l2, i) in in_circuit if l2 == l]
    others = random_groups(nodes, circuit.node_width, n_random, seed=seed, exclude=exclude)
    sweeps = [steering_sweep(model, prompts, g, tokens, factors, mode="scale", batch_size=batch_size,
                             prepend_bos=bos) for g in others]
    random_probs = {t: [sw["probs"][t] for sw in sweeps] for t in tokens}
    stats = {t: torch.tensor(v, dtype=torch.float64) if v else None for t, v in random_probs.items()}
    out.update(group=name, size=len(nodes), random=random_probs,
               random_mean={t: [] if v is None else v.mean(0).tolist() for t, v in stats.items()},
               random_std={t: [] if v is None else (v.std(0, unbiased=False)).tolist() for t, v in stats.items()})
    return out
