"""TransformerLens-native results (issue #21): scores and gradients as ``ActivationCache`` objects keyed by hook name,
attributions from scores computed with hooks, and agreement with the classic attribution-patching recipe
(``run_with_cache`` + backward hooks) on the shipped model."""

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import relp_lens
from relp_lens import Attribution, RelPLensError, attribute, select_top_k
from relp_lens.core import backends
from relp_lens.core.tl_cache import GradientCaches, from_cache, gradients, to_cache
from helpers import AGREEMENT_ROWS, tiny_hf_llama, tiny_llama, word_tokenizer

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "examples" / "pairs.jsonl"
ROWS = AGREEMENT_ROWS  # 6, 3, 6 and 3 tokens: end-aligned columns [0, 1, -4, -3, -2, -1]


def activation_cache_class():
    from transformer_lens import ActivationCache

    return ActivationCache


# --- models: a tiny HookedTransformer (TransformerLens 3.x only) and a tiny bridge (both) -----------------------
_MODELS = {}


def _model(kind):
    if kind not in _MODELS:
        _MODELS[kind] = (tiny_llama() if kind == "hooked"
                         else backends.wrap_hf_model(tiny_hf_llama(), word_tokenizer(), "tiny-llama"))
    return _MODELS[kind]


@pytest.fixture(params=["hooked", "bridge"])
def model(request):
    return _model(request.param)  # the hooked builder skips on TransformerLens 4


@pytest.fixture(scope="module")
def bridge():
    return _model("bridge")


_ATTRS = {}


def attr_of(model, method="grad", **kw) -> Attribution:
    key = (id(model), method, tuple(sorted(kw.items())))
    if key not in _ATTRS:
        _ATTRS[key] = attribute(model, ROWS, method=method, progress=False, **kw)
    return _ATTRS[key]


def mlp_hooks(model):
    return [f"blocks.{layer}.mlp.hook_post" for layer in range(model.cfg.n_layers)]


# --- 1. to_cache --------------------------------------------------------------------------------------------
def test_to_cache_keys_shapes_and_values(model):
    attr = attr_of(model, "relp")
    cache = attr.to_cache(model)
    assert isinstance(cache, activation_cache_class()) and cache.has_batch_dim and cache.model is model
    assert list(cache.keys()) == attr.hook_names == mlp_hooks(model)
    assert list(to_cache(attr, model).keys()) == attr.hook_names  # the function behind the method
    assert attr.positions == [0, 1, -4, -3, -2, -1]  # mixed lengths: end-aligned columns
    valid = attr.valid()
    for layer, name in enumerate(attr.hook_names):
        assert cache[name].shape == (4, 6, 48)
        assert torch.equal(cache[name], attr.scores[:, layer])
        assert (cache[name][~valid] == 0).all()  # columns an example does not reach
        assert cache[name][valid].abs().sum() > 0
    assert torch.equal(cache[("post", 1)], cache["blocks.1.mlp.hook_post"])  # TransformerLens' shorthand
    stacked = cache.stack_activation("post")
    assert stacked.shape == (3, 4, 6, 48)
    assert torch.equal(stacked, attr.scores.transpose(0, 1))
    cache["blocks.0.mlp.hook_post"].add_(1.0)  # a copy: the attribution is unchanged
    assert torch.equal(attr.to_cache(model)["blocks.0.mlp.hook_post"], attr.scores[:, 0])


def test_to_cache_of_one_length_data_is_absolute_positions(model):
    rows = [ROWS[0], ROWS[2]]  # both 6 tokens
    attr = attribute(model, rows, method="grad", progress=False)
    cache = attr.to_cache(model)
    assert attr.positions == list(range(6)) and cache["blocks.2.mlp.hook_post"].shape == (2, 6, 48)
    tokens = model.to_tokens([r["clean_prefix"] for r in rows])
    _, acts = model.run_with_cache(tokens, names_filter=mlp_hooks(model))
    assert acts["blocks.2.mlp.hook_post"].shape == cache["blocks.2.mlp.hook_post"].shape  # the same pos axis


