"""Whole models: cnnkit's fused builds against eager torch.nn and torch.compile.

Inference (batch 8, NCHW and channels_last, float32, no_grad): the fused model frozen by
cnnkit.optimize_for_inference (BN folded into each conv, add and ReLU as the conv's
epilogue) against the same architecture from torch.nn modules, eager, and compiled with
torch.compile under inductor's freezing (which folds BN into the convs too);
bench_inference.py adds onnxruntime and batch 1. Training step (forward, backward, SGD with momentum): fused
and fused with memory_efficient=True (BN-ReLU recomputed per link) and ="block"
(checkpointed blocks) against eager, with peak memory.

Targets (issue 4): ResNet-50 channels_last inference >= 1.4x eager and no slower than
torch.compile with freezing; ResNet-50 training step >= 1.2x eager; the memory-saving
mode >= 25% less peak memory than eager.

    python benchmarks/bench_models.py                 # everything, writes results/
    python benchmarks/bench_models.py --models resnet50 --no-compile --no-write
"""

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    compiled_frozen,
    git_revision,
    machine,
    markdown_table,
    no_grad_call,
    peak_memory_bytes,
    profiler_split,
    record,
    time_interleaved,
    write_results,
)

import cnnkit  # noqa: E402
from cnnkit.models import get_model, model_info  # noqa: E402

# name -> input size of the benchmark (the model's own) and whether to compile it by default.
MODELS = {
    "lenet5": (32, True),
    "alexnet_original": (227, True),  # the paper's, with LRN (torchvision's has nothing to fuse)
    "vgg16_bn": (224, False),  # compiling VGG-16 costs minutes of the run's budget
    "resnet18": (224, True),
    "resnet50": (224, True),
    "resnet20": (32, True),  # CIFAR-10's
}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
INFERENCE_BATCH = 8
# Training steps on the CPU: each model at a batch its users train with on a small machine.
TRAIN_BATCHES = {"resnet50": 8, "resnet18": 32, "resnet20": 128}
TRAIN_BATCH = 16  # the other models'
MB = 2**20


def build_pair(name, memory_format, **kwargs):
    """(eager torch.nn model, fused cnnkit model) with the same weights."""
    torch.manual_seed(0)
    eager = get_model(name, fused=False)
    fused = get_model(name, fused=True, **kwargs)
    fused.load_state_dict(eager.state_dict())
    return eager.to(memory_format=memory_format), fused.to(memory_format=memory_format)


def bench_inference(name, layout, use_compile, rounds):
    size, _ = MODELS[name]
    channels = model_info(name).input_size[0]
    memory_format = LAYOUTS[layout]
    eager, fused = build_pair(name, memory_format)
    eager.eval()
    fused.eval()
    input = torch.randn(INFERENCE_BATCH, channels, size, size).contiguous(memory_format=memory_format)
    frozen = cnnkit.optimize_for_inference(fused, input)
    contenders = {"eager": no_grad_call(eager, input), "cnnkit": no_grad_call(frozen, input)}
    if use_compile:
        contenders["compile"] = compiled_frozen(eager, input)
    times = time_interleaved(contenders, rounds=rounds, min_run_time=0.05)
    peaks = {key: peak_memory_bytes(fn) / MB for key, fn in contenders.items()}
    shape = tuple(input.shape)
    op = f"{name} inference"
    records = [record(op, shape, torch.float32, layout, times["cnnkit"], times["eager"], "eager torch.nn",
                      ours_peak_mb=round(peaks["cnnkit"], 1), baseline_peak_mb=round(peaks["eager"], 1))]
    if use_compile:
        records.append(record(op, shape, torch.float32, layout, times["cnnkit"], times["compile"],
                              "torch.compile (freezing)", ours_peak_mb=round(peaks["cnnkit"], 1),
                              baseline_peak_mb=round(peaks["compile"], 1)))
    return records


