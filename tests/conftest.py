import pytest


@pytest.fixture(scope="session")
def smollm():
    """The shipped SmolLM2-135M-Instruct (built once per test session)."""
    import relp_lens

    return relp_lens.load_model()
