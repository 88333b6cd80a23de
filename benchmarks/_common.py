"""What every benchmark records beside its figures, and its one-line summary.

1. :func:`provenance`: the command as run, the machine (platform, CPU count, torch threads) and the torch and
   TransformerLens versions.
2. :func:`write_result`: the result with its provenance first, written as JSON; prints the summary line
   (given, or the result's first top-level numbers) and the path.

Scripts import it as ``from _common import write_result`` (``python benchmarks/x.py`` puts ``benchmarks/`` on
``sys.path``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def provenance() -> dict:
    """The command, machine and versions of this run.

    Returns:
        ``{"command", "machine": {"platform", "cpus", "torch_threads"}, "torch", "transformer_lens"}``.
    """
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return dict(command=" ".join(["python", str(script), *map(shlex.quote, sys.argv[1:])]),
                machine=dict(platform=platform.platform(), cpus=os.cpu_count(), torch_threads=torch.get_num_threads()),
                torch=torch.__version__, transformer_lens=importlib.metadata.version("transformer-lens"))


def _numbers(result: dict, n: int = 4) -> str:
    out = []
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        if len(out) == n:
            break
    return ", ".join(out)


def write_result(path: str | Path, result: dict, summary: str | None = None) -> None:
    """Write ``result`` with its :func:`provenance` (first) as JSON at ``path``; print a one-line summary.

    Args:
        path: the JSON file (folders made as needed).
        result: the benchmark's figures; keys named like provenance's are replaced by it.
        summary: the line to print (default: the result's first top-level numbers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    where = provenance()
    path.write_text(json.dumps({**where, **result, **where}, indent=1) + "\n")
    name = Path(sys.argv[0]).stem
    print(f"{name}: {summary or _numbers(result) or 'done'} (wrote {path})")


def curves_figure(panels: dict, title: str, x_title: str = "circuit size (nodes)"):
    """A Plotly figure of faithfulness against circuit size: one panel per key of ``panels``, each a list of
    ``(name, colour, dash, curve)`` with ``curve`` rows holding ``n_nodes`` and ``faithfulness`` (log x axis,
    shared y axis, each name in the legend once)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels), shared_yaxes=True)
    for col, lines in enumerate(panels.values(), 1):
        for name, colour, dash, curve in lines:
            fig.add_trace(go.Scatter(x=[r["n_nodes"] for r in curve], y=[r["faithfulness"] for r in curve],
                                     mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1,
                                     line=dict(color=colour, dash=dash)), row=1, col=col)
        fig.update_xaxes(type="log", title_text=x_title, row=1, col=col)
    fig.update_yaxes(title_text="faithfulness", row=1, col=1)
    fig.update_layout(title=title, height=450, width=max(600, 380 * len(panels)))
    return fig
