"""RelP backward mode: ``with relp(model): ...`` makes every backward pass follow the RelP rules.

The forward pass is bit-identical; only gradients change. The rules (see :mod:`relp_lens.core.rules`) are
spliced in with TransformerLens hooks:

1. LN rule: every ``*.hook_scale`` (each block's norms, post-norms, MLP-internal norms, ``ln_final``)
   returns ``scale.detach()``.
2. Gated MLPs (``hook_pre``, ``hook_pre_linear``, ``hook_post``): the live ``hook_pre`` and
   ``hook_pre_linear`` values are remembered; at ``hook_post`` the forward value is kept and the gradient
   is routed through ``HalfRule(IdentityRule(pre, f(pre)), pre_linear) + b_in`` (with both rules on, one fused
   :class:`~relp_lens.core.rules.GatedRule` node: the same gradient, no surrogate kept). ``f`` is the MLP's own
   activation (:func:`relp_lens.core.backends.gated_act_fn`; Phi-3's joint gate-up MLP on a bridge included,
   a clear error where none is found), and the first forward pass through each such MLP checks that the
   surrogate equals the forward value (an MLP that is not ``f(gate) · up`` is refused, naming it).
3. Plain MLPs: ``hook_post`` (or ``hook_mid`` for activations followed by an MLP-internal norm) becomes
   ``IdentityRule(hook_pre, value)``.
4. Mixture of experts (TransformerLens' Mixtral-style ``MoE``): the router weights
   (``hook_expert_weights``) return ``weights.detach()``, constants like norm scales; each expert
   ``experts.E`` gets step 2 with ``hook_gate`` (the activation's input), ``hook_pre`` (the linear factor)
   and ``hook_post`` (no ``b_in``). Any other MoE type (on a HookedTransformer, or a bridge's ``MoEBridge``)
   and any bridge MLP that is not an ``MLPBridge``/``GatedMLPBridge`` raises :class:`RelPLensError` naming the
   module when relp() is entered, before any hook is added, rather than silently keeping its plain gradient.
5. Final-logit soft-cap (Gemma-2, ``cfg.output_logits_soft_cap > 0``; on a bridge the Hugging Face
   config's ``final_logit_softcapping``): ``cap·tanh(z/cap)`` gets the identity rule. Both backends apply
   the cap after ``unembed.hook_out`` with no hook point after it, so inside relp() the cap is switched off
   in the config and applied, by the same operations on the same value, in a hook on ``unembed.hook_out``
   (restored on exit). Attention-score soft-caps
   (``attn_scores_soft_cap``) act before the softmax: with the AH rule the pattern is a constant and the
   cap does not matter; without it the gradient goes through tanh and softmax as is (no rule, like the rest
   of the attention scores).
6. AH rule (``attention=True``): every ``*.hook_pattern`` returns ``pattern.detach()``.

7. No stacking: TransformerLens' own relevance rules (``use_relevance_rules``, on its development branch)
   and relp() are refused together, whichever was entered first (:func:`_refuse_stacking`): each rule
   would apply twice.

Hooks live in a ``model.hooks()`` context of their own, so they are removed on exit, exception or not, and
hooks the user already had stay untouched. Rules that *read* a value (``hook_pre``, ``hook_pre_linear``,
``hook_gate``, ``unembed.hook_out``) run after every other hook of their hook point, and rules that
*rewrite* one (``hook_post``, ``hook_mid``) before every other, also for hooks the user adds inside
relp(): the rules see the values the forward actually uses, and a user's edit of a rule's output is
differentiated as usual (see :func:`_keep_order`).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
from transformer_lens.utilities.activation_functions import SOFTCAP_DISABLED, apply_softcap, softcap_enabled

from relp_lens.core import backends, structure
from relp_lens.core.errors import RelPLensError

try:  # TransformerLens 3.x; 4.x removed HookedTransformer's components (bridges have no such MoE)
    from transformer_lens.components.mlps.moe import MoE
except ImportError:
    MoE = ()  # isinstance(x, ()) is always False

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
from relp_lens.core.rules import DEFAULT_EPS, ForwardAs, GatedRule, HalfRule, IdentityRule, ah_rule, ln_rule

# Where a rule's hook must run among the hooks of its hook point (kept by _keep_order):
FIRST = "first"  # it rewrites the value: hooks after it (a user's edit) act on the rule's output
LAST = "last"  # it reads the value: it must see what the forward uses, after every other hook


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


def _at(where: str, fn):
    """Tag a rule hook with where it must run among its hook point's hooks (``FIRST`` or ``LAST``)."""
    fn.relp_order = where
    return fn


