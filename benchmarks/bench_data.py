"""The image-folder data path: can decoding keep up with training?

On generated 500x375 JPEGs (the median ImageNet photo's size; quality 90, about 67 KB):
- decode + per-image crop, images/s of one worker (one process, one thread) for each
  recipe's per-image step: AlexNet's "short side 256, centre 256x256" (evaluation's too)
  and the ResNet recipe's random-resized-crop to 224;
- the batched rest of the AlexNet recipe (random 224 crop, flip, PCA noise, normalise)
  per image, in the training process;
- FolderLoader end to end with 1 and 2 worker processes;
- a ResNet-18 training step at batch 32 (224x224, SGD with momentum, cnnkit's fused
  modules) fed by the FolderLoader against the same step fed by an in-memory uint8 tensor,
  interleaved: the step time the data path costs on this machine's cores.

    python benchmarks/bench_data.py                # writes results/bench_data.{json,md}
    python benchmarks/bench_data.py --images 64 --steps 2 --no-write   # a quick look
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import git_revision, machine, markdown_table, write_results  # noqa: E402

from cnnkit.data import (  # noqa: E402
    FolderLoader,
    RandomResizedCrop,
    ResizeCenterCrop,
    decode_image,
    load_image_folder,
    write_synthetic_image_folder,
)
from cnnkit.models import get_model  # noqa: E402
from cnnkit.train.config import available_cores  # noqa: E402
from cnnkit.train.pipeline import InputPipeline, data_statistics  # noqa: E402

SIZE = (500, 375)
BATCH = 32
RECIPES = {
    "alexnet train (short side 256, centre 256x256)": ResizeCenterCrop(256),
    "resnet train (random-resized-crop 224)": RandomResizedCrop((224, 224)),
}


def decode_rate(samples, transform):
    """Images/s of one thread decoding every sample once."""
    import random

    rng = random.Random(0)
    started = time.perf_counter()
    for path, _ in samples:
        decode_image(path, transform, rng)
    return len(samples) / (time.perf_counter() - started)


def loader_rate(folder, workers):
    """Images/s of FolderLoader batches of BATCH (one epoch, after a warm-up epoch)."""
    loader = FolderLoader(folder, BATCH, transform=ResizeCenterCrop(256), workers=workers,
                          shuffle=True)
    for _ in loader:  # starts the workers
        pass
    loader.set_epoch(1)
    started = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    rate = count / (time.perf_counter() - started)
    loader.close()
    return rate


def batched_rate(pipeline, rounds=5):
    images = torch.randint(0, 256, (BATCH, 3, 256, 256), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    pipeline.train(images, generator)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        pipeline.train(images, generator)
        times.append(time.perf_counter() - started)
    return BATCH / statistics.median(times)


def step_times(folder, pipeline, workers, steps, rounds):
    """Median seconds of a ResNet-18 step fed by the folder and by a tensor, interleaved."""
    torch.manual_seed(0)
    model = get_model("resnet18", num_classes=folder.num_classes).to(
        memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    loader = FolderLoader(folder, BATCH, transform=pipeline.decode_transform(True),
                          workers=workers, shuffle=True)

    def folder_batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    in_memory = (torch.randint(0, 256, (BATCH, 3, 256, 256), dtype=torch.uint8),
                 torch.randint(folder.num_classes, (BATCH,)))
    feeds = {"in-memory tensor": iter(lambda: in_memory, None), "image folder": folder_batches()}

    def step(feed):
        images, labels = next(feed)
        loss = torch.nn.functional.cross_entropy(model(pipeline.train(images, generator)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for feed in feeds.values():  # warm-up: workers started, allocator and kernels warm
        step(feed)
    samples = {name: [] for name in feeds}
    for _ in range(rounds):
        for name, feed in feeds.items():
            started = time.perf_counter()
            for _ in range(steps):
                step(feed)
            samples[name].append((time.perf_counter() - started) / steps)
    loader.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs to generate")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=available_cores(),
                        help="loader processes for the training-step comparison")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        write_synthetic_image_folder(directory, ("a", "b"), train=args.images // 2, val=1,
                                     size=SIZE, formats=("jpg",))
        folder = load_image_folder(directory, train=True)
        print(f"{len(folder)} JPEGs of {SIZE[0]}x{SIZE[1]}; {machine()}", flush=True)
        torch.set_num_threads(1)  # a worker's view: one process, one thread
        records = [{"measure": f"decode + crop, 1 worker: {name}",
                    "images_per_s": round(decode_rate(folder.samples, transform), 1)}
                   for name, transform in RECIPES.items()]
        stats = data_statistics(folder, ("crop", "flip", "pca"))
        pipeline = InputPipeline(stats, (224, 224), ("crop", "flip", "pca"), channels_last=True)
        records.append({"measure": "batched crop 224 + flip + PCA + normalise, 1 thread",
                        "images_per_s": round(batched_rate(pipeline), 1)})
        torch.set_num_threads(available_cores())
        for workers in (1, 2):
            records.append({"measure": f"FolderLoader, {workers} worker(s), batches of {BATCH}",
                            "images_per_s": round(loader_rate(folder, workers), 1)})
        for record in records:
            print(f"{record['measure']}: {record['images_per_s']} img/s", flush=True)
        times = step_times(folder, pipeline, args.workers, args.steps, args.rounds)
        for name, seconds in times.items():
            records.append({"measure": f"resnet18 step, batch {BATCH}, fed by {name} "
                                       f"({args.workers} workers, {torch.get_num_threads()} "
                                       "training threads)",
                            "seconds": round(seconds, 3),
                            "images_per_s": round(BATCH / seconds, 1)})
            print(f"resnet18 step fed by {name}: {seconds:.3f} s", flush=True)
    ratio = times["image folder"] / times["in-memory tensor"]
    print(f"the image folder's step takes {ratio:.3f}x the in-memory step")
    for record in records:
        record.update(machine=machine(), revision=git_revision())
    if not args.no_write:
        table = markdown_table(records, ["measure", "images_per_s", "seconds"])
        table += (f"\n\nStep time with the image folder / with the in-memory tensor: "
                  f"{ratio:.3f}.\n")
        write_results("bench_data", records, table)


if __name__ == "__main__":
    main()
