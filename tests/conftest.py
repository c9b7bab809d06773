import pytest
import torch

import cnnkit


def pytest_collection_modifyitems(config, items):
    # CUDA tests need a CUDA build of cnnkit and a GPU; elsewhere they are reported as skipped.
    has_cuda = torch.cuda.is_available() and cnnkit._ops.has_kernel("local_response_norm", "cuda")
    skip = pytest.mark.skip(reason="needs CUDA torch, a GPU and cnnkit built with CUDA")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