_VERIFIED: "weakref.WeakKeyDictionary[object, set[str]]" = weakref.WeakKeyDictionary()  # gated MLPs checked
_RULE_MODULES: "weakref.WeakKeyDictionary[object, list]" = weakref.WeakKeyDictionary()  # see _tl_rule_modules


def _gated_hooks(name: str, act_in: str, linear: str, post: str, act_fn, b_in: torch.Tensor | None,
                 cfg: RelPConfig, verified: set[str] | None = None, what: str = "") -> list[tuple[str, object]]:
    """A gated product ``post = f(act_in) · linear (+ b_in)``: identity rule on f, half rule on the product.

    The rule keeps ``post``'s forward value and differentiates the surrogate, so the surrogate must equal it:
    the first time a forward pass reaches ``post`` (per model, kept in ``verified``), their relative mismatch
    is measured, and a :class:`RelPLensError` naming the module is raised when it exceeds the tolerance of the
    model's dtype (an activation that is not the MLP's own, or an MLP that is not ``f(gate) · up``).
    """
    live: dict[str, torch.Tensor] = {}
    where = f"{name}.{post}"

    def remember(key: str):
        def hook(x, hook):  # x: [batch, pos, d_mlp] ([tokens, d_mlp] in an expert)
            live[key] = x

        return _at(LAST, hook)

    fused = cfg.identity and cfg.half
    bias_grad = b_in is not None and b_in.requires_grad  # a trainable b_in gets its gradient as before

    def gated_post(value, hook):
        pre, lin = live.pop("pre"), live.pop("lin")
        if fused:  # the usual case: one autograd node, the surrogate itself only for the check below
            with torch.no_grad():
                act = act_fn(pre)
            out = GatedRule.apply(value, pre, lin, act, cfg.eps)
            if bias_grad:
                out = out + (b_in - b_in.detach())  # adds exactly 0 to the value, passes b_in its gradient
            surrogate = None
        else:
            act = act_fn(pre)
            if cfg.identity:
                act = IdentityRule.apply(pre, act, cfg.eps)
            surrogate = HalfRule.apply(act, lin) if cfg.half else act * lin
            surrogate = surrogate if b_in is None else surrogate + b_in
            out = ForwardAs.apply(value, surrogate)
        if verified is not None and where not in verified and value.numel():  # an expert may get no token
            with torch.no_grad():
                if surrogate is None:
                    surrogate = act * lin if b_in is None else act * lin + b_in
                mismatch = structure.mismatch(value, surrogate)  # one measure for every identity
            if mismatch > structure.tolerance(value.dtype):
                raise RelPLensError(f"{where} is not f({act_in}) · {linear}{' + b_in' if b_in is not None else ''} "
                                    f"with the activation {getattr(act_fn, '__name__', type(act_fn).__name__)} "
                                    f"(relative mismatch {mismatch:.3g}){' in ' + what if what else ''}: relp()'s "
                                    f"half and identity rules would route its gradient wrongly; this MLP is not "
                                    f"covered")
            verified.add(where)
        return out

    return [(f"{name}.{act_in}", remember("pre")), (f"{name}.{linear}", remember("lin")),
            (where, _at(FIRST, gated_post))]


