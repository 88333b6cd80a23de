"""Models split over several devices: every stage gives the one-device result, and no hook mixes devices.

This machine has one CPU and no GPU, so the split is simulated (:mod:`sim_devices`): the tensors are real CPU
tensors, each with a simulated device that ``Tensor.device`` reports, that moves copy between and that every ATen
op — forward and backward — checks, raising PyTorch's "Expected all tensors to be on the same device" error. A
HookedTransformer is split the way TransformerLens's ``n_devices`` splits it (its own forward moves the residual
stream to each block's device); a TransformerBridge the way Hugging Face ``device_map`` splits it (a pre-hook on
each decoder layer moves its inputs, as accelerate's ``AlignDevicesHook`` does).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import relp_lens
from helpers import AGREEMENT_ROWS, assert_same, hooks_left, tiny_hf_llama, tiny_llama, word_tokenizer
from relp_lens.core import backends
from sim_devices import simulated_devices, split_bridge, split_hooked

DEVICES = ["cuda:0", "cuda:1", "cuda:2"]  # one block per "GPU"; the CPU holds only what relp_lens gathers
FACTS = [dict(clean_prefix=r["clean_prefix"], clean_answer=r["clean_answer"]) for r in AGREEMENT_ROWS]
TEXTS = ["The keys to the cabinet are near the door", "The author near the doctors is here",
         "The parents of the doctor have keys"]


def _lists(x):
    """Tensors → nested lists, everything else as is. What relp_lens returns is gathered on the CPU already."""
    if isinstance(x, torch.Tensor):
        assert x.device == torch.device("cpu"), x.device
        return x.detach().double().tolist()
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    return x


def pipeline(model) -> dict:
    """Every stage that runs hooks on the model, reduced to numbers: attribution (RelP with and without the AH
    rule, gradient, integrated gradients, exact patching, the unpaired mean baseline, running means), the circuit,
    its edges, input/output edges, head splits, evaluation (mean and counterfactual ablation), steering, groups and
    group steering, probes, real-text cards, always-on neurons, comparison with exact patching, the edge-pruning
    sweep and the report's inputs (accuracy, faithfulness curve, cards)."""
    from relp_lens.analysis.cards import neuron_cards
    from relp_lens.analysis.corpus import context_index
    from relp_lens.circuits.io_edges import attribute_io_edges
    from relp_lens.views.report import report_inputs

    out = {}
    attr = relp_lens.attribute(model, AGREEMENT_ROWS, batch_size=2, progress=False)
    out["relp"] = attr.scores
    out["relp_metrics"] = [attr.metric_clean, attr.metric_ref]
    out["relp_ah"] = relp_lens.attribute(model, AGREEMENT_ROWS, rules=relp_lens.RelPConfig(attention=True),
                                         reduce="mean", progress=False).mean()
    out["grad"] = relp_lens.attribute(model, AGREEMENT_ROWS, method="grad", progress=False).scores
    out["ig"] = relp_lens.attribute(model, AGREEMENT_ROWS, method="ig", ig_steps=3, progress=False).scores
    out["attn_out"] = relp_lens.attribute(model, AGREEMENT_ROWS, basis="attn_out",
                                          progress=False).scores
    out["unpaired_mean"] = relp_lens.attribute(model, FACTS, baseline="mean", reduce="mean", progress=False).mean()
    exact_nodes = [node for node, _ in attr.top_k(4, everywhere=True)]
    out["exact"] = relp_lens.attribute(model, AGREEMENT_ROWS, method="exact", nodes=exact_nodes,
                                       progress=False).scores

    circuit = relp_lens.select_top_k(attr, model, 8)
    circuit = relp_lens.attribute_edges(model, circuit, AGREEMENT_ROWS, batch_size=2, progress=False)
    out["nodes"] = [[n.layer, n.pos, n.index, n.score] for n in circuit.nodes]
    out["edges"] = [[e.source, e.target, e.weight] for e in circuit.edges]
    full = attribute_io_edges(model, circuit, AGREEMENT_ROWS, progress=False)
    out["io"] = full.io_edges.to_dict()
    split = relp_lens.attribute_head_splits(model, full, AGREEMENT_ROWS, top=None, progress=False)
    out["heads"] = split.heads.to_dict()
    for ablation in ("mean", "counterfactual"):
        ev = relp_lens.evaluate_circuit(model, circuit, AGREEMENT_ROWS, ablation=ablation, warn=False)
        out[f"eval_{ablation}"] = [ev.faithfulness, ev.completeness]

    nodes = [(n.layer, None, n.index) for n in circuit.nodes[:3]]
    out["sweep"] = relp_lens.steering_sweep(model, ["The keys to the cabinet", "The parents"], nodes,
                                            [" are", " is"], factors=[-2.0, 0.0, 2.0])
    with torch.no_grad(), relp_lens.steer(model, nodes, 3.0):
        out["steered_logits"] = model(model.to_tokens("The doctor"))[0, -1].cpu()  # a model output: the user moves it

    grouped = relp_lens.group_neurons(model, circuit, AGREEMENT_ROWS, n_groups=2, n_seeds=1, n_subsets=1)
    out["groups"] = grouped.groups.to_dict()
    out["group_steering"] = relp_lens.group_steering(model, grouped, 1, ["The keys to the cabinet"],
                                                     [" are", " is"], factors=[0.0, 2.0], n_random=2)
    out["auroc"] = relp_lens.neuron_auroc(model, [r["clean_prefix"] for r in AGREEMENT_ROWS],
                                          [r["clean_answer"] == " are" for r in AGREEMENT_ROWS], progress=False)
    index = context_index(model, TEXTS, window=6, k=2, batch_size=2, cache=False, progress=False)
    cards = neuron_cards(model, [(n.layer, n.index) for n in circuit.nodes[:3]], prompts=["The doctors"],
                         corpus=index, k=2)
    out["cards"] = [[c.promoted, c.suppressed, c.task_activations, c.top_contexts, c.bottom_contexts, c.description]
                    for c in cards]
    out["always_on"] = relp_lens.always_on_neurons(model, TEXTS, quantile=0.9, min_fraction=0.5)
    out["direction"] = relp_lens.steering_direction(model, nodes, ["The doctor"], ["The doctors"])
    out["exact_r"] = relp_lens.compare_with_exact(model, AGREEMENT_ROWS, methods=("relp", "grad"), n_nodes=8,
                                                  progress=False).correlations
    out["pruning"] = [r.to_dict() for r in relp_lens.edge_pruning_sweep(model, full, AGREEMENT_ROWS,
                                                                          percents=(20, 100), progress=False)]
    inputs = report_inputs(model, attr, circuit, held_out=AGREEMENT_ROWS, sizes=(2, 8), n_cards=2)
    out["report"] = [inputs.accuracy, [r.to_dict() for r in inputs.curves], [c.promoted for c in inputs.cards]]
    return _lists(out)


