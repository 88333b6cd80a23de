"""relp_lens: RelP circuit tracing on the MLP-neuron basis, as a TransformerLens plugin.

Quick start::

    import relp_lens
    model = relp_lens.load_model()                       # shipped SmolLM2-135M-Instruct, offline
    attr = relp_lens.attribute(model, "The keys to the cabinet", " are",
                               patch="The key to the cabinet", patch_answers=" is")
    print(attr.summary())                                # top neurons as L{layer}/{index}@{pos}
"""

from relp_lens.attribution import METHODS, Attribution, attribute, pearson
from relp_lens.data import Prompts
from relp_lens.errors import RelPLensError
from relp_lens.exact import compare_with_exact
from relp_lens.models import load_model, shipped_gguf_path
from relp_lens.nodes import BASES, resolve_hooks
from relp_lens.relp_mode import RelPConfig, relp, relp_hooks

__all__ = [
    "BASES", "METHODS", "Attribution", "Prompts", "RelPConfig", "RelPLensError", "attribute",
    "compare_with_exact", "load_model", "pearson", "relp", "relp_hooks", "resolve_hooks", "shipped_gguf_path",
]
__version__ = "0.1.0"