def _bridge_mlp_covered(name: str, mlp) -> bool:
    """For a bridge: True for MLP types the rules cover (``MLPBridge``, ``GatedMLPBridge`` and their
    subclasses, Phi-3's ``JointGateUpMLPBridge`` among them); ``False`` for none (attention-only); a
    :class:`RelPLensError` naming the module for every other type (``MoEBridge``, opaque blocks)."""
    if mlp is None or isinstance(mlp, torch.nn.Identity):
        return False
    mro = {c.__name__ for c in type(mlp).__mro__}
    if "MoEBridge" in mro or hasattr(getattr(mlp, "original_component", None), "experts"):
        raise RelPLensError(f"{name} is a {backends.module_what(mlp, 'mixture of experts')} on a "
                            f"TransformerBridge, which relp() has no rules for (it covers TransformerLens' own "
                            f"Mixtral-style MoE on a HookedTransformer): its router and experts would keep their "
                            f"plain gradient")
    if not mro & _BRIDGE_MLPS:
        raise RelPLensError(f"{name} is a {backends.module_what(mlp)}, an MLP type relp() has no rules for (it covers "
                            f"{', '.join(sorted(_BRIDGE_MLPS))} and their subclasses): its activation would keep "
                            f"its plain gradient")
    return True


_BRIDGE_MLPS = {"MLPBridge", "GatedMLPBridge"}


def _mlp_hooks(model: HookedTransformer, cfg: RelPConfig) -> list[tuple[str, object]]:
    hooks: list[tuple[str, object]] = []
    if not (cfg.identity or cfg.half):
        return hooks
    bridge = backends.is_bridge(model)
    verified = _VERIFIED.setdefault(model, set())
    for layer, block in enumerate(getattr(model, "blocks", [])):
        mlp = getattr(block, "mlp", None)
        name = f"blocks.{layer}.mlp"
        if bridge and not _bridge_mlp_covered(name, mlp):
            continue
        if isinstance(mlp, MoE):
            # router weights [tokens, n_experts] are constants, like norm scales
            hooks.append((f"{name}.hook_expert_weights", lambda w, hook: w.detach()))
            for e, expert in enumerate(mlp.experts):
                hooks += _gated_hooks(f"{name}.experts.{e}", "hook_gate", "hook_pre", "hook_post", expert.act_fn,
                                      None, cfg, verified, backends.module_what(expert))
            continue
        if hasattr(mlp, "experts"):
            raise RelPLensError(f"{name} is a {type(mlp).__name__} mixture of experts, which relp() has no rules "
                                f"for (it covers TransformerLens' Mixtral-style MoE); its backward would be the "
                                f"plain gradient")
        if mlp is None or not hasattr(mlp, "hook_post") or not hasattr(mlp, "hook_pre"):
            continue  # attention-only block, or an MLP type without neuron hooks
        gated = hasattr(mlp, "hook_pre_linear") and getattr(mlp, "hook_mid", None) is None
        if gated:
            hooks += _gated_hooks(name, "hook_pre", "hook_pre_linear", "hook_post",
                                  backends.gated_act_fn(model, mlp, name),  # a clear error where there is none
                                  backends.gated_post_bias(model, mlp), cfg, verified, backends.module_what(mlp))
        elif cfg.identity:
            live: dict[str, torch.Tensor] = {}

            def remember(x, hook, live=live):  # x: [batch, pos, d_mlp]
                live["pre"] = x

            # with an MLP-internal norm (SoLU-LN) the activation is hook_mid; otherwise hook_post
            target = "hook_mid" if getattr(mlp, "hook_mid", None) is not None else "hook_post"

            def act_out(y, hook, live=live):
                return IdentityRule.apply(live.pop("pre"), y, cfg.eps)

            hooks += [(f"{name}.hook_pre", _at(LAST, remember)), (f"{name}.{target}", _at(FIRST, act_out))]
    return hooks


