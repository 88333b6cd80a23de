import os

# Under pytest-xdist (``make test`` runs ``-n 2``), each worker gets an equal share of the cores, set before torch
# starts its thread pool and inherited by the subprocesses tests start (CLI runs, notebook kernels, torchrun):
# two workers of two threads each on two cores slow both several-fold.
# The cores are those this process may run on (a container or taskset may allow fewer than the machine has).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _THREADS = str(max(1, _CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = _THREADS

import pytest
from hypothesis import HealthCheck, settings

from relp_lens.core import backends

# Property-based tests (hypothesis): CI runs a small, derandomized budget, so the same examples run every time
# (the cases hypothesis once found are pinned with @example); `HYPOTHESIS_PROFILE=long` searches further.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW_OK)
settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# TransformerLens 4 has no HookedTransformer: tests marked `hooked` are skipped there, and so is every test
# that builds a tiny HookedTransformer through helpers (the builders skip). test_rules.py imports
# HookedTransformer's components at module level, so it is not collected there.
HOOKED = backends.hooked_transformer_available()
collect_ignore = [] if HOOKED else ["test_rules.py"]


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(int(_THREADS))


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
