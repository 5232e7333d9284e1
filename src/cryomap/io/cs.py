"""cryoSPARC ``.cs`` particle files (numpy structured arrays) as RELION-named tables.

A ``.cs`` file is a numpy ``.npy`` structured array, one row per particle, with fields grouped by
prefix (``blob/``, ``ctf/``, ``location/``, ``alignments2D/``, ``alignments3D/``). The fields
cryomap reads and their units (cryoSPARC's own conventions):

- ``blob/path`` (bytes) and ``blob/idx`` (0-based) → ``rlnImageName`` ``"idx+1@path"``.
  cryoSPARC often names a stack ``*.mrc`` that is an ``.mrcs`` on disk (and vice versa); when the
  named file is missing, :func:`resolve_blob_path` tries the other suffix beside the ``.cs`` file.
- ``blob/psize_A`` Å/px → ``rlnImagePixelSize``; ``blob/shape`` (px) → ``rlnImageSize``.
- ``ctf/df1_A``, ``ctf/df2_A`` **Å** → ``rlnDefocusU/V``; ``ctf/df_angle_rad`` radians →
  ``rlnDefocusAngle`` degrees; ``ctf/accel_kv`` kV → ``rlnVoltage``; ``ctf/cs_mm`` mm →
  ``rlnSphericalAberration``; ``ctf/amp_contrast`` → ``rlnAmplitudeContrast``;
  ``ctf/phase_shift_rad`` radians → ``rlnPhaseShift`` degrees.
- ``location/center_x_frac``, ``center_y_frac`` (fraction of the micrograph width/height) and
  ``location/micrograph_shape`` (rows, cols) → ``rlnCoordinateX/Y`` in micrograph pixels;
  ``location/micrograph_path`` → ``rlnMicrographName``.
- ``alignments3D/pose`` is an axis-angle rotation vector (radians) → RELION ZYZ
  ``rlnAngleRot/Tilt/Psi`` (degrees), exactly as pyem's ``csparc2star`` converts it: RELION's
  matrix ``A(rot, tilt, psi)`` is the transpose of the rotation the vector describes
  (``Rotation.from_rotvec(pose).as_matrix().T``).
- ``alignments3D/shift`` and ``alignments2D/shift`` are in **pixels** (not Å, unlike
  ``ctf/*_A``) of the alignment's own pixel size ``alignments*/psize_A`` when the file has it,
  else of ``blob/psize_A``: ``rlnOriginXAngst/YAngst = shift × psize_A`` (pyem does the same).
  Reading them as Å, or as pixels of a differently-binned blob, is the classic unit bug this
  module exists to avoid.
- ``ctf/exp_group_id`` → ``rlnOpticsGroup`` = id + 1, as pyem does (RELION groups start at 1).
- Coordinates are taken in the orientation of the micrograph cryoSPARC stored (x = column,
  y = row, no flip). pyem's ``csparc2star`` flips y by default (``1 − center_y_frac``) to match
  micrographs motion-corrected outside cryoSPARC; flip yourself if your micrographs are those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryomap.errors import BadInputError


def read_cs_array(path: str | Path) -> np.ndarray:
    """Load the raw structured array of a ``.cs`` file (``allow_pickle=False``)."""
    from cryomap.io.atomic import note_input

    path = Path(path)
    if not path.exists():
        raise BadInputError("file not found", path)
    if path.is_dir():
        raise BadInputError("is a folder, not a cryoSPARC .cs file", path)
    note_input(path)
    try:
        with open(path, "rb") as fh:
            arr = np.load(fh, allow_pickle=False)
    except Exception as exc:
        raise BadInputError(f"not a readable cryoSPARC .cs file ({exc})", path) from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None:
        raise BadInputError("not a cryoSPARC .cs file (no structured fields)", path)
    if arr.ndim != 1:
        raise BadInputError(f"not a cryoSPARC .cs file (a table of shape {arr.shape}, not one row per particle)", path)
    return arr


def _text(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _euler_zyz_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    """RELION (rot, tilt, psi) degrees from cryoSPARC axis-angle vectors (n, 3), as pyem does.

    pyem's ``csparc2star`` takes RELION's Euler matrix as ``A = geom.expmap(pose)``, and pyem's
    ``expmap`` returns the *transpose* of the Rodrigues matrix (``R.T``, R = scipy's
    ``from_rotvec``). RELION's ``A(rot, tilt, psi)`` equals the transpose of scipy's intrinsic
    ``ZYZ`` matrix of the same angles. ``A = Rᵀ`` is decomposed with RELION's own
    ``Euler_matrix2angles`` rule (:func:`cryomap.core.euler.matrix_to_euler`, the same as
    pyem's ``rot2euler``, including rot = 0 at the gimbal lock). Checked against pyem's formulas
    in tests/test_io_formats.py (the reference .cs has no poses to check against).
    """
    from scipy.spatial.transform import Rotation

    from cryomap.core.euler import matrix_to_euler

    a = Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64).reshape(-1, 3)).as_matrix().transpose(0, 2, 1)
    return np.column_stack(matrix_to_euler(a))


def cs_to_dataframe(arr: np.ndarray, cs_path: Path | None = None) -> pd.DataFrame:
    """Convert a cryoSPARC structured array into a flat RELION-named DataFrame (units in the module doc)."""
    names = set(arr.dtype.names or ())
    df = pd.DataFrame(index=pd.RangeIndex(len(arr)))
    if "uid" in names:
        df["csUid"] = arr["uid"].astype(np.uint64).astype(str)
    if {"blob/path", "blob/idx"} <= names:
        paths = _text(arr["blob/path"])
        df["rlnImageName"] = [f"{int(i) + 1:06d}@{p}" for i, p in zip(arr["blob/idx"], paths)]
    if "location/micrograph_path" in names:
        df["rlnMicrographName"] = _text(arr["location/micrograph_path"])
    if {"location/center_x_frac", "location/center_y_frac", "location/micrograph_shape"} <= names:
        shape = np.asarray(arr["location/micrograph_shape"], dtype=float)  # (rows, cols)
        df["rlnCoordinateX"] = np.asarray(arr["location/center_x_frac"], float) * shape[:, 1]
        df["rlnCoordinateY"] = np.asarray(arr["location/center_y_frac"], float) * shape[:, 0]
    ctf = {
        "ctf/df1_A": ("rlnDefocusU", 1.0),
        "ctf/df2_A": ("rlnDefocusV", 1.0),
        "ctf/df_angle_rad": ("rlnDefocusAngle", 180.0 / np.pi),
        "ctf/phase_shift_rad": ("rlnPhaseShift", 180.0 / np.pi),
        "ctf/bfactor": ("rlnCtfBfactor", 1.0),
        "ctf/scale": ("rlnCtfScalefactor", 1.0),
    }
    for field, (col, factor) in ctf.items():
        if field in names:
            df[col] = np.asarray(arr[field], dtype=float) * factor
    apix = np.asarray(arr["blob/psize_A"], dtype=float) if "blob/psize_A" in names else None
    for prefix in ("alignments3D", "alignments2D"):
        if f"{prefix}/pose" in names and prefix == "alignments3D":
            angles = _euler_zyz_from_rotvec(np.asarray(arr[f"{prefix}/pose"], dtype=float))
            df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"] = angles.T
        if f"{prefix}/pose" in names and prefix == "alignments2D" and "rlnAnglePsi" not in df:
            df["rlnAnglePsi"] = np.degrees(np.asarray(arr[f"{prefix}/pose"], dtype=float)).reshape(len(arr))
        if f"{prefix}/shift" in names and "rlnOriginXAngst" not in df:
            shift_px = np.asarray(arr[f"{prefix}/shift"], dtype=float)  # pixels, NOT Å
            # pixels of the alignment's own sampling when recorded, else of the blob (pyem does the same)
            psize = np.asarray(arr[f"{prefix}/psize_A"], dtype=float) if f"{prefix}/psize_A" in names else apix
            if psize is None:
                df["rlnOriginX"], df["rlnOriginY"] = shift_px[:, 0], shift_px[:, 1]
            else:
                with np.errstate(invalid="ignore", over="ignore"):  # non-finite values are refused by the table check
                    df["rlnOriginXAngst"] = shift_px[:, 0] * psize
                    df["rlnOriginYAngst"] = shift_px[:, 1] * psize
        if f"{prefix}/class" in names and "rlnClassNumber" not in df:
            df["rlnClassNumber"] = np.asarray(arr[f"{prefix}/class"], dtype=np.int64) + 1
    optics = {
        "ctf/accel_kv": "rlnVoltage",
        "ctf/cs_mm": "rlnSphericalAberration",
        "ctf/amp_contrast": "rlnAmplitudeContrast",
    }
    for field, col in optics.items():
        if field in names:
            df[col] = np.asarray(arr[field], dtype=float)
    if apix is not None:
        df["rlnImagePixelSize"] = np.round(apix, 6)
    if "blob/shape" in names:
        df["rlnImageSize"] = np.asarray(arr["blob/shape"])[:, 0].astype(np.int64)
    if "ctf/exp_group_id" in names:  # 1-based in RELION; pyem adds 1 as well
        df["rlnOpticsGroup"] = np.asarray(arr["ctf/exp_group_id"], dtype=np.int64) + 1
    return df


def read_cs(path: str | Path) -> pd.DataFrame:
    """Read a cryoSPARC ``.cs`` particle file as a flat RELION-named table (see module doc for units)."""
    from cryomap.io.star import check_table

    path = Path(path)
    arr = read_cs_array(path)
    try:
        df = cs_to_dataframe(arr, path)
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as exc:
        raise BadInputError(f"a cryoSPARC field has an unexpected type or shape ({exc})", path) from exc
    if "blob/idx" in (arr.dtype.names or ()):
        idx = np.asarray(arr["blob/idx"])
        if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0):
            r = int(np.flatnonzero(idx < 0)[0]) if idx.dtype.kind in "iu" else 0
            raise BadInputError(f"row {r + 1}, blob/idx: {idx[r]} is not an image index ≥ 0", path)
    return check_table(df, path, "cryoSPARC table (fields as RELION columns)", rows_from_text=False)


def resolve_blob_path(blob_path: str | Path, cs_path: str | Path) -> Path:
    """Find the stack a ``blob/path`` names, beside the ``.cs`` file; ``.mrc`` ↔ ``.mrcs`` tolerated.

    Tries the path as written (relative to the ``.cs`` folder), then its file name in that folder,
    each with ``.mrc`` and ``.mrcs``. Raises :class:`BadInputError` when none exists.
    """
    blob = Path(str(blob_path))
    base = Path(cs_path).parent
    candidates = []
    for p in (blob if blob.is_absolute() else base / blob, base / blob.name):
        candidates += [p, p.with_suffix(".mrcs"), p.with_suffix(".mrc")]
    for c in candidates:
        if c.exists():
            return c
    raise BadInputError(f"particle stack named in blob/path ({blob}) is not on disk", cs_path)
