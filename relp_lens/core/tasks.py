"""Tasks: prompt sets the package generates (no downloads), plus user JSONL files, and task checks.

- Subject–verb agreement, the four sets of Marks et al. (paired; the patch flips the number of the noun
  that controls agreement):
  ``simple`` ("The parents" → are/is), ``nounpp`` ("The teachers near the desk" → are/is), ``rc`` ("The
  athlete that the managers like" → agrees with the head noun), ``within_rc`` ("The athlete that the
  managers" → like/likes, agrees with the embedded noun). And :func:`agreement_rows`, the package's own
  mix of ``simple`` and ``nounpp``-style pairs with are/is only ("The keys to the cabinet" → are/is), which the
  demo, the CLI's ``--task agreement``, the benchmarks and the README's figures use.
- Multi-hop capitals for all 50 US states (unpaired): two-hop ("the capital of the state containing
  Dallas is" → Austin) and the single hops (city → state, state → capital), plain or chat form.
- Addition ("36 + 59 = " → 9, the first token of the sum) and antonyms in English, French, Spanish and
  German ("The opposite of big is" → small), unpaired, plain or chat form.

Every generator is seeded and keeps only rows whose answers are single tokens under the model's tokenizer
(unpaired targets: the first token the answer contributes after the prompt) and, for pairs, whose clean and
patch prompts have equal token length. :func:`task_report` measures how well the model does a task before
anyone traces a circuit for it, and :func:`load_task` resolves a task name or a JSONL path.
"""

from __future__ import annotations

import itertools
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from relp_lens.core.data import Prompts, make_batches, tokenize, warn_unlikely_answers
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import AGREEMENT_SETS, AgreementSet  # noqa: F401

if TYPE_CHECKING:  # annotations only: TransformerLens 4 has no HookedTransformer
    from transformer_lens import HookedTransformer

# -- vocabulary written for this package ------------------------------------------------------------------
PEOPLE = [("author", "authors"), ("pilot", "pilots"), ("surgeon", "surgeons"), ("farmer", "farmers"),
          ("manager", "managers"), ("customer", "customers"), ("officer", "officers"), ("teacher", "teachers"),
          ("senator", "senators"), ("athlete", "athletes"), ("dancer", "dancers"), ("doctor", "doctors"),
          ("student", "students"), ("lawyer", "lawyers"), ("singer", "singers"), ("child", "children"),
          ("woman", "women"), ("parent", "parents"), ("friend", "friends"), ("driver", "drivers"),
          ("artist", "artists"), ("nurse", "nurses"), ("painter", "painters"), ("guard", "guards")]
THINGS = [("desk", "desks"), ("table", "tables"), ("house", "houses"), ("school", "schools"), ("car", "cars"),
          ("door", "doors"), ("window", "windows"), ("garden", "gardens"), ("office", "offices"),
          ("cabinet", "cabinets"), ("bridge", "bridges"), ("tree", "trees"), ("tower", "towers"),
          ("station", "stations"), ("farm", "farms"), ("road", "roads")]
PREPOSITIONS = ["near", "behind", "beside", "by", "next to", "across from", "in front of"]
BE_VERBS = [(" is", " are"), (" was", " were"), (" has", " have"), (" does", " do")]  # (singular, plural)
RC_VERBS = [("likes", "like"), ("admires", "admire"), ("loves", "love"), ("hates", "hate"), ("knows", "know"),
            ("sees", "see"), ("trusts", "trust"), ("helps", "help")]

