"""Dataset readers on small trees in the real raw layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cmml_bench.data.benchmark import build_benchmark
from cmml_bench.data.errors import DataError
from cmml_bench.data.images import load_rgb
from cmml_bench.data.readers.clipart import read_clipart
from cmml_bench.data.readers.emoji import load_emoji_pairs, parse_emoji_test
from cmml_bench.data.readers.food101 import read_food101
from cmml_bench.data.readers.manifest import read_manifest
from cmml_bench.data.readers.mmimdb import read_mmimdb
from cmml_bench.data.readers.tuxpaint import read_tuxpaint
from cmml_bench.protocols import load_protocol
from conftest import TUXPAINT_STAMPS, write_image, write_stamp


# --- tuxpaint -------------------------------------------------------------


def test_tuxpaint_reads_captions_and_labels(tuxpaint_data_root):
    result = read_tuxpaint(tuxpaint_data_root / "tuxpaint")

    assert len(result.samples) == sum(TUXPAINT_STAMPS.values())
    by_id = {sample.sample_id: sample for sample in result.samples}
    assert by_id["animals/mammals/mammals1"].text == "Mammals1."
    assert by_id["animals/mammals/mammals1"].labels == ("animals/mammals",)
    assert by_id["clothes/clothes0"].labels == ("clothes",)


def test_tuxpaint_counts_package_skips(tuxpaint_data_root):
    result = read_tuxpaint(tuxpaint_data_root / "tuxpaint")
    assert result.skipped == {"svg_only": 1, "text_without_image": 1}


def test_tuxpaint_label_depth_one(tuxpaint_data_root):
    result = read_tuxpaint(tuxpaint_data_root / "tuxpaint", label_depth=1)
    labels = {sample.labels[0] for sample in result.samples}
    assert labels == {"animals", "clothes", "food", "vehicles"}


def test_tuxpaint_deeper_folder_gets_second_level_label(tuxpaint_data_root):
    stamps = tuxpaint_data_root / "tuxpaint/usr/share/tuxpaint/stamps"
    write_stamp(stamps, "symbols/money/us/coins", "penny", "A penny.")
    by_id = {s.sample_id: s for s in read_tuxpaint(tuxpaint_data_root / "tuxpaint").samples}
    assert by_id["symbols/money/us/coins/penny"].labels == ("symbols/money",)


def test_tuxpaint_missing_text_names_file(tuxpaint_data_root):
    stamps = tuxpaint_data_root / "tuxpaint/usr/share/tuxpaint/stamps"
    (stamps / "animals/birds/birds2.txt").unlink()

    with pytest.raises(DataError, match="birds2.txt"):
        read_tuxpaint(tuxpaint_data_root / "tuxpaint")

    result = read_tuxpaint(tuxpaint_data_root / "tuxpaint", skip_invalid=True)
    assert result.skipped["missing_text"] == 1
    assert len(result.samples) == sum(TUXPAINT_STAMPS.values()) - 1


def test_tuxpaint_corrupt_image_names_file(tuxpaint_data_root):
    stamps = tuxpaint_data_root / "tuxpaint/usr/share/tuxpaint/stamps"
    (stamps / "food/fruit/fruit1.png").write_bytes(b"not a png at all")

    with pytest.raises(DataError, match="fruit1.png"):
        read_tuxpaint(tuxpaint_data_root / "tuxpaint")

    result = read_tuxpaint(tuxpaint_data_root / "tuxpaint", skip_invalid=True)
    assert result.skipped["unreadable_image"] == 1


def test_tuxpaint_empty_and_undecodable_captions(tuxpaint_data_root):
    stamps = tuxpaint_data_root / "tuxpaint/usr/share/tuxpaint/stamps"
    (stamps / "clothes/clothes0.txt").write_text("\nfr.utf8=Vide.\n", encoding="utf-8")
    (stamps / "clothes/clothes1.txt").write_bytes(b"A caf\xe9.\n")

    with pytest.raises(DataError, match="clothes0.txt"):
        read_tuxpaint(tuxpaint_data_root / "tuxpaint")

    result = read_tuxpaint(tuxpaint_data_root / "tuxpaint", skip_invalid=True)
    assert result.skipped["empty_text"] == 1
    assert result.skipped["undecodable_text"] == 1


def test_absent_tuxpaint_names_prepare_command(tmp_path):
    with pytest.raises(DataError, match="cmml-bench data prepare tuxpaint"):
        read_tuxpaint(tmp_path / "nothing")
    with pytest.raises(DataError, match="cmml-bench data prepare tuxpaint"):
        build_benchmark(load_protocol("tuxpaint_mixed"), seed=0, data_root=tmp_path)


# --- images -----------------------------------------------------------------


def test_load_rgb_composites_alpha_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("LA", (3, 3), (0, 0)).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == (255, 255, 255)


def test_load_rgb_palette_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.save(path, transparency=0)
    image = load_rgb(path)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (10, 200, 10)


def test_load_rgb_rejects_corrupt_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="broken.png"):
        load_rgb(path)


# --- clipart ----------------------------------------------------------------

SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<metadata><rdf:RDF><cc:Work rdf:about="">
<dc:title>{title}</dc:title><dc:description>{description}</dc:description>
<dc:subject><rdf:Bag><rdf:li>fruit</rdf:li><rdf:li>food</rdf:li></rdf:Bag></dc:subject>
<dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
</cc:Work></rdf:RDF></metadata></svg>
"""