def test_to_cache_of_a_mean(model):
    full, mean = attr_of(model, "grad"), attr_of(model, "grad", reduce="mean")
    cache = mean.to_cache(model)
    assert not cache.has_batch_dim
    for layer, name in enumerate(mean.hook_names):
        assert cache[name].shape == (6, 48)
        torch.testing.assert_close(cache[name], full.mean()[layer], atol=1e-6, rtol=1e-5)
    assert cache.stack_activation("post").shape == (3, 6, 48)
    from_full = full.to_cache(model, reduce="mean")
    assert not from_full.has_batch_dim
    torch.testing.assert_close(from_full["blocks.1.mlp.hook_post"], full.mean()[1])
    with pytest.raises(RelPLensError, match="reduce='mean'"):
        mean.to_cache(model, reduce="none")
    with pytest.raises(RelPLensError, match="unknown reduce"):
        full.to_cache(model, reduce="sum")


@pytest.mark.parametrize("basis", ["mlp_out", "attn_out", "mixed"])
def test_to_cache_other_bases(model, basis):
    if basis == "mixed":
        basis = [f"blocks.{layer}.hook_{part}_out" for layer in range(3) for part in ("attn", "mlp")]
    attr = attribute(model, ROWS, method="relp", basis=basis, progress=False)
    cache = attr.to_cache(model)
    assert list(cache.keys()) == attr.hook_names
    for layer, name in enumerate(attr.hook_names):
        assert cache[name].shape == (4, 6, 32) and torch.equal(cache[name], attr.scores[:, layer])
    if isinstance(basis, str):
        assert cache.stack_activation(basis).shape == (3, 4, 6, 32)
    else:
        assert cache.stack_activation("attn_out").shape == (3, 4, 6, 32)
        assert torch.equal(cache.stack_activation("mlp_out")[2], attr.scores[:, 5])


def test_to_cache_needs_the_hooks_on_the_model(bridge):
    attr = attr_of(bridge, "grad")
    attr_bad = dataclasses.replace(attr, hook_names=["blocks.0.mlp.hook_postt", *attr.hook_names[1:]])
    with pytest.raises(RelPLensError, match="hook_postt"):
        attr_bad.to_cache(bridge)


# --- 2. gradients -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["relp", "grad"])
def test_gradients_times_deltas_are_the_scores(model, method):
    attr = attr_of(model, method)
    g = gradients(model, ROWS, method=method, return_acts=True)
    assert isinstance(g, GradientCaches)
    grads_only = relp_lens.gradients(model, ROWS, method=method)
    assert isinstance(grads_only, activation_cache_class())
    scores = attr.to_cache(model)
    valid = attr.valid()
    for name in attr.hook_names:
        for c in g:
            assert c[name].shape == (4, 6, 48) and (c[name][~valid] == 0).all()
        torch.testing.assert_close(g.grads[name] * g.deltas[name], scores[name], atol=1e-6, rtol=0)
        assert torch.equal(grads_only[name], g.grads[name])
    # the activations are the clean run's, at the attribution's columns
    for i, row in enumerate(ROWS):
        tokens = model.to_tokens(row["clean_prefix"])
        _, clean = model.run_with_cache(tokens, names_filter=attr.hook_names)
        _, corrupt = model.run_with_cache(model.to_tokens(row["patch_prefix"]), names_filter=attr.hook_names)
        cols = attr.alignment.columns(tokens.shape[1])
        for name in attr.hook_names:
            torch.testing.assert_close(g.acts[name][i, cols], clean[name][0])
            torch.testing.assert_close(g.deltas[name][i, cols], corrupt[name][0] - clean[name][0])


def test_gradients_are_the_metrics_gradient(model):
    """``method="grad"``: d(logit diff)/d hook_post by hand, with backward hooks, for one prompt."""
    row, name = ROWS[0], "blocks.1.mlp.hook_post"
    g = gradients(model, [row], method="grad")
    tokens = model.to_tokens(row["clean_prefix"])
    good, bad = model.to_single_token(row["clean_answer"].strip()), model.to_single_token(row["patch_answer"].strip())
    got = {}

    def start(x, hook):  # frozen weights: the graph starts at the embeddings
        return x.detach().requires_grad_(True)

    def save(grad, hook):
        got["g"] = grad.detach()

    with torch.enable_grad(), backends.hooks(model, fwd_hooks=[("hook_embed", start)], bwd_hooks=[(name, save)]):
        logits = model(tokens)
        (logits[0, -1, good] - logits[0, -1, bad]).backward()
    torch.testing.assert_close(g[name][0], got["g"][0])


