"""The `cmml-bench` command line.

Each subcommand lives in the module of its concern and is imported only when
it runs, so `cmml-bench protocol show` does not load torch.
"""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute): the click command or group that implements it.
SUBCOMMANDS = {
    "run": ("cmml_bench.engine.commands", "run_command"),
    "list": ("cmml_bench.engine.commands", "list_command"),
    "protocol": ("cmml_bench.data.commands", "protocol_group"),
    "data": ("cmml_bench.data.commands", "data_group"),
    "compare": ("cmml_bench.report.commands", "compare_command"),
    "check": ("cmml_bench.report.commands", "check_command"),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module_name, attribute = SUBCOMMANDS[name]
        module = importlib.import_module(module_name)
        return getattr(module, attribute)


@click.group(cls=LazyGroup)
@click.version_option(package_name="cmml-bench")
def main() -> None:
    """Benchmark continual missing-modality learning methods on shared protocols."""


if __name__ == "__main__":
    main()
