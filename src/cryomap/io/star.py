"""RELION STAR particle tables through ``starfile``.

Reads RELION 3.0 (one table, optics per particle), RELION 3.1+ (``data_optics`` +
``data_particles``, any number of optics groups, either block first) and the cryoSPARC-exported
flavour CryoPPP ships (pyem ``csparc2star``). On read the optics columns are merged into every
particle row, so callers see one flat table; on write the optics columns are split back into a
``data_optics`` block (RELION 3.1 conventions, ``# version 30001``).

Units: ``rlnImagePixelSize``/``rlnMicrographPixelSize`` Å/px, ``rlnDefocusU/V`` Å,
``rlnDefocusAngle`` degrees, ``rlnVoltage`` kV, ``rlnSphericalAberration`` mm,
``rlnAngleRot/Tilt/Psi`` degrees (RELION ZYZ), ``rlnOriginXAngst/YAngst`` Å,
``rlnCoordinateX/Y`` px of the micrograph (x = column, y = row).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryomap.errors import BadInputError
from cryomap.io.atomic import atomic_path

#: First line of every STAR file cryomap writes.
STAR_HEADER = "# written by cryomap\n"

#: Columns that belong in ``data_optics`` when writing RELION 3.1.
OPTICS_COLUMNS = (
    "rlnOpticsGroupName",
    "rlnOpticsGroup",
    "rlnMicrographOriginalPixelSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnMicrographPixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnCtfDataAreCtfPremultiplied",
    "rlnCtfDataArePhaseFlipped",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
)


@dataclass
class StarTable:
    """A particle table with optics merged in (``particles``) and the optics block kept (``optics``)."""

    particles: pd.DataFrame
    optics: pd.DataFrame | None = None
    path: Path | None = None
    extra_blocks: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.particles)

    @property
    def pixel_size(self) -> float | None:
        """The particle image pixel size (Å/px) if one value holds for all rows, else None."""
        for col in ("rlnImagePixelSize", "rlnPixelSize", "rlnMicrographPixelSize"):
            if col in self.particles:
                vals = pd.unique(self.particles[col].astype(float))
                if len(vals) == 1:
                    return float(vals[0])
        return None


#: Columns whose values must be finite and > 0 (Å/px, µm, ×, kV).
POSITIVE_COLUMNS = ("rlnImagePixelSize", "rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize", "rlnPixelSize",
                    "rlnDetectorPixelSize", "rlnMagnification", "rlnVoltage")
#: Columns whose values must be finite numbers: angles (°), origins (px or Å), CTF, coordinates (px).
FINITE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnAngleRotPrior", "rlnAngleTiltPrior",
                  "rlnAnglePsiPrior", "rlnOriginX", "rlnOriginY", "rlnOriginZ", "rlnOriginXAngst", "rlnOriginYAngst",
                  "rlnOriginZAngst", "rlnOriginXPrior", "rlnOriginYPrior", "rlnOriginXPriorAngst",
                  "rlnOriginYPriorAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
                  "rlnSphericalAberration", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnCoordinateX", "rlnCoordinateY",
                  "rlnCoordinateZ", "rlnCtfMaxResolution", "rlnBeamTiltX", "rlnBeamTiltY")
#: Columns that hold whole numbers ≥ 1 (RELION counts optics groups, image sizes and classes from 1).
COUNT_COLUMNS = ("rlnOpticsGroup", "rlnImageSize", "rlnImageDimensionality", "rlnClassNumber", "rlnRandomSubset",
                 "rlnGroupNumber")
#: Columns that hold 0 or 1.
FLAG_COLUMNS = ("rlnCtfDataArePhaseFlipped", "rlnCtfDataAreCtfPremultiplied")


_RULES = ([(c, "positive") for c in POSITIVE_COLUMNS] + [(c, "finite") for c in FINITE_COLUMNS]
          + [(c, "count") for c in COUNT_COLUMNS] + [(c, "flag") for c in FLAG_COLUMNS]
          + [("rlnAmplitudeContrast", "fraction")])


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_table(df: pd.DataFrame, path: Path | None, block: str = "particles", *, rows_from_text: bool = True) -> pd.DataFrame:
    """Check the numbers of a RELION table where they enter; return it with those columns numeric.

    Refused with one :class:`BadInputError` naming the file, the block, the row (1-based) and the
    column: a row with fewer values than the loop has columns (a file cut mid-row), text in a
    numeric column, NaN/inf in a pixel size, angle, origin, CTF value or coordinate, a pixel
    size, magnification or voltage ≤ 0, an amplitude contrast outside [0, 1), a count (optics
    group, image size, class) that is not a whole number ≥ 1, a 0/1 flag that is neither.
    ``rows_from_text=False`` (a table not parsed from STAR text, e.g. a cryoSPARC ``.cs``) skips
    the cut-row check and names the table ``block``.
    """
    where = f"data_{block}" if rows_from_text else block
    if rows_from_text and not len(df.columns):
        raise BadInputError(f"{where} has a loop_ without columns: the file looks cut", path)
    if rows_from_text:
        bad_names = [str(c) for c in df.columns if not str(c) or str(c).startswith("_") or len(str(c).split()) != 1]
        if bad_names or len(set(map(str, df.columns))) != len(df.columns):
            raise BadInputError(f"{where} has an empty, repeated or malformed column name "
                                f"({bad_names[0] if bad_names else 'a repeat'!r})", path)
    if rows_from_text and len(df) and len(df.columns):  # a short text row reads as NaN at its end
        last = df.iloc[:, -1]
        trailing = last.isna().to_numpy()
        if trailing.any():
            r = _first(trailing)
            row = df.iloc[r]
            have = len(df.columns) - int(np.argmax(~row.isna().to_numpy()[::-1])) if row.notna().any() else 0
            raise BadInputError(
                f"{where} row {r + 1} has values for {have} of its {len(df.columns)} columns (no "
                f"{df.columns[-1]}): the file looks cut mid-row", path)
    if rows_from_text:
        _check_text_values(df, path, where)
    changed: dict[str, np.ndarray] = {}
    for col, rule in _RULES:
        if col not in df.columns:
            continue
        raw = df[col]
        if raw.dtype.kind in "fiu":  # already numbers (the common case: no per-value conversion)
            v = raw.to_numpy(dtype=np.float64)
        else:
            values = pd.to_numeric(raw, errors="coerce")
            text = values.isna().to_numpy() & raw.notna().to_numpy()
            if text.any():
                r = _first(text)
                raise BadInputError(f"{where} row {r + 1}, {col}: {raw.iloc[r]!r} is not a number", path)
            v = values.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            r = _first(bad)
            raise BadInputError(f"{where} row {r + 1}, {col}: {v[r]} is not a finite number", path)
        if rule == "positive":
            bad, need = v <= 0, "must be > 0"
        elif rule == "fraction":
            bad, need = (v < 0) | (v >= 1), "must lie in [0, 1)"
        elif rule == "count":
            bad, need = (v < 1) | (v != np.round(v)) | (v > 2**31), "must be a whole number ≥ 1"
        elif rule == "flag":
            bad, need = (v != 0) & (v != 1), "must be 0 or 1"
        else:
            bad, need = None, ""
        if bad is not None and bad.any():
            r = _first(bad)
            raise BadInputError(f"{where} row {r + 1}, {col}: {v[r]:g} {need}", path)
        if rule in ("count", "flag"):
            if raw.dtype.kind not in "iu":
                changed[col] = v.astype(np.int64)
        elif raw.dtype.kind != "f":
            changed[col] = v
    if changed:
        df = df.copy()
        for col, v in changed.items():
            df[col] = v
    return df


def _check_text_values(df: pd.DataFrame, path: Path | None, where: str) -> None:
    """Refuse a text value no STAR reader takes back as a value: empty, starting with ``_`` (a label),
    ``#`` (a comment), ``data_`` or ``loop_``, or holding spaces or control characters."""
    for col in df.columns:
        raw = df[col]
        if raw.dtype.kind in "fiub":
            continue
        text = raw.astype(str)
        bad = text.str.contains(r"^(?:_|#|data_|loop_|$)|[\s\x00-\x1f\x7f'\"]", regex=True).to_numpy(dtype=bool)
        if bad.any():
            r = _first(bad)
            raise BadInputError(f"{where} row {r + 1}, {col}: {text.iloc[r]!r} is not a STAR value (empty, a label "
                                "or comment, or holding spaces, quotes or control characters)", path)


