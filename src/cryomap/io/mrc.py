"""MRC/MRCS maps and image stacks through ``mrcfile``.

Arrays follow mrcfile's order: a map is ``(z, y, x)``, a stack ``(n, y, x)``, x the fast axis.
Voxel sizes are in Å/px and travel with every array; origins are in Å (MRC header ``origin``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from cryomap.core.images import all_finite
from cryomap.errors import BadInputError
from cryomap.io.atomic import atomic_path

#: MRC modes mrcfile reads and cryomap accepts: int8, int16, float32, uint16, float16.
SUPPORTED_MODES = (0, 1, 2, 6, 12)

#: Header voxel sizes (Å/px) taken as real: from sub-ångström detectors to binned tomograms.
APIX_RANGE = (0.01, 10000.0)


@dataclass
class MrcData:
    """An array with its sampling: ``data`` (z, y, x) or (n, y, x); ``apix`` Å/px; ``origin`` Å (x, y, z)."""

    data: np.ndarray
    apix: float
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def _voxel_sizes(mrc: mrcfile.mrcfile.MrcFile) -> tuple[float, float]:
    """(x, y) voxel size in Å/px as the header says it (cell / sampling), NaN where it cannot be computed."""
    import warnings

    h = mrc.header
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cell = (float(h.cella.x), float(h.cella.y))
        grid = (float(h.mx), float(h.my))
    return tuple(c / g if g > 0 else (0.0 if c == 0 else float("nan")) for c, g in zip(cell, grid))  # type: ignore[return-value]


def header_apix_problem(mrc: mrcfile.mrcfile.MrcFile) -> str | None:
    """Why the header's voxel size cannot be used (zero, negative, not finite), or None when it can."""
    x, y = _voxel_sizes(mrc)
    for v in (x, y):
        if not np.isfinite(v):
            return f"header voxel size is not a finite number ({v})"
        if v < 0:
            return f"header cell is negative (voxel size {v:g} Å/px)"
    if x <= 0 and y <= 0:
        return "header holds no voxel size (cell is 0)"
    v = x if x > 0 else y
    if not APIX_RANGE[0] <= v <= APIX_RANGE[1]:
        return f"header voxel size {v:.3g} Å/px is outside {APIX_RANGE[0]:g}–{APIX_RANGE[1]:g} Å/px (a broken cell or sampling)"
    return None


def _header_apix(mrc: mrcfile.mrcfile.MrcFile) -> float | None:
    """Voxel size in Å/px from the header, or None when the cell is zero, negative or not finite."""
    if header_apix_problem(mrc) is not None:
        return None
    x, y = _voxel_sizes(mrc)
    return x if x > 0 else y


#: What the MRC modes cryomap does not read hold, for the error line.
_MODE_NAMES = {3: "complex int16 (a Fourier transform)", 4: "complex float32 (a Fourier transform)",
               101: "4-bit packed counts (convert to mode 2 float32, e.g. `newstack -mode 2`)"}


def _open(path: Path, mmap: bool):
    from cryomap.io.atomic import note_input

    if not path.exists():
        raise BadInputError("file not found", path)
    if path.is_dir():
        raise BadInputError("is a folder, not an MRC file", path)
    note_input(path)
    try:
        import warnings

        # permissive mode warns about broken headers and short data blocks; _check turns those
        # into one BadInputError naming the file, so the warnings would only repeat it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if mmap:
                return mrcfile.mmap(path, mode="r", permissive=True)
            return mrcfile.open(path, mode="r", permissive=True)
    except Exception as exc:  # mrcfile raises ValueError/OSError subclasses for broken headers
        raise BadInputError(f"not a readable MRC file ({exc})", path) from exc


def _check(mrc, path: Path) -> None:
    h = mrc.header
    mode = int(h.mode)
    if mode not in SUPPORTED_MODES:
        what = _MODE_NAMES.get(mode, "not a mode of the MRC2014 standard that cryomap reads")
        raise BadInputError(f"MRC mode {mode} is {what}; cryomap reads modes {', '.join(map(str, SUPPORTED_MODES))} "
                            "(int8, int16, float32, uint16, float16)", path)
    dims = (int(h.nx), int(h.ny), int(h.nz))
    if min(dims) < 1:
        raise BadInputError(f"header gives an image size of {dims[0]} x {dims[1]} x {dims[2]}, not a positive size", path)
    if mrc.data is None:
        raise BadInputError("MRC header is unreadable or the file is truncated (no data block)", path)
    expected = int(mrc.header.nx) * int(mrc.header.ny) * int(mrc.header.nz)
    if mrc.data.size != expected:
        raise BadInputError(
            f"truncated MRC: header says {expected} values, file holds {mrc.data.size}", path
        )


