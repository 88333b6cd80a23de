"""Neurons vs dictionary features (the paper's RQ1): how many nodes a circuit needs for faithfulness 0.8.

For each agreement set (the pairs of ``paper_reproduction.py``: same seed, build and held-out sizes):

1. for each basis — ``mlp_post`` (neurons), ``mlp_out``, and each dictionary family trained for the model
   (``benchmarks/train_dictionaries.py``: SAEs on ``hook_mlp_out``, skip transcoders), spliced in with
   ``relp_lens.splice`` (latents plus one error node per layer and position) — attribute the build pairs
   with relp, grad and ig;
2. sweep circuit sizes on the held-out pairs (top-k, mean ablation), ranking nodes by |score| and by signed
   score (``rank="signed"``: the nodes that carry the behaviour first); error nodes count as nodes, as in the
   paper, and each row records how many of its nodes are error nodes;
3. record the first size reaching faithfulness 0.8 and 0.9 (k@0.8, k@0.9) for every basis, method and rank.

Writes ``benchmarks/results/feature_circuits.json`` (curves, k@0.8/0.9, the dictionaries' source folders and,
when ``benchmarks/results/dictionaries_smollm2.json`` exists, their quality figures) and
``docs/results/feature_circuits.html`` (Plotly: faithfulness against size per set, one line per basis).

Usage::

    .venv/bin/python benchmarks/feature_circuits.py                       # every set, every basis
    .venv/bin/python benchmarks/feature_circuits.py --sets simple --methods relp grad
    .venv/bin/python benchmarks/feature_circuits.py --quick               # one set, tiny data (~minutes)
    .venv/bin/python benchmarks/feature_circuits.py --sets --tasks antonyms --methods relp --update  # add to the JSON

Unpaired tasks (``--tasks``): each task's prompts split in half (seeded, as ``unpaired_circuits.py`` splits
them), attributed with ``reduce="mean"`` under two baseline/ablation settings (:data:`UNPAIRED_SETTINGS`).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import relp_lens
from relp_lens.circuits.ablation import faithfulness_sweep
from relp_lens.core.files import cache_dir
from relp_lens.core.models import SHIPPED_MODELS
from relp_lens.core.tasks import AGREEMENT_SETS, agreement, load_task, task_report
from _common import curves_figure, write_result

FAMILIES = {"sae": "sae_mlp_out", "transcoder": "skip_transcoder"}  # basis name → folder of train_dictionaries.py
BASES = ("mlp_post", "mlp_out", *FAMILIES)
GRID = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
UNPAIRED_TASKS = ("city_to_state", "state_to_capital", "antonyms", "addition")
# baseline/ablation as unpaired_circuits.py names them: zero-baseline scores judged by mean ablation with every
# position selectable (the only setting reaching 0.8 there), and the consistent mean/mean
UNPAIRED_SETTINGS = {"zero/mean": dict(baseline="zero", ablation="mean", include_fixed=True),
                     "mean/mean": dict(baseline="mean", ablation="mean")}
MODEL_DIRS = {"smollm2-135m": "smollm2-135m", "gemma3-270m": "gemma3-270m"}


def first_reaching(curve: list[dict], level: float) -> int | None:
    """The smallest size in ``curve`` whose faithfulness reaches ``level`` (None: none does)."""
    return next((row["n_nodes"] for row in curve if row["faithfulness"] >= level), None)


def dictionaries_for(model_name: str, basis: str, root: Path | None):
    """The trained dictionary set of ``basis`` for the model, or an error saying how to train it."""
    folder = (root or cache_dir() / "dictionaries" / MODEL_DIRS[model_name]) / FAMILIES[basis]
    if not folder.is_dir():
        raise SystemExit(f"no {basis} dictionaries at {folder}: train them first "
                         f"(benchmarks/train_dictionaries.py, in an environment with eai-sparsify)")
    return relp_lens.load_transcoders(folder), folder


def sweep(model, attr, held_out, grid, rank, **options) -> list[dict]:
    sizes = [k for k in grid if k <= attr.n_layers * attr.n_positions * attr.width]
    return [r.to_dict() for r in faithfulness_sweep(model, attr, held_out, sizes=sizes, rank=rank, progress=False,
                                                    **options)]


def run_basis(model, basis: str, build, held_out, args, kind: str, setting: dict | None = None) -> dict:
    """Every method's attribution on ``build`` and its sweeps on ``held_out`` (both ranks); ``setting``: an
    unpaired task's baseline / ablation / include_fixed (:data:`UNPAIRED_SETTINGS`)."""
    setting = setting or {}
    out: dict = {"methods": {}}
    for method in args.methods:
        if method == "ig" and args.ig_sets is not None and kind not in args.ig_sets:
            continue
        t0 = time.time()
        attr = relp_lens.attribute(model, build, basis=basis, method=method, ig_steps=args.ig_steps,
                                   batch_size=args.batch_size, progress=False,
                                   **({"baseline": setting["baseline"], "reduce": "mean"} if setting else {}))
        options = {k: setting[k] for k in ("ablation", "include_fixed") if k in setting}
        curves = {rank: sweep(model, attr, held_out, args.grid, rank, **options) for rank in args.ranks}
        out["methods"][method] = {
            "curves": curves,
            "size_at_0.8": {r: first_reaching(c, 0.8) for r, c in curves.items()},
            "size_at_0.9": {r: first_reaching(c, 0.9) for r, c in curves.items()},
            "nodes_total": attr.n_layers * attr.n_positions * attr.width, "seconds": round(time.time() - t0, 1)}
        print(f"    {method:>4s}: k@0.8 " + ", ".join(f"{r} {out['methods'][method]['size_at_0.8'][r]}"
                                                     for r in args.ranks) + f"  ({time.time() - t0:.0f}s)", flush=True)
    return out


