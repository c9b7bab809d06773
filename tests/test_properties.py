"""Property tests (hypothesis) of parity with torch.nn: LRN and BatchNorm(+ReLU)(+residual)
forward and backward over random shapes of rank 3 to 5 (dims of 1 included), layouts
(contiguous, channels_last, transposed views), dtypes, offsets and scales.

The bar is torch.nn's own accuracy: both are compared with a float64 computation of the
same input, and cnnkit's error may be at most twice torch's plus a few units in the last
place of the output's scale. The examples are derandomised with a fixed budget, so CI runs
the same cases every time."""

import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnkit

# CNNKIT_PROPERTY_EXAMPLES raises the budget for a longer search than CI runs.
BUDGET = settings(max_examples=int(os.environ.get("CNNKIT_PROPERTY_EXAMPLES", 60)), deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow])
EPS = {torch.float32: 2.0**-23, torch.float64: 2.0**-52, torch.bfloat16: 2.0**-8}


@st.composite
def inputs(draw, dtypes=(torch.float32, torch.float64, torch.bfloat16)):
    """(x, grad, dtype): x of rank 3-5 in one of the layouts, offset and scaled."""
    rank = draw(st.integers(3, 5))
    shape = [draw(st.integers(1, 4)), draw(st.integers(1, 9))] + [draw(st.integers(1, 5)) for _ in range(rank - 2)]
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    # Offsets up to 1e4 standard deviations (float32); bfloat16 keeps 8 bits, so less there.
    offset = draw(st.sampled_from([0.0, -3.0, 100.0, 1e4] if dtype != torch.bfloat16 else [0.0, -3.0, 10.0]))
    gen = torch.Generator().manual_seed(seed)
    x = ((torch.randn(shape, generator=gen, dtype=torch.float64) + offset) * scale).to(dtype)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed"]))
    if layout == "channels_last" and rank in (4, 5):
        x = x.to(memory_format=torch.channels_last if rank == 4 else torch.channels_last_3d)
    elif layout == "transposed":  # a non-dense view: the last two dims swapped, values kept
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x, grad, dtype


class _RoundToBFloat16(torch.autograd.Function):
    """float32 rounded to bfloat16 forward, and the gradient rounded to it backward."""

    @staticmethod
    def forward(ctx, t):
        return t.to(torch.bfloat16)

    @staticmethod
    def backward(ctx, g):
        return g.to(torch.bfloat16).float()


def forward_backward(fn, x, grad, dtype=None):
    x = x.detach().to(dtype or x.dtype).requires_grad_()
    y = fn(x)
    y.backward(grad.to(y.dtype))
    return y.detach().double(), x.grad.double()


def assert_as_accurate_as_torch(ours, theirs, exact, dtype, what, conditioning=(0.0, 0.0)):
    """ours (output, grad_input) within twice torch's error against the float64 result, plus
    8 units in the last place of each result's scale. `conditioning` adds, per result, what
    one rounding of the statistics moves it by (in units of relative precision): the batch
    mean stored in float32 is that rounded, in torch as in cnnkit, and the normalisation
    multiplies it by weight * invstd."""
    for name, a, b, e, gain in zip(("output", "grad_input"), ours, theirs, exact, conditioning):
        ours_err, torch_err = (a - e).abs().max().item(), (b - e).abs().max().item()
        scale = e.abs().max().item() + 1.0 + gain
        assert ours_err <= 2 * torch_err + 8 * EPS[dtype] * scale, (what, name, ours_err, torch_err, scale)


@BUDGET
@given(inputs(), st.sampled_from([1, 2, 3, 5, 12]), st.sampled_from([0.5, 0.75]))
def test_lrn_as_accurate_as_torch(case, size, beta):
    x, grad, dtype = case
    x = x / x.abs().amax().clamp_min(1)  # LRN of values far from 1 is only k or x: keep it informative
    args = (size, 1e-2, beta, 1.0)
    ours = forward_backward(lambda t: cnnkit.nn.LocalResponseNorm(*args)(t), x, grad)
    # torch has no bfloat16 LRN on CPU: its float32 result rounded to bfloat16 stands in.
    # (contiguous: torch.nn.LocalResponseNorm views its 5-D input and fails on some strides)
    def torch_lrn(t):
        if dtype == torch.bfloat16:
            return _RoundToBFloat16.apply(torch.nn.LocalResponseNorm(*args)(t.float().contiguous()))
        return torch.nn.LocalResponseNorm(*args)(t.contiguous())

    theirs = forward_backward(torch_lrn, x, grad)
    exact = forward_backward(lambda t: torch.nn.LocalResponseNorm(*args)(t.contiguous()), x, grad, torch.float64)
    assert_as_accurate_as_torch(ours, theirs, exact, dtype, "lrn")


