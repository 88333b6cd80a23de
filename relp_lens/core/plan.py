"""Memory and pass planner: how much memory per device, and how many forward/backward passes, a run needs —
before loading anything.

1. A model's shape (:class:`ModelShape`): from a loaded model's config, a shipped model's name, or one of the
   known shapes (:data:`KNOWN`, e.g. the paper's ``llama-3.1-8b``).
2. Weights: parameters × bytes per element of the dtype (TransformerLens keeps embedding and unembedding
   apart even when the checkpoint ties them).
3. One batch's working set, ``batch × tokens`` positions (bytes per element of the dtype):
   - the forward pass kept for the backward pass: per layer and position ``ACT_D`` × d_model +
     ``ACT_MLP`` × d_mlp values (norm inputs, q/k/v, z, MLP pre/gate/post, hook copies), plus
     ``2 × n_heads × tokens`` attention scores and pattern;
   - the logits and their softmax, kept in float32: ``3 × d_vocab`` per position;
   - with a backward pass on a HookedTransformer, one unembedding-sized float32 temporary
     (``d_vocab × d_model``); a TransformerBridge's ``lm_head`` makes none (measured: the bridge's peaks
     match the plan without it, to 9 %);
   - attribution's patch (or mean) activations of the basis: ``n_layers × d_mlp``.
4. Kept results: attribution scores, ``n_layers × tokens × d_mlp`` float64 sums (``reduce="mean"``) or float32
   per prompt (``reduce="none"``); edge weights ``k²`` float64.
5. Per task:
   - ``attribution`` (RelP or gradients): 2 forwards + 1 backward per batch (1 forward for unpaired zero baseline);
   - ``ig``: ``n_layers × ig_steps`` forward+backward per batch, memory as attribution;
   - ``edges``: 1 forward and ``⌈targets × batch / edge_batch⌉`` backward passes per batch; the batched
     backward adds two ``edge_batch × tokens × d_model`` gradients per layer (at every MLP output and in the
     residual stream) and one layer's ``edge_batch × tokens × (d_model + 3 d_mlp)`` in flight;
   - ``evaluation``: no backward; 4 runs (M, C, M∖C, ∅) plus one reference forward per batch; logits and the
     ablation values.
6. Devices: with the model split over ``devices`` (``n_devices`` / ``device_map``), weights and per-layer
   activations divide by the number of devices (the logits sit on the last one); data parallel processes
   each hold the whole model and their own batch.

Checked against measured peaks on the shipped model: ``benchmarks/plan_check.py`` (docs/results.md).
"""

from __future__ import annotations

import importlib.metadata
import math
from dataclasses import asdict, dataclass
from typing import Any

from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import Reduce

# values per layer and position kept for the backward pass, of width d_model and of width d_mlp: set from the
# measured peaks of benchmarks/plan_check.py (SmolLM2-135M, RelP, batches of 48 to 1,024 positions)
ACT_D = 8
ACT_MLP = 5
# does the backward pass make a d_vocab × d_model float32 temporary at the unembedding? (plan_check, per backend)
UNEMBED_TEMP = {"hooked": True, "bridge": False}
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
TASKS = ("attribution", "ig", "edges", "evaluation")


@dataclass(frozen=True)
class ModelShape:
    name: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_vocab: int
    n_params: int  # as TransformerLens holds them (untied embedding and unembedding)

    @classmethod
    def of(cls, model: Any) -> "ModelShape":
        """The shape of a loaded model (HookedTransformer or TransformerBridge)."""
        c = model.cfg
        n = sum(p.numel() for p in model.parameters())
        return cls(str(c.model_name), c.n_layers, c.d_model, c.d_mlp or 4 * c.d_model, c.n_heads, c.d_vocab, n)


def _llama(name, n_layers, d_model, d_mlp, n_heads, n_kv, d_vocab) -> ModelShape:
    d_head = d_model // n_heads
    per_layer = d_model * d_head * (2 * n_heads + 2 * n_kv) + 3 * d_model * d_mlp + 2 * d_model
    return ModelShape(name, n_layers, d_model, d_mlp, n_heads, d_vocab,
                      n_layers * per_layer + 2 * d_vocab * d_model + d_model)


