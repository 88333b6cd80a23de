"""Backends: relp_lens runs on a ``HookedTransformer`` (TransformerLens 3.x) or on a ``TransformerBridge`` in
compatibility mode (TransformerLens 3.9's and 4.x's, which wraps any Hugging Face causal LM).

This is the one place that knows where the two differ. Nothing here imports a TransformerLens name at module
level: TransformerLens 4.0 removed ``HookedTransformer`` (``transformer_lens.HookedTransformer`` raises
ImportError there), so every look-up is feature detection at call time.

What differs, and how each is handled:

1. **Start at a layer.** ``HookedTransformer(resid, start_at_layer=L)`` skips blocks ``0..L-1``; the bridge
   cannot (3.9 raises, 4.x still runs every block). :func:`supports_start_at_layer` says which; callers then
   run a full forward pass instead (same result, the patched hook lies at or after block ``L``).
2. **Hook names seen by hook functions.** On the bridge, ``hook.name`` can be the canonical name behind an
   alias (``blocks.3.hook_resid_pre`` → ``blocks.3.hook_in``), so relp_lens binds the name it asked for in the
   hook's closure and never reads ``hook.name``.
3. **Gated MLP bias.** HookedTransformer computes ``post = f(pre) · pre_linear + b_in``; the bridge's
   ``hook_post`` is ``f(gate) · up`` with any up-projection bias already inside ``hook_pre_linear``, and its
   ``mlp.b_in`` is that bias or ``None``. :func:`gated_post_bias` is what the RelP surrogate must add: ``b_in``
   on a HookedTransformer, nothing on a bridge.
4. **Norms.** Hugging Face RMSNorm (and some LayerNorms) run with "native layer-norm autograd": the output is
   Hugging Face's own, and an edited ``hook_scale`` makes the bridge recompute the norm another way, which
   moves the forward pass by ~1e-4. :func:`ln_rule_hooks` therefore leaves such a norm's value alone and puts
   the LN rule on its output instead: ``ForwardAs(out, norm(x) with the scale detached)`` — the forward pass
   stays bit for bit Hugging Face's, the backward pass sees a constant scale. Norms the bridge computes in
   Python (and every HookedTransformer norm) get the plain rule, ``hook_scale → scale.detach()``.
5. **Weights.** :func:`W_out`, :func:`W_U` and :func:`final_norm_weight` return HookedTransformer's shapes
   (``[d_mlp, d_model]``, ``[d_model, d_vocab]``, ``[d_model]``) on both; Gemma-style ``1 + w`` norm weights
   are resolved.
6. **Gated MLPs.** :func:`gated_act_fn` finds a gated MLP's activation on either backend (Phi-3's joint
   gate-up MLP included) or says which module lacks one, described by :func:`module_what` (a bridge component
   with the Hugging Face module it wraps). Whether a model keeps the identities edges rely on (``hook_mlp_out =
   hook_post @ W_out + b_out``, ...) is measured on the model by :mod:`relp_lens.core.structure`, with the
   accessors here.
7. **Making a bridge.** :func:`wrap_hf_model` turns a Hugging Face model object and its tokenizer into a bridge
   ready for relp_lens: compatibility mode without weight processing (so activations are the Hugging Face
   model's own), eval mode, parameters frozen.
8. **Hooks.** :func:`hooks` adds hooks by name on either backend; :func:`capture` (a no-grad forward that
   records hook values), :func:`capture_hook` and :func:`leaf_hook` are how relp_lens records values anywhere.
9. **Hook points relp_lens adds.** A spliced dictionary (:mod:`relp_lens.core.splice`) brings its own hook
   points (``….hook_sae_acts_post``, ...), which neither backend's ``hook_dict`` knows. :func:`added_points`
   registers them for a model while a context is open — in TransformerLens' own dicts too (HookedTransformer's
   ``hook_dict``/``mod_dict``, a bridge's hook registry), so ``run_with_cache``, ``hooks`` and ``add_hook`` reach
   them — and :func:`hook_points` is the model's ``hook_dict`` with them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import BACKENDS, Backend  # noqa: F401

if TYPE_CHECKING:  # never imported at run time: HookedTransformer is gone in TransformerLens 4
    from transformer_lens import HookedTransformer  # noqa: F401
    from transformer_lens.model_bridge import TransformerBridge  # noqa: F401

_BRIDGE_CLASSES = {"TransformerBridge", "BridgeCore"}
_NORM_CLASSES = {"NormalizationBridge"}


# --- what is installed ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def transformer_lens_version() -> tuple[int, ...]:
    """The installed TransformerLens version as integers, e.g. ``(3, 9, 0)``."""
    parts = []
    for piece in importlib.metadata.version("transformer-lens").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def hooked_transformer_class():
    """``HookedTransformer``, or ``None`` where TransformerLens no longer has it (4.x)."""
    try:
        import transformer_lens

        return transformer_lens.HookedTransformer  # TL 4 raises ImportError here, not AttributeError
    except (ImportError, AttributeError):
        return None


def hooked_transformer_available() -> bool:
    """True where ``HookedTransformer`` can be built (TransformerLens 3.x)."""
    return hooked_transformer_class() is not None


def bridge_class():
    """``TransformerBridge``, or ``None`` where TransformerLens lacks it."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    return TransformerBridge


