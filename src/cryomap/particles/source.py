"""One lazy particle source for every stage: ``open_particles(path)`` → :class:`ParticleSource`.

A source is a particle table (RELION column names, optics merged into every row: what
:func:`cryomap.io.star.read_star` and :func:`cryomap.io.cs.read_cs` return) plus where each row's
image lives. Images are read on demand from memory-mapped stacks, ``k`` rows at a time, so a stage
never holds a whole stack. ``source.map(op)`` returns a *new* source whose images pass through
``op`` (the original is untouched — ASPIRE's ``ImageSource`` idea), ``source.subset(rows)`` a new
source of some rows; both chain::

    src = open_particles("particles.star")
    flipped = src.map(PhaseFlip())            # cryomap.preprocess ops
    for rows, images in flipped.subset(range(1000)).chunks(256):
        ...

Inputs: RELION STAR 3.0 / 3.1 / 5 (``N@stack.mrcs`` image names, resolved against the STAR's
folder), a bare ``.mrcs``/``.mrc`` stack (one row per image; pixel size from its header or
``apix``) and a cryoSPARC ``.cs`` file (``blob/path`` resolved beside it). Per-row accessors give
the CTF (:meth:`ParticleSource.ctf`, the shared :func:`cryomap.core.ctf.ctf_params_from_table`)
and the poses (:meth:`ParticleSource.poses`: RELION ZYZ degrees, origins in Å).

Non-finite pixels: every batch is checked as it is read (memory-mapped reads skip the check a full
read makes). ``nonfinite="raise"`` (default) refuses the stack with one line naming the image;
``"zero"`` replaces such an image by zeros and counts it (:attr:`ParticleSource.nonfinite_count`
after a pass, or per batch from :meth:`ParticleSource.read`), so no NaN reaches an output.

Sources are picklable (the memory maps are reopened in each process), so chunks can go to worker
processes. Writing goes through :func:`cryomap.particles.writer.write_particles`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from cryomap.core.ctf_params import CtfParams, ctf_params_from_table, missing_ctf_columns
from cryomap.errors import BadInputError

Nonfinite = Literal["raise", "zero"]

#: File suffixes :func:`open_particles` reads as a bare image stack.
STACK_SUFFIXES = (".mrcs", ".mrc", ".st")

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
#: Bytes of stack mapped by reads (the span from the first to the last image read, per read and stack)
#: after which the memory maps are dropped and reopened on the next read (reopening costs ~0.1 ms).
RELEASE_AFTER_BYTES = 8 << 20


@dataclass(frozen=True)
class Poses:
    """Per-particle poses: RELION ZYZ Euler angles (degrees) and origins ``rlnOriginX/YAngst`` (Å)."""

    rot: np.ndarray
    tilt: np.ndarray
    psi: np.ndarray
    shifts_A: np.ndarray  # (n, 2): (x, y) Å; the particle centre sits at box//2 − shift/apix

    def __len__(self) -> int:
        return len(self.rot)


@dataclass
class BatchContext:
    """What an op sees besides the images: the batch's rows, their table, pixel size, CTF, earlier outputs.

    ``rows`` are 0-based rows of the source the op is mapped on; ``table`` holds those rows;
    ``outputs`` maps ``"input"`` (the images as read) and the key of every earlier op of the
    chain to that op's output for this batch, so an op such as a blend can use another step's
    result.
    """

    rows: np.ndarray
    table: pd.DataFrame
    apix: float
    source_path: Path | None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    def ctf(self) -> CtfParams:
        """The batch's CTF parameters (the op was checked against the table's columns up front)."""
        return ctf_params_from_table(self.table)


@runtime_checkable
class ParticleOp(Protocol):
    """An operation on a batch of particle images (k, h, w) float32 → (k, h, w) float32.

    ``key`` names the step (unique in a chain); ``check(source)`` raises
    :class:`~cryomap.errors.BadInputError` when the source lacks what the op needs (CTF columns,
    say); ``update_table(table)`` returns the table with the columns the op sets (e.g.
    ``rlnCtfDataArePhaseFlipped``); ``describe()`` gives the parameters recorded with outputs.
    """

    key: str

    def __call__(self, images: np.ndarray, ctx: BatchContext) -> np.ndarray: ...

    def check(self, source: "ParticleSource") -> None: ...

    def update_table(self, table: pd.DataFrame) -> pd.DataFrame: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Images:
    """Where the images of a source's rows are: stack files (or in-memory arrays) and indices in them."""

    stacks: tuple[str, ...]  # file paths; "<memory:i>" for in-memory arrays
    stack_of_row: np.ndarray  # (n,) int32 into stacks
    index: np.ndarray  # (n,) int64, 0-based image index in its stack


