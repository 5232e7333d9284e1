"""Rich progress bars and the one-line summary every long command ends with."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

#: Console for progress and summaries; writes to stderr so stdout stays machine-readable.
console = Console(stderr=True)


class _Progress(Progress):
    """rich's Progress that erases itself when its ``with`` block raises.

    A failed command then prints only its one error line, not a half-filled bar above it.
    """

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        if exc_type is not None:
            self.live.transient = True
        super().__exit__(exc_type, exc_val, exc_tb)


def progress_bar(transient: bool = False) -> Progress:
    """A rich Progress with description, bar, n/total, elapsed and remaining time (erased on error)."""
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not sys.stderr.isatty() and False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (rich), like ``rich.progress.track`` but on cryomap's console."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def summary(line: str) -> None:
    """Print the one-line summary that ends a command."""
    console.print(line, highlight=False, soft_wrap=True)


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 micrograph"``, ``"3 micrographs"``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
