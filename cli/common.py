"""What every command shares: the consoles, the --params and --set options, and the typer apps."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.errors import ConfigError

HELP = {"help_option_names": ["-h", "--help"]}
console = Console(markup=False)  # user paths and labels may contain [brackets]
err_console = Console(stderr=True, markup=False)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameter file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override one parameter: "
                                                  "KEY=VALUE, e.g. --set train.epochs=3 (repeatable).")]


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """`--set KEY=VALUE` flags as a mapping.

    Raises:
        ConfigError: A flag without `=` or without a key.
    """
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def say(message: str) -> None:
    """A progress or waiting message, on stderr."""
    err_console.print(message, soft_wrap=True)
