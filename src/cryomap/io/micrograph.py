"""Micrographs as float32 arrays: MRC, TIFF and 8-bit JPEG/PNG (CryoPPP_lite ships JPEGs).

Arrays are ``(y, x)`` (row, column), x the fast axis, the same orientation the coordinate files
use (x = column, y = row of the image as stored). No flip is applied to any format.

Pixel size: MRC files carry one in the header (a zero cell means "unknown"); TIFF files may carry
one in their resolution tags (read when the unit is cm or inch); JPEG/PNG carry none. Where the
file holds no pixel size and the caller gives no ``apix``, :func:`read_micrograph` returns
``apix=None`` rather than failing: extraction needs a pixel size only for the headers it writes
and takes it from the STAR file or ``--apix`` (see :mod:`cryomap.particles.extract`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryomap.core.images import all_finite
from cryomap.errors import BadInputError
from cryomap.io.mrc import MrcData

MRC_SUFFIXES = (".mrc", ".mrcs", ".map")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MICROGRAPH_SUFFIXES = MRC_SUFFIXES + TIFF_SUFFIXES + IMAGE_SUFFIXES


@dataclass
class MicrographInfo:
    """What a micrograph header says without decoding pixels: ``shape`` (rows, cols), ``apix`` Å/px or None."""

    path: Path
    shape: tuple[int, int]
    apix: float | None


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in MRC_SUFFIXES:
        return "mrc"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise BadInputError(
        f"unknown micrograph file type {suffix!r} (expected one of {', '.join(MICROGRAPH_SUFFIXES)})", path
    )


def _tiff_apix(page) -> float | None:
    """Pixel size in Å/px from TIFF resolution tags (pixels per unit), when the unit is physical."""
    try:
        tags = page.tags
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 1
        if unit not in (2, 3) or "XResolution" not in tags:
            return None
        num, den = tags["XResolution"].value
        if num <= 0 or den <= 0:
            return None
        per_unit = num / den  # pixels per inch (2) or per cm (3)
        angstrom_per_unit = 2.54e8 if unit == 2 else 1e8
        apix = angstrom_per_unit / per_unit
        return apix if 0.01 < apix < 1000 else None
    except Exception:  # unusual tag layouts: treat as "no pixel size"
        return None


def micrograph_info(path: str | Path) -> MicrographInfo:
    """Shape (rows, cols) and pixel size (Å/px or None) read from the header only (cheap)."""
    from cryomap.io.atomic import note_input

    path = Path(path)
    if not path.exists():
        raise BadInputError("file not found", path)
    note_input(path)
    kind = _kind(path)
    try:
        if kind == "mrc":
            import mrcfile

            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                h = mrc.header
                shape = (int(h.ny), int(h.nx))
                vs = float(mrc.voxel_size.x)
                return MicrographInfo(path, shape, vs if vs > 0 else None)
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return MicrographInfo(path, tuple(page.shape[-2:]), _tiff_apix(page))
        from PIL import Image

        with Image.open(path) as im:
            return MicrographInfo(path, (int(im.height), int(im.width)), None)
    except BadInputError:
        raise
    except Exception as exc:
        raise BadInputError(f"not a readable micrograph ({exc})", path) from exc


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decodes fully: a truncated JPEG/PNG raises here
            if im.mode not in ("L", "I;16", "I", "F"):
                im = im.convert("L")
            arr = np.asarray(im, dtype=np.float32)
    except Exception as exc:
        raise BadInputError(f"not a readable image, or truncated ({exc})", path) from exc
    return arr


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            apix = _tiff_apix(tif.pages[0])
            arr = tif.asarray()
    except Exception as exc:
        raise BadInputError(f"not a readable TIFF, or truncated ({exc})", path) from exc
    arr = np.asarray(arr)
    if arr.ndim == 3:
        # a movie or multi-page stack: a micrograph is their sum (motion-uncorrected)
        arr = arr.sum(axis=0)
    return arr.astype(np.float32, copy=False), apix


def read_micrograph(path: str | Path, apix: float | None = None, *, mmap: bool = False) -> MrcData:
    """Read one micrograph as float32 ``(rows, cols)`` with its pixel size in Å/px.

    ``apix`` overrides the file's pixel size. When neither the file nor the caller gives one the
    result has ``apix=None`` (JPEG/PNG never carry one). With ``mmap=True`` a float32 MRC stays
    memory-mapped and read-only (extraction slices boxes out of it without a copy). Raises
    :class:`BadInputError` naming the file for a missing, truncated or unknown-type file, a non-2D
    image or NaN/inf pixels.
    """
    from cryomap.io.atomic import note_input

    path = Path(path)
    if not path.exists():
        raise BadInputError("file not found", path)
    note_input(path)
    kind = _kind(path)
    origin = (0.0, 0.0, 0.0)
    if kind == "mrc":
        from cryomap.io.mrc import read_mrc

        # read_mrc insists on a voxel size; a micrograph without one is fine here (apix=None).
        # Opened memory-mapped either way, so a copy (mmap=False) is made once, straight from the file.
        m = read_mrc(path, apix=apix if apix is not None else 1.0, mmap=True)
        arr = m.data if mmap else np.array(m.data, dtype=np.float32)
        if apix is None:
            apix = micrograph_info(path).apix
        origin = m.origin
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
    elif kind == "tiff":
        arr, file_apix = _read_tiff(path)
        apix = apix if apix is not None else file_apix
    else:
        arr = _read_image(path)
    if arr.ndim != 2:
        raise BadInputError(f"expected a 2D micrograph, found an array of shape {arr.shape}", path)
    if not all_finite(arr):
        raise BadInputError("contains NaN or infinite pixels", path)
    return MrcData(arr if arr.dtype == np.float32 else arr.astype(np.float32), None if apix is None else float(apix), origin)  # type: ignore[arg-type]

