"""Sequential fine-tuning: the whole backbone and one growing linear head, task after task.

The lower bound of continual learning: nothing protects earlier tasks. The
model never reads the task id. In the task-aware setting the runner masks the
logits to the true task's classes, so that setting shows how much of the
forgetting is confusion between tasks.
"""

from __future__ import annotations

from cmml_bench.backbones.base import ForwardContext
from cmml_bench.methods.base import (
    TASK_AGNOSTIC,
    TASK_AWARE,
    Batch,
    Method,
    Prediction,
    classification_loss,
    freeze,
    unfreeze,
)
from cmml_bench.methods.heads import ExpandableHead


class Finetune(Method):
    """Fine-tune the backbone and a linear head over all seen classes on each new task.

    Option ``train_backbone`` (default true): false trains the head alone.
    """

    key = "finetune"
    description = "sequential fine-tuning of the whole backbone with a growing linear head (lower bound)"
    settings = (TASK_AGNOSTIC, TASK_AWARE)
    uses_task_id_at_test = False

    def __init__(self, backbone, layout, options) -> None:
        super().__init__(backbone, layout, options)
        self.train_backbone = bool(self.options.get("train_backbone", True))
        self.head = ExpandableHead(backbone.hidden_size, layout)

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        self.head.grow(task)
        freeze([self])
        unfreeze([self.head])
        if self.train_backbone:
            unfreeze([self.backbone])

    def features(self, batch: Batch):
        return self.backbone(batch.inputs, ForwardContext(missing=batch.missing)).pooled

    def training_loss(self, batch: Batch, task: int) -> dict:
        logits = self.head(self.features(batch))
        return {"loss": classification_loss(logits, batch.targets, self.layout.multi_label)}

    def predict(self, batch: Batch, task: int | None) -> Prediction:
        return Prediction(logits=self.head(self.features(batch)))
