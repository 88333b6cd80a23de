"""Run by tests/test_distributed.py under ``torchrun``: the same computations as a single process, with
``relp_lens.data_parallel()``; rank 0 writes what the test compares (atomically)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import relp_lens  # noqa: E402
from relp_lens.core import distributed as dp  # noqa: E402
from relp_lens.core.files import write_json_atomic  # noqa: E402


def compute(model, rows, held_out, facts):
    """Everything the data-parallel path combines: attribution (mean and per-example), edges, input/output
    edges, head splits, groups' per-prompt profiles, the real-text context index (its top and bottom values: tied
    values may come from either of two contexts), evaluation (mean and counterfactual ablation), the unpaired
    mean baseline."""
    from relp_lens.analysis.corpus import context_index
    from relp_lens.analysis.groups import node_profiles
    from relp_lens.circuits.io_edges import attribute_io_edges

    attr = relp_lens.attribute(model, rows, reduce="mean", batch_size=2, progress=False)
    per_example = relp_lens.attribute(model, rows, batch_size=2, progress=False)
    circuit = relp_lens.select_top_k(attr, model, 10)
    circuit = relp_lens.attribute_edges(model, circuit, rows, batch_size=2, progress=False)
    ev = relp_lens.evaluate_circuit(model, circuit, held_out, batch_size=2, warn=False)
    cf = relp_lens.evaluate_circuit(model, circuit, held_out, batch_size=2, ablation="counterfactual", warn=False)
    unpaired = relp_lens.attribute(model, facts, baseline="mean", reduce="mean", batch_size=2, progress=False)
    full = attribute_io_edges(model, circuit, rows, batch_size=2, progress=False)
    io = full.io_edges
    heads = relp_lens.attribute_head_splits(model, full, rows, batch_size=2, top=None, progress=False).heads
    profile_scores, profile_acts = node_profiles(model, circuit, rows, batch_size=2)
    texts = [r["clean_prefix"] + r["clean_answer"] + " near the cabinets" for r in rows + held_out]
    index = context_index(model, texts, window=5, k=3, batch_size=2, cache=False, progress=False)
    return dict(nodes=[[n.layer, n.pos, n.index, n.score] for n in circuit.nodes],
                edges=[[e.source, e.target, e.weight] for e in circuit.edges],
                mean=attr.mean().nan_to_num(0).flatten().tolist()[:5000],
                per_example=per_example.scores.flatten()[::97].tolist(),
                metric_clean=attr.metric_clean.tolist(), metric_ref=attr.metric_ref.tolist(),
                counts=attr.counts.tolist(), faithfulness=ev.faithfulness, completeness=ev.completeness,
                cf_faithfulness=cf.faithfulness, unpaired=unpaired.mean().nan_to_num(0).flatten()[::31].tolist(),
                io=[io.input.flatten().tolist(), io.output.tolist(), io.direct.tolist(), io.metric,
                    io.target_output.flatten().tolist(), io.target_direct.flatten().tolist()],
                heads=[[key, split.residual, [list(h) for h in split.heads]] for key, split in heads.edges.items()],
                head_totals=[list(t) for t in heads.totals], profiles=[profile_scores.tolist(), profile_acts.tolist()],
                contexts=[index.top_values.flatten().tolist(), index.bottom_values.flatten().tolist()],
                contexts_found=bool((index.top_at >= 0).all() and (index.bottom_at >= 0).all()))


def data():
    from helpers import AGREEMENT_ROWS, tiny_llama

    torch.manual_seed(0)
    model = tiny_llama()
    rows = AGREEMENT_ROWS * 2  # prompts of several lengths: end-aligned positions
    held_out = AGREEMENT_ROWS
    facts = [dict(clean_prefix=r["clean_prefix"], clean_answer=r["clean_answer"]) for r in AGREEMENT_ROWS]
    return model, rows, held_out, facts


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    model, rows, held_out, facts = data()
    with dp.data_parallel() as where:
        if mode == "fail" and where["rank"] == 1:
            import relp_lens.core.attribution as attribution

            def broken(*args, **kwargs):
                raise ValueError("boom on purpose")

            attribution._grad_batch = broken
        result = compute(model, rows, held_out, facts)
        result["world"] = where["world"]
        if dp.is_writer():
            write_json_atomic(out, result)


if __name__ == "__main__":
    main()
