"""Particle coordinates: CryoPPP CSV, RELION STAR coordinate files and EMAN ``.box``.

Every reader returns a :class:`pandas.DataFrame` with float columns ``x`` and ``y`` in pixels of
the micrograph as stored (x = column, y = row, the particle centre) and, when the file has one,
``diameter`` (px). STAR coordinate files keep their other per-particle columns (CTF, angles).

- CryoPPP CSV: header ``X-Coordinate,Y-Coordinate,Diameter`` (Diameter optional), centres in px.
- STAR: ``rlnCoordinateX``/``rlnCoordinateY`` (px, centre).
- EMAN ``.box``: whitespace columns ``x y w h`` where (x, y) is the box's lower-left corner in
  EMAN's convention; the centre is ``(x + w/2, y + h/2)`` and ``diameter`` is set to ``w``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryomap.errors import BadInputError
from cryomap.io.atomic import atomic_path

CSV_COLUMNS = ("X-Coordinate", "Y-Coordinate", "Diameter")
COORDINATE_SUFFIXES = (".csv", ".star", ".box")


def _finish(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Make ``x``, ``y`` (and ``diameter``) float; refuse empty, non-numeric or non-finite values and
    a diameter ≤ 0, naming the row (1-based) and the value."""
    for col in ("x", "y", "diameter"):
        if col not in df:
            continue
        raw = df[col]
        values = pd.to_numeric(raw, errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy())
        if col == "diameter":
            bad |= values.to_numpy() <= 0
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            what = "an empty value" if pd.isna(raw.iloc[r]) else f"{raw.iloc[r]!r}"
            need = "a positive number of px" if col == "diameter" else "a finite number of px"
            raise BadInputError(f"coordinates row {r + 1}, {col}: {what} is not {need}", path)
        df[col] = values
    return df.reset_index(drop=True)


def _sniff_text(path: Path, what: str) -> None:
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if b"\x00" in head:
        raise BadInputError(f"is not a {what} (binary content)", path)


def read_cryoppp_csv(path: str | Path) -> pd.DataFrame:
    """Read a CryoPPP ``ground_truth/particle_coordinates/*.csv`` file (x, y, diameter in px)."""
    path = Path(path)
    _sniff_text(path, "CSV file")
    try:
        raw = pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        return pd.DataFrame({"x": pd.Series(dtype=float), "y": pd.Series(dtype=float)})
    except Exception as exc:
        raise BadInputError(f"not a readable CSV file ({exc})", path) from exc
    cols = {c.strip().lower(): c for c in raw.columns}
    xcol = cols.get("x-coordinate") or cols.get("x")
    ycol = cols.get("y-coordinate") or cols.get("y")
    if xcol is None or ycol is None:
        raise BadInputError(
            f"CSV has no coordinate columns (expected {CSV_COLUMNS[0]},{CSV_COLUMNS[1]}; found {list(raw.columns)})", path
        )
    df = pd.DataFrame({"x": raw[xcol], "y": raw[ycol]})
    dcol = cols.get("diameter")
    if dcol is not None:
        df["diameter"] = raw[dcol]
    return _finish(df, path)


def read_star_coordinates(path: str | Path) -> pd.DataFrame:
    """Read a STAR coordinate or particle file: ``x``, ``y`` (px) plus every other column it holds."""
    from cryomap.io.star import read_star

    path = Path(path)
    table = read_star(path)
    df = table.particles
    if not {"rlnCoordinateX", "rlnCoordinateY"} <= set(df.columns):
        raise BadInputError("STAR file has no coordinate columns (rlnCoordinateX, rlnCoordinateY)", path)
    out = df.copy()
    out.insert(0, "x", df["rlnCoordinateX"])
    out.insert(1, "y", df["rlnCoordinateY"])
    return _finish(out, path)


def read_box(path: str | Path) -> pd.DataFrame:
    """Read an EMAN ``.box`` file (corner x, corner y, width, height) as centres in px."""
    path = Path(path)
    _sniff_text(path, ".box file")
    try:
        arr = np.loadtxt(path, ndmin=2)
    except Exception as exc:
        raise BadInputError(f"not a readable .box file ({exc})", path) from exc
    if arr.size == 0:
        return pd.DataFrame({"x": pd.Series(dtype=float), "y": pd.Series(dtype=float)})
    if arr.shape[1] < 4:
        raise BadInputError(f".box rows need 4 columns (x y width height), found {arr.shape[1]}", path)
    df = pd.DataFrame({"x": arr[:, 0] + arr[:, 2] / 2, "y": arr[:, 1] + arr[:, 3] / 2, "diameter": arr[:, 2]})
    return _finish(df, path)


def read_coordinates(path: str | Path) -> pd.DataFrame:
    """Read coordinates by file type (.csv CryoPPP, .star RELION, .box EMAN); see the module doc."""
    from cryomap.io.atomic import note_input

    path = Path(path)
    if not path.exists():
        raise BadInputError("file not found", path)
    if path.is_dir():
        raise BadInputError("is a folder, not a coordinate file", path)
    note_input(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_cryoppp_csv(path)
    if suffix == ".star":
        return read_star_coordinates(path)
    if suffix == ".box":
        return read_box(path)
    raise BadInputError(f"unknown coordinate file type {suffix!r} (expected .csv, .star or .box)", path)


def write_cryoppp_csv(path: str | Path, df: pd.DataFrame, force: bool = False) -> Path:
    """Write ``x``, ``y`` (and ``diameter`` if present) as a CryoPPP CSV, atomically.

    Values are written as they are (floats keep their decimals; CryoPPP's own files hold integers).
    """
    path = Path(path)
    out = pd.DataFrame({CSV_COLUMNS[0]: df["x"].to_numpy(), CSV_COLUMNS[1]: df["y"].to_numpy()})
    if "diameter" in df:
        out[CSV_COLUMNS[2]] = df["diameter"].to_numpy()
    for col in out.columns:
        values = out[col].to_numpy(dtype=float)
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)) and np.all(np.abs(values) < 2**53):
            out[col] = values.astype(np.int64)
    with atomic_path(path, force=force) as tmp:
        out.to_csv(tmp, index=False)
    return path


def write_box(path: str | Path, df: pd.DataFrame, box: int, force: bool = False) -> Path:
    """Write centres ``x``, ``y`` (px) as an EMAN ``.box`` file with square boxes of ``box`` px."""
    path = Path(path)
    arr = np.column_stack([df["x"] - box / 2, df["y"] - box / 2, np.full(len(df), box), np.full(len(df), box)])
    with atomic_path(path, force=force) as tmp:
        np.savetxt(tmp, arr, fmt="%g", delimiter="\t")
    return path
