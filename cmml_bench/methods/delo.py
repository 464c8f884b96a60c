"""DeLo: per-task pools of rank-one factors, routed per sample and per modality.

For each task and each adapted projection W there is a vision pool and a
text pool (one shared pool with ``shared_pool``). A pool contains E input-side
vectors a_e (in R^d_in) and E output-side vectors b_e (in R^d_out). Per
sample, one linear router per pool and side scores the E vectors from the
modality's routing signal and keeps the top r of each side. The i-th best
input vector pairs with the i-th best output vector, and pair i gets the gate

    g_i = r * softmax_i(score_a_i + score_b_i),

so both routers receive gradient and uniform scores give g_i = 1. The pool's
update is delta_m(x) = sum_i g_i b_i (a_i^T x): rank at most r per pool. The
projection returns W x + scale * (delta_vision(x) + delta_text(x)).

Routing signals, per layer: the mean of the image tokens (vision) and the mean
of the non-padding text tokens (text) of the layer input, computed once per
layer. Cross-modal guided routing: a sample without text routes its text pool
with the vision signal, and a sample without image routes its vision pool
with the text signal.

Task partitioning: task t's pools, routers and head train only during task t.
At test time each sample picks its task with the task-key memory
(``task_keys.py``) and uses that task's factors and head. The logits of other
tasks' classes are set to ``OTHER_TASK_LOGIT``.

Loss: classification + ``align_weight`` * (1 - cosine) between the vision and
text signals of complete samples, averaged over adapted layers +
``consistency_weight`` * KL(full prediction || prediction without the text) on
complete samples. The no-text copies replace the text by [CLS] [SEP], which
is what an empty text tokenises to, are marked text-missing, and run in the
same encoder pass as the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cmml_bench.backbones.base import (
    ForwardContext,
    LayerState,
    ProjectionAdapter,
    masked_mean,
)
from cmml_bench.data.types import MissingType
from cmml_bench.methods.base import TASK_AWARE, Batch, Prediction
from cmml_bench.methods.lora_task import TaskPartitionedMethod, head_loss, task_targets
from cmml_bench.methods.lowrank import TASK_EXTRA, stack_task_parameters

VISION = 0
TEXT = 1
MODALITIES = ("vision", "text")
SIDES = ("input", "output")

# ForwardContext.extras keys: a list that collects each layer's raw signals,
# and a flag that makes adapters count their factor selections.
SIGNALS_EXTRA = "delo_signals"
COUNT_EXTRA = "delo_count_selections"
SIGNAL_CACHE = "delo_signals"


@dataclass(frozen=True)
class DeLoOptions:
    """DeLo's method options (the ``method:`` section of its YAML file)."""

    factors: int = 16
    rank: int = 4
    scale: float = 2.0
    shared_pool: bool = False
    cross_modal_routing: bool = True
    gates: bool = True
    oracle_task_id: bool = False
    align_weight: float = 0.1
    consistency_weight: float = 0.1

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "DeLoOptions":
        names = {field.name: field.type for field in fields(cls)}
        shared = {"layers", "projections", "key_per_missing_type"}
        unknown = set(options) - set(names) - shared
        if unknown:
            allowed = ", ".join(sorted(set(names) | shared))
            raise ValueError(f"unknown delo option(s) {', '.join(sorted(unknown))}; allowed: {allowed}")

        values = {}
        for field in fields(cls):
            if field.name in options:
                values[field.name] = convert_option(field.name, options[field.name], type(field.default))
        parsed = cls(**values)
        if not 1 <= parsed.rank <= parsed.factors:
            raise ValueError(f"delo rank {parsed.rank} must be between 1 and factors ({parsed.factors})")
        return parsed


def convert_option(name: str, value: Any, kind: type) -> Any:
    """Return ``value`` as ``kind``; booleans must be real booleans, so "false" is not read as True."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"delo option {name} must be true or false, got {value!r}")
        return value
    try:
        return kind(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"delo option {name} must be a {kind.__name__}, got {value!r}") from error


def routing_signals(state: LayerState, cross_modal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the layer's raw and routed signals, each (B, 2, D) with [vision, text].

    Computed once per layer and kept in ``state.cache``. The raw signals are
    also appended to ``context.extras[SIGNALS_EXTRA]`` when that list exists.
    """
    key = (SIGNAL_CACHE, cross_modal)
    if key in state.cache:
        return state.cache[key]

    vision = masked_mean(state.hidden, state.image_mask)
    text = masked_mean(state.hidden, state.text_mask)
    raw = torch.stack([vision, text], dim=1)

    routed = raw
    if cross_modal:
        missing = state.context.missing.to(raw.device)
        text_missing = (missing == MissingType.TEXT_MISSING).view(-1, 1)
        image_missing = (missing == MissingType.IMAGE_MISSING).view(-1, 1)
        routed_vision = torch.where(image_missing, text, vision)
        routed_text = torch.where(text_missing, vision, text)
        routed = torch.stack([routed_vision, routed_text], dim=1)

    collected = state.context.extras.get(SIGNALS_EXTRA)
    if collected is not None:
        collected.append(raw)
    state.cache[key] = (raw, routed)
    return raw, routed


