"""Joint training: the upper bound, trained on every seen task's data at once.

At task t the model restarts from the initial backbone and a new head, and
trains on the union of the training data of tasks 0..t (the runner supplies
it because ``trains_on_all_seen_tasks`` is set). Row t of the score matrix is
therefore the joint upper bound for the classes seen after t tasks.

Cost: task t trains on t + 1 tasks' data, so a T-task run processes about
T (T + 1) / 2 tasks' worth of samples per epoch instead of T.
"""

from __future__ import annotations

import torch

from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, freeze, unfreeze
from cmml_bench.methods.finetune import Finetune
from cmml_bench.methods.heads import ExpandableHead


class Joint(Finetune):
    """Train the backbone and a fresh head on the union of tasks 0..t, from the initial weights.

    Option ``train_backbone`` (default true): false trains the head alone.
    """

    key = "joint"
    description = "joint training on all seen tasks from the initial weights (upper bound)"
    settings = (TASK_AGNOSTIC, TASK_AWARE)
    uses_task_id_at_test = False
    trains_on_all_seen_tasks = True

    def __init__(self, backbone, layout, options) -> None:
        super().__init__(backbone, layout, options)
        # NOTE: a CPU copy of the backbone's initial weights stays in memory
        # for the whole run (about 450 MB for ViLT-B/32). It is a plain
        # attribute, not a buffer, so checkpoints do not store it.
        self._initial_backbone = {
            name: tensor.detach().to("cpu", copy=True) for name, tensor in backbone.state_dict().items()
        }

    def begin_task(self, task: int) -> None:
        self.current_task = task
        with torch.no_grad():
            self.backbone.load_state_dict(self._initial_backbone)
        device = next(self.backbone.parameters()).device
        self.head = ExpandableHead(self.backbone.hidden_size, self.layout).to(device)
        self.head.grow(task)
        freeze([self])
        unfreeze([self.head])
        if self.train_backbone:
            unfreeze([self.backbone])
