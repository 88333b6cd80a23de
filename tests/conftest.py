import pytest

from relp_lens.core import backends

# TransformerLens 4 has no HookedTransformer: tests marked `hooked` are skipped there, and so is every test
# that builds a tiny HookedTransformer through helpers (the builders skip). test_rules.py imports
# HookedTransformer's components at module level, so it is not collected there.
HOOKED = backends.hooked_transformer_available()
collect_ignore = [] if HOOKED else ["test_rules.py"]


def pytest_collection_modifyitems(config, items):
    if HOOKED:
        return
    skip = pytest.mark.skip(reason="needs HookedTransformer (TransformerLens 3.x)")
    for item in items:
        if "hooked" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm():
    """The shipped SmolLM2-135M-Instruct (built once per test session): a HookedTransformer where
    TransformerLens has it, a TransformerBridge on TransformerLens 4 (``load_model``'s ``backend="auto"``)."""
    import relp_lens

    return relp_lens.load_model()
