"""Which BOS token makes the shipped SmolLM2 best at subject–verb agreement?

Compares <|endoftext|> (id 0, relp_lens' default), <|im_start|> (id 1, the GGUF file's BOS) and no BOS on
the built-in agreement pairs: accuracy (clean logit diff > 0 and patch logit diff < 0) and mean logit diff.
Usage: ``.venv/bin/python benchmarks/bos_choice.py [--n-prompts 64]``
"""

import argparse

import torch

import relp_lens
from relp_lens.core.tasks import agreement_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prompts", type=int, default=64)
    args = ap.parse_args()
    model = relp_lens.load_model()
    rows = agreement_rows(model, args.n_prompts)
    for label, bos_id in [("<|endoftext|> (id 0)", 0), ("<|im_start|> (id 1)", 1), ("no BOS", None)]:
        diffs = []
        for r in rows:
            for prefix, good, bad in [(r["clean_prefix"], r["clean_answer"], r["patch_answer"]),
                                      (r["patch_prefix"], r["patch_answer"], r["clean_answer"])]:
                toks = model.to_tokens(prefix, prepend_bos=False)
                if bos_id is not None:
                    toks = torch.cat([torch.tensor([[bos_id]]), toks], 1)
                with torch.no_grad():
                    logits = model(toks)[0, -1]
                diffs.append((logits[model.to_single_token(good)] - logits[model.to_single_token(bad)]).item())
        d = torch.tensor(diffs)
        print(f"{label:>22s}: accuracy {(d > 0).float().mean():.1%}, mean logit diff {d.mean():+.3f} "
              f"over {len(d)} prompts")


if __name__ == "__main__":
    main()
