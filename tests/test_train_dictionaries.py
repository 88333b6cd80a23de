"""benchmarks/train_dictionaries.py end to end on a tiny random Llama: sparsify trains both families (a few steps),
a rerun skips them, an interrupted run resumes to the weights of an uninterrupted one, relp_lens' loader reads
them back, and the evaluation's scores agree with sparsify's own on the Hugging Face model (these skipped where
eai-sparsify is not installed: CI's environments); the splice leaves the model unchanged with an exact
dictionary, and a missing sparsify is named with its install command (these run everywhere)."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from relp_lens import Dictionary, DictionarySet, RelPLensError, load_transcoders
from relp_lens.core import backends
from helpers import tiny_hf_llama, word_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import train_dictionaries as td  # noqa: E402

CTX, BATCH, STEPS = 12, 4, 6
SETTINGS = td.TrainSettings(expansion_factor=2, k=4, ctx=CTX, batch_size=BATCH, tokens=CTX * BATCH * STEPS, seed=0,
                            bos_id=0)
FAMILIES_TRANSCODE = {f: kw["transcode"] for f, kw in td.FAMILIES.items()}


def needs_sparsify():
    pytest.importorskip("sparsify", reason="eai-sparsify is not installed")
    pytest.importorskip("datasets", reason="datasets is not installed")


def rows(n, seed):
    """``[n, CTX]`` random token ids, BOS (0) first and nowhere else."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, int(tiny_hf_llama().config.vocab_size), (n, CTX), generator=g)
    ids[:, 0] = 0
    return ids


def models():
    """The tiny Llama as relp_lens reads it: a bridge, and a HookedTransformer where TransformerLens has it."""
    out = [backends.wrap_hf_model(tiny_hf_llama(), word_tokenizer(), "tiny-llama")]
    if backends.hooked_transformer_available():
        from test_backends import hooked_from_hf

        out.append(hooked_from_hf(tiny_hf_llama()))
    return out


def weights(folder):
    return {d.layer: (d.W_enc, d.b_enc, d.W_dec, d.b_dec, d.W_skip) for d in load_transcoders(folder)}


def sparsify_fvu(hf, folder, held, transcode):
    """FVU per layer computed by sparsify's own SparseCoder on the Hugging Face model's MLP input and output."""
    from sparsify import SparseCoder

    got, handles = {}, []
    for i, layer in enumerate(hf.model.layers):
        handles.append(layer.mlp.register_forward_hook(
            lambda m, a, o, i=i: got.__setitem__(i, (a[0].detach(), o.detach()))))
    try:
        with torch.no_grad():
            hf(held)
    finally:
        for h in handles:
            h.remove()
    keep = held != 0
    out = []
    for i in range(len(hf.model.layers)):
        sc = SparseCoder.load_from_disk(folder / f"layers.{i}.mlp")
        x, y = got[i][0][keep], got[i][1][keep]
        with torch.no_grad():
            out.append(float(sc(x if transcode else y, y).fvu))
    return out


