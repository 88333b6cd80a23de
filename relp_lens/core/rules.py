"""The RelP propagation rules, as autograd functions whose forward value is untouched.

RelP (Jafari et al. 2025; Arora et al. 2026) back-propagates through a *locally linear replacement* of the
model. Each rule below changes only the backward pass:

1. LN rule — a normalisation ``y = x / s(x) * w`` treats its scale ``s`` as a constant:
   ``∂y/∂x = w / s``.  (:func:`ln_rule`)
2. Identity rule — an elementwise activation ``y = f(x)`` is read as ``y = (f(x)/x) · x`` with the ratio
   constant: ``∂y/∂x = f(x)/x``. Where ``|x| < eps`` the ratio is ``f(x)/(±eps)`` (same sign as x, + at 0),
   so it stays finite; the relevance it passes there is at most ``|f(x)|``. The ratio is computed and
   kept in (at least) float32 and the gradient cast back to its dtype, so half-precision models neither
   overflow nor lose the ``eps`` clamp (``1e-6`` is a float16 subnormal).  (:class:`IdentityRule`)
3. Half rule — a gated product ``h = a · b`` gives each factor half of the gradient:
   ``∂h/∂a = b/2``, ``∂h/∂b = a/2``. For ``h`` homogeneous of degree 2 in the input this conserves
   relevance: ``a·∂h/∂a + b·∂h/∂b = h``.  (:class:`HalfRule`)
4. AH rule (optional) — attention patterns are constants: ``pattern.detach()``.  (:func:`ah_rule`)

With all four on, a bias-free model is a linear function of its input embeddings in the backward pass,
so relevance is conserved: ``Σ embedding · ∇̃ logit = logit``.

:class:`ForwardAs` returns a live forward value while routing the gradient through a surrogate; it is
how the rules are spliced into a model through hooks without changing a single bit of the forward pass.
"""

from __future__ import annotations

import torch

DEFAULT_EPS = 1e-6


def ln_rule(scale: torch.Tensor) -> torch.Tensor:
    """LN rule: the normalisation scale ``[batch, pos, 1]`` becomes a constant in backward."""
    return scale.detach()


def ah_rule(pattern: torch.Tensor) -> torch.Tensor:
    """AH rule: attention pattern ``[batch, head, q_pos, k_pos]`` becomes a constant in backward."""
    return pattern.detach()


def safe_denominator(x: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``x`` with values in ``(-eps, eps)`` pushed out to ``±eps`` (``+eps`` at exactly 0).

    Use it in float32 or wider: in float16 ``eps = 1e-6`` is a subnormal that does not round-trip.
    """
    # branch-free (torch.where over a bool mask costs ~7x these passes on the CPU): |x| · sign is x bit for bit
    # where |x| >= eps
    sign = x.sign().add_(0.5).sign_()  # ±1, +1 at ±0 (NaN stays NaN)
    return x.abs().clamp_(min=eps).mul_(sign)


def identity_ratio(x: torch.Tensor, y: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``y / x`` with the ``eps`` clamp, in (at least) float32: half-precision inputs come back float32."""
    wide = torch.promote_types(y.dtype, torch.float32)
    return y.to(wide) / safe_denominator(x.to(wide), eps)


# The functions below use the ``setup_context`` form with ``generate_vmap_rule`` so that their backward
# passes can be vectorised (``torch.autograd.grad(..., is_grads_batched=True)``, used by edge attribution).


class IdentityRule(torch.autograd.Function):
    """``y = f(x)`` with backward ``∂y/∂x = y / x`` (identity rule). Forward returns ``y`` as is.

    ``x`` gets the gradient; ``y`` gets none. For half-precision tensors the ratio is kept in float32.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, y: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
        return y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, y, eps = inputs
        ratio = identity_ratio(x.detach(), y.detach(), eps)
        ctx.save_for_backward(ratio)
        ctx.save_for_forward(ratio)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors  # float32 for half-precision models
        return (grad.to(ratio.dtype) * ratio).to(grad.dtype), None, None

    @staticmethod
    def jvp(ctx, tx, ty, teps):  # forward mode: the same linear map, dy = (y/x)·dx
        (ratio,) = ctx.saved_tensors
        return (tx.to(ratio.dtype) * ratio).to(tx.dtype) if tx is not None else torch.zeros_like(ratio)


class HalfRule(torch.autograd.Function):
    """``h = a · b`` with backward ``∂h/∂a = b/2``, ``∂h/∂b = a/2`` (half rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        a, b = inputs
        ctx.save_for_backward(a.detach(), b.detach())
        ctx.save_for_forward(a.detach(), b.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        return 0.5 * grad * b, 0.5 * grad * a

    @staticmethod
    def jvp(ctx, ta, tb):  # forward mode: dh = (da·b + a·db) / 2, the transpose of the backward
        a, b = ctx.saved_tensors
        out = torch.zeros(torch.broadcast_shapes(a.shape, b.shape), dtype=a.dtype, device=a.device)
        if ta is not None:
            out = out + 0.5 * ta * b
        if tb is not None:
            out = out + 0.5 * a * tb
        return out


class GatedRule(torch.autograd.Function):
    """A gated MLP's ``value = f(pre) · lin (+ b_in)`` with the identity rule on ``f`` and the half rule on the
    product, fused: forward returns ``value`` as is; backward gives ``pre`` ``½ · grad · lin · f(pre)/pre`` and
    ``lin`` ``½ · grad · f(pre)`` — bit for bit what ``ForwardAs(value, HalfRule(IdentityRule(pre, f(pre)), lin))``
    gives (the same operations in the same order), in one autograd node without the surrogate's forward work.

    ``act``: ``f(pre)``, computed by the caller without a graph. The ratio is kept in (at least) float32, as
    :class:`IdentityRule` keeps it. ``value`` gets no gradient (nor does a bias inside it).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(value: torch.Tensor, pre: torch.Tensor, lin: torch.Tensor, act: torch.Tensor,
                eps: float = DEFAULT_EPS) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, pre, lin, act, eps = inputs
        ratio = identity_ratio(pre.detach(), act, eps)  # f(pre)/pre, float32 or wider
        ctx.save_for_backward(ratio, lin.detach(), act)
        ctx.save_for_forward(ratio, lin.detach(), act)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ratio, lin, act = ctx.saved_tensors
        half = 0.5 * grad  # the half rule's factor, then the identity rule's ratio, as the composed rules
        return None, ((half * lin).to(ratio.dtype) * ratio).to(grad.dtype), half * act, None, None

    @staticmethod
    def jvp(ctx, tvalue, tpre, tlin, tact, teps):  # forward mode: the same linear map, as the composed rules
        ratio, lin, act = ctx.saved_tensors
        out = torch.zeros(torch.broadcast_shapes(act.shape, lin.shape), dtype=act.dtype, device=act.device)
        if tpre is not None:
            out = out + 0.5 * (tpre.to(ratio.dtype) * ratio).to(tpre.dtype) * lin
        if tlin is not None:
            out = out + 0.5 * act * tlin
        return out


class ForwardAs(torch.autograd.Function):
    """Forward: ``value`` bit for bit. Backward: the whole gradient goes to ``surrogate``.

    ``surrogate`` must have ``value``'s shape and be computed from the same inputs; ``value`` gets no
    gradient, so the model's own backward path to ``value`` is replaced by the surrogate's.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad

    @staticmethod
    def jvp(ctx, tvalue, tsurrogate):  # forward mode follows the surrogate too
        return tsurrogate.clone() if tsurrogate is not None else torch.zeros_like(tvalue)
