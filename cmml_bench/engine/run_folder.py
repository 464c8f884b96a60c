"""The run folder: its paths and atomic writes of every file in it.

The layout is documented in docs/run-folder.md. Every JSON, YAML and CSV file
is written to a temporary file in the same folder and moved into place with
``os.replace``, so a reader never sees a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
CLASS_ORDER_FILE = "class_order.json"
MISSING_COUNTS_FILE = "missing_counts.json"
PREDICTIONS_FILE = "predictions.csv"
DIAGNOSTICS_FILE = "diagnostics.json"
LOG_FILE = "run.log"
CHECKPOINT_DIR = "checkpoints"

PREDICTION_COLUMNS = ("setting", "task", "sample_id", "missing_type", "label", "prediction")


def _file_mode() -> int:
    """Return the mode a plain ``open`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def run_folder_path(out: Path, protocol: str, method: str, seed: int) -> Path:
    """Return ``<out>/<protocol>/<method>/seed<k>``."""
    return Path(out) / protocol / method / f"seed{seed}"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates the file with mode 0600.
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, content: Any) -> None:
    text = json.dumps(content, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def write_yaml_atomic(path: Path, content: Any) -> None:
    text = yaml.safe_dump(content, sort_keys=False, default_flow_style=False)
    write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(path: Path, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(columns))
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
