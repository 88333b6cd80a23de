"""Max |Δlogit| between relp_lens' GGUF loader and transformers' own, and the RelP conservation error.

Usage: ``.venv/bin/python benchmarks/loader_agreement.py``
"""

import torch
from transformers import AutoModelForCausalLM

import relp_lens
from relp_lens.core.relp_mode import embedding_relevance

PROMPTS = ["The capital of France is", "The keys to the cabinet", "def add(a, b):\n    return"]


def main() -> None:
    model = relp_lens.load_model()
    path = relp_lens.shipped_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    for p in PROMPTS:
        tokens = model.to_tokens(p)
        with torch.no_grad():
            d = (model(tokens) - hf(tokens).logits).abs().max().item()
        print(f"max |Δlogit| {d:.2e}  on {p!r}")
    tokens = model.to_tokens("The keys to the cabinet")
    logit, rel = embedding_relevance(model, tokens, model.to_single_token(" are"), attention=True)
    print(f"conservation: logit {logit:.6f}, relevance at embeddings {rel:.6f}, "
          f"relative error {abs(rel - logit) / abs(logit):.1e}")


if __name__ == "__main__":
    main()
