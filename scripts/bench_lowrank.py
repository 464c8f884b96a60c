"""Measure the training-step time and peak memory of delo, lora_task and lora.

Every method trains on the same backbone and the same batch (synthetic
images and captions with 30% complete, 35% text-missing and 35%
image-missing samples, the default missing mix). For the memory figures each
method runs in its own child process, so that peak memory is its own. On CPU
they are the peak resident set size of the process and its growth over the
state before the first step. On CUDA they are the peak allocated memory.
Step times are measured in one process with the methods taking turns.
Ratios are taken against lora_task.

    python scripts/bench_lowrank.py --backbone vilt-tiny --batch-size 16 --learned-tasks 4
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmml_bench.backbones import BACKBONES, build_backbone  # noqa: E402
from cmml_bench.data.types import MissingType, Sample  # noqa: E402
from cmml_bench.methods import load_method_config, method_class  # noqa: E402
from cmml_bench.methods.base import Batch, TaskLayout  # noqa: E402

METHODS = ("delo", "lora_task", "lora")
CLASSES_PER_TASK = 4


def synthetic_batch(backbone, folder: Path, size: int, task: int) -> Batch:
    """Return a batch of random images and captions with the default missing mix."""
    from PIL import Image

    rng = np.random.default_rng(0)
    samples, missing = [], []
    text_missing = round(0.35 * size)
    image_missing = round(0.35 * size)
    for index in range(size):
        path = folder / f"bench_{index}.png"
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(path)
        words = " ".join(rng.choice(["red", "small", "cat", "house", "tree", "blue", "car"], size=12))
        samples.append(Sample(f"s{index}", path, words, ("x",), "train"))
        if index < text_missing:
            missing.append(MissingType.TEXT_MISSING)
        elif index < text_missing + image_missing:
            missing.append(MissingType.IMAGE_MISSING)
        else:
            missing.append(MissingType.COMPLETE)

    start = task * CLASSES_PER_TASK
    targets = torch.tensor([start + index % CLASSES_PER_TASK for index in range(size)])
    inputs = backbone.prepare(samples, missing)
    return Batch(inputs, torch.tensor([int(kind) for kind in missing]), targets, [s.sample_id for s in samples])


def resident_mb() -> float:
    """Return the peak resident set size of this process in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_threads(args: argparse.Namespace) -> None:
    if args.threads > 0:
        torch.set_num_threads(args.threads)


def build_method(name: str, args: argparse.Namespace):
    """Return ``name`` after begin_task of every learned task, its optimizer and a batch of the current task."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    backbone = build_backbone(args.backbone, args.max_text_length, {}).to(device)
    tasks = args.learned_tasks + 1
    layout = TaskLayout(
        tuple(tuple(range(t * CLASSES_PER_TASK, (t + 1) * CLASSES_PER_TASK)) for t in range(tasks)), False
    )
    config = load_method_config(name)
    method = method_class(config.implementation)(backbone, layout, config.method).to(device)

    with tempfile.TemporaryDirectory() as folder:
        batch = synthetic_batch(backbone, Path(folder), args.batch_size, tasks - 1).to(device)
    for task in range(tasks):
        method.begin_task(task)
    method.train()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-4, weight_decay=0.01)
    return method, optimizer, batch


def training_step(method, optimizer, batch: Batch) -> float:
    """Run one training step and return its wall time in seconds."""
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    method.training_loss(batch, method.current_task)["loss"].backward()
    optimizer.step()
    if batch.missing.device.type == "cuda":
        torch.cuda.synchronize(batch.missing.device)
    return time.perf_counter() - started


def measure_memory(name: str, args: argparse.Namespace, queue) -> None:
    """Put (peak MB, growth MB over the state before the first step) of ``name`` on ``queue``."""
    set_threads(args)
    method, optimizer, batch = build_method(name, args)
    device = batch.missing.device
    before_mb = resident_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup + 1):
        training_step(method, optimizer, batch)

    if device.type == "cuda":
        queue.put((torch.cuda.max_memory_allocated(device) / 2**20, float("nan")))
    else:
        queue.put((resident_mb(), resident_mb() - before_mb))


def measure_times(args: argparse.Namespace) -> dict[str, list[float]]:
    """Time the methods in turns, one step each per round, so that load changes hit all of them alike."""
    built = {name: build_method(name, args) for name in METHODS}
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for step in range(args.warmup + args.steps):
        for name, (method, optimizer, batch) in built.items():
            seconds = training_step(method, optimizer, batch)
            if step >= args.warmup:
                times[name].append(seconds)
    return times


def run_backbone(args: argparse.Namespace) -> None:
    context = multiprocessing.get_context("spawn")
    memory = {}
    for name in METHODS:
        queue = context.Queue()
        process = context.Process(target=measure_memory, args=(name, args, queue))
        process.start()
        memory[name] = queue.get()
        process.join()

    times = {name: statistics.median(values) for name, values in measure_times(args).items()}
    print(
        f"\nbackbone {args.backbone}, batch {args.batch_size}, {args.learned_tasks} tasks learned before, "
        f"median of {args.steps} steps after {args.warmup} warm-up (methods in turns), device {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'method':<10} {'step ms':>9} {'x lora_task':>12} {'peak MB':>9} {'growth MB':>10} {'x lora_task':>12}")
    for name in METHODS:
        peak, growth = memory[name]
        reference_growth = memory["lora_task"][1]
        growth_ratio = growth / reference_growth if reference_growth > 0 else float("nan")
        print(
            f"{name:<10} {times[name] * 1000:9.1f} {times[name] / times['lora_task']:12.2f} {peak:9.0f} "
            f"{growth:10.0f} {growth_ratio:12.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", action="append", help="backbone name; repeatable (default: vilt-tiny and minilm-mobilenet)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per training step")
    parser.add_argument("--learned-tasks", type=int, default=4, help="tasks learned before the measured one")
    parser.add_argument("--max-text-length", type=int, default=40, help="text tokens per sample")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    set_threads(args)

    backbones = args.backbone or [name for name in ("vilt-tiny", "minilm-mobilenet") if name in BACKBONES]
    for backbone in backbones:
        run_backbone(argparse.Namespace(**{**vars(args), "backbone": backbone}))


if __name__ == "__main__":
    main()
