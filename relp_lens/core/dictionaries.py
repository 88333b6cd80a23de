"""Sparse dictionaries: SAEs, transcoders and skip transcoders, read from the files the field's trainers write.

A dictionary maps an activation ``x`` read at ``hook_in`` to sparse latents ``f`` and back to a
reconstruction ``x̂`` of the activation at ``hook_out`` (the same hook for an SAE, the MLP's output for a
transcoder). Shapes: ``x [..., d_in]``, ``f [..., d_sae]``, ``x̂ [..., d_out]``.

1. **The data model.** :class:`Dictionary` holds the weights in one layout whatever the file's
   (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``W_skip [d_in, d_out]``) and computes

   - ``encode(x) = σ((x − b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc)`` with σ one of ``relu``,
     ``jumprelu`` (``p·[p > threshold]``) or ``topk`` (the ``k`` largest pre-activations kept, then a ReLU
     unless ``topk_relu`` is off, as in circuit-tracer's TopK); a ``gated`` SAE gates with ``[p > 0]`` and
     takes the value from a magnitude path, ``relu(x' @ (W_enc·exp(r_mag)) + b_mag)`` (:meth:`Dictionary.encode`);
   - ``decode(f, x) = f @ W_dec + b_dec (+ x @ W_skip)``.

   Every field is checked when it is built (``__post_init__``): a wrong shape, kind or hook is a
   :class:`~relp_lens.core.errors.RelPLensError` naming the file and the problem. :class:`DictionarySet` is
   one dictionary per layer.
2. **The readers import nothing they do not need** (SAELens pins TransformerLens < 4): :func:`load_sae` reads
   SAELens' folder (``cfg.json`` + ``sae_weights.safetensors``) or takes an ``sae_lens.SAE`` object;
   :func:`load_transcoders` reads sparsify's run folder (a folder per hookpoint with ``cfg.json`` +
   ``sae.safetensors``), circuit-tracer's (``config.yaml`` + ``layer_{i}.safetensors``) and Gemma Scope 2's
   transcoder folders (``config.json`` + ``params.safetensors``: ``w_enc``, ``w_dec``, ``threshold``,
   ``affine_skip_connection``; also when listed in a circuit-tracer ``config.yaml``). Whatever a format folds at load time (SAELens' saved activation scaling,
   ``rescale_acts_by_decoder_norm``, a log-threshold) is folded into the weights exactly; what cannot be
   expressed (run-time input normalisation, ``hook_z`` reshaping, cross-layer transcoders) is
   refused, never approximated.
3. **Which tensor it reads.** ``input_site`` records what the dictionary was trained on: ``"hook"`` (the
   tensor at ``hook_in`` itself, e.g. the pre-norm ``hook_resid_mid``), ``"mlp_input"`` (the MLP module's own
   input, *after* ``ln2`` and its weight: sparsify's ``layers.L.mlp`` transcoders, circuit-tracer's
   ``mlp.hook_in``; ``hook_in`` is then ``ln2.hook_normalized``, which is before the weight) or
   ``"mlp_output"`` (the MLP module's own output: sparsify, circuit-tracer's ``mlp.hook_out``).
   ``output_site`` likewise for ``hook_out``.
4. **Against a model.** :meth:`Dictionary.check_against` / :meth:`DictionarySet.check_against` check the
   hooks exist and have the widths ``d_in``/``d_out`` (one small forward pass), refuse an ``"mlp_output"``
   dictionary where a norm follows the MLP (Gemma 2/3: ``hook_mlp_out`` is after it) and an ``"mlp_input"``
   one where ``ln2`` does not normalise ``hook_resid_mid`` (a post-norm block), and return the dictionary as
   the model reads it: ``ln2``'s weight and bias folded into the encoder (and skip), reading
   ``ln2.hook_normalized`` exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from relp_lens.core import backends, nodes
from relp_lens.core.errors import RelPLensError
from relp_lens.core.files import read_input
from relp_lens.core.structure import mismatch, post_normed, structure_report, tolerance

Kind = Literal["sae", "transcoder", "skip_transcoder"]
Activation = Literal["relu", "topk", "jumprelu", "gated"]
InputSite = Literal["hook", "mlp_input", "mlp_output"]
OutputSite = Literal["hook", "mlp_output"]
Format = Literal["saelens", "sae_lens_object", "sparsify", "circuit_tracer", "gemma_scope_2", "memory"]
KINDS: tuple[str, ...] = ("sae", "transcoder", "skip_transcoder")
ACTIVATIONS: tuple[str, ...] = ("relu", "topk", "jumprelu", "gated")
INPUT_SITES: tuple[str, ...] = ("hook", "mlp_input", "mlp_output")
OUTPUT_SITES: tuple[str, ...] = ("hook", "mlp_output")
FORMATS: tuple[str, ...] = ("saelens", "sae_lens_object", "sparsify", "circuit_tracer", "gemma_scope_2", "memory")


@dataclasses.dataclass(frozen=True)
class DictionarySource:
    """Where a dictionary came from, for messages and provenance.

    Attributes:
        path: the file or folder it was read from (``"<memory>"`` for one built in code).
        format: the file format (one of :data:`FORMATS`).
        detail: what inside it (sparsify's hookpoint, circuit-tracer's layer file), ``""`` if nothing.
    """

    path: str = "<memory>"
    format: Format = "memory"
    detail: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or self.format not in FORMATS or not isinstance(self.detail, str):
            raise RelPLensError(f"DictionarySource needs a path and detail (strings) and a format from "
                                f"{list(FORMATS)}, got {self.path!r}, {self.format!r}, {self.detail!r}")

    def __str__(self) -> str:
        return self.path + (f" ({self.detail})" if self.detail else "")


@dataclasses.dataclass(frozen=True, eq=False)
class Dictionary:
    """One SAE, transcoder or skip transcoder, in one layout whatever the file's.

    Attributes:
        kind: ``"sae"`` (reconstructs its input: ``hook_in == hook_out``), ``"transcoder"`` or
            ``"skip_transcoder"`` (predicts ``hook_out`` from ``hook_in``; the latter adds ``x @ W_skip``).
        activation: ``"relu"``, ``"topk"`` (with ``k``), ``"jumprelu"`` (with ``threshold``) or ``"gated"``
            (with ``r_mag`` and ``b_mag``; ``b_enc`` is the gate's bias ``b_gate``).
        W_enc: the encoder, ``[d_in, d_sae]``.
        b_enc: the encoder bias, ``[d_sae]``.
        W_dec: the decoder, ``[d_sae, d_out]`` (row ``i``: what latent ``i`` writes).
        b_dec: the decoder bias, ``[d_out]``.
        hook_in: the TransformerLens hook it reads.
        hook_out: the TransformerLens hook it reconstructs.
        k: the number of latents ``topk`` keeps; ``None`` for the other activations.
        threshold: ``jumprelu``'s per-latent threshold, ``[d_sae]``; ``None`` for the others.
        topk_relu: ``topk`` zeroes negative kept values (SAELens, sparsify); off for circuit-tracer's TopK.
        r_mag: ``gated``'s magnitude path scales the encoder by ``exp(r_mag)``, ``[d_sae]``; ``None`` otherwise.
        b_mag: ``gated``'s magnitude bias, ``[d_sae]``; ``None`` otherwise.
        W_skip: the skip connection of a skip transcoder, ``[d_in, d_out]``; ``None`` otherwise.
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding (SAEs only).
        input_site: what ``hook_in`` stands for (:data:`INPUT_SITES`; the module docstring, step 3).
        output_site: what ``hook_out`` stands for (:data:`OUTPUT_SITES`).
        layer: the block it belongs to (``None`` for a hook outside the blocks).
        source: where it was read from.
    """

    kind: Kind
    activation: Activation
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    hook_in: str
    hook_out: str
    k: int | None = None
    threshold: torch.Tensor | None = None
    topk_relu: bool = True
    r_mag: torch.Tensor | None = None
    b_mag: torch.Tensor | None = None
    W_skip: torch.Tensor | None = None
    apply_b_dec_to_input: bool = False
    input_site: InputSite = "hook"
    output_site: OutputSite = "hook"
    layer: int | None = None
    source: DictionarySource = dataclasses.field(default_factory=DictionarySource)

    def __post_init__(self) -> None:
        def bad(problem: str) -> RelPLensError:
            return RelPLensError(f"{self.source}: {problem}")

        for name, value, options in (("kind", self.kind, KINDS), ("activation", self.activation, ACTIVATIONS),
                                     ("input_site", self.input_site, INPUT_SITES),
                                     ("output_site", self.output_site, OUTPUT_SITES)):
            if value not in options:
                raise bad(f"{name} must be one of {list(options)}, got {value!r}")
        if not isinstance(self.source, DictionarySource):
            raise RelPLensError(f"source must be a DictionarySource, got {type(self.source).__name__}")
        for name in ("hook_in", "hook_out"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise bad(f"{name} must be a non-empty hook name, got {value!r}")
        for name in ("topk_relu", "apply_b_dec_to_input"):
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)
                                       or self.layer < 0):
            raise bad(f"layer must be a block index (an int >= 0) or None, got {self.layer!r}")
        if self.layer is None and (self.input_site != "hook" or self.output_site != "hook"):
            raise bad(f"input_site {self.input_site!r} / output_site {self.output_site!r} name a block's MLP: "
                      "give the block as layer")
        site_hooks = {"mlp_input": nodes.ln2_normalized, "mlp_output": nodes.mlp_out}
        for name, site, hook in (("hook_in", self.input_site, self.hook_in),
                                 ("hook_out", self.output_site, self.hook_out)):
            if site in site_hooks and hook != site_hooks[site](self.layer):
                raise bad(f"{name} of a site {site!r} dictionary at layer {self.layer} is "
                          f"{site_hooks[site](self.layer)}, got {hook!r}")
        required = {"W_enc": 2, "b_enc": 1, "W_dec": 2, "b_dec": 1}
        optional = {"threshold": 1, "W_skip": 2, "r_mag": 1, "b_mag": 1}
        for name, ndim in {**required, **optional}.items():
            t = getattr(self, name)
            if t is None and name in optional:
                continue
            if not isinstance(t, torch.Tensor):
                raise bad(f"{name} must be a tensor, got {type(t).__name__}")
            if not t.is_floating_point() or t.ndim != ndim:
                raise bad(f"{name} must be a {ndim}-D floating-point tensor, got {t.dtype} of shape "
                          f"{tuple(t.shape)}")
            if t.dtype != self.W_enc.dtype or t.device != self.W_enc.device:
                raise bad(f"{name} is {t.dtype} on {t.device} but W_enc is {self.W_enc.dtype} on "
                          f"{self.W_enc.device}: give every tensor the same dtype and device")
        d_in, d_sae = self.W_enc.shape
        d_out = self.W_dec.shape[1]
        want = {"b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,), "threshold": (d_sae,),
                "W_skip": (d_in, d_out), "r_mag": (d_sae,), "b_mag": (d_sae,)}
        for name, shape in want.items():
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise bad(f"{name} has shape {tuple(t.shape)}, expected {shape} (W_enc is [d_in={d_in}, "
                          f"d_sae={d_sae}], W_dec [d_sae, d_out={d_out}])")
        if min(d_in, d_sae, d_out) == 0:
            raise bad(f"empty dictionary: d_in={d_in}, d_sae={d_sae}, d_out={d_out}")
        if (self.W_skip is not None) != (self.kind == "skip_transcoder"):
            raise bad("W_skip is given for a kind other than skip_transcoder" if self.W_skip is not None
                      else "a skip_transcoder needs W_skip [d_in, d_out]")
        if self.kind == "sae":
            if self.hook_in != self.hook_out or d_in != d_out or self.input_site != self.output_site:
                raise bad(f"an SAE reconstructs its input: hook_in ({self.hook_in}) must equal hook_out "
                          f"({self.hook_out}), d_in ({d_in}) d_out ({d_out}) and input_site "
                          f"({self.input_site}) output_site ({self.output_site})")
        elif self.apply_b_dec_to_input:
            raise bad("apply_b_dec_to_input is for SAEs: a transcoder's b_dec lives in its output space")
        if self.activation == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= d_sae:
                raise bad(f"topk needs k, an int from 1 to d_sae={d_sae}, got {self.k!r}")
        elif self.k is not None:
            raise bad(f"k is for the topk activation, not {self.activation}")
        if (self.threshold is not None) != (self.activation == "jumprelu"):
            raise bad("threshold is for the jumprelu activation" if self.threshold is not None
                      else "jumprelu needs threshold [d_sae]")
        gated = (self.r_mag is not None, self.b_mag is not None)
        if gated != ((self.activation == "gated"),) * 2:
            raise bad("gated needs r_mag [d_sae] and b_mag [d_sae]" if self.activation == "gated"
                      else "r_mag and b_mag are for the gated activation")
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip", "r_mag", "b_mag"):
            t = getattr(self, name)
            if t is not None and not bool(torch.isfinite(t).all()):
                raise bad(f"{name} holds NaN or infinite values")

    @property
    def d_in(self) -> int:
        """The width of the activation it reads (``W_enc``'s rows)."""
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        """The number of latents."""
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        """The width of the activation it reconstructs (``W_dec``'s columns)."""
        return int(self.W_dec.shape[1])

    def _check_width(self, t: Any, width: int, what: str, name: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise RelPLensError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.ndim == 0 or t.shape[-1] != width:
            raise RelPLensError(f"{self.source}: {name} must be [..., {what}={width}], got {tuple(t.shape)}")

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x, self.d_in, "d_in", "x")
        x = x.to(self.W_enc.dtype)
        return x - self.b_dec if self.apply_b_dec_to_input else x

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's pre-activations ``(x − b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc`` (a gated
        dictionary's gate pre-activations).

        Args:
            x: activations at ``hook_in``, ``[..., d_in]`` (cast to the dictionary's dtype).

        Returns:
            ``[..., d_sae]``.
        """
        return self._encoder_input(x) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latents: the activation function applied to :meth:`pre_activations`.

        1. ``relu``: ``max(p, 0)``; ``jumprelu``: ``p·[p > threshold]``; ``topk``: the ``k`` largest ``p``
           kept (ReLU'd when ``topk_relu``), the rest 0; ``gated`` (SAELens' ``GatedSAE``):
           ``[p > 0] · max(x' @ (W_enc·exp(r_mag)) + b_mag, 0)`` with ``x'`` the encoder's input — the gate
           selects, the magnitude path (sharing the encoder's directions) sets the value.
        2. Gradients flow through the kept values only (the gate is a comparison): the frozen-gate reading
           RelP gives MLP gates.

        Args:
            x: activations at ``hook_in``, ``[..., d_in]``.

        Returns:
            ``[..., d_sae]``.
        """
        if self.activation == "gated":
            x_in = self._encoder_input(x)
            gate = (x_in @ self.W_enc + self.b_enc > 0).to(self.W_enc.dtype)
            return gate * (x_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag).clamp_min(0)
        p = self.pre_activations(x)
        if self.activation == "relu":
            return p.clamp_min(0)
        if self.activation == "jumprelu":
            return p * (p > self.threshold)
        values, index = p.topk(self.k, dim=-1)
        return torch.zeros_like(p).scatter(-1, index, values.clamp_min(0) if self.topk_relu else values)

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction ``f @ W_dec + b_dec`` (``+ x @ W_skip`` for a skip transcoder).

        Args:
            f: latents, ``[..., d_sae]``.
            x: the input the latents came from, ``[..., d_in]``; needed by a skip transcoder only.

        Returns:
            ``[..., d_out]``.
        """
        self._check_width(f, self.d_sae, "d_sae", "f")
        out = f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise RelPLensError(f"{self.source}: a skip transcoder's decode needs the input x as well")
            self._check_width(x, self.d_in, "d_in", "x")
            out = out + x.to(self.W_skip.dtype) @ self.W_skip
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x``: ``decode(encode(x), x)``.

        Args:
            x: activations at ``hook_in``, ``[..., d_in]``.

        Returns:
            ``[..., d_out]``.
        """
        return self.decode(self.encode(x), x)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Dictionary:
        """The same dictionary with every tensor on ``device`` / in ``dtype``.

        Args:
            device: the target device (``None``: unchanged).
            dtype: the target floating-point dtype (``None``: unchanged).

        Returns:
            A new :class:`Dictionary`.
        """
        moved = {f: getattr(self, f).to(device=device, dtype=dtype)
                 for f in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip", "r_mag", "b_mag")
                 if getattr(self, f) is not None}
        return dataclasses.replace(self, **moved)

    def fold_input(self, scale: torch.Tensor, shift: torch.Tensor | None = None) -> Dictionary:
        """The transcoder reading ``n`` where this one reads ``n ⊙ scale + shift``, exactly.

        1. ``W_enc ← scale[:, None]·W_enc``, ``b_enc ← b_enc + shift @ W_enc`` (a gated one also
           ``b_mag ← b_mag + (shift @ W_enc)·exp(r_mag)``); a skip transcoder also
           ``W_skip ← scale[:, None]·W_skip``, ``b_dec ← b_dec + shift @ W_skip``.
        2. Used for ``input_site="mlp_input"``: ``ln2(x) = hook_normalized ⊙ w + b``. An SAE is refused: it
           reads what it writes, so it cannot read another tensor.

        Args:
            scale: ``[d_in]``.
            shift: ``[d_in]``, or ``None`` for none.

        Returns:
            A new :class:`Dictionary` with ``input_site="hook"``.
        """
        if self.kind == "sae":
            raise RelPLensError(f"{self.source}: an SAE reads what it writes; fold_input is for transcoders")
        for name, t in (("scale", scale), ("shift", shift)):
            if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (self.d_in,)):
                raise RelPLensError(f"{self.source}: {name} must be a [d_in={self.d_in}] tensor, got "
                                    f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        scale = scale.to(self.W_enc)
        shift = torch.zeros_like(scale) if shift is None else shift.to(self.W_enc)
        changes: dict[str, Any] = {"W_enc": scale[:, None] * self.W_enc, "b_enc": self.b_enc + shift @ self.W_enc,
                                   "input_site": "hook"}
        if self.activation == "gated":  # the magnitude path reads through W_enc·exp(r_mag)
            changes["b_mag"] = self.b_mag + (shift @ self.W_enc) * self.r_mag.exp()
        if self.W_skip is not None:
            changes.update(W_skip=scale[:, None] * self.W_skip, b_dec=self.b_dec + shift @ self.W_skip)
        return dataclasses.replace(self, **changes)

    def check_against(self, model: Any) -> Dictionary:
        """Check this dictionary against ``model`` and return it as the model reads it.

        1. The hooks exist and have widths ``d_in`` / ``d_out`` (one small forward pass).
        2. ``"mlp_output"``: ``hook_mlp_out`` is the MLP's own output (no norm after the MLP), else refused.
        3. ``"mlp_input"``: ``ln2`` normalises ``hook_resid_mid`` (a pre-norm block), else refused; ``ln2``'s
           weight and bias are folded into the encoder (:meth:`fold_input`).

        Args:
            model: a HookedTransformer or TransformerBridge.

        Returns:
            The dictionary reading its hooks exactly (``input_site`` ``"hook"`` or ``"mlp_output"``).
        """
        return _check_against(model, [self])[0]


@dataclasses.dataclass(frozen=True, eq=False)
class DictionarySet:
    """Dictionaries by layer, at most one per block: what :func:`load_transcoders` returns.

    Attributes:
        dictionaries: the dictionaries, in layer order.
        source: the folder they were read from.
    """

    dictionaries: tuple[Dictionary, ...]
    source: DictionarySource = dataclasses.field(default_factory=DictionarySource)

    def __post_init__(self) -> None:
        items = tuple(self.dictionaries) if isinstance(self.dictionaries, (list, tuple)) else None
        if not items or not all(isinstance(d, Dictionary) for d in items):
            raise RelPLensError(f"{self.source}: a DictionarySet needs a non-empty list of Dictionary objects")
        layers = [d.layer for d in items]
        if None in layers:
            raise RelPLensError(f"{self.source}: every dictionary of a set needs its layer; "
                                f"{items[layers.index(None)].source} has none")
        if len(set(layers)) != len(layers) or layers != sorted(layers):
            raise RelPLensError(f"{self.source}: layers must be distinct and in order, got {layers}")
        object.__setattr__(self, "dictionaries", items)

    @property
    def layers(self) -> list[int]:
        """The blocks that have a dictionary, in order."""
        return [d.layer for d in self.dictionaries]

    def __getitem__(self, layer: int) -> Dictionary:
        for d in self.dictionaries:
            if d.layer == layer:
                return d
        raise RelPLensError(f"{self.source}: no dictionary for layer {layer!r} (layers: {self.layers})")

    def __iter__(self) -> Iterator[Dictionary]:
        return iter(self.dictionaries)

    def __len__(self) -> int:
        return len(self.dictionaries)

    def check_against(self, model: Any) -> DictionarySet:
        """:meth:`Dictionary.check_against` for every dictionary, with one forward pass.

        Args:
            model: a HookedTransformer or TransformerBridge.

        Returns:
            The set as the model reads it.
        """
        return dataclasses.replace(self, dictionaries=tuple(_check_against(model, list(self.dictionaries))))


# --- checks against a model -------------------------------------------------------------------------------
_CHECK_TOKENS = 8


def _capture(model: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The values of the hook points ``names`` on a fixed random 8-token input, the model in eval mode."""
    g = torch.Generator().manual_seed(0)
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or _CHECK_TOKENS)
    ids = torch.randint(int(model.cfg.d_vocab), (1, min(_CHECK_TOKENS, n_ctx)), generator=g)
    training = model.training
    model.eval()
    try:
        return backends.capture(model, ids, names)[1]
    finally:
        model.train(training)


def _normalised(x: torch.Tensor, centre: bool) -> torch.Tensor:
    x = x.double()
    if centre:
        x = x - x.mean(-1, keepdim=True)
    return x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


def _ln2_affine(model: Any, d: Dictionary) -> tuple[torch.Tensor, torch.Tensor | None]:
    ln = getattr(model.blocks[d.layer], "ln2", None)
    w = getattr(ln, "w", None)
    if not isinstance(w, torch.Tensor):
        raise RelPLensError(f"{d.source}: the dictionary reads the MLP's input after ln2's weight, but block "
                            f"{d.layer}'s ln2 has no weight (folded into the MLP: load the model with "
                            "fold_ln=False, as relp_lens.load_model does)")
    if backends.is_bridge(model) and getattr(model.cfg, "rmsnorm_uses_offset", False):
        w = 1.0 + w
    b = getattr(ln, "b", None)
    return w.detach(), (b.detach() if isinstance(b, torch.Tensor) else None)


def _check_against(model: Any, dicts: list[Dictionary]) -> list[Dictionary]:
    backends.require_model(model)
    hooks = sorted({h for d in dicts for h in (d.hook_in, d.hook_out)}
                   | {nodes.resid_mid(d.layer) for d in dicts if d.input_site == "mlp_input"})
    nodes.resolve_hooks(model, hooks, live=False)  # unknown hooks: refused with the nearest names (values read only)
    got = _capture(model, hooks)
    for d in dicts:
        for name, hook, want in (("d_in", d.hook_in, d.d_in), ("d_out", d.hook_out, d.d_out)):
            if hook not in got:
                raise RelPLensError(f"{d.source}: the model's forward pass never reached {hook}")
            width = math.prod(got[hook].shape[2:])
            if width != want:
                raise RelPLensError(f"{d.source}: {name} is {want} but the model's {hook} has width {width}: "
                                    "this dictionary was trained on another model or hook")
    report = None
    out = []
    for d in dicts:
        if "mlp_output" in (d.input_site, d.output_site):
            if report is None:
                report = structure_report(model)
            broken = [b.message() for b in report if b.identity == "mlp_out" and b.layer == d.layer]
            if ("mlp", d.layer) in post_normed(model):  # read through for edges, but not the module's output
                broken.append(f"at layer {d.layer}, {nodes.mlp_out(d.layer)} is not the MLP module's output: "
                              f"the norm ln2_post comes between them")
            if broken:
                raise RelPLensError(f"{d.source}: the dictionary reads or writes the MLP module's own output, but "
                                    f"{broken[0]}, so {d.hook_out} is not that output. Refused rather "
                                    "than splicing it at the wrong tensor")
        if d.input_site == "mlp_input":
            mid = got[nodes.resid_mid(d.layer)]
            normalized = got[d.hook_in]
            tol = tolerance(normalized.dtype)
            if min(mismatch(normalized, _normalised(mid, c)) for c in (False, True)) > tol:
                raise RelPLensError(f"{d.source}: the dictionary was trained on the MLP's input (ln2 of "
                                    f"hook_resid_mid, the post-norm input), but block {d.layer}'s "
                                    f"{d.hook_in} is not a norm of {nodes.resid_mid(d.layer)} (a block whose "
                                    "ln2 comes after the MLP?). Refused rather than reading the wrong tensor")
            w, b = _ln2_affine(model, d)
            d = d.fold_input(w, b)
        out.append(d)
    return out


# --- reading files ------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict:
    raw = read_input(path, what)
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RelPLensError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from e
    if not isinstance(cfg, dict):
        raise RelPLensError(f"{path}: the {what} must be a JSON object, got {type(cfg).__name__}")
    return cfg


def _read_yaml(path: Path, what: str) -> dict:
    raw = read_input(path, what)
    try:
        import yaml
    except ImportError as e:
        raise RelPLensError(f"reading {path} needs PyYAML: pip install pyyaml") from e
    try:
        cfg = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise RelPLensError(f"{path}: not valid YAML ({type(e).__name__}: {e})") from e
    if not isinstance(cfg, dict):
        raise RelPLensError(f"{path}: the {what} must be a mapping, got {type(cfg).__name__}")
    return cfg


def _read_tensors(path: Path, what: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    raw = read_input(path, what)
    from safetensors.torch import load

    try:
        tensors = load(raw)
    except Exception as e:  # safetensors raises its own SafetensorError (and others) on a malformed header
        raise RelPLensError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    for key, t in tensors.items():
        if not t.is_floating_point() and key != "k":
            raise RelPLensError(f"{path}: tensor {key!r} is {t.dtype}, expected floating-point weights")
    return {k: (t if k == "k" else t.to(dtype)) for k, t in tensors.items()}


class _Cfg:
    """Typed reads of a config mapping; every refusal names the file and the key."""

    def __init__(self, cfg: Mapping, where: str, prefix: str = ""):
        self.cfg, self.where, self.prefix = cfg, where, prefix

    def _bad(self, key: str, want: str, value: Any) -> RelPLensError:
        return RelPLensError(f"{self.where}: key {self.prefix + key!r} must be {want}, got {value!r}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.cfg.get(key, default)

    def int(self, key: str, minimum: int = 1, default: Any = ...) -> int | None:
        v = self.cfg.get(key, default)
        if v is ...:
            raise RelPLensError(f"{self.where}: missing key {self.prefix + key!r}")
        if v is None and default is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self._bad(key, f"an integer >= {minimum}", v)
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.cfg.get(key, default)
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def str(self, key: str, default: Any = ...) -> str | None:
        v = self.cfg.get(key, default)
        if v is ...:
            raise RelPLensError(f"{self.where}: missing key {self.prefix + key!r}")
        if v is None and default is None:
            return None
        if not isinstance(v, str) or not v:
            raise self._bad(key, "a non-empty string", v)
        return v

    def sub(self, key: str) -> _Cfg:
        v = self.cfg.get(key, {})
        if not isinstance(v, dict):
            raise self._bad(key, "an object", v)
        return _Cfg(v, self.where, f"{self.prefix}{key}.")


def _take(tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], where: str) -> torch.Tensor:
    if key not in tensors:
        raise RelPLensError(f"{where}: missing tensor {key!r} (has {sorted(tensors)})")
    t = tensors.pop(key)
    if tuple(t.shape) != shape:
        raise RelPLensError(f"{where}: tensor {key!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def _no_leftovers(tensors: dict[str, torch.Tensor], where: str) -> None:
    if tensors:
        raise RelPLensError(f"{where}: unexpected tensors {sorted(tensors)}: this reader does not know what they "
                            "do, so it refuses rather than ignoring them")


# --- SAELens ------------------------------------------------------------------------------------------------
_SAELENS_ARCHS = {  # architecture → (kind, activation)
    "standard": ("sae", "relu"), "topk": ("sae", "topk"), "jumprelu": ("sae", "jumprelu"), "gated": ("sae", "gated"),
    "transcoder": ("transcoder", "relu"), "skip_transcoder": ("skip_transcoder", "relu"),
    "jumprelu_transcoder": ("transcoder", "jumprelu"), "jumprelu_skip_transcoder": ("skip_transcoder", "jumprelu"),
}


def _saelens_dictionary(cfg_dict: dict, tensors: dict[str, torch.Tensor], where: str, source: DictionarySource,
                        scaling_factor: float | None, hook_in: str | None, hook_out: str | None) -> Dictionary:
    cfg = _Cfg(cfg_dict, where)
    arch = cfg.str("architecture", "standard")
    act_fn = cfg.str("activation_fn", None)  # SAELens < 6 named TopK here, with no 'architecture' key
    if act_fn == "topk" and "architecture" not in cfg_dict:
        arch, cfg = "topk", _Cfg({**cfg_dict, "k": cfg.sub("activation_fn_kwargs").get("k")}, where)
    elif act_fn not in (None, "relu"):
        raise RelPLensError(f"{where}: key 'activation_fn' is {act_fn!r}; only 'relu' (or 'topk' without an "
                            "'architecture' key, SAELens < 6) is understood")
    if arch not in _SAELENS_ARCHS:
        raise RelPLensError(f"{where}: key 'architecture' is {arch!r}; supported: {sorted(_SAELENS_ARCHS)}")
    kind, activation = _SAELENS_ARCHS[arch]
    d_in, d_sae = cfg.int("d_in"), cfg.int("d_sae")
    d_out = d_in if kind == "sae" else cfg.int("d_out")
    apply_b_dec = cfg.bool("apply_b_dec_to_input", kind == "sae")
    if apply_b_dec and kind != "sae":
        raise RelPLensError(f"{where}: key 'apply_b_dec_to_input' is true for a {arch}; SAELens refuses that too")
    reshape = cfg.str("reshape_activations", "none")
    if reshape != "none":
        raise RelPLensError(f"{where}: key 'reshape_activations' is {reshape!r}: hook_z SAEs (per-head inputs) "
                            "are not supported")
    meta = cfg.sub("metadata")
    for key in ("hook_head_index", "hook_head_index_out"):
        if meta.get(key) is not None:
            raise RelPLensError(f"{where}: key 'metadata.{key}' is {meta.get(key)!r}: SAEs on one head's slice "
                                "are not supported")
    names = {}
    for key, given in (("hook_name", hook_in), ("hook_name_out", hook_out)):
        in_file = meta.str(key, None) if key in meta.cfg else cfg.str(key, None)
        if key == "hook_name" and in_file is None:
            in_file = cfg.str("hook_point", None)  # SAELens < 6
        if in_file is not None and given is not None and in_file != given:
            raise RelPLensError(f"{where}: key 'metadata.{key}' says {in_file!r} but {given!r} was given")
        names[key] = in_file or given
    if names["hook_name"] is None:
        raise RelPLensError(f"{where}: missing key 'metadata.hook_name' (which hook the dictionary reads); "
                            "give it with hook_in=")
    if kind == "sae":
        if names["hook_name_out"] not in (None, names["hook_name"]):
            raise RelPLensError(f"{where}: an SAE's 'metadata.hook_name_out' ({names['hook_name_out']!r}) must "
                                f"equal its hook_name ({names['hook_name']!r})")
        names["hook_name_out"] = names["hook_name"]
    elif names["hook_name_out"] is None:
        raise RelPLensError(f"{where}: missing key 'metadata.hook_name_out' (which hook the {arch} writes); "
                            "give it with hook_out=")
    W_enc = _take(tensors, "W_enc", (d_in, d_sae), where)
    b_enc = _take(tensors, "b_gate" if activation == "gated" else "b_enc", (d_sae,), where)
    W_dec = _take(tensors, "W_dec", (d_sae, d_out), where)
    b_dec = _take(tensors, "b_dec", (d_out,), where)
    threshold = W_skip = k = r_mag = b_mag = None
    if activation == "gated":
        r_mag, b_mag = _take(tensors, "r_mag", (d_sae,), where), _take(tensors, "b_mag", (d_sae,), where)
    if activation == "jumprelu":
        if "log_threshold" in tensors:  # older SAELens checkpoints
            threshold = _take(tensors, "log_threshold", (d_sae,), where).exp()
        else:
            threshold = _take(tensors, "threshold", (d_sae,), where)
        threshold = threshold.clamp_min(0)  # SAELens: relu(p)·[p > t] = p·[p > max(t, 0)]
    if kind == "skip_transcoder":
        W_skip = _take(tensors, "W_skip", (d_out, d_in), where).T.contiguous()  # SAELens: x @ W_skip.T
    if activation == "topk":
        k = cfg.int("k")
        if k > d_sae:
            raise RelPLensError(f"{where}: key 'k' is {k}, more than d_sae={d_sae}")
        if cfg.bool("rescale_acts_by_decoder_norm", False):  # fold: topk on p·|W_dec_i|, decode f/|W_dec_i|
            norms = W_dec.norm(dim=-1)
            if not bool((norms > 0).all()):
                raise RelPLensError(f"{where}: rescale_acts_by_decoder_norm with a zero decoder row")
            W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not bool((scaling == 1).all()):
        raise RelPLensError(f"{where}: tensor 'scaling_factor' is not all ones (a finetuning scaling factor, "
                            "which SAELens 6 no longer applies either)")
    _no_leftovers(tensors, where)
    norm = cfg.str("normalize_activations", "none")
    if norm == "expected_average_only_in":
        if scaling_factor is None:
            raise RelPLensError(f"{where}: key 'normalize_activations' is 'expected_average_only_in' and no "
                                "activation_scaler.json with its scaling_factor lies beside it: pass "
                                "scaling_factor= (SAELens multiplies the input by it before encoding)")
        if isinstance(scaling_factor, bool) or not isinstance(scaling_factor, (int, float)) or \
                not math.isfinite(scaling_factor) or scaling_factor <= 0:
            raise RelPLensError(f"{where}: scaling_factor must be a positive number, got {scaling_factor!r}")
        # SAELens' fold_activation_norm_scaling_factor: the same maps on unscaled inputs
        W_enc, W_dec, b_dec = W_enc * scaling_factor, W_dec / scaling_factor, b_dec / scaling_factor
    elif norm != "none":
        raise RelPLensError(f"{where}: key 'normalize_activations' is {norm!r}: a normalisation computed from "
                            "each input at run time (or a whitening) is not supported; 'none' and "
                            "'expected_average_only_in' (a saved scaling factor) are")
    hin, hout = names["hook_name"], names["hook_name_out"]
    return Dictionary(kind=kind, activation=activation, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec,
                  hook_in=hin, hook_out=hout, k=k, threshold=threshold, W_skip=W_skip, r_mag=r_mag, b_mag=b_mag,
                  apply_b_dec_to_input=apply_b_dec, layer=nodes.block_of(hin), source=source)


def load_sae(path: str | Path | Any, *, scaling_factor: float | None = None, hook_in: str | None = None,
             hook_out: str | None = None, dtype: torch.dtype = torch.float32) -> Dictionary:
    """Read an SAE or transcoder in SAELens' format, without importing ``sae_lens``.

    1. ``path`` is a folder with ``cfg.json`` and ``sae_weights.safetensors`` (what SAELens' ``save_model``
       writes), or an ``sae_lens.SAE`` object (its config and weights are read the same way).
    2. Architectures ``standard``, ``topk`` (``rescale_acts_by_decoder_norm`` folded), ``jumprelu``
       (``threshold`` or ``log_threshold``), ``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
       ``jumprelu_skip_transcoder``, ``gated`` (``b_gate``, ``r_mag``, ``b_mag``).
    3. ``normalize_activations="expected_average_only_in"``: the scaling factor (``scaling_factor=``, else
       ``activation_scaler.json`` beside the weights) is folded in as SAELens does; other normalisations are
       refused.
    4. Hooks: ``metadata.hook_name`` (and ``metadata.hook_name_out`` for transcoders).

    Args:
        path: the folder, or an ``sae_lens.SAE``.
        scaling_factor: the input scaling factor of an ``expected_average_only_in`` SAE not yet folded.
        hook_in: the hook it reads, where the config does not say (a different value is refused).
        hook_out: the hook a transcoder writes, where the config does not say.
        dtype: the dtype of the returned weights.

    Returns:
        A :class:`Dictionary`.
    """
    if not isinstance(path, (str, Path)):
        if not type(path).__module__.startswith("sae_lens"):
            raise RelPLensError(f"load_sae takes a folder or an sae_lens.SAE, got {type(path).__name__}")
        sae = path
        where = f"sae_lens.{type(sae).__name__}"
        cfg_dict = sae.cfg.to_dict()
        tensors = {k: v.detach().to("cpu", dtype) for k, v in sae.state_dict().items()}
        return _saelens_dictionary(cfg_dict, tensors, where, DictionarySource(where, "sae_lens_object"),
                                   scaling_factor, hook_in, hook_out)
    folder = Path(path)
    if not folder.is_dir():
        raise RelPLensError(f"{folder}: give the folder holding cfg.json and sae_weights.safetensors"
                            + ("" if folder.exists() else " (not found)"))
    cfg_path = folder / "cfg.json"
    cfg_dict = _read_json(cfg_path, "SAELens config")
    tensors = _read_tensors(folder / "sae_weights.safetensors", "SAELens weights file", dtype)
    scaler = folder / "activation_scaler.json"
    if scaling_factor is None and cfg_dict.get("normalize_activations") == "expected_average_only_in" \
            and scaler.is_file():
        scaling_factor = _read_json(scaler, "SAELens activation scaler").get("scaling_factor")
        if scaling_factor is None:
            raise RelPLensError(f"{scaler}: key 'scaling_factor' is missing or null")
    return _saelens_dictionary(cfg_dict, tensors, str(cfg_path), DictionarySource(str(folder), "saelens"),
                               scaling_factor, hook_in, hook_out)


# --- sparsify -----------------------------------------------------------------------------------------------
_HOOKPOINT = re.compile(r"(?:model\.)?layers\.(\d+)(\.mlp)?")


def _sparsify_hooks(hookpoint: str, transcode: bool, where: str) -> tuple[str, str, str, str, int]:
    """``(hook_in, hook_out, input_site, output_site, layer)`` for a sparsify hookpoint (a module name of the
    Hugging Face model; a hook on the module reads its input and output)."""
    m = _HOOKPOINT.fullmatch(hookpoint)
    if m is None:
        raise RelPLensError(f"{where}: hookpoint {hookpoint!r} is not supported: layers.L (the block's "
                            "output) and layers.L.mlp (the MLP) are")
    layer = int(m.group(1))
    if m.group(2) is None:  # the block: reads hook_resid_pre, writes hook_resid_post
        return (nodes.resid_pre(layer) if transcode else nodes.resid_post(layer), nodes.resid_post(layer),
                "hook", "hook", layer)
    if transcode:  # the MLP module's input: ln2's output with its weight, before the MLP
        return nodes.ln2_normalized(layer), nodes.mlp_out(layer), "mlp_input", "mlp_output", layer
    return nodes.mlp_out(layer), nodes.mlp_out(layer), "mlp_output", "mlp_output", layer


def _load_sparsify_one(folder: Path, hookpoint: str, dtype: torch.dtype) -> Dictionary:
    cfg_path = folder / "cfg.json"
    where = str(cfg_path)
    cfg = _Cfg(_read_json(cfg_path, "sparsify config"), where)
    activation = cfg.str("activation", "topk")
    if activation != "topk":
        raise RelPLensError(f"{where}: key 'activation' is {activation!r}: only sparsify's topk is supported")
    d_in, k = cfg.int("d_in"), cfg.int("k")
    transcode, skip = cfg.bool("transcode", False), cfg.bool("skip_connection", False)
    if skip and not transcode:
        raise RelPLensError(f"{where}: skip_connection without transcode (an SAE with a skip) is not supported")
    weights = folder / "sae.safetensors"
    tensors = _read_tensors(weights, "sparsify weights file", dtype)
    wsrc = str(weights)
    if "encoder.weight" not in tensors or tensors["encoder.weight"].ndim != 2:
        raise RelPLensError(f"{wsrc}: missing 2-D tensor 'encoder.weight' [num_latents, d_in] (has "
                            f"{sorted(tensors)})")
    d_sae = int(tensors["encoder.weight"].shape[0])
    n_latents = cfg.int("num_latents", minimum=0, default=0)
    expected = n_latents or d_in * cfg.int("expansion_factor", default=32)
    if d_sae != expected:
        raise RelPLensError(f"{where}: num_latents / expansion_factor say {expected} latents, "
                            f"but encoder.weight has {d_sae}")
    if k > d_sae:
        raise RelPLensError(f"{where}: key 'k' is {k}, more than the {d_sae} latents")
    W_enc = _take(tensors, "encoder.weight", (d_sae, d_in), wsrc).T.contiguous()  # nn.Linear: x @ weight.T
    b_enc = _take(tensors, "encoder.bias", (d_sae,), wsrc)
    if "W_dec" not in tensors or tensors["W_dec"].ndim != 2:
        raise RelPLensError(f"{wsrc}: missing tensor 'W_dec' [num_latents, d_out]")
    d_out = int(tensors["W_dec"].shape[1])
    W_dec = _take(tensors, "W_dec", (d_sae, d_out), wsrc)
    b_dec = _take(tensors, "b_dec", (d_out,), wsrc)
    W_skip = _take(tensors, "W_skip", (d_out, d_in), wsrc).T.contiguous() if skip else None  # x @ W_skip.mT
    _no_leftovers(tensors, wsrc)
    hook_in, hook_out, input_site, output_site, layer = _sparsify_hooks(hookpoint, transcode, where)
    kind = "skip_transcoder" if skip else "transcoder" if transcode else "sae"
    return Dictionary(kind=kind, activation="topk", W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec,
                  hook_in=hook_in, hook_out=hook_out, k=k, W_skip=W_skip, apply_b_dec_to_input=not transcode,
                  input_site=input_site, output_site=output_site, layer=layer,
                  source=DictionarySource(str(folder), "sparsify", hookpoint))


# --- circuit-tracer and Gemma Scope 2 -----------------------------------------------------------------------
_CT_HOOKS = {  # circuit-tracer's feature hooks (relative to the block) → (TransformerLens hook, site)
    "mlp.hook_in": (nodes.ln2_normalized, "mlp_input"),  # its ReplacementMLP's input: ln2's output
    "mlp.hook_out": (nodes.mlp_out, "mlp_output"),  # its ReplacementMLP's output: before any post-MLP norm
    "hook_mlp_out": (nodes.mlp_out, "hook"),
    "hook_resid_mid": (nodes.resid_mid, "hook"),
}


def _ct_hook(name: str, layer: int) -> tuple[str, str]:
    if name in _CT_HOOKS:
        fn, site = _CT_HOOKS[name]
        return fn(layer), site
    return nodes.block_hook(layer, name), "hook"


def _gemma_scope_2_weights(tensors: dict[str, torch.Tensor], where: str) -> tuple[torch.Tensor, ...]:
    """``(W_enc, W_dec, threshold, W_skip)`` of a Gemma Scope 2 ``params.safetensors`` (``b_enc``, ``b_dec`` stay):
    ``w_enc [d_in, d_sae]``, ``w_dec [d_sae, d_out]``, ``threshold [d_sae]``, ``affine_skip_connection
    [d_in, d_out]`` applied as ``x @ affine_skip_connection`` (as circuit-tracer's and SAELens' loaders read it)."""
    if "w_enc" not in tensors or tensors["w_enc"].ndim != 2 or "w_dec" not in tensors or tensors["w_dec"].ndim != 2:
        raise RelPLensError(f"{where}: a Gemma Scope 2 file needs w_enc [d_in, d_sae], w_dec [d_sae, d_out], "
                            f"b_enc, b_dec, threshold (has {sorted(tensors)})")
    d_in, d_sae = tensors["w_enc"].shape
    d_out = int(tensors["w_dec"].shape[1])
    W_enc = _take(tensors, "w_enc", (d_in, d_sae), where)
    W_dec = _take(tensors, "w_dec", (d_sae, d_out), where)
    threshold = _take(tensors, "threshold", (d_sae,), where)
    W_skip = _take(tensors, "affine_skip_connection", (d_in, d_out), where) \
        if "affine_skip_connection" in tensors else None
    return W_enc, W_dec, threshold, W_skip


_GS2_HOOK = re.compile(r"model\.layers\.(\d+)\.(pre|post)_feedforward_layernorm\.output")


def _load_gemma_scope_2(folder: Path, dtype: torch.dtype) -> Dictionary:
    """One Gemma Scope 2 transcoder folder: ``config.json`` (``architecture: jump_relu``, ``hf_hook_point_in``,
    ``hf_hook_point_out``, ``affine_connection``) and ``params.safetensors``."""
    cfg_path = folder / "config.json"
    where = str(cfg_path)
    cfg = _Cfg(_read_json(cfg_path, "Gemma Scope 2 config"), where)
    arch = cfg.str("architecture")
    if arch != "jump_relu":
        raise RelPLensError(f"{where}: key 'architecture' is {arch!r}; Gemma Scope 2 files are 'jump_relu'")
    hin, hout = cfg.str("hf_hook_point_in"), cfg.str("hf_hook_point_out", None)
    if hout is None:
        raise RelPLensError(f"{where}: no 'hf_hook_point_out': a Gemma Scope 2 SAE, not a transcoder; only "
                            "transcoders are read here")
    m_in, m_out = _GS2_HOOK.fullmatch(hin), _GS2_HOOK.fullmatch(hout)
    if not (m_in and m_out and m_in.group(2) == "pre" and m_out.group(2) == "post"
            and m_in.group(1) == m_out.group(1)):
        raise RelPLensError(f"{where}: hf_hook_point_in {hin!r} / hf_hook_point_out {hout!r}: only an MLP "
                            "transcoder (model.layers.L.pre_feedforward_layernorm.output → "
                            "model.layers.L.post_feedforward_layernorm.output) is supported")
    layer = int(m_in.group(1))
    weights = folder / "params.safetensors"
    tensors = _read_tensors(weights, "Gemma Scope 2 weights file", dtype)
    W_enc, W_dec, threshold, W_skip = _gemma_scope_2_weights(tensors, str(weights))
    b_enc = _take(tensors, "b_enc", (W_enc.shape[1],), str(weights))
    b_dec = _take(tensors, "b_dec", (W_dec.shape[1],), str(weights))
    _no_leftovers(tensors, str(weights))
    if cfg.bool("affine_connection", False) != (W_skip is not None):
        raise RelPLensError(f"{where}: key 'affine_connection' says {cfg.get('affine_connection')!r} but "
                            f"{weights} {'has' if W_skip is not None else 'lacks'} affine_skip_connection")
    # in: the MLP's input, after pre_feedforward_layernorm and its weight; out: after the post-MLP norm, which
    # is where TransformerLens puts hook_mlp_out in Gemma blocks
    return Dictionary(kind="skip_transcoder" if W_skip is not None else "transcoder", activation="jumprelu",
                      W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, hook_in=nodes.ln2_normalized(layer),
                      hook_out=nodes.mlp_out(layer), threshold=threshold, W_skip=W_skip, input_site="mlp_input",
                      layer=layer, source=DictionarySource(str(folder), "gemma_scope_2", hin))


def _load_ct_layer(path: Path, layer: int, cfg: _Cfg, hooks: tuple[str, str], dtype: torch.dtype) -> Dictionary:
    where = str(path)
    tensors = _read_tensors(path, "transcoder weights file", dtype)
    activation = cfg.str("activation", None)
    if activation not in (None, "relu", "topk", "jumprelu"):
        raise RelPLensError(f"{cfg.where}: key 'activation' is {activation!r}; supported: relu, topk, jumprelu")
    k = None
    if "w_enc" in tensors:  # Gemma Scope 2's params.safetensors (circuit-tracer's load_gemma_scope_2_transcoder)
        fmt = "gemma_scope_2"
        W_enc, W_dec, threshold, W_skip = _gemma_scope_2_weights(tensors, where)
        d_in, d_sae, d_out = W_enc.shape[0], W_enc.shape[1], W_dec.shape[1]
        if activation not in (None, "jumprelu"):
            raise RelPLensError(f"{cfg.where}: key 'activation' is {activation!r} but {where} is a Gemma Scope 2 "
                                "JumpReLU transcoder")
        activation = "jumprelu"
    else:  # circuit-tracer's own layer file: W_enc [d_sae, d_in] (F.linear), W_skip [d_out, d_in] (x @ W_skip.T)
        fmt = "circuit_tracer"
        for key in ("W_enc", "W_dec"):
            if key not in tensors or tensors[key].ndim != 2:
                raise RelPLensError(f"{where}: missing 2-D tensor {key!r} (has {sorted(tensors)})")
        d_sae, d_in = tensors["W_enc"].shape
        d_out = int(tensors["W_dec"].shape[1])
        W_enc = _take(tensors, "W_enc", (d_sae, d_in), where).T.contiguous()
        W_dec = _take(tensors, "W_dec", (d_sae, d_out), where)
        W_skip = _take(tensors, "W_skip", (d_out, d_in), where).T.contiguous() if "W_skip" in tensors else None
        threshold = _take(tensors, "activation_function.threshold", (d_sae,), where) \
            if "activation_function.threshold" in tensors else None
        if "k" in tensors:
            t = tensors.pop("k")
            if t.numel() != 1 or t.is_floating_point():
                raise RelPLensError(f"{where}: tensor 'k' must be one integer, got {t.dtype} of shape "
                                    f"{tuple(t.shape)}")
            k = int(t.item())
        if activation is None:
            activation = "jumprelu" if threshold is not None else "topk" if k is not None else "relu"
        if threshold is not None and activation != "jumprelu":
            raise RelPLensError(f"{where}: holds a JumpReLU threshold but {cfg.where} says activation "
                                f"{activation!r}")
        if activation == "jumprelu" and threshold is None:
            raise RelPLensError(f"{where}: activation jumprelu needs tensor 'activation_function.threshold'")
    b_enc = _take(tensors, "b_enc", (d_sae,), where)
    b_dec = _take(tensors, "b_dec", (d_out,), where)
    _no_leftovers(tensors, where)
    if activation == "topk":
        k_cfg = cfg.int("k", default=None)
        if k is not None and k_cfg is not None and k != k_cfg:
            raise RelPLensError(f"{where}: tensor 'k' is {k} but {cfg.where} says k: {k_cfg}")
        k = k if k is not None else k_cfg
        if k is None:
            raise RelPLensError(f"{cfg.where}: activation topk needs key 'k'")
        if k > d_sae:
            raise RelPLensError(f"{cfg.where}: key 'k' is {k}, more than d_sae={d_sae}")
    else:
        k = None
    (hook_in, input_site), (hook_out, output_site) = _ct_hook(hooks[0], layer), _ct_hook(hooks[1], layer)
    if input_site == "mlp_output":
        raise RelPLensError(f"{cfg.where}: feature_input_hook {hooks[0]!r} is the MLP's output")
    kind = "skip_transcoder" if W_skip is not None else "transcoder"
    return Dictionary(kind=kind, activation=activation, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec,
                  hook_in=hook_in, hook_out=hook_out, k=k, threshold=threshold, topk_relu=False, W_skip=W_skip,
                  input_site=input_site, output_site=output_site, layer=layer,
                  source=DictionarySource(where, fmt, f"layer {layer}"))


def _load_circuit_tracer(folder: Path, dtype: torch.dtype) -> DictionarySet:
    cfg_path = folder / "config.yaml"
    cfg = _Cfg(_read_yaml(cfg_path, "circuit-tracer config"), str(cfg_path))
    kind = cfg.str("model_kind")
    if kind != "transcoder_set":
        raise RelPLensError(f"{cfg_path}: key 'model_kind' is {kind!r}: only per-layer transcoders "
                            "('transcoder_set') are supported, not cross-layer transcoders")
    hooks = (cfg.str("feature_input_hook"), cfg.str("feature_output_hook"))
    listed = cfg.get("transcoders")
    if listed is not None:
        if not isinstance(listed, list) or not listed or not all(isinstance(p, str) and p for p in listed):
            raise RelPLensError(f"{cfg_path}: key 'transcoders' must be a non-empty list of file paths, "
                                f"got {listed!r}")
        remote = [p for p in listed if "://" in p]
        if remote:
            raise RelPLensError(f"{cfg_path}: key 'transcoders' names remote files ({remote[0]!r}): download "
                                "them and list the local paths (relative to the config's folder)")
        files = [folder / p for p in listed]
    else:
        found = {}
        for p in folder.glob("layer_*.safetensors"):
            m = re.fullmatch(r"layer_(\d+)\.safetensors", p.name)
            if m:
                found[int(m.group(1))] = p
        if not found or sorted(found) != list(range(len(found))):
            raise RelPLensError(f"{folder}: expected layer_0.safetensors … layer_N.safetensors beside "
                                f"config.yaml, found layers {sorted(found)}")
        files = [found[i] for i in range(len(found))]
    dicts = tuple(_load_ct_layer(p, i, cfg, hooks, dtype) for i, p in enumerate(files))
    return DictionarySet(dicts, DictionarySource(str(folder), "circuit_tracer"))


def load_transcoders(path: str | Path, *, dtype: torch.dtype = torch.float32) -> DictionarySet:
    """Read a set of per-layer dictionaries (transcoders, or sparsify SAEs), one per block.

    1. A folder with ``config.yaml``: circuit-tracer's transcoder set (``model_kind: transcoder_set``,
       ``feature_input_hook``, ``feature_output_hook``, optional ``activation`` / ``k``, and
       ``layer_{i}.safetensors`` beside it or a ``transcoders`` list of local files, which may be Gemma Scope 2
       ``params.safetensors`` files). Hooks are relative to the block: ``mlp.hook_in`` (the MLP's input, after
       ``ln2``), ``hook_resid_mid``, ``mlp.hook_out`` / ``hook_mlp_out``.
    2. Otherwise sparsify's run folder: one subfolder per hookpoint (``layers.L.mlp``: the MLP's input and
       output; ``layers.L``: the block's), each with ``cfg.json`` and ``sae.safetensors``; or one such
       hookpoint folder itself.
    3. Gemma Scope 2 transcoders: a folder with ``config.json`` (``architecture: jump_relu``,
       ``hf_hook_point_in`` ``model.layers.L.pre_feedforward_layernorm.output``, ``hf_hook_point_out``
       ``….post_feedforward_layernorm.output``, ``affine_connection``) and ``params.safetensors``, or a folder of
       such folders. A bare ``params.safetensors`` names no hooks: list it in a circuit-tracer ``config.yaml``.

    Args:
        path: the folder.
        dtype: the dtype of the returned weights.

    Returns:
        A :class:`DictionarySet`, by layer.
    """
    folder = Path(path)
    if not folder.is_dir():
        if folder.name == "params.safetensors":
            raise RelPLensError(f"{folder}: a Gemma Scope 2 params.safetensors does not say which hooks it reads "
                                "and writes: load its folder, with the config.json Gemma Scope 2 ships beside it, "
                                "or list it in a circuit-tracer config.yaml (transcoders: [...], "
                                "feature_input_hook, feature_output_hook)")
        raise RelPLensError(f"{folder}: give the folder of the transcoders" +
                            ("" if folder.exists() else " (not found)"))
    if (folder / "config.yaml").is_file():
        return _load_circuit_tracer(folder, dtype)
    def gemma_scope_2(p: Path) -> bool:
        return (p / "params.safetensors").is_file() and (p / "config.json").is_file()

    if gemma_scope_2(folder):
        return DictionarySet((_load_gemma_scope_2(folder, dtype),), DictionarySource(str(folder), "gemma_scope_2"))
    gs2 = [p for p in sorted(folder.iterdir()) if gemma_scope_2(p)]
    if gs2:
        dicts = sorted((_load_gemma_scope_2(p, dtype) for p in gs2), key=lambda d: d.layer)
        return DictionarySet(tuple(dicts), DictionarySource(str(folder), "gemma_scope_2"))
    if (folder / "cfg.json").is_file() and (folder / "sae.safetensors").is_file():
        d = _load_sparsify_one(folder, folder.name, dtype)
        return DictionarySet((d,), DictionarySource(str(folder), "sparsify"))
    subs = sorted((p for p in folder.iterdir() if (p / "cfg.json").is_file() and (p / "sae.safetensors").is_file()),
                  key=lambda p: (_HOOKPOINT.fullmatch(p.name) is None, p.name))
    if not subs:
        raise RelPLensError(f"{folder}: no config.yaml (circuit-tracer) and no hookpoint folders with cfg.json and "
                            "sae.safetensors (sparsify)")
    dicts = sorted((_load_sparsify_one(p, p.name, dtype) for p in subs), key=lambda d: d.layer)
    return DictionarySet(tuple(dicts), DictionarySource(str(folder), "sparsify"))


def load_dictionaries(paths: str | Path | Sequence[str | Path], *,
                      dtype: torch.dtype = torch.float32) -> list[Dictionary]:
    """Read dictionaries from any of the formats above, one path or several, for ``splice`` / ``basis=``.

    1. A folder with ``cfg.json`` and ``sae_weights.safetensors`` is one SAELens SAE or transcoder
       (:func:`load_sae`); any other folder a set (:func:`load_transcoders`: sparsify, circuit-tracer, Gemma
       Scope 2).
    2. The dictionaries of every path together, in path order; two on one hook are refused (a hook has one
       splice).

    Args:
        paths: a folder, or a list of them (e.g. one SAELens folder per layer).
        dtype: the dtype of the returned weights.

    Returns:
        The dictionaries (pass them to :func:`relp_lens.splice` or as ``basis=``).
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise RelPLensError("no dictionary paths given")
    out: list[Dictionary] = []
    for item in items:
        folder = Path(item)
        if (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file():
            out.append(load_sae(folder, dtype=dtype))
        else:
            out.extend(load_transcoders(folder, dtype=dtype).dictionaries)
    seen: dict[str, Dictionary] = {}
    for d in out:
        if d.hook_out in seen:
            raise RelPLensError(f"{d.source} and {seen[d.hook_out].source} both write {d.hook_out}: one dictionary "
                                "per hook")
        seen[d.hook_out] = d
    return out
