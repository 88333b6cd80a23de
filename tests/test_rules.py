"""Each RelP rule's gradient equals its hand formula, on random tensors and on TransformerLens modules."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedTransformerConfig
from transformer_lens.components import LayerNorm, RMSNorm
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.components.mlps.mlp import MLP
from transformer_lens.hook_points import HookedRootModule

from relp_lens import relp
from relp_lens.core.rules import ForwardAs, GatedRule, HalfRule, IdentityRule, ah_rule, ln_rule, safe_denominator

torch.manual_seed(0)


def test_identity_rule_gradient_is_f_over_x():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 7, dtype=torch.float64)
    y = F.silu(x)
    out = IdentityRule.apply(x, y, 1e-6)
    assert torch.equal(out, y)  # forward untouched
    (grad,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(grad, g * F.silu(x) / x)
    # and it is not the true derivative
    (true,) = torch.autograd.grad(F.silu(x), x, g)
    assert not torch.allclose(grad, true)


def test_identity_rule_stable_at_zero():
    x = torch.tensor([0.0, 1e-9, -1e-9, 0.5], requires_grad=True)
    y = F.gelu(x)
    (grad,) = torch.autograd.grad(IdentityRule.apply(x, y, 1e-6), x, torch.ones(4))
    assert torch.isfinite(grad).all()
    expected = y.detach() / torch.tensor([1e-6, 1e-6, -1e-6, 0.5])
    torch.testing.assert_close(grad, expected)
    assert safe_denominator(torch.tensor([0.0]))[0] == 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_identity_rule_half_precision(dtype):
    """The ratio is taken in float32: no overflow to inf (or inf·0 = NaN) and the ±eps clamp stays exact."""
    x = torch.tensor([0.0, 5e-7, -5e-7, 3e-5, 0.5, 0.0], dtype=dtype, requires_grad=True)
    y = torch.tensor([0.1, 2e-7, -3e-7, 1.5e-5, 0.3, 0.2], dtype=dtype)  # y/x reaches 2e5 > float16's max
    g = torch.tensor([1e-3, 1.0, 1.0, 1.0, 1.0, 0.0], dtype=dtype)
    out = IdentityRule.apply(x, y, 1e-6)
    assert torch.equal(out, y)
    (grad,) = torch.autograd.grad(out, x, g)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    denom = x.detach().float()
    denom[[0, 1, 2, 5]] = torch.tensor([1e-6, 1e-6, -1e-6, 1e-6])  # |x| < eps: exactly ±1e-6
    expected = (g.float() * y.float() / denom).to(dtype)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)


def test_half_rule_splits_gradient_evenly_and_conserves():
    a = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 6, dtype=torch.float64)
    h = HalfRule.apply(a, b)
    assert torch.equal(h, a * b)
    ga, gb = torch.autograd.grad(h, (a, b), g)
    torch.testing.assert_close(ga, 0.5 * g * b)
    torch.testing.assert_close(gb, 0.5 * g * a)
    # relevance: a·∂ + b·∂ = g·h, split evenly
    torch.testing.assert_close(a * ga + b * gb, g * h)
    torch.testing.assert_close(a * ga, b * gb)


def test_forward_as_keeps_value_and_routes_gradient():
    v = torch.randn(3, requires_grad=True)
    s_in = torch.randn(3, requires_grad=True)
    out = ForwardAs.apply(v, 2 * s_in)
    assert torch.equal(out, v)
    gv, gs = torch.autograd.grad(out.sum(), (v, s_in), allow_unused=True)
    assert gv is None
    torch.testing.assert_close(gs, torch.full((3,), 2.0))


def test_ln_and_ah_rules_detach():
    s = torch.randn(2, 3, 1, requires_grad=True)
    assert not ln_rule(s).requires_grad and torch.equal(ln_rule(s), s)
    p = torch.rand(1, 2, 3, 3, requires_grad=True)
    assert not ah_rule(p).requires_grad and torch.equal(ah_rule(p), p)


# --- the rules spliced into real TransformerLens modules --------------------------------------------


class _Block(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp


class MLPHost(HookedRootModule):
    """A HookedRootModule holding one TL MLP at the path relp() expects (blocks.0.mlp)."""

    def __init__(self, mlp):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(mlp)])
        self.setup()

    def forward(self, x):
        return self.blocks[0].mlp(x)


class NormHost(HookedRootModule):
    def __init__(self, norm):
        super().__init__()
        self.norm = norm
        self.setup()

    def forward(self, x):
        return self.norm(x)


def _cfg(**kw):
    base = dict(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_mlp=12, act_fn="silu", dtype=torch.float64)
    base.update(kw)
    return HookedTransformerConfig(**base)


def _grads_at(host, x, names, g_out):
    """Gradients at hook points `names` for output cotangent g_out."""
    store = {}

    def keep(t, hook):
        store[hook.name] = t
    with host.hooks(fwd_hooks=[(n, keep) for n in names]):
        out = host(x)
        grads = torch.autograd.grad(out, [store[n] for n in names], g_out)
    return out, dict(zip(names, grads)), store


@pytest.mark.parametrize("act_fn", ["silu", "gelu"])
def test_gated_mlp_half_and_identity_rules(act_fn):
    mlp = GatedMLP(_cfg(act_fn=act_fn, gated_mlp=True))
    torch.nn.init.normal_(mlp.W_gate), torch.nn.init.normal_(mlp.W_in), torch.nn.init.normal_(mlp.W_out)
    host = MLPHost(mlp)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    g_out = torch.randn(2, 3, 8, dtype=torch.float64)
    names = ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear", "blocks.0.mlp.hook_post"]
    plain_out, plain, _ = _grads_at(host, x, names, g_out)
    with relp(host):
        out, g, acts = _grads_at(host, x, names, g_out)
    assert torch.equal(out, plain_out)
    pre, lin = acts[names[0]], acts[names[1]]
    g_post = g[names[2]]
    f = mlp.act_fn(pre)
    torch.testing.assert_close(g[names[0]], 0.5 * g_post * lin * f / pre)  # half × identity
    torch.testing.assert_close(g[names[1]], 0.5 * g_post * f)  # half
    assert not torch.allclose(g[names[0]], plain[names[0]])
    # each rule can be switched off
    with relp(host, half=False):
        _, g2, _ = _grads_at(host, x, names, g_out)
    torch.testing.assert_close(g2[names[0]], g_post * lin * f / pre)
    torch.testing.assert_close(g2[names[1]], g_post * f)
    with relp(host, identity=False):
        _, g3, _ = _grads_at(host, x, names, g_out)
    pre_leaf = pre.detach().requires_grad_(True)
    (fprime,) = torch.autograd.grad(mlp.act_fn(pre_leaf).sum(), pre_leaf)
    torch.testing.assert_close(g3[names[0]], 0.5 * g_post * lin * fprime)
    with relp(host, identity=False, half=False):
        _, g4, _ = _grads_at(host, x, names, g_out)
    torch.testing.assert_close(g4[names[0]], plain[names[0]])


def test_plain_mlp_identity_rule():
    mlp = MLP(_cfg(act_fn="gelu"))
    torch.nn.init.normal_(mlp.W_in), torch.nn.init.normal_(mlp.W_out)
    host = MLPHost(mlp)
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    g_out = torch.randn(2, 3, 8, dtype=torch.float64)
    names = ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post"]
    with relp(host):
        _, g, acts = _grads_at(host, x, names, g_out)
    pre = acts[names[0]]
    torch.testing.assert_close(g[names[0]], g[names[1]] * F.gelu(pre) / pre)


def _norm_case(cls, normalization_type):
    """A norm with random weights in a host, an input requiring grad and an output cotangent."""
    norm = cls(_cfg(normalization_type=normalization_type))
    with torch.no_grad():
        norm.w.copy_(torch.randn(8, dtype=torch.float64))
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    return norm, NormHost(norm), x, torch.randn(2, 3, 8, dtype=torch.float64)


def test_rms_norm_ln_rule():
    norm, host, x, g = _norm_case(RMSNorm, "RMS")
    with relp(host):
        y = host(x)
        (gx,) = torch.autograd.grad(y, x, g)
    s = (x.detach().pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    torch.testing.assert_close(gx, g * norm.w / s)  # ∂y/∂x = w / s with s constant
    torch.testing.assert_close((gx * x).sum(-1), (g * y).sum(-1))  # linear: conserves relevance


def test_layer_norm_ln_rule():
    norm, host, x, g = _norm_case(LayerNorm, "LN")
    with relp(host):
        (gx,) = torch.autograd.grad(host(x), x, g)
    xc = x.detach() - x.detach().mean(-1, keepdim=True)
    s = (xc.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    gw = g * norm.w
    torch.testing.assert_close(gx, (gw - gw.mean(-1, keepdim=True)) / s)  # centring is still differentiated
    with relp(host, ln=False):
        (gx_plain,) = torch.autograd.grad(host(x), x, g)
    assert not torch.allclose(gx, gx_plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gated_rule_equals_the_composed_rules(dtype):
    """The fused gated rule passes the gradients of ForwardAs(value, HalfRule(IdentityRule(pre, f(pre)), lin)),
    bit for bit, in backward, batched backward (vmap) and forward mode, and returns the value as is."""
    torch.manual_seed(0)
    pre = torch.randn(3, 5, 7, dtype=dtype)
    pre[0, 0, :3] = torch.tensor([0.0, 1e-8, -1e-8])  # inside the eps clamp
    lin = torch.randn(3, 5, 7, dtype=dtype)
    value = torch.nn.functional.silu(pre) * lin
    seeds = torch.randn(4, 3, 5, 7, dtype=dtype)

    def composed(p, l):
        return ForwardAs.apply(value, HalfRule.apply(IdentityRule.apply(p, torch.nn.functional.silu(p), 1e-6), l))

    def fused(p, l):
        return GatedRule.apply(value, p, l, torch.nn.functional.silu(p.detach()), 1e-6)

    grads = []
    for fn in (composed, fused):
        p, l = pre.clone().requires_grad_(True), lin.clone().requires_grad_(True)
        out = fn(p, l)
        assert torch.equal(out, value)
        grads.append(torch.autograd.grad(out, (p, l), seeds, is_grads_batched=True))
        _, tangent = torch.func.jvp(fn, (pre, lin), (seeds[0], seeds[1]))
        grads.append((tangent,))
    for a, b in zip(grads[0] + grads[1], grads[2] + grads[3]):
        assert a.dtype == b.dtype == dtype
        assert torch.equal(a, b)
    assert grads[0][0][:, 0, 0, 1:3].isfinite().all() and (grads[0][0][:, 0, 0, 1:3] != 0).all()  # clamped, finite
