"""mkdocs hook: the API reference's tables, made from the package itself at build time.

``docs/api/index.md`` holds the marker ``<!-- relp_lens:modules -->``: it becomes one table per stage of every
module (``relp_lens/<stage>/*.py``) with the first sentence of its docstring. ``docs/api/relp_lens.md`` holds
``<!-- relp_lens:exports -->``: it becomes the table of every public name of ``relp_lens`` (``_EXPORTS`` in
``relp_lens/__init__.py``) and where it is defined. Both are read with ``ast``, importing nothing, so the
tables cannot fall behind the code; a module without its page under ``docs/api/`` shows without a link (and
tests/test_readme.py fails on it).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "relp_lens"
STAGES = ["core", "circuits", "analysis", "views"]
MODULES_MARK = "<!-- relp_lens:modules -->"
EXPORTS_MARK = "<!-- relp_lens:exports -->"


def first_sentence(path: Path) -> str:
    """The first sentence of a module's docstring, as Markdown."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    text = re.split(r"(?<=[a-z0-9)`])\. ", text)[0].rstrip(".")
    text = re.sub(r":(?:func|meth|class|mod|data|attr):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`").replace("|", "\\|")


def exports() -> dict[str, tuple[str, str | None]]:
    """``relp_lens._EXPORTS``: public name → (module under relp_lens, attribute or None for the module)."""
    for node in ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "_EXPORTS":
            return ast.literal_eval(node.value)
    raise RuntimeError("relp_lens/__init__.py defines no _EXPORTS")


def page_of(module: str) -> str:
    """The API page of ``relp_lens.<module>``, relative to docs/api/."""
    return module.replace(".", "/") + ".md"


def modules_table(has_page) -> str:
    parts = []
    for stage in STAGES:
        parts += [f"## `relp_lens.{stage}`", "", "| module | what |", "|---|---|"]
        for path in sorted((PACKAGE / stage).glob("*.py")):
            if path.stem.startswith("_"):
                continue
            name = f"{stage}.{path.stem}"
            cell = f"[`{name}`]({page_of(name)})" if has_page(page_of(name)) else f"`{name}`"
            parts.append(f"| {cell} | {first_sentence(path)} |")
        parts.append("")
    return "\n".join(parts)


def exports_table(has_page) -> str:
    rows = ["| name | what it is |", "|---|---|"]
    for name, (module, attr) in sorted(exports().items(), key=lambda kv: kv[0].lower()):
        full = f"relp_lens.{module}" + (f".{attr}" if attr else "")
        if has_page(page_of(module)):
            link = page_of(module) + (f"#{full}" if attr else "")
            rows.append(f"| [`{name}`]({link}) | `{full}` |")
        else:
            rows.append(f"| `{name}` | `{full}` |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    def has_page(rel: str) -> bool:
        return files.get_file_from_path(f"api/{rel}") is not None

    if MODULES_MARK in markdown:
        markdown = markdown.replace(MODULES_MARK, modules_table(has_page))
    if EXPORTS_MARK in markdown:
        markdown = markdown.replace(EXPORTS_MARK, exports_table(has_page))
    return markdown
