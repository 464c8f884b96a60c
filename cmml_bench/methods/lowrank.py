"""Low-rank adapters for the frozen query/key/value projections.

- ``LoRALinear``: one LoRA update ``scale * B A x`` shared by every sample,
  initialised as in the LoRA paper (A uniform like ``nn.Linear``, B zero) and
  numerically the same as ``peft``'s ``lora.Linear`` for equal A and B.
- ``TaskLoRALinear``: one LoRA per task. The task of each sample comes from
  ``ForwardContext.extras[TASK_EXTRA]``: an int (every sample uses that task)
  or a (B,) tensor of task indices, gathered per sample without a loop.

``install_adapters`` wraps the chosen projections of a backbone.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cmml_bench.backbones.base import PROJECTION_KINDS, Backbone, LayerState, ProjectionAdapter

# Key of ForwardContext.extras that contains the task of every sample.
TASK_EXTRA = "task"


def parse_layers(value: Any, num_layers: int) -> list[int]:
    """Return the adapted layer indices from the ``layers`` option ("all" or a list)."""
    if value in (None, "all"):
        return list(range(num_layers))
    layers = [int(index) for index in value]
    for index in layers:
        if not 0 <= index < num_layers:
            raise ValueError(f"method option layers: layer {index} is out of range; the backbone has {num_layers}")
    return sorted(set(layers))


def parse_projections(value: Any) -> list[str]:
    """Return the adapted projection kinds from the ``projections`` option."""
    kinds = list(PROJECTION_KINDS) if value is None else [str(kind) for kind in value]
    unknown = [kind for kind in kinds if kind not in PROJECTION_KINDS]
    if unknown or not kinds:
        raise ValueError(
            f"method option projections: invalid {unknown or kinds}; choose from {', '.join(PROJECTION_KINDS)}"
        )
    return kinds


def install_adapters(
    backbone: Backbone,
    layers: Sequence[int],
    kinds: Sequence[str],
    factory: Callable[[nn.Linear], ProjectionAdapter],
) -> dict[str, ProjectionAdapter]:
    """Wrap each chosen projection with ``factory(base)``; return them keyed "layer.kind"."""
    adapters: dict[str, ProjectionAdapter] = {}
    for layer in layers:
        for kind in kinds:
            adapter = factory(backbone.base_projection(layer, kind))
            backbone.set_projection(layer, kind, adapter)
            adapters[f"{layer}.{kind}"] = adapter
    return adapters


def lora_a_init(rank: int, in_features: int) -> torch.Tensor:
    """Return a (rank, in_features) matrix drawn like ``nn.Linear``'s weight (Kaiming uniform, a=sqrt(5))."""
    weight = torch.empty(rank, in_features)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight


class LoRALinear(ProjectionAdapter):
    """A frozen projection plus ``scale * B (A dropout(x))`` with scale = alpha / rank."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__(base)
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.rank = rank
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.lora_a = nn.Parameter(lora_a_init(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def delta(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        hidden = F.linear(self.dropout(x), self.lora_a.to(x.dtype))
        return F.linear(hidden, self.lora_b.to(x.dtype)) * self.scale


class LoRAFactors(nn.Module):
    """The A (rank, in) and B (out, rank) matrices of one task's LoRA."""

    def __init__(self, rank: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.a = nn.Parameter(lora_a_init(rank, in_features))
        self.b = nn.Parameter(torch.zeros(out_features, rank))


def stack_task_parameters(
    modules: Sequence[nn.Module], name: str, task: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return parameter ``name`` of the tasks a batch needs, stacked on a leading task axis.

    For an int task this is a view of that task's parameter with a task axis
    of size 1, so gradients reach it, and the second value is None. For a
    per-sample tensor every task up to the largest index is stacked, and the
    second value is that tensor, to gather with.
    """
    if isinstance(task, torch.Tensor):
        count = int(task.max()) + 1
        return torch.stack([getattr(modules[index], name) for index in range(count)]), task
    return getattr(modules[int(task)], name).unsqueeze(0), None


class TaskLoRALinear(ProjectionAdapter):
    """One LoRA per task; each sample uses the LoRA of its task."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__(base)
        self.rank = rank
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.tasks = nn.ModuleList()

    def add_task(self) -> LoRAFactors:
        factors = LoRAFactors(self.rank, self.in_features, self.out_features).to(self.base.weight.device)
        self.tasks.append(factors)
        return factors

    def delta(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        task = state.context.extras[TASK_EXTRA]
        x = self.dropout(x)
        if not isinstance(task, torch.Tensor):
            factors = self.tasks[int(task)]
            return F.linear(F.linear(x, factors.a), factors.b) * self.scale

        # One gather per matrix: (B, rank, in) and (B, out, rank), then two batched matmuls.
        a_all, index = stack_task_parameters(self.tasks, "a", task)
        b_all, _ = stack_task_parameters(self.tasks, "b", task)
        a = a_all[index]
        b = b_all[index]
        hidden = torch.bmm(x, a.transpose(1, 2))
        return torch.bmm(hidden, b.transpose(1, 2)) * self.scale
