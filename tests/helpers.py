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

    cfg = LlamaConfig(vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                      pad_token_id=0, mlp_bias=mlp_bias)
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    return hf.eval()


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
    from relp_lens.circuits.graph_io import IOEdges

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
                   io_edges=io.to_dict())


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
