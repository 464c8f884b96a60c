"""`cmml-bench run` and `cmml-bench list`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

DATA_ROOT_HELP = "Data root folder (default: $CMML_BENCH_DATA, else ~/.cache/cmml-bench/data)."


def _parse_seeds(seed: int, seeds: str | None) -> list[int]:
    if seeds is None:
        return [seed]
    try:
        values = [int(part) for part in seeds.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 0,1,2, got {seeds!r}", param_hint="--seeds")
    if not values:
        raise click.BadParameter("give at least one seed", param_hint="--seeds")
    return values


@click.command("run")
@click.option("--method", required=True, help="Method name (a YAML file in methods/) or a path to a method YAML file.")
@click.option("--protocol", required=True, help="Protocol name (a YAML file in protocols/) or a path to a protocol YAML file.")
@click.option("--backbone", default=None, help="Backbone name (default: the protocol's backbone). See `cmml-bench list`.")
@click.option("--seed", default=0, show_default=True, type=int, help="Run seed: masks, initialisation and data order.")
@click.option("--seeds", default=None, help="Comma-separated seeds run one after the other, for example 0,1,2 (overrides --seed).")
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False), help="Output folder; runs go to OUT/PROTOCOL/METHOD/seedK.")
@click.option("--tag", default=None, help="Suffix of the method folder (METHOD-TAG), to keep runs with other --set values apart.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a setting, for example train.epochs=2, method.rank=4 or backbone.source=/models/vilt. Repeatable.")
@click.option("--stop-after", type=int, default=None, help="Stop after this many tasks (1 = after the first task); run again without it to resume.")
@click.option("--subset", type=int, default=None, help="Keep at most N train and N test samples per class (quick runs).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help=DATA_ROOT_HELP)
@click.option("--skip-invalid", is_flag=True, help="Skip and count invalid samples instead of failing.")
@click.option("--quiet", is_flag=True, help="Show only warnings and errors, without progress bars.")
def run_command(method, protocol, backbone, seed, seeds, out, tag, overrides, stop_after, subset, device, data_root, skip_invalid, quiet) -> None:
    """Train METHOD on PROTOCOL task after task and write a run folder per seed.

    Running the same command again resumes after the last finished task, and
    does nothing for a complete run.
    """
    from cmml_bench.engine.runner import RunInterrupted, RunRequest, run_one

    errors = _user_errors()
    command = shlex.join(["cmml-bench", *sys.argv[1:]])
    for value in _parse_seeds(seed, seeds):
        request = RunRequest(
            method=method, protocol=protocol, seed=value, backbone=backbone, out=Path(out),
            overrides=list(overrides), stop_after=stop_after, subset=subset, device=device,
            data_root=data_root, skip_invalid=skip_invalid, quiet=quiet, tag=tag, command=command,
        )
        try:
            outcome = run_one(request)
        except RunInterrupted as error:
            click.echo(f"Interrupted: {error}", err=True)
            sys.exit(130)
        except errors as error:
            raise click.ClickException(str(error)) from error
        click.echo(f"{outcome.folder}: {outcome.status} ({outcome.tasks_completed}/{outcome.num_tasks} tasks)")


def _user_errors() -> tuple[type[Exception], ...]:
    """Return the exceptions that describe a user mistake and print without a traceback."""
    from cmml_bench.data.errors import DataError
    from cmml_bench.engine.checkpoint import CheckpointError
    from cmml_bench.engine.config import ConfigError
    from cmml_bench.methods import MethodConfigError
    from cmml_bench.protocols import ProtocolError

    return (DataError, ConfigError, CheckpointError, MethodConfigError, ProtocolError)


@click.command("list")
def list_command() -> None:
    """List the methods, protocols and backbones, one line each."""
    from cmml_bench.backbones import list_backbones
    from cmml_bench.methods import list_methods
    from cmml_bench.protocols import list_protocols

    console = Console()
    for title, rows in (("methods", list_methods()), ("protocols", list_protocols()), ("backbones", list_backbones())):
        table = Table("name", "description", title=title, title_justify="left")
        for name, description in rows:
            table.add_row(name, description)
        console.print(table)
