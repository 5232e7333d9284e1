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

#: Suffixes of the files cryomap writes: an existing folder of such a name is refused as a file output.
FILE_SUFFIXES = (".mrc", ".mrcs", ".map", ".star", ".html", ".npy", ".json", ".csv", ".png", ".yaml", ".ckpt",
                 ".safetensors", ".box", ".cs", ".txt")


def is_cryomap_output(folder: str | Path) -> bool:
    """True for a folder cryomap wrote (it holds :data:`OUTPUT_MARKER`)."""
    return (Path(folder) / OUTPUT_MARKER).is_file()


def mark_output(folder: str | Path, what: str = "") -> None:
    """Mark ``folder`` as written by cryomap (so a later ``--force`` may replace it)."""
    (Path(folder) / OUTPUT_MARKER).write_text(f"written by cryomap{': ' + what if what else ''}\n")


def check_replaceable_dir(target: str | Path, force: bool = False) -> Path:
    """Like :func:`check_writable` for an output folder: with ``force`` an existing folder is
    replaceable only if cryomap wrote it (or it is empty); a file in its place is refused."""
    target = check_writable(target, force, kind="folder")
    if target.exists():
        if not target.is_dir():
            raise OutputExistsError("exists and is a file, not an output folder; choose another -o", target)
        if any(target.iterdir()) and not is_cryomap_output(target):
            raise OutputExistsError(
                "exists and was not written by cryomap; --force replaces only cryomap's own outputs: choose another -o",
                target)
    return target


def check_writable(target: str | Path, force: bool = False, *, kind: str | None = None) -> Path:
    """Return ``target`` as a Path; raise :class:`OutputExistsError` if it exists and not ``force``.

    Also refused, with or without ``force``: a target below a file (its folder cannot be made), a
    folder where ``kind="file"`` asks for a file, and a target that is, or holds, a file this
    command read (:func:`track_inputs`): ``--force`` never replaces an input.
    """
    target = Path(target)
    if kind is None and target.suffix.lower() in FILE_SUFFIXES:
        kind = "file"  # an output named like a file (MAP.mrc, out.star) is never meant as a folder
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputExistsError(f"cannot be written: {parent} is a file, not a folder", target)
    if kind == "file" and target.is_dir():
        raise OutputExistsError("is a folder; give a file name for this output", target)
    if target.exists() and not force:
        raise OutputExistsError("already exists; pass --force to overwrite", target)
    if target.exists():
        check_not_input(target)
    return target


# ---------------------------------------------------------------------------- inputs are never outputs

_INPUTS: set[Path] | None = None  # the files read by the running command (None: not tracking)


@contextlib.contextmanager
def track_inputs() -> Iterator[set[Path]]:
    """Record every file the readers open (:func:`note_input`) while the block runs.

    ``cryomap.cli.main`` runs each command inside it, so a ``--force`` that would replace a file
    the command read, or a folder holding one, is refused (:func:`check_not_input`) — at the
    start where the command knows its inputs, and again at the final rename for those read later
    (a stack a STAR names, say). Outside the block nothing is recorded (library use).
    """
    global _INPUTS
    saved, _INPUTS = _INPUTS, set()
    try:
        yield _INPUTS
    finally:
        _INPUTS = saved


def note_input(path: str | Path) -> None:
    """Record ``path`` as an input of the running command (a no-op outside :func:`track_inputs`)."""
    if _INPUTS is not None:
        with contextlib.suppress(OSError, RuntimeError):
            _INPUTS.add(Path(path).resolve())


def _overlap(target: Path, inputs) -> Path | None:
    try:
        t = Path(target).resolve()
    except (OSError, RuntimeError):
        return None
    for p in inputs:
        try:
            p = Path(p).resolve()
        except (OSError, RuntimeError):
            continue
        if p == t or t in p.parents:
            return p
    return None


def check_output(target: str | Path, force: bool = False, *, inputs=(), kind: str = "file",
                 option: str = "-o") -> Path:
    """The checks a command makes on its output before any work (``kind`` ``"file"`` or ``"folder"``).

    Refused, each with one line: an output that is or holds one of ``inputs`` (or a tracked
    input), a target below a file, a folder where a file is asked for, an existing target without
    ``force``, and (folders) one cryomap did not write. Returns ``target`` as a Path.
    """
    target = Path(target)
    check_not_input(target, [Path(p) for p in inputs if p is not None], option)
    check_not_input(target, None, option)
    if kind == "folder":
        return check_replaceable_dir(target, force)
    return check_writable(target, force, kind="file")


