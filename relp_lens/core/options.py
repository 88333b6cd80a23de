"""The values each string option of the public API accepts: one ``Literal`` type per option, and its tuple.

Signatures are annotated with these types (so editors and type checkers know the choices, and the API
reference lists them); the tuples, read from the same types with :func:`typing.get_args`, are what the
run-time checks and error messages use. One place per fact: a new choice is added here and nowhere else.
This module imports nothing heavy (the CLI reads it without importing torch).
"""

from __future__ import annotations

from typing import Literal, get_args

#: Attribution methods of :func:`~relp_lens.attribute`: RelP, plain gradient × activation, integrated
#: gradients, exact activation patching.
Method = Literal["relp", "grad", "ig", "exact"]
METHODS: tuple[str, ...] = get_args(Method)

#: Methods of a circuit's edges, input/output edges and head splits, and of :func:`~relp_lens.gradients`.
GradientMethod = Literal["relp", "grad"]
GRADIENT_METHODS: tuple[str, ...] = get_args(GradientMethod)

#: Named metrics (a callable ``(logits, batch) -> [batch]`` is accepted wherever a metric is).
Metric = Literal["logit_diff", "logit", "logprob"]
METRICS: tuple[str, ...] = get_args(Metric)

#: Baselines of unpaired prompts (paired prompts use their patch run).
Baseline = Literal["zero", "mean"]
BASELINES: tuple[str, ...] = get_args(Baseline)

#: Baselines a circuit file records: its prompts' patch run, or one of the unpaired ones.
CircuitBaseline = Literal["patch", "zero", "mean"]
CIRCUIT_BASELINES: tuple[str, ...] = get_args(CircuitBaseline)

#: How nodes outside a circuit are ablated when it is evaluated.
AblationKind = Literal["mean", "zero", "counterfactual"]
ABLATIONS: tuple[str, ...] = get_args(AblationKind)

#: What :func:`~relp_lens.attribute` keeps of the per-example scores.
Reduce = Literal["none", "mean"]
REDUCTIONS: tuple[str, ...] = get_args(Reduce)

#: Which TransformerLens model class :func:`~relp_lens.load_model` builds.
Backend = Literal["auto", "hooked", "bridge"]
BACKENDS: tuple[str, ...] = get_args(Backend)

#: How :func:`~relp_lens.steer` changes a neuron's activation.
SteerMode = Literal["scale", "set", "add"]
STEER_MODES: tuple[str, ...] = get_args(SteerMode)

#: The subject-verb agreement sets of :func:`~relp_lens.core.tasks.agreement`.
AgreementSet = Literal["simple", "nounpp", "rc", "within_rc"]
AGREEMENT_SETS: tuple[str, ...] = get_args(AgreementSet)

#: Which side prompts of different lengths are padded on, for scores computed outside relp_lens.
PaddingSide = Literal["right", "left"]
PADDING_SIDES: tuple[str, ...] = get_args(PaddingSide)

#: How top-k selection ranks nodes: by |score|, or by how much a node carries the behaviour (the signed score:
#: ``−score`` for paired data, whose scores are ``∇m·(patch − clean)``; ``+score`` for unpaired data).
Rank = Literal["abs", "signed"]
RANKS: tuple[str, ...] = get_args(Rank)

#: What neuron groups may be made from.
GroupFeature = Literal["attribution", "activation", "edges"]
GROUP_FEATURES: tuple[str, ...] = get_args(GroupFeature)
