"""The reproduction benchmark runs end to end in its --quick mode and writes its three outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_quick_reproduction(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_reproduction.py"), "--quick",
                        "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "paper_reproduction.json").read_text())
    s = res["sets"]["simple"]
    assert s["task_accuracy"] > 0.8
    for basis in ("mlp_post", "mlp_out"):
        b = s["bases"][basis]
        assert set(b["correlation_with_exact"]) == {"relp", "grad", "ig"}
        assert all(-1 <= v <= 1 for v in b["correlation_with_exact"].values())
        assert [row["n_nodes"] for row in b["curves"]["relp"]] == [1, 10, 100, 1000]
    assert "| mlp_post |" in (tmp_path / "tables.md").read_text()
    assert "plotly" in (tmp_path / "faithfulness.html").read_text()[:5000].lower()