def relp_hooks(model: HookedTransformer, cfg: RelPConfig | None = None) -> list[tuple[str, object]]:
    """The ``(hook_name, hook_fn)`` pairs that implement RelP on ``model``, for ``model.hooks()``.

    Without relp() around them they lack the final-logit soft-cap rule and the hook ordering that keeps
    them right when other hooks edit the same values; use :func:`relp` unless you need the pairs.
    Raises :class:`RelPLensError`, naming the module, for an MLP type the rules do not cover (a non-Mixtral
    MoE, a bridge's ``MoEBridge`` or other non-MLP component, a gated MLP without a findable activation).
    """
    backends.check_model(model)  # a bridge must be in compatibility mode
    cfg = cfg or RelPConfig()
    hooks: list[tuple[str, object]] = []
    names = list(model.hook_dict)
    if cfg.ln:
        hooks += backends.ln_rule_hooks(model, ln_rule)  # a bridge's native norms: rule on the output
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
    hooks = relp_hooks(model, cfg)  # raises here, on entry, for blocks the rules do not cover
    capable = _tl_rule_modules(model)
    _refuse_stacking(capable, "relp() was entered inside TransformerLens' use_relevance_rules()")
    with contextlib.ExitStack() as stack:
        if capable:  # TransformerLens' rules switched on inside relp(): refused at the next forward pass
            handle = model.register_forward_pre_hook(lambda module, args: _refuse_stacking(
                capable, "TransformerLens' use_relevance_rules() was entered inside relp()"))
            stack.callback(handle.remove)
        hooks += stack.enter_context(_logit_softcap(model, cfg))
        stack.enter_context(backends.hooks(model, fwd_hooks=hooks))
        _keep_order(model, hooks, stack)
        _ACTIVE.setdefault(model, []).append(cfg)
        stack.callback(_ACTIVE[model].pop)
        yield model


_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → the RelPConfigs of open relp() contexts


def active_rules(model: HookedTransformer) -> RelPConfig | None:
    """The rules of the innermost open :func:`relp` context on ``model``; None outside RelP mode.

    Code that builds part of the backward graph itself (a spliced dictionary reading a bridge norm's
    ``hook_normalized``, :mod:`relp_lens.core.splice`) reads it at forward time to apply the same rules.
    """
    stack = _ACTIVE.get(model)
    return stack[-1] if stack else None


def _tl_rule_modules(model: HookedTransformer) -> list[tuple[str, object]]:
    """The modules of ``model`` that can carry TransformerLens' own relevance rules, ``(name, module)``.

    TransformerLens' development branch has a relevance-rule backend for TransformerBridge
    (``transformer_lens.model_bridge._relevance_rules.use_relevance_rules``: LN, identity and half rules on
    the components that declare ``_relevance_rule_kinds``; not in 4.3.0), which keeps a per-kind count of the
    scopes that switched a rule on in ``module._relevance_rule_refcounts``. Empty where it is absent. A
    bridge reaches each component by its canonical path and through the Hugging Face module it wraps: every
    path is walked and each module named by its shortest one (``blocks.0.ln1``). Found once per model (the
    walk takes ~10 ms on a 30-layer bridge; relp() is entered once per batch).
    """
    if model not in _RULE_MODULES:
        found: dict[int, tuple[str, object]] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            if hasattr(m, "_relevance_rule_kinds") and (id(m) not in found or len(name) < len(found[id(m)][0])):
                found[id(m)] = (name, m)
        _RULE_MODULES[model] = list(found.values())
    return _RULE_MODULES[model]


def _refuse_stacking(capable: list[tuple[str, object]], how: str) -> None:
    """Raise :class:`RelPLensError` when TransformerLens' relevance rules are on in any of ``capable``: with
    relp()'s hooks as well, each rule would apply twice (a norm's gradient divided by its scale twice, a
    gated product's halved twice), a silently wrong gradient."""
    on = [(name, kind) for name, m in capable
          for kind, count in (getattr(m, "_relevance_rule_refcounts", None) or {}).items() if count > 0]
    if on:
        where = ", ".join(f"{name} ({kind})" for name, kind in on[:3]) + (" ..." if len(on) > 3 else "")
        raise RelPLensError(f"{how}: TransformerLens' relevance rules are active on {where}, and relp_lens' "
                            f"rules would apply a second time. Use one of the two: relp_lens.relp(model) "
                            f"alone, or TransformerLens' use_relevance_rules alone")


