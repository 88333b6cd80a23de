"""Option checks shared by the Python API and the command line: one rule and one message per option kind.

1. The checkers (:func:`positive_int`, :func:`nonneg_int`, :func:`int_at_least`, :func:`finite_float`, :func:`fraction`,
   :func:`int_list`, :func:`float_list`) take a value and the option's name and return the value
   normalised (``int``/``float``), or raise :class:`~relp_lens.core.errors.RelPLensError` naming the option,
   what it must be and what was given. ``True``/``False`` are not integers here, ``2.0`` is not an integer,
   NaN and ±inf are never accepted. :func:`is_int`, :func:`show` and :func:`need` are the same test, the same
   short value and the same ``"<name> must be <what>, got <value>"`` wording for the rest of the package (the
   circuit-file checks of :mod:`relp_lens.circuits.schema`, prompt rows, positions).
2. :func:`arg` turns a checker into an ``argparse`` ``type=``: the command line parses the text, then runs the
   same checker, so ``relp-lens trace --k -3`` fails with exit status 2 before anything is loaded, with the same
   words as ``select_top_k(attr, model, k=-3)``.

Importing this module loads neither torch nor transformer_lens (the CLI builds its parser with it).
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from relp_lens.core.errors import RelPLensError


def show(value: Any, limit: int = 60, *, length: bool = False) -> str:
    """``repr(value)`` cut short for a message (a huge value must not make a huge message).

    Args:
        value: what to show.
        limit: the most characters kept (with ``length=False`` the cut text ends in ``...`` within the limit).
        length: when cut, keep ``limit`` characters and add ``… (N characters)``, the full text's length.

    Returns:
        The text.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text):,} characters)" if length else text[: limit - 3] + "..."


def is_int(value: Any, *, numpy: bool = True) -> bool:
    """Whether ``value`` is an integer: an ``int`` (numpy integers too), but not a bool.

    Args:
        value: what to test.
        numpy: also accept numpy's (and other :class:`numbers.Integral`) integers; ``False``: a Python ``int``
            only (values parsed from JSON are never numpy, so either serves there).

    Returns:
        True for an integer, False otherwise (``True``/``False``, ``2.0``, ``"2"`` included).
    """
    return isinstance(value, numbers.Integral if numpy else int) and not isinstance(value, bool)


def need(ok: Any, name: str, what: str, value: Any) -> None:
    """Raise ``"<name> must be <what>, got <value>"`` unless ``ok`` (the one wording of every check here).

    Args:
        ok: the outcome of the check (truthy: fine).
        name: the option's or field's name (``"k"``, ``"selection.k"``).
        what: what it must be (``"a positive integer"``).
        value: what was given, shown by :func:`show`.

    Returns:
        None; raises :class:`~relp_lens.core.errors.RelPLensError` when ``ok`` is falsy.
    """
    if not ok:
        raise RelPLensError(f"{name} must be {what}, got {show(value)}")


def int_at_least(value: Any, name: str, low: int) -> int:
    """``value`` as an ``int`` ≥ ``low`` (not a bool, not a float).

    Args:
        value: what the caller gave.
        name: the option's name, used in the message (``"k"``, ``"--group-prompts"``).
        low: the least value allowed.

    Returns:
        ``int(value)``.
    """
    if not is_int(value) or int(value) < low:
        what = {1: "a positive integer", 0: "a non-negative integer"}.get(low, f"an integer ≥ {low}")
        raise RelPLensError(f"{name} must be {what}, got {show(value)}")
    return int(value)


