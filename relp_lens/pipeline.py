"""``relp_lens.trace``: the whole pipeline of ``relp-lens trace`` as one library call.

    result = relp_lens.trace(model, build, held_out=held_out, k=100, edges=True)
    result.circuit.save("circuit.json")          # what `relp-lens trace --out circuit.json` writes
    print(result.summary())

The command line is parse → load the model → make or read the prompts → :func:`split_prompts` →
:func:`trace` → print and write files; a notebook runs the same steps with the same results (tested: the circuit
file is the same). Each step is also a function of its own (``attribute``, ``select_top_k``, ``attribute_edges``,
``attribute_io_edges``, ``attribute_head_splits``, ``group_neurons``, ``evaluate_circuit``); :func:`trace` calls
them in order:

1. check every option before any computation (:class:`TraceOptions`, ``__post_init__``), and tokenize the
   prompts once (token-level errors name their ``file:line``);
2. with answers, the task accuracy on the build prompts (a warning below 50%); ``only_correct`` keeps the
   prompts the model gets right, build and held-out;
3. attribute the build prompts (``reduce="mean"``: memory does not grow with the prompts);
4. select nodes: top ``k`` or ``|score| ≥ tau·|metric|``; optionally without always-on neurons;
5. with ``edges``: neuron → neuron edges on the first ``edge_prompts`` prompts, input/output edges where the
   basis and baseline allow them, edge pruning (``edge_keep``), influence pruning, head splits (``heads``);
6. with ``groups``: neuron groups (supernodes) on the first ``group_prompts`` prompts;
7. with held-out prompts: faithfulness and completeness by the circuit's ablation.

This module sits above the stages (it uses ``analysis``), beside :mod:`relp_lens.cli`.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from relp_lens.core import validate
from relp_lens.core.errors import RelPLensError
from relp_lens.core.options import ABLATIONS, BASELINES, AblationKind, Baseline

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from relp_lens.circuits.circuit import Circuit, Evaluation
    from relp_lens.core.attribution import Attribution
    from relp_lens.core.data import Prompts
    from relp_lens.core.tasks import TaskReport

#: the attribution methods trace() runs (exact patching is attribute()'s alone: one pass per node)
TraceMethod = Literal["relp", "grad", "ig"]
METHODS: tuple[str, ...] = get_args(TraceMethod)
# the built-in tasks: "agreement" (the nounpp-style pairs of relp_lens.core.tasks.agreement_rows) and the
# named sets of relp_lens.core.tasks.TASKS (the CLI spells them out to build its parser without torch)
TASK_NAMES = ("agreement", "simple", "nounpp", "rc", "within_rc", "capitals", "city_to_state",
              "state_to_capital", "addition", "antonyms")


@dataclass
class TraceOptions:
    """Every option of :func:`trace`, checked in ``__post_init__`` (before any computation).

    Args:
        method: attribution method: ``"relp"`` (default), ``"grad"`` (attribution patching) or ``"ig"``.
        basis: node basis (:data:`relp_lens.core.nodes.BASES`): ``"mlp_post"`` (neurons, default), ``"mlp_out"``,
            ``"attn_out"``, ``"resid"``, or a list of them.
        k: keep the top-``k`` nodes by ``|score|``; exactly one of ``k`` and ``tau``.
        tau: keep nodes with ``|score| ≥ tau·|metric|`` (the paper's 0.005).
        baseline: for unpaired prompts, what the scores compare against: ``"mean"`` (default) or ``"zero"``;
            paired prompts always use their patch prompts.
        aggregate_pos: nodes are neurons at all positions (summed over positions).
        ablation: how evaluation removes nodes: ``"mean"``, ``"zero"``, ``"counterfactual"``; default: the one
            consistent with the baseline.
        include_fixed: also select positions whose tokens every prompt shares (mean ablation cannot move them).
        exclude_always_on: leave out neurons active on almost every token of the package corpus.
        task: the task's name, recorded in the circuit (``None`` for your own data).
        source: where the prompts came from (a file name, ``"task:agreement"``), recorded in ``circuit.data``.
        edges: weigh neuron → neuron edges (and input/output edges where possible).
        edge_prompts: build prompts used for edges, head splits (the first ones).
        edge_keep: keep this fraction of edges by ``|weight|``, in (0, 1].
        influence_prune: ``(node_threshold, edge_threshold)`` fractions of influence to keep; needs ``edges``.
        heads: split the edges of the drawn graph over attention heads; needs ``edges`` and ``mlp_post``.
        graph_nodes: neurons in the drawn graph that ``heads`` splits (the strongest).
        groups: group the circuit's neurons (supernodes).
        group_prompts: build prompts used for ``groups`` (default 64, at least 2).
        only_correct: trace and evaluate on the prompts the model gets right (needs answers).
        batch_size: prompts per forward pass.
        prepend_bos: start every prompt with BOS; default: as the model's ``to_tokens`` does.
        progress: progress bars.
        verbose: print the pipeline's findings (accuracy, edges, groups, warnings), as ``relp-lens trace`` does.
    """

    method: TraceMethod = "relp"
    basis: str | Sequence[str] = "mlp_post"
    k: int | None = None
    tau: float | None = None
    baseline: Baseline = "mean"
    aggregate_pos: bool = False
    ablation: AblationKind | None = None
    include_fixed: bool = False
    exclude_always_on: bool = False
    task: str | None = None
    source: str | None = None
    edges: bool = False
    edge_prompts: int = 16
    edge_keep: float = 1.0
    influence_prune: tuple[float, float] | None = None
    heads: bool = False
    graph_nodes: int = 40
    groups: bool = False
    group_prompts: int | None = None
    only_correct: bool = False
    batch_size: int = 16
    prepend_bos: bool | None = None
    progress: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        _choice(self.method, METHODS, "method")
        _choice(self.baseline, BASELINES, "baseline")
        if self.ablation is not None:
            _choice(self.ablation, ABLATIONS, "ablation")
        for name in ("aggregate_pos", "include_fixed", "exclude_always_on", "edges", "heads", "groups",
                     "only_correct", "progress", "verbose"):
            if not isinstance(getattr(self, name), bool):
                raise RelPLensError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.prepend_bos is not None and not isinstance(self.prepend_bos, bool):
            raise RelPLensError(f"prepend_bos must be True, False or None, got {self.prepend_bos!r}")
        if (self.k is None) == (self.tau is None):
            raise RelPLensError("give exactly one of k (top-k nodes) or tau (score threshold)")
        if self.k is not None:
            self.k = validate.positive_int(self.k, "k")
        if self.tau is not None:
            self.tau = validate.finite_float(self.tau, "tau", low=0.0)
        self.edge_prompts = validate.positive_int(self.edge_prompts, "edge_prompts")
        self.edge_keep = validate.fraction(self.edge_keep, "edge_keep")
        self.graph_nodes = validate.positive_int(self.graph_nodes, "graph_nodes")
        self.batch_size = validate.positive_int(self.batch_size, "batch_size")
        if self.group_prompts is not None:
            self.group_prompts = validate.int_at_least(self.group_prompts, "group_prompts", 2)
        if self.influence_prune is not None:
            pair = list(self.influence_prune) if isinstance(self.influence_prune, (tuple, list)) else None
            if pair is None or len(pair) != 2:
                raise RelPLensError(f"influence_prune must be (node_threshold, edge_threshold), "
                                    f"got {self.influence_prune!r}")
            self.influence_prune = (validate.fraction(pair[0], "influence_prune node threshold"),
                                    validate.fraction(pair[1], "influence_prune edge threshold"))
        from relp_lens.core.nodes import basis_name  # here: importing this module (the CLI's parser) loads no torch

        neurons = basis_name(self.basis) == "mlp_post"
        for name, given in (("heads", self.heads), ("influence_prune", self.influence_prune is not None)):
            if given and not self.edges:
                raise RelPLensError(f"{name} needs edges=True (it works on the circuit's edges)")
            if given and not neurons:
                raise RelPLensError(f"{name} needs the mlp_post basis (neurons), not {basis_name(self.basis)!r}")
        if self.exclude_always_on and not neurons:
            raise RelPLensError(f"exclude_always_on needs the mlp_post basis (neurons), not "
                                f"{basis_name(self.basis)!r}")
        if self.group_prompts is not None and not self.groups:
            raise RelPLensError("group_prompts needs groups=True")
        if self.groups and self.k is not None and self.k < 2:
            raise RelPLensError(f"groups needs a circuit of at least 2 neurons, got k={self.k}")

    def check_prompts(self, prompts: Prompts) -> None:
        """The checks that need the data (not the model): what unpaired prompts cannot do.

        Args:
            prompts: the build prompts.

        Returns:
            None; a :class:`~relp_lens.core.errors.RelPLensError` naming the option otherwise.
        """
        if self.influence_prune is not None and not prompts.paired and self.baseline != "zero":
            raise RelPLensError("influence_prune needs input/output edges: paired data or baseline='zero'")
        if self.ablation == "counterfactual" and not prompts.paired:
            raise RelPLensError("counterfactual ablation needs paired data (patch prompts)")

    @property
    def edge_method(self) -> str:
        """The backward rule of edges, head splits and input/output edges: plain gradients for ``grad``,
        RelP's otherwise (IG has no edge counterpart)."""
        return "grad" if self.method == "grad" else "relp"


@dataclass
class TraceResult:
    """What :func:`trace` found.

    Args:
        circuit: the circuit with every annotation the options asked for (edges, ``io_edges``, ``heads``,
            ``groups``, ``evaluation``), its held-out prompts in ``data["eval_rows"]`` and each step's run
            statistics in ``stats``; ``circuit.save(path)`` writes what ``relp-lens trace --out`` writes.
        attribution: the build prompts' attribution (``reduce="mean"``: ``score_sum`` ``[layer, pos, node]``).
        build: the prompts the circuit was traced on (after ``only_correct``).
        held_out: the prompts it was evaluated on (after ``only_correct``); ``None`` without held-out prompts.
        task_report: accuracy on the build prompts before ``only_correct`` (``None`` without answers).
        options: the checked options.
        log: the lines ``verbose`` printed (also kept when not printing).
    """

    circuit: Circuit
    attribution: Attribution
    build: Prompts
    held_out: Prompts | None
    task_report: TaskReport | None
    options: TraceOptions
    log: list[str] = field(default_factory=list)

    @property
    def evaluation(self) -> Evaluation | None:
        """Faithfulness and completeness on the held-out prompts (``None`` without them)."""
        return self.circuit.evaluation

    @property
    def stats(self) -> dict[str, Any]:
        """Each step's run statistics (``circuit.stats``: ``"edges"``, ``"io_edges"``, ``"heads"``, ...)."""
        return self.circuit.stats

    def summary(self, k: int = 15) -> str:
        """The circuit's summary (top ``k`` nodes) after the pipeline's findings."""
        return "\n".join([*self.log, self.circuit.summary(k)])


def _choice(value: Any, choices: Sequence[str], name: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise RelPLensError(f"unknown {name} {value!r}; choose from {list(choices)}")


def split_prompts(prompts: Prompts, n_build: int, n_eval: int, seed: int = 0) -> tuple[Prompts, Prompts]:
    """A seeded build / held-out split, as ``relp-lens trace`` makes it (rows keep their ``file:line``).

    Args:
        prompts: a :class:`relp_lens.core.data.Prompts` (at least 2).
        n_build: at most this many build prompts.
        n_eval: held-out prompts; with fewer than ``n_build + n_eval`` prompts at most half are held out.
        seed: the shuffle's seed.

    Returns:
        ``(build, held_out)``, disjoint.
    """
    n_build, n_eval = validate.positive_int(n_build, "n_build"), validate.positive_int(n_eval, "n_eval")
    if len(prompts) < 2:
        raise RelPLensError(f"need at least 2 prompts to build and evaluate on separate data, got {len(prompts)}")
    order = list(range(len(prompts)))
    random.Random(validate.nonneg_int(seed, "seed")).shuffle(order)
    n_eval = min(n_eval, len(order) // 2) if len(order) < n_build + n_eval else n_eval
    return prompts.subset(order[n_eval:n_eval + n_build]), prompts.subset(order[:n_eval])


def task_prompts(model: HookedTransformer, task: str, n: int, seed: int = 0) -> Prompts:
    """The prompts of a built-in task under this model's tokenizer (filtered: one-token answers, equal
    clean/patch lengths), as ``relp-lens trace --task`` makes them.

    Args:
        model: the model whose tokenizer filters the prompts.
        task: one of :data:`TASK_NAMES`.
        n: prompts wanted (fewer may pass the filter; a note says so).
        seed: generation seed.

    Returns:
        A :class:`relp_lens.core.data.Prompts` of at least 2 prompts.
    """
    from relp_lens.core.data import Prompts

    _choice(task, TASK_NAMES, "task")
    n = validate.positive_int(n, "n")
    if task == "agreement":
        from relp_lens.core.tasks import agreement_rows

        rows = agreement_rows(model, n, seed=seed, simple_fraction=0.0)
    else:
        from relp_lens.core.tasks import load_task

        rows = load_task(model, task, n, seed)
    if len(rows) < 2:
        raise RelPLensError(f"task {task!r} gave only {len(rows)} prompts under this tokenizer")
    if len(rows) < n:
        print(f"note: task {task!r} has {len(rows)} prompts after filtering, fewer than the {n} asked for",
              file=sys.stderr)
    return Prompts.from_rows(rows)


def trace(model: HookedTransformer, prompts: Prompts | Sequence[dict], *,
          held_out: Prompts | Sequence[dict] | None = None,
          say: Callable[[str], None] | None = None, **options: Any) -> TraceResult:
    """Attribute, select, weigh edges, group and evaluate in one call: what ``relp-lens trace`` computes.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` (``relp_lens.load_model()``).
        prompts: the build prompts: a :class:`relp_lens.core.data.Prompts` or rows
            ``{clean_prefix, patch_prefix?, clean_answer?, patch_answer?}``.
        held_out: prompts to evaluate the circuit on (same form); ``None`` or empty: no evaluation.
        say: called with one line before each slow phase (the CLI prints them on stderr); default: nothing.
        **options: the fields of :class:`TraceOptions` (``method``, ``basis``, ``k`` or ``tau``, ``edges``,
            ``heads``, ``groups``, ``batch_size``, ...), all checked before any computation.

    Returns:
        A :class:`TraceResult`: the annotated circuit, the attribution, the prompts used, the task report.
    """
    import relp_lens
    from relp_lens.circuits.ablation import evaluate_circuit
    from relp_lens.circuits.edges import attribute_edges, prune_edges
    from relp_lens.circuits.selection import select_threshold, select_top_k
    from relp_lens.core import backends, splice
    from relp_lens.core.attribution import as_prompts
    from relp_lens.core.data import Prompts, tokenize
    from relp_lens.core.tasks import MIN_ACCURACY, only_correct, task_report

    # 1. options, inputs, tokens
    unknown = sorted(set(options) - set(TraceOptions.__dataclass_fields__))
    if unknown:
        raise RelPLensError(f"trace() got unknown option {unknown[0]!r}; options: "
                            f"{sorted(TraceOptions.__dataclass_fields__)}")
    opt = TraceOptions(**options)
    build = as_prompts(prompts)
    if held_out is not None and not isinstance(held_out, Prompts):
        held_out = list(held_out)  # any sequence of rows (a generator too)
    held = as_prompts(held_out) if held_out is not None and len(held_out) else None
    opt.check_prompts(build)
    backends.require_model(model)
    say = say or (lambda line: None)
    log: list[str] = []

    def note(line: str, warn: bool = False) -> None:
        log.append(("warning: " if warn else "") + line)
        if opt.verbose:
            print(("warning: " if warn else "") + line, file=sys.stderr if warn else sys.stdout)

    for part in (build, held):
        if part is not None:
            tokenize(model, part, prepend_bos=opt.prepend_bos)
    n_held = len(held) if held is not None else 0

    # 2. the task: how often the model is right; only_correct
    report = None
    if build.answers is not None:
        report = task_report(model, build, batch_size=opt.batch_size, warn=False, prepend_bos=opt.prepend_bos)
        note(f"{len(build)} build prompts, {n_held} held out; task {report}")
        if report.accuracy < MIN_ACCURACY:
            note(f"the model gets only {report.accuracy:.0%} of the build prompts right; a circuit for a "
                 f"behaviour the model does not have means little", warn=True)
        if opt.only_correct:
            build = only_correct(model, build, batch_size=opt.batch_size, prepend_bos=opt.prepend_bos, report=report)
            if held is not None:
                held = only_correct(model, held, batch_size=opt.batch_size, prepend_bos=opt.prepend_bos)
                n_held = len(held)
            note(f"only_correct: tracing on the {len(build)} build and evaluating on the {n_held} held-out "
                 f"prompts the model gets right")
    elif opt.only_correct:
        raise RelPLensError("only_correct needs answers (clean_answer) in the data")

    # 3. attribution
    say(f"attributing {len(build)} build prompts ({opt.method}, basis {opt.basis}) ...")
    attr = relp_lens.attribute(model, build, basis=opt.basis, method=opt.method, batch_size=opt.batch_size,
                               baseline=None if build.paired else opt.baseline, reduce="mean",
                               progress=opt.progress, prepend_bos=opt.prepend_bos)
    if attr.alignment.end_aligned:
        note(f"prompts differ in token length: positions count from the end (-1 = last token) after the "
             f"{attr.alignment.n_shared} token(s) every prompt starts with")

    # 4. selection
    exclude = None
    if opt.exclude_always_on:
        from relp_lens.analysis.cards import always_on_neurons

        say("finding always-on neurons over the package corpus ...")
        exclude = always_on_neurons(model)
        note(f"leaving out {len(exclude)} always-on neurons: " + ", ".join(f"L{l}/{i}" for l, i in exclude[:12])
             + (" …" if len(exclude) > 12 else ""))
    select = dict(aggregate_pos=opt.aggregate_pos, task=opt.task, ablation=opt.ablation,
                  include_fixed=True if opt.include_fixed else None, exclude_neurons=exclude)
    circuit = (select_top_k(attr, model, opt.k, **select) if opt.k is not None
               else select_threshold(attr, model, opt.tau, **select))
    if not circuit.nodes:
        raise RelPLensError("no node passes the selection (empty circuit); lower tau or raise k")
    if circuit.selection.get("excluded_positions"):
        note(f"left out positions {circuit.selection['excluded_positions']}: the same tokens in every prompt, "
             f"which {circuit.ablation} ablation cannot move (include_fixed to keep them)")
    held_rows = held.to_rows() if held is not None and len(held) else []
    circuit.data["eval_rows"] = held_rows
    circuit.data["source"] = opt.source if opt.source is not None else (
        f"task:{opt.task}" if opt.task is not None else "prompts")

    # 5. edges, input/output edges, pruning, head splits
    if opt.edges:
        edge_rows = build.subset(range(min(opt.edge_prompts, len(build))))
        say(f"weighing edges between {len(circuit)} nodes on {len(edge_rows)} prompts ...")
        circuit = attribute_edges(model, circuit, edge_rows, method=opt.edge_method, batch_size=opt.batch_size,
                                  progress=opt.progress)
        note(f"edges: {len(circuit.edges)} from {circuit.stats['edges'].backward_passes} backward passes "
             f"over {len(edge_rows)} prompts")
        features = all(splice.dictionary_at(model, h) is not None for h in circuit.hook_names)
        if (circuit.basis == "mlp_post" or features) and circuit.baseline in ("patch", "zero"):
            from relp_lens.circuits.io_edges import attribute_io_edges

            circuit = attribute_io_edges(model, circuit, edge_rows, method=opt.edge_method,
                                         batch_size=opt.batch_size, progress=opt.progress)
            io = circuit.io_edges
            unit = "feature" if features else "neuron"
            note(f"input/output edges: {int((io.input != 0).sum())} embedding → {unit}, {len(circuit)} {unit} → "
                 f"output, {int((io.direct != 0).sum())} embedding → output")
        else:
            note(f"no input/output edges: they need the mlp_post basis (or dictionary features) and paired data or "
                 f"the zero baseline (this circuit: {circuit.basis}, baseline {circuit.baseline})")
        if opt.edge_keep < 1:
            circuit = prune_edges(circuit, opt.edge_keep)
            circuit.data["eval_rows"] = held_rows
        if opt.influence_prune is not None:
            from relp_lens.circuits.pruning import influence_prune

            before = len(circuit)
            circuit = influence_prune(circuit, node_threshold=opt.influence_prune[0],
                                      edge_threshold=opt.influence_prune[1])
            note(f"influence pruning kept {len(circuit)} of {before} neurons and {len(circuit.edges)} neuron edges")
        if opt.heads:
            from relp_lens.circuits.heads import attribute_head_splits

            say(f"splitting the edges of the drawn graph (≤ {opt.graph_nodes} neurons) over attention heads ...")
            circuit = attribute_head_splits(model, circuit, edge_rows, method=opt.edge_method,
                                            batch_size=opt.batch_size, max_nodes=opt.graph_nodes,
                                            progress=opt.progress)
            top = ", ".join(f"{l}.{h} {w:+.3g}" for l, h, w in circuit.heads.totals[:5])
            note(f"head splits of {len(circuit.heads.edges)} edges; heads carrying the most weight: {top}")

    # 6. neuron groups
    if opt.groups:
        from relp_lens.analysis.groups import group_neurons, groups_of

        group_rows = build.subset(range(min(opt.group_prompts or 64, len(build)))).to_rows()
        say(f"grouping {len(circuit)} neurons on {len(group_rows)} prompts ...")
        circuit = group_neurons(model, circuit, group_rows, batch_size=opt.batch_size, progress=opt.progress)
        note(groups_of(circuit).summary())

    # 7. evaluation
    if held is not None and len(held):
        say(f"evaluating {len(circuit)} nodes on {len(held)} held-out prompts ({circuit.ablation} ablation) ...")
        circuit.evaluation = evaluate_circuit(model, circuit, held, batch_size=opt.batch_size, warn=False)
        if circuit.evaluation.verdict:
            note(circuit.evaluation.verdict, warn=True)
    return TraceResult(circuit=circuit, attribution=attr, build=build, held_out=held if held_rows else None,
                       task_report=report, options=opt, log=log)
