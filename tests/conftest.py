"""Fixtures shared by the test modules, and the hypothesis profile every property test runs under."""
import random

import numpy as np
import pytest
import torch
from hypothesis import settings

import lab  # noqa: F401  (registers the stand-in body models with bodymodels)

# One hypothesis profile for every machine: derandomize draws the same examples on each run (a failure
# reproduces anywhere, with no example database to carry: database=None), and no deadline, since a busy
# 2-core machine can take seconds for one example. max_examples is the default for a test that sets none;
# most tests state their own with @settings. `pytest --hypothesis-profile explore` draws fresh examples.
settings.register_profile("reproducible", derandomize=True, database=None, deadline=None, max_examples=25,
                          print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, deadline=None, max_examples=200)
settings.load_profile("reproducible")

def reset_global_state():
    """The one global state every test starts from, whatever ran before it in the process (a Procrustes
    residual once passed alone and failed after other files). One thread: a float32 sum depends on how it is split
    between threads, train.main's distributed.setup sets the count for its own job, and for small tensors OpenMP
    hand-offs cost more than a second core gives (10x on a busy 2-core machine). Seeded generators, float32
    defaults, gradients on, full-precision float32 matmuls, no deterministic-algorithms mode."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    torch.set_grad_enabled(True)
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)


reset_global_state()  # module fixtures, which run before a test's own fixtures, start from it too


@pytest.fixture(autouse=True)
def same_global_state():
    reset_global_state()
    yield
    reset_global_state()


@pytest.fixture(scope="session")
def genhmr_chain(tmp_path_factory):
    """One short GenHMR chain through train.py for the whole session (support.train_genhmr_chain): test_train checks
    what it reports, test_genhmr runs demo.py on it. Read it, do not write into it."""
    import support
    return support.train_genhmr_chain(tmp_path_factory.mktemp("genhmr_chain"))


def pytest_collection_finish(session):
    """Start the notebooks' small-setting executions in the background (test_notebooks.start_in_background) when the
    session runs them: they take a core the rest of the suite, one thread per test, leaves idle."""
    import sys
    module = sys.modules.get("test_notebooks")
    if session.config.option.collectonly or module is None:
        return
    paths = [item.callspec.params["path"] for item in session.items if item.path.name == "test_notebooks.py"
             and getattr(item, "originalname", None) == "test_notebook_executes_without_error"]
    if paths:
        module.start_in_background(paths, session.config._tmp_path_factory.mktemp("notebooks"))


def pytest_sessionfinish(session):
    """Stop the background notebooks (and their kernels) if the session ends before their tests waited for them."""
    import os
    import signal
    import sys
    process = getattr(sys.modules.get("test_notebooks"), "BACKGROUND", {}).get("process")
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # its own process group (start_new_session)
        process.wait()