# (a city, its state, the state's capital): every state, cities that do not contain the state's name
CAPITALS = [
    ("Birmingham", "Alabama", "Montgomery"), ("Anchorage", "Alaska", "Juneau"), ("Tucson", "Arizona", "Phoenix"),
    ("Fayetteville", "Arkansas", "Little Rock"), ("Los Angeles", "California", "Sacramento"),
    ("Boulder", "Colorado", "Denver"), ("Bridgeport", "Connecticut", "Hartford"), ("Wilmington", "Delaware", "Dover"),
    ("Miami", "Florida", "Tallahassee"), ("Savannah", "Georgia", "Atlanta"), ("Hilo", "Hawaii", "Honolulu"),
    ("Pocatello", "Idaho", "Boise"), ("Chicago", "Illinois", "Springfield"), ("Fort Wayne", "Indiana", "Indianapolis"),
    ("Cedar Rapids", "Iowa", "Des Moines"), ("Wichita", "Kansas", "Topeka"), ("Louisville", "Kentucky", "Frankfort"),
    ("New Orleans", "Louisiana", "Baton Rouge"), ("Bangor", "Maine", "Augusta"), ("Baltimore", "Maryland", "Annapolis"),
    ("Worcester", "Massachusetts", "Boston"), ("Detroit", "Michigan", "Lansing"),
    ("Minneapolis", "Minnesota", "Saint Paul"), ("Biloxi", "Mississippi", "Jackson"),
    ("St. Louis", "Missouri", "Jefferson City"), ("Billings", "Montana", "Helena"), ("Omaha", "Nebraska", "Lincoln"),
    ("Las Vegas", "Nevada", "Carson City"), ("Manchester", "New Hampshire", "Concord"),
    ("Newark", "New Jersey", "Trenton"), ("Albuquerque", "New Mexico", "Santa Fe"), ("Buffalo", "New York", "Albany"),
    ("Charlotte", "North Carolina", "Raleigh"), ("Fargo", "North Dakota", "Bismarck"),
    ("Cleveland", "Ohio", "Columbus"), ("Tulsa", "Oklahoma", "Oklahoma City"), ("Portland", "Oregon", "Salem"),
    ("Philadelphia", "Pennsylvania", "Harrisburg"), ("Warwick", "Rhode Island", "Providence"),
    ("Myrtle Beach", "South Carolina", "Columbia"), ("Sioux Falls", "South Dakota", "Pierre"),
    ("Memphis", "Tennessee", "Nashville"), ("Dallas", "Texas", "Austin"), ("Provo", "Utah", "Salt Lake City"),
    ("Burlington", "Vermont", "Montpelier"), ("Norfolk", "Virginia", "Richmond"),
    ("Seattle", "Washington", "Olympia"), ("Morgantown", "West Virginia", "Charleston"),
    ("Milwaukee", "Wisconsin", "Madison"), ("Casper", "Wyoming", "Cheyenne"),
]
CAPITAL_PROMPTS = {
    "two_hop": ("Fact: the capital of the state containing {city} is", "What is the capital of the state containing {city}?", "capital"),
    "city_to_state": ("Fact: {city} is a city in the state of", "Which US state is {city} in?", "state"),
    "state_to_capital": ("Fact: the capital of {state} is", "What is the capital of {state}?", "capital"),
}
ANTONYMS = {
    "en": ("The opposite of {w} is", "What is the opposite of {w}?",
           [("big", "small"), ("hot", "cold"), ("fast", "slow"), ("happy", "sad"), ("rich", "poor"),
            ("strong", "weak"), ("full", "empty"), ("long", "short"), ("high", "low"), ("early", "late"),
            ("wet", "dry"), ("hard", "soft"), ("light", "dark"), ("open", "closed"), ("old", "young"),
            ("thick", "thin"), ("loud", "quiet"), ("up", "down")]),
    "fr": ("Le contraire de {w} est", "Quel est le contraire de {w} ?",
           [("grand", "petit"), ("chaud", "froid"), ("rapide", "lent"), ("heureux", "triste"), ("riche", "pauvre"),
            ("fort", "faible"), ("plein", "vide"), ("long", "court"), ("haut", "bas"), ("jeune", "vieux")]),
    "es": ("Lo contrario de {w} es", "¿Cuál es lo contrario de {w}?",
           [("grande", "pequeño"), ("caliente", "frío"), ("rápido", "lento"), ("feliz", "triste"), ("rico", "pobre"),
            ("fuerte", "débil"), ("lleno", "vacío"), ("largo", "corto"), ("alto", "bajo"), ("joven", "viejo")]),
    "de": ("Das Gegenteil von {w} ist", "Was ist das Gegenteil von {w}?",
           [("groß", "klein"), ("heiß", "kalt"), ("schnell", "langsam"), ("glücklich", "traurig"), ("reich", "arm"),
            ("stark", "schwach"), ("voll", "leer"), ("lang", "kurz"), ("hoch", "niedrig"), ("jung", "alt")]),
}
# agreement_rows' own vocabulary (its rows, and every figure made from them, depend on these lists as they are)
MIXED_NOUNS = [("key", "keys"), ("parent", "parents"), ("author", "authors"), ("doctor", "doctors"),
               ("teacher", "teachers"), ("student", "students"), ("farmer", "farmers"), ("manager", "managers"),
               ("pilot", "pilots"), ("singer", "singers"), ("driver", "drivers"), ("child", "children"),
               ("friend", "friends"), ("lawyer", "lawyers"), ("officer", "officers"), ("artist", "artists")]
