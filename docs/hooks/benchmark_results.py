"""mkdocs hook: the benchmark outputs in ``benchmarks/results/`` become part of the site.

``docs/results.md`` links them as ``../benchmarks/results/NAME.json``, relative to the file, so the links work
when the Markdown is read in the repository. Outside ``docs/`` mkdocs cannot see them, and ``--strict`` would
fail on the links. This hook adds every file of ``benchmarks/results/`` to the site under
``benchmarks/results/`` and points such links (from any page) at those copies, so the build checks them too.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "benchmarks/results"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def on_files(files, config):
    for path in sorted((ROOT / RESULTS).iterdir()):
        if path.is_file():
            files.append(File(f"{RESULTS}/{path.name}", src_dir=str(ROOT), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    here = posixpath.dirname(page.file.src_uri)

    def repoint(m: re.Match) -> str:
        target = m.group(1)
        # the link as the repository sees it: docs/<page's folder>/<target>
        in_repo = posixpath.normpath(posixpath.join("docs", here, target))
        if "://" in target or not in_repo.startswith(RESULTS + "/"):
            return m.group(0)
        return f"]({posixpath.relpath(in_repo, here or '.')})"

    return LINK.sub(repoint, markdown)
