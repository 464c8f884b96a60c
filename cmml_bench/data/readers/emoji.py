"""Emoji images with their official names, rendered from the Noto colour emoji font.

This set is no protocol: the offline backbone fits its image-to-text
projection on it. `cmml-bench data prepare emoji` extracts the Debian packages
`fonts-noto-color-emoji` and `unicode-data` into `<data root>/emoji/packages`,
renders each fully-qualified emoji of `emoji-test.txt` to
`<data root>/emoji/images/<code points>.png` and writes `index.jsonl`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cmml_bench import paths
from cmml_bench.data.errors import DataError

FONT_FILE = Path("usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST_FILE = Path("usr/share/unicode/emoji/emoji-test.txt")
INDEX_NAME = "index.jsonl"
PREPARE_HINT = "run `cmml-bench data prepare emoji`"

# NotoColorEmoji.ttf is a bitmap (CBDT) font whose only strike is 109 px.
FONT_SIZE = 109
CANVAS_SIZE = 136

LINE_PATTERN = re.compile(r"^([0-9A-F ]+?)\s*;\s*fully-qualified\s*#\s*\S+\s+E\d+\.\d+\s+(.+)$")


@dataclass(frozen=True)
class EmojiEntry:
    """One line of emoji-test.txt: code points, official name, group and subgroup."""

    code_points: str
    name: str
    group: str
    subgroup: str

    @property
    def text(self) -> str:
        return "".join(chr(int(point, 16)) for point in self.code_points.split())

    @property
    def file_name(self) -> str:
        return self.code_points.lower().replace(" ", "_") + ".png"


def parse_emoji_test(path: Path) -> list[EmojiEntry]:
    """Return the fully-qualified emoji of an emoji-test.txt file, in file order."""
    entries = []
    group = subgroup = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        else:
            match = LINE_PATTERN.match(line)
            if match:
                entries.append(EmojiEntry(match.group(1).strip(), match.group(2).strip(), group, subgroup))
    return entries


def render_emoji(font: ImageFont.FreeTypeFont, text: str) -> Image.Image:
    """Draw one emoji centred on a white RGB square of CANVAS_SIZE pixels."""
    layer = Image.new("RGBA", (CANVAS_SIZE, CANVAS_SIZE), (255, 255, 255, 0))
    left, top, right, bottom = font.getbbox(text)
    origin = ((CANVAS_SIZE - (right - left)) // 2 - left, (CANVAS_SIZE - (bottom - top)) // 2 - top)
    ImageDraw.Draw(layer).text(origin, text, font=font, embedded_color=True)

    canvas = Image.new("RGBA", layer.size, (255, 255, 255, 255))
    canvas.alpha_composite(layer)
    return canvas.convert("RGB")


def render_emoji_set(emoji_root: Path, packages_dir: Path) -> int:
    """Render every fully-qualified emoji and write the index; return the number of images.

    An emoji that the font draws as nothing (a blank canvas) is left out.
    """
    font = ImageFont.truetype(str(packages_dir / FONT_FILE), FONT_SIZE)
    image_dir = emoji_root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for entry in parse_emoji_test(packages_dir / EMOJI_TEST_FILE):
        image = render_emoji(font, entry.text)
        if image.convert("L").getextrema() == (255, 255):
            continue
        image.save(image_dir / entry.file_name)
        rows.append({"image": f"images/{entry.file_name}", "name": entry.name, "group": entry.group, "subgroup": entry.subgroup})

    temporary = emoji_root / (INDEX_NAME + ".tmp")
    temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(temporary, emoji_root / INDEX_NAME)
    return len(rows)


def load_emoji_index(data_root: str | os.PathLike | None = None) -> list[dict]:
    """Return the index rows (image, name, group, subgroup) with `image` made an absolute Path."""
    emoji_root = paths.data_root(data_root) / "emoji"
    index_path = emoji_root / INDEX_NAME
    if not index_path.is_file():
        raise DataError(f"emoji index {index_path} not found; {PREPARE_HINT}")
    rows = []
    for line in index_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        row["image"] = emoji_root / row["image"]
        rows.append(row)
    return rows


def load_emoji_pairs(data_root: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """Return (image path, official name) for every rendered emoji."""
    return [(row["image"], row["name"]) for row in load_emoji_index(data_root)]
