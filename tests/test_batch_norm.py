"""cnnkit's fused BatchNorm + activation (+ residual add) against torch.nn.BatchNorm2d."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

import cnnkit
import cnnkit.functional as CF
import cnnkit.nn as cnn
from cnnkit.reference import batch_norm as reference

TOLERANCE = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
}
ACTIVATIONS = [None, "relu", "leaky_relu"]


def torch_act(out, activation, slope=0.01):
    if activation == "relu":
        return torch.relu(out)
    if activation == "leaky_relu":
        return F.leaky_relu(out, slope)
    return out


def test_compiled_kernels_are_used():
    assert cnnkit._ops.has_kernel("batch_norm_act", "cpu")
    for op in ("batch_norm_stats", "batch_norm_train_stats", "batch_norm_act_backward", "batch_norm_act_backward_reduce",
               "batch_norm_act_backward_apply"):
        assert cnnkit._ops.has_kernel(op, "cpu"), op


def make_pair(channels, activation, dtype, **kwargs):
    ref = torch.nn.BatchNorm2d(channels, dtype=dtype, **kwargs)
    with torch.no_grad():
        if ref.weight is not None:
            ref.weight.uniform_(0.5, 1.5)
        if ref.bias is not None:
            ref.bias.uniform_(-0.5, 0.5)
    ours = cnn.BatchNormReLU2d(channels, activation=activation, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def run_steps(module, x, residual, grad, activation, steps, add_act):
    """Outputs and gradients of `steps` forward/backward calls (the last one's kept)."""
    for _ in range(steps):
        xs = x.detach().clone().requires_grad_()
        rs = residual.detach().clone().requires_grad_() if residual is not None else None
        module.zero_grad()
        out = module(xs, rs) if not add_act else torch_act(module(xs) + (rs if rs is not None else 0), activation)
        out.backward(grad)
    grads = {"input": xs.grad, "residual": rs.grad if rs is not None else None}
    for name, param in module.named_parameters():
        grads[name] = param.grad
    return out.detach(), grads


def assert_modules_match(ref, ours, x, residual, activation, dtype, steps=3):
    grad = torch.randn_like(x)
    got, got_grads = run_steps(ours, x, residual, grad, activation, steps, add_act=False)
    if dtype == torch.bfloat16:
        # The truth for bfloat16 values is torch in float32: torch's own bfloat16 path rounds
        # BN's output before adding the residual, so a sum near zero can take the other side
        # of the activation there. Ours adds in float and rounds once, at the end.
        ref = ref.float()
        x, grad = x.float(), grad.float()
        residual = residual.float() if residual is not None else None
    expected, expected_grads = run_steps(ref, x, residual, grad, activation, steps, add_act=True)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got, expected.to(dtype), **tol)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert got.is_contiguous(memory_format=torch.channels_last)
    for key, value in expected_grads.items():
        if value is None:
            assert got_grads[key] is None, key
        else:
            torch.testing.assert_close(got_grads[key], value.to(dtype), **tol, msg=lambda m: f"grad {key}: {m}")
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value.to(ours.state_dict()[key].dtype), **tol,
                                   msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_module_matches_torch(dtype, channels_last, activation, with_residual, training):
    ref, ours = make_pair(19, activation, dtype)
    x = (torch.randn(4, 19, 7, 5) * 2 + 0.5).to(dtype)
    residual = torch.randn_like(x) if with_residual else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        residual = residual.to(memory_format=torch.channels_last) if with_residual else None
    ref.train(training)
    ours.train(training)
    if not training:  # non-trivial running statistics
        with torch.no_grad():
            ref.running_mean.uniform_(-1, 1)
            ref.running_var.uniform_(0.5, 2)
        ours.load_state_dict(ref.state_dict())
    assert_modules_match(ref, ours, x, residual, activation, dtype)


