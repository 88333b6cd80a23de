"""README.md and the docs site run (issues #9, #21): each page's ```python blocks, joined in order, are one
script a reader can paste.

The blocks of a page share one namespace, top to bottom, and run in a fresh interpreter from a scratch folder
holding a copy of ``examples/`` (so ``examples/pairs.jsonl`` resolves and files a page writes land in the
scratch folder). Shell blocks (plain ```) are not executed. The site itself (mkdocs.yml, docs/**) builds with
``mkdocs build --strict``.
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
MIN_BLOCKS = 1  # the quick start; the rest of the old README's blocks live on the docs pages
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order."""
    return [m.group(1) for m in FENCE.finditer(text)]


def page_script(page: Path) -> str:
    """A page's python blocks joined in order, each headed by a comment naming it (for tracebacks)."""
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    return "\n".join(f"# --- {page.name} python block {i + 1} ---\n{b}" for i, b in enumerate(blocks))


def readme_script() -> str:
    return page_script(README)


def run_script(script_text: str, tmp_path: Path, name: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run a page's script in a fresh interpreter from ``tmp_path`` holding a copy of ``examples/``."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    script = tmp_path / name
    script.write_text(script_text, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               MPLBACKEND="Agg")
    start = time.perf_counter()
    # a deprecated call made by the page itself is an error: the docs show the current API
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning:__main__", str(script)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    return proc, time.perf_counter() - start


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


def test_readme_names_the_test_command_and_links_the_docs():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "the README is the short entry point; details go on the docs pages"
    assert "make test" in text  # CI and readers take the test command from here
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), f"README links {link}, which does not exist"


@pytest.mark.slow
def test_readme_python_blocks_run_top_to_bottom(tmp_path):
    proc, elapsed = run_script(readme_script(), tmp_path, "readme_blocks.py")
    assert proc.returncode == 0, (f"README python blocks failed (exit {proc.returncode}) after {elapsed:.0f} s\n"
                                  f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
    assert "faithfulness" in proc.stdout  # the quick start evaluates its circuit
    print(f"README blocks ran in {elapsed:.1f} s")


DOCS_DIR = ROOT / "docs"
DOCS = sorted(DOCS_DIR.rglob("*.md"))
PAGES = [p for p in DOCS if python_blocks(p.read_text(encoding="utf-8"))]
# what a page's blocks must leave in the scratch folder (the files the old README wrote)
WRITES = {
    "tutorials/circuits.md": ["circuit.json", "graphs/agreement.json", "graphs/graph-metadata.json"],
    "tutorials/analysis/report.md": ["report.html"],
}


def _page_id(page: Path) -> str:
    return page.relative_to(DOCS_DIR).as_posix()


def test_docs_pages_with_python_blocks_are_found():
    ids = {_page_id(p) for p in PAGES}
    assert set(WRITES) <= ids, f"pages expected to write files have no python blocks: {set(WRITES) - ids}"
    assert any("/" in i for i in ids)  # pages in subfolders are collected too


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_docs_python_blocks_compile(page):
    """Every block of every page is valid Python, and no block is empty (fast: nothing runs)."""
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    for i, b in enumerate(blocks):
        assert b.strip(), f"python block {i + 1} of {_page_id(page)} is empty"
    compile(page_script(page), _page_id(page), "exec")


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_docs_python_blocks_run(page, tmp_path):
    """Every docs page's ```python blocks, joined in order, run as pasted (from a scratch folder with examples/)."""
    proc, elapsed = run_script(page_script(page), tmp_path, "page.py")
    name = _page_id(page)
    assert proc.returncode == 0, (f"{name}: exit {proc.returncode} after {elapsed:.0f} s\n"
                                  f"--- stdout (tail) ---\n{proc.stdout[-2000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    for written in WRITES.get(name, []):
        assert (tmp_path / written).is_file(), f"{name} should write {written}"
    print(f"{name} ran in {elapsed:.1f} s")


def _api_tables():
    """docs/hooks/api_tables.py, the mkdocs hook that makes the API reference's tables (it imports no mkdocs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("api_tables", DOCS_DIR / "hooks" / "api_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_lists_every_public_name_with_its_page():
    import relp_lens

    tables = _api_tables()
    assert tables.exports() == relp_lens._EXPORTS  # read with ast, the same as importing
    text = tables.exports_table(lambda rel: (DOCS_DIR / "api" / rel).is_file())
    missing = [name for name in relp_lens.__all__ if f"[`{name}`](" not in text]
    assert not missing, f"public names without an API page to link: {missing}"
    assert tables.EXPORTS_MARK in (DOCS_DIR / "api" / "relp_lens.md").read_text(encoding="utf-8")
    assert tables.MODULES_MARK in (DOCS_DIR / "api" / "index.md").read_text(encoding="utf-8")


def test_api_reference_has_a_page_for_every_module():
    """Every module of a stage, and every public module above them, has a page under docs/api/ that renders it
    (``::: relp_lens.…``); mkdocs build --strict then checks the page is in the nav."""
    import pkgutil

    import relp_lens

    names = [info.name for info in pkgutil.walk_packages(relp_lens.__path__, "relp_lens.")]
    for name in names:
        parts = name.split(".")
        stage_module = len(parts) == 3 and parts[1] in ("core", "circuits", "analysis", "views")
        above = len(parts) == 2 and parts[1] not in ("core", "circuits", "analysis", "views", "demo")
        if (stage_module or above) and not parts[-1].startswith("_"):
            page = DOCS_DIR / "api" / ("/".join(parts[1:]) + ".md")
            assert page.is_file() and f"::: {name}" in page.read_text(encoding="utf-8"), f"{name}: no {page}"


def test_mkdocs_build_strict(tmp_path):
    """The site builds with ``mkdocs build --strict``: every page in the nav, no broken link or anchor, and the
    API reference generated from the docstrings without a warning."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]'; make install does it)")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python",
                        reason="mkdocstrings[python] is not installed (pip install -e '.[docs]')")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "core" / "attribution" / "index.html").is_file()
