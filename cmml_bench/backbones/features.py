"""On-disk and in-memory cache of frozen MobileNetV2 feature grids, one per image file.

An entry is the (G, 1280) grid of the last feature map (G = (size/32)^2 cells
in raster order) stored as float16 ``.npy`` under
``<cache dir>/features/<model id>-<size>px/``. Its key is a SHA-256 of the
resolved image path, the file's size and modification time, the model id
(which includes a hash of the weights file) and the input size. An edited
image or other weights therefore give a new entry, and nothing else is
recomputed.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from cmml_bench import paths
from cmml_bench.backbones.mobilenetv2 import FEATURE_CHANNELS, MobileNetV2
from cmml_bench.data.images import WHITE, load_rgb, missing_image

FEATURE_DTYPE = np.float16
DEFAULT_BATCH_SIZE = 32
DEFAULT_MEMORY_ITEMS = 4096


def image_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Return the (3, size, size) float32 MobileNetV2 input of an RGB image.

    The image is padded to a square with white (keeping its aspect ratio),
    resized with bicubic filtering and scaled from [0, 255] to [-1, 1] as
    Keras' ``mobilenet_v2.preprocess_input`` does.
    """
    width, height = image.size
    side = max(width, height)
    if width != height:
        square = Image.new("RGB", (side, side), WHITE)
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    image = image.resize((size, size), resample=Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return array.transpose(2, 0, 1).copy()


class FeatureCache:
    """MobileNetV2 feature grids of image files, computed once and read back from disk.

    ``memory_items`` bounds the in-memory LRU of loaded grids (float16, about
    G * 2.5 KB each).
    """

    def __init__(
        self,
        model: MobileNetV2,
        *,
        model_id: str,
        image_size: int,
        root: str | os.PathLike | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        memory_items: int = DEFAULT_MEMORY_ITEMS,
    ) -> None:
        if image_size % 32:
            raise ValueError(f"image_size {image_size} is not a multiple of 32, the output stride of MobileNetV2")
        self.model = model
        self.model_id = model_id
        self.image_size = image_size
        self.grid_cells = (image_size // 32) ** 2
        base = Path(root) if root is not None else paths.cache_dir() / "features"
        self.folder = base / f"{model_id}-{image_size}px"
        self.batch_size = batch_size
        self.memory_items = memory_items
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._missing: np.ndarray | None = None

    def key(self, path: str | os.PathLike) -> str:
        """Return the cache key of an image file, which changes when the file or the model changes."""
        resolved = Path(path).resolve()
        status = resolved.stat()
        identity = f"{resolved}\n{status.st_size}\n{status.st_mtime_ns}\n{self.model_id}\n{self.image_size}"
        return hashlib.sha256(identity.encode("utf-8")).hexdigest()

    def entry_path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def missing_features(self) -> np.ndarray:
        """Return the grid of the white image that replaces a missing one (computed once)."""
        if self._missing is None:
            pixels = image_pixels(missing_image(self.image_size), self.image_size)
            self._missing = self._encode(np.stack([pixels]))[0]
        return self._missing

    def get(self, image_paths: Sequence[str | os.PathLike | None]) -> np.ndarray:
        """Return (B, G, 1280) float32 grids, where None marks a missing image.

        Entries absent from the cache are computed and stored first.
        """
        keys = [None if path is None else self.key(path) for path in image_paths]
        found = {key: self._load(key) for key in keys if key is not None}
        absent = {key: path for key, path in zip(keys, image_paths) if key is not None and found[key] is None}
        if absent:
            found.update(self._compute(list(absent.items())))

        grids = [self.missing_features() if key is None else found[key] for key in keys]
        return np.stack(grids).astype(np.float32)

    def precompute(self, image_paths: Iterable[str | os.PathLike], *, progress: bool = True) -> int:
        """Compute and store every grid not yet on disk; return how many were computed."""
        pending: dict[str, Path] = {}
        for path in image_paths:
            key = self.key(path)
            if key not in pending and not self.entry_path(key).is_file():
                pending[key] = Path(path)
        if not pending:
            return 0

        items = list(pending.items())
        if not progress:
            for start in range(0, len(items), self.batch_size):
                self._compute(items[start : start + self.batch_size], remember=False)
            return len(items)

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("MobileNetV2 features"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns) as bar:
            task = bar.add_task("features", total=len(items))
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                self._compute(chunk, remember=False)
                bar.advance(task, len(chunk))
        return len(items)

    def _load(self, key: str) -> np.ndarray | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        entry = self.entry_path(key)
        if not entry.is_file():
            return None
        grid = np.load(entry)
        self._remember(key, grid)
        return grid

    def _remember(self, key: str, grid: np.ndarray) -> None:
        self._memory[key] = grid
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _compute(self, items: list[tuple[str, str | os.PathLike]], remember: bool = True) -> dict[str, np.ndarray]:
        grids: dict[str, np.ndarray] = {}
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            pixels = np.stack([image_pixels(load_rgb(path), self.image_size) for _, path in chunk])
            encoded = self._encode(pixels)
            for (key, _), grid in zip(chunk, encoded):
                self._store(key, grid)
                grids[key] = grid
                if remember:
                    self._remember(key, grid)
        return grids

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        """Run MobileNetV2 on (B, 3, S, S) pixels; return (B, G, 1280) float16 grids."""
        with torch.no_grad():
            features = self.model(torch.from_numpy(pixels))
        grids = features.flatten(2).transpose(1, 2).numpy()
        if grids.shape[1:] != (self.grid_cells, FEATURE_CHANNELS):
            raise RuntimeError(f"MobileNetV2 returned grids of shape {grids.shape[1:]}; expected {(self.grid_cells, FEATURE_CHANNELS)}")
        return grids.astype(FEATURE_DTYPE)

    def _store(self, key: str, grid: np.ndarray) -> None:
        entry = self.entry_path(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary = entry.with_name(f"{entry.stem}.{os.getpid()}.tmp.npy")
        np.save(temporary, grid)
        os.replace(temporary, entry)


def weights_id(path: str | os.PathLike) -> str:
    """Return the first 16 hex digits of the SHA-256 of a weights file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
