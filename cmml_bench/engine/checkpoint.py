"""Checkpoints after each task: the method's tensors and the run's progress.

A checkpoint is ``checkpoints/state-task<k>.safetensors`` (the method's
tensors) plus ``checkpoints/progress.json`` (the score matrix so far, timings,
parameter counts and the name of the state file). ``progress.json`` is written
last, so a crash between the two writes leaves the previous checkpoint valid.

Frozen backbone weights that no task ever trained are left out: resume
rebuilds the backbone from the same source, so they are identical there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cmml_bench.engine.run_folder import CHECKPOINT_DIR, read_json, write_bytes_atomic, write_json_atomic

PROGRESS_FILE = "progress.json"


class CheckpointError(RuntimeError):
    """A checkpoint that does not match the method rebuilt for resume."""


def checkpoint_state(
    method: nn.Module, untrained_ids: set[int]
) -> dict[str, torch.Tensor]:
    """Return the tensors to save: every buffer and every parameter not in ``untrained_ids``.

    A tensor reachable under several names (an adapter's wrapped projection,
    for example) is saved once, under its first name.
    """
    tensors: dict[str, torch.Tensor] = {}
    saved: set[int] = set()
    for name, value in method.state_dict(keep_vars=True).items():
        if isinstance(value, nn.Parameter) and id(value) in untrained_ids:
            continue
        if id(value) in saved:
            continue
        saved.add(id(value))
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    return tensors


def save_checkpoint(run_dir: Path, task: int, tensors: dict[str, torch.Tensor], progress: dict[str, Any]) -> None:
    """Save the state after task ``task`` (0-based) and delete older state files.

    NOTE: only the last checkpoint is kept to save disk. A fine-tuned
    minilm-mobilenet checkpoint is 89 MB, and a fine-tuned ViLT-B/32 one
    about 450 MB (an estimate from its roughly 110 million float32
    parameters), so keeping one per task of a ten-task run would take GBs.
    """
    folder = run_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    state_name = f"state-task{task}.safetensors"
    temporary = folder / f".{state_name}.tmp"
    save_file(tensors, str(temporary))
    temporary.replace(folder / state_name)

    write_json_atomic(folder / PROGRESS_FILE, {**progress, "state_file": state_name})
    for old in folder.glob("state-task*.safetensors"):
        if old.name != state_name:
            old.unlink()


def load_progress(run_dir: Path) -> dict[str, Any] | None:
    """Return the stored progress, or None when the folder has no checkpoint."""
    path = run_dir / CHECKPOINT_DIR / PROGRESS_FILE
    if not path.is_file():
        return None
    return read_json(path)


def load_state(run_dir: Path, progress: dict[str, Any], method: nn.Module, untrained_ids: set[int]) -> None:
    """Load the saved tensors into ``method``, which must be rebuilt up to the same task."""
    path = run_dir / CHECKPOINT_DIR / progress["state_file"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} not found; delete {run_dir} and run again")
    tensors = load_file(str(path))
    expected = checkpoint_state(method, untrained_ids)

    unexpected = sorted(set(tensors) - set(expected))
    absent = sorted(set(expected) - set(tensors))
    if unexpected or absent:
        names = ", ".join((unexpected + absent)[:5])
        raise CheckpointError(
            f"checkpoint {path} does not match the rebuilt method (differing tensors: {names}); "
            f"delete {run_dir} or pass another --out"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"checkpoint {path}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the rebuilt method expects {tuple(expected[name].shape)}"
            )
    method.load_state_dict(tensors, strict=False)