def test_gradients_unpaired_and_mixed_widths(model):
    basis = ["blocks.0.mlp.hook_post", "blocks.1.hook_resid_post"]
    g = gradients(model, ["The keys to the cabinet", "The doctor"], [" are", " is"], basis=basis, method="relp",
                  return_acts=True)
    assert g.grads["blocks.0.mlp.hook_post"].shape == (2, 6, 48)
    assert g.grads["blocks.1.hook_resid_post"].shape == (2, 6, 32)
    for name in basis:  # baseline "zero": the difference is the activation itself
        torch.testing.assert_close(g.deltas[name], g.acts[name])
    attr = attribute(model, ["The keys to the cabinet", "The doctor"], [" are", " is"], basis=basis[:1],
                     method="relp", progress=False)
    torch.testing.assert_close(g.grads[basis[0]] * g.deltas[basis[0]], attr.scores[:, 0], atol=1e-6, rtol=0)


def test_gradients_bad_arguments(bridge):
    with pytest.raises(RelPLensError, match="'relp' or 'grad'"):
        gradients(bridge, ROWS, method="ig")
    with pytest.raises(RelPLensError, match="return_acts"):
        gradients(bridge, ROWS, return_acts="yes")
    with pytest.raises(RelPLensError, match="twice"):
        gradients(bridge, ROWS, basis=["blocks.0.mlp.hook_post", "blocks.0.mlp.hook_post"])
    with pytest.raises(RelPLensError, match="no hook"):
        gradients(bridge, ROWS, basis="blocks.0.mlp.hook_pots")


# --- 3. from_cache ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["relp", "grad"])
def test_from_cache_round_trip(model, method):
    attr = attr_of(model, method)
    back = from_cache(attr.to_cache(model), model, attr.prompts, method=method)
    assert back.hook_names == attr.hook_names and back.basis == "mlp_post" and back.method == method
    assert torch.equal(back.scores, attr.scores) and back.alignment == attr.alignment
    assert back.str_tokens == attr.str_tokens and back.paired and back.baseline == "patch"
    torch.testing.assert_close(back.metric_clean, attr.metric_clean)
    torch.testing.assert_close(back.metric_ref, attr.metric_ref)
    assert back.top_k(15) == attr.top_k(15)
    assert back.top_k(5, aggregate_pos=True) == attr.top_k(5, aggregate_pos=True)
    assert select_top_k(back, model, 20) == select_top_k(attr, model, 20)
    assert (relp_lens.select_threshold(back, model, 0.01) == relp_lens.select_threshold(attr, model, 0.01))
    # a plain dict (no ActivationCache) works the same; the method label defaults to "custom"
    plain = from_cache({n: attr.scores[:, i] for i, n in enumerate(attr.hook_names)}, model, ROWS)
    assert plain.method == "custom" and torch.equal(plain.scores, attr.scores)
    assert select_top_k(plain, model, 20).nodes == select_top_k(attr, model, 20).nodes


def test_from_cache_of_a_mean(model):
    mean = attr_of(model, "grad", reduce="mean")
    back = from_cache(mean.to_cache(model), model, ROWS, method="grad")
    assert back.reduced and torch.equal(back.counts, mean.counts)
    torch.testing.assert_close(back.mean(), mean.mean())
    assert [n for n, _ in back.top_k(10)] == [n for n, _ in mean.top_k(10)]
    assert [s for _, s in back.top_k(10)] == pytest.approx([s for _, s in mean.top_k(10)])
    assert select_top_k(back, model, 10).nodes == select_top_k(mean, model, 10).nodes


def test_from_cache_of_one_prompt_without_batch_dim(model):
    """A one-prompt cache after ``remove_batch_dim()`` (``[pos, d]`` entries) is that prompt's scores."""
    attr = attribute(model, [ROWS[0]], method="relp", progress=False)
    cache = attr.to_cache(model).remove_batch_dim()
    assert not cache.has_batch_dim and cache["blocks.0.mlp.hook_post"].shape == (6, 48)
    back = from_cache(cache, model, [ROWS[0]])
    assert not back.reduced and torch.equal(back.scores, attr.scores)


