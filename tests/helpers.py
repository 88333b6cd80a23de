"""Builders for tiny random models (with a real word-level tokenizer) used across the tests."""

from __future__ import annotations

import math
import tempfile
from functools import lru_cache

import torch

try:  # TransformerLens 3.x; 4.x removed them: a test that builds a tiny HookedTransformer is skipped there
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:
    def _needs_hooked_transformer(*args, **kwargs):
        import pytest

        pytest.skip("needs HookedTransformer (TransformerLens 3.x)")

    HookedTransformer = HookedTransformerConfig = _needs_hooked_transformer

WORDS = (
    "The the a key keys cabinet cabinets parent parents author authors doctor doctors near to of by "
    "is are was were has have does do and that like likes"
).split()

AGREEMENT_ROWS = [
    dict(clean_prefix="The keys to the cabinet", patch_prefix="The key to the cabinet",
         clean_answer=" are", patch_answer=" is"),
    dict(clean_prefix="The parents", patch_prefix="The parent", clean_answer=" are", patch_answer=" is"),
    dict(clean_prefix="The author near the doctors", patch_prefix="The authors near the doctors",
         clean_answer=" is", patch_answer=" are"),
    dict(clean_prefix="The doctor", patch_prefix="The doctors", clean_answer=" is", patch_answer=" are"),
]


@lru_cache(maxsize=None)
def word_tokenizer_dir() -> str:
    """A word-level HF tokenizer saved to a temp folder (TransformerLens reloads tokenizers by path)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<bos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>",
                                   eos_token="<bos>", pad_token="<bos>")
    path = tempfile.mkdtemp(prefix="relp_lens_tok_")
    fast.save_pretrained(path)
    return path


def tiny_hf_llama(seed: int = 0, mlp_bias: bool = False):
    """A random 3-layer Llama (RMSNorm, gated SiLU, rotary, GQA) with non-trivial norm weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)  # seeded before the model is built: its weights are the same as they always were
    return _random_init(LlamaForCausalLM(LlamaConfig(**_tiny_decoder_kwargs(mlp_bias=mlp_bias))))


def _random_init(hf, seed: int | None = None):
    """Random weights with non-trivial norm weights and small biases (every parameter is overwritten), drawn
    after ``torch.manual_seed(seed)`` (``None``: from the generator as it stands); the model in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    return hf.eval()


def _tiny_decoder_kwargs(**overrides) -> dict:
    """A tiny decoder's Hugging Face config keywords (3 layers, width 32, GQA), ``overrides`` applied."""
    return dict(vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16, rms_norm_eps=1e-5,
                tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0) | overrides


def tiny_hf_olmo2(seed: int = 0):
    """A random 3-layer OLMo 2: RMSNorm *after* attention and after the MLP (no pre-norms), q/k norms, gated
    SiLU MLP, rotary, GQA. TransformerLens 3.9's bridge calls the post-MLP norm ``ln2``, 4.x ``ln2_post``."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return _random_init(Olmo2ForCausalLM(Olmo2Config(**_tiny_decoder_kwargs())), seed)


def tiny_hf_phi3(seed: int = 0):
    """A random 3-layer Phi-3: one joint ``gate_up_proj`` per MLP (the bridge splits it into gate and up and
    recomputes ``SiLU(gate) · up`` itself), a joint ``qkv_proj``, RMSNorm, rotary, GQA."""
    from transformers import Phi3Config, Phi3ForCausalLM

    return _random_init(Phi3ForCausalLM(Phi3Config(**_tiny_decoder_kwargs())), seed)


def tiny_hf_qwen2(seed: int = 0):
    """A random 2-layer Qwen2 (its TransformerLens adapter sets ``default_prepend_bos=False``)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kwargs = _tiny_decoder_kwargs(num_hidden_layers=2)
    del kwargs["rms_norm_eps"]  # Qwen2's default
    torch.manual_seed(seed)  # seeded before the model is built, as tiny_hf_llama
    return _random_init(Qwen2ForCausalLM(Qwen2Config(**kwargs)))


