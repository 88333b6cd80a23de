"""circuit-tracer's side of ``benchmarks/peers.py``, run by circuit-tracer's own interpreter.

circuit-tracer 0.5.0 pins ``transformers<=4.57.3`` (relp_lens' environments have 5.x), so it lives in a virtual
environment of its own (``/tmp/venv-ct``: ``pip install -c constraints circuit-tracer==0.5.0 gguf`` with
``torch==2.13.0``, ``transformers<=4.57.3``, ``nnsight==0.6.1``); ``benchmarks/peers.py`` starts this script
there, one process at a time. It imports nothing from relp_lens. Subcommands:

1. ``prepare``: the shipped SmolLM2-135M-Instruct GGUF file as a local Hugging Face folder (transformers' GGUF
   loader, dequantized to float32; config saved without the GGUF quantization mark, weights with
   ``save_pretrained``), and the trained sparsify skip transcoders (``layers.L.mlp``: TopK, k = 32, 4608 latents)
   written in circuit-tracer's on-disk format: ``config.yaml`` (``model_kind: transcoder_set``,
   ``feature_input_hook: mlp.hook_in``, ``feature_output_hook: mlp.hook_out``, ``transcoders``: the layer files;
   ``activation: topk`` and ``k``, which relp_lens reads and circuit-tracer ignores) and ``layer_{i}.safetensors``
   (``W_enc [d_sae, d_in]``, ``b_enc``, ``W_dec [d_sae, d_out]``, ``b_dec``, ``W_skip [d_out, d_in]``). Then tries
   circuit-tracer's TransformerLens backend on the local folder and records how it fails (it needs a model name
   TransformerLens knows).
2. ``run``: loads the transcoders with circuit-tracer's own config loader
   (``circuit_tracer.utils.hf_utils.load_transcoders``), which builds a ReLU for a file without a JumpReLU
   threshold; each layer's activation is then set to circuit-tracer's ``TopK(k)`` (its loaders cannot express
   TopK). Loads ``ReplacementModel`` with the nnsight backend from the local folder, optionally writes the
   check tensors (``--dump``: the MLP inputs on the prompt, the transcoders' latents and reconstructions on
   them, the logits), then times ``circuit_tracer.attribute`` ``--repeats`` times for each ``--nodes`` (``max_feature_nodes``) and
   writes a JSON file.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import traceback
from pathlib import Path

from peers import versions  # stdlib only at import: safe in circuit-tracer's environment

LAYER_FILE = "layer_{}.safetensors"


CT_PACKAGES = ("circuit-tracer", "torch", "transformers", "nnsight", "transformer-lens", "safetensors")


def prepare(args) -> dict:
    import torch
    import yaml
    from safetensors.torch import load_file, save_file

    out: dict = {}
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = Path(args.gguf)
        t0 = time.perf_counter()
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if getattr(hf.config, "quantization_config", None) is not None:  # dequantized already: drop the mark
            del hf.config.quantization_config
        if hasattr(hf, "hf_quantizer"):
            hf.hf_quantizer = None
        hf.save_pretrained(str(model_dir))
        tok.save_pretrained(str(model_dir))
        out["model_dir_made_s"] = round(time.perf_counter() - t0, 1)
    out["model_dir"] = str(model_dir)

    tc_dir = Path(args.transcoders_dir)
    if not (tc_dir / "config.yaml").is_file():
        src = Path(args.sparsify)
        files, k = [], None
        tc_dir.mkdir(parents=True, exist_ok=True)
        layer = 0
        while (src / f"layers.{layer}.mlp").is_dir():
            folder = src / f"layers.{layer}.mlp"
            cfg = json.loads((folder / "cfg.json").read_text())
            if cfg.get("activation", "topk") != "topk" or not cfg.get("transcode") or not cfg.get("skip_connection"):
                raise SystemExit(f"{folder}: expected a sparsify TopK skip transcoder, got {cfg}")
            if k is not None and cfg["k"] != k:
                raise SystemExit(f"{folder}: k {cfg['k']} differs from layer 0's {k}")
            k = cfg["k"]
            t = load_file(str(folder / "sae.safetensors"))
            # sparsify: encoder = nn.Linear(d_in, d_sae) (weight [d_sae, d_in]), W_dec [d_sae, d_out],
            # skip x @ W_skip.mT (W_skip [d_out, d_in]); circuit-tracer: F.linear(x, W_enc, b_enc),
            # f @ W_dec + b_dec, x @ W_skip.T: the same layouts
            layer_t = {"W_enc": t["encoder.weight"].contiguous(), "b_enc": t["encoder.bias"].contiguous(),
                       "W_dec": t["W_dec"].contiguous(), "b_dec": t["b_dec"].contiguous(),
                       "W_skip": t["W_skip"].contiguous()}
            path = tc_dir / LAYER_FILE.format(layer)
            save_file(layer_t, str(path))
            files.append(str(path.resolve()))
            layer += 1
        if not files:
            raise SystemExit(f"{src}: no layers.L.mlp folders")
        config = {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
                  "feature_output_hook": "mlp.hook_out", "activation": "topk", "k": k, "transcoders": files}
        (tc_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        out["transcoders_made"] = len(files)
    out["transcoders_dir"] = str(tc_dir)

    # circuit-tracer's TransformerLens backend on the local folder: the documented entry point
    out["transformerlens_backend"] = try_transformerlens_backend(args)
    return out


def load_transcoder_set(tc_dir: Path):
    """The transcoder set through circuit-tracer's own config loader, with its TopK activation set per layer."""
    import yaml
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.utils.hf_utils import load_transcoders

    config = yaml.safe_load((tc_dir / "config.yaml").read_text())
    config["scan"] = f"local:{tc_dir}"
    transcoders = load_transcoders(config, device="cpu", lazy_encoder=False, lazy_decoder=False)
    for tc in transcoders:  # circuit-tracer's file loaders build ReLU or JumpReLU only; these are TopK
        tc.activation_function = TopK(int(config["k"]))
    return transcoders, config