KNOWN = {s.name: s for s in (
    _llama("smollm2-135m", 30, 576, 1536, 9, 3, 49152),
    _llama("llama-3.2-1b", 16, 2048, 8192, 32, 8, 128256),
    _llama("llama-3.1-8b", 32, 4096, 14336, 32, 8, 128256),
    _llama("llama-3.1-70b", 80, 8192, 28672, 64, 8, 128256),
    ModelShape("gemma3-270m", 18, 640, 2048, 4, 262144, 435_000_000),
)}


def shape_of(model: Any) -> ModelShape:
    """A :class:`ModelShape` from a name in :data:`KNOWN`, a ModelShape, or a loaded model."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, str):
        if model not in KNOWN:
            raise RelPLensError(f"unknown model {model!r} for planning; known: {sorted(KNOWN)} (or pass a loaded "
                                f"model or a ModelShape)")
        return KNOWN[model]
    return ModelShape.of(model)


def _batch_bytes(s: ModelShape, positions: int, tokens: int, e: int, backend: str) -> dict[str, int]:
    acts = s.n_layers * positions * (ACT_D * s.d_model + ACT_MLP * s.d_mlp + 2 * s.n_heads * tokens) * e
    logits = positions * 3 * s.d_vocab * 4
    basis = s.n_layers * positions * s.d_mlp * e
    temp = s.d_vocab * s.d_model * 4 if UNEMBED_TEMP[backend] else 0
    return dict(activations=acts, logits=logits, reference=basis, unembed_temp=temp)


def batch_bytes(model: Any, batch_size: int, tokens: int, *, dtype: str = "float32",
                backend: str | None = None) -> dict[str, int]:
    """Bytes one attribution batch keeps for its backward pass: the calibrated part of :func:`plan`'s peak
    (activations, logits, the reference activations, the unembedding temporary), also what ``attribute``'s
    memory pre-flight counts.

    Args:
        model: a name in :data:`KNOWN`, a :class:`ModelShape` or a loaded model.
        batch_size: prompts in the batch.
        tokens: tokens per prompt (the longest).
        dtype: the activations' dtype (a key of :data:`BYTES`).
        backend: ``"hooked"`` or ``"bridge"``; default: the model's (see :func:`plan`).

    Returns:
        ``{"activations", "logits", "reference", "unembed_temp"}`` in bytes.
    """
    if dtype not in BYTES:
        raise RelPLensError(f"unknown dtype {dtype!r}; choose from {list(BYTES)}")
    return _batch_bytes(shape_of(model), batch_size * tokens, tokens, BYTES[dtype], backend or _backend_of(model))


def _backend_of(model: Any) -> str:
    """The loaded model's backend; for a name, what ``load_model``'s ``backend="auto"`` gives with the installed
    TransformerLens (HookedTransformer through 3.x, the bridge from 4.0), read from the package metadata so that
    planning imports neither torch nor TransformerLens."""
    if not isinstance(model, (str, ModelShape)):
        from relp_lens.core import backends

        return "bridge" if backends.is_bridge(model) else "hooked"
    try:
        major = int(importlib.metadata.version("transformer-lens").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return "hooked"
    return "hooked" if major < 4 else "bridge"


def plan(model: Any, n_prompts: int, tokens: int, *, batch_size: int = 16, dtype: str = "float32",
         reduce: Reduce = "mean", paired: bool = True, ig_steps: int = 10, k: int = 300, edge_batch: int = 256,
         devices: int = 1, backend: str | None = None) -> dict[str, Any]:
    """Estimated peak memory per device (bytes) and passes per task (see the module docstring).

    ``backend``: ``"hooked"`` (HookedTransformer) or ``"bridge"`` (TransformerBridge), whose forward passes keep
    different intermediate values; by default the loaded model's, or for a name what ``load_model`` would give
    with the installed TransformerLens.

    Returns ``{"model": shape, "weights": bytes, task: {"peak": bytes per device, "forward": n, "backward":
    n, "parts": {...}}}`` for ``attribution``, ``ig``, ``edges`` and ``evaluation``.
    """
    s = shape_of(model)
    if dtype not in BYTES:
        raise RelPLensError(f"unknown dtype {dtype!r}; choose from {list(BYTES)}")
    for name, v in (("n_prompts", n_prompts), ("tokens", tokens), ("batch_size", batch_size), ("devices", devices),
                    ("ig_steps", ig_steps), ("k", k), ("edge_batch", edge_batch)):
        if not isinstance(v, int) or v < 1:
            raise RelPLensError(f"{name} must be a positive integer, got {v!r}")
    if reduce not in ("mean", "none"):
        raise RelPLensError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    backend = backend or _backend_of(model)
    if backend not in UNEMBED_TEMP:
        raise RelPLensError(f"backend must be one of {sorted(UNEMBED_TEMP)}, got {backend!r}")
    e = BYTES[dtype]
    b = min(batch_size, n_prompts)
    n_batches = math.ceil(n_prompts / b)
    weights = s.n_params * e
    one = batch_bytes(s, b, tokens, dtype=dtype, backend=backend)
    width = s.n_layers * tokens * s.d_mlp
    scores = width * 8 if reduce == "mean" else n_prompts * width * 4
    split = lambda x: math.ceil(x / devices)  # noqa: E731 — layers spread over the devices

    def task(parts: dict[str, int], forward: int, backward: int) -> dict[str, Any]:
        layered = ("activations", "grads")  # per-layer tensors live with their layer's device
        per_device = split(weights) + sum(split(parts.get(key, 0)) for key in layered) + sum(
            v for key, v in parts.items() if key not in layered)
        return dict(peak=per_device, forward=forward, backward=backward, parts=dict(parts, weights=weights))

    ref_forwards = 1 if paired else 0
    out: dict[str, Any] = dict(model=asdict(s), weights=weights, n_prompts=n_prompts, tokens=tokens,
                               batch_size=b, dtype=dtype, devices=devices, backend=backend)
    out["attribution"] = task(dict(one, scores=scores), n_batches * (1 + ref_forwards), n_batches)
    out["ig"] = task(dict(one, scores=scores), n_batches * (ref_forwards + s.n_layers * ig_steps),
                     n_batches * s.n_layers * ig_steps)
    rows = min(edge_batch, k * b)
    grads = 2 * s.n_layers * rows * tokens * s.d_model * e + rows * tokens * (s.d_model + 3 * s.d_mlp) * e
    edge_backward = n_batches * math.ceil(k * b / edge_batch)
    out["edges"] = task(dict(one, grads=grads, weights_kept=k * k * 8), n_batches * (1 + ref_forwards),
                        edge_backward)
    ev = dict(logits=b * tokens * s.d_vocab * 4 * 2, means=width * 4,
              activations=2 * s.n_layers * b * tokens * s.d_model * e)
    out["evaluation"] = task(ev, n_batches * 5, 0)
    return out


def describe(p: dict[str, Any]) -> str:
    """The plan as a table."""
    gib = 2 ** 30
    m = p["model"]
    lines = [f"{m['name']}: {m['n_params'] / 1e9:.2f} B parameters, {p['dtype']}, weights {p['weights'] / gib:.2f} GiB; "
             f"{p['n_prompts']} prompts × {p['tokens']} tokens, batch {p['batch_size']}, "
             f"{p['devices']} device(s), {'HookedTransformer' if p['backend'] == 'hooked' else 'TransformerBridge'}",
             f"{'task':<12s} {'peak/device':>12s} {'forward':>9s} {'backward':>9s}"]
    for t in TASKS:
        r = p[t]
        lines.append(f"{t:<12s} {r['peak'] / gib:>9.2f} GiB {r['forward']:>9d} {r['backward']:>9d}")
    return "\n".join(lines)
