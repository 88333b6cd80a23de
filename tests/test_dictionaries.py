"""Dictionaries (SAEs, transcoders): each reader on tiny files written here in its format, against hand formulas
written from the file's own layout (numpy, float64; never the reader's code path); refusals; fuzzed configs and
shapes (a RelPLensError naming the file, never another exception); checks against tiny models on both
backends; and, where the libraries are installed, against SAELens' ``SAE.load_from_disk`` and files sparsify's
own ``Trainer`` wrote."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.torch import save_file

import relp_lens
from relp_lens import Dictionary, DictionarySet, RelPLensError, load_sae, load_transcoders
from relp_lens.core import backends
from tests.helpers import tiny_gemma, tiny_hf_llama, tiny_llama, tiny_llama_on

D_IN, D_SAE, D_OUT = 6, 10, 5


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def np64(t):
    return t.double().numpy()


def topk_mask(p, k):
    """1 at the k largest entries of each row (numpy argsort: independent of torch.topk)."""
    mask = np.zeros_like(p)
    idx = np.argsort(-p, axis=-1)[..., :k]
    np.put_along_axis(mask, idx, 1.0, axis=-1)
    return mask


# --- SAELens ------------------------------------------------------------------------------------------------
SAELENS_ARCHS = {  # architecture → (transcoder?, skip?, activation)
    "standard": (False, False, "relu"), "topk": (False, False, "topk"), "jumprelu": (False, False, "jumprelu"),
    "transcoder": (True, False, "relu"), "skip_transcoder": (True, True, "relu"),
    "jumprelu_transcoder": (True, False, "jumprelu"), "jumprelu_skip_transcoder": (True, True, "jumprelu"),
    "gated": (False, False, "gated"),
}


def saelens_files(folder, arch="standard", *, seed=0, cfg_extra=None, meta_extra=None, tensors_extra=None,
                  apply_b_dec=None, log_threshold=False, hook="blocks.1.hook_resid_mid"):
    """Write an SAELens folder; returns its tensors in the file's layout."""
    transcoder, skip, act = SAELENS_ARCHS[arch]
    d_out = D_OUT if transcoder else D_IN
    t = {"W_enc": rand(D_IN, D_SAE, seed=seed), "b_enc": 0.3 * rand(D_SAE, seed=seed + 1),
         "W_dec": rand(D_SAE, d_out, seed=seed + 2), "b_dec": 0.5 * rand(d_out, seed=seed + 3)}
    if act == "jumprelu":
        thr = rand(D_SAE, seed=seed + 4).abs() * 0.5
        thr[0] = -5.0  # SAELens applies a ReLU before the threshold: a negative threshold acts as 0
        if log_threshold:
            thr = thr.clamp_min(1e-3)
        t["log_threshold" if log_threshold else "threshold"] = thr.log() if log_threshold else thr
    if skip:
        t["W_skip"] = rand(d_out, D_IN, seed=seed + 5)
    if act == "gated":  # SAELens' GatedSAE has no b_enc: b_gate, and the magnitude path's r_mag, b_mag
        t["b_gate"] = t.pop("b_enc")
        t["r_mag"], t["b_mag"] = 0.5 * rand(D_SAE, seed=seed + 6), 0.3 * rand(D_SAE, seed=seed + 7)
    t.update(tensors_extra or {})
    meta = {"sae_lens_version": "6.54.12", "hook_name": hook}
    if transcoder:
        meta["hook_name_out"] = "blocks.1.hook_mlp_out"
    meta.update(meta_extra or {})
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": (not transcoder) if apply_b_dec is None else apply_b_dec,
           "normalize_activations": "none", "reshape_activations": "none", "metadata": meta, "architecture": arch}
    if transcoder:
        cfg["d_out"] = d_out
    if act == "topk":
        cfg["k"] = 3
    cfg.update(cfg_extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in t.items()}, str(folder / "sae_weights.safetensors"))
    return cfg, t


def saelens_hand(cfg, t, x):
    """SAELens' maps written out from its file layout: (latents, reconstruction), float64."""
    x = np64(x)
    W_enc, W_dec, b_dec = (np64(t[k]) for k in ("W_enc", "W_dec", "b_dec"))
    b_enc = np64(t["b_gate" if cfg["architecture"] == "gated" else "b_enc"])
    scale = cfg.get("_scale", 1.0)
    xin = x * scale - (b_dec if cfg["apply_b_dec_to_input"] else 0.0)
    p = xin @ W_enc + b_enc
    arch = cfg["architecture"]
    if cfg.get("rescale_acts_by_decoder_norm"):
        p = p * np.linalg.norm(W_dec, axis=-1)
    if "jumprelu" in arch:
        thr = np.exp(np64(t["log_threshold"])) if "log_threshold" in t else np64(t["threshold"])
        f = np.maximum(p, 0) * (p > thr)
    elif arch == "topk":
        f = np.maximum(p, 0) * topk_mask(p, cfg["k"])
    elif arch == "gated":  # the gate selects, the magnitude path (W_enc·exp(r_mag), b_mag) sets the value
        f = (p > 0) * np.maximum(xin @ (W_enc * np.exp(np64(t["r_mag"]))) + np64(t["b_mag"]), 0)
    else:
        f = np.maximum(p, 0)
    fd = f / np.linalg.norm(W_dec, axis=-1) if cfg.get("rescale_acts_by_decoder_norm") else f
    out = fd @ W_dec + b_dec
    if "W_skip" in t:
        out = out + x @ np64(t["W_skip"]).T
    return f, out / scale


@pytest.mark.parametrize("arch", sorted(SAELENS_ARCHS))
def test_load_sae_matches_the_hand_formula(tmp_path, arch):
    cfg, t = saelens_files(tmp_path / arch, arch)
    d = load_sae(tmp_path / arch)
    transcoder, skip, act = SAELENS_ARCHS[arch]
    assert (d.kind, d.activation) == (("skip_transcoder" if skip else "transcoder" if transcoder else "sae"), act)
    assert (d.d_in, d.d_sae, d.d_out) == (D_IN, D_SAE, D_OUT if transcoder else D_IN)
    assert d.hook_in == "blocks.1.hook_resid_mid" and d.layer == 1
    assert d.hook_out == ("blocks.1.hook_mlp_out" if transcoder else d.hook_in)
    assert d.source.format == "saelens" and d.source.path == str(tmp_path / arch)
    x = rand(4, 3, D_IN, seed=9)
    f, out = saelens_hand(cfg, t, x)
    assert (f > 0).any() and (f == 0).any()  # the activation does something on these inputs
    np.testing.assert_allclose(d.encode(x).double().numpy(), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.forward(x).double().numpy(), out, rtol=1e-5, atol=1e-5)


