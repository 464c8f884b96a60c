"""One task's training: AdamW, linear warm-up then cosine decay, clipping, mixed precision."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader

from cmml_bench.methods.base import Method

logger = logging.getLogger("cmml_bench")


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Return the LR factor per step: linear warm-up to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        decay_steps = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def autocast_for(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """Return a factory of fp16 autocast contexts on CUDA, or of no-op contexts elsewhere."""
    # NOTE: the tests run on CPU only, so the CUDA path (autocast, GradScaler)
    # has not been exercised by them.
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext


def train_task(
    method: Method,
    task: int,
    make_epoch_loader: Callable[[int], DataLoader],
    train: dict,
    device: torch.device,
    progress: Progress,
) -> list[float]:
    """Train ``method`` on task ``task`` for ``train['epochs']`` epochs; return the mean loss per epoch.

    The optimizer is built here from ``method.trainable_parameters()``, so its
    state never carries over from one task to the next.
    """
    parameters = method.trainable_parameters()
    if not parameters:
        logger.warning("task %d: the method has no trainable parameter; training is skipped", task + 1)
        return []

    epochs = int(train["epochs"])
    steps_per_epoch = len(make_epoch_loader(0))
    total_steps = max(1, epochs * steps_per_epoch)
    warmup_steps = int(round(float(train["warmup_ratio"]) * total_steps))
    optimizer = torch.optim.AdamW(
        parameters,
        lr=float(train["lr"]),
        betas=tuple(float(beta) for beta in train["betas"]),
        weight_decay=float(train["weight_decay"]),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    autocast = autocast_for(device)
    max_grad_norm = train.get("max_grad_norm")

    bar = progress.add_task(f"task {task + 1}", total=total_steps, loss="-")
    epoch_losses = []
    method.train()
    for epoch in range(epochs):
        progress.update(bar, description=f"task {task + 1} epoch {epoch + 1}/{epochs}")
        total, count = 0.0, 0
        for batch in make_epoch_loader(epoch):
            loss = _step(method, batch.to(device), task, optimizer, scaler, autocast, parameters, max_grad_norm)
            scheduler.step()
            total += loss * batch.size
            count += batch.size
            progress.update(bar, advance=1, loss=f"{loss:.4f}")
        epoch_losses.append(total / max(1, count))
        logger.info("task %d epoch %d/%d: mean loss %.4f", task + 1, epoch + 1, epochs, epoch_losses[-1])
    progress.remove_task(bar)
    return epoch_losses


def _step(method, batch, task, optimizer, scaler, autocast, parameters, max_grad_norm) -> float:
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        outputs = method.training_loss(batch, task)
    loss = outputs["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"task {task + 1}: the training loss is {loss.item()}; lower train.lr")

    scaler.scale(loss).backward()
    if max_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, float(max_grad_norm))
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())
