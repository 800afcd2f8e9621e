"""The learner tests run on one intra-op thread: their tensors are tiny, and a second thread only contends on a
shared 2-core machine. Restored afterwards, so other test folders keep the default."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