class ParticleSource:
    """Particles read on demand: a table of rows, their images, and the ops applied when reading.

    Build one with :func:`open_particles` or :meth:`from_arrays`; derive with :meth:`map` and
    :meth:`subset`. ``len(src)`` rows; ``src.shape`` is (n, h, w) of the images as read (ops keep
    the shape); ``src.pixel_size`` Å/px; ``src.table`` the rows' table (with the columns ops set).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        images: _Images,
        pixel_size: float,
        image_shape: tuple[int, int],
        *,
        path: Path | None = None,
        ops: tuple[ParticleOp, ...] = (),
        nonfinite: Nonfinite = "raise",
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        self._table = table.reset_index(drop=True)
        self._images = images
        self.pixel_size = float(pixel_size)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.path = path
        self.ops = tuple(ops)
        self.nonfinite = nonfinite
        self._arrays = arrays or {}
        self._maps: dict[int, np.ndarray] | None = None
        self.nonfinite_count = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, images: np.ndarray, apix: float, table: pd.DataFrame | None = None,
                    *, nonfinite: Nonfinite = "raise") -> "ParticleSource":
        """A source over an in-memory stack (n, h, w) with pixel size ``apix`` (Å/px) and an optional table."""
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"images must be (n, h, w), got shape {arr.shape}")
        n = len(arr)
        tab = pd.DataFrame(index=pd.RangeIndex(n)) if table is None else table.reset_index(drop=True).copy()
        if len(tab) != n:
            raise ValueError(f"{n} images but {len(tab)} table rows")
        if "rlnImagePixelSize" not in tab:
            tab["rlnImagePixelSize"] = float(apix)
        key = "<memory:0>"
        where = _Images((key,), np.zeros(n, np.int32), np.arange(n, dtype=np.int64))
        return cls(tab, where, apix, arr.shape[1:], nonfinite=nonfinite, arrays={key: arr})

    def _derive(self, **changes) -> "ParticleSource":
        kw = dict(table=self._table, images=self._images, pixel_size=self.pixel_size, image_shape=self.image_shape,
                  path=self.path, ops=self.ops, nonfinite=self.nonfinite, arrays=self._arrays)
        kw.update(changes)
        return ParticleSource(**kw)

    def map(self, op: ParticleOp) -> "ParticleSource":
        """A new source whose images also pass through ``op`` (checked against this source now)."""
        keys = {o.key for o in self.ops}
        if op.key in keys or op.key == "input":
            raise ValueError(f"a step named {op.key!r} is already in the chain; give the op another key")
        op.check(self)
        return self._derive(ops=self.ops + (op,))

    def subset(self, rows: Iterable[int] | np.ndarray | slice) -> "ParticleSource":
        """A new source of some rows (0-based, in the order given; repeats allowed)."""
        idx = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"rows out of range for a source of {len(self)} particles")
        idx = np.where(idx < 0, idx + len(self), idx)
        where = _Images(self._images.stacks, self._images.stack_of_row[idx], self._images.index[idx])
        return self._derive(table=self._table.iloc[idx].reset_index(drop=True), images=where)

    def with_nonfinite(self, policy: Nonfinite) -> "ParticleSource":
        """The same source with another non-finite policy (``"raise"`` or ``"zero"``)."""
        if policy not in ("raise", "zero"):
            raise ValueError(f"nonfinite policy must be 'raise' or 'zero', got {policy!r}")
        return self._derive(nonfinite=policy)

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return len(self._table)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self),) + self.image_shape  # type: ignore[return-value]

    @property
    def box(self) -> int:
        """Image side (px); images are square unless a bare stack says otherwise."""
        return int(self.image_shape[-1])

    @property
    def table(self) -> pd.DataFrame:
        """The rows' table, with the columns every op sets (``update_table``)."""
        tab = self._table
        for op in self.ops:
            tab = op.update_table(tab)
        return tab

    @property
    def stack_paths(self) -> list[Path]:
        """The stack files the rows' images come from (in-memory sources have none)."""
        return [Path(s) for s in self._images.stacks if not s.startswith("<memory:")]

    def describe_ops(self) -> list[dict[str, Any]]:
        """The chain as data: one ``{"step": key, **parameters}`` per op, in order."""
        return [{"step": op.key, **op.describe()} for op in self.ops]

    def __repr__(self) -> str:
        chain = " → ".join(op.key for op in self.ops) or "none"
        return (f"ParticleSource({len(self)} particles, {self.image_shape[0]}×{self.image_shape[1]} px, "
                f"{self.pixel_size:.4g} Å/px, ops: {chain}, from {self.path})")

    # ------------------------------------------------------------------ metadata accessors
    @property
    def has_ctf(self) -> bool:
        return not missing_ctf_columns(self._table.columns)

    def require_ctf(self, purpose: str) -> None:
        """Raise :class:`BadInputError` naming the missing CTF columns when the table has no CTF."""
        missing = missing_ctf_columns(self._table.columns)
        if missing:
            raise BadInputError(f"{purpose} needs each particle's CTF, but the table lacks {', '.join(missing)}",
                                self.path)

    def ctf(self, rows: np.ndarray | slice | None = None) -> CtfParams | None:
        """CTF parameters of ``rows`` (all by default), RELION units; None when the table has none."""
        if not self.has_ctf:
            return None
        tab = self._table if rows is None else self._table.iloc[np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)]
        return ctf_params_from_table(tab)

    @property
    def has_poses(self) -> bool:
        return all(c in self._table for c in POSE_COLUMNS)

    def poses(self, rows: np.ndarray | slice | None = None) -> Poses | None:
        """Poses of ``rows`` (all by default): RELION ZYZ degrees, origins in Å; None without angles.

        Origins come from ``rlnOriginXAngst/YAngst`` (pixel ``rlnOriginX/Y`` were converted to Å
        when the STAR was read); a table without origins has zero shifts.
        """
        if not self.has_poses:
            return None
        tab = self._table if rows is None else self._table.iloc[np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)]
        angles = [tab[c].to_numpy(np.float64) for c in POSE_COLUMNS]
        shifts = np.zeros((len(tab), 2))
        for j, col in enumerate(("rlnOriginXAngst", "rlnOriginYAngst")):
            if col in tab:
                shifts[:, j] = tab[col].to_numpy(np.float64)
        return Poses(*angles, shifts)

    def image_names(self) -> list[str]:
        """``rlnImageName`` of every row with the stack path made absolute (``N@/abs/stack``, N 1-based)."""
        from cryomap.io.star import format_image_name

        if any(s.startswith("<memory:") for s in self._images.stacks):
            raise ValueError("an in-memory source has no image files to name; write it with write_particles")
        stacks = [str(Path(s).resolve()) for s in self._images.stacks]
        return [format_image_name(int(i) + 1, stacks[s]) for i, s in zip(self._images.index, self._images.stack_of_row)]

    # ------------------------------------------------------------------ images
    def _open(self, i: int) -> np.ndarray:
        if self._maps is None:
            self._maps = {}
        if i not in self._maps:
            name = self._images.stacks[i]
            if name in self._arrays:
                self._maps[i] = self._arrays[name]
            else:
                from cryomap.io.mrc import read_stack

                self._maps[i] = read_stack(name, apix=self.pixel_size or 1.0).data
        return self._maps[i]

    def read_raw(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images of ``rows`` as stored (k, h, w) float32 and a (k,) mask of the images that were not finite.

        Rows are read stack by stack in ascending index order (sequential memory-mapped access);
        the result is in the order of ``rows``. With ``nonfinite="raise"`` a non-finite image is a
        :class:`BadInputError` naming the stack and the image; with ``"zero"`` it comes back as zeros.
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows),) + self.image_shape, dtype=np.float32)
        stack_ids = self._images.stack_of_row[rows]
        spanned = 0
        for s in np.unique(stack_ids):
            sel = np.flatnonzero(stack_ids == s)
            idx = self._images.index[rows[sel]]
            order = np.argsort(idx, kind="stable")
            stack = self._open(int(s))
            out[sel[order]] = stack[idx[order]]
            spanned += (int(idx.max()) - int(idx.min()) + 1) * int(np.prod(self.image_shape)) * stack.itemsize
        # pages of a memory map stay in this process's resident memory while it is mapped, and the
        # kernel maps the pages around each one read (fault-around): count the span a read covers,
        # not the bytes it returns (a random subset of a stack spans all of it), and unmap after
        # every ~8 MiB spanned, so a pass over a large stack, in order or not, keeps memory flat
        self._read_bytes = getattr(self, "_read_bytes", 0) + spanned
        if self._read_bytes > RELEASE_AFTER_BYTES:
            self.release()
            self._read_bytes = 0
        bad = ~np.isfinite(out).all(axis=(-2, -1)) if len(out) else np.zeros(0, bool)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            if self.nonfinite == "raise":
                stack = self._images.stacks[int(stack_ids[k])]
                raise BadInputError(
                    f"image {int(self._images.index[rows[k]]) + 1} holds NaN or infinite values "
                    f"({int(bad.sum())} such images in this batch); fix or leave out those images "
                    "(cryomap preprocess writes them as zeros and counts them)",
                    stack if not stack.startswith("<memory:") else self.path)
            out[bad] = 0.0
        return out, bad

    def read(self, rows: np.ndarray | Sequence[int] | slice) -> tuple[np.ndarray, np.ndarray]:
        """Images of ``rows`` after every op (k, h, w) float32, and the mask of images that were not finite.

        An image that is not finite as read, or after an op, is set to zeros and flagged (under the
        ``"zero"`` policy; ``"raise"`` refuses it as read). Adds the flagged count to
        :attr:`nonfinite_count`.
        """
        images, bad, _ = self.read_flags(rows)
        return images, bad

    def read_flags(self, rows: np.ndarray | Sequence[int] | slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`read`, plus a (k,) mask of the images that were constant as stored (no information)."""
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        images, bad = self.read_raw(rows)
        flat = images.reshape(len(images), -1)
        constant = (flat.max(axis=1) == flat.min(axis=1)) & ~bad if len(images) else np.zeros(0, bool)
        if self.ops:
            ctx = BatchContext(rows, self._table.iloc[rows].reset_index(drop=True), self.pixel_size, self.path,
                               {"input": images})
            for op in self.ops:
                images = np.asarray(op(images, ctx), dtype=np.float32)
                ctx.outputs[op.key] = images
            after = ~np.isfinite(images).all(axis=(-2, -1)) if len(images) else np.zeros(0, bool)
            if after.any() or bad.any():  # an image that was not finite as read stays zeros whatever the ops made
                images = images.copy()
                bad = bad | after
                images[bad] = 0.0
        self.nonfinite_count += int(bad.sum())
        return images, bad, constant

    def read_steps(self, rows: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
        """Every intermediate of ``rows``: ``{"input": as read, op key: that op's output, ...}`` in chain order."""
        rows = np.asarray(rows, dtype=np.int64)
        images, _ = self.read_raw(rows)
        ctx = BatchContext(rows, self._table.iloc[rows].reset_index(drop=True), self.pixel_size, self.path,
                           {"input": images})
        for op in self.ops:
            images = np.asarray(op(images, ctx), dtype=np.float32)
            ctx.outputs[op.key] = images
        return ctx.outputs

    def images(self, rows: np.ndarray | Sequence[int] | slice | None = None) -> np.ndarray:
        """Images of ``rows`` (all by default) after every op, (k, h, w) float32."""
        return self.read(slice(None) if rows is None else rows)[0]

    def __getitem__(self, idx) -> np.ndarray:
        """``src[i]`` (h, w), ``src[rows]`` or ``src[a:b]`` (k, h, w): images after every op."""
        if np.isscalar(idx):
            return self.images([int(np.arange(len(self))[idx])])[0]
        return self.images(idx)

    def chunks(self, size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(rows, images)`` for consecutive chunks of at most ``size`` rows, in row order."""
        for start in range(0, len(self), max(1, int(size))):
            rows = np.arange(start, min(start + size, len(self)))
            yield rows, self.images(rows)

    def release(self) -> None:
        """Close the memory maps opened so far (the next read reopens them), so the stack pages read
        until now leave the process's resident memory: a long streaming pass calls it every few chunks."""
        self._maps = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = None
        return state


# ---------------------------------------------------------------------- opening files

def _header_apix_or_none(path: str | Path) -> float | None:
    import warnings

    import mrcfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # permissive mode warns about headers read_stack already accepted
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                v = float(mrc.voxel_size.x)
        return v if v > 0 else None
    except Exception:  # the full read in read_stack reports a broken file
        return None


def _locate(table: pd.DataFrame, stacks: list[Path], index: np.ndarray, path: Path,
            apix: float | None) -> tuple[_Images, float | None, tuple[int, int]]:
    """Check every named stack (exists, readable, one image size, indices inside) and build the locations."""
    from cryomap.io.mrc import read_stack

    names = [str(s) for s in stacks]
    uniq = sorted(set(names))
    lookup = {p: i for i, p in enumerate(uniq)}
    stack_of_row = np.array([lookup[s] for s in names], dtype=np.int32)
    shape: tuple[int, int] | None = None
    header_apix = None
    for i, p in enumerate(uniq):
        if not Path(p).exists():
            raise BadInputError(f"particle stack named by {path.name} not found", p)
        data = read_stack(p, apix=apix or 1.0).data
        header_apix = header_apix or _header_apix_or_none(p)
        rows = index[stack_of_row == i]
        if rows.size and (rows.min() < 0 or rows.max() >= len(data)):
            bad = int(rows.max() + 1) if rows.max() >= len(data) else int(rows.min() + 1)
            raise BadInputError(f"{path.name} names image {bad} but the stack holds {len(data)}", p)
        if shape is None:
            shape = tuple(int(s) for s in data.shape[1:])  # type: ignore[assignment]
        elif tuple(data.shape[1:]) != shape:
            raise BadInputError(f"stacks named by {path.name} differ in image size ({shape} vs {tuple(data.shape[1:])})", p)
        del data
    if shape is None:
        raise BadInputError("holds no particles", path)
    return _Images(tuple(uniq), stack_of_row, np.asarray(index, dtype=np.int64)), header_apix, shape


def _table_apix(table: pd.DataFrame) -> float | None:
    for col in ("rlnImagePixelSize", "rlnPixelSize"):
        if col in table:
            vals = pd.unique(pd.to_numeric(table[col], errors="coerce"))
            if len(vals) == 1 and np.isfinite(vals[0]) and vals[0] > 0:
                return float(vals[0])
            if len(vals) > 1:
                return None
    return None


def _finish(table: pd.DataFrame, stacks: list[Path], index: np.ndarray, path: Path, apix: float | None,
            nonfinite: Nonfinite) -> ParticleSource:
    where, header_apix, shape = _locate(table, stacks, index, path, apix)
    px = apix or _table_apix(table) or header_apix
    if px is None or not np.isfinite(px) or px <= 0:
        raise BadInputError("no pixel size: the table has no rlnImagePixelSize and the stack header none; give --apix", path)
    table = table.copy()
    if "rlnImagePixelSize" not in table or apix is not None:
        table["rlnImagePixelSize"] = float(px)
    return ParticleSource(table, where, float(px), shape, path=path, nonfinite=nonfinite)


def open_particles(path: str | Path, *, apix: float | None = None, nonfinite: Nonfinite = "raise") -> ParticleSource:
    """Open a particle STAR (RELION 3.0/3.1/5), a bare ``.mrcs`` stack or a cryoSPARC ``.cs`` file.

    ``apix`` (Å/px) overrides the table's ``rlnImagePixelSize`` and the stack header (a file with
    neither is refused). Stacks are checked up front (exist, one image size, every index inside)
    but not read. Errors are :class:`BadInputError` naming the file.
    """
    path = Path(path)
    if apix is not None and (not np.isfinite(apix) or apix <= 0):
        raise BadInputError(f"pixel size must be a positive number of Å/px, got {apix}", path)
    if not path.exists():
        raise BadInputError("file not found", path)
    if path.is_dir():
        raise BadInputError("is a folder; give a particle STAR, .mrcs or .cs file", path)
    suffix = path.suffix.lower()
    if suffix == ".cs":
        return _open_cs(path, apix, nonfinite)
    if suffix in STACK_SUFFIXES:
        return _open_stack(path, apix, nonfinite)
    return _open_star(path, apix, nonfinite)


def _open_star(path: Path, apix: float | None, nonfinite: Nonfinite) -> ParticleSource:
    from cryomap.io.star import image_locations, read_star

    table = read_star(path)
    try:
        index, stacks = image_locations(table)
    except ValueError as exc:  # a bad N@stack name
        raise BadInputError(str(exc), path) from exc
    return _finish(table.particles, stacks, index, path, apix, nonfinite)


def _open_stack(path: Path, apix: float | None, nonfinite: Nonfinite) -> ParticleSource:
    from cryomap.io.mrc import read_stack

    n = len(read_stack(path, apix=apix or 1.0).data)
    table = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{path.name}" for i in range(n)]})
    return _finish(table, [path] * n, np.arange(n, dtype=np.int64), path, apix, nonfinite)


def _open_cs(path: Path, apix: float | None, nonfinite: Nonfinite) -> ParticleSource:
    from cryomap.io.cs import read_cs, resolve_blob_path
    from cryomap.io.star import parse_image_name

    table = read_cs(path)
    if "rlnImageName" not in table:
        raise BadInputError("cryoSPARC file has no blob/path and blob/idx fields (no particle images)", path)
    resolved: dict[str, Path] = {}
    index, stacks = [], []
    for name in table["rlnImageName"]:
        i, blob = parse_image_name(name)
        if blob not in resolved:
            resolved[blob] = resolve_blob_path(blob, path)
        index.append(i - 1)
        stacks.append(resolved[blob])
    return _finish(table, stacks, np.asarray(index, np.int64), path, apix, nonfinite)
