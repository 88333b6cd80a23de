"""The model's structure, checked on the model: the identities edges, input/output edges and head splits rely on.

Edges read a neuron's effect at ``hook_mlp_out`` as ``a · W_out[neuron]`` (through the norm after the MLP,
where there is one), hold an MLP constant by holding its ``hook_mlp_out``, read input edges at the embedding
and split attention by its heads' ``hook_z``. Whether a model keeps those identities is measured on the model,
not read from its module names (TransformerLens 3.9 names OLMo 2's post-MLP norm ``ln2``, 4.x ``ln2_post``):

1. **What is checked.** Per block, recomputed in float32 and compared position by position: ``mlp_out``
   (``hook_mlp_out = hook_post @ W_out + b_out``), ``mlp_resid`` (``hook_mlp_out`` is added to the residual
   stream as is), ``gated`` (a gated MLP's ``hook_post = f(hook_pre) · hook_pre_linear``, what the RelP rules
   differentiate), ``attn_out`` (``hook_attn_out = hook_z @ W_O + b_O``), ``attn_resid`` (``hook_attn_out`` is
   added to the residual stream as is); once, ``embed`` (the embedding, up to one scale, is the first residual
   stream). Where the model has an RMSNorm ``ln2_post`` after the MLP (``ln1_post`` after attention; Gemma 2/3
   on both backends), ``mlp_out`` is read through it — ``hook_mlp_out = w ⊙ (hook_post @ W_out + b_out) / r``
   with ``w`` its weight as applied (:func:`relp_lens.core.backends.norm_weight`) and ``r`` its ``hook_scale``
   — and ``attn_out`` likewise; :func:`post_normed` lists the sublayers read so. :func:`structure_report`
   lists the identities a model breaks, one :class:`Broken` each.
2. **How it is measured.** One small forward pass under ``torch.no_grad()`` in eval mode on fixed tokens, with
   capture hooks that change nothing and are removed on exit; the comparison is :func:`mismatch` (largest
   relative difference over positions) against :func:`tolerance` (by dtype). The weights and activations come
   from :mod:`relp_lens.core.backends`, so both backends are measured the same way.
3. **When.** :func:`check_structure` (and :func:`check_neuron_directions`, its MLP part) run before edges,
   input/output edges and head splits; they ask only for the identities their caller relies on.
4. **Cached.** The verdict is kept per model object (a ``WeakKeyDictionary``) with a fingerprint of every
   parameter's in-place version and every module's forward hooks: it is measured again only after a change
   that could move it (an in-place weight edit, a hook added or removed).
5. **What the messages say.** A refusal is a :class:`RelPLensError` naming what the caller relies on, the
   layer, the hook, the formula it is not, the relative mismatch and, where the compared value is a norm of
   the sublayer's output, "a norm after the MLP / attention" that relp_lens cannot read through; "(and N more
   layers)" where other layers break the same identity; then "Refused rather than giving wrong numbers".
6. **Reading through a post-norm.** :class:`MLPPostNorms` takes a gradient at ``hook_mlp_out`` to the MLP's
   output before its norm (and a tangent the other way) with the norm's Jacobian on the caller's forward
   pass: ``diag(w / r)`` where the LN rule freezes ``r``, the full Jacobian otherwise (grad method).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any

import torch

from relp_lens.core import backends
from relp_lens.core.errors import RelPLensError
from relp_lens.core.nodes import POST_NORMS, block_hook, post_norm_hook, resid_pre

_NEEDS = {
    "mlp_out": "neuron edges read a neuron's effect as a·W_out[neuron] at hook_mlp_out, or through an RMSNorm "
               "after the MLP (ln2_post)",
    "mlp_resid": "edges hold an MLP constant by holding its hook_mlp_out, which must be what the MLP adds to "
                 "the residual stream",
    "gated": "the RelP rules differentiate hook_post as f(hook_pre) · hook_pre_linear",
    "embed": "input edges read the embedding at hook_embed (+ hook_pos_embed) as the first residual stream",
    "attn_out": "head splits read each head's share at attn.hook_z, which must be what attention writes (or "
                "what an RMSNorm after attention, ln1_post, makes of it)",
    "attn_resid": "head splits need attention's output to be added to the residual stream as is",
}
_NORM_AFTER_MLP = ("a norm after the MLP that relp_lens cannot read through (it reads an RMSNorm named ln2_post, "
                   "as in Gemma 2/3, not yet OLMo 2's under TransformerLens 3.9's name ln2, nor any other)")
_NORM_AFTER_ATTN = ("a norm after attention that relp_lens cannot read through (it reads an RMSNorm named ln1_post, "
                    "as in Gemma 2/3, not yet OLMo 2's under TransformerLens 3.9's name ln1, nor any other)")


@dataclasses.dataclass(frozen=True)
class Broken:
    """One identity that failed on the model's forward pass.

    ``identity``: its kind (a key of ``_NEEDS``); ``layer``: the block (``None`` for the embedding);
    ``hook``/``formula``: what was compared with what; ``mismatch``: the largest relative difference over
    positions; ``kind``: what sort of model does this (``""`` when unknown).
    """

    identity: str
    layer: int | None
    hook: str
    formula: str
    mismatch: float
    kind: str = ""

    def message(self) -> str:
        """``"at layer 3, blocks.3.hook_mlp_out is not … (relative mismatch 0.97): a norm after the MLP, …"``."""
        where = "the embedding" if self.layer is None else f"layer {self.layer}"
        text = f"at {where}, {self.hook} is not {self.formula}"
        if self.mismatch == self.mismatch:  # not NaN: a measured mismatch
            text += f" (relative mismatch {self.mismatch:.3g})"
        return text + (f": {self.kind}" if self.kind else "")


_STRUCTURE_CACHE: "weakref.WeakKeyDictionary[Any, tuple[tuple, list[Broken], frozenset]]" = weakref.WeakKeyDictionary()
_CHECK_TOKENS = 6


def _fingerprint(model: Any) -> tuple:
    """What the verdict depends on: every parameter (and its in-place version) and every forward hook."""
    def version(p):
        try:
            return p._version
        except RuntimeError:  # an inference tensor has no version counter
            return None

    params = tuple((id(p), version(p)) for p in model.parameters())
    fwd = tuple(k for m in model.modules() for k in getattr(m, "_forward_hooks", {}))
    return params, fwd


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of an identity recomputed in float32 from values of ``dtype``: 1e-3, or 1e-2 where
    CUDA matmuls may run in TF32 (~1e-3 relative error each); 3e-2 for half precision. A broken identity is off
    by far more (a norm after the MLP: O(1) to O(100), measured on OLMo 2 and Gemma 3).

    Args:
        dtype: the dtype of the values the identity was measured on.

    Returns:
        The largest :func:`mismatch` still counted as equal.
    """
    if dtype not in (torch.float32, torch.float64):
        return 3e-2
    tf32 = torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32
    return 1e-2 if tf32 else 1e-3


