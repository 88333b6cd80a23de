"""The ``relp-lens`` command line: trace circuits and evaluate them, in batch.

    relp-lens trace --task agreement --k 100 --out circuit.json
    relp-lens trace --data pairs.jsonl --basis mlp_out --tau 0.005 --edges --out circuit.json
    relp-lens evaluate circuit.json --sweep 10,30,100

``trace``:
1. load the model (shipped SmolLM2 by default, or ``--gguf FILE``);
2. load prompts (a built-in task, or a JSONL file of {clean_prefix, patch_prefix, clean_answer,
   patch_answer}); split them into a build set and a held-out evaluation set;
3. report task accuracy on the build set, warn when the model mostly fails the task;
4. attribute (``--method``, ``--basis``), select nodes (``--k`` or ``--tau``), evaluate faithfulness and
   completeness by mean ablation on the held-out set, optionally weigh edges (``--edges``) and prune them;
5. write the circuit JSON atomically and print a summary; with ``--report FILE.html`` also one self-contained
   HTML report (heatmap, circuit graph, faithfulness curves on the held-out set, neuron cards).

``evaluate`` recomputes faithfulness/completeness of a circuit file on held-out data (the split stored
with the circuit, or ``--data``), optionally for the circuit's top-k sub-circuits (``--sweep``).
Errors print one line naming the problem and exit with status 2; no partial file is left behind.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

from relp_lens.errors import RelPLensError

from relp_lens.tasks import TASKS as _TASKS

TASKS = ("agreement", *_TASKS)  # "agreement": the built-in nounpp-style pairs of relp_lens.agreement


def _model(args):
    from relp_lens.models import load_model

    return load_model(args.model, gguf_path=args.gguf)


def _task_rows(model, task: str, n: int, seed: int) -> list[dict]:
    if task == "agreement":
        from relp_lens.agreement import agreement_rows

        rows = agreement_rows(model, n, seed=seed, simple_fraction=0.0)
    else:
        from relp_lens.tasks import load_task

        rows = load_task(model, task, n, seed)
    if len(rows) < 2:
        raise RelPLensError(f"task {task!r} gave only {len(rows)} prompts under this tokenizer")
    if len(rows) < n:
        print(f"note: task {task!r} has {len(rows)} prompts after filtering, fewer than the {n} asked for",
              file=sys.stderr)
    return rows


def _load_rows(args, model, n_total: int) -> tuple[list[dict], str | None]:
    from relp_lens.data import Prompts

    if args.data:
        rows = Prompts.from_jsonl(args.data).to_rows()
        return rows, None
    return _task_rows(model, args.task, n_total, args.seed), args.task


def _split(rows: list[dict], n_build: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    if len(rows) < 2:
        raise RelPLensError(f"need at least 2 prompts to build and evaluate on separate data, got {len(rows)}")
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_eval = min(n_eval, len(rows) // 2) if len(rows) < n_build + n_eval else n_eval
    return rows[n_eval:n_eval + n_build], rows[:n_eval]


def cmd_trace(args) -> int:
    import relp_lens
    from relp_lens.ablation import evaluate_circuit
    from relp_lens.circuit import select_threshold, select_top_k
    from relp_lens.edges import attribute_edges, prune_edges

    if (args.k is None) == (args.tau is None):
        raise RelPLensError("give exactly one of --k N or --tau T")
    out = Path(args.out)
    for flag, path in (("--out", out), ("--report", args.report), ("--export-circuit-tracer", args.export_circuit_tracer)):
        if path is not None and Path(path).is_dir():
            raise RelPLensError(f"{flag} {path} is a folder; give a file name")
    model = _model(args)
    rows, task = _load_rows(args, model, args.n_prompts + args.n_eval)
    build, held_out = _split(rows, args.n_prompts, args.n_eval, args.seed)
    progress = not args.no_progress
    attr = relp_lens.attribute(model, build, basis=args.basis, method=args.method, batch_size=args.batch_size,
                               progress=progress)
    accuracy = None
    if attr.prompts.answers is not None:
        from relp_lens.tasks import task_report

        report = task_report(model, attr.prompts, batch_size=args.batch_size, warn=False)
        accuracy = str(report)
        print(f"{len(build)} build prompts, {len(held_out)} held out; task {report}")
        if report.accuracy < 0.5:
            print(f"warning: the model gets only {report.accuracy:.0%} of the build prompts right; a circuit "
                  f"for a behaviour the model does not have means little", file=sys.stderr)
    circuit = (select_top_k(attr, model, args.k, aggregate_pos=args.aggregate_pos, task=task) if args.k is not None
               else select_threshold(attr, model, args.tau, aggregate_pos=args.aggregate_pos, task=task))
    if not circuit.nodes:
        raise RelPLensError("no node passes the selection (empty circuit); lower --tau or raise --k")
    circuit.data["eval_rows"] = held_out
    circuit.data["source"] = str(args.data) if args.data else f"task:{task}"
    if args.edges:
        edge_rows = build[: args.edge_prompts]
        circuit, stats = attribute_edges(model, circuit, edge_rows, method="grad" if args.method == "grad" else "relp",
                                         batch_size=args.batch_size, progress=progress)
        print(f"edges: {len(circuit.edges)} from {stats.backward_passes} backward passes "
              f"over {len(edge_rows)} prompts")
        if args.edge_keep < 1:
            circuit = prune_edges(circuit, args.edge_keep)
            circuit.data["eval_rows"] = held_out
    if held_out:
        circuit.evaluation = evaluate_circuit(model, circuit, held_out, batch_size=args.batch_size)
    circuit.save(out)
    print(circuit.summary(args.show, str_tokens=attr.str_tokens[0]))
    print(f"wrote {out}")
    if args.export_circuit_tracer:
        from relp_lens.files import write_json_atomic

        graph = circuit.to_circuit_tracer(attr.str_tokens[0], prompt=build[0]["clean_prefix"])
        write_json_atomic(args.export_circuit_tracer, graph)
        print(f"wrote {args.export_circuit_tracer} (circuit-tracer graph)")
    if args.report:
        from relp_lens.report import report_inputs, write_report

        inputs = report_inputs(model, attr, circuit, held_out=held_out, task=circuit.data["source"],
                               n_cards=args.report_cards, accuracy=accuracy, batch_size=args.batch_size,
                               progress=progress)
        write_report(args.report, model, attr, circuit, inputs=inputs)
        print(f"wrote {args.report} (self-contained HTML report; open it in a browser)")
    return 0


def cmd_evaluate(args) -> int:
    from relp_lens.ablation import evaluate_circuit
    from relp_lens.circuit import Circuit
    from relp_lens.data import Prompts

    circuit = Circuit.load(args.circuit)  # validate before the (slow) model load
    if not circuit.nodes:
        raise RelPLensError(f"{args.circuit}: the circuit is empty")
    sizes = _parse_sizes(args.sweep) if args.sweep else []
    model = _model(args)
    circuit.check_model(model)
    if args.data:
        rows = Prompts.from_jsonl(args.data).to_rows()[: args.n_eval]
    elif circuit.data.get("eval_rows"):
        rows = circuit.data["eval_rows"][: args.n_eval]
    else:
        raise RelPLensError(f"{args.circuit} stores no held-out prompts; pass --data FILE.jsonl")
    ev = evaluate_circuit(model, circuit, rows, batch_size=args.batch_size)
    print(f"{len(circuit)} nodes on {ev['n_prompts']} held-out prompts: faithfulness {ev['faithfulness']:+.3f}, "
          f"completeness {ev['completeness']:+.3f}  (F(M) {ev['f_model']:+.3f}, F(∅) {ev['f_empty']:+.3f})")
    if sizes:
        ranked = sorted(circuit.nodes, key=lambda n: -abs(n.score))
        print(f"{'k':>6s} {'faithfulness':>13s} {'completeness':>13s}")
        for k in sizes:
            sub = replace(circuit, nodes=ranked[:k], edges=[])
            r = evaluate_circuit(model, sub, rows, batch_size=args.batch_size)
            print(f"{len(sub):6d} {r['faithfulness']:+13.3f} {r['completeness']:+13.3f}")
    return 0


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RelPLensError(f"--sweep takes comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise RelPLensError(f"--sweep sizes must be positive integers, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relp-lens", description="RelP circuit tracing on the MLP-neuron basis.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run `relp-lens COMMAND --help` for each command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_opts(sp):
        sp.add_argument("--model", default="smollm2-135m", help="shipped model name (default: smollm2-135m)")
        sp.add_argument("--gguf", default=None, help="path of a Llama-architecture GGUF file instead")
        sp.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default 16)")

    t = sub.add_parser("trace", help="build a circuit and write it as JSON",
                       description="Attribute, select nodes, evaluate on held-out prompts, write the circuit JSON.")
    model_opts(t)
    src = t.add_mutually_exclusive_group()
    src.add_argument("--task", default="agreement", choices=TASKS, metavar="TASK",
                     help=f"built-in task: {', '.join(TASKS)} (default: agreement)")
    src.add_argument("--data", default=None, help="JSONL of {clean_prefix, patch_prefix, clean_answer, patch_answer}")
    t.add_argument("--basis", default="mlp_post", help="node basis: mlp_post (neurons), mlp_out, attn_out, "
                   "resid_pre, resid_post, or a hook name / {L} template (default: mlp_post)")
    t.add_argument("--method", default="relp", choices=("relp", "grad", "ig"), help="attribution method (default relp)")
    t.add_argument("--k", type=int, default=None, help="keep the top-k nodes by |score|")
    t.add_argument("--tau", type=float, default=None, help="keep nodes with |score| >= tau * |metric| (paper: 0.005)")
    t.add_argument("--aggregate-pos", action="store_true", help="nodes are neurons at all positions")
    t.add_argument("--n-prompts", type=int, default=300, help="prompts to build the circuit on (default 300)")
    t.add_argument("--n-eval", type=int, default=40, help="held-out prompts to evaluate on (default 40)")
    t.add_argument("--seed", type=int, default=0, help="data generation and split seed")
    t.add_argument("--edges", action="store_true", help="also weigh edges between circuit nodes")
    t.add_argument("--edge-prompts", type=int, default=16, help="prompts used for edges (default 16)")
    t.add_argument("--edge-keep", type=float, default=1.0, help="keep this fraction of edges (top |weight|)")
    t.add_argument("--out", default="circuit.json", help="circuit JSON to write (default circuit.json)")
    t.add_argument("--export-circuit-tracer", default=None, metavar="FILE", help="also write circuit-tracer graph JSON")
    t.add_argument("--report", default=None, metavar="FILE.html",
                   help="also write a self-contained HTML report (plots, curves, neuron cards)")
    t.add_argument("--report-cards", type=int, default=12, help="neuron cards in the report (default 12)")
    t.add_argument("--show", type=int, default=15, help="top nodes to print")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.set_defaults(func=cmd_trace)

    e = sub.add_parser("evaluate", help="faithfulness/completeness of a circuit file",
                       description="Mean-ablation faithfulness and completeness of CIRCUIT on held-out prompts.")
    e.add_argument("circuit", help="circuit JSON written by `relp-lens trace`")
    model_opts(e)
    e.add_argument("--data", default=None, help="JSONL of held-out prompts (default: the split stored in the circuit)")
    e.add_argument("--n-eval", type=int, default=40, help="at most this many held-out prompts (default 40)")
    e.add_argument("--sweep", default=None, metavar="K1,K2,...", help="also evaluate the top-k sub-circuits")
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("n_prompts", "n_eval", "batch_size", "edge_prompts"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            print(f"relp-lens: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except (RelPLensError, FileNotFoundError) as e:
        print(f"relp-lens: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
