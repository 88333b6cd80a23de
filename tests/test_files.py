"""Atomic writes: whole files or nothing, UTF-8, ordinary permissions."""

import os
from pathlib import Path

import pytest

from relp_lens.core.files import cache_dir, write_json_atomic, write_text_atomic


def test_write_is_utf8_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "sub" / "a.txt", "∇̃m · Δa – agreement\n")
    finally:
        os.umask(old)
    assert path.read_bytes().decode("utf-8") == "∇̃m · Δa – agreement\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path / "sub") == ["a.txt"]


def test_failed_serialisation_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_is_one_folder_for_models_and_context_indexes(monkeypatch, tmp_path):
    """``$RELP_LENS_CACHE`` (or ``~/.cache/relp_lens`` when unset or empty) is named once, in core.files."""
    from relp_lens.analysis import corpus

    monkeypatch.setenv("RELP_LENS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert corpus.cache_dir() == tmp_path / "contexts"
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("RELP_LENS_CACHE")
        else:
            monkeypatch.setenv("RELP_LENS_CACHE", unset)
        assert cache_dir() == Path.home() / ".cache" / "relp_lens"