@contextlib.contextmanager
def _logit_softcap(model: HookedTransformer, cfg: RelPConfig) -> Iterator[list[tuple[str, object]]]:
    """Identity rule for the final-logit soft-cap ``cap·tanh(z/cap)``: yields the hook that applies it.

    Both backends cap after ``unembed.hook_out`` with no hook point after it: HookedTransformer.forward
    reads ``model.cfg.output_logits_soft_cap``, a bridge runs the Hugging Face model's own forward, which
    reads ``final_logit_softcapping`` from the Hugging Face config. While the context is open that setting is
    off and a ``LAST`` hook on ``unembed.hook_out`` applies the cap, in the same operations on the same value
    (the same bits), as ``IdentityRule(z, cap·tanh(z/cap))``. Settings are restored on exit. Models without a
    cap, or ``identity=False``, get no hook.
    """
    if backends.is_bridge(model):
        owner = getattr(getattr(model, "original_model", None), "config", None)
        key = "final_logit_softcapping"
        cap = getattr(owner, key, None)
        off = None

        def softcap(z):  # Hugging Face's own order of operations (Gemma 2: divide, tanh, multiply)
            return torch.tanh(z / cap) * cap
    else:
        owner, key = getattr(model, "cfg", None), "output_logits_soft_cap"
        cap, off = getattr(owner, key, None), SOFTCAP_DISABLED

        def softcap(z):
            return apply_softcap(z, cap)
    if not (cfg.identity and softcap_enabled(cap)):
        yield []
        return

    def capped(logits, hook):  # logits: [batch, pos, d_vocab], before the cap
        return IdentityRule.apply(logits, softcap(logits), cfg.eps)

    setattr(owner, key, off)
    try:
        yield [("unembed.hook_out", _at(LAST, capped))]
    finally:
        setattr(owner, key, cap)


def _keep_order(model: HookedTransformer, hooks: list[tuple[str, object]], stack: contextlib.ExitStack) -> None:
    """Keep each ``FIRST`` rule hook ahead of, and each ``LAST`` one behind, all other hooks of its point.

    Hooks added after relp() is entered (a user's edit, a cache) would otherwise run after the rule hooks:
    a rule that reads ``hook_pre`` would miss the edit the forward uses, and an edit of a rule's
    ``hook_post`` output put back would no longer match the surrogate. A forward pre-hook on each such hook
    point reorders torch's hook dict before every call (torch reads it after ``forward``); the pre-hooks are
    removed with ``stack``. A rule hook that cannot be found among its point's handles keeps its place.
    """
    by_point: dict[torch.nn.Module, tuple[list[int], list[int]]] = {}
    hook_dict = model.hook_dict  # read once: a TransformerBridge builds it anew on every access (~20 ms)
    for name, fn in hooks:
        where = getattr(fn, "relp_order", None)
        point = hook_dict.get(name) if where else None
        handle = next((h for h in getattr(point, "fwd_hooks", []) if getattr(h, "user_hook", None) is fn), None)
        if handle is not None:
            first, last = by_point.setdefault(point, ([], []))
            (first if where == FIRST else last).append(handle.hook.id)
    for point, (first, last) in by_point.items():

        def reorder(module, args, first=first, last=last):
            order = module._forward_hooks  # hook id -> hook, run in this order after forward
            for i in last:
                if i in order:
                    order.move_to_end(i)
            for i in reversed(first):
                if i in order:
                    order.move_to_end(i, last=False)

        stack.callback(point.register_forward_pre_hook(reorder).remove)


def embedding_relevance(model: HookedTransformer, tokens, target: int, *, position: int = -1,
                        use_relp: bool = True, **rules) -> tuple[float, float]:
    """``(logit, Σ embedding · ∇̃ logit)`` for ``tokens`` [1, pos] in RelP mode with ``rules``
    (``use_relp=False``: with the model's hooks as they are, e.g. inside a relp() block of the caller's).

    The outputs of ``hook_embed`` (and ``hook_pos_embed`` where present) are the graph's inputs. With all
    rules and the AH rule on a bias-free model the two numbers are equal: relevance is conserved. The
    sum is taken in float32 (also for half-precision models).
    """
    store = []

    def leaf(x, hook):
        x = x.detach().requires_grad_(True)
        store.append(x)
        return x

    embed_hooks = [(n, leaf) for n in ("hook_embed", "hook_pos_embed") if n in model.hook_dict]
    mode = relp(model, **rules) if use_relp else contextlib.nullcontext()
    with torch.enable_grad(), mode, backends.hooks(model, fwd_hooks=embed_hooks):
        logit = model(tokens)[0, position, target]
        grads = torch.autograd.grad(logit, store)
    return logit.item(), sum((x.float() * g.float()).sum() for x, g in zip(store, grads)).item()
