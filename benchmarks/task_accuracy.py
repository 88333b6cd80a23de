"""How well a shipped model does each built-in task (``task_report``), plain and chat forms.

Usage: ``.venv/bin/python benchmarks/task_accuracy.py [--n 64] [--model gemma3-270m]`` (default SmolLM2-135M)
"""

import argparse

import relp_lens
from relp_lens.core import tasks
from relp_lens.core.models import SHIPPED_MODELS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(SHIPPED_MODELS))
    args = ap.parse_args()
    model = relp_lens.load_model(args.model)
    for kind in tasks.AGREEMENT_SETS:
        rows = tasks.agreement(model, kind, args.n)
        print(f"{kind:>17s} plain: {tasks.task_report(model, rows, warn=False)}")
    for name in ("capitals", "city_to_state", "state_to_capital", "addition", "antonyms"):
        for form in ("plain", "chat"):
            rows = tasks.load_task(model, name, args.n, form=form)
            print(f"{name:>17s} {form:>5s}: {tasks.task_report(model, rows, warn=False)}")


if __name__ == "__main__":
    main()