def resolve_backend(backend: str) -> str:
    """``"hooked"`` or ``"bridge"`` for ``backend`` in :data:`BACKENDS` (``"auto"``: HookedTransformer where
    installed, else the bridge); a clear error when the one asked for is not installed."""
    if backend not in BACKENDS:
        raise RelPLensError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    if backend == "auto":
        backend = "hooked" if hooked_transformer_available() else "bridge"
    if backend == "hooked" and not hooked_transformer_available():
        raise RelPLensError(f"backend='hooked' needs HookedTransformer, which TransformerLens "
                            f"{'.'.join(map(str, transformer_lens_version()))} no longer has; use backend='bridge'")
    if backend == "bridge" and bridge_class() is None:
        raise RelPLensError("backend='bridge' needs transformer_lens.model_bridge.TransformerBridge "
                            "(TransformerLens >= 3.9)")
    return backend


# --- what a model is ------------------------------------------------------------------------------------
def is_bridge(model: Any) -> bool:
    """True for a TransformerLens ``TransformerBridge`` (any version), without importing it."""
    return any(cls.__name__ in _BRIDGE_CLASSES for cls in type(model).__mro__)


def is_hooked_transformer(model: Any) -> bool:
    """True for a TransformerLens ``HookedTransformer`` (3.x), without importing it."""
    return any(cls.__name__ == "HookedTransformer" for cls in type(model).__mro__)


def require_model(model: Any, name: str = "model") -> None:
    """Refuse an argument that is not a TransformerLens model, before anything reads its attributes.

    Args:
        model: what the caller passed as the model.
        name: the argument's name, used in the message.
    """
    if is_bridge(model) or is_hooked_transformer(model):
        return
    if all(hasattr(model, a) for a in ("cfg", "hook_dict", "to_tokens", "run_with_hooks")):
        return  # a HookedRootModule subclass of the caller's own
    hint = " (load one with relp_lens.load_model(name) or relp_lens.wrap_hf_model)" if isinstance(model, str) else ""
    raise RelPLensError(f"{name} must be a TransformerLens HookedTransformer or TransformerBridge, "
                        f"got {type(model).__name__}{hint}")


def check_model(model: Any) -> None:
    """Raise a clear error for a bridge that is not in compatibility mode (its neuron hooks do not fire)."""
    if is_bridge(model) and not getattr(model, "compatibility_mode", False):
        raise RelPLensError("this TransformerBridge is not in compatibility mode, so its MLP neuron hooks "
                            "(blocks.L.mlp.hook_post, ...) do not fire: call "
                            "bridge.enable_compatibility_mode(no_processing=True) first, or build it with "
                            "relp_lens.wrap_hf_model(hf_model, tokenizer)")


def supports_start_at_layer(model: Any) -> bool:
    """Whether ``model(resid, start_at_layer=L)`` skips the blocks before ``L`` (HookedTransformer only)."""
    return not is_bridge(model)


