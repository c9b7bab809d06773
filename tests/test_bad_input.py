"""Bad input, each case in a worker process (tests/bad_input_worker.py): a crash or a hang
fails that case, not the run. Every case compares with torch.nn where torch has the op,
and otherwise states the error it expects (its type, and the argument it must name)."""

import json
import os
import select
import subprocess
import sys
import textwrap

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "bad_input_worker.py")
CASE_TIMEOUT_S = 120  # a hang, not a slow case: the slowest takes a few seconds


class Worker:
    def __init__(self):
        self.process = None

    def run(self, code):
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        self.process.stdin.write(json.dumps({"code": code}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], CASE_TIMEOUT_S)
        if not ready:
            self.close()
            return {"passed": False, "error": f"hung: no answer in {CASE_TIMEOUT_S} s"}
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            self.process = None
            return {"passed": False, "error": f"the process died (exit status {code})"}
        return json.loads(line)

    def close(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


CASES = {
    # ---- LRN: any size computes the right answer (a window wider than C covers them all)
    "lrn_size_2p63m1_functional": """
        x = torch.randn(2, 6, 5, 5)
        y = cnnkit.functional.local_response_norm(x, 2**63 - 1)
        assert torch.allclose(y, cnnkit.reference.local_response_norm(x, 2**63 - 1), atol=1e-6)
    """,
    "lrn_size_2p63m1_raw_op": """
        x = torch.randn(2, 6, 5, 5)
        y = torch.ops.cnnkit.local_response_norm(x, 2**63 - 1)
        assert torch.allclose(y, cnnkit.reference.local_response_norm(x, 2**63 - 1), atol=1e-6)
    """,
    "lrn_size_2p62m1_channels_last": """
        x = torch.randn(2, 6, 5, 5).to(memory_format=torch.channels_last)
        y = cnnkit.nn.LocalResponseNorm(2**62 - 1)(x)
        assert torch.allclose(y, cnnkit.reference.local_response_norm(x, 2**62 - 1), atol=1e-6)
    """,
    "lrn_size_2p62_three_channels": """
        x = torch.randn(1, 3, 2, 2)
        assert torch.allclose(cnnkit.nn.LocalResponseNorm(2**62)(x), cnnkit.reference.local_response_norm(x, 2**62))
    """,
    "lrn_size_2p40_backward": """
        x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
        (cnnkit.nn.LocalResponseNorm(2**40, alpha=1e6)(x) * torch.arange(x.numel()).view_as(x)).sum().backward()
        x2 = x.detach().clone().requires_grad_()
        (cnnkit.reference.local_response_norm(x2, 2**40, 1e6) * torch.arange(x.numel()).view_as(x)).sum().backward()
        assert torch.allclose(x.grad, x2.grad)
    """,
    "lrn_tf_radius_2p63m1": """
        x = torch.randn(2, 5, 3, 3)
        for convention in ("tf", "paper", "cudnn"):
            y = cnnkit.functional.local_response_norm(x, 2**63 - 1, convention=convention)
            assert torch.allclose(y, cnnkit.reference.local_response_norm(x, 2**63 - 1, convention=convention))
    """,
    "lrn_size_zero_names_size": """
        raises(lambda: cnnkit.nn.LocalResponseNorm(0)(torch.randn(1, 3, 2, 2)), ValueError, "size")
    """,
    "lrn_size_float_names_size": """
        raises(lambda: cnnkit.nn.LocalResponseNorm(2.5)(torch.randn(1, 3, 2, 2)), TypeError, "size")
    """,
    "lrn_rank_2": """
        like_torch(lambda: cnnkit.nn.LocalResponseNorm(2)(torch.randn(3, 4)),
                   lambda: torch.nn.LocalResponseNorm(2)(torch.randn(3, 4)))
    """,
    "lrn_integer_bool_complex_dtypes": """
        for dtype in (torch.bool, torch.uint8, torch.complex64):
            x = torch.ones(1, 3, 2, 2, dtype=dtype)
            like_torch(lambda: cnnkit.nn.LocalResponseNorm(2)(x), lambda: torch.nn.LocalResponseNorm(2)(x))
        # torch computes an integer LRN for int64 (truncating every step); cnnkit refuses it.
        raises(lambda: cnnkit.nn.LocalResponseNorm(2)(torch.ones(1, 3, 2, 2, dtype=torch.int64)), NotImplementedError)
        for dtype in (torch.bool, torch.uint8, torch.int64, torch.complex64):
            x = torch.ones(1, 3, 2, 2, dtype=dtype)
            raises(lambda: torch.ops.cnnkit.local_response_norm(x, 2), NotImplementedError, "floating-point")
    """,
    "lrn_fake_rank_2_meta": """
        raises(lambda: torch.ops.cnnkit.local_response_norm(torch.empty(2, 3, device="meta"), 2), ValueError, "3D")
    """,
    "lrn_fake_size_zero": """
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode():
            x = torch.empty(2, 3, 4, 4)
            raises(lambda: torch.ops.cnnkit.local_response_norm(x, 0), ValueError, "size")
    """,
    "lrn_compile_size_zero_fails_at_trace": """
        f = torch.compile(lambda x: torch.ops.cnnkit.local_response_norm(x, 0), backend="eager", fullgraph=True)
        raises(lambda: f(torch.randn(2, 3, 4, 4)), Exception, "size")
    """,
    "lrn_zero_size_dims": """
        for shape in ((0, 3, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0), (0, 3, 0, 0)):
            x = torch.randn(shape)
            like_torch(lambda: cnnkit.nn.LocalResponseNorm(3)(x), lambda: torch.nn.LocalResponseNorm(3)(x))
    """,
    "lrn_expanded_and_overlapping_input": """
        base = torch.randn(1, 3, 1, 1)
        for x in (base.expand(2, 3, 4, 4), torch.randn(20).as_strided((2, 3, 4, 4), (1, 1, 1, 1)),
                  torch.randn(4, 4, 3, 2).permute(3, 2, 0, 1)):
            like_torch(lambda: cnnkit.nn.LocalResponseNorm(3)(x), lambda: torch.nn.LocalResponseNorm(3)(x))
    """,
    "lrn_nan_inf_input": """
        x = torch.randn(2, 5, 3, 3)
        x[0, 1, 1, 1], x[1, 3, 0, 0] = float("nan"), float("inf")
        like_torch(lambda: cnnkit.nn.LocalResponseNorm(3)(x), lambda: torch.nn.LocalResponseNorm(3)(x))
    """,
    "lrn_grad_output_wrong_shape": """
        backward = torch.ops.cnnkit.local_response_norm_backward
        raises(lambda: backward(torch.randn(1, 3, 2), torch.randn(1, 3, 2, 2), 3, 1e-4, 0.75, 1.0, "torch"),
               ValueError, "grad_output")
    """,
    # ---- BatchNorm: statistics that overflow stay as finite as torch's
    # torch's float32 kernel overflows here (zeros out, running_var inf); the variance itself
    # is finite, and so are the float64 results these cases hold cnnkit to.
    "bn_stats_minus_3e19": """
        x = torch.zeros(2, 1, 2, 2)
        x[0, 0, 0, 0] = -3e19
        ours, exact = cnnkit.nn.BatchNorm2d(1), torch.nn.BatchNorm2d(1).double()
        y, expected = ours(x), exact(x.double())
        assert torch.allclose(y.double(), expected, atol=1e-5), (y, expected)
        assert torch.allclose(ours.running_var.double(), exact.running_var, rtol=1e-5), ours.running_var
    """,
    "bn_stats_1e30": """
        x = torch.randn(4, 3, 5, 5) * 1e30
        for layout in (torch.contiguous_format, torch.channels_last):
            like_torch(lambda: cnnkit.nn.BatchNorm2d(3)(x.to(memory_format=layout)), lambda: torch.nn.BatchNorm2d(3)(x))
    """,
    # Near float32's limit (variance 2e38), a group of values whose own variance is out of
    # range makes the variance inf and the output 0; never NaN, whatever the thread count.
    "bn_stats_1p5e19_any_thread_count": """
        x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 1.5e19
        for layout in (torch.contiguous_format, torch.channels_last):
            outputs = []
            for threads in (1, 2, 3, 4):
                torch.set_num_threads(threads)
                outputs.append(cnnkit.nn.BatchNorm2d(3)(x.to(memory_format=layout)))
                assert not outputs[-1].isnan().any(), (threads, layout)
            assert all(torch.allclose(y, outputs[0], atol=1e-5) for y in outputs), layout
    """,
    "bn_stats_5e18_any_thread_count": """
        x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 5e18
        expected = torch.nn.BatchNorm2d(3).double()(x.double()).float()
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            for layout in (torch.contiguous_format, torch.channels_last):
                y = cnnkit.nn.BatchNorm2d(3)(x.to(memory_format=layout))
                assert torch.allclose(y, expected, atol=1e-5), (threads, layout, (y - expected).abs().max())
    """,
    "bn_grad_far_from_zero": """
        x = (torch.randn(1, 1, 1, 2, generator=torch.Generator().manual_seed(0)) - 100).requires_grad_()
        g = torch.randn(1, 1, 1, 2, generator=torch.Generator().manual_seed(146))
        bn = cnnkit.nn.BatchNorm2d(1, affine=False, track_running_stats=False).eval()
        bn(x).backward(g)
        x32, x64 = x.detach().clone().requires_grad_(), x.detach().double().requires_grad_()
        torch.nn.BatchNorm2d(1, affine=False, track_running_stats=False).eval()(x32).backward(g)
        torch.nn.BatchNorm2d(1, affine=False, track_running_stats=False).double().eval()(x64).backward(g.double())
        ours, theirs = ((grad.double() - x64.grad).abs().max().item() for grad in (x.grad, x32.grad))
        assert ours <= 2 * theirs + 1e-6, (x.grad, x32.grad, x64.grad)
    """,
    "bn_momentum_str": """
        like_torch(lambda: cnnkit.nn.BatchNorm2d(3, momentum="0.1")(torch.randn(2, 3, 4, 4)),
                   lambda: torch.nn.BatchNorm2d(3, momentum="0.1")(torch.randn(2, 3, 4, 4)))
    """,
    "bn_fake_weight_for_other_channels": """
        x, stats = torch.empty(2, 3, 4, 4, device="meta"), torch.empty(3, device="meta")
        raises(lambda: torch.ops.cnnkit.batch_norm_act(x, torch.empty(4, device="meta"), None, None, stats, stats,
                                                       True, 1, 0.0), RuntimeError, "weight")
    """,
    "bn_fake_backward_checks": """
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode():
            x, stats = torch.empty(2, 3, 4, 4), torch.empty(3)
            raises(lambda: torch.ops.cnnkit.batch_norm_act_backward(torch.empty(2, 3, 4), x, None, None,
                   torch.empty(0, dtype=torch.bool), stats, stats, True, 1, 0.0, False), ValueError, "grad_output")
            raises(lambda: torch.ops.cnnkit.batch_norm_train_stats(x, torch.empty(4), torch.empty(3), 0.1, 1e-5),
                   RuntimeError, "running_mean")
    """,
    "bn_running_mean_int64": """
        stats = torch.ops.cnnkit.batch_norm_train_stats
        raises(lambda: stats(torch.randn(4, 3, 2, 2), torch.zeros(3, dtype=torch.int64), torch.ones(3), 0.1, 1e-5),
               TypeError, "running_mean")
    """,
    "bn_running_mean_expanded": """
        raises(lambda: torch.ops.cnnkit.batch_norm_train_stats(torch.randn(4, 3, 2, 2), torch.zeros(1).expand(3),
                                                               torch.ones(3), 0.1, 1e-5), ValueError, "running_mean")
    """,
    "bn_running_mean_requires_grad": """
        stats = torch.ops.cnnkit.batch_norm_train_stats
        raises(lambda: stats(torch.randn(4, 3, 2, 2), torch.zeros(3, requires_grad=True), torch.ones(3), 0.1, 1e-5),
               RuntimeError, "running_mean")
    """,
    "bn_running_stats_inference_tensors": """
        with torch.inference_mode():
            ours_mean, ours_var = torch.zeros(3), torch.ones(3)
            torch_mean, torch_var = torch.zeros(3), torch.ones(3)
        x = torch.randn(4, 3, 2, 2)
        y = cnnkit.functional.batch_norm_act(x, ours_mean, ours_var, training=True, activation=None)
        expected = F.batch_norm(x, torch_mean, torch_var, training=True)
        assert torch.allclose(y, expected, atol=1e-6)
        # The update happened (a skipped one leaves zeros, far from torch's largest mean), and
        # matches torch's up to the rounding of a differently ordered sum (1e-8 at these sizes).
        assert torch_mean.abs().max() > 1e-3
        assert torch.allclose(ours_mean, torch_mean, atol=1e-6) and torch.allclose(ours_var, torch_var, atol=1e-6)
    """,
    "bn_one_dimensional_empty_input": """
        for training in (False, True):
            like_torch(lambda: cnnkit.functional.batch_norm_act(torch.randn(0), torch.zeros(0), torch.ones(0),
                                                                training=training, activation=None),
                       lambda: F.batch_norm(torch.randn(0), torch.zeros(0), torch.ones(0), training=training))
    """,
    "bn_wrong_weight_bias_running_shapes": """
        x = torch.randn(4, 3, 2, 2)
        for kwargs in ({"weight": torch.ones(4)}, {"bias": torch.ones(2)}, {"weight": torch.ones(3, 1)}):
            for training in (False, True):
                like_torch(lambda: cnnkit.functional.batch_norm_act(x, torch.zeros(3), torch.ones(3), training=training,
                                                                    activation=None, **kwargs),
                           lambda: F.batch_norm(x, torch.zeros(3), torch.ones(3), training=training, **kwargs))
        for running in ((torch.zeros(4), torch.ones(4)), (torch.zeros(3), torch.ones(2))):
            for training in (False, True):
                like_torch(lambda: cnnkit.functional.batch_norm_act(x, *running, training=training, activation=None),
                           lambda: F.batch_norm(x, *running, training=training))
    """,
    "bn_residual_wrong_shape_dtype_device": """
        x = torch.randn(4, 3, 2, 2)
        bn = cnnkit.nn.BatchNormReLU2d(3)
        raises(lambda: bn(x, residual=torch.randn(4, 3, 2)), ValueError, "residual")
        raises(lambda: bn(x, residual=torch.randn(4, 3, 2, 2, dtype=torch.float64)), TypeError, "residual")
        raises(lambda: bn(x, residual=torch.randn(4, 3, 2, 2, device="meta")), RuntimeError, "residual")
    """,
    "bn_integer_and_complex_input": """
        for dtype in (torch.int64, torch.bool, torch.complex64):
            x = torch.ones(4, 3, 2, 2, dtype=dtype)
            raises(lambda: cnnkit.nn.BatchNorm2d(3)(x), (NotImplementedError, RuntimeError))
            raises(lambda: torch.ops.cnnkit.batch_norm_stats(x), NotImplementedError, "input")
    """,
    "bn_wrong_rank": """
        for shape in ((4, 3), (4, 3, 2), (4, 3, 2, 2, 2)):
            x = torch.randn(shape)
            like_torch(lambda: cnnkit.nn.BatchNorm2d(3)(x), lambda: torch.nn.BatchNorm2d(3)(x))
        raises(lambda: torch.ops.cnnkit.batch_norm_stats(torch.randn(3)), ValueError, "dimensions")
    """,
    "bn_zero_size_dims": """
        for shape in ((0, 3, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0), (1, 3, 1, 1)):
            x = torch.randn(shape)
            for training in (True, False):
                ours, theirs = cnnkit.nn.BatchNorm2d(shape[1]), torch.nn.BatchNorm2d(shape[1])
                ours.train(training), theirs.train(training)
                like_torch(lambda: ours(x), lambda: theirs(x))
                assert torch.equal(ours.running_mean, theirs.running_mean)
        # No channels: torch's kernel fails on an index (IndexError); there is nothing to normalise.
        assert cnnkit.nn.BatchNorm2d(0)(torch.randn(2, 0, 4, 4)).shape == (2, 0, 4, 4)
    """,
    "bn_expanded_overlapping_transposed_input": """
        for x in (torch.randn(1, 3, 1, 1).expand(2, 3, 4, 4), torch.randn(30).as_strided((2, 3, 4, 4), (3, 1, 2, 1)),
                  torch.randn(4, 4, 3, 2).permute(3, 2, 0, 1)):
            # atol: the expanded input's channels are constant, so eps alone scales (x - mean) by 316
            like_torch(lambda: cnnkit.nn.BatchNormReLU2d(3)(x), lambda: torch.relu(torch.nn.BatchNorm2d(3)(x)),
                       atol=1e-4)
    """,
    "bn_nan_inf_parameters": """
        x = torch.randn(4, 3, 2, 2)
        ours, theirs = cnnkit.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            for bn in (ours, theirs):
                bn.weight[0], bn.bias[1], bn.running_var[2] = float("nan"), float("inf"), float("inf")
        like_torch(lambda: ours(x), lambda: theirs(x))
        like_torch(lambda: ours.eval()(x), lambda: theirs.eval()(x))
    """,
    "bn_bad_eps": """
        x = torch.randn(4, 3, 2, 2)
        for eps in (0.0, -1.0):
            like_torch(lambda: cnnkit.nn.BatchNorm2d(3, eps=eps)(x), lambda: torch.nn.BatchNorm2d(3, eps=eps)(x))
    """,
    "bn_bad_constructor_arguments": """
        for args in ((-1,), (2.5,), ("3",)):
            like_torch(lambda: cnnkit.nn.BatchNorm2d(*args), lambda: torch.nn.BatchNorm2d(*args))
        raises(lambda: cnnkit.functional.batch_norm_act(torch.randn(2, 3, 2, 2), None, None, training=True,
                                                        activation="gelu"), ValueError, "activation")
    """,
    "bn_fake_under_compile_matches_eager_error": """
        bn = cnnkit.nn.BatchNorm2d(3)
        f = torch.compile(bn, backend="eager")
        raises(lambda: f(torch.randn(2, 4, 3, 3)), Exception, "4")
    """,
    "max_pool_fake_checks": """
        x = torch.empty(2, 3, 8, 8, device="meta")
        raises(lambda: torch.ops.cnnkit.max_pool2d(x, [0]), RuntimeError, "kernel size")
        raises(lambda: torch.ops.cnnkit.max_pool2d(torch.empty(3, 8, 8, device="meta"), [2]), ValueError, "4-D")
        raises(lambda: torch.ops.cnnkit.max_pool2d(torch.empty(2, 3, 1, 1, device="meta"), [3]), RuntimeError,
               "too small")
        assert torch.ops.cnnkit.max_pool2d(x, [2]).shape == (2, 3, 4, 4)
    """,
    # ---- other entry points
    "summary_bad_sizes": """
        model = cnnkit.models.get_model("lenet5")
        for size in ((1, -1, 32), (1, 0, 32), "32", (1, 32)):
            raises(lambda: cnnkit.summary(model, input_size=size), (ValueError, TypeError), "input_size")
    """,
    "fuse_non_modules": """
        for value in (3, "resnet18", None):
            raises(lambda: cnnkit.fuse(value), TypeError)
    """,
    "idx_header_wrapping_to_zero_bytes": """
        import struct, tempfile, os
        from cnnkit.data.errors import DataFormatError
        from cnnkit.data.idx import read_idx
        path = os.path.join(tempfile.mkdtemp(), "wrap-idx3-ubyte")
        with open(path, "wb") as f:
            f.write(bytes([0, 0, 0x08, 3]) + struct.pack(">III", 2**31, 2**31, 4))
        raises(lambda: read_idx(path), DataFormatError, path)
    """,
    "cifar_batch_asking_for_a_tebibyte": """
        import pickle, pickletools, tempfile, os, numpy as np
        from cnnkit.data.errors import DataFormatError
        from cnnkit.data.cifar import _read_batch
        path = os.path.join(tempfile.mkdtemp(), "data_batch_1")
        # _reconstruct(ndarray, (2**40,), b"B"): numpy would allocate 1 TiB before any check.
        payload = (b"\\x80\\x02}q\\x00(X\\x04\\x00\\x00\\x00dataq\\x01cnumpy.core.multiarray\\n_reconstruct\\n"
                   b"cnumpy\\nndarray\\n\\x8a\\x06\\x00\\x00\\x00\\x00\\x00\\x01\\x85C\\x01B\\x87R"
                   b"X\\x06\\x00\\x00\\x00labels]u.")
        with open(path, "wb") as f:
            f.write(payload)
        raises(lambda: _read_batch(path), DataFormatError, path)
    """,
    "cifar_state_larger_than_its_bytes": """
        import pickle, tempfile, os, numpy as np
        from cnnkit.data.errors import DataFormatError
        from cnnkit.data.cifar import _read_batch
        class Liar(np.ndarray):
            def __reduce__(self):
                rebuild, args, state = np.zeros(1, np.uint8).__reduce__()
                return rebuild, args, (state[0], (2**40, 3072), state[2], state[3], b"x" * 100)
        path = os.path.join(tempfile.mkdtemp(), "data_batch_1")
        with open(path, "wb") as f:
            pickle.dump({"data": np.zeros(1, np.uint8).view(Liar), "labels": [0]}, f, protocol=2)
        raises(lambda: _read_batch(path), DataFormatError, path)
    """,
    "checkpoint_with_trailing_bytes": """
        import tempfile, os
        from cnnkit.train.checkpoint import save_checkpoint, load_checkpoint, CheckpointError
        path = save_checkpoint({"a": 1}, os.path.join(tempfile.mkdtemp(), "checkpoint-e0001-s0000000.pt"))
        with open(path, "ab") as f:
            f.write(b"junk")
        error = raises(lambda: load_checkpoint(path), CheckpointError, "trailing bytes")
        assert "truncated" not in str(error)
    """,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(worker, name):
    answer = worker.run(textwrap.dedent(CASES[name]))
    assert answer["passed"], f"{answer['error']}\n{answer.get('traceback', '')}"