def read_mrc(path: str | Path, apix: float | None = None, *, mmap: bool = False) -> MrcData:
    """Read a map, image or stack as float32 with its voxel size (Å/px) and origin (Å).

    ``apix`` overrides the header; a file whose header holds no voxel size is an error unless
    ``apix`` is given. With ``mmap=True`` float32 data stays memory-mapped (read-only) so large
    stacks do not load into memory; other modes are converted (float16 → float32) in memory.
    """
    path = Path(path)
    if apix is not None and not (np.isfinite(apix) and apix > 0):
        raise BadInputError(f"pixel size must be a positive number of Å/px, got {apix}", path)
    mrc = _open(path, mmap)
    with mrc:
        _check(mrc, path)
        header_apix = _header_apix(mrc)
        if apix is None:
            if header_apix is None:
                raise BadInputError(f"{header_apix_problem(mrc)}; give the pixel size with --apix", path)
            apix = header_apix
        origin = (float(mrc.header.origin.x), float(mrc.header.origin.y), float(mrc.header.origin.z))
        if not all(np.isfinite(origin)):
            raise BadInputError(f"header origin {origin} Å is not finite", path)
        data = mrc.data
        if mmap and data.dtype == np.float32:
            # keep the mapping alive beyond the context: reopen as a plain numpy memmap
            arr = np.memmap(path, dtype=data.dtype, mode="r",
                            offset=int(mrc.header.nsymbt) + 1024, shape=data.shape)
            if not arr.dtype.isnative:
                arr = arr.astype(np.float32)
        else:
            arr = np.asarray(data, dtype=np.float32).copy()
    if mmap is False and not all_finite(arr):
        raise BadInputError("contains NaN or infinite values", path)
    return MrcData(arr, float(apix), origin)


def read_map(path: str | Path, apix: float | None = None) -> MrcData:
    """Read a 3D density map (z, y, x); 2D files are an error. See :func:`read_mrc`."""
    out = read_mrc(path, apix)
    if out.data.ndim != 3:
        raise BadInputError(f"expected a 3D map, found an array of shape {out.data.shape}", path)
    return out


def read_stack(path: str | Path, apix: float | None = None, *, mmap: bool = True) -> MrcData:
    """Read an image stack (n, y, x), memory-mapped by default; a single image becomes n = 1."""
    out = read_mrc(path, apix, mmap=mmap)
    if out.data.ndim == 2:
        out.data = out.data[None]
    if out.data.shape[-1] != out.data.shape[-2]:
        raise BadInputError(f"images are {out.data.shape[-1]} × {out.data.shape[-2]} px; a particle or class "
                            "stack holds square images", path)
    return out


def is_volume_file(path: str | Path) -> bool:
    """True if the MRC header says the file is a volume (ispg 1 / nz>1, not a stack ``.mrcs``)."""
    with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
        return bool(mrc.header.ispg != 0 and int(mrc.header.nz) > 1)


#: The one header label cryomap writes: mrcfile's own carries the time of writing, which would make
#: equal data give different files (and a resumed or N-worker run differ from a plain one).
MRC_LABEL = b"written by cryomap"


def _set_label(header) -> None:
    """Replace the header labels by :data:`MRC_LABEL` (works on mrcfile headers and raw header records)."""
    header["label"] = b""
    header["label"][0] = MRC_LABEL
    header["nlabl"] = 1


