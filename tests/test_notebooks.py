"""The notebooks in notebooks/ run top to bottom on the shipped model (CPU), and are stored without outputs."""

import json
import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_the_five_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_agreement_circuit", "03_steering", "04_case_study",
                                         "05_features"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom(path, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # the kernel is this interpreter (ipykernel's native "python3"), run in a scratch folder: the notebooks
    # write out/ files relative to where they run
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, f"{path.name} showed no plotly figure"
    if path.stem == "02_agreement_circuit":
        assert (tmp_path / "out" / "agreement_report.html").stat().st_size > 1_000_000
    if path.stem == "05_features":
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                       if o.output_type == "stream")
        assert text.count("k@0.8 = ") == 2 and "error nodes hold" in text and "FVU" in text
        graph = json.loads((tmp_path / "out" / "graphs" / "agreement-features.json").read_text())
        assert any(n["feature_type"] == "mlp reconstruction error" for n in graph["nodes"])
        assert 0 < graph["metadata"]["replacement_score"] <= 1
    if path.stem == "04_case_study":
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                       if o.output_type == "stream")
        assert "neuron groups from attribution, activation, edges" in text
        assert text.count("fires on ") >= 2 and "⟦" in text  # cards over the real-text corpus
