"""Files: inputs read with one set of refusals, outputs written atomically.

1. :func:`read_input` reads an input file's bytes, or refuses — as a ``RelPLensError`` naming what the file is
   for — a folder, a missing file, an unreadable one and a path no file can have (a NUL byte).
2. :func:`write_text_atomic` / :func:`write_json_atomic` write a temp file beside the target, then rename it:
   never a partial file.
3. :func:`cache_dir` is relp_lens's cache folder (``$RELP_LENS_CACHE``, by default ``~/.cache/relp_lens``): the one
   place it is named.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from relp_lens.core.errors import RelPLensError


def cache_dir() -> Path:
    """relp_lens's cache folder: converted models, tokenizers, context indexes live in subfolders of it.

    1. Reads ``$RELP_LENS_CACHE``; unset or empty, falls back to ``~/.cache/relp_lens``.

    Returns:
        The folder's path (not created here).
    """
    return Path(os.environ.get("RELP_LENS_CACHE") or Path.home() / ".cache" / "relp_lens")


def read_input(path: str | Path, what: str) -> bytes:
    """The bytes of the input file ``path``; nothing is ever written to it.

    Args:
        path: the file.
        what: what the file is for, used in messages (``"data file"``, ``"circuit file"``).

    Returns:
        Its contents; a :class:`~relp_lens.core.errors.RelPLensError` for a folder, a missing file, an
        unreadable one or an impossible path, chained to the ``OSError``/``ValueError`` behind it.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise RelPLensError(f"{what} {path} is a folder; give a file")
        return path.read_bytes()
    except FileNotFoundError as e:
        raise RelPLensError(f"{what} not found: {path}") from e
    except (OSError, ValueError) as e:  # RelPLensError is a ValueError: it passes through unchanged
        if isinstance(e, RelPLensError):
            raise
        raise RelPLensError(f"{what} {path} cannot be read ({type(e).__name__}: {e})") from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path``; the file gets the usual permissions (0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any, *, allow_nan: bool = False) -> Path:
    """Serialise first (a serialisation error leaves no file), then write atomically.

    Args:
        path: the file to write (folders are made).
        obj: a JSON-serialisable value.
        allow_nan: write NaN and ±inf as Python's ``NaN``/``Infinity`` tokens (not JSON: browsers and most
            parsers refuse them). Default: a ``ValueError`` before anything is written.

    Returns:
        ``path``.
    """
    return write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=allow_nan) + "\n")
