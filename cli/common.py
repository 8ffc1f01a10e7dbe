"""What every command shares: the consoles, the --params and --set options, and the typer apps."""

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.errors import ConfigError

HELP = {"help_option_names": ["-h", "--help"]}
console = Console(markup=False)  # user paths and labels may contain [brackets]
err_console = Console(stderr=True, markup=False)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameter file.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Registered model: models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest (default: "
        "register.model_name@champion)."
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="KEY=VALUE", help="Override one parameter: KEY=VALUE, e.g. --set train.epochs=3 (repeatable)."
    ),
]


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


def show_library_log() -> None:
    """Print the library's INFO messages (epoch lines, registrations) on stdout, as a DVC stage shows them."""
    logger = logging.getLogger("pipeline")
    if not any(getattr(h, "medpipe_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.medpipe_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def say(message: str) -> None:
    """A progress or waiting message, on stderr."""
    err_console.print(message, soft_wrap=True)