@pytest.mark.parametrize("side", ["right", "left"])
def test_from_cache_padded_batch(model, side):
    """Scores laid out like a batched run_with_cache over prompts of different lengths (padded)."""
    attr = attr_of(model, "relp")
    padded = {}
    for layer, name in enumerate(attr.hook_names):
        x = torch.full((4, 6, 48), 123.0)  # pad entries: ignored
        for i, n in enumerate(attr.lengths):
            dst = slice(0, n) if side == "right" else slice(6 - n, 6)
            x[i, dst] = attr.scores[i, layer, attr.alignment.columns(n)]
        padded[name] = x
    back = from_cache(padded, model, ROWS, padding_side=side)
    assert torch.equal(back.scores, attr.scores)


def test_from_cache_basis_picks_and_orders_hooks(bridge):
    attr = attr_of(bridge, "grad")
    cache = dict(attr.to_cache(bridge).cache_dict, **{"blocks.0.hook_resid_post": torch.zeros(4, 6, 32)})
    with pytest.raises(RelPLensError, match="different widths"):
        from_cache(cache, bridge, ROWS)
    back = from_cache(cache, bridge, ROWS, basis="mlp_post")
    assert torch.equal(back.scores, attr.scores)
    two = from_cache(cache, bridge, ROWS, basis=["blocks.2.mlp.hook_post", "blocks.0.mlp.hook_post"])
    assert two.hook_names == ["blocks.2.mlp.hook_post", "blocks.0.mlp.hook_post"]
    assert torch.equal(two.scores[:, 0], attr.scores[:, 2]) and two.basis == "blocks.2.mlp.hook_post,blocks.0.mlp.hook_post"
    with pytest.raises(RelPLensError, match=r"no entry for hook 'blocks.0.hook_mlp_out' \(and 2 more\)"):
        from_cache(cache, bridge, ROWS, basis="mlp_out")


def _good(bridge):
    return dict(attr_of(bridge, "grad").to_cache(bridge).cache_dict)


def _with(cache, name, value):
    return {**cache, name: value}


