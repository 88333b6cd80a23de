"""RelP backward mode: ``with relp(model): ...`` makes every backward pass follow the RelP rules.

The forward pass is bit-identical; only gradients change. The rules (see :mod:`relp_lens.rules`) are
spliced in with TransformerLens hooks:

1. LN rule: every ``*.hook_scale`` (each block's norms, post-norms, MLP-internal norms, ``ln_final``)
   returns ``scale.detach()``.
2. Gated MLPs (``hook_pre``, ``hook_pre_linear``, ``hook_post``): the live ``hook_pre`` and
   ``hook_pre_linear`` values are remembered; at ``hook_post`` the forward value is kept and the gradient
   is routed through ``HalfRule(IdentityRule(pre, f(pre)), pre_linear) + b_in``.
3. Plain MLPs: ``hook_post`` (or ``hook_mid`` for activations followed by an MLP-internal norm) becomes
   ``IdentityRule(hook_pre, value)``.
4. AH rule (``attention=True``): every ``*.hook_pattern`` returns ``pattern.detach()``.

Hooks live in a ``model.hooks()`` context of their own, so they are removed on exit, exception or not, and
hooks the user already had stay untouched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from transformer_lens import HookedTransformer

from relp_lens.rules import DEFAULT_EPS, ForwardAs, HalfRule, IdentityRule, ah_rule, ln_rule


@dataclass(frozen=True)
class RelPConfig:
    """Which RelP rules are on. Defaults are the paper's RelP set (attention gradient left as is)."""

    ln: bool = True
    identity: bool = True
    half: bool = True
    attention: bool = False
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")


def _mlp_hooks(model: HookedTransformer, cfg: RelPConfig) -> list[tuple[str, object]]:
    hooks: list[tuple[str, object]] = []
    if not (cfg.identity or cfg.half):
        return hooks
    for layer, block in enumerate(getattr(model, "blocks", [])):
        mlp = getattr(block, "mlp", None)
        if mlp is None or not hasattr(mlp, "hook_post") or not hasattr(mlp, "hook_pre"):
            continue  # attention-only block, or an MLP type without neuron hooks (e.g. MoE)
        live: dict[str, object] = {}

        def remember(key: str, live=live):
            def hook(x, hook):  # x: [batch, pos, d_mlp]
                live[key] = x

            return hook

        name = f"blocks.{layer}.mlp"
        gated = hasattr(mlp, "hook_pre_linear") and getattr(mlp, "hook_mid", None) is None
        hooks.append((f"{name}.hook_pre", remember("pre")))
        if gated:
            hooks.append((f"{name}.hook_pre_linear", remember("lin")))

            def gated_post(post, hook, live=live, act_fn=mlp.act_fn, b_in=mlp.b_in):
                pre, lin = live.pop("pre"), live.pop("lin")
                act = act_fn(pre)
                if cfg.identity:
                    act = IdentityRule.apply(pre, act, cfg.eps)
                surrogate = HalfRule.apply(act, lin) if cfg.half else act * lin
                return ForwardAs.apply(post, surrogate + b_in)

            hooks.append((f"{name}.hook_post", gated_post))
        elif cfg.identity:
            # with an MLP-internal norm (SoLU-LN) the activation is hook_mid; otherwise hook_post
            target = "hook_mid" if getattr(mlp, "hook_mid", None) is not None else "hook_post"

            def act_out(y, hook, live=live):
                return IdentityRule.apply(live.pop("pre"), y, cfg.eps)

            hooks.append((f"{name}.{target}", act_out))
    return hooks


def relp_hooks(model: HookedTransformer, cfg: RelPConfig | None = None) -> list[tuple[str, object]]:
    """The ``(hook_name, hook_fn)`` pairs that implement RelP on ``model``, for ``model.hooks()``."""
    cfg = cfg or RelPConfig()
    hooks: list[tuple[str, object]] = []
    names = list(model.hook_dict)
    if cfg.ln:
        hooks += [(n, lambda x, hook: ln_rule(x)) for n in names if n.endswith("hook_scale")]
    if cfg.attention:
        hooks += [(n, lambda x, hook: ah_rule(x)) for n in names if n.endswith("hook_pattern")]
    hooks += _mlp_hooks(model, cfg)
    return hooks


@contextlib.contextmanager
def relp(
    model: HookedTransformer,
    *,
    ln: bool = True,
    identity: bool = True,
    half: bool = True,
    attention: bool = False,
    eps: float = DEFAULT_EPS,
) -> Iterator[HookedTransformer]:
    """Context manager: backward passes of ``model`` follow the RelP rules; forward is unchanged.

    Args:
        ln: LN rule (norm scales constant).
        identity: identity rule for elementwise activations (``∂f(x)/∂x → f(x)/x``).
        half: half rule for gated products (each factor gets half the gradient).
        attention: AH rule (attention patterns constant); off in the paper's RelP default.
        eps: ``|x|`` below which the identity rule's denominator is clamped to ``±eps``.

    Example::

        with relp_lens.relp(model):
            logits = model(tokens)
            logits[0, -1, answer].backward()
    """
    cfg = RelPConfig(ln=ln, identity=identity, half=half, attention=attention, eps=eps)
    with model.hooks(fwd_hooks=relp_hooks(model, cfg)):
        yield model


def embedding_relevance(model: HookedTransformer, tokens, target: int, *, position: int = -1,
                        **rules) -> tuple[float, float]:
    """``(logit, Σ embedding · ∇̃ logit)`` for ``tokens`` [1, pos] in RelP mode with ``rules``.

    The outputs of ``hook_embed`` (and ``hook_pos_embed`` where present) are the graph's inputs. With all
    rules and the AH rule on a bias-free model the two numbers are equal: relevance is conserved.
    """
    store = []

    def leaf(x, hook):
        x = x.detach().requires_grad_(True)
        store.append(x)
        return x

    embed_hooks = [(n, leaf) for n in ("hook_embed", "hook_pos_embed") if n in model.hook_dict]
    with torch.enable_grad(), relp(model, **rules), model.hooks(fwd_hooks=embed_hooks):
        logit = model(tokens)[0, position, target]
        grads = torch.autograd.grad(logit, store)
    return logit.item(), sum((x * g).sum() for x, g in zip(store, grads)).item()
