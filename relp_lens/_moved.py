"""The flat layout's module paths (``relp_lens.attribution``, …) kept working after the move into stage
subpackages, and so do modules renamed inside a stage (``relp_lens.circuits.graph_io``): one table
(``relp_lens.MOVED``: old path relative to the package → new one) and an import hook, no copies of any module.

1. :func:`install` puts a finder on ``sys.meta_path`` that answers only for ``relp_lens.<old path>`` (an old
   path may be dotted: ``circuits.graph_io``); it comes after the ordinary finders, so it only answers for a
   module that no longer exists.
2. Its loader imports the module from its new place (``relp_lens.core.attribution``) and puts that same module
   object in ``sys.modules`` under the old name, which importlib then returns: ``import relp_lens.attribution``
   and ``from relp_lens.attribution import attribute`` work, monkeypatching either path patches the one module,
   and the module's own ``__name__`` and ``__spec__`` stay the new ones (``importlib.reload`` works).
3. Every such use warns once per old name (``DeprecationWarning``), naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_package = "relp_lens"
_table: dict[str, str] = {}


def old_module(name: str):
    """The module once called ``relp_lens.<name>``, from its new place, with a ``DeprecationWarning``.

    Args:
        name: the old path relative to the package (``"attribution"``, ``"circuits.graph_io"``).

    Returns:
        The module at its new place.
    """
    new = f"{_package}.{_table[name]}"
    warnings.warn(f"{_package}.{name} moved to {new}" + (" (agreement_rows is there)" if name == "agreement" else ""),
                  DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


class _Loader(importlib.abc.Loader):
    def __init__(self, name: str) -> None:
        self.name = name

    def create_module(self, spec):
        return None  # a throwaway module: importlib would set its attributes (__spec__ …) on what we return

    def exec_module(self, module) -> None:  # importlib returns whatever sys.modules holds after this
        sys.modules[module.__name__] = old_module(self.name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        prefix = f"{_package}."
        name = fullname[len(prefix):] if fullname.startswith(prefix) else None
        if name not in _table:
            return None
        return importlib.util.spec_from_loader(fullname, _Loader(name))


def install(package: str, table: dict[str, str]) -> None:
    """Answer imports of the old paths of ``package``.

    Args:
        package: the package (``"relp_lens"``).
        table: old path → new path, both relative to the package.

    Returns:
        None; the finder is installed once.
    """
    global _package
    _package = package
    _table.update(table)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