def try_transformerlens_backend(args) -> dict:
    from circuit_tracer import ReplacementModel

    transcoders, _ = load_transcoder_set(Path(args.transcoders_dir))
    try:
        ReplacementModel.from_pretrained_and_transcoders(args.model_dir, transcoders, backend="transformerlens",
                                                         device="cpu")
    except Exception as e:  # record exactly where it stops
        tb = traceback.extract_tb(e.__traceback__)
        frames = [f"{Path(f.filename).as_posix().split('site-packages/')[-1]}:{f.lineno} ({f.name})" for f in tb]
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}", "raised_at": frames[-1],
                "frames": frames[-4:]}
    return {"ok": True}


def run(args) -> dict:
    import torch
    from nnsight import save
    from circuit_tracer import ReplacementModel, attribute

    torch.manual_seed(0)
    t0 = time.perf_counter()
    transcoders, config = load_transcoder_set(Path(args.transcoders_dir))
    model = ReplacementModel.from_pretrained_and_transcoders(args.model_dir, transcoders, backend="nnsight",
                                                             device=torch.device("cpu"), dtype=torch.float32)
    load_s = time.perf_counter() - t0
    tokens = torch.tensor(json.loads(args.tokens), dtype=torch.long)
    answer = int(args.answer)
    out: dict = {"load_s": round(load_s, 2), "backend": "nnsight", "tokens": tokens.tolist(),
                 "answer_id": answer, "k": config["k"], "torch_threads": torch.get_num_threads()}

    if args.dump:
        with torch.no_grad(), model.trace(tokens):
            xs, ys = [], []
            for loc_in, loc_out in zip(model.feature_input_locs, model.feature_output_locs):  # in model order
                xs.append(loc_in.output)
                ys.append(loc_out.output)
            x_in = save(torch.cat(xs, dim=0))
            y_out = save(torch.cat(ys, dim=0))
            logits = save(model.output.logits)
        with torch.no_grad():
            acts = torch.stack([tc.encode(x_in[i]) for i, tc in enumerate(transcoders)])
            recon = torch.stack([tc.decode(acts[i], x_in[i]) for i, tc in enumerate(transcoders)])
        torch.save({"mlp_in": x_in.detach().clone(), "mlp_out": y_out.detach().clone(), "acts": acts,
                    "recon": recon, "logits": logits.detach()[0].clone()}, args.dump)
        out["dump"] = args.dump

    targets = torch.tensor([answer])
    out["runs"] = {}
    for nodes in [int(n) for n in args.nodes.split(",")]:
        runs = []
        for _ in range(args.repeats):
            # verbose=True: attribute logs its phase times through a StreamHandler it makes on sys.stderr (and
            # removes after); keep them by pointing sys.stderr at a buffer for the call
            buf, real = io.StringIO(), sys.stderr
            sys.stderr = buf
            try:
                t0 = time.perf_counter()
                graph = attribute(tokens, model, attribution_targets=targets, max_feature_nodes=nodes,
                                  batch_size=args.batch_size, verbose=True)
                seconds = time.perf_counter() - t0
            finally:
                sys.stderr = real
            log = [line.strip() for line in buf.getvalue().replace("\r", "\n").splitlines()]
            log = [r for r in log if "completed" in r or r.startswith("Found") or r.startswith("Will include")]
            runs.append({"seconds": round(seconds, 3), "log": log})
        out["runs"][str(nodes)] = {
            "calls": runs, "n_active_features": int(graph.active_features.shape[0]),
            "n_selected_features": int(graph.selected_features.numel()),
            "adjacency_shape": list(graph.adjacency_matrix.shape), "n_logit_targets": len(graph.logit_targets),
            "logit_probability": float(graph.logit_probabilities[0])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["prepare", "run"])
    ap.add_argument("--gguf")
    ap.add_argument("--sparsify")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--transcoders-dir", required=True)
    ap.add_argument("--tokens", help="JSON list of token ids (with the BOS relp_lens prepends)")
    ap.add_argument("--answer", help="the answer's token id")
    ap.add_argument("--nodes", default="256", help="max_feature_nodes: one value or a comma-separated list")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dump", help="write the check tensors here (torch.save)")
    ap.add_argument("--out-json", required=True)
    args = ap.parse_args()
    result = prepare(args) if args.command == "prepare" else run(args)
    result["versions"] = versions(CT_PACKAGES)
    Path(args.out_json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
