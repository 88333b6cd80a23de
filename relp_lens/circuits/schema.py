"""What a circuit file must hold: the checks :meth:`relp_lens.circuits.circuit.Circuit.load` (and ``from_dict``,
``save``, and a ``Circuit`` given an annotation as a dict) run, one message per problem, naming the field by its
path (``nodes[1].score``, ``heads.n_heads``). Everything here checks plain JSON values and imports nothing of the
circuits stage: :mod:`relp_lens.circuits.circuit` imports this module and turns the checked values into its types.

1. The text (:func:`read_json`): UTF-8 (a byte-order mark is dropped), no NUL byte (a binary file), not empty,
   valid JSON (a truncated file is named as such), not nested too deeply.
2. The document (:func:`check_document`): a JSON object whose ``schema`` is :data:`SCHEMA` and whose ``version``
   is 1 or :data:`VERSION` (a larger version: a file from a newer relp_lens, said so).
3. Every value in it a JSON value, every number finite and every integer of a sane size (:func:`check_finite`;
   ``NaN``/``Infinity`` tokens and ``1e999`` are named by their path, and by their line when read from text).
   The per-field checks after it need not think about NaN or infinities.
4. The required fields: ``model`` (a name and :data:`FINGERPRINT` fields of the right types), ``basis``,
   ``hook_names``, ``node_width``, ``nodes`` (layer, pos, index, score) and ``edges`` (source, target, weight).
5. The optional fields, each with its rules (:data:`_DATA`, :data:`_SELECTION`, :data:`_EVALUATION`, ...: small
   tables of field → rule walked by :func:`_check_fields`): ``method``, ``metric``, ``data``, ``selection``,
   ``evaluation``; for version 2 ``baseline``, ``ablation`` and ``positions`` (version 1: absolute positions,
   the patch baseline for paired rows else zero, mean ablation); then ``io_edges`` (:func:`check_io_edges`: its
   lengths fit the circuit), ``heads`` (:func:`check_heads`) and ``groups`` (:func:`check_groups`: known
   features, no empty group, no node in two groups, members nodes of the circuit).
6. What the :class:`~relp_lens.circuits.circuit.Circuit` constructor checks itself (layers, indices and edge
   ends in range, no duplicate node) comes last, after the circuit module turned the fields into its types.

The layout of the file is in :mod:`relp_lens.circuits.circuit`'s docstring.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import ABLATIONS, CIRCUIT_BASELINES as BASELINES, GROUP_FEATURES as FEATURES  # noqa: F401
from relp_lens.core.options import RANKS
from relp_lens.core.validate import finite_float, is_int, need, show

SCHEMA = "relp_lens.circuit"
VERSION = 2
# the model configuration a circuit file records beside the name (step 3 of relp_lens.circuits.circuit): the same
# for a HookedTransformer and a TransformerBridge of the same weights, on TransformerLens 3 and 4 (rotary bases,
# post-norm and final-norm flags, tied embeddings differ between the two and are left out)
FINGERPRINT = ("n_layers", "d_model", "d_mlp", "d_vocab", "n_heads", "d_head", "n_key_value_heads",
               "normalization_type", "act_fn", "gated_mlp", "positional_embedding_type", "attn_only", "num_experts",
               "architecture")
_FINGERPRINT_TYPES = {"normalization_type": str, "act_fn": str, "positional_embedding_type": str,
                      "architecture": str, "gated_mlp": bool, "attn_only": bool}  # the others: integers ≥ 0
_MAX_INT = 2 ** 63 - 1  # no count, index or seed in a circuit file is larger
_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(NaN|-?Infinity)')  # JSON strings are skipped, constants captured
NOT_FINITE = "circuit files hold finite numbers only"  # the end of every non-finite number's message


# -- step 1: the text ------------------------------------------------------------------------------------------
class _NonFinite:
    """What ``json.loads`` makes of ``NaN``, ``Infinity`` and ``-Infinity``: refused by :func:`check_finite`
    with the field's path (Python's JSON parser accepts the three tokens; JSON itself does not)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:  # messages show the token as written
        return self.token


