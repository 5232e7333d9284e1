"""Atomic output: write to a temporary name beside the target, rename when complete.

An interrupted run therefore never leaves a half-written file that looks complete, and nothing
the user already has is overwritten unless ``force`` is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryomap.errors import OutputExistsError

#: File every output folder cryomap writes holds; ``--force`` replaces only folders that have it.
OUTPUT_MARKER = ".cryomap-output"


def is_cryomap_output(folder: str | Path) -> bool:
    """True for a folder cryomap wrote (it holds :data:`OUTPUT_MARKER`)."""
    return (Path(folder) / OUTPUT_MARKER).is_file()


def mark_output(folder: str | Path, what: str = "") -> None:
    """Mark ``folder`` as written by cryomap (so a later ``--force`` may replace it)."""
    (Path(folder) / OUTPUT_MARKER).write_text(f"written by cryomap{': ' + what if what else ''}\n")


def check_replaceable_dir(target: str | Path, force: bool = False) -> Path:
    """Like :func:`check_writable` for an output folder: with ``force`` an existing folder is
    replaceable only if cryomap wrote it (or it is empty); a file in its place is refused."""
    target = check_writable(target, force)
    if target.exists():
        if not target.is_dir():
            raise OutputExistsError("exists and is a file, not an output folder; choose another -o", target)
        if any(target.iterdir()) and not is_cryomap_output(target):
            raise OutputExistsError(
                "exists and was not written by cryomap; --force replaces only cryomap's own outputs: choose another -o",
                target)
    return target


def check_writable(target: str | Path, force: bool = False) -> Path:
    """Return ``target`` as a Path; raise :class:`OutputExistsError` if it exists and not ``force``."""
    target = Path(target)
    if target.exists() and not force:
        raise OutputExistsError("already exists; pass --force to overwrite", target)
    return target


@contextlib.contextmanager
def atomic_path(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched. The
    temporary name keeps ``target``'s suffixes so that libraries choosing a format by
    extension (mrcfile, starfile, PIL) behave the same.
    """
    target = check_writable(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # let the writer create it; some libraries refuse to open an existing file
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; move it onto ``target`` when the block succeeds.

    With ``force`` an existing ``target`` folder is replaced only after the new one is complete,
    and only if cryomap wrote it (:func:`check_replaceable_dir`). The new folder is marked as
    cryomap's (:data:`OUTPUT_MARKER`).
    """
    target = check_replaceable_dir(target, force)
    if target.parent.exists() and not target.parent.is_dir():
        raise OutputExistsError("the parent of this output is a file, not a folder", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        mark_output(tmp)
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