def tiny_hf_gemma3(seed: int = 0):
    """A random 3-layer Gemma 3 (text): RMSNorm before *and after* attention and the MLP (``1 + w`` weights),
    q/k norms, a scaled embedding, gated GELU-tanh MLP, GQA, two sliding-window layers and a global one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    kwargs = _tiny_decoder_kwargs(head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    return _random_init(Gemma3ForCausalLM(Gemma3TextConfig(**kwargs)), seed)


def tiny_gemma3(backend: str, seed: int = 0):
    """:func:`tiny_hf_gemma3` as relp_lens loads Gemma 3: wrapped as a TransformerBridge (``backend="bridge"``)
    or, ``"hooked"``, a HookedTransformer with TransformerLens' Gemma 3 270M config (shrunk to the tiny
    model's sizes) and its own ``convert_gemma_weights``, as ``load_model("gemma3-270m", backend="hooked")``
    builds it. Both compute the same function (the tests check the logits)."""
    from relp_lens.core import backends

    hf = tiny_hf_gemma3(seed)
    if backend == "bridge":
        return backends.wrap_hf_model(hf, word_tokenizer(), "tiny-gemma3")
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights

    hc = hf.config
    cfg = get_pretrained_model_config("google/gemma-3-270m", dtype=torch.float32).to_dict()
    cfg.update(d_model=hc.hidden_size, d_head=hc.head_dim, n_heads=hc.num_attention_heads,
               n_key_value_heads=hc.num_key_value_heads, d_mlp=hc.intermediate_size, n_layers=hc.num_hidden_layers,
               n_ctx=hc.max_position_embeddings, eps=hc.rms_norm_eps, d_vocab=hc.vocab_size, d_vocab_out=hc.vocab_size,
               window_size=hc.sliding_window, rotary_dim=hc.head_dim, attn_scale=hc.query_pre_attn_scalar ** 0.5,
               attn_types=["global" if t == "full_attention" else "local" for t in hc.layer_types])
    cfg = HookedTransformerConfig.unwrap({k: v for k, v in cfg.items() if k in HookedTransformerConfig.__dataclass_fields__
                                          and not k.startswith("n_params")})
    model = HookedTransformer(cfg, tokenizer=word_tokenizer(), move_to_device=False)
    model.load_and_process_state_dict(convert_gemma_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False,
                                      refactor_factored_attn_matrices=False)
    model.eval()
    model.requires_grad_(False)
    return model


def word_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(word_tokenizer_dir())


def _finish(cfg: HookedTransformerConfig, biases: bool, seed: int) -> HookedTransformer:
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=word_tokenizer(), move_to_device=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith(("b", "_b")):
                p.copy_(0.1 * torch.randn_like(p) if biases else torch.zeros_like(p))
            elif name.endswith(".w"):  # norm weights: not all ones, so their effect is visible
                p.copy_(1 + 0.2 * torch.randn_like(p))
    model.eval()
    model.requires_grad_(False)
    return model


def tiny_llama_on(backend: str):
    """The tiny Llama as a HookedTransformer (``"hooked"``; skipped on TransformerLens 4) or as a bridge over the
    tiny Hugging Face Llama (``"bridge"``): the ``model`` fixture of tests that run on both backends."""
    import pytest

    from relp_lens.core import backends

    if backend == "hooked":
        if not backends.hooked_transformer_available():
            pytest.skip("HookedTransformer needs TransformerLens 3.x")
        return tiny_llama()
    return backends.wrap_hf_model(tiny_hf_llama(), word_tokenizer(), "tiny-llama")


def tiny_gpt2(biases: bool = False, seed: int = 0, **overrides) -> HookedTransformer:
    """GPT-2 style: LayerNorm, GELU MLP, learned positions."""
    cfg = dict(n_layers=3, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=len(WORDS) + 2,
               act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
               init_weights=True, seed=seed)
    cfg.update(overrides)
    return _finish(HookedTransformerConfig(**cfg), biases, seed)


def tiny_llama(biases: bool = False, seed: int = 0, **overrides) -> HookedTransformer:
    """Llama style: RMSNorm, gated SiLU MLP, rotary, grouped-query attention."""
    cfg = dict(n_layers=3, d_model=32, n_ctx=16, d_head=8, n_heads=4, n_key_value_heads=2, d_mlp=48,
               d_vocab=len(WORDS) + 2, act_fn="silu", gated_mlp=True, normalization_type="RMS",
               final_rms=True, positional_embedding_type="rotary", rotary_dim=8,
               original_architecture="LlamaForCausalLM", init_weights=True, seed=seed)
    cfg.update(overrides)
    return _finish(HookedTransformerConfig(**cfg), biases, seed)


def tiny_gemma(biases: bool = False, seed: int = 0) -> HookedTransformer:
    """Gemma-2 style: RMSNorm before and after each sublayer (post-norms), gated GELU MLP."""
    return tiny_llama(biases, seed, act_fn="gelu_pytorch_tanh", use_normalization_before_and_after=True,
                      original_architecture="Gemma2ForCausalLM")


def tiny_gemma2_softcap(biases: bool = False, seed: int = 0, logit_cap: float = 30.0,
                        attn_cap: float = 50.0) -> HookedTransformer:
    """Gemma-2 style with soft-capping: ``logits = cap·tanh(logits/cap)`` and the same on attention scores.

    ``W_U`` is scaled ×10 so that the logits (a few units) reach the range where a cap of 3 or 30 bends them.
    """
    model = tiny_llama(biases, seed, act_fn="gelu_pytorch_tanh", use_normalization_before_and_after=True,
                       original_architecture="Gemma2ForCausalLM", output_logits_soft_cap=logit_cap,
                       attn_scores_soft_cap=attn_cap)
    with torch.no_grad():
        model.unembed.W_U.mul_(10)
    return model


def tiny_mixtral(biases: bool = False, seed: int = 0, **overrides) -> HookedTransformer:
    """Mixtral style: every MLP is a mixture of 4 gated SiLU experts, 2 chosen per token by a router."""
    cfg = dict(num_experts=4, experts_per_token=2, d_mlp=24, original_architecture="MixtralForCausalLM")
    cfg.update(overrides)
    return tiny_llama(biases, seed, **cfg)


def tiny_attn_only(seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4,
                                  d_vocab=len(WORDS) + 2, attn_only=True, act_fn="gelu",
                                  normalization_type="LN", init_weights=True, seed=seed)
    return _finish(cfg, False, seed)


def hooks_left(model: HookedTransformer) -> list[str]:
    """Names of hook points that still carry a forward or backward hook."""
    return [n for n, hp in model.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks]


# --- edges by brute force (test_edges, test_structure) ----------------------------------------------------
def token_id(model, word: str) -> int:
    """The id of ``word`` (leading space stripped) in the model's word-level tokenizer, on either backend."""
    return model.tokenizer.convert_tokens_to_ids(word.strip())


