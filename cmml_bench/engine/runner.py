"""The runner: train a method task after task, evaluate, checkpoint, resume.

One call of ``run_one`` produces one run folder (docs/run-folder.md) for one
(protocol, method, seed). Determinism: before the method is built, and again
before each task, torch, numpy and ``random`` are reseeded from (seed, task),
and each epoch's shuffle has its own generator seeded from (seed, task,
epoch). A run resumed after task k therefore replays exactly what an
uninterrupted run does from task k + 1 on (bit for bit on CPU).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cmml_bench.backbones import BACKBONES, build_backbone
from cmml_bench.data.benchmark import Benchmark, build_benchmark
from cmml_bench.engine import run_folder as files
from cmml_bench.engine.checkpoint import checkpoint_state, load_progress, load_state, save_checkpoint
from cmml_bench.engine.config import ConfigError, apply_overrides, first_difference
from cmml_bench.engine.environment import describe_environment, peak_memory_mb, resolve_device
from cmml_bench.engine.evaluation import (
    SampleRecord,
    missing_breakdown,
    predict_task_split,
    score,
    task_identification,
    task_universe,
)
from cmml_bench.engine.loaders import BatchCollator, make_loader, shuffle_generator
from cmml_bench.engine.logs import make_console, make_progress, run_logging
from cmml_bench.engine.results import build_result, empty_matrix, prediction_rows
from cmml_bench.engine.training import autocast_for, train_task
from cmml_bench.methods import load_method_config, method_class
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Method, TaskLayout
from cmml_bench.protocols import Protocol, load_protocol

logger = logging.getLogger("cmml_bench")


class RunInterrupted(Exception):
    """A run stopped by Ctrl+C; the finished tasks are saved."""


@dataclass
class RunRequest:
    """The options of one `cmml-bench run` call, for one seed."""

    method: str
    protocol: str
    seed: int = 0
    backbone: str | None = None
    out: Path = Path("results")
    overrides: list[str] = field(default_factory=list)
    stop_after: int | None = None
    subset: int | None = None
    device: str = "auto"
    data_root: str | None = None
    skip_invalid: bool = False
    quiet: bool = False
    tag: str | None = None
    command: str = ""


@dataclass
class RunOutcome:
    folder: Path
    status: str
    tasks_completed: int
    num_tasks: int


def seed_everything(seed: int, task: int) -> None:
    """Reseed torch, numpy and ``random`` from (seed, task); task -1 is method construction."""
    digest = hashlib.sha256(f"cmml-bench:{seed}:{task}".encode()).digest()
    value = int.from_bytes(digest[:4], "little")
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def run_one(request: RunRequest) -> RunOutcome:
    """Run, resume or report one (protocol, method, seed) run folder."""
    plan = _plan(request)
    folder = plan["folder"]
    stored = _check_stored(folder, plan["config"])
    if stored is not None and stored.get("status") == "complete":
        make_console().print(f"{folder}: the run is complete ({stored['num_tasks']} tasks); nothing to do.")
        return RunOutcome(folder, "complete", stored["num_tasks"], stored["num_tasks"])

    console = make_console()
    with run_logging(folder / files.LOG_FILE, console, request.quiet):
        return _Run(request, plan, console).execute()


def _plan(request: RunRequest) -> dict[str, Any]:
    """Resolve method, protocol, data and folder. Fails on absent data before any model is built."""
    method_config = load_method_config(request.method)
    settings = apply_overrides(method_config, request.overrides)
    implementation = method_class(method_config.implementation, source=method_config.path)
    protocol = load_protocol(request.protocol)
    backbone = request.backbone or protocol.backbone
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    if protocol.multi_label and not implementation.supports_multi_label:
        raise ConfigError(f"method {method_config.name} does not support multi-label protocols like {protocol.name}")
    if request.stop_after is not None and not 1 <= request.stop_after <= protocol.num_tasks:
        raise ConfigError(f"--stop-after must be between 1 and {protocol.num_tasks}, got {request.stop_after}")

    device = resolve_device(request.device)
    benchmark = build_benchmark(
        protocol, request.seed, data_root=request.data_root, skip_invalid=request.skip_invalid, subset=request.subset
    )
    _check_tasks(benchmark)
    name = method_config.name if not request.tag else f"{method_config.name}-{request.tag}"
    config = {
        "protocol": protocol.to_dict(),
        "protocol_hash": protocol.content_hash(),
        "method": {key: value for key, value in settings.method.to_dict().items() if key != "description"},
        "backbone": {"name": backbone, "options": settings.backbone_options},
        "seed": request.seed,
        "subset": request.subset,
        "skip_invalid": request.skip_invalid,
    }
    # A YAML round trip makes tuples lists and so matches the stored config.yaml.
    config = yaml.safe_load(yaml.safe_dump(config))
    return {
        "name": name,
        "settings": settings,
        "implementation": implementation,
        "protocol": protocol,
        "backbone": backbone,
        "benchmark": benchmark,
        "device": device,
        "config": config,
        "folder": files.run_folder_path(request.out, protocol.name, name, request.seed),
    }


def _check_tasks(benchmark: Benchmark) -> None:
    """Raise ConfigError when a task has no training or no test sample, since it cannot be scored."""
    for task in benchmark.tasks:
        for split in ("train", "test"):
            if not task.split(split):
                raise ConfigError(
                    f"task {task.task + 1} ({', '.join(task.classes)}) of protocol {benchmark.protocol.name} "
                    f"has no {split} sample; add data for these classes or remove them from the protocol"
                )


def _check_stored(folder: Path, config: dict) -> dict | None:
    """Compare the stored config with this one; return the stored result.json, if any."""
    config_path = folder / files.CONFIG_FILE
    if not config_path.is_file():
        return None
    difference = first_difference(files.read_yaml(config_path), config)
    if difference is not None:
        key, before, after = difference
        raise ConfigError(
            f"{folder} contains a run with a different configuration: {key} is {before!r} there "
            f"but {after!r} now. Pass another --out (or --tag), or delete {folder} to start over."
        )
    result_path = folder / files.RESULT_FILE
    return files.read_json(result_path) if result_path.is_file() else None


class _Run:
    """The state of one run while it trains; ``execute`` is the whole run."""

    def __init__(self, request: RunRequest, plan: dict, console) -> None:
        self.request = request
        self.plan = plan
        self.console = console
        self.folder: Path = plan["folder"]
        self.protocol: Protocol = plan["protocol"]
        self.benchmark: Benchmark = plan["benchmark"]
        self.settings = plan["settings"]
        self.train_config = self.settings.method.train
        self.eval_config = self.settings.method.eval
        self.seed = request.seed
        self.device: torch.device = plan["device"]
        supported = plan["implementation"].settings
        self.eval_settings = [setting for setting in (TASK_AGNOSTIC, TASK_AWARE) if setting in supported]
        self.num_tasks = len(self.benchmark.tasks)
        self.layout = TaskLayout(
            task_classes=tuple(tuple(task.class_indices) for task in self.benchmark.tasks),
            multi_label=self.benchmark.multi_label,
        )

    def execute(self) -> RunOutcome:
        self._log_start()
        self._write_static_files()
        self.progress = load_progress(self.folder) or self._fresh_progress()
        first = self.progress["tasks_completed"]
        last = self.num_tasks if self.request.stop_after is None else self.request.stop_after
        task: int | None = None
        try:
            self._build_method()
            if not first:
                self.progress = self._fresh_progress()
            if first:
                self._replay(first)
            with make_progress(self.console, self.request.quiet) as self.bars:
                for task in range(first, last):
                    self._run_task(task)
        except KeyboardInterrupt:
            self._log_stop(task, "interrupted")
            raise RunInterrupted(self._resume_hint(first if task is None else task)) from None
        except Exception:
            self._log_stop(task, "failed")
            raise

        return self._finish()

    # Setup -----------------------------------------------------------------

    def _log_start(self) -> None:
        versions = describe_environment(torch.device("cpu"))["packages"]
        logger.info("command: %s", self.request.command or shlex.join(sys.argv))
        logger.info(
            "protocol %s (hash %s), method %s (%s), backbone %s, seed %d, subset %s",
            self.protocol.name, self.plan["config"]["protocol_hash"][:12], self.plan["name"],
            self.settings.method.implementation, self.plan["backbone"], self.seed, self.request.subset,
        )
        logger.info("packages: %s", ", ".join(f"{name} {version}" for name, version in versions.items()))
        logger.info("method settings: %s", self.plan["config"]["method"])

    def _write_static_files(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        files.write_yaml_atomic(self.folder / files.CONFIG_FILE, self.plan["config"])
        class_order = {
            "class_order": self.benchmark.class_order,
            "tasks": [list(task.classes) for task in self.benchmark.tasks],
        }
        files.write_json_atomic(self.folder / files.CLASS_ORDER_FILE, class_order)
        files.write_json_atomic(self.folder / files.MISSING_COUNTS_FILE, self.benchmark.missing_counts())

    def _build_method(self) -> None:
        try:
            backbone = build_backbone(
                self.plan["backbone"], self.protocol.max_text_length, self.settings.backbone_options
            )
        except (RuntimeError, ValueError) as error:
            # The builders raise these with the cause and the fix (a missing model folder or package).
            raise ConfigError(f"backbone {self.plan['backbone']} could not be built: {error}") from error
        files.write_json_atomic(self.folder / files.ENVIRONMENT_FILE, describe_environment(self.device))
        logger.info("device %s", self.device)

        seed_everything(self.seed, -1)
        implementation: type[Method] = self.plan["implementation"]
        self.method = implementation(backbone, self.layout, self.settings.method.method)
        # Options may narrow the settings of an instance (an oracle-task-id ablation is task-aware only).
        self.eval_settings = [setting for setting in (TASK_AGNOSTIC, TASK_AWARE) if setting in self.method.settings]
        self.backbone_ids = {id(parameter) for parameter in backbone.parameters()}
        self.trained_ids: set[int] = set()
        self.method.to(self.device)

        self.collator = BatchCollator(backbone, self.layout.num_classes, self.layout.multi_label)
        if hasattr(backbone, "precompute"):
            started = time.perf_counter()
            samples = [item.sample for task in self.benchmark.tasks for item in task.train + task.test]
            if "progress" in inspect.signature(backbone.precompute).parameters:
                backbone.precompute(samples, progress=not self.request.quiet)
            else:
                backbone.precompute(samples)
            logger.info("precomputed backbone features of %d samples in %.1f s", len(samples), time.perf_counter() - started)

    def _fresh_progress(self) -> dict[str, Any]:
        return {
            "tasks_completed": 0,
            "matrix": {setting: empty_matrix(self.num_tasks) for setting in self.eval_settings},
            "missing_breakdown": {},
            "train_seconds": [],
            "eval_seconds": [],
            "epoch_losses": [],
            "trainable_per_task": [],
            "trainable_total": 0,
            "total_parameters": 0,
            "peak_memory_mb": 0.0,
            "peak_memory_kind": None,
        }

    def _replay(self, completed: int) -> None:
        """Rebuild the modules of finished tasks, then load the last checkpoint."""
        logger.info("resuming after task %d of %d from %s", completed, self.num_tasks, self.folder / files.CHECKPOINT_DIR)
        for task in range(completed):
            seed_everything(self.seed, task)
            self.method.begin_task(task)
            self._note_trainable()
        self.method.to(self.device)
        load_state(self.folder, self.progress, self.method, self._untrained_ids())

    def _note_trainable(self) -> int:
        parameters = self.method.trainable_parameters()
        self.trained_ids.update(id(parameter) for parameter in parameters)
        return sum(parameter.numel() for parameter in parameters)

    def _untrained_ids(self) -> set[int]:
        return self.backbone_ids - self.trained_ids

    # One task ----------------------------------------------------------------

    def _run_task(self, task: int) -> None:
        seed_everything(self.seed, task)
        self.method.begin_task(task)
        self.method.to(self.device)
        trainable = self._note_trainable()
        samples = self._training_samples(task)
        logger.info("task %d/%d: %d training samples, %d trainable parameters", task + 1, self.num_tasks, len(samples), trainable)

        started = time.perf_counter()
        losses = train_task(
            self.method, task, lambda epoch: self._train_loader(samples, task, epoch),
            self.train_config, self.device, self.bars,
        )
        self.method.eval()
        self.method.end_task(task, self._ordered_batches(samples, int(self.train_config["batch_size"])))
        train_seconds = time.perf_counter() - started

        started = time.perf_counter()
        records = self._evaluate(task)
        eval_seconds = time.perf_counter() - started
        self._record(task, records, trainable, losses, train_seconds, eval_seconds)

    def _training_samples(self, task: int) -> list:
        if self.method.trains_on_all_seen_tasks:
            return [item for data in self.benchmark.tasks[: task + 1] for item in data.train]
        return list(self.benchmark.tasks[task].train)

    def _train_loader(self, samples: list, task: int, epoch: int):
        return make_loader(
            samples, self.collator, int(self.train_config["batch_size"]),
            generator=shuffle_generator(self.seed, task, epoch),
            num_workers=int(self.train_config.get("num_workers", 0)),
        )

    def _ordered_batches(self, samples: list, batch_size: int):
        loader = make_loader(
            samples, self.collator, batch_size, num_workers=int(self.train_config.get("num_workers", 0))
        )
        return (batch.to(self.device) for batch in loader)

    def _evaluate(self, trained_task: int) -> list[SampleRecord]:
        """Evaluate every seen task in every setting; fill row ``trained_task`` of each matrix."""
        self.method.eval()
        self.method.reset_diagnostics()
        autocast = autocast_for(self.device)
        batch_size = int(self.eval_config["batch_size"])
        records: list[SampleRecord] = []
        for setting in self.eval_settings:
            row = self.progress["matrix"][setting][trained_task]
            for task in range(trained_task + 1):
                loader = make_loader(
                    self.benchmark.tasks[task].test, self.collator, batch_size,
                    num_workers=int(self.train_config.get("num_workers", 0)),
                )
                task_records = predict_task_split(
                    self.method, loader, setting=setting, task=task, trained_task=trained_task,
                    layout=self.layout, device=self.device, autocast=autocast,
                )
                universe = task_universe(setting, task, trained_task, self.layout)
                row[task] = score(task_records, self.layout.multi_label, universe)
                records.extend(task_records)
            scores = ", ".join(f"{value:.2f}" for value in row[: trained_task + 1])
            logger.info("after task %d, %s %s per task: %s", trained_task + 1, setting, self.protocol.score_name, scores)
        return records

    def _record(self, task, records, trainable, losses, train_seconds, eval_seconds) -> None:
        """Store the task's numbers, then write the checkpoint, result.json and the prediction files."""
        progress = self.progress
        progress["tasks_completed"] = task + 1
        progress["train_seconds"].append(train_seconds)
        progress["eval_seconds"].append(eval_seconds)
        progress["epoch_losses"].append(losses)
        progress["trainable_per_task"].append(trainable)
        progress["trainable_total"] = self._count(self.trained_ids)
        progress["total_parameters"] = sum(parameter.numel() for parameter in self.method.parameters())
        peak, kind = peak_memory_mb(self.device)
        progress["peak_memory_mb"] = max(float(progress["peak_memory_mb"]), peak)
        progress["peak_memory_kind"] = kind
        seen = self.layout.seen_classes(task)
        progress["missing_breakdown"] = {
            setting: missing_breakdown([r for r in records if r.setting == setting], self.layout.multi_label, seen)
            for setting in self.eval_settings
        }

        progress["task_identification"] = task_identification(records)

        save_checkpoint(self.folder, task, checkpoint_state(self.method, self._untrained_ids()), progress)
        self._write_predictions(records, seen)
        self._write_diagnostics(records)
        self._write_result()
        logger.info(
            "task %d/%d done: train %.1f s, eval %.1f s, peak memory %.0f MB (%s)",
            task + 1, self.num_tasks, train_seconds, eval_seconds, progress["peak_memory_mb"], kind,
        )

    def _count(self, ids: set[int]) -> int:
        return sum(parameter.numel() for parameter in self.method.parameters() if id(parameter) in ids)

    # Files -------------------------------------------------------------------

    def _write_predictions(self, records: list[SampleRecord], seen: int) -> None:
        label_sets = {}
        for data in self.benchmark.tasks:
            for item in data.test:
                label_sets[(data.task, item.sample.sample_id)] = tuple(i for i in item.targets if i < seen)
        rows = prediction_rows(records, self.benchmark.class_order, label_sets)
        files.write_csv_atomic(self.folder / files.PREDICTIONS_FILE, files.PREDICTION_COLUMNS, rows)

    def _write_diagnostics(self, records: list[SampleRecord]) -> None:
        diagnostics = {
            "tasks_evaluated": self.progress["tasks_completed"],
            "task_id_at_test": self._task_id_use(),
            "task_identification": task_identification(records),
            "epoch_losses": self.progress["epoch_losses"],
            "method": self.method.diagnostics(),
        }
        files.write_json_atomic(self.folder / files.DIAGNOSTICS_FILE, diagnostics)

    def _task_id_use(self) -> dict[str, str]:
        """Describe, per setting, how the true task id was used at test time."""
        use = {TASK_AGNOSTIC: "not used"}
        if TASK_AWARE in self.eval_settings:
            use[TASK_AWARE] = (
                "passed to the method and used to mask the logits"
                if self.method.uses_task_id_at_test
                else "used only to mask the logits to the task's classes"
            )
        return {setting: use[setting] for setting in self.eval_settings}

    def _write_result(self) -> None:
        identity = {
            "protocol_hash": self.plan["config"]["protocol_hash"],
            "class_order_hash": self.benchmark.class_order_hash(),
            "mask_hash": self.benchmark.mask_hash(),
            "backbone": self.plan["backbone"],
            "subset": self.request.subset,
        }
        static = {
            "protocol": self.protocol.name,
            "method": self.plan["name"],
            "backbone": self.plan["backbone"],
            "seed": self.seed,
            "num_tasks": self.num_tasks,
            "multi_label": self.layout.multi_label,
            "score_name": self.protocol.score_name,
            "eval_settings": self.eval_settings,
            # The true task id reaches the predictions in every task-aware
            # evaluation, at least through the runner's logit masking.
            "uses_task_id_at_test": TASK_AWARE in self.eval_settings,
            "skipped_samples": dict(self.benchmark.skipped),
            # Accuracy of the method's own task routing in task-agnostic evaluation (task-key memories).
            "task_identification": self.progress.get("task_identification"),
            "config": {key: self.plan["config"]["method"][key] for key in ("train", "eval", "method")},
        }
        result = build_result(identity=identity, progress=self.progress, static=static)
        files.write_json_atomic(self.folder / files.RESULT_FILE, result)

    # End -----------------------------------------------------------------------

    def _finish(self) -> RunOutcome:
        completed = self.progress["tasks_completed"]
        status = "complete" if completed == self.num_tasks else "incomplete"
        if status == "complete":
            for setting in self.eval_settings:
                final = self.progress["matrix"][setting][-1]
                logger.info("%s: final %s mean over tasks %.2f", setting, self.protocol.score_name, float(np.mean(final)))
            logger.info("run complete: %s", self.folder)
        else:
            logger.info("stopped after task %d of %d; %s", completed, self.num_tasks, self._resume_hint(completed))
        return RunOutcome(self.folder, status, completed, self.num_tasks)

    def _log_stop(self, task: int | None, event: str) -> None:
        if task is None:
            completed = self.progress["tasks_completed"]
            logger.error("%s before training; %s", event, self._resume_hint(completed))
            return
        logger.error("%s during task %d; %s", event, task + 1, self._resume_hint(task))

    def _resume_hint(self, completed: int) -> str:
        saved = f"tasks 1-{completed} are saved in {self.folder}" if completed else "no task was finished"
        if self.request.stop_after is not None:
            return f"{saved}; run the command again without --stop-after (or with a larger value) to continue"
        return f"{saved}; run the same command again to resume"