def test_load_sae_folds_topk_decoder_norm_rescaling_and_log_thresholds(tmp_path):
    cfg, t = saelens_files(tmp_path / "a", "topk", cfg_extra={"rescale_acts_by_decoder_norm": True})
    x = rand(5, D_IN, seed=3)
    f, out = saelens_hand(cfg, t, x)
    d = load_sae(tmp_path / "a")
    np.testing.assert_allclose(d.encode(x).double().numpy(), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.forward(x).double().numpy(), out, rtol=1e-5, atol=1e-5)
    cfg, t = saelens_files(tmp_path / "b", "jumprelu", log_threshold=True)
    d = load_sae(tmp_path / "b")
    np.testing.assert_allclose(d.encode(x).double().numpy(), saelens_hand(cfg, t, x)[0], rtol=1e-5, atol=1e-5)


def test_load_sae_applies_a_saved_scaling_factor_or_refuses(tmp_path):
    folder = tmp_path / "s"
    cfg, t = saelens_files(folder, cfg_extra={"normalize_activations": "expected_average_only_in"})
    with pytest.raises(RelPLensError, match=r"cfg\.json.*normalize_activations.*scaling_factor="):
        load_sae(folder)
    x = rand(5, D_IN, seed=4)
    f, out = saelens_hand({**cfg, "_scale": 2.5}, t, x)
    np.testing.assert_allclose(load_sae(folder, scaling_factor=2.5).forward(x).double().numpy(), out, rtol=1e-5,
                               atol=1e-5)
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 2.5, "has_whitening": False}))
    d = load_sae(folder)
    np.testing.assert_allclose(d.encode(x).double().numpy(), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.forward(x).double().numpy(), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(RelPLensError, match="positive number"):
        load_sae(folder, scaling_factor=-1.0)


@pytest.mark.parametrize("change, match", [
    ({"cfg_extra": {"architecture": "matryoshka"}}, "'architecture' is 'matryoshka'; supported"),
    ({"cfg_extra": {"normalize_activations": "layer_norm"}}, "'normalize_activations' is 'layer_norm'"),
    ({"cfg_extra": {"reshape_activations": "hook_z"}}, "hook_z"),
    ({"meta_extra": {"hook_head_index": 2}}, "metadata.hook_head_index"),
    ({"meta_extra": {"hook_name": None}}, "missing key 'metadata.hook_name'"),
    ({"cfg_extra": {"d_sae": 11}}, "'W_enc' has shape \\(6, 10\\), expected \\(6, 11\\)"),
    ({"cfg_extra": {"d_in": "6"}}, "key 'd_in' must be an integer >= 1, got '6'"),
    ({"cfg_extra": {"apply_b_dec_to_input": 1}}, "'apply_b_dec_to_input' must be true or false"),
    ({"tensors_extra": {"b_mag": torch.zeros(D_SAE)}}, "unexpected tensors \\['b_mag'\\]"),
    ({"tensors_extra": {"scaling_factor": 2 * torch.ones(D_SAE)}}, "'scaling_factor' is not all ones"),
])
def test_load_sae_refuses_what_it_cannot_read_exactly(tmp_path, change, match):
    saelens_files(tmp_path, **change)
    with pytest.raises(RelPLensError, match=match) as e:
        load_sae(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_load_sae_reads_pre_6_topk_configs(tmp_path):
    cfg, t = saelens_files(tmp_path, "topk")
    old = {k: v for k, v in cfg.items() if k not in ("architecture", "k", "metadata")}
    old.update(hook_point="blocks.1.hook_resid_mid", activation_fn="topk", activation_fn_kwargs={"k": 3})
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    d = load_sae(tmp_path)
    assert (d.activation, d.k, d.hook_in) == ("topk", 3, "blocks.1.hook_resid_mid")
    x = rand(4, D_IN, seed=8)
    np.testing.assert_allclose(d.forward(x).double().numpy(), saelens_hand(cfg, t, x)[1], rtol=1e-5, atol=1e-5)
    (tmp_path / "cfg.json").write_text(json.dumps({**old, "activation_fn": "gelu"}))
    with pytest.raises(RelPLensError, match="'activation_fn' is 'gelu'"):
        load_sae(tmp_path)


def test_load_sae_hooks_from_the_caller_only_where_the_file_is_silent(tmp_path):
    saelens_files(tmp_path / "t", "transcoder", meta_extra={"hook_name_out": None})
    with pytest.raises(RelPLensError, match="missing key 'metadata.hook_name_out'.*hook_out="):
        load_sae(tmp_path / "t")
    assert load_sae(tmp_path / "t", hook_out="blocks.1.hook_mlp_out").hook_out == "blocks.1.hook_mlp_out"
    with pytest.raises(RelPLensError, match="says 'blocks.1.hook_resid_mid' but 'blocks.0.hook_resid_mid'"):
        load_sae(tmp_path / "t", hook_in="blocks.0.hook_resid_mid", hook_out="blocks.1.hook_mlp_out")
    saelens_files(tmp_path / "x", "transcoder", apply_b_dec=True)
    with pytest.raises(RelPLensError, match="apply_b_dec_to_input' is true for a transcoder"):
        load_sae(tmp_path / "x")


def test_load_sae_refuses_missing_and_broken_files(tmp_path):
    with pytest.raises(RelPLensError, match="not found"):
        load_sae(tmp_path / "nope")
    with pytest.raises(RelPLensError, match="load_sae takes a folder or an sae_lens.SAE"):
        load_sae(42)
    saelens_files(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(RelPLensError, match="not a readable safetensors file"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{")
    with pytest.raises(RelPLensError, match="cfg.json: not valid JSON"):
        load_sae(tmp_path)


# --- sparsify -----------------------------------------------------------------------------------------------
def sparsify_files(folder, *, transcode=True, skip=True, k=3, seed=0, cfg_extra=None, tensors_extra=None,
                   d_in=D_IN):
    d_out = d_in  # sparsify: the output has the input's width
    t = {"encoder.weight": rand(D_SAE, d_in, seed=seed), "encoder.bias": 0.3 * rand(D_SAE, seed=seed + 1),
         "W_dec": rand(D_SAE, d_out, seed=seed + 2), "b_dec": 0.5 * rand(d_out, seed=seed + 3)}
    if skip:
        t["W_skip"] = rand(d_out, d_in, seed=seed + 4)
    t.update(tensors_extra or {})
    cfg = {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": D_SAE, "k": k,
           "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": d_in}
    cfg.update(cfg_extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k_: v.contiguous() for k_, v in t.items()}, str(folder / "sae.safetensors"))
    return cfg, t


def sparsify_hand(cfg, t, x):
    x = np64(x)
    E, b, W_dec, b_dec = (np64(t[k]) for k in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"))
    xin = x if cfg["transcode"] else x - b_dec
    p = np.maximum(xin @ E.T + b, 0)
    f = p * topk_mask(p, cfg["k"])
    out = f @ W_dec + b_dec
    if cfg["skip_connection"]:
        out = out + x @ np64(t["W_skip"]).T
    return f, out


def test_load_transcoders_reads_a_sparsify_run(tmp_path):
    c0, t0 = sparsify_files(tmp_path / "layers.0.mlp", seed=0)
    c2, t2 = sparsify_files(tmp_path / "layers.2.mlp", seed=10, skip=False)
    (tmp_path / "optimizer.pt").write_bytes(b"")  # other files of a run are ignored
    s = load_transcoders(tmp_path)
    assert isinstance(s, DictionarySet) and s.layers == [0, 2] and len(s) == 2
    assert [d.kind for d in s] == ["skip_transcoder", "transcoder"]
    d = s[0]
    assert (d.hook_in, d.hook_out) == ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    assert (d.input_site, d.output_site) == ("mlp_input", "mlp_output")
    assert d.source.detail == "layers.0.mlp" and d.source.format == "sparsify"
    x = rand(2, 4, D_IN, seed=7)
    for layer, cfg, t in ((0, c0, t0), (2, c2, t2)):
        f, out = sparsify_hand(cfg, t, x)
        np.testing.assert_allclose(s[layer].encode(x).double().numpy(), f, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s[layer].forward(x).double().numpy(), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(RelPLensError, match="no dictionary for layer 1"):
        s[1]


def test_sparsify_saes_and_block_hookpoints(tmp_path):
    cfg, t = sparsify_files(tmp_path / "run" / "layers.1", transcode=False, skip=False)
    d = load_transcoders(tmp_path / "run")[1]
    assert (d.kind, d.hook_in, d.hook_out, d.apply_b_dec_to_input) == \
        ("sae", "blocks.1.hook_resid_post", "blocks.1.hook_resid_post", True)
    x = rand(3, D_IN, seed=2)
    np.testing.assert_allclose(d.forward(x).double().numpy(), sparsify_hand(cfg, t, x)[1], rtol=1e-5, atol=1e-5)
    sparsify_files(tmp_path / "one" / "layers.3.mlp", transcode=False, skip=False)
    d = load_transcoders(tmp_path / "one" / "layers.3.mlp")[3]  # one hookpoint folder on its own
    assert (d.hook_in, d.input_site) == ("blocks.3.hook_mlp_out", "mlp_output")
    t3 = sparsify_files(tmp_path / "tc" / "layers.3", transcode=True, skip=False)
    assert t3 and load_transcoders(tmp_path / "tc")[3].hook_in == "blocks.3.hook_resid_pre"


@pytest.mark.parametrize("change, match", [
    ({"cfg_extra": {"activation": "groupmax"}}, "'activation' is 'groupmax'"),
    ({"cfg_extra": {"num_latents": 12}}, "say 12 latents, but encoder.weight has 10"),
    ({"cfg_extra": {"k": 11}}, "'k' is 11, more than the 10 latents"),
    ({"cfg_extra": {"k": 0}}, "'k' must be an integer >= 1"),
    ({"cfg_extra": {"transcode": "yes"}}, "'transcode' must be true or false"),
    ({"cfg_extra": {"transcode": False}}, "skip_connection without transcode"),
    ({"tensors_extra": {"W_skip": torch.zeros(D_IN, D_IN + 1)}}, "'W_skip' has shape"),
])
def test_sparsify_refusals(tmp_path, change, match):
    sparsify_files(tmp_path / "layers.0.mlp", **change)
    with pytest.raises(RelPLensError, match=match) as e:
        load_transcoders(tmp_path)
    assert str(tmp_path / "layers.0.mlp") in str(e.value)


def test_sparsify_unknown_hookpoint_and_empty_folder(tmp_path):
    sparsify_files(tmp_path / "h.0.mlp")
    with pytest.raises(RelPLensError, match="hookpoint 'h.0.mlp' is not supported: layers.L"):
        load_transcoders(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RelPLensError, match="empty: no config.yaml .* no hookpoint folders"):
        load_transcoders(tmp_path / "empty")


# --- circuit-tracer and Gemma Scope 2 -----------------------------------------------------------------------
def ct_files(folder, n_layers=2, *, activation=None, k=None, skip=False, threshold=False, k_tensor=None,
             input_hook="hook_resid_mid", output_hook="hook_mlp_out", listed=None):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_kind": "transcoder_set", "feature_input_hook": input_hook, "feature_output_hook": output_hook}
    if activation:
        cfg["activation"] = activation
    if k is not None:
        cfg["k"] = k
    if listed is not None:
        cfg["transcoders"] = listed
    import yaml

    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    files = []
    for i in range(n_layers):
        t = {"W_enc": rand(D_SAE, D_IN, seed=10 * i), "W_dec": rand(D_SAE, D_OUT, seed=10 * i + 1),
             "b_enc": 0.3 * rand(D_SAE, seed=10 * i + 2), "b_dec": rand(D_OUT, seed=10 * i + 3)}
        if skip:
            t["W_skip"] = rand(D_OUT, D_IN, seed=10 * i + 4)
        if threshold:
            t["activation_function.threshold"] = 0.4 * rand(D_SAE, seed=10 * i + 5)  # some negative: kept as is
        if k_tensor is not None:
            t["k"] = torch.tensor(k_tensor)
        if listed is None:
            save_file(t, str(folder / f"layer_{i}.safetensors"))
        files.append(t)
    return cfg, files


def ct_hand(t, x, activation, k=None):
    """circuit-tracer's SingleLayerTranscoder: F.linear encoder, activations without a ReLU but relu's."""
    x = np64(x)
    p = x @ np64(t["W_enc"]).T + np64(t["b_enc"])
    if activation == "jumprelu":
        f = p * (p > np64(t["activation_function.threshold"]))
    elif activation == "topk":
        f = p * topk_mask(p, k)
    else:
        f = np.maximum(p, 0)
    out = f @ np64(t["W_dec"]) + np64(t["b_dec"])
    if "W_skip" in t:
        out = out + x @ np64(t["W_skip"]).T
    return f, out


@pytest.mark.parametrize("kw, activation, k", [
    ({}, "relu", None), ({"threshold": True}, "jumprelu", None), ({"activation": "topk", "k": 9}, "topk", 9),
    ({"k_tensor": 9}, "topk", 9), ({"skip": True}, "relu", None),
])
def test_load_transcoders_reads_circuit_tracer(tmp_path, kw, activation, k):
    _, files = ct_files(tmp_path, **kw)
    s = load_transcoders(tmp_path)
    assert s.layers == [0, 1] and s.source.format == "circuit_tracer"
    x = rand(3, D_IN, seed=5)
    for layer, t in enumerate(files):
        d = s[layer]
        assert (d.activation, d.k, d.hook_in, d.hook_out) == \
            (activation, k, f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_mlp_out")
        f, out = ct_hand(t, x, activation, k)
        if activation == "topk":
            assert (f < 0).any()  # circuit-tracer's TopK keeps negative values
        np.testing.assert_allclose(d.encode(x).double().numpy(), f, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d.forward(x).double().numpy(), out, rtol=1e-5, atol=1e-5)


def test_circuit_tracer_hook_names_map_to_sites(tmp_path):
    ct_files(tmp_path, input_hook="mlp.hook_in", output_hook="mlp.hook_out")
    d = load_transcoders(tmp_path)[1]
    assert (d.hook_in, d.input_site, d.hook_out, d.output_site) == \
        ("blocks.1.ln2.hook_normalized", "mlp_input", "blocks.1.hook_mlp_out", "mlp_output")


def gemma_scope_2_file(path, seed=0, skip=True):
    t = {"w_enc": rand(D_IN, D_SAE, seed=seed), "w_dec": rand(D_SAE, D_OUT, seed=seed + 1),
         "b_enc": 0.3 * rand(D_SAE, seed=seed + 2), "b_dec": rand(D_OUT, seed=seed + 3),
         "threshold": 0.3 * rand(D_SAE, seed=seed + 4).abs()}
    if skip:
        t["affine_skip_connection"] = rand(D_IN, D_OUT, seed=seed + 5)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path))
    return t


def test_gemma_scope_2_params_listed_in_a_circuit_tracer_config(tmp_path):
    ts = [gemma_scope_2_file(tmp_path / f"layer_{i}_width_16k" / "params.safetensors", seed=10 * i, skip=i == 0)
          for i in range(2)]
    ct_files(tmp_path, 0, input_hook="mlp.hook_in", output_hook="hook_mlp_out",
             listed=[f"layer_{i}_width_16k/params.safetensors" for i in range(2)])
    s = load_transcoders(tmp_path)
    assert [d.kind for d in s] == ["skip_transcoder", "transcoder"]
    assert s[0].source.format == "gemma_scope_2"
    x = rand(4, D_IN, seed=6)
    for d, t in zip(s, ts):
        xn = np64(x)
        p = xn @ np64(t["w_enc"]) + np64(t["b_enc"])
        f = p * (p > np64(t["threshold"]))
        out = f @ np64(t["w_dec"]) + np64(t["b_dec"])
        if "affine_skip_connection" in t:
            out = out + xn @ np64(t["affine_skip_connection"])
        np.testing.assert_allclose(d.encode(x).double().numpy(), f, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d.forward(x).double().numpy(), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(RelPLensError, match="does not say which hooks it reads"):
        load_transcoders(tmp_path / "layer_0_width_16k" / "params.safetensors")


def gemma_scope_2_folder(folder, layer, seed=0, skip=True, cfg_extra=None):
    t = gemma_scope_2_file(folder / "params.safetensors", seed=seed, skip=skip)
    cfg = {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
           "hf_hook_point_in": f"model.layers.{layer}.pre_feedforward_layernorm.output",
           "hf_hook_point_out": f"model.layers.{layer}.post_feedforward_layernorm.output", "affine_connection": skip}
    cfg.update(cfg_extra or {})
    (folder / "config.json").write_text(json.dumps(cfg))
    return t


def test_gemma_scope_2_transcoder_folders(tmp_path):
    ts = {layer: gemma_scope_2_folder(tmp_path / f"layer_{layer}_width_16k_l0_small_affine", layer, seed=layer,
                                      skip=layer == 3) for layer in (3, 5)}
    s = load_transcoders(tmp_path)
    assert s.layers == [3, 5] and [d.kind for d in s] == ["skip_transcoder", "transcoder"]
    d = s[3]
    assert (d.hook_in, d.input_site, d.hook_out, d.output_site) == \
        ("blocks.3.ln2.hook_normalized", "mlp_input", "blocks.3.hook_mlp_out", "hook")
    x = rand(4, D_IN, seed=6)
    for layer, t in ts.items():
        xn = np64(x)
        p = xn @ np64(t["w_enc"]) + np64(t["b_enc"])
        out = (p * (p > np64(t["threshold"]))) @ np64(t["w_dec"]) + np64(t["b_dec"])
        if "affine_skip_connection" in t:
            out = out + xn @ np64(t["affine_skip_connection"])
        np.testing.assert_allclose(s[layer].forward(x).double().numpy(), out, rtol=1e-5, atol=1e-5)
    assert load_transcoders(tmp_path / "layer_5_width_16k_l0_small_affine").layers == [5]


@pytest.mark.parametrize("cfg_extra, match", [
    ({"architecture": "topk"}, "'architecture' is 'topk'; Gemma Scope 2 files are 'jump_relu'"),
    ({"hf_hook_point_out": None}, "a Gemma Scope 2 SAE, not a transcoder"),
    ({"hf_hook_point_in": "model.layers.2.output"}, "only an MLP transcoder"),
    ({"hf_hook_point_out": "model.layers.2.post_feedforward_layernorm.output"}, "only an MLP transcoder"),
    ({"affine_connection": False}, "'affine_connection' says False but .* has affine_skip_connection"),
])
def test_gemma_scope_2_refusals(tmp_path, cfg_extra, match):
    gemma_scope_2_folder(tmp_path, 1, cfg_extra=cfg_extra)
    with pytest.raises(RelPLensError, match=match) as e:
        load_transcoders(tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("cfg_change, match", [
    ({"model_kind": "cross_layer_transcoder"}, "only per-layer transcoders"),
    ({"feature_input_hook": 3}, "'feature_input_hook' must be a non-empty string"),
    ({"activation": "gelu"}, "'activation' is 'gelu'"),
    ({"activation": "topk"}, "activation topk needs key 'k'"),
    ({"activation": "topk", "k": 11}, "'k' is 11, more than d_sae=10"),
    ({"transcoders": ["hf://google/gemma-scope-2/x/params.safetensors"]}, "names remote files"),
    ({"transcoders": "layer_0.safetensors"}, "'transcoders' must be a non-empty list"),
    ({"feature_input_hook": "mlp.hook_out"}, "feature_input_hook 'mlp.hook_out' is the MLP's output"),
])
def test_circuit_tracer_refusals(tmp_path, cfg_change, match):
    import yaml

    cfg, _ = ct_files(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, **cfg_change}))
    with pytest.raises(RelPLensError, match=match) as e:
        load_transcoders(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_circuit_tracer_layer_files_must_be_contiguous(tmp_path):
    ct_files(tmp_path, 3)
    (tmp_path / "layer_1.safetensors").unlink()
    with pytest.raises(RelPLensError, match=r"layer_0.safetensors … layer_N.safetensors .* found layers \[0, 2\]"):
        load_transcoders(tmp_path)
    (tmp_path / "config.yaml").write_text("model_kind: [unclosed")
    with pytest.raises(RelPLensError, match="config.yaml: not valid YAML"):
        load_transcoders(tmp_path)


# --- the data model -----------------------------------------------------------------------------------------
def tiny_dict(**changes):
    fields = dict(kind="transcoder", activation="relu", W_enc=rand(D_IN, D_SAE), b_enc=torch.zeros(D_SAE),
                  W_dec=rand(D_SAE, D_OUT), b_dec=torch.zeros(D_OUT), hook_in="blocks.0.hook_resid_mid",
                  hook_out="blocks.0.hook_mlp_out", layer=0)
    fields.update(changes)
    return Dictionary(**fields)


@pytest.mark.parametrize("changes, match", [
    ({"kind": "crosscoder"}, "kind must be one of"),
    ({"activation": "topk"}, "topk needs k"),
    ({"activation": "topk", "k": True}, "topk needs k"),
    ({"k": 3}, "k is for the topk activation"),
    ({"activation": "jumprelu"}, "jumprelu needs threshold"),
    ({"threshold": torch.zeros(D_SAE)}, "threshold is for the jumprelu"),
    ({"activation": "gated", "r_mag": torch.zeros(D_SAE)}, "gated needs r_mag"),
    ({"b_mag": torch.zeros(D_SAE)}, "r_mag and b_mag are for the gated activation"),
    ({"activation": "gated", "r_mag": torch.zeros(D_SAE + 1), "b_mag": torch.zeros(D_SAE)},
     r"r_mag has shape \(11,\), expected \(10,\)"),
    ({"b_enc": torch.zeros(D_SAE + 1)}, r"b_enc has shape \(11,\), expected \(10,\)"),
    ({"W_dec": rand(D_SAE, D_OUT).double()}, "W_dec is torch.float64 .* but W_enc is torch.float32"),
    ({"W_enc": torch.zeros(D_IN, D_SAE, dtype=torch.long)}, "W_enc must be a 2-D floating-point tensor"),
    ({"kind": "skip_transcoder"}, "a skip_transcoder needs W_skip"),
    ({"W_skip": rand(D_IN, D_OUT)}, "W_skip is given for a kind other than skip_transcoder"),
    ({"kind": "sae"}, "an SAE reconstructs its input"),
    ({"apply_b_dec_to_input": True}, "apply_b_dec_to_input is for SAEs"),
    ({"hook_in": ""}, "hook_in must be a non-empty hook name"),
    ({"layer": -1}, "layer must be a block index"),
    ({"b_dec": torch.full((D_OUT,), math.nan)}, "b_dec holds NaN"),
    ({"input_site": "resid"}, "input_site must be one of"),
    ({"input_site": "mlp_input", "layer": None}, "give the block as layer"),
    ({"input_site": "mlp_input"}, "hook_in of a site 'mlp_input' dictionary at layer 0 is "
                                  "blocks.0.ln2.hook_normalized, got 'blocks.0.hook_resid_mid'"),
    ({"output_site": "mlp_output", "hook_out": "blocks.1.hook_mlp_out"}, "hook_out of a site 'mlp_output'"),
    ({"source": "file.json"}, "source must be a DictionarySource"),
])
def test_dictionary_validates_its_fields(changes, match):
    with pytest.raises(RelPLensError, match=match):
        tiny_dict(**changes)


def test_encode_decode_check_their_inputs():
    d = tiny_dict(kind="skip_transcoder", W_skip=rand(D_IN, D_OUT))
    with pytest.raises(RelPLensError, match=r"x must be \[\.\.\., d_in=6\], got \(2, 5\)"):
        d.encode(torch.zeros(2, 5))
    with pytest.raises(RelPLensError, match="needs the input x"):
        d.decode(torch.zeros(2, D_SAE))
    x = rand(2, D_IN, seed=1)
    assert torch.allclose(d.decode(d.encode(x), x), d.forward(x))
    assert d.to(dtype=torch.float64).forward(x.double()).dtype == torch.float64
    with pytest.raises(RelPLensError, match="layers must be distinct"):
        DictionarySet((d, d))
    with pytest.raises(RelPLensError, match="non-empty list of Dictionary"):
        DictionarySet(())


@pytest.mark.parametrize("activation", ["relu", "gated"])
def test_fold_input_is_exact(activation):
    gated = dict(r_mag=0.5 * rand(D_SAE, seed=8), b_mag=0.3 * rand(D_SAE, seed=9)) if activation == "gated" else {}
    d = tiny_dict(kind="skip_transcoder", W_skip=rand(D_IN, D_OUT, seed=3), b_enc=rand(D_SAE, seed=4),
                  activation=activation, **gated)
    w, b, n = rand(D_IN, seed=5), rand(D_IN, seed=6), rand(7, D_IN, seed=7)
    folded = d.fold_input(w, b)
    assert folded.input_site == "hook"
    assert (d.encode(n * w + b) > 0).any() and (d.encode(n * w + b) == 0).any()
    assert torch.allclose(folded.encode(n), d.encode(n * w + b), atol=1e-5)
    assert torch.allclose(folded.forward(n), d.forward(n * w + b), atol=1e-5)
    with pytest.raises(RelPLensError, match="an SAE reads what it writes"):
        tiny_dict(kind="sae", hook_out="blocks.0.hook_resid_mid", W_dec=rand(D_SAE, D_IN),
                  b_dec=torch.zeros(D_IN)).fold_input(w)


# --- fuzzing: any config or shape → a Dictionary or a RelPLensError naming the file -------------------------
json_value = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True),
                       st.text(max_size=6), st.sampled_from(["topk", "standard", "none", "jumprelu", "transcoder"]),
                       st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                               max_size=2))
shape = st.lists(st.integers(0, 12), min_size=0, max_size=3).map(tuple)


def fuzz_outcome(load, folder):
    try:
        got = load(folder)
    except RelPLensError as e:
        assert str(folder) in str(e), f"message does not name the file: {e}"
        return "refused"
    assert isinstance(got, (Dictionary, DictionarySet))
    return "loaded"


@given(arch=st.sampled_from(sorted(SAELENS_ARCHS)),
       edits=st.lists(st.tuples(st.sampled_from(["d_in", "d_sae", "d_out", "k", "architecture", "apply_b_dec_to_input",
                                                "normalize_activations", "reshape_activations", "metadata",
                                                "metadata.hook_name", "metadata.hook_name_out",
                                                "rescale_acts_by_decoder_norm", "activation_fn", "activation_fn_kwargs",
                                                "<delete>"]), json_value), max_size=3),
       reshaped=st.one_of(st.none(), st.tuples(st.sampled_from(["W_enc", "b_enc", "W_dec", "b_dec", "threshold",
                                                                  "W_skip", "b_gate", "r_mag", "b_mag"]), shape)))
def test_fuzz_saelens_configs_and_shapes(tmp_path_factory, arch, edits, reshaped):
    folder = tmp_path_factory.mktemp("fuzz")
    cfg, t = saelens_files(folder, arch)
    for key, value in edits:
        if key == "<delete>":
            cfg.pop(value if isinstance(value, str) else "d_in", None)
        elif key.startswith("metadata.") and isinstance(cfg.get("metadata"), dict):
            cfg["metadata"][key.split(".", 1)[1]] = value
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    if reshaped and reshaped[0] in t:
        t[reshaped[0]] = torch.ones(reshaped[1])
        save_file({k: v.contiguous() for k, v in t.items()}, str(folder / "sae_weights.safetensors"))
    fuzz_outcome(load_sae, folder)


@given(edits=st.lists(st.tuples(st.sampled_from(["activation", "num_latents", "expansion_factor", "k", "d_in",
                                                 "transcode", "skip_connection", "<delete>"]), json_value),
                      max_size=3),
       hookpoint=st.sampled_from(["layers.0.mlp", "layers.12", "model.layers.3.mlp", "layers.x.mlp", "embed"]),
       reshaped=st.one_of(st.none(), st.tuples(st.sampled_from(["encoder.weight", "encoder.bias", "W_dec", "b_dec",
                                                                  "W_skip"]), shape)))
@example(edits=[], hookpoint="layers.0.mlp", reshaped=("encoder.weight", ()))  # found by the long profile
def test_fuzz_sparsify_configs_and_shapes(tmp_path_factory, edits, hookpoint, reshaped):
    run = tmp_path_factory.mktemp("fuzz")
    cfg, t = sparsify_files(run / hookpoint)
    for key, value in edits:
        if key == "<delete>":
            cfg.pop(value if isinstance(value, str) else "k", None)
        else:
            cfg[key] = value
    (run / hookpoint / "cfg.json").write_text(json.dumps(cfg))
    if reshaped:
        t[reshaped[0]] = torch.ones(reshaped[1])
        save_file({k: v.contiguous() for k, v in t.items()}, str(run / hookpoint / "sae.safetensors"))
    fuzz_outcome(load_transcoders, run)


@given(edits=st.lists(st.tuples(st.sampled_from(["model_kind", "feature_input_hook", "feature_output_hook",
                                                 "activation", "k", "transcoders", "<delete>"]), json_value),
                      max_size=3),
       reshaped=st.one_of(st.none(), st.tuples(st.sampled_from(["W_enc", "b_enc", "W_dec", "b_dec", "W_skip",
                                                                  "activation_function.threshold", "k"]), shape)),
       raw_yaml=st.one_of(st.none(), st.sampled_from(["", "- a\n- b", "a: [1", "!!python/object:os.system {}",
                                                      "\x00", "k: .nan"])))
def test_fuzz_circuit_tracer_configs_and_shapes(tmp_path_factory, edits, reshaped, raw_yaml):
    import yaml

    folder = tmp_path_factory.mktemp("fuzz")
    cfg, files = ct_files(folder, skip=True, threshold=True)
    for key, value in edits:
        if key == "<delete>":
            cfg.pop(value if isinstance(value, str) else "model_kind", None)
        else:
            cfg[key] = value
    (folder / "config.yaml").write_text(raw_yaml if raw_yaml is not None else yaml.safe_dump(cfg))
    if reshaped:
        files[0][reshaped[0]] = torch.ones(reshaped[1])
        save_file(files[0], str(folder / "layer_0.safetensors"))
    fuzz_outcome(load_transcoders, folder)


@given(edits=st.lists(st.tuples(st.sampled_from(["architecture", "hf_hook_point_in", "hf_hook_point_out",
                                                 "affine_connection", "<delete>"]), json_value), max_size=3),
       reshaped=st.one_of(st.none(), st.tuples(st.sampled_from(["w_enc", "w_dec", "b_enc", "b_dec", "threshold",
                                                                  "affine_skip_connection"]), shape)))
def test_fuzz_gemma_scope_2_configs_and_shapes(tmp_path_factory, edits, reshaped):
    folder = tmp_path_factory.mktemp("fuzz")
    t = gemma_scope_2_folder(folder, 2)
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in edits:
        if key == "<delete>":
            cfg.pop(value if isinstance(value, str) else "architecture", None)
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    if reshaped:
        t[reshaped[0]] = torch.ones(reshaped[1])
        save_file({k: v.contiguous() for k, v in t.items()}, str(folder / "params.safetensors"))
    fuzz_outcome(load_transcoders, folder)


# --- against a model -----------------------------------------------------------------------------------------
def mlp_inputs(model, tokens):
    """What each block's MLP module receives, captured by torch (not a TransformerLens hook)."""
    got, handles = {}, []
    for layer, block in enumerate(model.blocks):
        handles.append(block.mlp.register_forward_pre_hook(lambda m, args, layer=layer: got.__setitem__(
            layer, args[0].detach())))
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in handles:
            h.remove()
    return got


@pytest.fixture(params=["hooked", "bridge"])
def model(request):
    return tiny_llama_on(request.param)


def test_check_against_folds_ln2_into_mlp_input_transcoders(tmp_path, model):
    d_model = model.cfg.d_model
    files = []
    for i in range(model.cfg.n_layers):
        t = {"W_enc": rand(D_SAE, d_model, seed=i), "W_dec": rand(D_SAE, d_model, seed=i + 1),
             "b_enc": 0.3 * rand(D_SAE, seed=i + 2), "b_dec": rand(d_model, seed=i + 3),
             "W_skip": rand(d_model, d_model, seed=i + 4)}
        save_file(t, str(tmp_path / f"layer_{i}.safetensors"))
        files.append(t)
    (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
                                          "feature_output_hook: hook_mlp_out\n")
    raw = load_transcoders(tmp_path)
    checked = raw.check_against(model)
    tokens = torch.tensor([[1, 5, 7, 2, 9]])
    mlp_in = mlp_inputs(model, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("ln2.hook_normalized"))
    for d, d0 in zip(checked, raw):
        assert d.input_site == "hook" and d.hook_in == f"blocks.{d.layer}.ln2.hook_normalized"
        truth = d0.forward(mlp_in[d.layer])  # the transcoder on what the MLP really reads
        assert not torch.allclose(d0.forward(cache[d.hook_in]), truth, atol=1e-3)  # the weight matters here
        assert torch.allclose(d.forward(cache[d.hook_in]), truth, atol=1e-4)
        assert torch.allclose(d.encode(cache[d.hook_in]), d0.encode(mlp_in[d.layer]), atol=1e-4)


@pytest.mark.hooked
def test_check_against_refuses_an_mlp_input_dictionary_where_ln2_does_not_normalise_resid_mid():
    model = tiny_llama()
    d = tiny_dict(W_enc=rand(32, D_SAE), W_dec=rand(D_SAE, 32), b_dec=torch.zeros(32), layer=1,
                  hook_in="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out", input_site="mlp_input")
    assert d.check_against(model).input_site == "hook"
    model.add_hook("blocks.1.ln2.hook_normalized", lambda x, hook: x + 1.0, is_permanent=True)
    try:
        with pytest.raises(RelPLensError, match="trained on the MLP's input .* blocks.1.ln2.hook_normalized is not "
                                                "a norm of blocks.1.hook_resid_mid"):
            d.check_against(model)
    finally:
        model.reset_hooks(including_permanent=True)


def test_check_against_refuses_wrong_widths_and_hooks(model):
    d_model = model.cfg.d_model
    d = tiny_dict(W_enc=rand(d_model + 1, D_SAE), W_dec=rand(D_SAE, d_model), b_dec=torch.zeros(d_model))
    with pytest.raises(RelPLensError, match=r"<memory>: d_in is 33 but the model's blocks.0.hook_resid_mid has "
                                            r"width 32"):
        d.check_against(model)
    d = tiny_dict(W_enc=rand(d_model, D_SAE), W_dec=rand(D_SAE, d_model), b_dec=torch.zeros(d_model),
                  hook_in="blocks.0.hook_resid_midd")
    with pytest.raises(RelPLensError, match="no hook 'blocks.0.hook_resid_midd'; did you mean"):
        d.check_against(model)
    ok = tiny_dict(W_enc=rand(d_model, D_SAE), W_dec=rand(D_SAE, d_model), b_dec=torch.zeros(d_model))
    assert ok.check_against(model) is ok
    with pytest.raises(RelPLensError, match="must be a TransformerLens"):
        ok.check_against("gpt2")


@pytest.mark.hooked
def test_check_against_refuses_mlp_output_dictionaries_after_a_post_mlp_norm(tmp_path):
    model = tiny_gemma()  # Gemma 2 style: ln2_post sits between the MLP and hook_mlp_out
    sparsify_files(tmp_path / "layers.1.mlp", transcode=False, skip=False, d_in=model.cfg.d_model)
    with pytest.raises(RelPLensError, match="reads or writes the MLP module's own output, but at layer 1, "
                                            "blocks.1.hook_mlp_out is not"):
        load_transcoders(tmp_path).check_against(model)
    assert load_transcoders(tmp_path).check_against(tiny_llama())[1].hook_in == "blocks.1.hook_mlp_out"


SHIPPED = [("smollm2", "hooked"), ("smollm2", "bridge"), ("gemma3-270m", "hooked"), ("gemma3-270m", "bridge")]


@pytest.mark.slow
@pytest.mark.parametrize("name, backend", SHIPPED, ids=[f"{n}-{b}" for n, b in SHIPPED])
def test_mlp_input_transcoders_read_what_the_shipped_models_mlps_read(tmp_path, smollm, name, backend):
    """On the shipped models (Gemma 3: a norm weight stored as ``w``, applied as ``1 + w`` on the bridge, and a
    norm after the MLP), a circuit-tracer ``mlp.hook_in`` transcoder checked against the model reads
    ``ln2.hook_normalized`` and computes what the unchecked one computes on the MLP module's real input; an
    ``mlp.hook_out`` one is refused where a norm follows the MLP."""
    if backend == "hooked" and not backends.hooked_transformer_available():
        pytest.skip("HookedTransformer needs TransformerLens 3.x")
    if name == "smollm2" and backends.is_bridge(smollm) == (backend == "bridge"):
        model = smollm
    else:
        model = relp_lens.load_model("smollm2-135m" if name == "smollm2" else name, backend=backend)
    d_model = model.cfg.d_model
    for i in range(2):
        save_file({"W_enc": rand(D_SAE, d_model, seed=i) / d_model ** 0.5, "W_dec": rand(D_SAE, d_model, seed=i + 1),
                   "b_enc": 0.1 * rand(D_SAE, seed=i + 2), "b_dec": rand(d_model, seed=i + 3)},
                  str(tmp_path / f"layer_{i}.safetensors"))
    post_norm = name == "gemma3-270m"
    (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
                                          "feature_output_hook: mlp.hook_out\n")
    if post_norm:
        with pytest.raises(RelPLensError, match="reads or writes the MLP module's own output, but at layer 0"):
            load_transcoders(tmp_path).check_against(model)
        (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
                                              "feature_output_hook: hook_mlp_out\n")
    raw = load_transcoders(tmp_path)
    checked = raw.check_against(model)
    tokens = model.to_tokens("The keys to the cabinet")
    mlp_in = mlp_inputs(model, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("ln2.hook_normalized"))
    for d, d0 in zip(checked, raw):
        truth = d0.encode(mlp_in[d.layer].float())
        assert (truth > 0).any()
        torch.testing.assert_close(d.encode(cache[d.hook_in].float()), truth, rtol=1e-4, atol=1e-4)


def test_lazy_exports():
    assert relp_lens.load_sae is load_sae and relp_lens.DictionarySet is DictionarySet


# --- the libraries themselves, where installed ----------------------------------------------------------------
def _saelens_models():
    sae_lens = pytest.importorskip("sae_lens", reason="sae_lens is not installed (TransformerLens 3 only)")
    from sae_lens.saes.sae import SAEMetadata
    d_in, d_sae, d_out = 8, 24, 6
    meta = {"hook_name": "blocks.0.hook_resid_mid"}
    tmeta = {**meta, "hook_name_out": "blocks.0.hook_mlp_out"}
    return [
        sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(
            **meta))),
        sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5, metadata=SAEMetadata(**meta))),
        sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5, rescale_acts_by_decoder_norm=True,
                                                metadata=SAEMetadata(**meta))),
        sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(
            **meta))),
        sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(**meta))),
        sae_lens.Transcoder(sae_lens.TranscoderConfig(d_in=d_in, d_sae=d_sae, d_out=d_out,
                                                      apply_b_dec_to_input=False,
                                                      metadata=SAEMetadata(**tmeta))),
        sae_lens.SkipTranscoder(sae_lens.SkipTranscoderConfig(d_in=d_in, d_sae=d_sae, d_out=d_out,
                                                              apply_b_dec_to_input=False,
                                                              metadata=SAEMetadata(**tmeta))),
        sae_lens.JumpReLUTranscoder(sae_lens.JumpReLUTranscoderConfig(d_in=d_in, d_sae=d_sae, d_out=d_out,
                                                                      apply_b_dec_to_input=False,
                                                                      metadata=SAEMetadata(**tmeta))),
    ]


