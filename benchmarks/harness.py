"""Shared benchmark harness: timing, peak memory, the machine's name, tables and JSON.

Timing follows DESIGN.md: torch.utils.benchmark with warm-up and torch.get_num_threads()
threads on the CPU, CUDA events on a GPU, the baseline and ours measured in the same process
and interleaved round by round, the median of the rounds reported.
"""

import json
import os
import statistics

import torch
import torch.utils.benchmark as benchmark

from cnnkit.info import git_revision, machine  # noqa: F401  (the benchmarks' names for them)


def _median_ms(fn, min_run_time):
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _cuda_event_ms(fn, min_run_time):
    """ms per call of fn on the current CUDA stream: back-to-back calls between two CUDA
    events, as many as fill min_run_time, the median of three such runs. The host never
    waits between calls, so launch overhead hides behind the GPU's work as it does in a
    real step (and shows where the GPU's work is shorter)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run(calls):
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    calls = 1
    while (elapsed := run(calls)) < min_run_time * 1e3 and calls < 2**16:
        calls = min(2**16, max(calls * 2, int(calls * min_run_time * 1e3 / max(elapsed, 1e-3))))
    return statistics.median(run(calls) / calls for _ in range(3))


def time_interleaved(fns, rounds=5, min_run_time=0.2, device="cpu"):
    """{name: median ms} for each callable of `fns`, measured in alternating rounds so that
    drift in the machine's speed hits every contender alike. On a CUDA device the time is
    the GPU's, by CUDA events; on the CPU, torch.utils.benchmark's."""
    measure = _cuda_event_ms if torch.device(device).type == "cuda" else _median_ms
    for fn in fns.values():  # warm-up: allocator, caches, compilation
        fn()
        fn()
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(measure(fn, min_run_time))
    return {name: statistics.median(values) for name, values in samples.items()}


def no_grad_call(model, input):
    def run():
        with torch.no_grad():
            model(input)
    return run


def compiled_frozen(model, input):
    """torch.compile with inductor's freezing (weights become constants, BN is folded,
    oneDNN weights prepacked), compiled now, outside the timed region."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        compiled(input)
    return no_grad_call(compiled, input)


def profiler_split(fn, in_part):
    """(ms in the part, ms in the rest) of one call of fn on the CPU, from torch.profiler's
    self times: an op counts to the part when it or an op it runs inside satisfies
    in_part(name), so the copies a convolution's backward makes count as convolution."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    part = rest = 0.0
    for event in prof.events():
        ancestor = event
        while ancestor is not None and not in_part(ancestor.name):
            ancestor = ancestor.cpu_parent
        if ancestor is None:
            rest += event.self_cpu_time_total
        else:
            part += event.self_cpu_time_total
    return part / 1e3, rest / 1e3


def peak_memory_bytes(fn):
    """Peak bytes allocated while fn() runs, above what was allocated before it started."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Every allocation (+) and free (-) the CPU allocator saw, in time order.
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def saved_tensor_bytes(fn):
    """Bytes of the tensors autograd saves for backward while fn() runs its forward (each
    storage counted once)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def record(op, shape, dtype, layout, ours_ms, baseline_ms, baseline, **extra):
    """One JSON record in DESIGN.md's schema; ratio > 1 means ours is faster."""
    return {
        "op": op,
        "shape": list(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "layout": layout,
        "ours_ms": round(ours_ms, 4),
        "baseline_ms": round(baseline_ms, 4),
        "baseline": baseline,
        "ratio": round(baseline_ms / ours_ms, 3),
        "threads": torch.get_num_threads(),
        "machine": machine(),
        **extra,
    }


def markdown_table(records, columns):
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    rows = ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in records]
    return "\n".join([header, rule, *rows])


def write_results(name, records, table, directory=None):
    """Writes <name>.json and <name>.md under benchmarks/results/ (or `directory`)."""
    directory = directory or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump(records, f, indent=1)
    with open(os.path.join(directory, f"{name}.md"), "w") as f:
        f.write(f"# {name}\n\nMachine: {machine()}; revision {git_revision()}\n\n{table}\n")