# --- weights --------------------------------------------------------------------------------------------
def _as_shape(w: torch.Tensor, rows: int, cols: int, what: str) -> torch.Tensor:
    if tuple(w.shape) == (rows, cols):
        return w
    if tuple(w.shape) == (cols, rows):
        return w.T
    raise RelPLensError(f"{what} has shape {tuple(w.shape)}, expected ({rows}, {cols})")


def W_out(model: Any, layer: int) -> torch.Tensor:
    """The MLP down-projection of ``layer``: ``[d_mlp, d_model]`` (row ``j``: what neuron ``j`` writes)."""
    mlp = model.blocks[layer].mlp
    w = getattr(mlp, "W_out", None)
    if w is None and is_bridge(model):
        w = mlp.out.weight
    if w is None:
        raise RelPLensError(f"block {layer}'s MLP has no W_out")
    return _as_shape(w, model.cfg.d_mlp, model.cfg.d_model, f"blocks.{layer}.mlp.W_out")


def W_O(model: Any, layer: int) -> torch.Tensor:
    """Attention's output projection of ``layer``: ``[n_heads·d_head, d_model]`` (rows head by head)."""
    attn = model.blocks[layer].attn
    if is_bridge(model):
        w = getattr(attn.o, "weight", None)
        return (attn.o.original_component.weight if w is None else w).T
    w = attn.W_O  # [n_heads, d_head, d_model]
    return w.reshape(-1, w.shape[-1])


def W_U(model: Any) -> torch.Tensor:
    """The unembedding ``[d_model, d_vocab]``."""
    w = model.W_U
    return w if w.shape[0] == model.cfg.d_model else _as_shape(w, model.cfg.d_model, w.shape[0], "W_U")


def final_norm_weight(model: Any) -> torch.Tensor | None:
    """The final norm's elementwise weight ``[d_model]`` as applied (``1 + w`` for Gemma-style norms), or
    ``None`` where the final norm has none."""
    ln = getattr(model, "ln_final", None)
    if ln is None:
        return None
    w = getattr(ln, "w", None)
    if w is None:
        return None
    if is_bridge(model) and getattr(model.cfg, "rmsnorm_uses_offset", False):
        w = 1.0 + w
    return w


def norm_weight(model: Any, norm: Any) -> torch.Tensor | None:
    """A norm module's elementwise weight ``[d_model]`` as applied: HookedTransformer's ``w`` (TransformerLens
    stores Gemma's ``1 + w`` already), a bridge's ``weight`` plus one where the norm adds it (Gemma-style
    ``1 + w``: the component's ``uses_weight_offset`` on TransformerLens 4, the config's
    ``rmsnorm_uses_offset`` on 3.9); ``None`` where the norm has no weight.

    Args:
        model: the model the norm belongs to.
        norm: the norm module (``model.blocks[L].ln2_post``, ...).

    Returns:
        The weight the normalised value is multiplied by, or ``None``.
    """
    w = getattr(norm, "w", None)
    if not isinstance(w, torch.Tensor):
        return None
    if is_bridge(model):
        offset = getattr(norm, "uses_weight_offset", None)
        if offset is None:
            offset = getattr(model.cfg, "rmsnorm_uses_offset", False)
        if offset:
            w = 1.0 + w
    return w


# --- RelP pieces that differ ----------------------------------------------------------------------------
def gated_post_bias(model: Any, mlp: Any) -> torch.Tensor | None:
    """What a gated MLP adds after ``f(pre) · pre_linear`` to make ``hook_post``: HookedTransformer's ``b_in``
    (``None`` when it has none); ``None`` on a bridge, where an up-projection bias (``mlp.b_in``) is already
    inside ``hook_pre_linear`` and adding it again would count it twice."""
    return None if is_bridge(model) else getattr(mlp, "b_in", None)


def module_what(module: Any, what: str = "") -> str:
    """A module described for a message, with the Hugging Face module a bridge component wraps.

    Args:
        module: a model component (a bridge component has ``original_component``).
        what: what sort of module it is, put after its class name.

    Returns:
        ``"GatedMLPBridge wrapping LlamaMLP"`` for a bridge component, the class name otherwise; with ``what``,
        ``"MoEBridge mixture of experts (wrapping MixtralSparseMoeBlock)"``.
    """
    inner = getattr(module, "original_component", None)
    wrapped = "" if inner is None else type(inner).__name__
    if not what:
        return type(module).__name__ + (f" wrapping {wrapped}" if wrapped else "")
    return f"{type(module).__name__} {what}" + (f" (wrapping {wrapped})" if wrapped else "")