def test_load_sae_agrees_with_saelens_load_from_disk(tmp_path):
    models = _saelens_models()
    from sae_lens import SAE

    g = torch.Generator().manual_seed(0)
    for i, sae in enumerate(models):
        with torch.no_grad():
            for p in sae.parameters():  # trained-looking weights: every latent can fire, thresholds positive
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (0.2 if p.ndim == 1 else 0.0))
        folder = tmp_path / f"sae{i}"
        sae.save_model(str(folder))
        theirs = SAE.load_from_disk(str(folder))
        x = torch.randn(5, 3, sae.cfg.d_in, generator=g)
        for ours in (load_sae(folder), load_sae(theirs)):
            assert ours.hook_in == "blocks.0.hook_resid_mid", type(sae).__name__
            with torch.no_grad():
                f = theirs.encode(x)
                assert (f != 0).any(), type(sae).__name__
                torch.testing.assert_close(ours.encode(x), f, rtol=1e-5, atol=1e-5, msg=type(sae).__name__)
                torch.testing.assert_close(ours.forward(x), theirs(x), rtol=1e-5, atol=1e-5,
                                           msg=type(sae).__name__)


def test_sparsify_trainer_files_load_and_agree_with_sparsify(tmp_path):
    pytest.importorskip("sparsify", reason="eai-sparsify is not installed")
    datasets = pytest.importorskip("datasets")
    from sparsify import SparseCoder, SparseCoderConfig, Trainer, TrainConfig

    hf = tiny_hf_llama()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, int(hf.config.vocab_size), (64, 8), generator=g)
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    for transcode, skip in ((True, True), (False, False)):
        name = f"run_{transcode}"
        cfg = TrainConfig(SparseCoderConfig(expansion_factor=2, k=4, transcode=transcode, skip_connection=skip),
                          batch_size=8, hookpoints=["layers.*.mlp"], save_dir=str(tmp_path), run_name=name,
                          log_to_wandb=False)
        Trainer(cfg, data, hf).fit()
        run = tmp_path / name
        ours = load_transcoders(run)
        assert ours.layers == list(range(hf.config.num_hidden_layers))
        x = torch.randn(6, hf.config.hidden_size, generator=g)
        for layer in ours.layers:
            theirs = SparseCoder.load_from_disk(run / f"layers.{layer}.mlp")
            with torch.no_grad():
                enc = theirs.encode(x)
                dense = torch.zeros(6, theirs.num_latents).scatter(-1, enc.top_indices, enc.top_acts)
                out = theirs.decode(enc.top_acts, enc.top_indices)
                if theirs.W_skip is not None:
                    out = out + x @ theirs.W_skip.mT
            d = ours[layer]
            assert d.kind == ("skip_transcoder" if skip else "sae")
            torch.testing.assert_close(d.encode(x), dense, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(d.forward(x), out, rtol=1e-5, atol=1e-5)