def capture(model, tokens, names) -> dict[str, torch.Tensor]:
    """The values of the hook points ``names`` on ``tokens``, detached copies. Hook names are bound in
    closures (a bridge's ``hook.name`` may be an alias's)."""
    from relp_lens.core import backends

    got = {}

    def grab(name):
        def hook(x, hook):
            got[name] = x.detach().clone()

        return hook

    with torch.no_grad(), backends.hooks(model, fwd_hooks=[(n, grab(n)) for n in names]):
        model(tokens)
    return got


def edge_circuit(model, basis_hook: str = "blocks.{L}.mlp.hook_post", width: int | None = None) -> "Circuit":
    """Seven nodes over layers 0-2 (some at one position, some summed over positions), no edges yet.

    Args:
        model: the model (its layers, ``d_mlp`` and facts).
        basis_hook: the nodes' hook point, ``{L}`` standing for the layer.
        width: the basis width (``d_mlp`` when not given).

    Returns:
        A :class:`Circuit` for :func:`relp_lens.circuits.edges.attribute_edges`.
    """
    from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts

    hooks = [basis_hook.format(L=l) for l in range(model.cfg.n_layers)]
    width = width or model.cfg.d_mlp
    nodes = [CircuitNode(0, 2, 3), CircuitNode(0, None, 5), CircuitNode(1, 4, 1), CircuitNode(1, 5, 7),
             CircuitNode(2, 5, 0), CircuitNode(2, None, 9), CircuitNode(1, 2, 11)]
    return Circuit(nodes=nodes, basis="mlp_post", hook_names=hooks, node_width=width, model=model_facts(model))


