"""`cmml-bench protocol ...` and `cmml-bench data ...` commands."""

from __future__ import annotations

import json

import click
from rich import box
from rich.console import Console
from rich.table import Table

from cmml_bench.data.errors import DataError
from cmml_bench.protocols import ProtocolError, list_protocols, load_protocol

DATA_ROOT_HELP = "Data root folder (default: $CMML_BENCH_DATA, else ~/.cache/cmml-bench/data)."


@click.group("protocol")
def protocol_group() -> None:
    """List protocols and show their tasks and missing-modality counts."""


@protocol_group.command("list")
def list_command() -> None:
    """List the protocol files found by name, with their descriptions."""
    table = Table("name", "description")
    for name, description in list_protocols():
        table.add_row(name, description)
    Console().print(table)


@protocol_group.command("show")
@click.argument("name_or_path")
@click.option("--json", "as_json", is_flag=True, help="Print the per-task counts as JSON.")
@click.option("--seed", default=0, show_default=True, type=int, help="Run seed that draws the missing masks.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help=DATA_ROOT_HELP)
@click.option("--skip-invalid", is_flag=True, help="Skip and count invalid samples instead of failing.")
def show_command(name_or_path: str, as_json: bool, seed: int, data_root: str | None, skip_invalid: bool) -> None:
    """Show the tasks of a protocol (a name or a YAML path) and their missing counts per split."""
    from cmml_bench.data.benchmark import build_benchmark

    try:
        protocol = load_protocol(name_or_path)
        benchmark = build_benchmark(protocol, seed, data_root=data_root, skip_invalid=skip_invalid)
    except (ProtocolError, DataError) as error:
        raise click.ClickException(str(error)) from error

    counts = benchmark.missing_counts()
    if as_json:
        click.echo(json.dumps({"protocol": protocol.name, "tasks": counts}, indent=2))
        return
    _print_counts(protocol, benchmark, counts, data_root)


def _print_counts(protocol, benchmark, counts: list[dict], data_root: str | None) -> None:
    console = Console()
    console.print(
        f"[bold]{protocol.name}[/bold]: {protocol.description}\n"
        f"dataset {protocol.dataset} ({protocol.data_dir(data_root)}), {protocol.num_tasks} tasks x "
        f"{protocol.classes_per_task} classes, metric {protocol.score_name}, backbone {protocol.backbone}, seed {benchmark.seed}"
    )
    table = Table("task", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("classes", no_wrap=True)
    for header in ("split", "samples", "complete", "no text", "no image", "mix"):
        table.add_column(header)
    for row in counts:
        for split, numbers in row["splits"].items():
            table.add_row(
                str(row["task"]) if split == "train" else "",
                "\n".join(row["classes"]) if split == "train" else "",
                split,
                str(numbers["samples"]),
                str(numbers["complete"]),
                str(numbers["text_missing"]),
                str(numbers["image_missing"]),
                _describe_mix(protocol.mix(row["task"], split)),
            )
    console.print(table)
    console.print("mix: missing type and rate; for `both`, rate/share of the masked samples that lose the image")
    if benchmark.skipped:
        skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(benchmark.skipped.items()))
        console.print(f"skipped while reading: {skipped}")


def _describe_mix(mix) -> str:
    if mix.type != "both":
        return f"{mix.type} {mix.rate:g}"
    return f"both {mix.rate:g}/{mix.both_ratio:g}"


@click.group("data")
def data_group() -> None:
    """Fetch the real data sets that come as Debian packages."""


@data_group.command("prepare")
@click.argument("names", nargs=-1, required=True, type=click.Choice(["tuxpaint", "clipart", "emoji"]))
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help=DATA_ROOT_HELP)
def prepare_command(names: tuple[str, ...], data_root: str | None) -> None:
    """Download and extract NAME's Debian packages into the data root (once)."""
    from cmml_bench.data.prepare import prepare

    for name in names:
        try:
            prepare(name, data_root=data_root, echo=click.echo)
        except DataError as error:
            raise click.ClickException(str(error)) from error