def training_step(model, input, target, autocast_dtype=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(input.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(model(input), target)
        loss.backward()
        optimizer.step()
    return step


def is_convolution(op_name):
    """The ops of the vendor convolution (oneDNN on the CPU), forward and backward: the same
    calls in the eager and the fused model."""
    return "convolution" in op_name or "mkldnn" in op_name


def convolution_split(contenders, rounds):
    """{name: (convolution ms, everything else ms)}: the medians over `rounds` profiled
    steps, taken in turn."""
    samples = {key: [] for key in contenders}
    for _ in range(rounds):
        for key, step in contenders.items():
            samples[key].append(profiler_split(step, is_convolution))
    return {key: tuple(statistics.median(values[i] for values in runs) for i in range(2))
            for key, runs in samples.items()}


def bench_training(name, layout, rounds, device="cpu", batch=TRAIN_BATCH, autocast_dtype=None, use_compile=False):
    """The fused model (default, and each memory_efficient mode) against eager torch.nn and,
    with use_compile, torch.compile of the eager model; under autocast_dtype if given. On the
    CPU each record also carries the profiler's split of the step: time in the convolutions
    (the same oneDNN calls in every contender) and in everything else."""
    size, _ = MODELS[name]
    memory_format = LAYOUTS[layout]

    def pair(**kwargs):
        eager, fused = build_pair(name, memory_format, **kwargs)
        return eager.to(device).train(), fused.to(device).train()

    eager, fused = pair()
    channels = model_info(name).input_size[0]
    input = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=memory_format)
    target = torch.randint(0, model_info(name).num_classes, (batch,), device=device)
    models = {"eager": eager, "cnnkit": fused, "cnnkit memory_efficient=True": pair(memory_efficient=True)[1],
              "cnnkit memory_efficient='block'": pair(memory_efficient="block")[1]}
    if use_compile:
        models["torch.compile"] = torch.compile(pair()[0])
    contenders = {key: training_step(model, input, target, autocast_dtype) for key, model in models.items()}
    times = time_interleaved(contenders, rounds=rounds, min_run_time=0.05, device=device)
    peaks = {key: peak_memory_bytes(fn) / MB for key, fn in contenders.items()}
    split = {}
    if torch.device(device).type == "cpu":
        split = convolution_split({key: contenders[key] for key in ("eager", "cnnkit")}, rounds)
    dtype = autocast_dtype or torch.float32
    records = []
    for ours in (key for key in contenders if key.startswith("cnnkit")):
        for baseline, label in (("eager", "eager torch.nn"), ("torch.compile", "torch.compile")):
            if baseline not in times:
                continue
            records.append(record(
                f"{name} training step ({ours})", tuple(input.shape), dtype, layout, times[ours],
                times[baseline], label, ours_peak_mb=round(peaks[ours], 1),
                baseline_peak_mb=round(peaks[baseline], 1), device=torch.device(device).type,
                memory_saving=f"{100 * (1 - peaks[ours] / peaks[baseline]):.0f}%",
                **split_fields(split, ours, baseline),
            ))
    return records


# The training table: the step, its peak memory, and the profiler's split (the time outside
# the convolutions, ours against the baseline's).
TRAINING_COLUMNS = ["op", "shape", "ours_ms", "baseline", "baseline_ms", "ratio", "ours_peak_mb",
                    "baseline_peak_mb", "memory_saving", "ours_conv_ms", "baseline_conv_ms", "ours_other_ms",
                    "baseline_other_ms", "other_vs_baseline"]


def split_fields(split, ours, baseline):
    """The profiler split of ours and the baseline as record fields, where both were profiled."""
    if ours not in split or baseline not in split:
        return {}
    (ours_conv, ours_other), (base_conv, base_other) = split[ours], split[baseline]
    return {"ours_conv_ms": round(ours_conv, 1), "ours_other_ms": round(ours_other, 1),
            "baseline_conv_ms": round(base_conv, 1), "baseline_other_ms": round(base_other, 1),
            "other_vs_baseline": round(ours_other / base_other, 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, choices=list(MODELS),
                        help="inference benchmarks (default: all on the CPU, none on CUDA)")
    parser.add_argument("--train-models", nargs="*", default=list(TRAIN_BATCHES), choices=list(MODELS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda; training steps only on cuda")
    parser.add_argument("--train-batch", type=int, default=None,
                        help=f"default {TRAIN_BATCHES}, {TRAIN_BATCH} for others; 256 on CUDA")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None,
                        help="train under torch.autocast (default: bfloat16 on CUDA, none on the CPU)")
    parser.add_argument("--compile-training", action="store_true",
                        help="add torch.compile of the eager model to the training step (default on CUDA)")
    parser.add_argument("--output", help="directory for the results (default benchmarks/results)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write results/")
    parser.add_argument("--name", default="bench_models", help="results/<name>.json and .md")
    args = parser.parse_args(argv)

    on_cuda = torch.device(args.device).type == "cuda"
    if on_cuda and args.models:
        parser.error("--models: the inference benchmarks run on the CPU only; pass --models with no names")
    models = list(MODELS) if args.models is None and not on_cuda else (args.models or [])
    autocast = getattr(torch, args.autocast or ("bfloat16" if on_cuda else ""), None)
    print(f"machine: {machine()}, revision {git_revision()}", flush=True)
    records = []
    for name in models:
        for layout in LAYOUTS:
            use_compile = not args.no_compile and MODELS[name][1]
            records += bench_inference(name, layout, use_compile, args.rounds)
            print(markdown_table(records[-2:], ["op", "layout", "ours_ms", "baseline", "baseline_ms", "ratio"]),
                  flush=True)
    for name in args.train_models:
        batch = args.train_batch or (256 if on_cuda else TRAIN_BATCHES.get(name, TRAIN_BATCH))
        records += bench_training(name, "channels_last", args.rounds, args.device, batch, autocast,
                                  use_compile=(on_cuda or args.compile_training) and not args.no_compile)
        print(markdown_table(records[-3:], TRAINING_COLUMNS), flush=True)

    columns = ["op", "shape", "layout", "ours_ms", "baseline", "baseline_ms", "ratio",
               "ours_peak_mb", "baseline_peak_mb", "memory_saving"]
    training = [r for r in records if "training step" in r["op"]]
    inference = [r for r in records if r not in training]
    tables = [markdown_table(part, cols) for part, cols in ((inference, columns), (training, TRAINING_COLUMNS)) if part]
    table = "\n\n".join(tables)
    print(table)
    if not args.no_write:
        write_results(args.name, records, table, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
