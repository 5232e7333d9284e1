"""Errors that reach the user as one clear line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class CryomapError(Exception):
    """A problem with the user's input or request.

    The CLI prints ``str(err)`` as a single line and exits non-zero; the traceback is not shown.
    Give ``path`` whenever the problem belongs to a file, so the line names it.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.message = " ".join(str(message).split())  # one line, whatever a wrapped library said
        super().__init__(f"{self.path}: {self.message}" if self.path is not None else self.message)


class BadInputError(CryomapError):
    """An input file is missing, unreadable, truncated or inconsistent."""


class OutputExistsError(CryomapError):
    """An output would overwrite something the user already has (pass ``force=True``/``--force``)."""
