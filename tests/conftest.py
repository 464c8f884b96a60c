"""Shared data fixtures: small dataset trees in the real raw layouts, made with Pillow."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

STAMPS = Path("usr/share/tuxpaint/stamps")

# category folder -> number of PNG stamps; sorted class order is
# animals/birds, animals/mammals, clothes, food/fruit.
TUXPAINT_STAMPS = {"animals/mammals": 5, "animals/birds": 4, "food/fruit": 3, "clothes": 3, "vehicles/ship": 1}


def write_image(path: Path, size: tuple[int, int] = (8, 8), mode: str = "RGBA", color=(200, 30, 30, 255)) -> Path:
    """Write a tiny image; the format follows the suffix (.png, .jpg, .jpeg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB" and isinstance(color, tuple) and len(color) == 4:
        color = color[:3]
    image = Image.new(mode, size, color)
    image.save(path, format="JPEG" if path.suffix in (".jpg", ".jpeg") else "PNG")
    return path


def write_stamp(stamps: Path, folder: str, name: str, caption: str | None = None) -> Path:
    """Write NAME.png and NAME.txt (English caption, then one translation line)."""
    write_image(stamps / folder / f"{name}.png")
    text = f"{caption or name.capitalize() + '.'}\nfr.utf8=Un {name}.\n"
    (stamps / folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return stamps / folder / f"{name}.png"


def build_tuxpaint_tree(data_root: Path) -> Path:
    """Build `<data_root>/tuxpaint` in the package layout; return the stamps folder.

    Besides TUXPAINT_STAMPS it contains one SVG-only stamp (food/fruit/kiwi), one
    mirror variant and one caption file without any image.
    """
    stamps = data_root / "tuxpaint" / STAMPS
    for folder, count in TUXPAINT_STAMPS.items():
        for index in range(count):
            write_stamp(stamps, folder, f"{folder.split('/')[-1]}{index}")
    (stamps / "food/fruit/kiwi.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>", encoding="utf-8")
    (stamps / "food/fruit/kiwi.txt").write_text("A kiwi.\n", encoding="utf-8")
    write_image(stamps / "animals/mammals/mammals0_mirror.png")
    (stamps / "animals/mammals/ghost.txt").write_text("A ghost.\n", encoding="utf-8")
    return stamps


@pytest.fixture
def tuxpaint_data_root(tmp_path: Path) -> Path:
    """A data root with a small tuxpaint tree in the package layout."""
    data_root = tmp_path / "data"
    build_tuxpaint_tree(data_root)
    return data_root


TINY_TUXPAINT_PROTOCOL = """\
name: tiny_tux
description: four tuxpaint categories in two tasks
dataset: tuxpaint
root: tuxpaint
classes: {min_samples: 3}
class_order: sorted
classes_per_task: 2
num_tasks: 2
split: {test_fraction: 0.5, split_seed: 0}
backbone: minilm-mobilenet
max_text_length: 40
missing:
  default: {type: both, rate: 0.5, both_ratio: 0.5}
"""


@pytest.fixture
def tiny_protocol_file(tmp_path: Path) -> Path:
    """A protocol file over `tuxpaint_data_root`: classes animals/birds, animals/mammals | clothes, food/fruit."""
    path = tmp_path / "tiny_tux.yaml"
    path.write_text(TINY_TUXPAINT_PROTOCOL, encoding="utf-8")
    return path