@pytest.mark.parametrize(
    "kwargs", [dict(momentum=None), dict(momentum=0.3), dict(affine=False), dict(track_running_stats=False),
               dict(affine=False, track_running_stats=False, momentum=None), dict(eps=1e-2), dict(bias=False)],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()),
)
@pytest.mark.parametrize("training", [True, False])
def test_module_options_match_torch(kwargs, training):
    if "bias" in kwargs and "bias" not in torch.nn.BatchNorm2d.__init__.__code__.co_varnames:
        pytest.skip("this torch's BatchNorm2d has no bias argument")
    ref, ours = make_pair(8, "relu", torch.float32, **kwargs)
    ref.train(training)
    ours.train(training)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in ref.named_parameters()]
    assert_modules_match(ref, ours, torch.randn(3, 8, 6, 6), torch.randn(3, 8, 6, 6), "relu", torch.float32, steps=4)
    if ref.num_batches_tracked is not None:
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()


@pytest.mark.parametrize("shape", [(2, 1, 3, 3), (5, 3, 1, 1), (2, 64, 1, 1), (1, 33, 17, 3), (64, 7, 2, 2), (2, 300, 4, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shapes_match_torch(shape, channels_last):
    ref, ours = make_pair(shape[1], "leaky_relu", torch.float32)
    x = torch.randn(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert_modules_match(ref, ours, x, torch.randn(shape), "leaky_relu", torch.float32)


def test_float16_on_cpu_runs_the_reference():
    ref, ours = make_pair(3, "relu", torch.float16)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float16)
    torch.testing.assert_close(ours(x), torch.relu(ref(x)), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=2e-3, rtol=2e-3)


def test_non_dense_input_and_mixed_layouts():
    ref, ours = make_pair(6, "relu", torch.float32)
    x = torch.randn(4, 6, 10, 9)[:, :, ::2, 1:]  # strided view
    residual = torch.randn(4, 6, 5, 8).to(memory_format=torch.channels_last)
    assert_modules_match(ref, ours, x, residual, "relu", torch.float32)


def test_plain_batchnorm2d_is_a_drop_in():
    ref = torch.nn.BatchNorm2d(5, momentum=None)
    ours = cnn.BatchNorm2d(5, momentum=None)
    ours.load_state_dict(ref.state_dict())
    assert_modules_match(ref, ours, torch.randn(3, 5, 4, 4), None, None, torch.float32, steps=4)
    assert repr(ours).replace("cnnkit.", "") == repr(ref)


def test_batch_statistics_are_stable_for_large_offsets():
    # Variance of values far from zero: a naive E[x^2] - E[x]^2 in float32 loses everything.
    x = torch.randn(16, 4, 64, 64, dtype=torch.float64) * 0.01 + 1000
    mean, var = torch.ops.cnnkit.batch_norm_stats(x.float())
    torch.testing.assert_close(mean.double(), x.mean((0, 2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(var.double(), x.var((0, 2, 3), unbiased=False), atol=0, rtol=1e-4)
    mean_cl, var_cl = torch.ops.cnnkit.batch_norm_stats(x.float().to(memory_format=torch.channels_last))
    torch.testing.assert_close(mean_cl.double(), x.mean((0, 2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(var_cl.double(), x.var((0, 2, 3), unbiased=False), atol=0, rtol=1e-4)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_empty_batch(training, channels_last):
    ref, ours = make_pair(4, "relu", torch.float32)
    ref.train(training)
    ours.train(training)
    x = torch.randn(0, 4, 3, 3)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert_modules_match(ref, ours, x, torch.randn(0, 4, 3, 3), "relu", torch.float32, steps=2)


def test_errors_match_torch():
    ref, ours = torch.nn.BatchNorm2d(4), cnn.BatchNormReLU2d(4)
    cases = [torch.randn(2, 4, 3), torch.randn(1, 4, 1, 1), torch.randn(2, 3, 4, 4)]
    for x in cases:
        with pytest.raises(Exception) as expected:
            ref(x)
        with pytest.raises(expected.type, match=str(expected.value).split("(")[0][:40]):
            ours(x)
    ours.eval()
    with pytest.raises(RuntimeError, match="running_mean should contain 3 elements not 4"):
        ours(torch.randn(2, 3, 4, 4))


_FUNCTIONAL_BAD_CALLS = {
    "eps 0 in training": (dict(training=True, eps=0.0), {}),
    "negative eps in eval": (dict(training=False, eps=-1e-5), {}),
    "integer input": (dict(training=False), dict(dtype=torch.int64)),
    "float64 input, float32 weight": (dict(training=False), dict(dtype=torch.float64)),
    "one value per channel, wrong channels": (dict(training=True), dict(shape=(1, 5, 1, 1))),
    "running_var missing in eval": (dict(training=False, running_var=None), {}),
    "running_mean missing in eval": (dict(training=False, running_mean=None), {}),
    "running_mean missing in training": (dict(training=True, running_mean=None), {}),
}


@pytest.mark.parametrize("case", sorted(_FUNCTIONAL_BAD_CALLS))
def test_functional_errors_match_torch(case):
    """The exception torch.nn.functional.batch_norm raises for the same call, of the same type
    and (where it names the argument) the same wording."""
    arguments, input_spec = _FUNCTIONAL_BAD_CALLS[case]
    input = torch.ones(input_spec.get("shape", (2, 4, 3, 3)), dtype=input_spec.get("dtype", torch.float32))
    call = dict(running_mean=torch.zeros(4), running_var=torch.ones(4), weight=torch.ones(4),
                bias=torch.zeros(4), training=False, momentum=0.1, eps=1e-5)
    call.update(arguments)
    with pytest.raises(Exception) as expected:
        F.batch_norm(input, **call)
    with pytest.raises(expected.type) as ours:
        CF.batch_norm_act(input, **call, activation=None)
    if expected.type is ValueError or "must be defined" in str(expected.value):
        assert str(ours.value) == str(expected.value)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_zero_channels_give_empty_results(training, layout):
    """Empty results, as torch.nn.functional.batch_norm gives without weights (with them
    torch raises an IndexError from deep inside, in training)."""
    x = torch.randn(2, 0, 3, 3).contiguous(memory_format=layout).requires_grad_()
    weight, bias = torch.ones(0, requires_grad=True), torch.zeros(0, requires_grad=True)
    residual = torch.randn(2, 0, 3, 3, requires_grad=True)
    y = CF.batch_norm_act(x, torch.zeros(0), torch.ones(0), weight, bias, training, residual=residual)
    assert y.shape == F.batch_norm(x, torch.zeros(0), torch.ones(0), None, None, training).shape
    y.sum().backward()
    assert x.grad.shape == x.shape and weight.grad.shape == (0,) and residual.grad.shape == x.shape


def test_mismatched_dtype_and_shape_raise_clearly():
    module = cnn.BatchNormReLU2d(4)
    with pytest.raises(TypeError, match="residual"):
        module(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="residual must have the input's shape"):
        module(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 2))
    with pytest.raises(RuntimeError, match="weight has dtype"):
        module(torch.randn(2, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(NotImplementedError, match="floating-point"):
        module(torch.ones(2, 4, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="activation must be one of"):
        cnn.BatchNormReLU2d(4, activation="gelu")
    meta = torch.randn(2, 4, 3, 3, device="meta")
    with pytest.raises(RuntimeError, match="is on cpu but input is on meta"):
        module(meta)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bfloat16_input_with_float32_parameters_as_under_autocast(training, channels_last):
    # Autocast hands BatchNorm a bfloat16 activation while its parameters and running
    # statistics stay float32; torch.nn.BatchNorm2d accepts the pair, and so must we.
    ref, ours = make_pair(6, "relu", torch.float32)
    ref.train(training), ours.train(training)
    x = torch.randn(4, 6, 5, 7).mul_(2).add_(0.5).to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(x.shape, dtype=torch.bfloat16)
    results = []
    for module, forward in ((ref, lambda m, t: torch.relu(m(t))), (ours, lambda m, t: m(t))):
        xs = x.clone().requires_grad_()
        out = forward(module, xs)
        out.backward(grad)
        results.append((out, xs.grad, module.weight.grad, module.bias.grad,
                        module.running_mean.clone(), module.running_var.clone()))
    for expected, actual in zip(*results):
        assert actual.dtype == expected.dtype
        torch.testing.assert_close(actual, expected, **TOLERANCE[torch.bfloat16])


def test_state_dict_and_from_torch():
    ref = torch.nn.BatchNorm2d(6)
    ref(torch.randn(4, 6, 3, 3))
    ours = cnn.BatchNormReLU2d.from_torch(ref, activation="leaky_relu", negative_slope=0.2)
    assert ours.weight is ref.weight and ours.running_var is ref.running_var
    assert ours.activation == "leaky_relu" and ours.negative_slope == 0.2
    x = torch.randn(4, 6, 3, 3)
    ref.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), F.leaky_relu(ref(x), 0.2))
    # And an nn.BatchNorm2d state_dict loads into the plain drop-in.
    fresh = cnn.BatchNorm2d(6).eval()
    fresh.load_state_dict(ref.state_dict())
    torch.testing.assert_close(fresh(x), ref(x))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(activation, with_residual, training):
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(4, dtype=torch.float64).add(0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True) if with_residual else None
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5

    def fn(x, w, b, r):
        # Fresh buffer copies: the in-place running update must not change later calls.
        return CF.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, activation, 0.1, r)

    assert torch.autograd.gradcheck(fn, (x, w, b, r))
    assert torch.autograd.gradgradcheck(fn, (x, w, b, r))


def _op_samples():
    x = torch.randn(3, 5, 4, 3)
    mean, var = torch.ops.cnnkit.batch_norm_stats(x)
    invstd = torch.rsqrt(var + 1e-5)
    w, b, r = torch.rand(5) + 0.5, torch.randn(5), torch.randn_like(x)
    g = torch.randn_like(x)
    _, mask = torch.ops.cnnkit.batch_norm_act(x, w, b, r, mean, invstd, True, 1, 0.0)
    empty = mask.new_empty(0)
    x_cl = x.to(memory_format=torch.channels_last)
    grad = lambda t: t.clone().requires_grad_()  # noqa: E731
    return [
        (torch.ops.cnnkit.batch_norm_stats.default, (x,)),
        (torch.ops.cnnkit.batch_norm_stats.default, (x_cl,)),
        (torch.ops.cnnkit.batch_norm_train_stats.default, (x, torch.zeros(5), torch.ones(5), 0.1, 1e-5)),
        (torch.ops.cnnkit.batch_norm_train_stats.default, (x_cl.double(), None, None, 0.3, 1e-3)),
        (torch.ops.cnnkit.batch_norm_act.default, (grad(x), grad(w), grad(b), grad(r), mean, invstd, True, 1, 0.0)),
        (torch.ops.cnnkit.batch_norm_act.default, (grad(x_cl), grad(w), None, None, mean, invstd, False, 2, 0.1)),
        (torch.ops.cnnkit.batch_norm_act.default, (grad(x).double(), None, None, None, mean.double(), invstd.double(), True, 0, 0.0)),
        (torch.ops.cnnkit.batch_norm_act_backward.default, (g, x, w, b, mask, mean, invstd, True, 1, 0.0, True)),
        (torch.ops.cnnkit.batch_norm_act_backward.default, (g, x_cl, None, b, empty, mean, invstd, False, 2, 0.1, False)),
        (torch.ops.cnnkit.batch_norm_act_backward_reduce.default, (g, x, w, b, empty, mean, invstd, 1, 0.0)),
        (torch.ops.cnnkit.batch_norm_act_backward_apply.default, (g, x, w, b, mask, mean, invstd, mean, var, 1, 0.0, True)),
    ]


@pytest.mark.parametrize("index", range(11))
def test_opcheck(index):
    op, args = _op_samples()[index]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    module = cnn.BatchNormReLU2d(8)
    eager = copy.deepcopy(module)
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    r = torch.randn(4, 8, 5, 5, requires_grad=True)
    for _ in range(2):
        out = compiled(x, r)
        expected = eager(x, r)
        torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), (x, r)), torch.autograd.grad(expected.sum(), (x, r)))
    torch.testing.assert_close(module.running_var, eager.running_var)
    assert module.num_batches_tracked.item() == eager.num_batches_tracked.item() == 2


def saved_bytes(fn):
    """Bytes of distinct storages autograd saves for backward while running fn()."""
    storages = {}

    def pack(tensor):
        if tensor.numel():
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("with_residual", [False, True])
def test_saves_less_for_backward_than_eager(with_residual):
    x = torch.randn(8, 32, 16, 16, requires_grad=True)
    r = torch.randn(8, 32, 16, 16, requires_grad=True) if with_residual else None
    ref, ours = torch.nn.BatchNorm2d(32), cnn.BatchNormReLU2d(32)
    eager = saved_bytes(lambda: torch.relu(ref(x) + (r if r is not None else 0)))
    fused = saved_bytes(lambda: ours(x, r))
    elements = x.numel()
    # Eager keeps BN's input and ReLU's output; ours the input (plus a byte mask with a residual).
    assert eager >= 8 * elements
    assert fused <= 4 * elements + (elements if with_residual else 0) + 4096
    assert fused < eager


def test_backward_fills_no_gradient_for_the_mask():
    """The bool mask output is not differentiated: its gradient is not materialised as zeros
    (a full-size fill per backward, with a residual)."""
    x = torch.randn(8, 32, 16, 16, requires_grad=True)
    out = cnn.BatchNormReLU2d(32)(x, torch.randn_like(x))
    grad = torch.randn_like(out)
    with torch.profiler.profile(record_shapes=True) as profiler:
        out.backward(grad)
    fills = [e.input_shapes[0] for e in profiler.events() if e.name in ("aten::fill_", "aten::zero_")]
    assert fills and all(torch.Size(shape).numel() < x.numel() for shape in fills)  # per-channel sums only
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_matches_torch(dtype):
    x = torch.randn(2, 3, 4, 4, dtype=dtype)
    r = torch.randn_like(x)
    rm, rv = torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype)
    out = reference.batch_norm_act(x, rm, rv, None, None, True, 0.1, 1e-5, "leaky_relu", 0.2, r)
    torch.testing.assert_close(out, F.leaky_relu(F.batch_norm(x, None, None, training=True) + r, 0.2))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_cuda_matches_torch(dtype, channels_last, with_residual):
    ref = torch.nn.BatchNorm2d(64).cuda()
    ours = cnn.BatchNormReLU2d(64).cuda()
    if dtype != torch.float32:
        ref, ours = ref.to(dtype), ours.to(dtype)
    x = torch.randn(8, 64, 14, 14, device="cuda", dtype=dtype)
    r = torch.randn_like(x) if with_residual else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        r = r.to(memory_format=torch.channels_last) if r is not None else None
    tol = dict(atol=1e-2, rtol=1e-2) if dtype != torch.float32 else TOLERANCE[torch.float32]
    grad = torch.randn_like(x)
    expected, expected_grads = run_steps(ref, x, r, grad, "relu", 2, add_act=True)
    got, got_grads = run_steps(ours, x, r, grad, "relu", 2, add_act=False)
    torch.testing.assert_close(got, expected, **tol)
    for key, value in expected_grads.items():
        if value is not None:
            torch.testing.assert_close(got_grads[key], value, **tol)
    torch.testing.assert_close(ours.running_var, ref.running_var, **tol)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_results_do_not_depend_on_the_thread_count(memory_format):
    """The reductions split their work into a fixed number of tasks, merged in a fixed order,
    whatever the threads: statistics, outputs and gradients are bit for bit the same."""
    x = torch.randn(6, 5, 9, 7).to(memory_format=memory_format).requires_grad_()
    residual, grad = torch.randn_like(x), torch.randn_like(x)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            x.grad = None
            bn = cnn.BatchNormReLU2d(5)
            y = bn(x, residual=residual)
            y.backward(grad)
            results.append([y, x.grad, bn.weight.grad, bn.running_mean, bn.running_var])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1)])
def test_running_var_of_a_single_value_per_channel_is_nan_as_in_torch(shape):
    # The modules refuse such a batch in training (ValueError, as torch.nn); the raw op
    # updates the running statistics as torch.batch_norm does: the unbiased variance of one
    # value is 0 / 0.
    x = torch.randn(shape)
    expected_mean, expected_var = torch.zeros(3), torch.ones(3)
    torch.batch_norm(x, None, None, expected_mean, expected_var, True, 0.1, 1e-5, False)
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    torch.ops.cnnkit.batch_norm_train_stats(x, running_mean, running_var, 0.1, 1e-5)
    torch.testing.assert_close(running_mean, expected_mean)
    torch.testing.assert_close(running_var, expected_var, equal_nan=True)
    assert running_var.isnan().all()
