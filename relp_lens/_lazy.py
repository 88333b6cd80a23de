"""Lazy submodules for the stage subpackages (PEP 562): ``relp_lens.core.attribution`` is reachable as an
attribute after ``import relp_lens.core`` without importing every module of the stage up front."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType


def lazy_submodules(package: str, names: Iterable[str], moved: Mapping[str, str] | None = None
                    ) -> tuple[Callable[[str], ModuleType], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for a package whose submodules import on first access.

    Args:
        package: the package's name (``"relp_lens.circuits"``).
        names: its submodules.
        moved: former submodule names and the submodule each became (``{"graph_io": "io_edges"}``): the old
            attribute gives the new module, with a ``DeprecationWarning`` (``import package.old`` itself is
            answered by :mod:`relp_lens._moved`).

    Returns:
        The module's ``__getattr__`` and ``__dir__``.
    """
    names = frozenset(names)
    moved = dict(moved or {})

    def __getattr__(name: str) -> ModuleType:
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        if name in moved:
            warnings.warn(f"{package}.{name} moved to {package}.{moved[name]}", DeprecationWarning, stacklevel=2)
            return importlib.import_module(f"{package}.{moved[name]}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list:
        return sorted(names)

    return __getattr__, __dir__