def mismatch(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max_t |got_t − want_t| / |want_t|`` over positions ``t`` (float32; ``[..., d]`` tensors), with
    ``|want_t|`` floored at 1% of its RMS over positions so a near-zero row does not dominate.

    Args:
        got: the value the model computed, ``[..., d]``.
        want: what the identity says it should be, ``[..., d]`` (moved to ``got``'s device).

    Returns:
        The largest relative difference over positions (0.0 for empty tensors).
    """
    if got.numel() == 0:  # e.g. an expert no token was routed to
        return 0.0
    got, want = got.float().reshape(-1, got.shape[-1]), want.float().to(got.device).reshape(-1, got.shape[-1])
    norms = want.norm(dim=-1)
    floor = 0.01 * norms.pow(2).mean().sqrt().clamp_min(1e-30)
    return float(((got - want).norm(dim=-1) / torch.maximum(norms, floor)).max())


def _is_norm_of(out: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``out ≈ w ⊙ norm(x) (+ b)`` for some per-feature ``w`` (RMSNorm or LayerNorm): what a norm
    after a sublayer does. ``out``, ``x``: ``[..., d]``."""
    out, x = out.float().reshape(-1, out.shape[-1]), x.float().to(out.device).reshape(-1, x.shape[-1])
    if out.shape[0] < 3:
        return False
    for centre in (False, True):
        xc = x - x.mean(-1, keepdim=True) if centre else x
        xn = xc / xc.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()  # [T, d]
        cols = [xn] + ([torch.ones_like(xn)] if centre else [])
        basis = torch.stack(cols, -1).transpose(0, 1)  # [d, T, k]: per feature, a least-squares fit over T
        fit = torch.linalg.lstsq(basis, out.T.unsqueeze(-1)).solution  # [d, k, 1]
        res = (basis @ fit).squeeze(-1).T - out
        if float(res.norm() / out.norm().clamp_min(1e-30)) < 1e-2:
            return True
    return False


def _W_O(model: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention's output projection of ``layer`` as ``([n_heads·d_head, d_model], b_O or None)``."""
    attn = model.blocks[layer].attn
    bias = getattr(attn.o, "bias", None) if backends.is_bridge(model) else getattr(attn, "b_O", None)
    return backends.W_O(model, layer), bias


def structure_report(model: Any) -> list[Broken]:
    """The identities ``model`` breaks, measured on one small forward pass (cached per model object).

    1. A forward pass under ``torch.no_grad()`` on :data:`_CHECK_TOKENS` fixed tokens (the tokenizer's BOS,
       then seeded random ids), up to the last block, with capture hooks that change nothing (removed on
       exit): the embedding hooks, every block's residual points, ``hook_attn_out``, ``attn.hook_z``,
       ``hook_mlp_out`` and the MLP's ``hook_pre``/``hook_pre_linear``/``hook_post``.
    2. Per block, recomputed in float32 and compared position by position (relative, :func:`mismatch`;
       tolerance 1e-3 for float32 models, 3e-2 for half precision):

       - ``mlp_out``: ``hook_mlp_out = hook_post @ W_out (+ b_out)``, or ``w ⊙ (hook_post @ W_out (+ b_out)) / r``
         with the block's ``ln2_post`` weight ``w`` and ``hook_scale`` ``r`` (captured too);
       - ``mlp_resid``: ``hook_resid_post = hook_resid_mid + hook_mlp_out`` (parallel blocks:
         ``hook_resid_pre + hook_attn_out + hook_mlp_out``);
       - ``gated`` (gated MLPs): ``hook_post = f(hook_pre) · hook_pre_linear (+ b_in)`` with the activation
         the RelP rules use (:func:`relp_lens.core.backends.gated_act_fn`);
       - ``attn_out``: ``hook_attn_out = hook_z @ W_O (+ b_O)``, or that through ``ln1_post`` likewise;
       - ``attn_resid``: ``hook_resid_mid = hook_resid_pre + hook_attn_out``;
       - ``embed`` (once): ``blocks.0.hook_resid_pre = c · (hook_embed + hook_pos_embed)`` for one scalar
         ``c`` (Gemma's √d_model scaling may sit on either side of the hook).
    3. A failure where the compared value is a norm of the sublayer's output (:func:`_is_norm_of`) is named
       as a norm after the MLP / attention. An MLP without the hooks or weights of step 1 (a mixture of
       experts, an attention-only block) is reported as breaking ``mlp_out``.

    The verdict is cached in a ``WeakKeyDictionary`` keyed by the model, with every parameter's in-place
    version and every module's forward hooks: it is measured again only after a change that could move it.

    Returns:
        The failures, in block order (empty when the model keeps every identity).
    """
    return _measured(model)[0]


def post_normed(model: Any) -> frozenset[tuple[str, int]]:
    """The sublayers whose output the model passes through an RMSNorm before adding it to the residual stream,
    and that relp_lens reads through (measured with :func:`structure_report`, cached alike).

    Args:
        model: a HookedTransformer or a TransformerBridge.

    Returns:
        ``("mlp", L)`` where ``hook_mlp_out = w ⊙ x / scale`` with ``x = hook_post @ W_out + b_out``, ``w`` the
        weight of ``blocks.L.ln2_post`` as applied and ``scale`` its ``hook_scale``; ``("attn", L)`` likewise
        for ``hook_attn_out`` and ``ln1_post`` (Gemma 2/3: every block has both).
    """
    return _measured(model)[1]


def _measured(model: Any) -> tuple[list[Broken], frozenset[tuple[str, int]]]:
    key = _fingerprint(model)
    hit = _STRUCTURE_CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1], hit[2]
    broken, post = _measure(model)
    _STRUCTURE_CACHE[model] = (key, broken, post)
    return broken, post


def _measure(model: Any) -> tuple[list[Broken], frozenset[tuple[str, int]]]:
    hook_dict = model.hook_dict  # a bridge builds this dict anew on every access: read it once
    n_layers = model.cfg.n_layers
    names = ["hook_embed", "hook_pos_embed"]
    for l in range(n_layers):
        names += [block_hook(l, h) for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                                             "attn.hook_z", "hook_mlp_out", "mlp.hook_pre", "mlp.hook_pre_linear",
                                             "mlp.hook_post")]
        names += [post_norm_hook(l, sub, "hook_scale") for sub in POST_NORMS]
    names = [n for n in names if n in hook_dict]
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or _CHECK_TOKENS)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(int(model.cfg.d_vocab), (1, min(_CHECK_TOKENS, n_ctx)), generator=g)
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if bos is not None and 0 <= int(bos) < int(model.cfg.d_vocab):
        ids[0, 0] = int(bos)
    training = model.training  # dropout would blur every identity: measured in eval mode, the mode restored
    model.eval()
    try:
        _, got = backends.capture(model, ids, names, stop_at_layer=n_layers)
    finally:
        model.train(training)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    tol = tolerance(dtype)
    broken: list[Broken] = []
    read_through: set[tuple[str, int]] = set()

    def through_post_norm(sublayer, layer, value, raw, formula):
        """``raw`` through the block's norm after ``sublayer`` (``w ⊙ raw / scale``, the scale the forward
        computed) where the model has one and that is what it adds; ``raw`` itself otherwise."""
        scale = got.get(post_norm_hook(layer, sublayer, "hook_scale"))
        norm = getattr(model.blocks[layer], POST_NORMS[sublayer], None)
        w = None if norm is None or scale is None else backends.norm_weight(model, norm)
        if w is None or mismatch(value, raw) <= tol:
            return raw, formula
        normed = raw * w.float().to(raw.device) / scale.float().to(raw.device)
        if mismatch(value, normed) > tol:
            return raw, formula
        read_through.add((sublayer, layer))
        return normed, f"{POST_NORMS[sublayer]}({formula})"

    def compare(identity, layer, hook, formula, value, want, kind_if_norm, sublayer_out=None):
        # a model split over devices (n_devices, device_map) may fire a block's hooks on different devices
        want = want.to(value.device)
        sublayer_out = None if sublayer_out is None else sublayer_out.to(value.device)
        mism = mismatch(value, want)
        if mism > tol:
            kind = kind_if_norm if sublayer_out is not None and _is_norm_of(value - (want - sublayer_out),
                                                                            sublayer_out) else ""
            broken.append(Broken(identity, layer, hook, formula, mism, kind))

    # the embedding is the first residual stream (up to one scale)
    emb = [got[h] for h in ("hook_embed", "hook_pos_embed") if h in got]
    first = got.get(resid_pre(0))
    if emb and first is not None:
        e = sum(x.float().to(first.device) for x in emb)
        c = float((first.float() * e).sum() / e.pow(2).sum().clamp_min(1e-30))
        compare("embed", None, resid_pre(0), "c · (hook_embed + hook_pos_embed)", first, c * e, "")
    else:
        broken.append(Broken("embed", None, resid_pre(0), "hook_embed (+ hook_pos_embed)",
                             float("nan"), "the embedding hooks did not fire"))
    for l in range(n_layers):
        b = f"blocks.{l}"  # the block's module path (mlp below); its hooks by name_of
        name_of = functools.partial(block_hook, l)
        pre, mid, post = (got.get(name_of(h)) for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"))
        attn_out, mlp_out, z = (got.get(name_of(h)) for h in ("hook_attn_out", "hook_mlp_out", "attn.hook_z"))
        # attention: its output is z @ W_O (+ b_O), added to the residual stream as is
        if z is not None and attn_out is not None:
            w, bias = _W_O(model, l)
            want = z.float().reshape(*z.shape[:2], -1) @ w.float().to(z.device)
            if bias is not None:
                want = want + bias.float().to(want.device)
            normed, formula = through_post_norm("attn", l, attn_out, want, "attn.hook_z @ W_O + b_O")
            compare("attn_out", l, name_of("hook_attn_out"), formula, attn_out, normed, _NORM_AFTER_ATTN, want)
        if pre is not None and mid is not None and attn_out is not None:
            compare("attn_resid", l, name_of("hook_resid_mid"), "hook_resid_pre + hook_attn_out", mid,
                    pre.float().to(mid.device) + attn_out.float().to(mid.device), _NORM_AFTER_ATTN, attn_out)
        # the MLP: hook_mlp_out = hook_post @ W_out (+ b_out), added to the residual stream as is
        mlp = getattr(model.blocks[l], "mlp", None)
        hp = got.get(name_of("mlp.hook_post"))
        if mlp is None or hp is None or mlp_out is None:
            what = "no MLP" if mlp is None else f"a {type(mlp).__name__} without neuron hooks (hook_post)"
            broken.append(Broken("mlp_out", l, name_of("hook_mlp_out"), "hook_post @ W_out + b_out", float("nan"),
                                 f"block {l} has {what}"))
            continue
        try:
            w_out = backends.W_out(model, l)
        except (RelPLensError, AttributeError) as err:
            broken.append(Broken("mlp_out", l, name_of("hook_mlp_out"), "hook_post @ W_out + b_out", float("nan"),
                                 f"{b}.mlp ({type(mlp).__name__}) has no usable W_out ({err})"))
            continue
        down = hp.float() @ w_out.float().to(hp.device)  # [batch, pos, d_model]
        b_out = _mlp_bias(model, mlp, "out")
        if b_out is not None:
            down = down + b_out.float().to(down.device)
        normed, formula = through_post_norm("mlp", l, mlp_out, down, "mlp.hook_post @ W_out + b_out")
        compare("mlp_out", l, name_of("hook_mlp_out"), formula, mlp_out, normed, _NORM_AFTER_MLP, down)
        if post is not None:
            here = post.device
            base = mid.float().to(here) if mid is not None else (
                pre.float().to(here) + attn_out.float().to(here) if pre is not None and attn_out is not None else None)
            if base is not None:
                compare("mlp_resid", l, name_of("hook_resid_post"),
                        "hook_resid_mid + hook_mlp_out" if mid is not None else
                        "hook_resid_pre + hook_attn_out + hook_mlp_out", post, base + mlp_out.float().to(here),
                        _NORM_AFTER_MLP, mlp_out)
        gate, lin = got.get(name_of("mlp.hook_pre")), got.get(name_of("mlp.hook_pre_linear"))
        if gate is not None and lin is not None and getattr(mlp, "hook_mid", None) is None:
            try:
                act = backends.gated_act_fn(model, mlp, f"{b}.mlp")
            except RelPLensError as err:
                broken.append(Broken("gated", l, name_of("mlp.hook_post"), "f(hook_pre) · hook_pre_linear",
                                     float("nan"), str(err)))
                continue
            want = act(gate).float() * lin.float()
            b_in = backends.gated_post_bias(model, mlp)
            if b_in is not None:
                want = want + b_in.float().to(want.device)
            compare("gated", l, name_of("mlp.hook_post"), "f(hook_pre) · hook_pre_linear", hp, want, "")
    return broken, frozenset(read_through)


def _mlp_bias(model: Any, mlp: Any, which: str) -> torch.Tensor | None:
    """The MLP's ``b_out`` (``which="out"``): HookedTransformer's parameter, or the bridge's ``out`` bias."""
    if not backends.is_bridge(model):
        return getattr(mlp, f"b_{which}", None)
    sub = getattr(mlp, which, None)
    bias = getattr(sub, "bias", None) if sub is not None else None
    if bias is None and sub is not None:
        bias = getattr(getattr(sub, "original_component", None), "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def check_neuron_directions(model: Any) -> None:
    """Refuse a model on which neuron edges would come out wrong.

    Edges of neurons read a neuron's effect at ``hook_mlp_out`` as ``a · W_out[neuron]`` and hold an MLP
    constant by holding its ``hook_mlp_out``: every MLP's ``hook_mlp_out`` must be ``hook_post @ W_out + b_out``,
    or that through the RMSNorm ``ln2_post`` (Gemma 2/3; read through with :class:`MLPPostNorms`), and be added
    to the residual stream as is (and a gated MLP's ``hook_post`` must be ``f(hook_pre) · hook_pre_linear``,
    what the RelP rules differentiate). Checked numerically on the model (:func:`check_structure`), not read
    from its module names: models with another norm after the MLP (OLMo 2's on TransformerLens 3.9, named
    ``ln2``) are refused with the layer and the mismatch named.

    Args:
        model: a HookedTransformer or a TransformerBridge.
    """
    check_structure(model, mlp=True)


def check_structure(model: Any, *, mlp: bool = True, embed: bool = False, heads: bool = False) -> None:
    """Raise :class:`RelPLensError` when ``model`` breaks an identity the caller relies on.

    The identities are measured by :func:`structure_report` (one small forward, cached per model).

    Args:
        model: a HookedTransformer or a TransformerBridge.
        mlp: the MLP identities neuron edges rely on (``mlp_out``, ``mlp_resid``, ``gated``).
        embed: the embedding is the first residual stream (``embed``; input edges).
        heads: attention writes to the residual stream only through its heads' ``hook_z`` (``attn_out``,
            ``attn_resid``; head splits).
    """
    kinds = (("mlp_out", "mlp_resid", "gated") if mlp else ()) + (("embed",) if embed else ()) + \
        (("attn_out", "attn_resid") if heads else ())
    report = structure_report(model)
    broken = [b for b in report if b.identity in kinds]
    if broken:
        first = broken[0]
        more = len({b.layer for b in broken if b.identity == first.identity}) - 1
        raise RelPLensError(f"this model breaks an identity relp_lens relies on ({_NEEDS[first.identity]}): "
                            f"{first.message()}" + (f" (and {more} more layer{'s' * (more > 1)})" if more else "")
                            + ". Refused rather than giving wrong numbers")


class MLPPostNorms:
    """What the circuit's neurons write, read at ``hook_mlp_out`` through the norm after their MLP, on one
    forward pass.

    Where block L's MLP output passes through an RMSNorm before the residual stream (Gemma 2/3's ``ln2_post``,
    :func:`post_normed`), ``hook_mlp_out = w ⊙ x / r`` with ``x = hook_post @ W_out + b_out`` (neuron ``j``
    adds ``a_j · W_out[j]`` to ``x``), ``w`` the norm's weight as applied and ``r = √(mean(x²) + ε)`` per
    position. Edges hold ``hook_mlp_out`` constant (a leaf) and read gradients there; a neuron's gradient is
    ``W_out[j] · ∂/∂x``, so :meth:`pull` takes a gradient at ``hook_mlp_out`` to ``x`` and :meth:`push` a
    tangent at ``x`` to ``hook_mlp_out``, with the norm's Jacobian at this forward pass:

    - ``frozen`` (RelP with the LN rule: the scale ``r`` is a constant): ``J = diag(w / r)``, exactly what
      the rule differentiates;
    - not frozen (the grad method, or RelP without the LN rule): the true Jacobian
      ``J = diag(w) (I − n nᵀ / d) / r`` with ``n = x / r`` (the norm's ``hook_normalized``).

    Blocks without a post-norm are passed through unchanged. The scale (and ``n``) are captured by
    :meth:`hooks` in a forward pass of the caller's, or by :meth:`capture` in a forward pass of their own.

    Attributes:
        frozen: whether the norm scales are constants in the backward passes this serves.
        blocks: the blocks (of those asked for) whose MLP output goes through a post-norm.
    """

    def __init__(self, model: Any, blocks: Any, *, frozen: bool, sublayer: str = "mlp") -> None:
        """
        Args:
            model: a HookedTransformer or a TransformerBridge whose structure check passed.
            blocks: the blocks whose neurons are read (an iterable of block indices).
            frozen: the norm scales are constants (RelP mode with the LN rule).
            sublayer: ``"mlp"`` (the norm after the MLP, ``ln2_post``) or ``"attn"`` (the norm after attention,
                ``ln1_post``: ``hook_attn_out = w ⊙ (z @ W_O + b_O) / r``, read the same way by head splits).
        """
        post = post_normed(model)
        self.frozen = frozen
        self.sublayer = sublayer
        self.blocks = sorted({int(b) for b in blocks if (sublayer, int(b)) in post})
        self._weight = {b: backends.norm_weight(model, getattr(model.blocks[b], POST_NORMS[sublayer])).detach()
                        .float() for b in self.blocks}
        self._scale: dict[int, torch.Tensor] = {}  # [batch, pos, 1]
        self._normalized: dict[int, torch.Tensor] = {}  # [batch, pos, d_model]

    def hooks(self) -> list[tuple[str, Any]]:
        """Forward hooks that read each post-norm's scale (and, not frozen, its normalised input): add them
        to the forward pass whose gradients :meth:`pull` will take. They change nothing."""
        def grab(store, block):
            return backends.capture_hook(store, block, lambda x: x.detach().float())

        fwd = [(post_norm_hook(b, self.sublayer, "hook_scale"), grab(self._scale, b)) for b in self.blocks]
        if not self.frozen:
            fwd += [(post_norm_hook(b, self.sublayer, "hook_normalized"), grab(self._normalized, b))
                    for b in self.blocks]
        return fwd

    def capture(self, model: Any, tokens: torch.Tensor) -> None:
        """One forward pass of its own (no gradient, up to the last block read) that runs :meth:`hooks`.

        Args:
            model: the model of the constructor.
            tokens: the batch ``[batch, pos]`` the gradients or tangents belong to.
        """
        if not self.blocks:
            return
        with torch.no_grad(), backends.hooks(model, fwd_hooks=self.hooks()):
            model(tokens.to(model.cfg.device), stop_at_layer=self.blocks[-1] + 1)

    def pull(self, block: int, g: torch.Tensor) -> torch.Tensor:
        """A gradient at ``hook_mlp_out`` of ``block`` as a gradient at ``x`` (``Jᵀ g``).

        Args:
            block: the block.
            g: ``[..., batch, pos, d_model]`` (leading dimensions: seeds).

        Returns:
            ``Jᵀ g``, same shape and dtype (``g`` itself where the block has no post-norm).
        """
        if block not in self._weight:
            return g
        w, r = self._weight[block].to(g.device), self._scale[block].to(g.device)
        gw = g.float() * w
        if not self.frozen:
            n = self._normalized[block].to(g.device)
            gw = gw - n * (n * gw).mean(-1, keepdim=True)
        return (gw / r).to(g.dtype)

    def push(self, block: int, t: torch.Tensor) -> torch.Tensor:
        """A tangent at ``x`` of ``block`` as a tangent at its ``hook_mlp_out`` (``J t``).

        Args:
            block: the block.
            t: ``[batch, pos, d_model]``.

        Returns:
            ``J t``, same shape and dtype (``t`` itself where the block has no post-norm).
        """
        if block not in self._weight:
            return t
        w, r = self._weight[block].to(t.device), self._scale[block].to(t.device)
        x = t.float()
        if not self.frozen:
            n = self._normalized[block].to(t.device)
            x = x - n * (n * x).mean(-1, keepdim=True)
        return (x * w / r).to(t.dtype)