class FactorPools(nn.Module):
    """One task's factor pools and routers for one projection.

    ``a`` is (pools, E, d_in) and ``b`` is (pools, E, d_out). ``router`` is
    (pools, 2, E, D) and ``router_bias`` is (pools, 2, E). Each pool has one
    linear scorer for the input side (index 0) and one for the output side
    (index 1). Both live in one tensor, so both sides are scored in one product.
    """

    def __init__(self, pools: int, factors: int, in_features: int, out_features: int, signal_features: int) -> None:
        super().__init__()
        input_bound = in_features**-0.5
        router_bound = signal_features**-0.5
        # Input side random and output side zero, as in LoRA, so a new task starts from the frozen projection.
        self.a = nn.Parameter(torch.empty(pools, factors, in_features).uniform_(-input_bound, input_bound))
        self.b = nn.Parameter(torch.zeros(pools, factors, out_features))
        self.router = nn.Parameter(torch.empty(pools, 2, factors, signal_features).uniform_(-router_bound, router_bound))
        self.router_bias = nn.Parameter(torch.zeros(pools, 2, factors))


@dataclass
class Routing:
    """The factors chosen for a batch: indices (B, 2 modalities, 2 sides, r) and gates (B, 2, r)."""

    task: torch.Tensor
    index: torch.Tensor
    gates: torch.Tensor

    @property
    def index_a(self) -> torch.Tensor:
        return self.index[:, :, 0]

    @property
    def index_b(self) -> torch.Tensor:
        return self.index[:, :, 1]


