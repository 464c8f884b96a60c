"""A small generated manifest dataset and its protocols, for runner and method tests.

Every class has its own image colour and its own caption word, so even the
tiny ViLT can learn it within a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

CLASSES = ("apple", "boat", "cat", "drum", "egg", "fern")
COLOURS = ((220, 20, 20), (20, 20, 220), (20, 200, 20), (230, 200, 0), (160, 0, 200), (0, 200, 200))
TRAIN_PER_CLASS = 6
TEST_PER_CLASS = 3


def write_manifest_dataset(folder: Path, multi_label: bool = False) -> Path:
    """Write 32x32 PNGs and manifest.jsonl for CLASSES; return the manifest folder.

    Multi-label samples also carry the next class's label on every other sample.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (name, colour) in enumerate(zip(CLASSES, COLOURS)):
        for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
            for number in range(count):
                sample_id = f"{name}-{split}-{number}"
                shade = tuple(min(255, value + 6 * number) for value in colour)
                Image.new("RGB", (32, 32), shade).save(folder / f"{sample_id}.png")
                record = {"id": sample_id, "image": f"{sample_id}.png", "text": f"a picture of a {name}", "split": split}
                if multi_label:
                    labels = [name]
                    if number % 2 and index + 1 < len(CLASSES):
                        labels.append(CLASSES[index + 1])
                    record["labels"] = labels
                else:
                    record["label"] = name
                lines.append(json.dumps(record))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_protocol(path: Path, data: Path, multi_label: bool = False, rate: float = 0.5) -> Path:
    """Write a 3-task x 2-class manifest protocol over ``data`` with the vilt-tiny backbone."""
    text = f"""\
name: {path.stem}
description: generated colours, 3 tasks x 2 classes
dataset: manifest
root: {data}
multi_label: {str(multi_label).lower()}
class_order: sorted
classes_per_task: 2
num_tasks: 3
backbone: vilt-tiny
max_text_length: 12
missing:
  default: {{type: both, rate: {rate}, both_ratio: 0.5}}
"""
    if multi_label:
        text += "task_assignment: earliest_task\n"
    path.write_text(text, encoding="utf-8")
    return path
