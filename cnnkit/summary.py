"""cnnkit.summary(model, input_size): a per-layer table of output shape, parameters,
multiply-accumulates and receptive field, with totals; and the `cnnkit summary NAME` command.

One forward pass with hooks on the leaf modules does the counting. MACs are those of the
convolutions and fully connected layers (the convention of the VGG and ResNet papers):
a conv computes out_channels * H_out * W_out * (in_channels / groups) * kh * kw of them.
The receptive field is followed tensor by tensor through the pass: a layer's output sees
rf_in + (effective_kernel - 1) * jump_in input pixels, with jump (the product of the
strides so far) multiplied by the layer's stride; global pools and linear layers see
the whole input. Where a tensor was made by an op outside any module (a residual add,
a flatten), the most recent layer output stands in for it when the tensor is first
consumed, and every later consumer sees that same field: its field is the widest in
the residual networks here, since the main branch always has the wider field.
"""

import argparse
import copy
import dataclasses
import operator
import sys

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

GLOBAL = None  # receptive field of a layer that sees the whole input


@dataclasses.dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int
    receptive_field: object  # int, or GLOBAL


@dataclasses.dataclass
class ModelSummary:
    rows: list
    input_shape: tuple
    total_params: int
    trainable_params: int
    total_macs: int

    def conv_weights(self):
        """Total weights of the convolutions (the ResNet paper's per-block arithmetic)."""
        return sum(row.params for row in self.rows if row.kind == "Conv2d")

    def __str__(self):
        return format_table(self)


def _pair(value):
    return value if isinstance(value, tuple) else (value, value)


