"""Fixtures shared by the method tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """Many tiny tensor ops: faster, and far less noisy on a shared machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