def write_mrc(
    path: str | Path,
    data: np.ndarray,
    apix: float,
    *,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    is_stack: bool | None = None,
    force: bool = False,
) -> Path:
    """Write ``data`` as float32 MRC with voxel size ``apix`` (Å/px) and ``origin`` (Å), atomically.

    3D arrays are written as a volume unless ``is_stack`` (default: True for ``.mrcs``), in which
    case the header marks an image stack (ispg 0) as RELION and cryoSPARC expect.
    """
    path = Path(path)
    if apix is None or not np.isfinite(apix) or apix <= 0:
        raise ValueError(f"voxel size must be a positive number of Å/px, got {apix!r}")
    arr = np.ascontiguousarray(data, dtype=np.float32)
    if is_stack is None:
        is_stack = path.suffix.lower() == ".mrcs"
    with atomic_path(path, force=force) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(arr)
            if arr.ndim == 3 and is_stack:
                mrc.set_image_stack()
            elif arr.ndim == 3:
                mrc.set_volume()
            mrc.voxel_size = float(apix)
            mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = origin
            mrc.update_header_stats()
            _set_label(mrc.header)
    return path


@dataclass(frozen=True)
class StackTarget:
    """Where the images of a stack being written go: the file, its data offset (bytes), the box.

    Picklable, so worker processes can write their particles straight into the output stack with
    :meth:`write` instead of sending them back to the parent (see :meth:`StackWriter.record`).
    """

    path: str
    data_offset: int
    box: int
    dtype: str = "<f4"

    def write(self, index: int, images: np.ndarray, stats: np.ndarray | None = None) -> tuple[int, float, float, float, float]:
        """Write images (k, box, box) at 0-based image ``index``; return (k, min, max, sum, sum of squares).

        ``stats``: each image's (min, max, sum, sum of squares) (k, 4) when the caller took them
        while the images were in cache (:func:`cryomap.core.images.image_stats`); else they are
        taken here, one image at a time (sums in double, no batch-sized copy).
        """
        import os

        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.shape[1:] != (self.box, self.box):
            raise ValueError(f"stack {self.path} holds {self.box}x{self.box} images, got {images.shape[1:]}")
        k = int(images.shape[0])
        if k == 0:
            return 0, np.inf, -np.inf, 0.0, 0.0
        buf = np.ascontiguousarray(images, dtype=np.dtype(self.dtype))
        view = memoryview(buf).cast("B")  # no copy of the batch
        pos = self.data_offset + index * self.box * self.box * 4
        fd = os.open(self.path, os.O_WRONLY)
        try:
            while view:
                written = os.pwrite(fd, view, pos)
                view, pos = view[written:], pos + written
        finally:
            os.close(fd)
        if stats is None:
            from cryomap.core.images import image_stats

            stats = np.array([image_stats(im) for im in images], dtype=np.float64).reshape(k, 4)
        return combine_stats(stats)


def combine_stats(stats: np.ndarray) -> tuple[int, float, float, float, float]:
    """(k, min, max, sum, sum of squares) of k images from their rows of (min, max, sum, sum of squares), (k, 4):
    what :meth:`StackWriter.record` takes."""
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 4)
    if not len(stats):
        return 0, np.inf, -np.inf, 0.0, 0.0
    return len(stats), float(stats[:, 0].min()), float(stats[:, 1].max()), float(stats[:, 2].sum()), float(stats[:, 3].sum())


