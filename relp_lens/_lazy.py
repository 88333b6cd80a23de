"""Lazy submodules for the stage subpackages (PEP 562): ``relp_lens.core.attribution`` is reachable as an
attribute after ``import relp_lens.core`` without importing every module of the stage up front."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from types import ModuleType


def lazy_submodules(package: str, names: Iterable[str]) -> tuple[Callable[[str], ModuleType], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for ``package`` whose submodules ``names`` import on first access."""
    names = frozenset(names)

    def __getattr__(name: str) -> ModuleType:
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list:
        return sorted(names)

    return __getattr__, __dir__