def _batch_norm_act(batch_norm, params, training, relu, residual):
    """t -> act(batch_norm(t, running_mean, running_var, weight, bias) + residual), with
    batch_norm cnnkit's or torch's; the running statistics are updated in `params`."""
    def run(t):
        mean, var, weight, bias = params
        if batch_norm is cnnkit.functional.batch_norm_act:
            return batch_norm(t, mean, var, weight, bias, training, activation="relu" if relu else None,
                              residual=residual)
        y = batch_norm(t, mean, var, weight, bias, training)
        y = y if residual is None else y + residual
        return torch.relu(y) if relu else y
    return run


@BUDGET
@given(inputs(), st.booleans(), st.booleans(), st.booleans())
def test_batch_norm_act_as_accurate_as_torch(case, training, relu, with_residual):
    x, grad, dtype = case
    channels = x.size(1)
    if training and x.numel() // channels < 2:
        return  # one value per channel is refused in training (a bad-input case elsewhere)
    gen = torch.Generator().manual_seed(channels)
    center, spread = x.double().mean().item(), x.double().std(correction=0).item() + 1e-3
    params64 = (torch.randn(channels, generator=gen, dtype=torch.float64) * spread + center,
                torch.rand(channels, generator=gen, dtype=torch.float64) * spread**2 + 1e-3,
                torch.rand(channels, generator=gen, dtype=torch.float64) * 1.5 + 0.5,
                torch.rand(channels, generator=gen, dtype=torch.float64) * 2 - 1)
    residual = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype) if with_residual else None
    # bfloat16 input keeps float32 parameters, as under autocast.
    param_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    ours_params = [p.to(param_dtype) for p in params64]
    torch_params = [p.to(param_dtype) for p in params64]
    exact_params = [p.to(param_dtype).double() for p in params64]  # exact for the parameters both are given
    ours = forward_backward(_batch_norm_act(cnnkit.functional.batch_norm_act, ours_params, training, relu, residual),
                            x, grad)
    theirs = forward_backward(_batch_norm_act(torch.nn.functional.batch_norm, torch_params, training, relu, residual),
                              x, grad)
    exact = forward_backward(
        _batch_norm_act(torch.nn.functional.batch_norm, exact_params, training, relu,
                        None if residual is None else residual.double()), x, grad, torch.float64)
    # How far one rounding of the mean moves the output and the gradient, per unit of it.
    dims = [0] + list(range(2, x.dim()))
    x64 = x.double()
    mean = x64.mean(dims) if training else exact_params[0]
    var = x64.var(dims, correction=0) if training else exact_params[1]
    invstd = (var + 1e-5).rsqrt().max().item()
    gain = mean.abs().max().item() * exact_params[2].abs().max().item() * invstd
    conditioning = (gain, gain * invstd * grad.double().abs().max().item())
    if relu:
        # Where the exact pre-activation is within that reach of 0, the precision cannot decide
        # the ReLU's side, in torch as in cnnkit: the gradient there is left out.
        pre = _batch_norm_act(torch.nn.functional.batch_norm, [p.to(param_dtype).double() for p in params64],
                              training, False, None if residual is None else residual.double())(x.double())
        decided = (pre.abs() > 8 * EPS[dtype] * (gain + 1.0)).double()
        ours, theirs, exact = ((y, g * decided) for y, g in (ours, theirs, exact))
    assert_as_accurate_as_torch(ours, theirs, exact, dtype, "batch_norm_act", conditioning)
    for ours_stat, torch_stat, exact_stat in zip(ours_params[:2], torch_params[:2], exact_params[:2]):
        ours_err = (ours_stat.double() - exact_stat).abs().max().item()
        torch_err = (torch_stat.double() - exact_stat).abs().max().item()
        assert ours_err <= 2 * torch_err + 8 * EPS[param_dtype] * (exact_stat.abs().max().item() + 1.0)
