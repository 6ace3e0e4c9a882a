"""Shared fixtures: every test (and module fixture) computes with one torch thread
(deterministic, and fair to a shared 2-core machine); the count is restored afterwards."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
