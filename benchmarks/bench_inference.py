"""Inference on CPU: cnnkit.optimize_for_inference against what a deploying user would pick.

Contenders, all float32, the same weights, one process, interleaved rounds (harness.py):
- eager: the torch.nn model (fused=False), NCHW input, and the same with channels_last;
- torch.compile: inductor with freezing (weights become constants, BN folded, oneDNN
  weights prepacked), NCHW input;
- onnxruntime: the torch.nn model exported by torch.onnx (dynamo), all graph optimisations,
  as many intra-op threads as torch uses, NCHW input;
- cnnkit: cnnkit.optimize_for_inference(model, example_input), NCHW input (the frozen
  model runs channels_last inside).
Cases: ResNet-50 and VGG-16-BN at batch 8, ResNet-18 and AlexNet at batch 1, 224x224.

Targets (issue 13): cnnkit >= 1.0x onnxruntime and >= 1.0x torch.compile on ResNet-50 b8
and ResNet-18 b1 (stretch: 1.15x onnxruntime).

    python benchmarks/bench_inference.py                          # all cases, writes results/
    python benchmarks/bench_inference.py --cases resnet18 --no-write
"""

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    compiled_frozen,
    git_revision,
    machine,
    markdown_table,
    no_grad_call,
    record,
    time_interleaved,
    write_results,
)

import cnnkit  # noqa: E402
from cnnkit.models import get_model  # noqa: E402

CASES = {"resnet50": 8, "vgg16_bn": 8, "resnet18": 1, "alexnet": 1}  # model -> batch
SIZE = 224


def onnxruntime_session(model, input):
    """An onnxruntime CPU session of `model` (torch.onnx's dynamo exporter), or None where
    onnxruntime is not installed (pip install onnxruntime onnxscript)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (input,), dynamo=True, verbose=False)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: input.numpy()}
    return lambda: session.run(None, feed)


def bench_case(name, batch, rounds, use_compile, use_onnxruntime):
    torch.manual_seed(0)
    plain = get_model(name, fused=False).eval()
    ours_source = get_model(name, fused=True).eval()
    ours_source.load_state_dict(plain.state_dict())
    input = torch.randn(batch, 3, SIZE, SIZE)
    frozen = cnnkit.optimize_for_inference(ours_source, input)
    with torch.no_grad():
        error = (frozen(input) - plain(input)).abs().max().item()
    plain_cl = get_model(name, fused=False).eval().to(memory_format=torch.channels_last)
    plain_cl.load_state_dict(plain.state_dict())
    contenders = {
        "cnnkit": no_grad_call(frozen, input),
        "eager": no_grad_call(plain, input),
        "eager channels_last": no_grad_call(
            plain_cl, input.contiguous(memory_format=torch.channels_last)),
    }
    if use_compile:
        contenders["torch.compile (freezing)"] = compiled_frozen(plain, input)
    if use_onnxruntime:
        session = onnxruntime_session(plain, input)
        if session is not None:
            import onnxruntime
            contenders[f"onnxruntime {onnxruntime.__version__}"] = session
    times = time_interleaved(contenders, rounds=rounds, min_run_time=0.5)
    records = []
    for baseline, baseline_ms in times.items():
        if baseline == "cnnkit":
            continue
        records.append(record(f"{name} inference", tuple(input.shape), torch.float32, "contiguous",
                              times["cnnkit"], baseline_ms, baseline,
                              max_abs_error_vs_eager=f"{error:.1e}", revision=git_revision()))
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-onnxruntime", action="store_true", help="skip onnxruntime")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write results/")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}, revision {git_revision()}", flush=True)
    columns = ["op", "shape", "ours_ms", "baseline", "baseline_ms", "ratio"]
    records = []
    for name in args.cases:
        case = bench_case(name, CASES[name], args.rounds, not args.no_compile,
                          not args.no_onnxruntime)
        print(markdown_table(case, columns), flush=True)
        records += case
    table = markdown_table(records, columns + ["max_abs_error_vs_eager"])
    print(table)
    if not args.no_write:
        write_results("bench_inference", records, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
