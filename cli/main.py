"""The `medpipe` command line (typer + rich): the commands in the order `medpipe --help` lists them.

Each command lives in the module of its group and calls library functions; heavy libraries load only
inside commands.
"""

from collections.abc import Callable
from typing import Annotated

import typer

from cli import data, models, registry, training
from cli.common import HELP, console, err_console
from pipeline.errors import MedpipeError

app = typer.Typer(
    help="medpipe: reproducible training of CNN classifiers for medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=HELP,
)
data_app = typer.Typer(help="Build and inspect data sets.", no_args_is_help=True, context_settings=HELP)
app.add_typer(data_app, name="data")
label_app = typer.Typer(help="Help experts label images.", no_args_is_help=True, context_settings=HELP)
app.add_typer(label_app, name="label")
remote_app = typer.Typer(
    help="DVC remotes where data versions are pushed and pulled.", no_args_is_help=True, context_settings=HELP
)
data_app.add_typer(remote_app, name="remote")


def _version(value: bool) -> None:
    if value:
        from pipeline import __version__

        console.print(f"medpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, metavar="", help="Print medpipe's version and exit."
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "-v",
            "--verbose",
            metavar="",
            help="Also show what medpipe hides by default: TensorFlow's C++ log, MLflow's progress bars, Dask's "
            "cluster messages.",
        ),
    ] = False,
) -> None:
    """medpipe: reproducible training of CNN classifiers for medical images."""
    if verbose:
        from pipeline._env import configure_verbose

        configure_verbose()


command: Callable[..., None]  # the loops below register commands of different signatures
for command in (training.run, training.validate, training.stage, training.tune, models.explain, models.predict):
    app.command()(command)
label_app.command("suggest")(models.label_suggest)
label_app.command("import")(models.label_import)
for command in (registry.promote, training.schedule, registry.reproduce, registry.rollback):
    app.command()(command)
for name, command in (
    ("synth", data.data_synth),
    ("scan", data.data_scan),
    ("duplicates", data.data_duplicates),
    ("import-npz", data.data_import_npz),
    ("add", data.data_add),
):
    data_app.command(name)(command)
remote_app.command("add")(data.remote_add)
remote_app.command("list")(data.remote_list)


def main() -> None:
    """Entry point: expected failures print one line and exit 1 (data) or 2 (usage)."""
    try:
        app()
    except MedpipeError as err:
        err_console.print(f"error: {err}", markup=False, soft_wrap=True)
        raise SystemExit(err.exit_code) from None


if __name__ == "__main__":
    main()