MIXED_PLACES = ["cabinet", "desk", "house", "school", "table", "garden", "office", "car", "door", "window"]
MIXED_PREPS = ["to", "near", "behind", "beside", "by", "in", "on"]

UNPAIRED_TASKS = ("capitals", "city_to_state", "state_to_capital", "addition", "antonyms")
TASKS = AGREEMENT_SETS + UNPAIRED_TASKS


def _single(model: HookedTransformer, text: str) -> bool:
    return len(model.to_tokens(text, prepend_bos=False)[0]) == 1


def _n_tokens(model: HookedTransformer, text: str) -> int:
    return len(model.to_tokens(text)[0])


def agreement(model: HookedTransformer, kind: AgreementSet = "simple", n: int = 64, seed: int = 0) -> list[dict]:
    """``n`` paired rows of one of Marks et al.'s four agreement sets (fewer if the filters leave fewer)."""
    if kind not in AGREEMENT_SETS:
        raise RelPLensError(f"unknown agreement set {kind!r}; choose from {list(AGREEMENT_SETS)}")
    rng = random.Random(f"{kind}:{seed}")
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(50 * n):
        if len(rows) == n:
            break
        head, plural = rng.choice(PEOPLE), rng.random() < 0.5
        if kind == "within_rc":
            other = rng.choice([p for p in PEOPLE if p != head])
            verb = rng.choice(RC_VERBS)
            head_word = head[rng.random() < 0.5]
            clean = f"The {head_word} that the {other[plural]}"
            patch = f"The {head_word} that the {other[not plural]}"
            good, bad = " " + verb[plural], " " + verb[not plural]
        else:
            verb = rng.choice(BE_VERBS)
            good, bad = verb[plural], verb[not plural]
            if kind == "simple":
                tail = ""
            elif kind == "nounpp":
                thing = rng.choice(THINGS)
                tail = f" {rng.choice(PREPOSITIONS)} the {thing[rng.random() < 0.5]}"
            else:  # rc: the embedded verb agrees with the embedded noun, the answer with the head noun
                other = rng.choice([p for p in PEOPLE if p != head])
                other_plural = rng.random() < 0.5
                tail = f" that the {other[other_plural]} {rng.choice(RC_VERBS)[other_plural]}"
            clean, patch = f"The {head[plural]}{tail}", f"The {head[not plural]}{tail}"
        if clean in seen or not (_single(model, good) and _single(model, bad)):
            continue
        if _n_tokens(model, clean) != _n_tokens(model, patch):
            continue
        seen.add(clean)
        rows.append(dict(clean_prefix=clean, patch_prefix=patch, clean_answer=good, patch_answer=bad,
                         case=f"{kind}:{'plural' if plural else 'singular'}"))
    return rows


def agreement_rows(model: HookedTransformer, n: int = 32, seed: int = 0, simple_fraction: float = 0.25) -> list[dict]:
    """``n`` paired rows: ``The {subj} [{prep} the {place}]`` → ``are``/``is``, half with plural subjects."""
    rng = random.Random(seed)
    combos = list(itertools.product(MIXED_NOUNS, MIXED_PREPS, MIXED_PLACES))
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


def chat(model: HookedTransformer, question: str) -> str:
    """``question`` as one user turn in the model's chat template, ready for the assistant's reply."""
    tok = model.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)
        return text.removeprefix(tok.bos_token or "")
    return f"Question: {question}\nAnswer:"


def _reply(prompt: str, answer: str) -> str:
    """The answer as it follows ``prompt``: right after a template's turn marker (a newline), after a space
    otherwise (the ``Answer:`` fallback of :func:`chat`: its answer's first token is `` Utah``, not ``Utah``)."""
    return answer if prompt[-1:].isspace() else " " + answer


def first_answer_token(model: HookedTransformer, prompt: str, answer: str) -> str | None:
    """The first token ``answer`` contributes after ``prompt`` (None when tokenization merges across them)."""
    p = model.to_tokens(prompt)[0]
    full = model.to_tokens(prompt + answer)[0]
    if len(full) <= len(p) or not torch.equal(full[: len(p)], p):
        return None
    return model.to_string(full[len(p): len(p) + 1])