BAD = {
    "unknown hook": (lambda c: {("blocks.1.mlp.hook_pots" if k == "blocks.1.mlp.hook_post" else k): v
                                for k, v in c.items()}, "did you mean"),
    "wrong width": (lambda c: {k: torch.zeros(4, 6, 47) for k in c}, "width 47 but its activation"),
    "mixed widths": (lambda c: _with(c, "blocks.1.mlp.hook_post", torch.zeros(4, 6, 47)), "different widths"),
    "batch mismatch": (lambda c: {k: v[:3] for k, v in c.items()}, "3 examples on their batch axis .* there are 4 prompts"),
    "pos mismatch": (lambda c: {k: v[:, :5] for k, v in c.items()}, "5 positions .* longest prompt has 6 tokens"),
    "nan": (lambda c: _with(c, "blocks.2.mlp.hook_post", c["blocks.2.mlp.hook_post"].index_put(
        (torch.tensor([1]), torch.tensor([2]), torch.tensor([3])), torch.tensor(float("nan")))),
        r"'blocks.2.mlp.hook_post' are not finite .*\[1, 2, 3\]"),
    "inf": (lambda c: _with(c, "blocks.0.mlp.hook_post", c["blocks.0.mlp.hook_post"] / 0), "not finite"),
    "no batch axis": (lambda c: {k: v[0] for k, v in c.items()}, r"expected \[batch, pos, d\]"),
    "not a tensor": (lambda c: _with(c, "blocks.0.mlp.hook_post", [[0.0]]), "must be a torch.Tensor"),
    "boolean": (lambda c: _with(c, "blocks.0.mlp.hook_post", torch.ones(4, 6, 48, dtype=torch.bool)), "real numbers"),
    "not a hook name": (lambda c: {0: v for v in c.values()}, "must be hook names"),
    "empty": (lambda c: {}, "empty"),
    "not a mapping": (lambda c: list(c.values()), "ActivationCache or a dict"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_from_cache_bad_input(bridge, case):
    make, message = BAD[case]
    cache = make(_good(bridge))
    calls = []
    handle = bridge.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises(RelPLensError, match=message):
            from_cache(cache, bridge, ROWS)
    finally:
        handle.remove()
    if case not in ("wrong width",):  # the width is the one check that needs a forward pass
        assert not calls, f"{case}: the model ran before the input was refused"


def test_from_cache_bad_options(bridge):
    good = _good(bridge)
    for kw, message in [(dict(padding_side="middle"), "padding_side"), (dict(method=""), "method"),
                        (dict(baseline="mean"), "baseline applies to unpaired data"),
                        (dict(metric="nope"), "unknown metric"), (dict(batch_size=0), "batch_size"),
                        (dict(prepend_bos=False), "prepend_bos=True")]:
        with pytest.raises(RelPLensError, match=message):
            from_cache(good, bridge, ROWS, **kw)
    with pytest.raises(RelPLensError, match="hook_z"):
        from_cache(good, bridge, ROWS, basis="blocks.0.attn.hook_z")


@given(batch=st.integers(1, 6), pos=st.integers(1, 9), width=st.integers(1, 64))
def test_from_cache_accepts_exactly_the_right_shape(bridge, batch, pos, width):
    cache = {name: torch.randn(batch, pos, width) for name in mlp_hooks(bridge)}
    if (batch, pos, width) == (4, 6, 48):
        assert from_cache(cache, bridge, ROWS).scores.shape == (4, 3, 6, 48)
    else:
        with pytest.raises(RelPLensError):
            from_cache(cache, bridge, ROWS)


# --- 4. the classic recipe on the shipped model ---------------------------------------------------------------
def classic_attribution_patching(model, row, names):
    """Attribution patching as TransformerLens users write it: the clean run's activations and, through backward
    hooks, its gradients of the logit difference; the corrupted run's activations from ``run_with_cache``;
    ``score = (corrupt − clean) · grad`` (the first-order change of the logit difference when the node takes its
    corrupted value: relp_lens' sign for paired data)."""
    clean_tokens, corrupt_tokens = model.to_tokens(row["clean_prefix"]), model.to_tokens(row["patch_prefix"])
    good, bad = model.to_single_token(row["clean_answer"]), model.to_single_token(row["patch_answer"])
    _, corrupt_cache = model.run_with_cache(corrupt_tokens, names_filter=names)
    clean_cache, grad_cache = {}, {}

    def save_act(name):
        def hook(act, hook):
            clean_cache[name] = act.detach()

        return hook

    def save_grad(name):
        def hook(grad, hook):
            grad_cache[name] = grad.detach()

        return hook

    def start_graph(embed, hook):  # load_model freezes the weights: the graph starts at the embeddings
        return embed.detach().requires_grad_(True)

    fwd = [("hook_embed", start_graph)] + [(n, save_act(n)) for n in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd, bwd_hooks=[(n, save_grad(n)) for n in names]):
        logits = model(clean_tokens)
        logit_diff = logits[0, -1, good] - logits[0, -1, bad]
        logit_diff.backward()
    return {n: ((corrupt_cache[n] - clean_cache[n]) * grad_cache[n])[0] for n in names}  # [pos, d_mlp]


@pytest.mark.slow
def test_grad_attribution_equals_the_classic_recipe(smollm):
    model = smollm
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()[:8]]
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(model.cfg.n_layers)]
    start = time.perf_counter()
    attr = attribute(model, rows, method="grad", progress=False)
    cache = attr.to_cache(model)
    recipes = [classic_attribution_patching(model, row, names) for row in rows]
    ours, theirs = [], []
    for i, recipe in enumerate(recipes):
        cols = attr.alignment.columns(attr.lengths[i])  # the prompt's tokens in the attribution's columns
        for name in names:
            ours.append(cache[name][i, cols].flatten())
            theirs.append(recipe[name].float().cpu().flatten())
    ours, theirs = torch.cat(ours), torch.cat(theirs)
    r = relp_lens.pearson(ours, theirs)
    print(f"classic recipe vs attribute(method='grad'): {ours.numel()} nodes, Pearson r = {r:.8f}, "
          f"max |diff| = {(ours - theirs).abs().max():.2e} ({time.perf_counter() - start:.1f} s)")
    assert r >= 0.999
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-3)
    # and the other way: the recipe's scores as an attribution select the same circuit
    recipe_cache = {n: torch.zeros(len(rows), attr.n_positions, model.cfg.d_mlp) for n in names}
    for i, recipe in enumerate(recipes):
        cols = attr.alignment.columns(attr.lengths[i])
        for n in names:
            recipe_cache[n][i, cols] = recipe[n].float().cpu()
    baseline = from_cache(recipe_cache, model, rows, method="recipe")
    assert baseline.correlation(attr) >= 0.999
    got = {(n.layer, n.pos, n.index) for n in select_top_k(baseline, model, 50).nodes}
    want = {(n.layer, n.pos, n.index) for n in select_top_k(attr, model, 50).nodes}
    assert len(got & want) >= 48