def brute_force_edges(model, circuit, rows, use_relp: bool, answer=None, rules=None, latents=None) -> torch.Tensor:
    """``w(u→d) = Σ ∇_d m · J · Δu`` with ``J = jacobian(d(u))`` taken by setting ``u``'s ``hook_post`` and
    holding every intermediate ``hook_post`` at its clean value (the MLP between them constant), the metric
    ``m`` the clean answer's logit minus the patch answer's, averaged over ``rows``. Hook names are bound in
    closures (a bridge's ``hook.name`` may be an alias's), so it runs on either backend. ``answer(model, text)``
    gives an answer's token id (default :func:`token_id`, for the word-level tokenizer; a real tokenizer
    keeps the leading space: ``model.to_single_token``). ``rules``: a :class:`RelPConfig` (default: all rules).
    ``latents``: for a spliced dictionary's nodes, ``d_sae`` (node ``d_sae`` is the error vector: its elements
    are summed as one source).

    Returns:
        ``[source, target]`` weights (float64), indexed like ``circuit.nodes``.
    """
    from relp_lens.core import backends
    from relp_lens.core.relp_mode import RelPConfig, relp

    hooks = circuit.hook_names
    n = len(circuit.nodes)
    W = torch.zeros(n, n, dtype=torch.float64)
    ctx = (lambda: relp(model, **vars(rules or RelPConfig()))) if use_relp else torch.enable_grad
    for row in rows:
        clean, patch = model.to_tokens(row["clean_prefix"]), model.to_tokens(row["patch_prefix"])
        good, bad = ((answer or token_id)(model, row[k]) for k in ("clean_answer", "patch_answer"))
        cc, pc = capture(model, clean, hooks), capture(model, patch, hooks)
        store = {}

        def keep(name):
            def hook(x, hook):
                x = x if x.requires_grad else x.detach().requires_grad_(True)
                store[name] = x
                return x

            return hook

        # ∇_d m in the full model
        with torch.enable_grad(), ctx(), backends.hooks(model, fwd_hooks=[(h, keep(h)) for h in hooks]):
            logits = model(clean)
            grads = torch.autograd.grad(logits[0, -1, good] - logits[0, -1, bad], [store[h] for h in hooks])
        for j, u in enumerate(circuit.nodes):
            for i, d in enumerate(circuit.nodes):
                if d.layer <= u.layer:
                    continue

                def d_of(v, u=u, d=d):
                    out = {}

                    def grab(x, hook):
                        out["d"] = x
                        return x

                    fwd = [(hooks[u.layer], lambda x, hook: v), (hooks[d.layer], grab)]
                    fwd += [(hooks[l], lambda x, hook, l=l: cc[hooks[l]]) for l in range(u.layer + 1, d.layer)]
                    with ctx(), backends.hooks(model, fwd_hooks=fwd):
                        model(clean)
                    return out["d"][0, :, d.index]  # [pos]

                with torch.enable_grad():
                    J = torch.autograd.functional.jacobian(d_of, cc[hooks[u.layer]])[:, 0]  # [pos_d, pos_u, width]
                delta = (pc[hooks[u.layer]] - cc[hooks[u.layer]])[0]  # [pos_u, width]
                gd = grads[d.layer][0, :, d.index]  # [pos_d]
                if d.pos is not None:
                    mask = torch.zeros_like(gd)
                    mask[d.pos] = 1
                    gd = gd * mask
                cols = slice(u.index, u.index + 1) if latents is None or u.index < latents else slice(latents, None)
                contrib = torch.einsum("p,pqw,qw->qw", gd, J, delta)[:, cols].sum(-1)  # [pos_u]
                W[j, i] += (contrib.sum() if u.pos is None else contrib[u.pos]).item()
    return W / len(rows)