def test_train_then_evaluate_both_families_on_a_tiny_llama(tmp_path):
    needs_sparsify()
    hf = tiny_hf_llama()
    train, held = rows(40, seed=1), rows(6, seed=2)
    for family in td.FAMILIES:
        folder = tmp_path / family
        done = td.train_family(hf, train, folder, family, SETTINGS, save_every=2)
        assert done["status"] == "trained" and done["steps"] == STEPS and done["tokens"] == STEPS * BATCH * CTX
        assert not list(folder.glob("optimizer_*.pt"))  # deleted once finished
        saved = load_file(str(folder / "layers.0.mlp" / "sae.safetensors"))
        assert {t.dtype for t in saved.values()} == {torch.float32}  # bfloat16 only inside the forward
        dicts = load_transcoders(folder)
        assert dicts.layers == [0, 1, 2]
        d = dicts[1]
        want = ("skip_transcoder", "blocks.1.ln2.hook_normalized") if family == "skip_transcoder" \
            else ("sae", "blocks.1.hook_mlp_out")
        assert (d.kind, d.hook_in, d.hook_out, d.d_sae, d.k) == (*want, "blocks.1.hook_mlp_out", 64, 4)
        before = weights(folder)
        assert td.train_family(None, train, folder, family, SETTINGS)["status"] == "skipped"  # no model needed
        assert all(torch.equal(a, b) for k in before for a, b in zip(before[k], weights(folder)[k])
                   if a is not None)
        with pytest.raises(RelPLensError, match="other settings"):
            td.train_family(hf, train, folder, family, dataclasses.replace(SETTINGS, k=3))
        theirs = sparsify_fvu(tiny_hf_llama(), folder, held, FAMILIES_TRANSCODE[family])  # hf is bfloat16 now
        for model in models():
            ev = td.evaluate_family(model, folder, held, held[:4], bos_id=0, batch_size=4)
            assert ev["tokens"] == held.numel() - len(held) and ev["splice_tokens"] == 4 * (CTX - 1)
            assert [r["layer"] for r in ev["per_layer"]] == [0, 1, 2]
            for r, fvu in zip(ev["per_layer"], theirs):
                assert r["fvu"] == pytest.approx(fvu, rel=1e-4, abs=1e-6)
                assert 0 < r["l0"] <= 4 and 0 <= r["dead_pct"] <= 100 and r["kl"] >= -1e-9
                assert 0 < r["nmse_median"] and 0 < r["top_share"] <= 1
            assert ev["all_layers"]["kl"] > 0
            assert "FVU" in td.summary_line(family, ev)


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path):
    needs_sparsify()
    train = rows(40, seed=1)
    whole = tmp_path / "whole" / "skip_transcoder"
    td.train_family(tiny_hf_llama(), train, whole, "skip_transcoder", SETTINGS, save_every=2)
    hf = tiny_hf_llama()
    calls = []

    def stop(module, args):  # call 1: sparsify's width probe; then one call per batch
        calls.append(1)
        if len(calls) == 6:
            raise _Interrupt

    handle = hf.model.register_forward_pre_hook(stop)
    cut = tmp_path / "cut" / "skip_transcoder"
    with pytest.raises(_Interrupt):
        td.train_family(hf, train, cut, "skip_transcoder", SETTINGS, save_every=2)
    handle.remove()
    assert (cut / "state.pt").is_file() and not td._read_marker(cut)["finished"]
    assert td.train_family(hf, train, cut, "skip_transcoder", SETTINGS, save_every=2)["status"] == "resumed"
    a, b = weights(whole), weights(cut)
    for layer in a:
        for x, y in zip(a[layer], b[layer]):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_the_splice_of_an_exact_dictionary_changes_nothing():
    model = models()[-1]
    d_model = model.cfg.d_model
    eye = torch.eye(d_model)

    def sae(layer, scale):  # relu(x) − relu(−x) = x: exact with all 2·d_model latents kept
        return Dictionary(kind="sae", activation="topk", W_enc=torch.cat([eye, -eye], 1),
                          b_enc=torch.zeros(2 * d_model), W_dec=scale * torch.cat([eye, -eye], 0),
                          b_dec=torch.zeros(d_model), hook_in=f"blocks.{layer}.hook_mlp_out",
                          hook_out=f"blocks.{layer}.hook_mlp_out", k=2 * d_model, layer=layer)

    held = rows(4, seed=3)
    sets = [[0], [2], [0, 1, 2]]
    exact = td.spliced_losses(model, DictionarySet(tuple(sae(i, 1.0) for i in range(3))), held, 0, sets)
    for s in exact["sets"]:
        assert abs(s["delta_ce"]) < 1e-5 and abs(s["kl"]) < 1e-6
    zeroed = td.spliced_losses(model, DictionarySet(tuple(sae(i, 0.0) for i in range(3))), held, 0, sets)
    assert all(s["kl"] > 1e-3 for s in zeroed["sets"])
    assert zeroed["clean_ce"] == pytest.approx(exact["clean_ce"])


def test_a_missing_sparsify_is_named_with_its_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sparsify", None)  # import sparsify raises ImportError
    with pytest.raises(RelPLensError, match="pip install eai-sparsify"):
        td.train_family(tiny_hf_llama(), rows(8, seed=1), tmp_path / "sae_mlp_out", "sae_mlp_out", SETTINGS)
    assert not (tmp_path / "sae_mlp_out").exists()
