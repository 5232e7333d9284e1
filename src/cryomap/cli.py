"""The ``cryomap`` command: one sub-command per stage, each thin over the library.

Sub-commands live one per module in :mod:`cryomap.commands` (cryoDRGN's layout); each module
defines ``register(app: typer.Typer) -> None``. They are discovered here, so adding a command
never means editing this file.

One rule for every failure the user can cause, enforced here in :func:`main`:

- a :class:`~cryomap.errors.CryomapError` (bad input, an output in the way, a request too big
  for this machine) is one line on stderr, ``cryomap: error: <file or option>: <problem>``,
  exit code 2; nothing is half-written because every writer is atomic;
- a usage error (unknown command or option, a missing argument, ``--box abc``, a number out of
  range) is one line with the command's usage, exit code 2; ``cryomap`` alone prints the help,
  exit code 2;
- Ctrl-C exits 130 (the atomic writers remove their temporary files on the way out);
- the numeric options of every command are range- and finiteness-checked by name before the
  command runs (:data:`OPTION_RULES`), so ``--apix nan`` never reaches a header;
- an output that would replace a file this command read is refused
  (:func:`cryomap.io.atomic.track_inputs`);
- library chatter that says nothing about the run (Lightning's accelerator banner, numpy's
  floating-point warnings — whose NaN results the finite checks refuse anyway — and mrcfile's
  header warnings, which the MRC reader turns into one error line) is kept off the terminal.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer

from cryomap import __version__
from cryomap.errors import CryomapError
from cryomap.quiet import quiet_libraries

app = typer.Typer(
    name="cryomap",
    help="From cryo-EM micrographs and particle coordinates to a predicted 3D density map, scored the way the field scores maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags shown as flags (rich mode prints "<bool>" beside every one)
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
    _name_metavars(app)
    _plain_usage_names()


def _plain_usage_names() -> None:
    """Required arguments appear in usage lines as ``PARTICLES`` (the Unix convention), not typer's ``{PARTICLES}``."""
    from typer.core import TyperArgument

    def usage_name(self) -> str:
        raw = self.display_name_raw.strip("[]")
        name = raw if self.required else f"[{raw}]"
        return name + ("..." if self.nargs != 1 else "")

    TyperArgument._usage_display_name = usage_name  # typer's only hook for it


def _name_metavars(group: typer.Typer) -> None:
    """Usage lines name arguments as researchers write them (``PARTICLES``, ``MAP``), and options that
    take several values by what they are (``MIN MAX``, ``FILE``), not typer's ``{name}`` / ``<list[Path]>``."""
    import inspect

    from typer.models import ArgumentInfo, OptionInfo

    commands = list(group.registered_commands)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _name_metavars(sub.typer_instance)
    for cmd in commands:
        for name, param in inspect.signature(cmd.callback).parameters.items():
            info = param.default
            if isinstance(info, ArgumentInfo) and info.metavar is None:
                info.metavar = name.upper()
            elif isinstance(info, OptionInfo) and info.metavar is None:
                ann = str(param.annotation)
                if ann.startswith("tuple"):
                    help_words = (info.help or "").split()
                    n = ann.count(",") + 1
                    upper = [w for w in help_words[:n] if w.isupper()]
                    info.metavar = " ".join(upper) if len(upper) == n else " ".join(["VALUE"] * n)
                elif ann.startswith("list"):
                    info.metavar = "FILE" if "Path" in ann else "NAME"


_register_commands()


# ---------------------------------------------------------------------------- option rules

@dataclass(frozen=True)
class Rule:
    """A range for a numeric option: ``low`` ≤ value (< if ``open_low``) and value < ``high`` (≤ unless ``open_high``)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = True
    what: str = ""

    def problem(self, value: float) -> str | None:
        """None when ``value`` obeys the rule, else what is wrong with it."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return f"must be {'>' if self.open_low else 'at least'} {self.low:g}{self.what}, got {value:g}"
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            return f"must be {'<' if self.open_high else 'at most'} {self.high:g}{self.what}, got {value:g}"
        return None


POSITIVE = Rule(0, open_low=True)
AT_LEAST_1 = Rule(1)
NON_NEGATIVE = Rule(0)
FINITE = Rule()

#: Rules by option name, for every command that has the option (a command may override one in
#: :data:`COMMAND_RULES`). Any other float option must still be finite; bools and text are not checked.
#: Options whose command checks the range itself, with a message of its own (``simulate --snr``,
#: ``select -n/--clusters``), are left to it.
OPTION_RULES: dict[str, Rule] = {
    # sizes in Å or Å/px, physics that must be positive
    "--apix": Rule(0, open_low=True, what=" Å/px"), "--in-apix": Rule(0, open_low=True, what=" Å/px"),
    "--map-apix": Rule(0, open_low=True, what=" Å/px"), "--diameter": POSITIVE, "--bg-radius": POSITIVE,
    "--voltage": Rule(0, open_low=True, what=" kV"), "--dose": Rule(0, open_low=True, what=" e⁻/Å²"),
    "--resolution": Rule(0, open_low=True, what=" Å"), "--defocus": Rule(0, open_low=True, what=" Å"),
    "--cs": Rule(0, what=" mm"), "--amplitude-contrast": Rule(0, 1), "--max-astigmatism": NON_NEGATIVE,
    "--eta": NON_NEGATIVE, "--bin": AT_LEAST_1,
    # counts and sizes in px: at least one
    "--box": AT_LEAST_1, "--micrograph-size": AT_LEAST_1, "--particles": AT_LEAST_1, "--micrographs": AT_LEAST_1,
    "--max-particles": AT_LEAST_1, "--workers": AT_LEAST_1, "--chunk": AT_LEAST_1, "--dims": AT_LEAST_1,
    "--pca-size": AT_LEAST_1, "--resnet-size": AT_LEAST_1, "--tile": AT_LEAST_1, "--n-images": AT_LEAST_1, "--samples": AT_LEAST_1, "--steps": AT_LEAST_1,
    "--batch": AT_LEAST_1, "--max-steps": AT_LEAST_1, "--num-nodes": AT_LEAST_1,
    "--seed": NON_NEGATIVE, "--patch-degree": NON_NEGATIVE,
}