_ACT_ATTRS = ("act_fn", "activation_fn", "act", "activation")  # Hugging Face's names for an MLP's activation


def gated_act_fn(model: Any, mlp: Any, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation ``f`` of a gated MLP, ``hook_post = f(hook_pre) · hook_pre_linear (+ b_in)``.

    HookedTransformer: ``mlp.act_fn``. Bridge: a joint gate-up MLP (Phi-3's ``gate_up_proj``, which the bridge
    splits and recomputes itself) resolves it as the bridge's own forward does; other gated MLPs run the
    Hugging Face module, whose activation is ``act_fn`` (or ``activation_fn``, ``act``, ``activation``).
    A :class:`RelPLensError` naming ``name`` and the module's type when none is found.

    Args:
        model: the model ``mlp`` belongs to.
        mlp: a gated MLP module (``hook_pre``, ``hook_pre_linear``, ``hook_post``).
        name: its name in the model (``"blocks.3.mlp"``), for the message.

    Returns:
        The activation, a callable on ``[..., d_mlp]`` tensors.
    """
    if not is_bridge(model):
        act = getattr(mlp, "act_fn", None)
    else:
        resolve = getattr(type(mlp), "_resolve_activation_fn", None)  # JointGateUpMLPBridge (TL 3.9 and 4.x)
        act = resolve(mlp) if callable(resolve) else None
        for owner in (mlp, getattr(mlp, "original_component", None)):
            for attr in _ACT_ATTRS:
                if act is not None or owner is None:
                    break
                try:
                    act = getattr(owner, attr, None)
                except (AttributeError, RuntimeError):
                    act = None
                act = act if callable(act) else None
    if not callable(act):
        raise RelPLensError(f"{name} ({module_what(mlp)}) is a gated MLP whose activation function relp_lens "
                            f"cannot find (none of {', '.join(_ACT_ATTRS)}): the RelP rules need it to route the "
                            f"gradient of hook_post = f(hook_pre) · hook_pre_linear")
    return act


def _native_norm(module: Any) -> bool:
    """True when a bridge norm returns Hugging Face's own output (edits of hook_scale would change it)."""
    if getattr(module, "use_native_layernorm_autograd", False):
        return True
    return bool(getattr(getattr(module, "config", None), "layer_norm_folding", False))


def _norm_surrogate(module: Any, x: torch.Tensor) -> torch.Tensor:
    """``module``'s output on ``x`` with the normalising scale treated as a constant (LN rule)."""
    return module._apply_weight_and_bias(normalized_surrogate(module, x), x.dtype)


def point_names(model: Any, hook_dict: dict[str, Any] | None = None) -> dict[int, str]:
    """Each hook point's name, by ``id`` of the point: its canonical name where the model lists it (a bridge lists
    aliases such as ``blocks.L.hook_resid_mid`` beside the canonical ``blocks.L.hook_in``), else the first name.

    Args:
        model: a HookedTransformer or TransformerBridge.
        hook_dict: the model's hook dict when already read (a bridge builds it anew on every access).

    Returns:
        ``{id(point): name}``.
    """
    hook_dict = hook_points(model) if hook_dict is None else hook_dict
    name_of: dict[int, str] = {}
    for n, hp in hook_dict.items():
        name_of.setdefault(id(hp), hp.name if getattr(hp, "name", None) in hook_dict else n)
    return name_of


def native_norm(model: Any, hook_name: str) -> Any | None:
    """The bridge norm whose ``hook_normalized`` is ``hook_name`` when that norm returns Hugging Face's own
    output (its ``hook_normalized`` then carries the norm's full Jacobian, whatever the LN rule: the rule sits
    on the norm's output, :func:`ln_rule_hooks`); None on a HookedTransformer or for any other hook."""
    if not is_bridge(model) or not hook_name.endswith(".hook_normalized"):
        return None
    try:
        module = model.get_submodule(hook_name.removesuffix(".hook_normalized"))
    except AttributeError:
        return None
    if getattr(module, "hook_normalized", None) is None or not _native_norm(module):
        return None
    return module


def normalized_surrogate(module: Any, x: torch.Tensor) -> torch.Tensor:
    """A bridge norm's ``hook_normalized`` on its input ``x`` (before weight and bias) with the normalising scale
    treated as a constant (LN rule)."""
    weight = getattr(module.original_component, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device != x.device:  # device_map: the norm sits elsewhere
        x = x.to(weight.device)
    xf = x.float() if x.dtype not in (torch.float32, torch.float64) else x
    if not module.uses_rms_norm:
        xf = xf - xf.mean(-1, keepdim=True)
    eps = getattr(module.original_component, "eps", None)
    if eps is None:
        eps = getattr(module.original_component, "variance_epsilon", None)
    if eps is None:
        eps = getattr(module.config, "eps", 1e-5)
    scale = (xf.detach().pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return xf / scale


def ln_rule_hooks(model: Any, rule: Callable[[torch.Tensor], torch.Tensor]) -> list[tuple[str, Callable]]:
    """Forward hooks that make every norm scale a constant in the backward pass; forward values unchanged.

    ``rule`` maps a scale to its constant (``relp_lens.core.rules.ln_rule``). HookedTransformer: ``rule`` on every
    ``*.hook_scale``. Bridge: the same for norms it computes in Python; for norms that return Hugging Face's
    own output, ``hook_in`` is remembered and ``hook_out`` becomes ``ForwardAs(out, surrogate)``.
    """
    hook_dict = model.hook_dict  # a bridge builds this dict anew on every access: read it once
    if not is_bridge(model):
        return [(n, lambda x, hook: rule(x)) for n in hook_dict if n.endswith("hook_scale")]
    from relp_lens.core.rules import ForwardAs

    name_of = point_names(model, hook_dict)
    hooks: list[tuple[str, Callable]] = []
    covered = set()
    for module in model.modules():
        if not any(c.__name__ in _NORM_CLASSES for c in type(module).__mro__):
            continue
        if isinstance(getattr(module, "original_component", None), torch.nn.Identity):
            continue
        scale = name_of.get(id(getattr(module, "hook_scale", None)))
        if scale is None or scale in covered:
            continue
        covered.add(scale)
        if not _native_norm(module) or not hasattr(module, "_apply_weight_and_bias"):
            hooks.append((scale, lambda x, hook: rule(x)))
            continue
        hook_in, hook_out = name_of.get(id(module.hook_in)), name_of.get(id(module.hook_out))
        if hook_in is None or hook_out is None:
            hooks.append((scale, lambda x, hook: rule(x)))
            continue
        live: dict[str, torch.Tensor] = {}

        def remember(x, hook, live=live):
            live["x"] = x

        def constant_scale(out, hook, live=live, module=module):
            return ForwardAs.apply(out, _norm_surrogate(module, live.pop("x")))

        remember.relp_order, constant_scale.relp_order = "last", "first"  # see relp_mode._keep_order
        hooks += [(hook_in, remember), (hook_out, constant_scale)]
    return hooks


# --- hooks ----------------------------------------------------------------------------------------------
_ADDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → {name: HookPoint} relp_lens added


def hook_points(model: Any) -> dict[str, Any]:
    """The model's hook points by name: its own ``hook_dict`` and those relp_lens added (:func:`added_points`).

    A bridge builds its ``hook_dict`` anew on every access (~20 ms): read this once per operation.

    Args:
        model: a HookedTransformer or TransformerBridge.

    Returns:
        ``{name: HookPoint}``.
    """
    added = _ADDED.get(model)
    return {**model.hook_dict, **added} if added else model.hook_dict


@contextlib.contextmanager
def added_points(model: Any, points: dict[str, Any]) -> Iterator[None]:
    """Make ``points`` (``{name: HookPoint}``, modules that the forward pass calls) reachable by name on ``model``
    while the context is open: :func:`hook_points`, :func:`hooks`, :func:`capture` and every relp_lens function
    that takes hook names see them. Removed on exit, exception or not.

    Args:
        model: a HookedTransformer or TransformerBridge.
        points: the hook points to add; a name the model already has is refused.
    """
    have = hook_points(model)
    clash = sorted(set(points) & set(have))
    if clash:
        raise RelPLensError(f"the model already has a hook point {clash[0]!r}: a dictionary is spliced there "
                            "already (one dictionary per hook)")
    for name, point in points.items():
        point.name = name
    mine = dict(points)
    # TransformerLens' own look-ups (run_with_cache, hooks, add_hook) read these dicts: there the points are native
    native = [getattr(model, "_hook_registry", None)] if is_bridge(model) else [model.hook_dict, model.mod_dict]
    native = [d for d in native if isinstance(d, dict)]
    _ADDED.setdefault(model, {}).update(mine)
    for d in native:
        d.update(mine)
    try:
        yield
    finally:
        added = _ADDED.get(model, {})
        for name in mine:
            added.pop(name, None)
            for d in native:
                d.pop(name, None)
        if not added:
            _ADDED.pop(model, None)


@contextlib.contextmanager
def hooks(model: Any, fwd_hooks: Sequence[tuple[str, Callable]] = (),
          bwd_hooks: Sequence[tuple[str, Callable]] = ()) -> Iterator[Any]:
    """``model.hooks(fwd_hooks=..., bwd_hooks=...)`` by hook name, on either backend; hooks removed on exit.

    TransformerLens 3.9's bridge ``hooks()`` rebuilds its ~1,700-entry ``hook_dict`` for every hook it adds
    (~8 ms each: ~1 s for the ~200 hooks of ``relp()`` on SmolLM2) and silently skips a name it does not
    know; HookedTransformer's walks every hook point of the model on exit (~5 ms on SmolLM2, paid by every
    attribution batch). On both the dict is read once, an unknown name is an error, and each hook is added to
    its hook point at a fresh context level, removed by that level from the points it was added to on exit
    (hooks the caller had stay), as TransformerLens does. TransformerLens 4's bridge: its own ``hooks()``.
    """
    hook_dict = hook_points(model)
    todo = [(name, fn, "fwd") for name, fn in fwd_hooks] + [(name, fn, "bwd") for name, fn in bwd_hooks]
    unknown = sorted({name for name, _, _ in todo if name not in hook_dict})
    if unknown:
        raise RelPLensError(f"the model has no hook point {unknown[0]!r}" +
                            (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    bridge = is_bridge(model)
    added = _ADDED.get(model) or {}
    if bridge and transformer_lens_version() >= (4,) and not any(name in added for name, _, _ in todo):
        with model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)):  # its own hooks() reads the dict once
            yield model
        return
    check = getattr(model, "check_hooks_to_add", None)  # a gated-off hook point (set_use_*) raises here
    if check is not None and not (bridge and transformer_lens_version() >= (4,)):
        for name, fn, direction in todo:
            if name in added:
                continue
            if bridge:
                check(name)
            else:
                check(hook_dict[name], name, fn, dir=direction)
    level = model.context_level + 1
    added: list[tuple[Any, str]] = []
    model.context_level = level
    try:
        for name, fn, direction in todo:
            point = hook_dict[name]  # an alias resolves to its point; no alias_names: 3.9 calls a hook once per name
            point.add_hook(fn, dir=direction, level=level)
            added.append((point, direction))
        yield model
    finally:
        for point, direction in added:
            point.remove_hooks(dir=direction, level=level)
        model.context_level = level - 1


def capture_hook(store: dict, key: Any, keep: Callable[[torch.Tensor], Any] | None = None) -> Callable:
    """A forward hook that records its hook point's value and leaves it unchanged: ``store[key] = keep(x)``.

    Every capture in relp_lens goes through this (and :func:`capture`, :func:`leaf_hook`). ``key`` is bound
    here, never read from ``hook.name``: on a bridge that may be the canonical name behind an alias.

    Args:
        store: The dict the value goes into.
        key: The key it is stored under (a hook name, a layer index, ...).
        keep: What to store, from the value ``x``; ``None`` stores ``x`` itself, its autograd graph kept.

    Returns:
        The hook function ``(x, hook) -> None``.
    """
    def hook(x, hook):
        store[key] = x if keep is None else keep(x)

    return hook


def leaf_hook(store: dict, key: Any) -> Callable:
    """A forward hook that replaces its value by a detached leaf, kept in ``store[key]``.

    What follows depends on the value only through the leaf (a constant for everything upstream), and its
    gradient can be read there. With ``requires_grad`` set, it also starts a graph on frozen weights.

    Args:
        store: The dict the leaf goes into.
        key: The key it is stored under (bound here, never read from ``hook.name``).

    Returns:
        The hook function ``(x, hook) -> leaf``.
    """
    def hook(x, hook):
        store[key] = x.detach().requires_grad_(True)
        return store[key]

    return hook


_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # bridge → {hook name: its value is used}


def dead_hooks(model: Any, names: Sequence[str]) -> list[str]:
    """The hooks among ``names`` whose value the model's forward pass does not compute on (a bridge only).

    A hook that never fires (a rotary model's bridge lists ``hook_pos_embed``), a hook on token ids, or one
    whose returned value the bridge drops would be scored, patched and ablated as 0 without a sign.

    1. One forward pass of ``len(names) + 1`` copies of a three-token input: row ``i + 1`` adds noise at hook
       ``i`` only (the value returned, as relp_lens' hooks return what they capture), row 0 is left alone.
       A hook is live when its row's logits move. Forward values do not depend on the RelP rules, so the probe
       holds inside ``relp()`` too.
    2. The answers are cached per model; aliases (``blocks.1.hook_resid_pre`` of ``blocks.0.hook_resid_post``)
       share one probe. Hooks relp_lens added (:func:`added_points`) are live by construction; a
       HookedTransformer's hooks are all live (nothing is probed).

    Args:
        model: a HookedTransformer or TransformerBridge.
        names: hook names (each must exist on the model).

    Returns:
        The dead ones, in the order given.
    """
    if not is_bridge(model):
        return []
    known = _LIVE.setdefault(model, {})
    ours = _ADDED.get(model) or {}
    todo = [n for n in dict.fromkeys(names) if n not in known and n not in ours]
    if todo:
        points = hook_points(model)
        first: dict[int, str] = {}
        for n in todo:
            first.setdefault(id(points[n]), n)
        probe = list(first.values())
        g = torch.Generator().manual_seed(0)

        def nudge(row: int):
            def hook(x, hook):
                if not torch.is_floating_point(x) or x.shape[0] != len(probe) + 1:
                    return None  # token ids, or not batch-first: not a value nodes are scored at
                x = x.clone()
                noise = torch.randn(x[row].shape, generator=g).to(x.device, x.dtype)
                x[row] = x[row] + 3.0 * (1.0 + x[row].float().std().nan_to_num()) * noise
                return x
            return hook

        tokens = (torch.arange(3)[None] % model.cfg.d_vocab).expand(len(probe) + 1, 3).to(model.cfg.device)
        with torch.no_grad(), hooks(model, fwd_hooks=[(n, nudge(i + 1)) for i, n in enumerate(probe)]):
            logits = model(tokens).float()
        moved = (logits[1:] - logits[:1]).abs().flatten(1).amax(1)  # [hook]
        scale = logits[0].abs().max().clamp_min(1.0)
        live = {n for n, d in zip(probe, moved.tolist()) if d > 1e-4 * float(scale)}
        known.update({n: first[id(points[n])] in live for n in todo})
    return [n for n in names if known.get(n) is False]


def capture(model: Any, tokens: torch.Tensor, names: Sequence[str], *,
            keep: Callable[[torch.Tensor], Any] = torch.Tensor.detach,
            **forward_kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """One no-grad forward pass of ``tokens`` that records the values of the hook points ``names``.

    Like ``model.run_with_cache(tokens, names_filter=names)``, on either backend and without building an
    ``ActivationCache``; ``keep`` reduces each value as it is produced (a slice, a dtype, a shape), so only
    what is needed stays in memory. Hooks are removed on exit, exception or not.

    Args:
        model: A HookedTransformer or TransformerBridge.
        tokens: Token ids ``[batch, pos]``; moved to the model's device.
        names: Hook names to record (each must exist on the model).
        keep: What to store of each value ``x`` (default ``x.detach()``).
        **forward_kwargs: Passed to the forward call (``stop_at_layer=...``).

    Returns:
        ``(output, values)``: the forward pass's output (usually logits ``[batch, pos, d_vocab]``) and
        ``{name: keep(value)}``.
    """
    got: dict[str, Any] = {}
    with torch.no_grad(), hooks(model, fwd_hooks=[(n, capture_hook(got, n, keep)) for n in dict.fromkeys(names)]):
        out = model(tokens.to(model.cfg.device), **forward_kwargs)
    return out, got


# --- making a bridge ------------------------------------------------------------------------------------
def freeze(model: Any) -> Any:
    """Eval mode and ``requires_grad=False`` on every parameter (attribution needs no weight gradients)."""
    model.eval()
    model.requires_grad_(False)
    for p in model.parameters():
        p.requires_grad_(False)
    if is_bridge(model):
        original = getattr(model, "original_model", None)
        if original is not None:
            original.eval()
            original.requires_grad_(False)
    return model


def _warn_known_generate_bug() -> None:
    """transformers 5.24 broke ``TransformerBridge.generate`` with the KV cache (found on TransformerLens 3.9
    and 4.3): say so, with the way round it, rather than let a steering run print wrong continuations."""
    try:
        major, minor = (int(x) for x in importlib.metadata.version("transformers").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return
    if (major, minor) >= (5, 24):
        warnings.warn(f"relp_lens: with transformers {major}.{minor}, TransformerBridge.generate(...) using the KV "
                      "cache continues prompts wrongly (greedy SmolLM2: ' are---' instead of ' are a set of'); "
                      "pass use_past_kv_cache=False, or install 'transformers<5.24' (relp_lens' tested pin)",
                      stacklevel=3)


def wrap_hf_model(hf_model: Any, tokenizer: Any, name: str | None = None, *, freeze_weights: bool = True,
                  n_ctx: int | None = None) -> Any:
    """A ``TransformerBridge`` around a Hugging Face causal LM, ready for relp_lens.

    Compatibility mode with ``no_processing=True`` (no layer-norm folding or weight centring: activations are
    the Hugging Face model's own), eval mode, parameters frozen unless ``freeze_weights=False``. Nothing is
    downloaded: the config comes from ``hf_model.config``, the tokenizer is the one given (its BOS is what
    ``to_tokens`` prepends). ``name`` is only a label (``cfg.model_name``); ``n_ctx`` caps the context
    length relp_lens checks prompts against.

    The bridge takes ``hf_model`` over: TransformerLens replaces its submodules by bridge components, so use
    the returned bridge from then on (its forward pass computes exactly what ``hf_model`` computed).
    """
    bridge_cls = bridge_class()
    if bridge_cls is None:
        raise RelPLensError("wrapping a Hugging Face model needs TransformerBridge (TransformerLens >= 3.9)")
    _warn_known_generate_bug()
    if tokenizer is None:
        raise RelPLensError("wrap_hf_model needs the model's tokenizer (relp_lens works on text prompts)")
    if name is None:
        name = getattr(getattr(hf_model, "config", None), "_name_or_path", None) or type(hf_model).__name__
    config = getattr(hf_model, "config", None)
    if config is not None and not getattr(config, "architectures", None):
        # transformers' GGUF loader leaves ``architectures`` empty; the bridge picks its adapter from it
        config.architectures = [type(hf_model).__name__]
    params = [p for p in hf_model.parameters() if p.is_floating_point()]
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params else torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = bridge_cls.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, device=str(device),
                                              dtype=dtype)
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    if n_ctx is not None:
        bridge.cfg.n_ctx = min(int(n_ctx), int(bridge.cfg.n_ctx)) if bridge.cfg.n_ctx else int(n_ctx)
    bridge.cfg.model_name = name
    if freeze_weights:
        freeze(bridge)
    else:
        bridge.eval()
    return bridge