def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` ≥ 1 (not a bool, not a float).

    Args:
        value: what the caller gave.
        name: the option's name, used in the message.

    Returns:
        ``int(value)``.
    """
    return int_at_least(value, name, 1)


def nonneg_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` ≥ 0 (not a bool, not a float).

    Args:
        value: what the caller gave.
        name: the option's name, used in the message.

    Returns:
        ``int(value)``.
    """
    return int_at_least(value, name, 0)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"a finite number {'>' if low_open else '≥'} {low:g}"
    if low is None:
        return f"a finite number {'<' if high_open else '≤'} {high:g}"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def finite_float(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float``, optionally inside ``[low, high]`` (ends open where asked).

    Args:
        value: what the caller gave (an int or a float; not a bool or a string).
        name: the option's name, used in the message.
        low: the lower bound (``None``: unbounded below).
        high: the upper bound (``None``: unbounded above).
        low_open: exclude the lower bound itself.
        high_open: exclude the upper bound itself.

    Returns:
        ``float(value)``.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok and getattr(value, "ndim", None) == 0:  # a 0-dim tensor or numpy scalar
        try:
            value, ok = float(value), True
        except (TypeError, ValueError):
            ok = False
    try:
        x = float(value) if ok else math.nan
    except OverflowError:  # an integer beyond the float range
        x = math.inf
    if ok and math.isfinite(x):
        ok = ((low is None or (x > low if low_open else x >= low))
              and (high is None or (x < high if high_open else x <= high)))
    else:
        ok = False
    if not ok:
        raise RelPLensError(f"{name} must be {_range_text(low, high, low_open, high_open)}, got {show(value)}")
    return x


def fraction(value: Any, name: str) -> float:
    """A fraction in ``(0, 1]`` (a share of nodes, edges or influence to keep).

    Args:
        value: what the caller gave.
        name: the option's name, used in the message.

    Returns:
        ``float(value)``.
    """
    return finite_float(value, name, low=0.0, high=1.0, low_open=True)


def int_list(values: Any, name: str, *, minimum: int = 1) -> list[int]:
    """A non-empty sequence of integers ≥ ``minimum`` (sizes of a sweep).

    Args:
        values: a sequence of integers.
        name: the option's name, used in the message.
        minimum: the least value allowed (1: positive, 0: non-negative).

    Returns:
        The values as a list of ``int``.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise RelPLensError(f"{name} must be a non-empty list of integers, got {show(values)}")
    return [int_at_least(v, f"each of {name}", minimum) for v in values]


def float_list(values: Any, name: str, **bounds: Any) -> list[float]:
    """A non-empty sequence of finite numbers, each inside ``bounds`` (as :func:`finite_float`).

    Args:
        values: a list or tuple of numbers (a single number or a string is refused, not iterated).
        name: the option's name, used in the message.
        **bounds: ``low``, ``high``, ``low_open``, ``high_open`` for every item.

    Returns:
        The values as a list of ``float``.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise RelPLensError(f"{name} must be a non-empty list of numbers, got {show(values)}")
    return [finite_float(v, f"each of {name}", **bounds) for v in values]


# -- the command line ------------------------------------------------------------------------------------------
def _parse_number(text: str, kind: type) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        return text  # the checker names it: "must be a positive integer, got 'x'"


def arg(check: Callable[..., Any], kind: type = int, **bounds: Any) -> Callable[[str], Any]:
    """An ``argparse`` ``type=`` that parses the text as ``kind`` and applies ``check`` to it.

    Args:
        check: one of this module's checkers for a single value.
        kind: ``int`` or ``float`` (the text is parsed with it; ``"nan"`` parses as a float and is refused).
        **bounds: passed to ``check`` (e.g. ``low=0.0`` for :func:`finite_float`).

    Returns:
        A function of one string: the checked value, or ``argparse.ArgumentTypeError`` with the checker's words.
    """
    def parse(text: str) -> Any:
        try:
            return check(_parse_number(text, kind), "value", **bounds)
        except RelPLensError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None

    parse.__name__ = getattr(check, "__name__", "value")  # argparse names it in "invalid ... value"
    return parse


def arg_list(check: Callable[..., Any], kind: type = int) -> Callable[[str], list]:
    """An ``argparse`` ``type=`` for a comma-separated list (``10,30,100``), each item checked by ``check``.

    Args:
        check: a single-value checker (:func:`positive_int`, :func:`fraction`, ...).
        kind: ``int`` or ``float``.

    Returns:
        A function of one string giving the list of checked values.
    """
    def parse(text: str) -> list:
        items = [t for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list, got {text!r}")
        try:
            return [check(_parse_number(t, kind), "value") for t in items]
        except RelPLensError as e:
            raise argparse.ArgumentTypeError("each item " + str(e).removeprefix("value ")) from None

    parse.__name__ = "list"
    return parse


# -- devices ---------------------------------------------------------------------------------------------------
def device(value: Any, name: str = "device") -> Any:
    """``value`` as a ``torch.device`` this machine has, checked before any weight moves (torch's own
    errors for a missing GPU are an ``AssertionError`` or a ``RuntimeError`` deep inside ``.to()``).

    Args:
        value: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ... or a ``torch.device``.
        name: the option's name, used in the message.

    Returns:
        The ``torch.device``.
    """
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError) as e:
        raise RelPLensError(f"{name} must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {show(value)}") from e
    if dev.type in ("cpu", "meta"):
        return dev
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else getattr(torch.backends, "mps", None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise RelPLensError(f"{name} {show(value)}: this machine has no {dev.type} device "
                            f"(torch.{dev.type}.is_available() is False)")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise RelPLensError(f"{name} {show(value)}: this machine has {count()} {dev.type} device(s), "
                            f"numbered from 0")
    return dev
