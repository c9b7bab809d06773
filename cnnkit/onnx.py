"""ONNX export of models that run cnnkit's ops, with either of torch.onnx's exporters.

ONNX knows no cnnkit op, so each is written in standard ONNX: the fused BatchNorm (+
residual) + activation of an eval model as its per-channel affine form, and Local Response
Normalization as ONNX's own ``LRN`` operator, for every convention with an odd window
(see lrn_as_onnx).

    cnnkit.onnx.export(model.eval(), (x,), "model.onnx")                 # torch.export-based
    cnnkit.onnx.export(model.eval(), (x,), "model.onnx", dynamo=False)   # TorchScript-based

The training forward (batch statistics, running-statistics updates) has no ONNX form:
export the eval model.
"""

import torch
from onnxscript import opset18 as op

from cnnkit.reference.batch_norm import ACTIVATIONS
from cnnkit.reference.lrn import CONVENTIONS, lrn_alpha_coefficient, lrn_window

OPSET = 18
_RELU, _LEAKY_RELU = ACTIVATIONS["relu"], ACTIVATIONS["leaky_relu"]


def lrn_as_onnx(size, alpha, convention):
    """(onnx_size, onnx_alpha): cnnkit's LRN as ONNX's, which sums the window
    [c - (size - 1) // 2, c + size // 2] and scales the sum by alpha / size. Every
    convention's window of an odd number of channels is centred, so it is ONNX's with
    size = its width and alpha rescaled to give the convention's coefficient. onnxruntime
    implements odd sizes only, so an even window is refused."""
    if convention not in CONVENTIONS:
        raise ValueError(f"cnnkit.onnx: LRN convention must be one of {CONVENTIONS}, got {convention!r}")
    before, after = lrn_window(size, convention)
    onnx_size = before + after + 1
    if onnx_size % 2 == 0:
        raise ValueError(
            f"cnnkit.onnx: LRN with size={size} and convention={convention!r} sums an even window "
            f"of {onnx_size} channels, which ONNX runtimes do not implement (onnxruntime's LRN takes "
            "odd sizes only); use an odd size"
        )
    return onnx_size, lrn_alpha_coefficient(size, alpha, convention) * onnx_size


def _inference_only(batch_stats):
    if batch_stats:
        raise ValueError(
            "cnnkit.onnx: a BatchNorm in training mode (batch statistics) has no ONNX form; "
            "export the model in eval mode (model.eval())"
        )


# --------------------------------------------------------------------------------------
# torch.onnx.export(dynamo=True): onnxscript functions, traced by the exporter


def _batch_norm_act(input, weight, bias, residual, mean, invstd, batch_stats, activation, negative_slope):
    _inference_only(batch_stats)
    per_channel = op.Constant(value_ints=[-1, 1, 1])  # (C,) -> (C, 1, 1): broadcasts over N, H, W
    scale = invstd if weight is None else op.Mul(invstd, op.CastLike(weight, invstd))
    output = op.Mul(op.Sub(input, op.CastLike(op.Reshape(mean, per_channel), input)),
                    op.CastLike(op.Reshape(scale, per_channel), input))
    if bias is not None:
        output = op.Add(output, op.CastLike(op.Reshape(bias, per_channel), input))
    if residual is not None:
        output = op.Add(output, residual)
    if activation == _RELU:
        output = op.Relu(output)
    elif activation == _LEAKY_RELU:
        output = op.LeakyRelu(output, alpha=negative_slope)
    empty_mask = op.Constant(value_ints=[])  # the op's mask output: empty outside training
    return output, op.Cast(empty_mask, to=2)  # uint8


def _local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0, convention="torch"):
    # The exporter leaves out arguments equal to the schema's defaults: the same defaults here.
    onnx_size, onnx_alpha = lrn_as_onnx(size, alpha, convention)
    return op.LRN(input, size=onnx_size, alpha=onnx_alpha, beta=beta, bias=k)


def custom_translation_table():
    """The ``custom_translation_table`` for torch.onnx.export(dynamo=True, ...)."""
    return {
        torch.ops.cnnkit.batch_norm_act.default: _batch_norm_act,
        torch.ops.cnnkit.local_response_norm.default: _local_response_norm,
    }


# --------------------------------------------------------------------------------------
# torch.onnx.export(dynamo=False): symbolic functions for the TorchScript exporter


def _none(value):
    return value.node().mustBeNone()


def _symbolic_batch_norm_act(g, input, weight, bias, residual, mean, invstd, batch_stats, activation,
                             negative_slope):
    from torch.onnx import symbolic_helper

    _inference_only(symbolic_helper._parse_arg(batch_stats, "b"))
    activation = symbolic_helper._parse_arg(activation, "i")
    per_channel = g.op("Constant", value_t=torch.tensor([-1, 1, 1]))

    def channel_vector(value):
        return g.op("CastLike", g.op("Reshape", value, per_channel), input)

    scale = invstd if _none(weight) else g.op("Mul", invstd, g.op("CastLike", weight, invstd))
    output = g.op("Mul", g.op("Sub", input, channel_vector(mean)), channel_vector(scale))
    if not _none(bias):
        output = g.op("Add", output, channel_vector(bias))
    if not _none(residual):
        output = g.op("Add", output, residual)
    if activation == _RELU:
        output = g.op("Relu", output)
    elif activation == _LEAKY_RELU:
        output = g.op("LeakyRelu", output, alpha_f=symbolic_helper._parse_arg(negative_slope, "f"))
    return output, g.op("Constant", value_t=torch.zeros(0, dtype=torch.uint8))


def _symbolic_local_response_norm(g, input, size, alpha, beta, k, convention):
    from torch.onnx import symbolic_helper

    parse = symbolic_helper._parse_arg
    onnx_size, onnx_alpha = lrn_as_onnx(parse(size, "i"), parse(alpha, "f"), parse(convention, "s"))
    return g.op("LRN", input, size_i=onnx_size, alpha_f=onnx_alpha, beta_f=parse(beta, "f"), bias_f=parse(k, "f"))


def register_symbolics(opset_version=OPSET):
    """Registers the TorchScript exporter's translations of the cnnkit ops (torch keeps them
    for the process; registering again replaces them)."""
    torch.onnx.register_custom_op_symbolic("cnnkit::batch_norm_act", _symbolic_batch_norm_act, opset_version)
    torch.onnx.register_custom_op_symbolic("cnnkit::local_response_norm", _symbolic_local_response_norm,
                                           opset_version)


def export(model, args, f=None, *, dynamo=True, **kwargs):
    """torch.onnx.export(model, args, f, dynamo=dynamo, **kwargs) with the cnnkit ops'
    translations; returns what torch.onnx.export returns."""
    if dynamo:
        table = {**custom_translation_table(), **kwargs.pop("custom_translation_table", {})}
        return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
    kwargs.setdefault("opset_version", OPSET)
    register_symbolics(kwargs["opset_version"])
    return torch.onnx.export(model, args, f, dynamo=False, **kwargs)
