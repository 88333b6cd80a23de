"""Atomic writes: whole files or nothing, UTF-8, ordinary permissions."""

import os

import pytest

from relp_lens.core.files import write_json_atomic, write_text_atomic


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