class StackWriter:
    """Write an ``.mrcs`` stack without holding it in memory.

    The header is written by mrcfile for ``n`` images of ``box``×``box`` under a temporary name;
    images then go in with plain positioned writes (not a memory map, whose dirty pages would
    count towards the process's resident memory): appended with :meth:`write`, or written by
    other processes through :attr:`target` at reserved indices and announced with
    :meth:`record`. :meth:`close` closes gaps left by blocks never written (moving later images
    down in order), patches the header (image count, min, max, mean, rms), truncates the file
    and renames it into place. Used by extraction so peak memory does not grow with the number
    of particles.
    """

    def __init__(self, path: str | Path, n: int, box: int, apix: float, force: bool = False, *,
                 resume: bool = False) -> None:
        from cryomap.io.atomic import check_writable

        self.path = check_writable(path, force)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.n, self.box, self.apix = int(n), int(box), float(apix)
        shape = (max(self.n, 1), self.box, self.box)
        reopened = resume and self.tmp.exists() and self._reopen(shape)
        if not reopened:
            # mrcfile writes a correct stack header; the (sparse) data block is filled later
            with mrcfile.new_mmap(self.tmp, shape=shape, mrc_mode=2, overwrite=True) as mrc:
                mrc.set_image_stack()
                mrc.voxel_size = self.apix
                self._offset = int(mrc.header.nsymbt) + mrc.header.nbytes
                self._header_dtype = mrc.header.dtype  # byte order as mrcfile wrote it
                self._dtype = mrc.data.dtype.str
        offset, dtype = self._offset, self._dtype
        self.target = StackTarget(str(self.tmp), offset, self.box, dtype)
        #: True when an interrupted run's partial stack was reopened (``resume``): record its blocks again
        self.resumed = bool(reopened)
        self.count = 0
        self._blocks: list[tuple[int, int]] = []  # (index, k) written
        self._append_at = 0
        self._min, self._max, self._sum, self._sumsq = np.inf, -np.inf, 0.0, 0.0

    def _reopen(self, shape: tuple[int, int, int]) -> bool:
        """Reuse an interrupted run's partial stack when its header fits ``shape``; False otherwise."""
        try:
            with mrcfile.mmap(self.tmp, mode="r", permissive=True) as mrc:
                ok = mrc.data is not None and tuple(mrc.data.shape) == shape and mrc.data.dtype.kind == "f"
                if ok:
                    self._offset = int(mrc.header.nsymbt) + mrc.header.nbytes
                    self._header_dtype = mrc.header.dtype
                    self._dtype = mrc.data.dtype.str
            return bool(ok)
        except Exception:  # a partial stack that cannot be read is started again
            return False

    def write(self, images: np.ndarray) -> None:
        """Append one image (box, box) or a batch (k, box, box)."""
        images = np.asarray(images)
        k = 1 if images.ndim == 2 else int(images.shape[0])
        if self._append_at + k > self.n:
            raise ValueError(f"stack {self.path} is sized for {self.n} images")
        self.record(self._append_at, self.target.write(self._append_at, images))
        self._append_at += k

    def record(self, index: int, stats: tuple[int, float, float, float, float]) -> None:
        """Account for ``stats`` = :meth:`StackTarget.write`'s result for a block written at ``index``."""
        k, lo, hi, total, total_sq = stats
        if index < 0 or index + k > self.n:
            raise ValueError(f"stack {self.path} is sized for {self.n} images")
        if k == 0:
            return
        self._blocks.append((int(index), int(k)))
        self._min, self._max = min(self._min, lo), max(self._max, hi)
        self._sum += total
        self._sumsq += total_sq
        self.count += k

    def _compact(self) -> None:
        """Move written blocks down over gaps, keeping their order (bounded 16 MiB copies)."""
        import os

        step = self.box * self.box * 4
        chunk = max(1, (16 << 20) // step)
        fd = os.open(self.tmp, os.O_RDWR)
        try:
            dst = 0
            for index, k in sorted(self._blocks):
                if index != dst:
                    for j in range(0, k, chunk):
                        m = min(chunk, k - j)
                        data = os.pread(fd, m * step, self.target.data_offset + (index + j) * step)
                        os.pwrite(fd, data, self.target.data_offset + (dst + j) * step)
                dst += k
        finally:
            os.close(fd)

    def close(self) -> Path:
        """Finish: close gaps, write header statistics, shrink to the images written, rename into place."""
        import os

        self._compact()
        size = self.count * self.box * self.box
        with open(self.tmp, "r+b") as fh:
            header = np.frombuffer(bytearray(fh.read(self._header_dtype.itemsize)), dtype=self._header_dtype)
            h = header[0]
            h["nz"] = self.count
            # MRC2014 image stack (ispg 0): mz = 1 and a one-section cell, as mrcfile and RELION write it
            h["mz"] = 1
            h["cella"]["z"] = self.apix
            _set_label(h)
            if size:
                mean = self._sum / size
                h["dmin"], h["dmax"], h["dmean"] = self._min, self._max, mean
                h["rms"] = float(np.sqrt(max(self._sumsq / size - mean * mean, 0.0)))
            fh.seek(0)
            fh.write(header.tobytes())
            fh.truncate(self.target.data_offset + size * 4)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Discard the partial stack."""
        import os

        if self.tmp.exists():
            os.unlink(self.tmp)

    def __enter__(self) -> "StackWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