def read_json(raw: bytes, path: Any) -> tuple[str, Any]:
    """The text of a circuit file and the JSON value it holds (step 1), not yet checked as a circuit.

    Args:
        raw: the file's bytes.
        path: the file, for messages.

    Returns:
        ``(text, value)``; a :class:`~relp_lens.core.errors.RelPLensError` naming ``path`` for a binary, non-UTF-8,
        empty, truncated or invalid file, or JSON nested too deeply.
    """
    if b"\0" in raw:
        raise RelPLensError(f"{path}: a binary file, not a circuit JSON file (NUL byte at byte {raw.index(0)})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RelPLensError(f"{path}: not UTF-8 text (byte {e.start}); a circuit file is JSON text") from e
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors add
    if not text.strip():
        raise RelPLensError(f"{path}: the file is empty; not a circuit")
    try:
        return text, json.loads(text, parse_constant=_NonFinite)
    except json.JSONDecodeError as e:
        cut = " (the file ends early: truncated?)" if _ends_open(text) else ""
        raise RelPLensError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}){cut}") from e
    except RecursionError:
        raise RelPLensError(f"{path}: not a circuit (JSON nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise RelPLensError(f"{path}: not a circuit ({e})") from e


def non_finite_line(message: str, text: str) -> int | None:
    """The line of ``text`` to add to ``message`` when it refuses a non-finite number (step 3).

    Args:
        message: a circuit check's message.
        text: the file's JSON text.

    Returns:
        The line of the first ``NaN`` / ``Infinity`` token outside a JSON string, or ``None`` when the message is
        about something else or the text has no such token (``1e999``).
    """
    if NOT_FINITE not in message:
        return None
    for m in _CONSTANT.finditer(text):
        if m.group(1):
            return text.count("\n", 0, m.start()) + 1
    return None


def _ends_open(text: str) -> bool:
    """Whether JSON ``text`` ends inside a string or with a bracket still open (a truncated file)."""
    depth = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|"|[\[\]{}]', text):
        t = m.group()
        if t == '"':
            return True
        depth += 1 if t in "[{" else -1 if t in "]}" else 0
    return depth > 0


# -- step 3: only finite numbers -------------------------------------------------------------------------------
def _join(where: str, key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"


def check_finite(obj: Any, where: str = "") -> None:
    """Every number in a JSON-like value finite, every integer of a sane size, and only JSON types (step 3).

    Args:
        obj: a parsed JSON value, or a dict built in Python (tuples count as lists).
        where: the value's own path in the document (``"evaluation"``), prefixed to the paths in messages.

    Returns:
        None; a :class:`~relp_lens.core.errors.RelPLensError` naming the path of the first bad value otherwise.
    """
    stack: list[tuple[str, Any]] = [(where, obj)]
    while stack:
        where, v = stack.pop()
        if v is None or isinstance(v, (bool, str)):
            continue
        if isinstance(v, dict):
            stack.extend(reversed([(_join(where, k), x) for k, x in v.items()]))
        elif isinstance(v, (list, tuple)):
            stack.extend(reversed([(f"{where}[{i}]", x) for i, x in enumerate(v)]))
        elif isinstance(v, int):
            if abs(v) > _MAX_INT:
                raise RelPLensError(f"{where}: the integer {show(v)} is too large")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise RelPLensError(f"{where}: {v!r} is not a finite number; {NOT_FINITE}")
        elif isinstance(v, _NonFinite):
            raise RelPLensError(f"{where}: {v.token} is not a finite number; {NOT_FINITE}")
        else:
            raise RelPLensError(f"{where or 'the circuit'}: a {type(v).__name__} is not a JSON value")


# -- the rules: field → check ----------------------------------------------------------------------------------
_Check = Callable[[Any, str], None]  # (value, path): raises RelPLensError naming the path, or returns


def _must(what: str, ok: Callable[[Any], bool]) -> _Check:
    """A check that ``ok(value)`` holds: ``"<path> must be <what>, got <value>"`` otherwise."""
    return lambda value, where: need(ok(value), where, what, value)


def _or_null(check: _Check) -> _Check:
    """``check``, with null (``None``) also accepted."""
    return lambda value, where: None if value is None else check(value, where)


def _number(**bounds: Any) -> _Check:
    """A finite number (inside ``bounds``, as :func:`~relp_lens.core.validate.finite_float`)."""
    def check(value: Any, where: str) -> None:
        finite_float(value, where, **bounds)

    return check


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _is_nonneg(value: Any) -> bool:
    return is_int(value) and value >= 0


def _strings(value: Any) -> bool:
    return _is_list(value) and all(isinstance(x, str) for x in value)


_STRING = _must("a string", lambda v: isinstance(v, str))
_BOOL = _must("true or false", lambda v: isinstance(v, bool))
_NONNEG = _must("a non-negative integer", _is_nonneg)
_NUMBER = _number()
_REQUIRED = True  # a missing field is checked as null; otherwise a missing field is not checked


def _check_fields(obj: dict, where: str, rules: Iterable[tuple]) -> None:
    """Walk ``rules``, ``(key, check)`` or ``(key, check, _REQUIRED)``, in order over the object ``obj``."""
    for key, check, *required in rules:
        if required or key in obj:
            check(obj.get(key), f"{where}.{key}")


def _int_list(value: Any, where: str, low: int | None = None) -> None:
    need(_is_list(value), where, "a list of integers", value)
    for i, x in enumerate(value):
        need(is_int(x) and (low is None or x >= low), f"{where}[{i}]",
             "an integer" if low is None else f"an integer ≥ {low}", x)


def _num_list(value: Any, where: str, n: int | None = None) -> None:
    need(_is_list(value) and (n is None or len(value) == n), where,
         "a list of numbers" if n is None else f"a list of {n} numbers", value)
    for i, x in enumerate(value):
        finite_float(x, f"{where}[{i}]")


def _optional_dict(d: dict, key: str) -> dict:
    value = d.get(key)
    if value is None:
        return {}
    need(isinstance(value, dict), key, "an object or null", value)
    return value


# -- step 4: the required fields -------------------------------------------------------------------------------
_MODEL = [("name", _or_null(_STRING))] + [
    (key, _or_null(_must("a string or null", lambda v: isinstance(v, str)) if typ is str
                   else _must("true, false or null", lambda v: isinstance(v, bool)) if typ is bool
                   else _must("a non-negative integer or null", _is_nonneg)))
    for key, typ in ((k, _FINGERPRINT_TYPES.get(k)) for k in FINGERPRINT)]


def _check_model_field(m: Any) -> dict:
    if not isinstance(m, dict):
        raise RelPLensError(f"field 'model' missing or not an object (got {show(m)})")
    _check_fields(m, "model", _MODEL)
    return m


def _node(i: int, n: Any) -> dict[str, Any]:
    """Node ``i``, checked: ``{"layer", "pos", "index", "score"}`` (a missing score is 0)."""
    if not isinstance(n, dict):
        raise RelPLensError(f"malformed node {i}: expected an object with layer, pos, index and score, got {show(n)}")
    for key in ("layer", "pos", "index"):
        if key not in n:
            raise RelPLensError(f"malformed node {i}: no {key!r}")
    for key in ("layer", "index"):
        need(is_int(n[key]), f"node {i}: {key}", "an integer", n[key])
    return dict(layer=n["layer"], pos=n["pos"], index=n["index"],
                score=finite_float(n.get("score", 0.0), f"node {i}: score"))


def _edge(i: int, e: Any) -> dict[str, Any]:
    """Edge ``i``, checked: ``{"source", "target", "weight"}``."""
    if not isinstance(e, dict):
        raise RelPLensError(f"malformed edge {i}: expected an object with source, target and weight, got {show(e)}")
    for key in ("source", "target", "weight"):
        if key not in e:
            raise RelPLensError(f"malformed edge {i}: no {key!r}")
    for key in ("source", "target"):
        need(is_int(e[key]), f"edge {i}: {key}", "a node number", e[key])
    return dict(source=e["source"], target=e["target"], weight=finite_float(e["weight"], f"edge {i}: weight"))


# -- step 5: the optional fields -------------------------------------------------------------------------------
def _rows(value: Any, where: str) -> None:
    need(isinstance(value, list), where, "a list of prompt rows or null", value)
    for i, r in enumerate(value):
        need(isinstance(r, dict), f"{where}[{i}]", "a prompt row (an object)", r)


def _neuron_pairs(value: Any, where: str) -> None:
    need(_is_list(value), where, "a list of [layer, index] pairs", value)
    for i, pair in enumerate(value):
        need(_is_list(pair) and len(pair) == 2 and all(_is_nonneg(x) for x in pair), f"{where}[{i}]",
             "a [layer, index] pair", pair)


_DATA = [("task", _or_null(_must("a string or null", lambda v: isinstance(v, str)))),
         ("rows", _or_null(_rows)), ("eval_rows", _or_null(_rows)), ("n_prompts", _or_null(_NONNEG)),
         ("prepend_bos", _BOOL),
         ("dictionaries", _or_null(_must("a list of paths (strings)",
                                         lambda v: _is_list(v) and all(isinstance(x, str) for x in v))))]
_SELECTION = [("k", _or_null(_must("a non-negative integer or null", _is_nonneg))),
              ("tau", _or_null(_number(low=0.0))), ("m", _or_null(_NUMBER)),
              ("aggregate_pos", _or_null(_BOOL)), ("include_fixed", _or_null(_BOOL)),
              ("excluded_positions", _or_null(_int_list)), ("positions_not_in_every_prompt", _or_null(_int_list)),
              ("excluded_neurons", _or_null(_neuron_pairs)),
              ("rank", _or_null(_must("'abs' or 'signed'", lambda v: v in RANKS)))]
_EVALUATION = [("faithfulness", _NUMBER, _REQUIRED), ("completeness", _NUMBER, _REQUIRED),
               *((key, _or_null(_NUMBER)) for key in ("f_model", "f_empty", "f_circuit", "f_complement")),
               ("n_prompts", _or_null(_NONNEG)), ("n_nodes", _or_null(_NONNEG)),
               *((key, _or_null(_STRING)) for key in ("ablation", "verdict", "metric")),
               ("prepend_bos", _or_null(_BOOL))]
_POSITIONS = [("rule", _must("'absolute' or 'end'", lambda v: v in ("absolute", "end"))), ("n_shared", _NONNEG),
              ("labels", _or_null(_must("an object mapping integer positions to labels",
                                        lambda v: isinstance(v, dict))))]


def check_evaluation(ev: Any) -> None:
    """Validate the optional ``evaluation`` field (an object with finite ``faithfulness`` and ``completeness``, or
    empty, or null; the other known keys of the right types).

    Args:
        ev: the field's JSON value.

    Returns:
        None; a :class:`~relp_lens.core.errors.RelPLensError` naming the field otherwise.
    """
    if ev is None:
        return
    need(isinstance(ev, dict), "evaluation", "an object or null", ev)
    if ev:
        _check_fields(ev, "evaluation", _EVALUATION)


def _positions(pos: dict) -> dict:
    _check_fields(pos, "positions", _POSITIONS)
    out = {}
    for key, label in (pos.get("labels") or {}).items():
        if not (is_int(key) or (isinstance(key, str) and re.fullmatch(r"-?[0-9]+", key))):
            raise RelPLensError(f"positions.labels must map integer positions to labels, got the key {show(key)}")
        need(isinstance(label, str), f"positions.labels[{key!r}]", "a string", label)
        out[int(key)] = label
    return dict(rule=pos.get("rule", "absolute"), n_shared=pos.get("n_shared", 0), labels=out)


def check_io_edges(io: Any, n_nodes: int) -> None:
    """Validate the optional ``io_edges`` field against a circuit of ``n_nodes`` nodes.

    Args:
        io: the field's JSON value.
        n_nodes: the circuit's number of nodes.

    Returns:
        None; a :class:`~relp_lens.core.errors.RelPLensError` naming the field otherwise (its types, the rows and
        node numbers of ``input``, the lengths of ``output``, ``direct`` and each target's edges).
    """
    need(isinstance(io, dict), "io_edges", "an object or null", io)
    positions = io.get("positions")
    _int_list(positions, "io_edges.positions")
    n_pos = len(positions)
    rows = io.get("input")
    need(_is_list(rows), "io_edges.input", "a list of [row, node, weight]", rows)
    for i, t in enumerate(rows):
        where = f"io_edges.input[{i}]"
        need(_is_list(t) and len(t) == 3, where, "[row, node, weight]", t)
        need(is_int(t[0]) and 0 <= t[0] < n_pos, f"{where}[0]", f"a row in [0, {n_pos})", t[0])
        need(is_int(t[1]) and 0 <= t[1] < n_nodes, f"{where}[1]", f"a node number in [0, {n_nodes})", t[1])
        finite_float(t[2], f"{where}[2]")
    _check_fields(io, "io_edges", [("output", _num_list, _REQUIRED), ("direct", _num_list, _REQUIRED),
                                   ("metric", _NUMBER)])
    if len(io["output"]) != n_nodes or len(io["direct"]) != n_pos:
        raise RelPLensError(f"io_edges: {len(io['output'])} output weights for {n_nodes} nodes, "
                            f"{len(io['direct'])} direct weights for {n_pos} positions")
    targets = io.get("targets")
    if targets is not None:
        need(_is_list(targets), "io_edges.targets", "a list or null", targets)
        for i, t in enumerate(targets):
            where = f"io_edges.targets[{i}]"
            need(isinstance(t, dict), where, "an object (name, sign, output, direct)", t)
            _check_fields(t, where, [("name", _STRING, _REQUIRED), ("sign", _NUMBER, _REQUIRED),
                                     ("output", lambda v, w: _num_list(v, w, n_nodes), _REQUIRED),
                                     ("direct", lambda v, w: _num_list(v, w, n_pos), _REQUIRED)])


def _head_triples(value: Any, where: str, n_heads: int) -> None:
    need(_is_list(value), where, "a list of [block, head, weight]", value)
    for i, t in enumerate(value):
        need(_is_list(t) and len(t) == 3, f"{where}[{i}]", "[block, head, weight]", t)
        need(is_int(t[0]) and t[0] >= 0, f"{where}[{i}][0]", "a block number ≥ 0", t[0])
        need(is_int(t[1]) and 0 <= t[1] < n_heads, f"{where}[{i}][1]", f"a head in [0, {n_heads})", t[1])
        finite_float(t[2], f"{where}[{i}][2]")


_HEADS = [("n_heads", _must("a positive integer", lambda v: is_int(v) and v >= 1), _REQUIRED),
          ("top", _or_null(_must("an integer ≥ 0 or null", _is_nonneg))),
          ("max_nodes", _or_null(_must("an integer ≥ 1 or null", lambda v: is_int(v) and v >= 1))),
          ("rule", _or_null(_STRING)), ("method", _or_null(_STRING)), ("totals_exact", _or_null(_BOOL)),
          ("edges", _must("an object mapping 'source -> target' to a split", lambda v: isinstance(v, dict)),
           _REQUIRED)]


def check_heads(heads: Any) -> None:
    """Validate the optional ``heads`` field (see :mod:`relp_lens.circuits.circuit`'s schema).

    Args:
        heads: the field's JSON value.

    Returns:
        None; a :class:`~relp_lens.core.errors.RelPLensError` naming the field otherwise.
    """
    need(isinstance(heads, dict), "heads", "an object or null", heads)
    _check_fields(heads, "heads", _HEADS)
    n_heads = heads["n_heads"]
    for key, split in heads["edges"].items():
        where = f"heads.edges[{key!r}]"
        if not isinstance(key, str) or " -> " not in key:
            raise RelPLensError(f"heads: malformed (edge key {show(key)} is not 'source -> target')")
        need(isinstance(split, dict), where, "an object (residual, heads, other)", split)
        _check_fields(split, where, [("residual", _NUMBER, _REQUIRED), ("other", _NUMBER, _REQUIRED)])
        _head_triples(split.get("heads"), f"{where}.heads", n_heads)
    _head_triples(heads.get("totals"), "heads.totals", n_heads)


def _stability(value: Any, where: str) -> None:
    need(isinstance(value, dict), where, "an object or null", value)
    for key, v in value.items():  # ari, subset_fraction: numbers; ari_seeds, ari_subsets: lists; kind
        if _is_list(v):
            _num_list(v, f"{where}.{key}")
        elif key in ("ari", "subset_fraction") and v is not None:
            finite_float(v, f"{where}.{key}")


_STRINGS = _must("a list of strings", _strings)
_GROUP = [("name", _STRING, _REQUIRED), ("label", _STRING, _REQUIRED), ("members", _STRINGS, _REQUIRED),
          ("promoted", _STRINGS), ("score", _NUMBER, _REQUIRED), ("stability", _or_null(_NUMBER))]


def _group_list(value: Any, where: str) -> None:
    need(_is_list(value), where, "a list of groups", value)
    for i, g in enumerate(value):
        need(isinstance(g, dict), f"{where}[{i}]", "an object (name, label, members, score)", g)
        _check_fields(g, f"{where}[{i}]", _GROUP)


_GROUPS = [("features", _must("a list of feature names", _strings), _REQUIRED), ("seed", _must("an integer", is_int)),
           ("n_prompts", _NONNEG), ("method", _STRING), ("pruned", _BOOL), ("stability", _or_null(_stability)),
           ("groups", _group_list, _REQUIRED)]


def check_groups(groups: Any, labels: set[str]) -> None:
    """Validate the optional ``groups`` field: well formed, known features, no empty group, no node in two groups,
    and every member a node of the circuit.

    Args:
        groups: the field's JSON value.
        labels: the labels of the circuit's nodes (``"L3/100@-1"``).

    Returns:
        None; a :class:`~relp_lens.core.errors.RelPLensError` naming the field otherwise.
    """
    need(isinstance(groups, dict), "groups", "an object or null", groups)
    _check_fields(groups, "groups", _GROUPS)
    bad = [f for f in groups["features"] if f not in FEATURES]
    if bad:
        raise RelPLensError(f"groups: unknown feature {bad[0]!r}; choose from {list(FEATURES)}")
    seen: set[str] = set()
    for g in groups["groups"]:
        if not g["members"]:
            raise RelPLensError(f"groups: group {g['name']} has no members")
        twice = seen.intersection(g["members"])
        if twice:
            raise RelPLensError(f"groups: node {sorted(twice)[0]} is in more than one group")
        seen.update(g["members"])
    for g in groups["groups"]:
        missing = [m for m in g["members"] if m not in labels]
        if missing:
            raise RelPLensError(f"groups: group {g['name']} member {missing[0]} is not a node of this circuit")


def _label(n: dict) -> str:
    """A checked node's label, as :meth:`relp_lens.circuits.circuit.CircuitNode.label` writes it."""
    return f"L{n['layer']}/{n['index']}@{'all' if n['pos'] is None else n['pos']}"


# -- steps 2–5: the document -----------------------------------------------------------------------------------
def check_document(d: Any) -> dict[str, Any]:
    """Check a circuit file's JSON value (steps 2–5) and turn it into the circuit's fields.

    Args:
        d: the parsed JSON value (or a dict built in Python: the same checks, NaN and infinities included).

    Returns:
        The circuit's fields as plain JSON values (the keyword arguments of
        :class:`~relp_lens.circuits.circuit.Circuit` but ``source``, in their JSON form: ``nodes`` and ``edges``
        as lists of dicts, ``evaluation``, ``io_edges``, ``heads``, ``groups`` as dicts or ``None``; version-1
        files given their implied baseline, ablation and positions; ``positions.labels`` keyed by integers); a
        :class:`~relp_lens.core.errors.RelPLensError` naming the field otherwise (not the file: the caller adds it).
    """
    if not isinstance(d, dict):
        raise RelPLensError(f"expected a JSON object, got {type(d).__name__}")
    if d.get("schema") != SCHEMA:
        raise RelPLensError(f"not a relp_lens circuit (schema {show(d.get('schema'))}, expected {SCHEMA!r})")
    version = d.get("version")
    if is_int(version, numpy=False) and version > VERSION:
        raise RelPLensError(f"circuit file format version {version} is not supported: the file was written by a "
                            f"newer relp_lens; this one reads format versions 1–{VERSION} (upgrade relp_lens)")
    if not is_int(version, numpy=False) or version not in (1, VERSION):
        raise RelPLensError(f"circuit file version {show(version)} is not supported (this relp_lens reads "
                            f"versions 1–{VERSION})")
    check_finite(d)
    model = _check_model_field(d.get("model"))
    if not isinstance(d.get("basis"), str):
        raise RelPLensError(f"field 'basis' missing or not a string (got {show(d.get('basis'))})")
    hook_names = d.get("hook_names")
    if not isinstance(hook_names, list):
        raise RelPLensError(f"field 'hook_names' missing or not a list (got {show(hook_names)})")
    for i, h in enumerate(hook_names):
        need(isinstance(h, str) and h, f"hook_names[{i}]", "a hook name", h)
    if "node_width" not in d:
        raise RelPLensError("field 'node_width' missing")
    need(is_int(d["node_width"]) and d["node_width"] >= 1, "node_width", "a positive integer", d["node_width"])
    if not isinstance(d.get("nodes"), list):
        raise RelPLensError(f"field 'nodes' missing or not a list (got {show(d.get('nodes'))})")
    nodes = [_node(i, n) for i, n in enumerate(d["nodes"])]
    raw_edges = d.get("edges")
    need(raw_edges is None or isinstance(raw_edges, list), "edges", "a list or null", raw_edges)
    edges = [_edge(i, e) for i, e in enumerate(raw_edges or [])]
    for key in ("method", "metric"):
        need(isinstance(d.get(key, "?"), str), key, "a string", d.get(key))
    data = _optional_dict(d, "data")
    _check_fields(data, "data", _DATA)
    selection = _optional_dict(d, "selection")
    _check_fields(selection, "selection", _SELECTION)
    evaluation = d.get("evaluation")
    check_evaluation(evaluation)
    if version == 1:  # absolute positions; patch baseline for paired rows, zero otherwise; mean ablation
        rows = data.get("rows") or []
        baseline = "patch" if rows and "patch_prefix" in rows[0] else "zero"
        extra = dict(baseline=baseline, ablation="mean", positions=dict(rule="absolute", n_shared=0, labels={}))
    else:
        baseline, ablation = d.get("baseline", "patch"), d.get("ablation", "mean")
        need(isinstance(baseline, str) and baseline in BASELINES, "baseline", f"one of {list(BASELINES)}", baseline)
        need(isinstance(ablation, str), "ablation", f"one of {list(ABLATIONS)}", ablation)
        extra = dict(baseline=baseline, ablation=ablation, positions=_positions(_optional_dict(d, "positions")))
    io = d.get("io_edges")
    if io is not None:
        check_io_edges(io, len(nodes))
    heads = d.get("heads")
    if heads is not None:
        check_heads(heads)
    groups = d.get("groups")
    if groups is not None:
        check_groups(groups, {_label(n) for n in nodes})
    return dict(nodes=nodes, basis=d["basis"], hook_names=hook_names, node_width=d["node_width"], model=model,
                method=d.get("method", "?"), metric=d.get("metric", "?"), data=data, selection=selection,
                edges=edges, evaluation=evaluation, io_edges=io, heads=heads, groups=groups, **extra)
