"""A small built-in subject–verb agreement set ("The keys to the cabinet" → are / is).

Paired rows in the field's JSONL format: the patch flips the number of the subject, so the correct verb
flips too. Filtered under the model's tokenizer: single-token answers, equal clean/patch token lengths.
(The full task suite — the four sets of Marks et al. — is a later module; this one serves the demo,
benchmarks and tests.)
"""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer


NOUNS = [("key", "keys"), ("parent", "parents"), ("author", "authors"), ("doctor", "doctors"),
         ("teacher", "teachers"), ("student", "students"), ("farmer", "farmers"), ("manager", "managers"),
         ("pilot", "pilots"), ("singer", "singers"), ("driver", "drivers"), ("child", "children"),
         ("friend", "friends"), ("lawyer", "lawyers"), ("officer", "officers"), ("artist", "artists")]
PLACES = ["cabinet", "desk", "house", "school", "table", "garden", "office", "car", "door", "window"]
PREPS = ["to", "near", "behind", "beside", "by", "in", "on"]


def agreement_rows(model: HookedTransformer, n: int = 32, seed: int = 0, simple_fraction: float = 0.25) -> list[dict]:
    """``n`` paired rows: ``The {subj} [{prep} the {place}]`` → ``are``/``is``, half with plural subjects."""
    rng = random.Random(seed)
    combos = list(itertools.product(NOUNS, PREPS, PLACES))
    rng.shuffle(combos)
    rows: list[dict] = []
    for i, ((sg, pl), prep, place) in enumerate(combos):
        plural = i % 2 == 0
        tail = "" if rng.random() < simple_fraction else f" {prep} the {place}"
        clean, patch = (pl, sg) if plural else (sg, pl)
        row = dict(clean_prefix=f"The {clean}{tail}", patch_prefix=f"The {patch}{tail}",
                   clean_answer=" are" if plural else " is", patch_answer=" is" if plural else " are",
                   case="nounpp" if tail else "simple")
        if len(model.to_tokens(row["clean_prefix"])[0]) != len(model.to_tokens(row["patch_prefix"])[0]):
            continue
        if row in rows:
            continue
        rows.append(row)
        if len(rows) == n:
            break
    return rows
