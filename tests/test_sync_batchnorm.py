"""Synchronised BatchNorm on two gloo ranks equals one process on the concatenated batch."""

import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cnnkit.nn as cnn

# Uneven per-rank batch sizes, as SyncBatchNorm must handle them.
BATCH_SIZES = (3, 5)
CHANNELS = 6


def _data(activation, track_running_stats=True):
    generator = torch.Generator().manual_seed(1)
    n = sum(BATCH_SIZES)
    x = torch.randn(n, CHANNELS, 5, 4, generator=generator) * 3 + 1
    residual = torch.randn(n, CHANNELS, 5, 4, generator=generator)
    grad = torch.randn(n, CHANNELS, 5, 4, generator=generator)
    module = cnn.BatchNormReLU2d(CHANNELS, activation=activation, momentum=None,
                                 track_running_stats=track_running_stats)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.uniform_(-0.5, 0.5, generator=generator)
    return x, residual, grad, module


def _run(module, x, residual, grad, steps=3):
    x = x.clone().requires_grad_()
    residual = residual.clone().requires_grad_()
    for _ in range(steps):
        module.zero_grad()
        x.grad = residual.grad = None
        module(x, residual).backward(grad)
    return {
        "output": module(x, residual).detach(), "grad_input": x.grad, "grad_residual": residual.grad,
        "grad_weight": module.weight.grad, "grad_bias": module.bias.grad,
        "running_mean": module.running_mean, "running_var": module.running_var,
    }


def _worker(rank, init_file, activation, channels_last, track_running_stats):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        x, residual, grad, module = _data(activation, track_running_stats)
        if channels_last:
            x, residual = x.to(memory_format=torch.channels_last), residual.to(memory_format=torch.channels_last)
        expected = _run(module, x, residual, grad)

        _, _, _, fresh = _data(activation, track_running_stats)
        synchronised = cnn.convert_sync_batchnorm(torch.nn.Sequential(fresh))[0]
        assert isinstance(synchronised, cnn.SyncBatchNormReLU2d)
        start = sum(BATCH_SIZES[:rank])
        mine = slice(start, start + BATCH_SIZES[rank])
        got = _run(synchronised, x[mine], residual[mine], grad[mine])

        # The output of the last call normalises with the running statistics (eval-free
        # training call), so compare the rank's slice of everything per sample.
        for key in ("output", "grad_input", "grad_residual"):
            torch.testing.assert_close(got[key], expected[key][mine], atol=1e-5, rtol=1e-4, msg=key)
        for key in ("running_mean", "running_var"):
            if track_running_stats:
                torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)
            else:
                assert got[key] is None and expected[key] is None
        # Parameter gradients stay per rank (DDP averages them); their sum is the full batch's.
        for key in ("grad_weight", "grad_bias"):
            total = got[key].clone()
            dist.all_reduce(total)
            torch.testing.assert_close(total, expected[key], atol=1e-4, rtol=1e-4, msg=key)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("activation,channels_last,track_running_stats",
                         [("relu", False, True), ("leaky_relu", True, True), ("relu", True, False)])
def test_two_gloo_ranks_match_one_process(activation, channels_last, track_running_stats):
    with tempfile.TemporaryDirectory() as directory:
        init_file = os.path.join(directory, "init")
        mp.spawn(_worker, args=(init_file, activation, channels_last, track_running_stats), nprocs=2, join=True)


def test_convert_keeps_state_and_types():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                cnn.BatchNormReLU2d(4, activation="leaky_relu"))
    model[1].running_mean.fill_(2.0)
    original = copy.deepcopy(model)
    converted = cnn.convert_sync_batchnorm(model)
    assert type(converted[1]) is cnn.SyncBatchNorm2d
    assert type(converted[2]) is cnn.SyncBatchNormReLU2d and converted[2].activation == "leaky_relu"
    assert converted.state_dict().keys() == original.state_dict().keys()
    for key, value in converted.state_dict().items():
        assert torch.equal(value, original.state_dict()[key]), key
    # Without an initialised process group it trains as the unsynchronised modules do.
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(converted(x), original(x))
    torch.testing.assert_close(converted[1].running_var, original[1].running_var)


@pytest.mark.parametrize("module", [cnn.SyncBatchNorm2d, cnn.SyncBatchNormReLU2d])
def test_process_group_reads_back_as_given(module):
    """As torch.nn.SyncBatchNorm: the attribute is what was given, in any mode."""
    group = object()
    bn = module(4, process_group=group)
    assert bn.process_group is group and bn.eval().process_group is group
    assert module(4).process_group is None
    assert cnn.convert_sync_batchnorm(cnn.BatchNorm2d(4), group).process_group is group
