"""mkdocs hook: a docstring entry that documents several parameters at once does not fail ``--strict``.

Some docstrings document parameters that share a meaning in one ``Args:`` entry, ``a, b, c: as above``.
mkdocstrings' Google parser (griffe) reads that as one parameter named ``"a, b, c"`` and warns that it is not
in the signature. The entry renders as it reads, so this hook drops exactly that warning — a quoted name
holding ``", "`` — and nothing else: a misspelt or removed parameter documented on its own line still fails
the strict build. (Missing type annotations are not warned about at all: ``warn_missing_types: false`` in
mkdocs.yml.)
"""

from __future__ import annotations

import logging
import re

GROUPED = re.compile(r"griffe: \S+:\d+: Parameter '[^']*, [^']*' does not appear in the function signature")


class _Grouped(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not GROUPED.match(record.getMessage())


def on_config(config):
    logger = logging.getLogger("mkdocs.plugins.griffe")  # where mkdocstrings-python sends griffe's warnings
    if not any(type(f).__name__ == "_Grouped" for f in logger.filters):
        logger.addFilter(_Grouped())
    return config
