"""Fixtures shared by the test modules, and the hypothesis profile every property test runs under."""
import pytest
import torch
from hypothesis import settings

# One hypothesis profile for every machine: derandomize draws the same examples on each run (a failure
# reproduces anywhere, with no example database to carry: database=None), and no deadline, since a busy
# 2-core machine can take seconds for one example. max_examples is the default for a test that sets none;
# most tests state their own with @settings. `pytest --hypothesis-profile explore` draws fresh examples.
settings.register_profile("reproducible", derandomize=True, database=None, deadline=None, max_examples=25,
                          print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, deadline=None, max_examples=200)
settings.load_profile("reproducible")


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one thread is faster than two (OpenMP hand-offs dominate, 10x on a busy
    2-core CI machine, whose cores the tests share); restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