def write_clipart(root: Path, relative: str, title: str, description: str = "") -> None:
    write_image(root / "usr/share/openclipart/png" / f"{relative}.png")
    svg = root / "usr/share/openclipart/svg" / f"{relative}.svg"
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(SVG.format(title=title, description=description), encoding="utf-8")


@pytest.fixture
def clipart_root(tmp_path):
    root = tmp_path / "clipart"
    write_clipart(root, "food/fruit/apple_01", "An Apple", "A red apple with a leaf")
    write_clipart(root, "food/fruit/pear_01", "Pear", "Pear")
    write_clipart(root, "animals/mammals/pig_01", "A simple pig")
    write_clipart(root, "animals/mammals/blank_01", "", "")
    link = root / "usr/share/openclipart/png/food/apple_copy_01.png"
    os.symlink("fruit/apple_01.png", link)
    return root


def test_clipart_text_is_title_and_description(clipart_root):
    result = read_clipart(clipart_root)
    by_id = {sample.sample_id: sample for sample in result.samples}
    assert by_id["food/fruit/apple_01"].text == "An Apple A red apple with a leaf"
    assert by_id["food/fruit/pear_01"].text == "Pear"
    assert by_id["animals/mammals/pig_01"].labels == ("animals/mammals",)
    assert all("fruit" not in s.text.lower() and "Author" not in s.text for s in result.samples)


def test_clipart_counts_links_and_empty_metadata(clipart_root):
    result = read_clipart(clipart_root)
    assert len(result.samples) == 3
    assert result.skipped == {"duplicate_link": 1, "no_metadata_text": 1}


def test_clipart_missing_svg_names_file(clipart_root):
    (clipart_root / "usr/share/openclipart/svg/animals/mammals/pig_01.svg").unlink()
    with pytest.raises(DataError, match="pig_01.svg"):
        read_clipart(clipart_root)
    assert read_clipart(clipart_root, skip_invalid=True).skipped["missing_text"] == 1


# --- Food-101 ---------------------------------------------------------------


@pytest.fixture
def food_root(tmp_path):
    root = tmp_path / "food101"
    (root / "texts").mkdir(parents=True)
    (root / "class_idx.json").write_text(json.dumps({"apple_pie": 0, "ramen": 1}), encoding="utf-8")
    rows = {"train": [], "test": []}
    for split, count in (("train", 3), ("test", 2)):
        for label in ("apple_pie", "ramen"):
            for index in range(count):
                name = f"{label}_{index}.jpg"
                write_image(root / "images" / split / label / name, mode="RGB")
                rows[split].append(f'{name},"Recipe page, {label} number {index}",{label}\n')
    for split, lines in rows.items():
        (root / "texts" / f"{split}_titles.csv").write_text("".join(lines), encoding="utf-8")
    return root


def test_food101_reads_raw_layout(food_root):
    result = read_food101(food_root)
    assert len(result.samples) == 10
    by_id = {sample.sample_id: sample for sample in result.samples}
    assert by_id["test/ramen_1.jpg"].split == "test"
    assert by_id["test/ramen_1.jpg"].labels == ("ramen",)
    assert by_id["train/apple_pie_2.jpg"].text == "Recipe page, apple_pie number 2"


def test_food101_unknown_label_and_corrupt_image(food_root):
    with (food_root / "texts/train_titles.csv").open("a", encoding="utf-8") as handle:
        handle.write("sushi_0.jpg,Fresh sushi,sushi\n")
    (food_root / "images/test/ramen/ramen_0.jpg").write_bytes(b"garbage")

    with pytest.raises(DataError, match="sushi"):
        read_food101(food_root)

    result = read_food101(food_root, skip_invalid=True)
    assert result.skipped == {"unknown_label": 1, "unreadable_image": 1}
    assert len(result.samples) == 9


def test_food101_missing_csv_names_layout(food_root):
    (food_root / "texts/test_titles.csv").unlink()
    with pytest.raises(DataError, match=r"test_titles\.csv.*raw layout"):
        read_food101(food_root)


# --- MM-IMDb ----------------------------------------------------------------


def write_movie(root: Path, movie_id: str, genres: list[str], plot: str = "A plot.") -> None:
    write_image(root / "images" / f"{movie_id}.jpeg", mode="RGB")
    record = {"plot": [plot, "Another plot."], "genres": genres}
    (root / "labels" / f"{movie_id}.json").write_text(json.dumps(record), encoding="utf-8")


