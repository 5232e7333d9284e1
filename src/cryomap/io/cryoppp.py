"""Discover a CryoPPP-layout dataset folder and pair micrographs with coordinates and CTF rows.

The layout CryoPPP ships (one folder per EMPIAR id)::

    <id>/micrographs/*.mrc                     (CryoPPP_lite: *.jpg, also micrographs_jpg/*.jpg)
    <id>/ground_truth/particle_coordinates/<micrograph stem>.csv
    <id>/ground_truth/<id>_particles_selected.star   (RELION 3.1 exported from cryoSPARC)

A flat folder (micrographs and same-stem ``.csv``/``.box``/``.star`` coordinate files side by
side, as in ``../shared/data/empiar10017``) is accepted too. MRC/TIFF micrographs are preferred
over JPEG/PNG when both exist for a stem.

The STAR file's ``rlnMicrographName`` often carries a job folder and a cryoSPARC UID prefix
(``J128/motioncorrected/000001281467243737059_<name>.mrc``); micrographs are matched on
:func:`micrograph_key`, which drops folders, the suffix and a leading all-digit UID of 15 or
more digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cryomap.errors import BadInputError
from cryomap.io.micrograph import IMAGE_SUFFIXES, MICROGRAPH_SUFFIXES

_UID_PREFIX = re.compile(r"^\d{15,}_")
_PREFERENCE = {s: (1 if s in IMAGE_SUFFIXES else 0) for s in MICROGRAPH_SUFFIXES}


def micrograph_key(name: str | Path) -> str:
    """Name used to pair a micrograph with its coordinates: file stem, no folders, no cryoSPARC UID prefix."""
    stem = Path(str(name).strip()).name
    for suffix in MICROGRAPH_SUFFIXES + (".csv", ".box", ".star"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return _UID_PREFIX.sub("", stem)


@dataclass
class MicrographEntry:
    """One micrograph with what belongs to it.

    ``coordinates``: the coordinate file (CSV/box/STAR) or None; ``star_rows``: the rows of the
    dataset STAR naming this micrograph (CTF, angles, coordinates) or None.
    """

    key: str
    micrograph: Path | None
    coordinates: Path | None = None
    star_rows: pd.DataFrame | None = None


@dataclass
class CryopppDataset:
    """A discovered dataset: entries by micrograph, the STAR table, and what is missing."""

    root: Path
    entries: list[MicrographEntry]
    star_path: Path | None = None
    star: pd.DataFrame | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def usable(self) -> list[MicrographEntry]:
        """Entries with a micrograph on disk and coordinates (a file or STAR rows)."""
        return [e for e in self.entries if e.micrograph is not None and (e.coordinates is not None or e.star_rows is not None)]

    def report(self) -> str:
        """Human-readable summary: counts, then one line per missing item."""
        n_mic = sum(e.micrograph is not None for e in self.entries)
        lines = [f"{self.root}: {n_mic} micrographs, {len(self.usable)} with coordinates"
                 + (f", STAR {self.star_path.name} ({len(self.star)} rows)" if self.star_path is not None and self.star is not None else "")]
        lines += [f"  missing: {m}" for m in self.missing]
        return "\n".join(lines)


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def _find_star(root: Path) -> Path | None:
    gt = root / "ground_truth"
    for folder in (gt, root):
        stars = sorted(folder.glob("*_particles_selected.star")) if folder.is_dir() else []
        if stars:
            return stars[0]
    stars = sorted(gt.glob("*.star")) if gt.is_dir() else []
    return stars[0] if len(stars) == 1 else None


def discover(dataset_dir: str | Path) -> CryopppDataset:
    """Pair each micrograph of a CryoPPP folder with its coordinate file and STAR rows.

    Raises :class:`BadInputError` when the folder does not exist or holds no micrographs.
    Micrographs without coordinates, coordinate files without a micrograph, and STAR rows naming
    micrographs that are not on disk are listed in ``missing`` (not errors: the caller decides).
    """
    from cryomap.io.atomic import note_input

    root = Path(dataset_dir)
    if not root.is_dir():
        raise BadInputError("dataset folder not found", root)
    note_input(root)  # the whole folder is the input: no output may replace it or a folder above it
    mic_files: list[Path] = []
    for folder in (root / "micrographs", root / "micrographs_jpg", root):
        mic_files += _files(folder, MICROGRAPH_SUFFIXES)
    by_key: dict[str, Path] = {}
    for p in mic_files:
        k = micrograph_key(p)
        if k not in by_key or _PREFERENCE[p.suffix.lower()] < _PREFERENCE[by_key[k].suffix.lower()]:
            by_key[k] = p
    if not by_key:
        raise BadInputError("no micrographs found (looked in micrographs/, micrographs_jpg/ and the folder itself)", root)

    coord_files: dict[str, Path] = {}
    coord_dir = root / "ground_truth" / "particle_coordinates"
    for folder in (coord_dir, root):
        for p in _files(folder, (".csv", ".box", ".star")):
            if p.name.endswith("_particles_selected.star"):
                continue
            coord_files.setdefault(micrograph_key(p), p)

    star_path = _find_star(root)
    star_df = None
    star_groups: dict[str, pd.DataFrame] = {}
    missing: list[str] = []
    if star_path is not None:
        from cryomap.io.star import read_star

        star_df = read_star(star_path).particles
        if "rlnMicrographName" not in star_df:
            raise BadInputError("STAR file has no rlnMicrographName column to pair particles with micrographs", star_path)
        names = star_df["rlnMicrographName"]
        keys = names.map({n: micrograph_key(n) for n in names.unique()})  # one key per micrograph, not per row
        for k, rows in star_df.groupby(keys, sort=False):
            star_groups[str(k)] = rows
        for k in sorted(set(star_groups) - set(by_key)):
            missing.append(f"micrograph {k} named in {star_path.name} is not on disk")

    entries = []
    for k in sorted(by_key):
        entry = MicrographEntry(k, by_key[k], coord_files.get(k), star_groups.get(k))
        if entry.coordinates is None and entry.star_rows is None:
            missing.append(f"coordinates for micrograph {by_key[k].name}")
        entries.append(entry)
    for k in sorted(set(coord_files) - set(by_key)):
        missing.append(f"micrograph for coordinates {coord_files[k].name}")
    return CryopppDataset(root=root, entries=entries, star_path=star_path, star=star_df, missing=missing)