def _window(module):
    """(kernel, stride, dilation) of a sliding-window layer along H, or None."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        kernel = _pair(module.kernel_size)[0]
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)[0]
        dilation = _pair(getattr(module, "dilation", 1))[0]
        return kernel, stride, dilation
    return None


def _macs(module, output):
    if isinstance(module, nn.Conv2d):
        per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _is_global(module):
    return isinstance(module, (nn.Linear, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten))


class _Tracer:
    """Forward hooks that record one LayerRow per leaf-module call."""

    def __init__(self, model):
        self.names = {module: name for name, module in model.named_modules()}
        self.rows = []
        self.fields = {}  # id(tensor) -> (receptive field, jump, tensor kept alive)
        self.last = (1, 1)

    def field_of(self, tensor):
        if not isinstance(tensor, torch.Tensor):
            return self.last
        if id(tensor) not in self.fields:
            # Made outside any module (relu(bn(out) + identity)): fixed on first sight, so
            # its consumers (the next block's shortcut and first conv) all see one field;
            # read later, self.last would be the first consumer's output field.
            self.fields[id(tensor)] = (*self.last, tensor)
        return self.fields[id(tensor)][:2]

    def hook(self, module, args, output):
        if not isinstance(output, torch.Tensor):
            return
        field, jump = self.field_of(args[0] if args else None)
        window = _window(module)
        if _is_global(module) or field is GLOBAL:
            field = GLOBAL
        elif window is not None:
            kernel, stride, dilation = window
            field, jump = field + (dilation * (kernel - 1)) * jump, jump * stride
        self.fields[id(output)] = (field, jump, output)
        self.last = (field, jump)
        self.rows.append(
            LayerRow(
                name=self.names.get(module, "?") or type(module).__name__,
                kind=type(module).__name__,
                output_shape=tuple(output.shape),
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=_macs(module, output),
                receptive_field=field,
            )
        )


def summary(model, input_size, device=None, dtype=None):
    """Summarize `model` on an input of `input_size`: (C, H, W) for one image, or (N, C, H, W).

    Runs one forward pass under no_grad on a copy of the model on the meta device (shapes
    only: no arithmetic, no memory), or on the model itself where an op has no meta
    kernel. It runs the modules in training mode and the BatchNorms in eval mode, so that
    every convolution is called as a module (fused models fold BN into the conv in eval)
    and no running statistic changes; each module's mode is restored afterwards.
    Returns a ModelSummary; print it for the table.
    """
    input_shape = _input_shape(input_size)
    reference = next(iter(model.parameters()), None)
    device = device or (reference.device if reference is not None else "cpu")
    dtype = dtype or (reference.dtype if reference is not None else torch.float32)
    try:
        rows = _trace(_meta_copy(model), torch.empty(input_shape, device="meta", dtype=dtype))
    except (NotImplementedError, RuntimeError):
        rows = _trace(model, torch.zeros(input_shape, device=device, dtype=dtype))
    unique = {id(p): p for p in model.parameters()}.values()
    return ModelSummary(
        rows=rows,
        input_shape=input_shape,
        total_params=sum(p.numel() for p in unique),
        trainable_params=sum(p.numel() for p in unique if p.requires_grad),
        total_macs=sum(row.macs for row in rows),
    )


def _input_shape(input_size):
    """(N, C, H, W) of a summary's input_size, checked before the model runs: a wrong type
    is a TypeError, a wrong count or a size below 1 a ValueError."""
    expected = "(C, H, W) or (N, C, H, W) of positive ints"
    try:
        if isinstance(input_size, (str, bytes)):  # iterable, but its characters are no sizes
            raise TypeError
        sizes = tuple(input_size)
        if any(isinstance(size, bool) for size in sizes):
            raise TypeError
        # operator.index takes ints (numpy's too) and refuses floats: 32.5 pixels is no size.
        sizes = tuple(operator.index(size) for size in sizes)
    except TypeError:
        raise TypeError(f"summary: input_size must be {expected}, got {input_size!r}") from None
    if len(sizes) not in (3, 4) or min(sizes) < 1:
        raise ValueError(f"summary: input_size must be {expected}, got {input_size!r}")
    return (1,) + sizes if len(sizes) == 3 else sizes


def _meta_copy(model):
    """A deep copy of `model` whose parameters and buffers live on the meta device."""
    memo = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _trace(model, input):
    tracer = _Tracer(model)
    modes = {module: module.training for module in model.modules()}
    handles = [
        module.register_forward_hook(tracer.hook)
        for module in model.modules()
        if not list(module.children())
    ]
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
        with torch.no_grad():
            model(input)
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()
    return tracer.rows


def _human(count):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def format_table(result):
    header = ("layer", "type", "output shape", "params", "MACs", "RF")
    lines = [
        (
            row.name,
            row.kind,
            "x".join(str(size) for size in row.output_shape),
            f"{row.params:,}" if row.params else "",
            _human(row.macs) if row.macs else "",
            "global" if row.receptive_field is GLOBAL else str(row.receptive_field),
        )
        for row in result.rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    rule = "  ".join("-" * width for width in widths)
    render = lambda cells: "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()  # noqa: E731
    text = [render(header), rule] + [render(cells) for cells in lines] + [rule]
    text += [
        f"input shape:      {'x'.join(str(size) for size in result.input_shape)}",
        f"total params:     {result.total_params:,}",
        f"trainable params: {result.trainable_params:,}",
        f"total MACs:       {result.total_macs:,} ({_human(result.total_macs)})",
    ]
    return "\n".join(text)


def _positive_int(text):
    """argparse type: a count or a size, which must be at least 1."""
    try:
        if int(text) >= 1:
            return int(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")


def main(argv=None):
    """`cnnkit summary NAME [--input-size C H W] [--num-classes N] [--stride-in-1x1] [--unfused]`,
    or `cnnkit summary --list`"""
    from cnnkit.models import get_model, list_models, model_info

    parser = argparse.ArgumentParser(prog="cnnkit summary", description="per-layer table of a model of the zoo")
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(list_models())}")
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
    parser.add_argument("--input-size", type=_positive_int, nargs="+", metavar="N",
                        help="C H W, or H (square, default channels); default: the model's own")
    parser.add_argument("--num-classes", type=_positive_int)
    parser.add_argument("--stride-in-1x1", action="store_true",
                        help="ResNet bottlenecks: stride on the first 1x1 (the paper's placement)")
    parser.add_argument("--unfused", action="store_true", help="build with plain torch.nn modules")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(list_models()))
        return 0
    if args.name is None:
        parser.error("a model name is required (see --list)")
    if args.name not in list_models():
        print(f"cnnkit summary: unknown model {args.name!r}; expected one of: "
              f"{', '.join(list_models())}", file=sys.stderr)
        return 2
    info = model_info(args.name)
    input_size = info.input_size
    if args.input_size:
        if len(args.input_size) == 1:
            input_size = (info.input_size[0], args.input_size[0], args.input_size[0])
        elif len(args.input_size) == 3:
            input_size = tuple(args.input_size)
        else:
            parser.error("--input-size takes H, or C H W")
    kwargs = {"fused": not args.unfused, "in_channels": input_size[0]}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.stride_in_1x1:
        kwargs["stride_in_1x1"] = True
    try:
        with torch.device("meta"):  # shapes and counts only: no weights, no arithmetic
            model = get_model(args.name, **kwargs)
        print(f"{args.name} ({info.paper})")
        print(summary(model, input_size))
    except (TypeError, ValueError) as error:
        print(f"cnnkit summary: {error}", file=sys.stderr)
        return 2
    return 0