def run(args) -> dict:
    model = relp_lens.load_model(args.model)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results: dict = {"config": config, "dictionaries": {},
                     "sets": {}}
    quality = Path("benchmarks/results/dictionaries_smollm2.json")
    if args.model == "smollm2-135m" and quality.is_file():
        results["dictionary_quality"] = json.loads(quality.read_text()).get("families")
    dicts = {}
    for basis in args.bases:
        if basis in FAMILIES:
            dicts[basis], folder = dictionaries_for(args.model, basis, args.dictionaries)
            d0 = dicts[basis][dicts[basis].layers[0]]
            results["dictionaries"][basis] = dict(folder=str(folder), kind=d0.kind, d_sae=d0.d_sae,
                                                  layers=len(dicts[basis]), activation=d0.activation, k=d0.k)
    t_start = time.time()
    for task in args.tasks:  # unpaired: half the prompts build, half judge (as unpaired_circuits.py splits them)
        rows = load_task(model, task, 64, args.seed)
        random.Random(args.seed).shuffle(rows)
        build, held_out = rows[: len(rows) // 2], rows[len(rows) // 2:]
        rep = task_report(model, rows, warn=False)
        print(f"[{task}] {len(build)} build / {len(held_out)} held-out prompts, {rep}", flush=True)
        out = {"n_build": len(build), "n_eval": len(held_out), "task_accuracy": rep.accuracy, "settings": {}}
        for name, setting in UNPAIRED_SETTINGS.items():
            out["settings"][name] = {"bases": {}}
            for basis in args.bases:
                print(f"  {name} {basis}", flush=True)
                if basis in dicts:
                    with relp_lens.splice(model, dicts[basis]) as hooks:
                        got = run_basis(model, hooks, build, held_out, args, task, setting)
                else:
                    got = run_basis(model, basis, build, held_out, args, task, setting)
                out["settings"][name]["bases"][basis] = got
        results.setdefault("tasks", {})[task] = out
    for kind in args.sets:
        rows = agreement(model, kind, args.n_build + args.n_eval, seed=args.seed)
        build, held_out = rows[: args.n_build], rows[args.n_build:]
        rep = task_report(model, held_out, warn=False)
        print(f"[{kind}] {len(build)} build / {len(held_out)} held-out pairs, held-out {rep}", flush=True)
        out = {"n_build": len(build), "n_eval": len(held_out), "task_accuracy": rep.accuracy, "bases": {}}
        for basis in args.bases:
            print(f"  {basis}", flush=True)
            if basis in dicts:
                with relp_lens.splice(model, dicts[basis]) as hooks:  # the sweep's ablations need the splice too
                    out["bases"][basis] = run_basis(model, hooks, build, held_out, args, kind)
            else:
                out["bases"][basis] = run_basis(model, basis, build, held_out, args, kind)
        results["sets"][kind] = out
    results["total_seconds"] = round(time.time() - t_start, 1)
    return results


def table(results: dict) -> str:
    """Markdown: k@0.8 per set (or unpaired task · setting) × basis × method × rank."""
    ranks = results["config"]["ranks"]
    head = "| set | basis | " + " | ".join(f"k@0.8 {m} ({r})" for m in results["config"]["methods"] for r in ranks)
    lines = [head + " |", "|---|---|" + "---|" * (len(results["config"]["methods"]) * len(ranks))]
    rows = [(kind, s["bases"]) for kind, s in results["sets"].items()] + [
        (f"{task} ({name})", st["bases"]) for task, t in results.get("tasks", {}).items()
        for name, st in t["settings"].items()]
    for kind, bases in rows:
        for basis, b in bases.items():
            cells = []
            for m in results["config"]["methods"]:
                for r in ranks:
                    if m not in b["methods"]:
                        cells.append("not run")
                        continue
                    if r not in b["methods"][m]["curves"]:  # a piece run with other --ranks
                        cells.append("not run")
                        continue
                    k = b["methods"][m]["size_at_0.8"][r]
                    curve = b["methods"][m]["curves"][r]
                    errors = next((row.get("n_errors") for row in curve if row["n_nodes"] == k), None)
                    cells.append("—" if k is None else f"{k}" + (f" ({errors} err)" if errors else ""))
            lines.append(f"| {kind} | {basis} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merged(old: dict, new: dict) -> dict:
    """``old`` results with ``new``'s added: per set (or task · setting) and basis, ``new``'s methods replace or
    join ``old``'s; the commands of both are kept (``commands``), the config's methods and sets are the union."""
    out = json.loads(json.dumps(old))
    for key in ("sets", "tasks"):
        for name, entry in new.get(key, {}).items():
            have = out.setdefault(key, {}).setdefault(name, {k: v for k, v in entry.items()
                                                              if k not in ("bases", "settings")})
            groups = ([(have, entry)] if key == "sets" else
                      [(have.setdefault("settings", {}).setdefault(n, {}), st) for n, st in entry["settings"].items()])
            for into, src in groups:
                for basis, b in src["bases"].items():
                    into.setdefault("bases", {}).setdefault(basis, {"methods": {}})["methods"].update(b["methods"])
    cfg = out["config"]
    out.setdefault("dictionaries", {}).update(new.get("dictionaries", {}))
    for k in ("methods", "sets", "tasks", "bases", "ranks"):
        cfg[k] = list(dict.fromkeys([*cfg.get(k, []), *new["config"].get(k, [])]))
    out["commands"] = [*old.get("commands", [old.get("command")]), new.get("command")]
    out["total_seconds"] = round(old.get("total_seconds", 0) + new.get("total_seconds", 0), 1)
    return out


def figure(results: dict):
    colours = {"mlp_post": "#1f77b4", "mlp_out": "#d62728", "sae": "#2ca02c", "transcoder": "#9467bd"}
    method = results["config"]["methods"][0]
    sources = [(kind, s["bases"]) for kind, s in results["sets"].items()] + [
        (f"{task} ({name})", st["bases"]) for task, t in results.get("tasks", {}).items()
        for name, st in t["settings"].items()]
    panels = {kind: [(f"{basis} · {rank}", colours.get(basis), dash, b["methods"][method]["curves"][rank])
                     for basis, b in bases.items() for rank, dash in (("abs", "solid"), ("signed", "dot"))
                     if method in b["methods"] and rank in b["methods"][method]["curves"]]
              for kind, bases in sources}
    return curves_figure(panels, f"Neurons vs dictionary features ({method}, mean ablation, held-out prompts)",
                         "circuit size (nodes, error nodes included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one set, tiny data, relp only")
    ap.add_argument("--sets", nargs="*", default=list(AGREEMENT_SETS), choices=AGREEMENT_SETS)
    ap.add_argument("--tasks", nargs="*", default=[], choices=UNPAIRED_TASKS,
                    help="unpaired tasks (half build, half held out; settings zero/mean and mean/mean)")
    ap.add_argument("--bases", nargs="+", default=list(BASES), choices=BASES)
    ap.add_argument("--methods", nargs="+", default=["relp", "grad", "ig"], choices=["relp", "grad", "ig"])
    ap.add_argument("--ranks", nargs="+", default=["abs", "signed"], choices=["abs", "signed"])
    ap.add_argument("--n-build", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=24)
    ap.add_argument("--ig-steps", type=int, default=10)
    ap.add_argument("--ig-sets", nargs="+", default=None, choices=AGREEMENT_SETS,
                    help="run ig on these sets only (default: every set); it costs ~30× relp")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(MODEL_DIRS))
    ap.add_argument("--dictionaries", type=Path, default=None,
                    help="folder holding the families' folders (default: the relp_lens cache's dictionaries/<model>)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/feature_circuits.json"))
    ap.add_argument("--html", type=Path, default=Path("docs/results/feature_circuits.html"))
    ap.add_argument("--update", action="store_true",
                    help="add this run's sets, tasks and methods to the results already in --out (merged())")
    args = ap.parse_args()
    args.grid = list(GRID)
    if args.quick:
        args.sets, args.methods, args.n_build, args.n_eval, args.grid = ["simple"], ["relp"], 6, 6, [1, 10, 100, 1000]
    assert set(MODEL_DIRS) <= set(SHIPPED_MODELS)
    results = run(args)
    if args.update and args.out.is_file():
        from _common import provenance

        results = merged(json.loads(args.out.read_text()), {**results, **provenance()})
    print(table(results))
    results["table"] = table(results)
    write_result(args.out, results, f"{len(args.sets)} sets, {len(args.tasks)} unpaired tasks × {len(args.bases)} bases "
                 f"in {results['total_seconds']:.0f} s" + (" (all runs merged)" if args.update else ""))
    args.html.parent.mkdir(parents=True, exist_ok=True)
    figure(results).write_html(args.html, include_plotlyjs=True)
    print(f"wrote {args.html}")


if __name__ == "__main__":
    main()