#: Per-command exceptions to :data:`OPTION_RULES`: (command name, option) → rule.
COMMAND_RULES: dict[tuple[str, str], Rule] = {
    ("labels", "--threshold"): Rule(0, 1, open_high=False, what=" (the normalised map lies in 0…1)"),
}


def _option_name(param: Any) -> str:
    opts = list(getattr(param, "opts", ()) or ())
    long = [o for o in opts if o.startswith("--")]
    return (long or opts or [str(param.name)])[0]


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _numbers(item)]
    return []


def _checking(param: Any, command: str) -> Callable:
    """A click callback that checks ``param``'s value against its rule, then runs the original callback."""
    original = param.callback
    name = _option_name(param)
    rule = COMMAND_RULES.get((command, name), OPTION_RULES.get(name, FINITE))

    def callback(ctx, p, value):
        for v in _numbers(value):
            problem = rule.problem(v)
            if problem is not None:
                raise typer.BadParameter(problem, ctx=ctx, param=p)
        return original(ctx, p, value) if original is not None else value

    return callback


def _add_rules(command: Any, name: str = "") -> Any:
    """Attach the option rules to every parameter of ``command`` and its sub-commands (once)."""
    for sub_name, sub in (getattr(command, "commands", None) or {}).items():
        _add_rules(sub, sub_name)
    for param in command.params:
        if not getattr(param, "_cryomap_checked", False) and not getattr(param, "is_flag", False):
            param.callback = _checking(param, name)
            param._cryomap_checked = True
    return command


_COMMAND: Any = None


def _click_command() -> Any:
    """The click command tree of :data:`app`, built once, with the option rules attached."""
    global _COMMAND
    if _COMMAND is None:
        _COMMAND = _add_rules(typer.main.get_command(app))
    return _COMMAND


# ---------------------------------------------------------------------------- library chatter

# ---------------------------------------------------------------------------- entry point

def _error(message: str) -> None:
    typer.secho(f"cryomap: error: {' '.join(message.split())}", err=True, fg=typer.colors.RED)


def _usage_line(exc: Any) -> str:
    """One line for a click usage error: the problem, then the command's usage and where help is."""
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message()
    if ctx is None:
        return message
    usage = " ".join(ctx.get_usage().split())
    return f"{message} ({usage}; see '{ctx.command_path} --help')"


def keep_pyarrow_out() -> None:
    """Keep pyarrow from loading in a cryomap command's process (before pandas is first imported).

    pandas 3 imports pyarrow, when it is installed, to back its string dtype; starfile declares it
    as a dependency, so it is always installed, but nothing in cryomap uses it. It costs 38 MiB of
    resident memory and ~0.1 s of start-up in every command (measured on ``cryomap reconstruct``:
    a peak of 507 against 466 MiB for 10,000 particles of 64 px). Without it pandas keeps strings
    in its Python-object storage, with the same ``str`` dtype and semantics (PDEP-14). Only the
    command line does this: a program that imports cryomap as a library keeps its pyarrow.
    A process that has already imported pandas or pyarrow is left as it is.
    """
    if "pandas" not in sys.modules:
        sys.modules.setdefault("pyarrow", None)  # type: ignore[assignment]  # `import pyarrow` → ImportError


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; failures become one line and exit 2, Ctrl-C exit 130 (module doc)."""
    from typer._click import exceptions as click_exceptions

    keep_pyarrow_out()

    from cryomap.io.atomic import track_inputs

    command = _click_command()
    try:
        with warnings.catch_warnings():
            quiet_libraries()
            with track_inputs():
                rv = command.main(args=argv, prog_name="cryomap", standalone_mode=False)
    except CryomapError as err:
        _error(str(err))
        return 2
    except click_exceptions.NoArgsIsHelpError as exc:  # `cryomap` or `cryomap dataset` alone
        text = exc.ctx.get_help() if exc.ctx is not None else ""  # typer's rich help prints itself
        if text.strip():
            typer.echo(text, err=True)
        return 2
    except click_exceptions.ClickException as exc:  # usage errors: unknown command, missing argument, bad value
        _error(_usage_line(exc))
        return int(exc.exit_code or 2) if exc.exit_code != 1 else 2
    except typer.Exit as exc:
        rv = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        rv = 130
    except MemoryError:
        _error("ran out of memory; try smaller sizes (box, micrograph size, --chunk) or fewer --workers")
        return 2
    except PermissionError as exc:
        _error(f"{exc.filename}: permission denied" if exc.filename else "permission denied")
        return 2
    code = int(rv) if isinstance(rv, int) and not isinstance(rv, bool) else 0
    if code == 130:  # typer turns Ctrl-C into exit code 130
        typer.echo("cryomap: interrupted; no half-written output was kept", err=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
