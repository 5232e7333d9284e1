"""The ``cryomap`` command: one sub-command per stage, each thin over the library.

Sub-commands live one per module in :mod:`cryomap.commands` (cryoDRGN's layout); each module
defines ``register(app: typer.Typer) -> None``. They are discovered here, so adding a command
never means editing this file. A :class:`~cryomap.errors.CryomapError` becomes one line on
stderr and exit code 2; nothing is half-written because every writer is atomic.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from cryomap import __version__
from cryomap.errors import CryomapError

app = typer.Typer(
    name="cryomap",
    help="From cryo-EM micrographs and particle coordinates to a predicted 3D density map, scored the way the field scores maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cryomap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """cryomap: simulate, extract, build labels and datasets, train, predict, reconstruct, evaluate, report."""


def _register_commands() -> None:
    import cryomap.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"cryomap.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning cryomap errors into one line and a non-zero exit."""
    try:
        app(args=argv, standalone_mode=False)
    except CryomapError as err:
        typer.secho(f"cryomap: error: {err}", err=True, fg=typer.colors.RED)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("Interrupted; no partial output was kept.", err=True)
        return 130
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
