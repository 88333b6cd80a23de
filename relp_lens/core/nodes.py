"""Node bases: which TransformerLens hook holds the nodes of each layer.

The default basis is ``mlp_post``: the MLP neurons, i.e. the activations that feed each MLP's
down-projection (``blocks.{L}.mlp.hook_post``, width ``d_mlp``). Other bases:

===============  ==============================  =========
basis            hook                            width
===============  ==============================  =========
``mlp_post``     ``blocks.{L}.mlp.hook_post``    d_mlp
``mlp_out``      ``blocks.{L}.hook_mlp_out``     d_model
``attn_out``     ``blocks.{L}.hook_attn_out``    d_model
``resid_pre``    ``blocks.{L}.hook_resid_pre``   d_model
``resid_post``   ``blocks.{L}.hook_resid_post``  d_model
===============  ==============================  =========

Any other hook is accepted too: an exact hook name (one "layer"), a template with ``{L}`` expanded over
all layers (``"blocks.{L}.attn.hook_z"``), or a list of hook names. Activations with more than three
dimensions (``hook_z``: [batch, pos, head, d_head]) are flattened after ``pos``.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from relp_lens.core import backends
from relp_lens.core.errors import RelPLensError

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

BASES: dict[str, str] = {
    "mlp_post": "blocks.{L}.mlp.hook_post",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "attn_out": "blocks.{L}.hook_attn_out",
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "resid_post": "blocks.{L}.hook_resid_post",
}


def block_hook(block: int, name: str) -> str:
    """The full name of a hook inside one transformer block: the one place such names are spelled.

    1. Joins ``blocks.{block}.`` and ``name`` (``"hook_mlp_out"``, ``"mlp.hook_post"``, ``"attn.hook_z"``, ...).

    Args:
        block: the block's index in ``model.blocks``.
        name: the hook's name inside the block.

    Returns:
        ``"blocks.{block}.{name}"``.
    """
    return f"blocks.{block}.{name}"


def mlp_post(layer: int) -> str:
    """The MLP neurons' hook of one layer (the ``mlp_post`` basis).

    1. Names the activations that feed the layer's MLP down-projection (width ``d_mlp``).

    Args:
        layer: the block's index.

    Returns:
        ``"blocks.{layer}.mlp.hook_post"``.
    """
    return block_hook(layer, "mlp.hook_post")


def mlp_out(block: int) -> str:
    """The MLP output of one block, what it adds to the residual stream (the ``mlp_out`` basis).

    1. Names the block's MLP output hook (width ``d_model``).

    Args:
        block: the block's index.

    Returns:
        ``"blocks.{block}.hook_mlp_out"``.
    """
    return block_hook(block, "hook_mlp_out")


def attn_z(block: int) -> str:
    """The attention heads' outputs of one block, before ``W_O`` (``[batch, pos, head, d_head]``).

    1. Names the block's ``attn.hook_z``.

    Args:
        block: the block's index.

    Returns:
        ``"blocks.{block}.attn.hook_z"``.
    """
    return block_hook(block, "attn.hook_z")


POST_NORMS = {"attn": "ln1_post", "mlp": "ln2_post"}  # Gemma 2/3's norms after attention and after the MLP


def post_norm_hook(block: int, sublayer: str, name: str) -> str:
    """A hook of the norm after one block's attention or MLP (Gemma 2/3's ``ln1_post`` / ``ln2_post``, on both
    backends).

    1. Names the hook ``name`` (``"hook_scale"``, ``"hook_normalized"``) of the block's post-norm.

    Args:
        block: the block's index.
        sublayer: ``"attn"`` or ``"mlp"``.
        name: the norm's hook.

    Returns:
        ``"blocks.{block}.ln2_post.{name}"`` (``ln1_post`` for attention).
    """
    return block_hook(block, f"{POST_NORMS[sublayer]}.{name}")


def attn_scores(block: int) -> str:
    """The attention scores of one block, the softmax's input after masking (``[batch, head, q_pos, k_pos]``).

    1. Names the block's ``attn.hook_attn_scores``.

    Args:
        block: the block's index.

    Returns:
        ``"blocks.{block}.attn.hook_attn_scores"``.
    """
    return block_hook(block, "attn.hook_attn_scores")


def attn_pattern(block: int) -> str:
    """The attention pattern of one block, the softmax's output (``[batch, head, q_pos, k_pos]``).

    1. Names the block's ``attn.hook_pattern``.

    Args:
        block: the block's index.

    Returns:
        ``"blocks.{block}.attn.hook_pattern"``.
    """
    return block_hook(block, "attn.hook_pattern")


def attn_out(block: int) -> str:
    """The attention output of one block, what it adds to the residual stream (``[batch, pos, d_model]``).

    1. Names the block's ``hook_attn_out``.

    Args:
        block: the block's index.

    Returns:
        ``"blocks.{block}.hook_attn_out"``.
    """
    return block_hook(block, "hook_attn_out")


def mlp_inputs(block: int) -> list[str]:
    """Hooks that carry one block's MLP input and nothing else, in order of preference.

    1. A bridge's ``mlp.hook_in``, then the normalised residual ``ln2.hook_normalized`` (HookedTransformer;
       a bridge has it too). A model may have neither (a parallel block without ``ln2``).

    Args:
        block: the block's index.

    Returns:
        ``["blocks.{block}.mlp.hook_in", "blocks.{block}.ln2.hook_normalized"]``.
    """
    return [block_hook(block, "mlp.hook_in"), block_hook(block, "ln2.hook_normalized")]


def resid_pre(layer: int) -> str:
    """The residual stream entering one block (the ``resid_pre`` basis).

    1. Names the block's ``hook_resid_pre``.

    Args:
        layer: the block's index.

    Returns:
        ``"blocks.{layer}.hook_resid_pre"``.
    """
    return block_hook(layer, "hook_resid_pre")


def resid_mid(block: int) -> str:
    """The residual stream between attention and the MLP of one block: the pre-norm MLP input.

    1. Names the block's ``hook_resid_mid``.

    Args:
        block: the block's index.

    Returns:
        ``"blocks.{block}.hook_resid_mid"``.
    """
    return block_hook(block, "hook_resid_mid")


def resid_post(block: int) -> str:
    """The residual stream leaving one block (the ``resid_post`` basis).

    1. Names the block's ``hook_resid_post``.

    Args:
        block: the block's index.

    Returns:
        ``"blocks.{block}.hook_resid_post"``.
    """
    return block_hook(block, "hook_resid_post")


def ln2_normalized(block: int) -> str:
    """The MLP's input norm of one block before its weight and bias: ``ln2(x) = hook_normalized ⊙ w (+ b)``.

    1. Names the block's ``ln2.hook_normalized``.

    Args:
        block: the block's index.

    Returns:
        ``"blocks.{block}.ln2.hook_normalized"``.
    """
    return block_hook(block, "ln2.hook_normalized")


_BLOCK = re.compile(r"blocks\.(\d+)\.")


def block_of(hook: str) -> int | None:
    """The block a hook name lies in (``"blocks.3.hook_mlp_out"`` → 3), ``None`` outside the blocks.

    1. Reads the index after a leading ``blocks.``.

    Args:
        hook: a hook name.

    Returns:
        The block's index, or ``None``.
    """
    m = _BLOCK.match(hook)
    return int(m.group(1)) if m else None


SAE_NODES = "hook_sae_nodes"  # a spliced dictionary's nodes: its latents, then its error vector
SAE_SUFFIXES = (SAE_NODES, "hook_sae_acts_post", "hook_sae_error", "hook_sae_input", "hook_sae_output")


def sae_hook(hook_out: str, name: str = SAE_NODES) -> str:
    """A hook point of a dictionary spliced in at ``hook_out`` (:mod:`relp_lens.core.splice`), named as SAELens
    names those of an SAE attached to a hook.

    1. Appends ``name`` to ``hook_out``.

    Args:
        hook_out: the hook the dictionary reconstructs (``blocks.3.hook_mlp_out``).
        name: ``hook_sae_nodes`` (latents then error: the attribution basis), ``hook_sae_acts_post`` (the
            latents), ``hook_sae_error`` (target − reconstruction), ``hook_sae_input`` or ``hook_sae_output``.

    Returns:
        ``"{hook_out}.{name}"``.
    """
    if name not in SAE_SUFFIXES:
        raise RelPLensError(f"unknown dictionary hook {name!r}; choose from {list(SAE_SUFFIXES)}")
    return f"{hook_out}.{name}"


def unit_label(hook: str, index: int, width: int) -> str:
    """How a node's unit is written in labels: a neuron by its index, a dictionary's latent and error apart.

    Args:
        hook: the node's hook (a basis hook; ``….hook_sae_nodes`` for spliced dictionaries).
        index: the node's index along the hook's last dimension.
        width: that dimension's size (``d_sae + 1`` for a dictionary: the error node is the last).

    Returns:
        ``"123"`` (a neuron or other unit), ``"f123"`` (latent 123), ``"err"`` (the error node).
    """
    if not hook.endswith(SAE_NODES):
        return str(index)
    return "err" if index == width - 1 else f"f{index}"


def layer_numbers(hooks: Sequence[str]) -> list[int]:
    """The layer each hook of a basis is shown as: its block (``blocks.10.…`` → 10), so a basis of some layers
    names them as the model does; where a hook has no block or two hooks share one, every hook's index in the
    basis instead (labels stay unique).

    Args:
        hooks: the basis' hooks, one per node layer.

    Returns:
        One number per hook.
    """
    return list(_layer_numbers(tuple(hooks)))


@functools.lru_cache(maxsize=64)
def _layer_numbers(hooks: tuple[str, ...]) -> tuple[int, ...]:
    """:func:`layer_numbers`, cached: labels ask for it once per node."""
    blocks = [block_of(h) for h in hooks]
    if None in blocks or len(set(blocks)) != len(blocks):
        return tuple(range(len(hooks)))
    return tuple(blocks)  # type: ignore[arg-type]


def unit_hook(hook: str, index: int, width: int) -> str:
    """Where a node's activation lives, as TransformerLens and SAELens name it.

    Args:
        hook: the node's hook.
        index: the node's index along the hook's last dimension.
        width: that dimension's size (``d_sae + 1`` for a dictionary).

    Returns:
        ``"blocks.3.mlp.hook_post[123]"``; ``"blocks.3.hook_mlp_out.hook_sae_acts_post[123]"`` for a latent;
        ``"blocks.3.hook_mlp_out.hook_sae_error"`` (the whole error vector) for an error node.
    """
    if not hook.endswith(SAE_NODES):
        return f"{hook}[{index}]"
    hook_out = hook[: -len(SAE_NODES) - 1]
    return sae_hook(hook_out, "hook_sae_error") if index == width - 1 else f"{sae_hook(hook_out, 'hook_sae_acts_post')}[{index}]"


def _check_exists(model: HookedTransformer, names: list[str], what: str) -> None:
    backends.check_model(model)  # a bridge outside compatibility mode lacks the hooks: say how to fix it
    hook_dict = backends.hook_points(model)  # with the points of spliced dictionaries
    for name in names:
        if name not in hook_dict:
            if ".mlp." in name and not any(".mlp.hook_post" in n for n in hook_dict):
                raise RelPLensError(
                    f"model has no MLP neuron hooks (no {name!r}; attn_only={model.cfg.attn_only}): "
                    f"the neuron basis needs MLPs; try basis='attn_out' or 'resid_post'"
                )
            if name.endswith(SAE_SUFFIXES):
                raise RelPLensError(
                    f"the model has no hook {name!r}: it is a dictionary's hook, which exists only while the "
                    f"dictionary is spliced in (attribute(basis=dictionaries) or `with relp_lens.splice(model, "
                    f"dictionaries):`)")
            close = difflib.get_close_matches(name, list(hook_dict), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise RelPLensError(
                f"unknown node basis or hook {what!r}: the model has no hook {name!r}{hint} "
                f"(bases: {sorted(BASES)}, or any name in model.hook_dict)"
            )



def _check_live(model: HookedTransformer, names: list[str]) -> None:
    """Nodes are scored, patched and ablated at their hooks: a bridge hook whose value the forward pass never
    computes on (:func:`relp_lens.core.backends.dead_hooks`) is refused (reading such a hook's value is fine)."""
    dead = backends.dead_hooks(model, names)
    if dead:
        raise RelPLensError(
            f"on this TransformerBridge the value at {dead[0]!r}"
            + (f" (and {len(dead) - 1} more hooks)" if len(dead) > 1 else "")
            + " is not one its forward pass computes on (a copy it drops, token ids, or a hook that never fires): "
              "scores, patches and ablations there would be silently zero. Use hook_attn_out, hook_mlp_out or the "
              "residual stream, or a HookedTransformer (TransformerLens 3)")


def resolve_hooks(model: HookedTransformer, basis: str | Sequence[str], *, live: bool = True) -> list[str]:
    """Hook names, one per "layer" of nodes, for a basis name, hook name, ``{L}`` template or list; each must
    exist, and (``live``, for what scores, patches or ablates there) be one the forward pass computes on."""
    backends.require_model(model)
    if isinstance(basis, str):
        if not basis:
            raise RelPLensError("empty node basis")
        template = BASES.get(basis, basis)
        if "{L}" in template:
            names = [template.format(L=layer) for layer in range(model.cfg.n_layers)]
        else:
            names = [template]
    else:
        names = list(basis)
        if not names:
            raise RelPLensError("empty list of hook names for the node basis")
        if not all(isinstance(n, str) for n in names):
            raise RelPLensError(f"hook names must be strings, got {names!r}")
    _check_exists(model, names, basis if isinstance(basis, str) else str(names))
    per_head = [n for n in names if n.endswith(("hook_pattern", "hook_attn_scores"))]
    if per_head:
        raise RelPLensError(f"{per_head[0]!r} is [batch, head, query, key], not one value per position: nodes are "
                            f"per position; use blocks.{{L}}.attn.hook_z (each head at each position) or "
                            f"hook_attn_out")
    if live:
        _check_live(model, names)
    return names


def basis_name(basis: str | Sequence[str]) -> str:
    """A short printable name for a basis argument."""
    return basis if isinstance(basis, str) else ",".join(basis)
