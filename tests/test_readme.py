"""README.md runs (issue #9): its ```python blocks, joined in order, are one script a reader can paste.

The blocks share one namespace, top to bottom, and run from a scratch copy of the repository root (the
``examples/`` folder copied in, so ``examples/pairs.jsonl`` resolves and files the README writes land in
the scratch folder). Shell blocks (plain ```) are not executed.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAIRS = ROOT / "examples" / "pairs.jsonl"
MIN_BLOCKS = 8  # notebook, own backward pass, positions, tasks, circuits, unpaired circuit, steering, cards, report
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order."""
    return [m.group(1) for m in FENCE.finditer(text)]


def readme_script() -> str:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    return "\n".join(f"# --- README python block {i + 1} ---\n{b}" for i, b in enumerate(blocks))


def test_readme_has_python_blocks_and_none_is_empty():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= MIN_BLOCKS, f"README has {len(blocks)} python blocks, expected at least {MIN_BLOCKS}"
    for i, b in enumerate(blocks):
        assert b.strip(), f"python block {i + 1} of README.md is empty"
    compile(readme_script(), "README.md", "exec")  # every block is valid Python


def test_block_extraction_keeps_order_and_skips_other_fences():
    text = "a\n```python\nx = 1\n```\n```\nrelp-lens trace\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]


def test_example_pairs_load_and_are_paired():
    from relp_lens.core.data import Prompts

    prompts = Prompts.from_jsonl(PAIRS)
    assert prompts.paired and len(prompts) >= 10
    assert prompts.answers is not None and prompts.patch_answers is not None
    for clean, patch, good, bad in zip(prompts.clean, prompts.patch, prompts.answers, prompts.patch_answers):
        assert clean != patch
        assert good[0].startswith(" ") and bad[0].startswith(" ") and good != bad
    assert "examples/pairs.jsonl" in README.read_text(encoding="utf-8")  # the CLI example uses it


@pytest.mark.slow
def test_example_pairs_have_equal_token_lengths(smollm):
    from relp_lens.core.data import Prompts, tokenize

    tokenize(smollm, Prompts.from_jsonl(PAIRS))  # raises on unequal clean/patch lengths or multi-token answers


@pytest.mark.slow
def test_readme_python_blocks_run_top_to_bottom(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    script = tmp_path / "readme_blocks.py"
    script.write_text(readme_script(), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               MPLBACKEND="Agg")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, (f"README python blocks failed (exit {proc.returncode}) after {elapsed:.0f} s\n"
                                  f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
    assert (tmp_path / "circuit.json").is_file() and (tmp_path / "report.html").is_file()
    print(f"README blocks ran in {elapsed:.1f} s")


DOCS = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("page", [p for p in DOCS if python_blocks(p.read_text(encoding="utf-8"))],
                         ids=lambda p: p.name)
def test_docs_python_blocks_run(page, tmp_path):
    """Every docs page's ```python blocks, joined in order, run as pasted (from a scratch folder)."""
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    script = tmp_path / "page.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{page.name}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