def check_not_input(target: str | Path, inputs=None, option: str = "-o") -> None:
    """Refuse an output ``target`` that is, or holds, one of ``inputs`` (default: the tracked inputs).

    Replacing it would delete what the user gave. Raises :class:`OutputExistsError` naming both.
    """
    pool = list(inputs) if inputs is not None else list(_INPUTS or ())
    hit = _overlap(Path(target), [p for p in pool if p is not None])
    if hit is not None:
        where = "is" if hit == Path(target).resolve() else "holds"
        raise OutputExistsError(
            f"this output {where} an input of the command ({hit}); cryomap never replaces its inputs: "
            f"choose another {option}", target)


@contextlib.contextmanager
def atomic_path(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched. The
    temporary name keeps ``target``'s suffixes so that libraries choosing a format by
    extension (mrcfile, starfile, PIL) behave the same.
    """
    target = check_writable(target, force, kind="file")
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # let the writer create it; some libraries refuse to open an existing file
    try:
        yield tmp
        if target.exists():
            check_not_input(target)
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
            check_not_input(target)  # inputs read inside the block (stacks a STAR names) count too
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


class Journal:
    """Append-only record of the finished pieces of a resumable run (one JSON object per line, fsynced).

    ``journal.done[key]`` is what :meth:`record` stored for a finished piece (a micrograph, a chunk);
    a line cut short by a crash is ignored.
    """

    def __init__(self, path: Path) -> None:
        import json

        self.path = Path(path)
        self.done: dict[str, object] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the last line of a crashed run
                self.done[str(entry["key"])] = entry["value"]

    def record(self, key: str, value: object) -> None:
        import json

        with open(self.path, "a") as fh:
            fh.write(json.dumps({"key": str(key), "value": value}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done[str(key)] = value

    def clear(self) -> None:
        self.done.clear()
        if self.path.exists():
            self.path.unlink()


@contextlib.contextmanager
def resumable_dir(target: str | Path, signature: dict, *, force: bool = False,
                  resume: bool = False) -> Iterator[tuple[Path, Journal]]:
    """Like :func:`atomic_dir`, but the work folder survives a crash so that ``resume`` continues it.

    The work folder is ``.<name>.partial`` beside ``target``, with ``signature.json`` (the run's
    inputs and parameters) and a :class:`Journal` of finished pieces. With ``resume`` and a work
    folder of the same signature, the journal's pieces count as done; otherwise any old work folder
    is discarded. On success the folder is renamed onto ``target``. On bad input
    (:class:`~cryomap.errors.CryomapError`) or Ctrl-C the work folder is removed (nothing partial
    stays); any other failure (a crash, a lost worker, a full disk) keeps it for ``--resume``.
    """
    import json

    from cryomap.errors import CryomapError

    target = check_replaceable_dir(target, force)
    if target.parent.exists() and not target.parent.is_dir():
        raise OutputExistsError("the parent of this output is a file, not a folder", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.partial"
    sig = json.dumps(signature, sort_keys=True, default=str)
    if work.exists():
        same = (work / "signature.json").is_file() and (work / "signature.json").read_text() == sig
        if not (resume and same):
            if not is_cryomap_output(work):
                raise OutputExistsError("exists and was not written by cryomap; move it away", work)
            shutil.rmtree(work)
    if not work.exists():
        work.mkdir()
        mark_output(work)
        (work / "signature.json").write_text(sig)
    journal = Journal(work / "journal.jsonl")
    try:
        yield work, journal
    except (CryomapError, KeyboardInterrupt):
        shutil.rmtree(work, ignore_errors=True)
        raise
    for name in ("signature.json", "journal.jsonl"):
        if (work / name).exists():
            (work / name).unlink()
    if target.exists():
        try:
            check_not_input(target)  # never replace a folder holding an input of this run
        except CryomapError:
            shutil.rmtree(work, ignore_errors=True)
            raise
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(work, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, target)
