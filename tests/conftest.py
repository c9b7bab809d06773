import pytest
import torch

import cnnkit


def pytest_sessionstart(session):
    # The suite tests the compiled kernels: a missing extension is an error, not a skip.
    if cnnkit._ops._C is None:
        raise pytest.UsageError(
            f"cnnkit._C is not built ({cnnkit._ops.LOAD_ERROR}); install with "
            "`pip install --no-build-isolation -e .` first"
        )


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


def pytest_report_header(config):
    return f"cnnkit CPU kernels: {cnnkit._ops._C.cpu_capability} (compiled: {cnnkit._ops._C.cpu_capabilities})"
