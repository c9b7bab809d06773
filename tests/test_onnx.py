"""ONNX export with both of torch.onnx's exporters, run in onnxruntime against PyTorch."""

import warnings

import pytest
import torch

import cnnkit
from cnnkit.models import get_model
from cnnkit.reference.lrn import CONVENTIONS, lrn_window

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = {"dynamo": True, "torchscript": False}
# float32 graphs of up to ~20 layers: onnxruntime orders its sums differently. An LRN alpha
# not rescaled to ONNX's alpha / size ("tf", "paper") fails it on these inputs, and a
# missing ReLU or residual is off by O(1).
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def run_onnx(module, input, tmp_path, dynamo):
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        cnnkit.onnx.export(module, (input,), str(path), dynamo=dynamo)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    output = session.run(None, {session.get_inputs()[0].name: input.numpy()})[0]
    return torch.from_numpy(output), onnx.load(str(path))


def node_types(model):
    return {node.op_type for node in model.graph.node} | {
        node.op_type for function in model.functions for node in function.node}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name, shape", [("alexnet_original", (1, 3, 227, 227)), ("resnet20", (2, 3, 32, 32)),
                                         ("lenet5", (2, 1, 32, 32))])
def test_model_exports_and_runs_in_onnxruntime(name, shape, exporter, tmp_path):
    torch.manual_seed(0)
    model = get_model(name).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2)
                module.bias.data.normal_(0, 0.5)
    input = torch.randn(shape)
    output, graph = run_onnx(model, input, tmp_path, EXPORTERS[exporter])
    with torch.no_grad():
        torch.testing.assert_close(output, model(input), **TOLERANCE)
    if name == "alexnet_original":
        assert "LRN" in node_types(graph)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("convention, size", [(c, s) for c in CONVENTIONS for s in (1, 2, 3, 4, 5)
                                              if sum(lrn_window(s, c)) % 2 == 0])
def test_lrn_exports_as_onnx_lrn_in_every_convention(convention, size, exporter, tmp_path):
    torch.manual_seed(0)
    module = cnnkit.nn.LocalResponseNorm(size, alpha=0.5, beta=0.75, k=1.5, convention=convention)
    input = torch.randn(2, 9, 5, 5) * 2
    output, graph = run_onnx(module, input, tmp_path, EXPORTERS[exporter])
    torch.testing.assert_close(output, cnnkit.reference.local_response_norm(input, size, 0.5, 0.75, 1.5, convention),
                               **TOLERANCE)
    assert "LRN" in node_types(graph)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
def test_fused_batch_norm_with_residual_exports(activation, exporter, tmp_path):
    class AddNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = cnnkit.nn.BatchNormReLU2d(6, activation=activation, negative_slope=0.2)

        def forward(self, x):
            return self.bn(x, residual=x.flip(0))

    torch.manual_seed(0)
    module = AddNorm().eval()
    with torch.no_grad():
        module.bn.running_mean.normal_()
        module.bn.running_var.uniform_(0.5, 2)
        module.bn.weight.normal_()
        module.bn.bias.normal_()
    input = torch.randn(2, 6, 4, 4)
    output, _ = run_onnx(module, input, tmp_path, EXPORTERS[exporter])
    with torch.no_grad():
        torch.testing.assert_close(output, module(input), **TOLERANCE)


@pytest.mark.parametrize("convention, size", [("torch", 4), ("cudnn", 2)])
def test_lrn_with_an_even_window_is_refused_naming_it(convention, size, tmp_path):
    module = cnnkit.nn.LocalResponseNorm(size, convention=convention)
    with pytest.raises(Exception, match=f"size={size} and convention='{convention}'"):
        cnnkit.onnx.export(module, (torch.randn(1, 6, 3, 3),), str(tmp_path / "m.onnx"), dynamo=False)