@pytest.fixture
def mmimdb_root(tmp_path):
    root = tmp_path / "mmimdb"
    (root / "labels").mkdir(parents=True)
    movies = {
        "0001": ["Drama", "Comedy"],
        "0002": ["Horror"],
        "0003": ["Film-Noir"],
        "0004": ["Comedy", "Action"],
        "0005": ["Drama"],
        "0006": ["Action"],
    }
    for movie_id, genres in movies.items():
        write_movie(root, movie_id, genres, plot=f"Plot of {movie_id}.")
    split = {"train": ["0001", "0002", "0003", "0004"], "dev": ["0006"], "test": ["0005"]}
    (root / "split.json").write_text(json.dumps(split), encoding="utf-8")
    return root


def test_mmimdb_reads_train_and_test_only(mmimdb_root):
    result = read_mmimdb(mmimdb_root)
    by_id = {sample.sample_id: sample for sample in result.samples}
    assert sorted(by_id) == ["0001", "0002", "0003", "0004", "0005"]
    assert by_id["0001"].labels == ("Drama", "Comedy")
    assert by_id["0001"].text == "Plot of 0001."
    assert by_id["0005"].split == "test"


def test_mmimdb_missing_label_file(mmimdb_root):
    (mmimdb_root / "labels/0002.json").unlink()
    with pytest.raises(DataError, match="0002.json"):
        read_mmimdb(mmimdb_root)
    assert read_mmimdb(mmimdb_root, skip_invalid=True).skipped == {"missing_text": 1}


def test_mmimdb_empty_plot_is_invalid(mmimdb_root):
    write_movie(mmimdb_root, "0004", ["Comedy"], plot="   ")
    with pytest.raises(DataError, match="0004.json"):
        read_mmimdb(mmimdb_root)


def test_absent_mmimdb_names_layout(tmp_path):
    with pytest.raises(DataError, match=r"labels/<id>\.json"):
        build_benchmark(load_protocol("mmimdb_mixed"), seed=0, data_root=tmp_path)


# --- manifest ---------------------------------------------------------------


def write_manifest(folder: Path, lines: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_manifest_reads_relative_images(tmp_path):
    write_image(tmp_path / "set/img/a.png")
    write_image(tmp_path / "set/img/b.png")
    write_manifest(tmp_path / "set", [
        {"id": "a", "image": "img/a.png", "text": "a cat", "label": "cat", "split": "train"},
        {"image": "img/b.png", "text": "a dog", "label": "dog", "split": "test"},
    ])
    result = read_manifest(tmp_path / "set")
    assert [s.sample_id for s in result.samples] == ["a", "line2"]
    assert result.samples[1].image_path == (tmp_path / "set/img/b.png").resolve()


def test_manifest_rejects_bad_lines(tmp_path):
    write_image(tmp_path / "set/img/a.png")
    write_manifest(tmp_path / "set", [
        {"image": "img/a.png", "text": "a cat", "labels": ["cat", "pet"], "split": "train"},
        {"image": "img/missing.png", "text": "a dog", "label": "dog", "split": "train"},
        {"image": "img/a.png", "text": "", "label": "dog", "split": "train"},
        {"image": "img/a.png", "text": "a dog", "label": "dog", "split": "validation"},
    ])
    with pytest.raises(DataError, match=r"manifest\.jsonl, line 1"):
        read_manifest(tmp_path / "set")

    result = read_manifest(tmp_path / "set", skip_invalid=True)
    assert result.skipped == {"invalid_labels": 1, "missing_image": 1, "empty_text": 1, "invalid_split": 1}
    assert len(read_manifest(tmp_path / "set", multi_label=True, skip_invalid=True).samples) == 1


# --- emoji ------------------------------------------------------------------

EMOJI_TEST = """\
# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face

# group: Flags
# subgroup: country-flag
1F1EB 1F1F7                                            ; fully-qualified     # 🇫🇷 E0.6 flag: France
"""


def test_parse_emoji_test_keeps_fully_qualified(tmp_path):
    path = tmp_path / "emoji-test.txt"
    path.write_text(EMOJI_TEST, encoding="utf-8")
    entries = parse_emoji_test(path)
    assert [entry.name for entry in entries] == ["grinning face", "smiling face", "flag: France"]
    assert entries[1].text == "\u263a\ufe0f"
    assert entries[2].group == "Flags"
    assert entries[2].subgroup == "country-flag"
    assert entries[2].file_name == "1f1eb_1f1f7.png"


def test_emoji_pairs_read_index(tmp_path):
    emoji_root = tmp_path / "emoji"
    write_image(emoji_root / "images/1f600.png", mode="RGB")
    row = {"image": "images/1f600.png", "name": "grinning face", "group": "Smileys & Emotion", "subgroup": "face-smiling"}
    (emoji_root / "index.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert load_emoji_pairs(tmp_path) == [(emoji_root / "images/1f600.png", "grinning face")]


def test_emoji_absent_names_prepare_command(tmp_path):
    with pytest.raises(DataError, match="cmml-bench data prepare emoji"):
        load_emoji_pairs(tmp_path)
