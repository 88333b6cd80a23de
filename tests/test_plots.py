"""Figure functions return plotly Figures with the right traces and shapes."""

import plotly.graph_objects as go
import pytest

from relp_lens import attribute
from relp_lens.plots import attribution_heatmap
from helpers import AGREEMENT_ROWS, tiny_llama


def test_heatmap_shapes_and_hover():
    model = tiny_llama()
    attr = attribute(model, AGREEMENT_ROWS, progress=False)
    fig = attribution_heatmap(attr)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    hm = fig.data[0]
    assert hm.type == "heatmap"
    assert len(hm.z) == 3 and len(hm.z[0]) == 6  # layers × positions of the first example
    assert hm.x[2] == "2: 'keys'" and "top node" in hm.text[0][0]
    mass = attr.mean().nan_to_num(0).abs().sum(-1)
    assert hm.z[1][4] == pytest.approx(mass[1, 4].item(), rel=1e-5)
    one = attribution_heatmap(attr, example=1, value="top")
    assert len(one.data[0].z[0]) == 3 and one.data[0].zmid == 0
    with pytest.raises(ValueError, match="mass' or 'top'"):
        attribution_heatmap(attr, value="max")
