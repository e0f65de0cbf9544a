"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one thread is faster than two (OpenMP hand-offs dominate, 10x on a busy
    2-core CI machine, whose cores the tests share); restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