def _sniff(path: Path) -> None:
    """Refuse a file that is not STAR text: a cryoSPARC ``.cs`` (numpy) file, or binary content."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head.startswith(b"\x93NUMPY"):
        raise BadInputError("is a cryoSPARC .cs (numpy) file, not a STAR file: give it with a .cs suffix", path)
    if b"\x00" in head:
        raise BadInputError("is not a STAR file (binary content)", path)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            raise BadInputError(f"is not a STAR file (not UTF-8 text at byte {exc.start})", path) from exc


def _read_blocks(path: Path) -> dict[str, pd.DataFrame]:
    from cryomap.io.atomic import note_input

    if not path.exists():
        raise BadInputError("file not found", path)
    if path.is_dir():
        raise BadInputError("is a folder, not a STAR file", path)
    note_input(path)
    _sniff(path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise BadInputError(f"not a readable STAR file ({exc})", path) from exc
    blocks = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if not blocks:
        raise BadInputError("STAR file holds no table (loop_) block", path)
    return {k: check_table(v, path, str(k)) for k, v in blocks.items()}


def read_star(path: str | Path) -> StarTable:
    """Read a particle (or coordinate) STAR file and merge optics into each particle row.

    The particle block is ``data_particles`` when present, else the largest table that is not
    ``data_optics``. Optics values are added only for columns the particle rows do not already
    have, so per-particle values (RELION 3.0 style) win.
    """
    path = Path(path)
    blocks = _read_blocks(path)
    optics = blocks.get("optics")
    if "particles" in blocks:
        key = "particles"
    else:
        candidates = [k for k in blocks if k != "optics"]
        if not candidates:
            raise BadInputError("STAR file has an optics block but no particle table", path)
        key = max(candidates, key=lambda k: len(blocks[k]))
    particles = blocks[key].copy()
    if not len(particles):
        raise BadInputError(f"data_{key} holds no rows (no particles or coordinates)", path)
    if optics is not None and len(optics):
        if "rlnOpticsGroup" not in particles.columns:
            if len(optics) != 1:
                raise BadInputError(
                    "particles carry no rlnOpticsGroup but the optics block has several groups", path
                )
            particles["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
        missing_groups = set(particles["rlnOpticsGroup"].astype(int)) - set(optics["rlnOpticsGroup"].astype(int))
        if missing_groups:
            raise BadInputError(f"particles use optics groups {sorted(missing_groups)} not in data_optics", path)
        add = [c for c in optics.columns if c not in particles.columns or c == "rlnOpticsGroup"]
        particles = particles.merge(optics[add], on="rlnOpticsGroup", how="left", sort=False)
        # RELION 3.1 files may still carry pixel origins (relion_project writes them): same rule as 3.0
        particles = _origins_to_angstrom(particles)
    else:
        particles = _upgrade_relion30(particles)
    extra = {k: v for k, v in blocks.items() if k not in (key, "optics")}
    return StarTable(particles=particles.reset_index(drop=True), optics=optics, path=path, extra_blocks=extra)


def _upgrade_relion30(particles: pd.DataFrame) -> pd.DataFrame:
    """Bring a RELION 3.0 table (no optics block) to the flat 3.1 form read_star returns.

    Adds ``rlnOpticsGroup`` 1 and ``rlnOpticsGroupName``, derives ``rlnImagePixelSize`` (Å/px) as
    ``rlnDetectorPixelSize`` (µm) × 1e4 / ``rlnMagnification`` when the file has no pixel size,
    turns pixel origins ``rlnOriginX/Y`` into ``rlnOriginX/YAngst`` (as RELION 3.1 does), and moves the optics columns that are constant to the end, in the order :func:`write_star`
    writes them, so that ``read_star(write_star(read_star(f)))`` equals ``read_star(f)``.
    """
    df = particles.copy()
    if not len(df.columns):
        return df
    has_size = any(c in df for c in ("rlnImagePixelSize", "rlnPixelSize"))
    if not has_size and {"rlnDetectorPixelSize", "rlnMagnification"} <= set(df.columns):
        det = pd.to_numeric(df["rlnDetectorPixelSize"], errors="coerce")
        mag = pd.to_numeric(df["rlnMagnification"], errors="coerce")
        apix = (det * 1e4 / mag).astype(float)
        if apix.notna().all() and (apix > 0).all():
            df["rlnImagePixelSize"] = apix.round(6)
    df = _origins_to_angstrom(df)
    if "rlnOpticsGroup" not in df:
        df["rlnOpticsGroup"] = np.int64(1)
    if "rlnOpticsGroupName" not in df:
        df["rlnOpticsGroupName"] = pd.Series(
            [f"opticsGroup{int(g)}" for g in df["rlnOpticsGroup"]], index=df.index, dtype=str)
    optics, parts = split_optics(df)
    moved = [c for c in df.columns if c in optics.columns and c != "rlnOpticsGroup"]
    return df[list(parts.columns) + moved]


def _origins_to_angstrom(df: pd.DataFrame) -> pd.DataFrame:
    """Pixel origins ``rlnOriginX/Y/Z`` (px) → ``rlnOriginX/Y/ZAngst`` (Å), in place of the old columns.

    RELION 3.1 converts the same way when it reads a 3.0 file, so a 3.0 table written back as 3.1
    keeps its shifts. A 3.1 file (with an optics block) may carry pixel origins too —
    ``relion_project`` writes them — and is converted the same way where it has no Å column for
    that axis; where both exist the Å column wins and the pixel one is dropped. Needs one pixel
    size per row (``rlnImagePixelSize``/``rlnPixelSize``); without it the columns stay.
    """
    size_col = next((c for c in ("rlnImagePixelSize", "rlnPixelSize") if c in df), None)
    if size_col is None:
        return df
    apix = pd.to_numeric(df[size_col], errors="coerce")
    if not (apix.notna().all() and (apix > 0).all()):
        return df
    for axis in ("X", "Y", "Z"):
        old, new = f"rlnOrigin{axis}", f"rlnOrigin{axis}Angst"
        if old in df and new not in df:
            # 6 decimals, as the STAR writer keeps them (so read → write → read is exact)
            values = (pd.to_numeric(df[old], errors="coerce").astype(float) * apix).round(6)
            df.insert(df.columns.get_loc(old), new, values)
            df = df.drop(columns=[old])
        elif old in df:
            df = df.drop(columns=[old])
    return df


def split_optics(particles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a flat table into (optics block, particle block) by ``rlnOpticsGroup``.

    Rows without ``rlnOpticsGroup`` get group 1. Every optics column must be constant within
    a group; a column that varies stays with the particles.
    """
    df = particles.copy()
    if "rlnOpticsGroup" not in df:
        df["rlnOpticsGroup"] = 1
    df["rlnOpticsGroup"] = df["rlnOpticsGroup"].astype(int)
    cols = [c for c in OPTICS_COLUMNS if c in df.columns and c != "rlnOpticsGroup"]
    grouped = df.groupby("rlnOpticsGroup", sort=True)
    constant = [c for c in cols if (grouped[c].nunique(dropna=False) <= 1).all()]
    optics = grouped[constant].first().reset_index() if constant else pd.DataFrame(
        {"rlnOpticsGroup": sorted(df["rlnOpticsGroup"].unique())}
    )
    if "rlnOpticsGroupName" not in optics:
        optics.insert(0, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    # keep the flat table's column order so that read_star appends the optics columns back where
    # they were (read_star merges them in data_optics order); the group number leads.
    order = [c for c in df.columns if c in optics.columns and c != "rlnOpticsGroup"]
    added = [c for c in optics.columns if c not in order and c != "rlnOpticsGroup"]
    optics = optics[["rlnOpticsGroup"] + added + order]
    parts = df.drop(columns=[c for c in constant if c != "rlnOpticsGroup"])
    return optics, parts


def write_star(path: str | Path, particles: pd.DataFrame, *, force: bool = False,
               block: str = "particles") -> Path:
    """Write a flat particle table as RELION 3.1 STAR (``data_optics`` then ``data_<block>``), atomically."""
    path = Path(path)
    optics, parts = split_optics(particles)
    with atomic_path(path, force=force) as tmp:
        starfile.write({"optics": optics, block: parts}, tmp, overwrite=True)
        # RELION 3.1 marks its tables with a version comment; starfile does not write it. starfile's own
        # header carries the time of writing: replace it so equal tables give equal files.
        text = re.sub(r"(?m)^# Created by the starfile.*\n", "", tmp.read_text())
        tmp.write_text(STAR_HEADER + re.sub(r"(?m)^data_", "# version 30001\ndata_", text))
    return path


def parse_image_name(name: str) -> tuple[int, str]:
    """Split RELION ``"N@stack.mrcs"`` into (N, path); N is 1-based. A bare path gives (1, path)."""
    name = str(name).strip()
    if "@" in name:
        idx, stack = name.split("@", 1)
        try:
            return int(idx), stack
        except ValueError as exc:
            raise ValueError(f"bad RELION image name {name!r}: index before '@' is not an integer") from exc
    return 1, name


def format_image_name(index: int, stack: str | Path) -> str:
    """RELION image name ``"000123@stack.mrcs"`` for 1-based ``index``."""
    if index < 1:
        raise ValueError(f"RELION image indices are 1-based, got {index}")
    return f"{index:06d}@{stack}"


def image_locations(table: StarTable) -> tuple[np.ndarray, list[Path]]:
    """0-based image indices and stack paths (resolved against the STAR file's folder) for each row."""
    if "rlnImageName" not in table.particles:
        raise BadInputError("STAR file has no rlnImageName column", table.path)
    base = table.path.parent if table.path is not None else Path(".")
    idx, stacks = [], []
    for row, name in enumerate(table.particles["rlnImageName"]):
        try:
            i, s = parse_image_name(name)
        except ValueError as exc:
            raise BadInputError(f"row {row + 1}, rlnImageName: {exc}", table.path) from exc
        if i < 1 or not s:
            raise BadInputError(f"row {row + 1}, rlnImageName {name!r}: "
                                + ("no stack file named" if not s else "RELION counts images from 1"), table.path)
        idx.append(i - 1)
        p = Path(s)
        p = p if p.is_absolute() else base / p
        if not p.exists() and p.suffix.lower() in (".mrc", ".mrcs"):
            # cryoSPARC/pyem exports often name a stack .mrc that is .mrcs on disk (and vice versa)
            other = p.with_suffix(".mrcs" if p.suffix.lower() == ".mrc" else ".mrc")
            if other.exists():
                p = other
        stacks.append(p)
    return np.asarray(idx, dtype=np.int64), stacks
