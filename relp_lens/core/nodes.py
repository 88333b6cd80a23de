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


def _check_exists(model: HookedTransformer, names: list[str], what: str) -> None:
    backends.check_model(model)  # a bridge outside compatibility mode lacks the hooks: say how to fix it
    for name in names:
        if name not in model.hook_dict:
            if ".mlp." in name and not any(".mlp.hook_post" in n for n in model.hook_dict):
                raise RelPLensError(
                    f"model has no MLP neuron hooks (no {name!r}; attn_only={model.cfg.attn_only}): "
                    f"the neuron basis needs MLPs; try basis='attn_out' or 'resid_post'"
                )
            close = difflib.get_close_matches(name, list(model.hook_dict), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise RelPLensError(
                f"unknown node basis or hook {what!r}: the model has no hook {name!r}{hint} "
                f"(bases: {sorted(BASES)}, or any name in model.hook_dict)"
            )


def resolve_hooks(model: HookedTransformer, basis: str | Sequence[str]) -> list[str]:
    """Hook names, one per "layer" of nodes, for a basis name, hook name, ``{L}`` template or list."""
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
    return names


def basis_name(basis: str | Sequence[str]) -> str:
    """A short printable name for a basis argument."""
    return basis if isinstance(basis, str) else ",".join(basis)