def edge_matrix(circuit) -> torch.Tensor:
    """A circuit's edges as a ``[source, target]`` matrix (float64; zero where there is no edge)."""
    W = torch.zeros(len(circuit.nodes), len(circuit.nodes), dtype=torch.float64)
    for e in circuit.edges:
        W[e.source, e.target] = e.weight
    return W


# --- headless browser (the report test) -------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--enable-logging=stderr",
                  "--v=0", "--virtual-time-budget=15000"]


def find_chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def render_in_browser(path, chromium: str) -> tuple[str, list[str]]:
    """Load ``path`` in headless Chromium (fresh profile); the DOM after scripts ran, and the console lines."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="relp-chromium-") as profile:
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                               Path(path).resolve().as_uri()], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def js_errors(console: list[str]) -> list[str]:
    """Console lines that report a JavaScript error (uncaught exceptions and console.error calls)."""
    return [line for line in console if "Uncaught" in line or "error" in line.lower()]


def synthetic_graph(seed: int, n_layers: int = 4, per_layer: int = 6, n_pos: int = 3) -> "Circuit":
    """A synthetic full graph: neurons at (layer, pos), edges only to later layers, input and output edges."""
    import torch

    from relp_lens.circuits.circuit import CircuitEdge, CircuitNode
    from relp_lens.circuits.circuit import IOEdges

    g = torch.Generator().manual_seed(seed)
    nodes = [CircuitNode(l, int(torch.randint(n_pos, (1,), generator=g)), i, score=1.0)
             for l in range(n_layers) for i in range(per_layer)]
    edges = [CircuitEdge(s, t, float(torch.randn(1, generator=g)) * float(torch.rand(1, generator=g)) ** 3)
             for s in range(len(nodes)) for t in range(len(nodes))
             if nodes[s].layer < nodes[t].layer and torch.rand(1, generator=g) < 0.5]
    n = len(nodes)
    io = IOEdges(positions=list(range(n_pos)), input=torch.randn(n_pos, n, generator=g, dtype=torch.float64)
                 * (torch.rand(n_pos, n, generator=g, dtype=torch.float64) < 0.3),
                 output=torch.randn(n, generator=g, dtype=torch.float64) ** 3,
                 direct=torch.randn(n_pos, generator=g, dtype=torch.float64), metric=1.0)
    from relp_lens.circuits.circuit import Circuit

    return Circuit(nodes=nodes, basis="mlp_post", hook_names=[f"blocks.{l}.mlp.hook_post" for l in range(n_layers)],
                   node_width=per_layer, model=dict(name="synthetic", n_layers=n_layers), edges=edges,
                   io_edges=io.to_dict())  # the JSON form: checked and converted by the constructor


def same_length_rows(model, rows=AGREEMENT_ROWS) -> list[dict]:
    """The rows whose clean prompt has as many tokens as the first one's (one batch, absolute positions)."""
    n = len(model.to_tokens(rows[0]["clean_prefix"])[0])
    return [r for r in rows if len(model.to_tokens(r["clean_prefix"])[0]) == n]


def assert_same(a, b, path="", tol=1e-6):
    """Nested equality of dicts, lists and tuples (``path`` names where they differ); floats to ``tol``
    (relative and absolute), everything else exactly."""
    import pytest

    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]", tol)
    elif isinstance(a, float) and a != b:
        assert b == pytest.approx(a, rel=tol, abs=tol, nan_ok=True), path
    else:
        assert a == b, path
