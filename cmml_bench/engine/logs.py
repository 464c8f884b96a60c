"""Logging of a run to ``run.log`` and to the console, and the progress bars."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOGGER_NAME = "cmml_bench"
FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def make_console() -> Console:
    return Console(stderr=True)


@contextmanager
def run_logging(log_path: Path, console: Console, quiet: bool) -> Iterator[logging.Logger]:
    """Send the ``cmml_bench`` logger to ``log_path`` (appended) and to the console.

    With ``quiet`` the console only shows warnings and errors; the file
    always receives every record.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    console_handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    console_handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.addHandler(file_handler)
    logger.addHandler(console_handler)
    try:
        yield logger
    finally:
        logger.removeHandler(file_handler)
        logger.removeHandler(console_handler)
        file_handler.close()


def make_progress(console: Console, quiet: bool) -> Progress:
    """Return progress bars (task, epoch, loss, time left), disabled off a terminal or with ``quiet``."""
    disabled = quiet or not console.is_terminal or not sys.stderr.isatty()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=disabled,
        transient=True,
    )