@pytest.fixture(scope="module")
def unsplit_logits():
    model = tiny_llama()
    return model(model.to_tokens("The keys to the cabinet"))


@pytest.fixture
def split_llama(monkeypatch):
    """A tiny Llama split over DEVICES inside simulated devices; yields (model, sim, per_block)."""
    model = tiny_llama()
    ht = sys.modules[type(model).__module__]
    with simulated_devices() as sim:
        per_block = split_hooked(model, sim, DEVICES)
        monkeypatch.setattr(ht, "get_device_for_block_index", lambda i, cfg, device=None: per_block[i])
        yield model, sim, per_block


# -- the harness itself: it sees devices, moves values, and catches what two GPUs would refuse -----------------


@pytest.mark.hooked
def test_split_forward_crosses_devices_and_keeps_values(unsplit_logits, split_llama):
    model, sim, per_block = split_llama
    tokens = model.to_tokens("The keys to the cabinet")
    seen = {}
    hooks = [(f"blocks.{i}.mlp.hook_post", lambda x, hook: seen.setdefault(hook.layer(), x.device) and None)
             for i in range(3)]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert seen == {0: torch.device("cuda:0"), 1: torch.device("cuda:1"), 2: torch.device("cuda:2")}
    assert tokens.device == torch.device("cuda:0")  # to_tokens puts them on cfg.device
    assert logits.device == torch.device("cuda:2") and sim.crossings >= 2
    assert backends.W_U(model).device == torch.device("cuda:2")
    assert torch.equal(logits.cpu(), unsplit_logits)


