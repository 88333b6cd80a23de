"""Views: Plotly figures (``plots``) and the self-contained HTML report (``report``)."""

from relp_lens._lazy import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, ["plots", "report"])