def _unpaired(model, items: list[tuple[str, str, str]], n: int, seed: int, name: str) -> list[dict]:
    """rows from (prompt, answer text, case); target = the answer's first token after the prompt."""
    rng = random.Random(f"{name}:{seed}")
    items = list(items)
    rng.shuffle(items)
    rows = []
    for prompt, answer, case in items:
        target = first_answer_token(model, prompt, answer)
        if target is None:
            continue
        rows.append(dict(clean_prefix=prompt, clean_answer=target, case=case))
        if len(rows) == n:
            break
    return rows


def capitals(model: HookedTransformer, hop: str = "two_hop", n: int = 50, seed: int = 0,
             form: str = "plain") -> list[dict]:
    """Capital prompts: ``hop`` in two_hop / city_to_state / state_to_capital; ``form`` plain or chat."""
    if hop not in CAPITAL_PROMPTS:
        raise RelPLensError(f"unknown hop {hop!r}; choose from {list(CAPITAL_PROMPTS)}")
    plain, question, what = CAPITAL_PROMPTS[hop]
    items = []
    for city, state, capital in CAPITALS:
        answer = capital if what == "capital" else state
        if form == "chat":
            prompt = chat(model, question.format(city=city, state=state))
            items.append((prompt, _reply(prompt, answer), f"{hop}:{state}"))
        else:
            items.append((plain.format(city=city, state=state), " " + answer, f"{hop}:{state}"))
    return _unpaired(model, items, n, seed, f"capitals:{hop}:{form}")


def addition(model: HookedTransformer, n: int = 64, seed: int = 0, form: str = "plain") -> list[dict]:
    """``x + y`` with x, y < 100; the target is the first token of the sum."""
    rng = random.Random(f"addition:{seed}")
    items = []
    for _ in range(n * 3):
        x, y = rng.randrange(100), rng.randrange(100)
        if form == "chat":
            prompt = chat(model, f"What is {x} + {y}?")
            items.append((prompt, _reply(prompt, str(x + y)), f"{x}+{y}"))
        else:
            items.append((f"{x} + {y} = ", str(x + y), f"{x}+{y}"))
    seen, unique = set(), []
    for it in items:
        if it[0] not in seen:
            seen.add(it[0])
            unique.append(it)
    return _unpaired(model, unique, n, seed, "addition")


def antonyms(model: HookedTransformer, n: int = 48, seed: int = 0, languages=("en", "fr", "es", "de"),
             form: str = "plain") -> list[dict]:
    """Antonym prompts in several languages; the target is the antonym's first token."""
    items = []
    for lang in languages:
        if lang not in ANTONYMS:
            raise RelPLensError(f"unknown language {lang!r}; choose from {list(ANTONYMS)}")
        plain, question, pairs = ANTONYMS[lang]
        for w, opposite in pairs:
            if form == "chat":
                prompt = chat(model, question.format(w=w))
                items.append((prompt, _reply(prompt, opposite), f"{lang}:{w}"))
            else:
                items.append((plain.format(w=w), " " + opposite, f"{lang}:{w}"))
    return _unpaired(model, items, n, seed, "antonyms")


def load_task(model: HookedTransformer, task: str, n: int = 64, seed: int = 0, form: str = "plain") -> list[dict]:
    """Rows of a built-in task (see ``TASKS``) or of a JSONL file (validated, errors name ``file:line``)."""
    if task in AGREEMENT_SETS:
        return agreement(model, task, n, seed)
    if task == "capitals":
        return capitals(model, "two_hop", n, seed, form)
    if task in ("city_to_state", "state_to_capital"):
        return capitals(model, task, n, seed, form)
    if task == "addition":
        return addition(model, n, seed, form)
    if task == "antonyms":
        return antonyms(model, n, seed, form=form)
    if task.endswith(".jsonl") or Path(task).is_file():
        return Prompts.from_jsonl(task).to_rows()[:n]
    raise RelPLensError(f"unknown task {task!r}; built-in tasks: {list(TASKS)}, or a .jsonl file")


MIN_ACCURACY = 0.5  # below this, task_report and the CLI warn


class TaskWarning(UserWarning):
    """The model mostly fails the task: a circuit for it would explain a behaviour it does not have."""