@pytest.mark.hooked
def test_harness_refuses_a_forward_hook_that_mixes_devices(split_llama):
    model, _, _ = split_llama

    def on_cfg_device(x, hook):  # the classic bug: a tensor made on cfg.device, not next to the activation
        return x + torch.zeros(x.shape, device=model.cfg.device)

    with pytest.raises(RuntimeError, match="same device.*cuda:0 and cuda:1"):
        model.run_with_hooks(model.to_tokens("The doctor"), fwd_hooks=[("blocks.1.mlp.hook_post", on_cfg_device)])
    model.reset_hooks()
    fine = model.run_with_hooks(model.to_tokens("The doctor"), fwd_hooks=[(
        "blocks.1.mlp.hook_post", lambda x, hook: x + torch.zeros(x.shape, device=x.device))])
    assert fine.device == torch.device("cuda:2")


@pytest.mark.hooked
def test_harness_refuses_a_backward_hook_that_mixes_devices(split_llama):
    model, _, _ = split_llama

    def keep_grad(x, hook):
        x.register_hook(lambda g: g + torch.ones(g.shape))  # made on the CPU, the gradient is on cuda:2
        return x

    model.requires_grad_(True)
    try:
        logits = model.run_with_hooks(model.to_tokens("The doctor"),
                                      fwd_hooks=[("blocks.2.mlp.hook_post", keep_grad)])
        with pytest.raises(RuntimeError, match="same device.*cpu and cuda:2"):
            logits[0, -1, 3].backward()
    finally:
        model.requires_grad_(False)
        model.reset_hooks()


@pytest.mark.hooked
def test_harness_refuses_what_pytorch_refuses_across_devices(split_llama):
    """Beyond elementwise ops, a 0-dim CPU tensor may not join a GPU tensor (stack, matmul); CPU indices may."""
    model, _, _ = split_llama
    x = model(model.to_tokens("The doctor"))[0, -1]  # [d_vocab] on cuda:2
    assert (x * torch.tensor(2.0)).device == x.device  # elementwise: a CPU scalar is fine
    assert x[torch.tensor([0, 3])].shape == (2,)  # CPU index tensor: fine
    with pytest.raises(RuntimeError, match="same device"):
        torch.stack([x[0], torch.tensor(1.0)])
    with pytest.raises(RuntimeError, match="same device"):
        x @ torch.ones(x.shape[0])


@pytest.mark.hooked
def test_harness_refuses_numpy_of_a_gpu_tensor(split_llama):
    model, _, _ = split_llama
    logits = model(model.to_tokens("The doctor"))
    with pytest.raises(TypeError, match="cuda:2"):
        logits.numpy()
    with pytest.raises(TypeError, match="cuda:2"):
        np.asarray(logits)  # what sklearn, plotly and numpy code do with a tensor
    assert logits.cpu().numpy().shape == tuple(logits.shape)


# -- relp_lens on split models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_device():
    return pipeline(tiny_llama())


@pytest.mark.hooked
def test_every_stage_on_a_split_hooked_transformer_equals_one_device(split_llama, one_device):
    model, sim, _ = split_llama
    got = pipeline(model)
    assert_same(one_device, got)
    assert one_device["edges"] and one_device["io"] and one_device["groups"]
    assert sim.crossings > 50 and sim.checked_ops > 10_000  # it did run split, op by op


def tiny_bridge():
    return backends.wrap_hf_model(tiny_hf_llama(), word_tokenizer(), "tiny-llama")


@pytest.fixture(scope="module")
def bridge_one_device():
    return pipeline(tiny_bridge())


def test_every_stage_on_a_split_bridge_equals_one_device(bridge_one_device):
    """TransformerLens 4's path to big models: a Hugging Face model dispatched over devices, then wrapped."""
    bridge = tiny_bridge()
    with simulated_devices() as sim:
        per_block = split_bridge(bridge, sim, DEVICES)
        try:
            seen = {}
            hooks = [(f"blocks.{i}.mlp.hook_post", lambda x, hook: seen.setdefault(hook.name, x.device) and None)
                     for i in range(3)]
            tokens = bridge.to_tokens("The doctor").cpu()
            logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
            assert list(seen.values()) == per_block and logits.device == torch.device("cpu")  # io_same_device
            got = pipeline(bridge)
        finally:
            for handle in sim.handles:
                handle.remove()
    assert_same(bridge_one_device, got)
    assert bridge_one_device["edges"] and bridge_one_device["heads"]
    assert sim.crossings > 50 and hooks_left(bridge) == []