class DeLoLinear(ProjectionAdapter):
    """A frozen projection plus per-sample routed rank-one factors of the sample's task."""

    def __init__(self, base: nn.Linear, options: DeLoOptions) -> None:
        super().__init__(base)
        self.options = options
        self.pool_count = 1 if options.shared_pool else 2
        self.tasks = nn.ModuleList()
        pools = [0, 0] if options.shared_pool else [0, 1]
        self.register_buffer("pool_of_modality", torch.tensor(pools, dtype=torch.long), persistent=False)
        # (tasks, modality, side, factor) selection counts of predictions; not saved in checkpoints.
        self.selection_counts = torch.zeros(0, 2, 2, options.factors, dtype=torch.long)

    def add_task(self) -> FactorPools:
        pools = FactorPools(
            self.pool_count, self.options.factors, self.in_features, self.out_features, self.in_features
        ).to(self.base.weight.device)
        self.tasks.append(pools)
        extra = torch.zeros(1, 2, 2, self.options.factors, dtype=torch.long)
        self.selection_counts = torch.cat([self.selection_counts, extra])
        return pools

    def route(self, signals: torch.Tensor, task: int | torch.Tensor) -> Routing:
        """Score the factors of both sides, keep the top r and compute the gates."""
        batch = signals.shape[0]
        rank = self.options.rank
        if isinstance(task, torch.Tensor):
            # One task per sample: gather each sample's routers, (B, modality, side, E, D).
            routers, _ = stack_task_parameters(self.tasks, "router", task)
            biases, _ = stack_task_parameters(self.tasks, "router_bias", task)
            routers = routers[:, self.pool_of_modality][task]
            biases = biases[:, self.pool_of_modality][task]
            scores = torch.einsum("bmd,bmsed->bmse", signals, routers) + biases
            sample_task = task
        else:
            pools = self.tasks[int(task)]
            routers = pools.router[self.pool_of_modality]
            scores = torch.einsum("bmd,msed->bmse", signals, routers) + pools.router_bias[self.pool_of_modality]
            sample_task = torch.full((batch,), int(task), dtype=torch.long, device=signals.device)

        # topk sorts, so the i-th best input factor pairs with the i-th best output factor.
        top, index = scores.topk(rank, dim=-1)
        if self.options.gates:
            gates = rank * torch.softmax(top.sum(dim=2), dim=-1)
        else:
            gates = torch.ones_like(top[:, :, 0])
        return Routing(task=sample_task, index=index, gates=gates)

    def selected_factors(self, routing: Routing, task: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the chosen input vectors (B, 2, r, d_in) and output vectors (B, 2, r, d_out)."""
        pool_rows = self.pool_of_modality.view(1, -1, 1)
        if not isinstance(task, torch.Tensor):
            pools = self.tasks[int(task)]
            return pools.a[pool_rows, routing.index_a], pools.b[pool_rows, routing.index_b]

        a_all, _ = stack_task_parameters(self.tasks, "a", task)
        b_all, _ = stack_task_parameters(self.tasks, "b", task)
        task_rows = routing.task.view(-1, 1, 1)
        return a_all[task_rows, pool_rows, routing.index_a], b_all[task_rows, pool_rows, routing.index_b]

    def delta(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        task = state.context.extras[TASK_EXTRA]
        _, signals = routing_signals(state, self.options.cross_modal_routing)
        routing = self.route(signals, task)
        a, b = self.selected_factors(routing, task)
        if state.context.extras.get(COUNT_EXTRA):
            self.count_selections(routing)

        # Both modalities' r pairs in one batched product: (B, N, 2r) then (B, N, d_out).
        batch = x.shape[0]
        pairs = 2 * self.options.rank
        projected = torch.bmm(x, a.reshape(batch, pairs, -1).transpose(1, 2))
        projected = projected * (self.options.scale * routing.gates).reshape(batch, 1, pairs)
        return torch.bmm(projected, b.reshape(batch, pairs, -1))

    @torch.no_grad()
    def count_selections(self, routing: Routing) -> None:
        factors = self.options.factors
        task = routing.task.cpu().view(-1, 1, 1, 1)
        modality = torch.arange(2).view(1, -1, 1, 1)
        side = torch.arange(2).view(1, 1, -1, 1)
        flat = (((task * 2 + modality) * 2 + side) * factors + routing.index.cpu()).flatten()
        counts = torch.bincount(flat, minlength=self.selection_counts.numel())
        self.selection_counts += counts[: self.selection_counts.numel()].view_as(self.selection_counts)


def remove_text(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return inputs whose text is [CLS] [SEP] only, as an empty text tokenises.

    The last non-padding token of each row ([SEP] for BERT-style tokenisers)
    moves to position 1 and the attention mask keeps positions 0 and 1 only.
    The sequence keeps its length, so later positions (image tokens placed
    after the text) do not move; masked token ids are never attended to.
    """
    if "input_ids" not in inputs or "text_attention_mask" not in inputs:
        raise ValueError(
            "delo's text-removed pass needs 'input_ids' and 'text_attention_mask' inputs; "
            f"this backbone gives {', '.join(sorted(inputs))}. Set method.consistency_weight=0 to skip it."
        )
    ids = inputs["input_ids"]
    mask = inputs["text_attention_mask"]
    last = (mask.long().sum(dim=1) - 1).clamp_min(0)
    rows = torch.arange(ids.shape[0], device=ids.device)

    short_ids = ids.clone()
    short_ids[:, 1] = ids[rows, last]
    short_mask = torch.zeros_like(mask)
    short_mask[:, :2] = True

    result = dict(inputs)
    result["input_ids"] = short_ids
    result["text_attention_mask"] = short_mask
    return result


def alignment_loss(signals: list[torch.Tensor], missing: torch.Tensor) -> torch.Tensor:
    """Return 1 - cosine(vision, text) over complete samples and the collected layers."""
    complete = missing == MissingType.COMPLETE
    if not signals or not bool(complete.any()):
        return signals[0].new_zeros(()) if signals else torch.zeros(())
    stacked = torch.stack(signals)[:, complete]
    return (1.0 - F.cosine_similarity(stacked[..., VISION, :], stacked[..., TEXT, :], dim=-1)).mean()


def consistency_divergence(teacher: torch.Tensor, student: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Return KL(teacher || student) per sample, averaged; Bernoulli KL per class for multi-label."""
    if multi_label:
        log_p = F.logsigmoid(teacher), F.logsigmoid(-teacher)
        log_q = F.logsigmoid(student), F.logsigmoid(-student)
        positive = log_p[0].exp() * (log_p[0] - log_q[0])
        negative = log_p[1].exp() * (log_p[1] - log_q[1])
        return (positive + negative).mean()
    return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True, reduction="batchmean")


class Delo(TaskPartitionedMethod):
    """DeLo with task-agnostic inference through a per-sample task-key memory.

    With ``oracle_task_id`` the method takes the true task id at test time
    and is scored only in the task-aware setting.
    """

    key = "delo"
    description = "DeLo: per-task routed rank-one factor pools per modality, task-key memory at test time"

    def __init__(self, backbone, layout, options: dict[str, Any]) -> None:
        self.delo = DeLoOptions.from_options(options)
        super().__init__(backbone, layout, options)
        # Instance attributes, because oracle_task_id changes what the runner may evaluate.
        if self.delo.oracle_task_id:
            self.settings = (TASK_AWARE,)
            self.uses_task_id_at_test = True

    def make_adapter(self, base: nn.Linear) -> DeLoLinear:
        return DeLoLinear(base, self.delo)

    @property
    def delo_adapters(self) -> list[DeLoLinear]:
        return list(self.adapters.values())

    def training_loss(self, batch: Batch, task: int) -> dict[str, torch.Tensor]:
        inputs, missing, complete = self.inputs_with_text_removed_copies(batch)
        signals: list[torch.Tensor] = []
        context = ForwardContext(missing=missing, extras={TASK_EXTRA: task, SIGNALS_EXTRA: signals})
        all_logits = self.heads[task](self.backbone(inputs, context).pooled)
        logits = all_logits[: batch.size]

        classification = head_loss(logits, task_targets(batch.targets, self.layout, task), self.layout.multi_label)
        loss = classification
        parts = {"classification": classification.detach()}

        if self.delo.align_weight:
            alignment = alignment_loss([layer[: batch.size] for layer in signals], batch.missing)
            loss = loss + self.delo.align_weight * alignment
            parts["alignment"] = alignment.detach()

        if self.delo.consistency_weight:
            consistency = logits.new_zeros(())
            if complete.numel():
                student = all_logits[batch.size :]
                consistency = consistency_divergence(logits[complete].detach(), student, self.layout.multi_label)
            loss = loss + self.delo.consistency_weight * consistency
            parts["consistency"] = consistency.detach()

        return {"loss": loss, **parts}

    def inputs_with_text_removed_copies(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Append a text-removed copy of every complete sample to the batch, for the consistency loss.

        Samples do not interact in the encoder, so one pass over the longer
        batch gives the same outputs as a separate no-text pass, with half
        the per-operation overhead. Returns the inputs, the missing types
        (copies are text-missing) and the rows of the complete samples.
        """
        complete = torch.nonzero(batch.missing == MissingType.COMPLETE).flatten()
        if not self.delo.consistency_weight or complete.numel() == 0:
            return batch.inputs, batch.missing, complete[:0]

        copies = remove_text({name: tensor[complete] for name, tensor in batch.inputs.items()})
        inputs = {name: torch.cat([tensor, copies[name]]) for name, tensor in batch.inputs.items()}
        copy_missing = torch.full_like(complete, int(MissingType.TEXT_MISSING))
        return inputs, torch.cat([batch.missing, copy_missing]), complete

    def predict(self, batch: Batch, task: int | None) -> Prediction:
        if self.delo.oracle_task_id and task is None:
            raise ValueError(
                "delo with oracle_task_id=true needs the true task id and is evaluated only in the task_aware setting"
            )
        return super().predict(batch, task)

    def prediction_extras(self) -> dict[str, Any]:
        return {COUNT_EXTRA: True}

    def reset_diagnostics(self) -> None:
        for adapter in self.delo_adapters:
            adapter.selection_counts.zero_()

    def diagnostics(self) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        for name, adapter in self.adapters.items():
            for task, per_task in enumerate(adapter.selection_counts.tolist()):
                by_modality = {
                    modality: dict(zip(SIDES, per_task[index])) for index, modality in enumerate(MODALITIES)
                }
                counts.setdefault(f"task{task}", {})[name.replace("_", ".", 1)] = by_modality

        return {
            **super().diagnostics(),
            "factor_selection_counts": counts,
            "factor_usage_entropy": self.usage_entropy(),
            "options": {field.name: getattr(self.delo, field.name) for field in fields(DeLoOptions)},
        }

    def usage_entropy(self) -> dict[str, dict[str, float | None]]:
        """Return per task and modality the entropy of factor use over all projections and both sides, divided by log E.

        1.0 means every factor was chosen equally often; values near 0 mean
        a few factors took every selection. None when nothing was counted.
        """
        result: dict[str, dict[str, float | None]] = {}
        total = sum(adapter.selection_counts.float() for adapter in self.delo_adapters)
        if not isinstance(total, torch.Tensor):
            return result
        for task in range(total.shape[0]):
            row: dict[str, float | None] = {}
            for index, modality in enumerate(MODALITIES):
                counts = total[task, index].sum(dim=0)
                row[modality] = normalised_entropy(counts)
            result[f"task{task}"] = row
        return result


def normalised_entropy(counts: torch.Tensor) -> float | None:
    total = float(counts.sum())
    if total == 0:
        return None
    probabilities = counts / total
    entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
    return round(float(entropy / torch.log(torch.tensor(float(counts.numel())))), 4)