@dataclass
class TaskReport:
    n: int
    accuracy: float  # paired: logit diff > 0; unpaired: target is the top-1 token
    mean_logit_diff: float | None  # paired only
    mean_target_prob: float  # probability of the clean target
    correct: tuple[bool, ...] = field(default=(), repr=False)  # per prompt, in data order

    def __str__(self) -> str:
        diff = "" if self.mean_logit_diff is None else f", mean logit diff {self.mean_logit_diff:+.3f}"
        return f"accuracy {self.accuracy:.1%} on {self.n} prompts{diff}, mean target probability {self.mean_target_prob:.3f}"


def _scores(model: HookedTransformer, data: Prompts, batch_size: int, prepend_bos: bool | None = None):
    """Per example: (correct, logit diff or None, target probability), in data order."""
    if data.answers is None:
        raise RelPLensError("scoring the task needs answers (clean_answer)")
    tok = tokenize(model, data, prepend_bos=prepend_bos)
    out: list[tuple[bool, float | None, float]] = [None] * len(data)  # type: ignore[list-item]
    for b in make_batches(tok, batch_size):
        with torch.no_grad():
            logits = model(b.clean_tokens.to(model.cfg.device))[:, -1].float()
        warn_unlikely_answers(logits, b, data)
        p = logits.softmax(-1)
        for r, ids in enumerate(b.answer_ids):
            prob = p[r, ids].sum().item()
            if b.patch_answer_ids is not None:
                d = (logits[r, ids].max() - logits[r, b.patch_answer_ids[r]].max()).item()
                out[b.indices[r]] = (d > 0, d, prob)
            else:
                out[b.indices[r]] = (int(logits[r].argmax()) in ids, None, prob)
    return out


def task_report(model: HookedTransformer, rows, *, batch_size: int = 32, min_accuracy: float = MIN_ACCURACY,
                warn: bool = True, prepend_bos: bool | None = None) -> TaskReport:
    """How well the model does the task; warns (:class:`TaskWarning`) below ``min_accuracy`` (50%).

    Also warns (:class:`relp_lens.core.data.AnswerWarning`) for an answer the model almost never predicts where
    the same text with a leading space is likely (``"are"`` for ``" are"``). ``prepend_bos``: as
    :func:`relp_lens.core.data.tokenize` (None: the model's own default).
    """
    data = rows if isinstance(rows, Prompts) else Prompts.from_rows(rows)
    scores = _scores(model, data, batch_size, prepend_bos)
    correct = [c for c, _, _ in scores]
    diffs = [d for _, d, _ in scores if d is not None]
    probs = [p for _, _, p in scores]
    report = TaskReport(n=len(correct), accuracy=sum(correct) / len(correct),
                        mean_logit_diff=sum(diffs) / len(diffs) if diffs else None,
                        mean_target_prob=sum(probs) / len(probs), correct=tuple(correct))
    if warn and report.accuracy < min_accuracy:
        warnings.warn(f"the model gets only {report.accuracy:.0%} of this task right (below {min_accuracy:.0%}); "
                      f"a circuit for a behaviour the model does not have means little", TaskWarning, stacklevel=2)
    return report


def only_correct(model: HookedTransformer, rows, *, batch_size: int = 32, prepend_bos: bool | None = None,
                 report: TaskReport | None = None):
    """The examples the model gets right (paired: logit diff > 0; unpaired: the target is its top-1 token),
    in the form given (a :class:`Prompts` or a list of rows). An error when it gets none right.
    ``prepend_bos``: as :func:`relp_lens.core.data.tokenize` (None: the model's own default). ``report``: the
    :func:`task_report` of these same rows (same ``prepend_bos``), whose verdicts are reused instead of scoring
    the rows again."""
    data = rows if isinstance(rows, Prompts) else Prompts.from_rows(rows)
    if report is not None and len(report.correct) != len(data):
        raise RelPLensError(f"the task report covers {len(report.correct)} prompts, not these {len(data)}")
    verdicts = report.correct if report is not None else [c for c, _, _ in _scores(model, data, batch_size,
                                                                                     prepend_bos)]
    keep = [i for i, c in enumerate(verdicts) if c]
    if not keep:
        raise RelPLensError(f"the model gets none of the {len(data)} prompts right: nothing to trace")
    return data.subset(keep) if isinstance(rows, Prompts) else [list(rows)[i] for i in keep]
