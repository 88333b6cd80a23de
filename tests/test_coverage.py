"""The model coverage table of the docs (docs/concepts/coverage.md), checked row by row on tiny random models.

The table is the one statement of what each architecture gets; this test reads it and holds every cell to
it: *yes* must work and be right (edges equal a brute-force Jacobian, head splits sum to every edge), *refused*
must raise RelPLensError. HookedTransformer rows run on TransformerLens 3.x, TransformerBridge rows on every
TransformerLens (the bridge wraps the same tiny Hugging Face model).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import relp_lens
from relp_lens.circuits.circuit import edge_key
from relp_lens.core import backends
from relp_lens.core.errors import RelPLensError
from helpers import (_random_init, _tiny_decoder_kwargs, brute_force_edges, edge_circuit, edge_matrix, tiny_gemma,
                     tiny_gemma3, tiny_gpt2, tiny_hf_gemma3, tiny_llama, tiny_mixtral, word_tokenizer)

PAGE = Path(__file__).resolve().parents[1] / "docs" / "concepts" / "coverage.md"
# eight words: every node of edge_circuit (positions up to 5) exists with or without BOS
ROWS = [dict(clean_prefix="The keys to the cabinet near the doctors", patch_prefix="The key to the cabinet near the doctors",
             clean_answer=" are", patch_answer=" is"),
        dict(clean_prefix="The author near the doctors of the cabinet",
             patch_prefix="The authors near the doctors of the cabinet", clean_answer=" is", patch_answer=" are")]


def _hf(arch: str):
    """A tiny random Hugging Face model of ``arch`` (its class name), vocabulary of the word tokenizer."""
    import transformers as T

    kw = _tiny_decoder_kwargs()
    make = {
        "GPT2LMHeadModel": lambda: T.GPT2LMHeadModel(T.GPT2Config(
            vocab_size=kw["vocab_size"], n_embd=32, n_layer=3, n_head=4, n_positions=16, bos_token_id=0,
            eos_token_id=0)),
        "GPTNeoXForCausalLM": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
            vocab_size=kw["vocab_size"], hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=0,
            tie_word_embeddings=False)),
        "LlamaForCausalLM": lambda: T.LlamaForCausalLM(T.LlamaConfig(**kw)),
        "MistralForCausalLM": lambda: T.MistralForCausalLM(T.MistralConfig(**kw)),
        "Qwen2ForCausalLM": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**kw)),
        "Phi3ForCausalLM": lambda: T.Phi3ForCausalLM(T.Phi3Config(**kw)),
        "Gemma2ForCausalLM": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**kw, head_dim=8)),
        "Olmo2ForCausalLM": lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**kw)),
        "MixtralForCausalLM": lambda: T.MixtralForCausalLM(T.MixtralConfig(**kw, num_local_experts=4,
                                                                           num_experts_per_tok=2)),
        "Gemma3ForCausalLM": lambda: tiny_hf_gemma3(),
    }[arch]
    torch.manual_seed(0)
    return _random_init(make(), 0)


HOOKED = {"GPT2LMHeadModel": tiny_gpt2, "LlamaForCausalLM": tiny_llama, "Gemma2ForCausalLM": tiny_gemma,
          "Gemma3ForCausalLM": lambda: tiny_gemma3("hooked"), "MixtralForCausalLM": tiny_mixtral}
TL4_ONLY = "TL 4 only"  # works on TransformerLens 4, refused on 3.9


def table() -> list[dict[str, str]]:
    """The rows of the page's coverage table, as ``{column: cell}``."""
    lines = PAGE.read_text().splitlines()
    start = lines.index("<!-- coverage-table: read by tests/test_coverage.py -->") + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    header, rule, *body = rows
    assert set(rule) == {"---"}
    return [dict(zip(header, r)) for r in body]


def _ids(row):
    return f"{row['Hugging Face class']}-{'hooked' if row['Backend'] == 'HookedTransformer' else 'bridge'}"


def test_the_table_is_well_formed():
    rows = table()
    assert len(rows) >= 12
    for row in rows:
        assert row["Backend"] in ("HookedTransformer", "TransformerBridge"), row
        assert row["Nodes"] in ("yes", "mlp_out", "refused") and row["Feature bases"] == "not yet", row
        assert {row["Edges"], row["Head splits"]} <= {"yes", "refused", TL4_ONLY}, row
        assert not (row["Edges"] == "refused" and row["Head splits"] == "yes"), row  # splits split edges
        assert row["Backend"] == "TransformerBridge" or row["Hugging Face class"] in HOOKED, row
    assert len({_ids(r) for r in rows}) == len(rows)


def _model(row):
    arch = row["Hugging Face class"]
    if row["Backend"] == "HookedTransformer":
        if not backends.hooked_transformer_available():
            pytest.skip("needs HookedTransformer (TransformerLens 3.x)")
        return HOOKED[arch]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return backends.wrap_hf_model(_hf(arch), word_tokenizer(), f"tiny-{arch}")


def _split_total(split) -> float:
    return split.residual + sum(w for *_, w in split.heads) + split.other


@pytest.mark.parametrize("row", table(), ids=_ids)
def test_row(row):
    model = _model(row)
    tl4 = backends.transformer_lens_version() >= (4,)
    row = {k: ("yes" if tl4 else "refused") if v == TL4_ONLY else v for k, v in row.items()}
    # nodes
    if row["Nodes"] == "yes":
        attr = relp_lens.attribute(model, ROWS, progress=False)
        assert attr.scores.shape[-1] == model.cfg.d_mlp and torch.isfinite(attr.scores).all()
    else:
        with pytest.raises(RelPLensError):
            relp_lens.attribute(model, ROWS, progress=False)
        if row["Nodes"] == "mlp_out":
            attr = relp_lens.attribute(model, ROWS, basis="mlp_out", progress=False)
            assert torch.isfinite(attr.scores).all()
    # edges: against a brute-force Jacobian with the MLPs in between held at their clean values
    circuit = edge_circuit(model)
    circuit.data["prepend_bos"] = bool(model.cfg.default_prepend_bos)  # tokenized as the brute force does
    if row["Edges"] == "refused":
        with pytest.raises(RelPLensError):
            relp_lens.attribute_edges(model, circuit, ROWS, progress=False)
        return
    circuit = relp_lens.attribute_edges(model, circuit, ROWS, batch_size=1, progress=False)
    want, got = brute_force_edges(model, circuit, ROWS, use_relp=True), edge_matrix(circuit)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
    circuit = relp_lens.attribute_io_edges(model, circuit, ROWS, progress=False)
    assert torch.isfinite(circuit.io_edges.output).all()
    # head splits: residual + heads + other = the edge, for every edge
    if row["Head splits"] == "refused":
        with pytest.raises(RelPLensError):
            relp_lens.attribute_head_splits(model, circuit, ROWS, progress=False)
        return
    split = relp_lens.attribute_head_splits(model, circuit, ROWS, progress=False)
    label = [n.label() for n in circuit.nodes]
    edges = split.heads.edges
    scale = max(abs(e.weight) for e in circuit.edges)
    for e in circuit.edges:
        key = edge_key(label[e.source], label[e.target])
        assert _split_total(edges[key]) == pytest.approx(e.weight, abs=2e-5 * scale), key
