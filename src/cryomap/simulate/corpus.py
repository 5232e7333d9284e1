"""The training corpus: every molecule cryomap can learn from, and splits that never share a molecule.

Sources, in order of precedence (a molecule listed by two sources is kept once, from the first):

* ``builtin`` — the structures shipped in the package (:func:`~cryomap.simulate.structure_map.builtin_structures`);
* ``shared`` — ``<shared>/structures/`` (PDB/mmCIF files beside the checkout);
* ``corpus/<set>`` — the entries of ``<shared>/corpus/index.tsv`` (370 PDB entries from public
  benchmark sets: protein–protein, protein–RNA, protein–DNA, membrane and antibody complexes);
  read in place, never copied;
* ``procedural`` — ``P<seed>_<index>`` molecules of :mod:`cryomap.simulate.procedural`, made on
  demand (no file), which supply the large assemblies the PDB sets lack.

**Splits are by molecule.** A molecule's name (the PDB id in upper case, or the procedural
name) decides its split through a hash of ``(split seed, name)``, so the split of a molecule
does not depend on which other molecules are listed, and a name can only ever be in one split.
The demo's molecules (:data:`TEST_MOLECULES`: 7PBL, 4JSV, 1BHL, 7CTH) and every built-in are
always in ``test``: no shipped model has seen them.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryomap.errors import BadInputError

#: Molecules that are never trained on: the demo's four targets.
TEST_MOLECULES = ("7PBL", "4JSV", "1BHL", "7CTH")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CorpusEntry:
    """One molecule: ``name`` (upper-case PDB id or procedural name), where it comes from, its size."""

    name: str
    source: str  # builtin | shared | corpus/<set> | procedural
    path: Path | None = None  # None for procedural molecules (made from seed and index)
    mass_kDa: float | None = None
    chains: int | None = None
    seed: int | None = None  # procedural only
    index: int | None = None  # procedural only

    @property
    def procedural(self) -> bool:
        return self.path is None

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "path": None if self.path is None else str(self.path),
                "mass_kDa": self.mass_kDa, "chains": self.chains, "seed": self.seed, "index": self.index}

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusEntry":
        return cls(d["name"], d["source"], None if d.get("path") is None else Path(d["path"]), d.get("mass_kDa"),
                   d.get("chains"), d.get("seed"), d.get("index"))


def default_shared_dir() -> Path | None:
    """``$CRYOMAP_SHARED_DATA``, else ``../shared/data`` beside the current folder or the checkout; None if absent."""
    env = os.environ.get("CRYOMAP_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[4] / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _structure_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz",):
        name = name.removesuffix(suffix)
    return Path(name).stem.split("_")[0].upper()


def builtin_entries() -> list[CorpusEntry]:
    from cryomap.simulate.structure_map import builtin_structures

    return [CorpusEntry(name, "builtin", path) for name, path in builtin_structures().items()]


def shared_structure_entries(shared: Path) -> list[CorpusEntry]:
    from cryomap.simulate.structure_map import STRUCTURE_SUFFIXES

    folder = Path(shared) / "structures"
    if not folder.is_dir():
        return []
    return [CorpusEntry(_structure_name(p), "shared", p) for p in sorted(folder.iterdir())
            if any(p.name.lower().endswith(s) for s in STRUCTURE_SUFFIXES)]


def corpus_index_entries(shared: Path) -> list[CorpusEntry]:
    """The rows of ``<shared>/corpus/index.tsv`` (file, pdb_id, source, chains, mass_kDa_heavy_atoms)."""
    root = Path(shared) / "corpus"
    index = root / "index.tsv"
    if not index.exists():
        return []
    out = []
    with index.open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            try:
                path = root / row["file"]
                name = row["pdb_id"].strip().upper()
            except KeyError as exc:
                raise BadInputError(f"index.tsv lacks the column {exc}", index) from exc
            mass = row.get("mass_kDa_heavy_atoms") or ""
            chains = row.get("chains") or ""
            out.append(CorpusEntry(name, f"corpus/{row.get('source') or path.parent.name}", path,
                                   float(mass) if mass.strip() else None, int(chains) if chains.strip() else None))
    return out


def procedural_entries(n: int, seed: int = 0, start: int = 0) -> list[CorpusEntry]:
    from cryomap.simulate.procedural import molecule_name

    return [CorpusEntry(molecule_name(seed, i), "procedural", None, seed=int(seed), index=i) for i in range(start, start + n)]


def corpus_entries(shared: str | Path | None = None, *, procedural: int = 0, procedural_seed: int = 0,
                   builtins: bool = True) -> list[CorpusEntry]:
    """Every molecule of the corpus (see the module docstring), each name once.

    ``shared`` defaults to :func:`default_shared_dir` (the shared sources are left out when it
    is not found). ``procedural`` adds that many procedural molecules of ``procedural_seed``.
    """
    shared_dir = Path(shared) if shared is not None else default_shared_dir()
    found: list[CorpusEntry] = []
    if builtins:
        found += builtin_entries()
    if shared_dir is not None:
        found += shared_structure_entries(shared_dir) + corpus_index_entries(shared_dir)
    found += procedural_entries(procedural, procedural_seed)
    seen: set[str] = set()
    out = []
    for e in found:
        if e.name not in seen:
            seen.add(e.name)
            out.append(e)
    return out


def molecule_split(name: str, *, val_fraction: float = 0.05, test_fraction: float = 0.08, seed: int = 0,
                   test: tuple[str, ...] = TEST_MOLECULES) -> str:
    """The split of one molecule: ``test`` if named in ``test``, else by a hash of ``(seed, name)``."""
    key = name.upper()
    if key in {t.upper() for t in test}:
        return "test"
    u = int(hashlib.sha256(f"{int(seed)}:{key}".encode()).hexdigest()[:12], 16) / float(16**12)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def split_entries(entries: list[CorpusEntry], *, val_fraction: float = 0.05, test_fraction: float = 0.08,
                  seed: int = 0, test: tuple[str, ...] = TEST_MOLECULES) -> dict[str, str]:
    """``{name: split}`` for the entries; every built-in molecule is ``test``."""
    forced = set(test) | {e.name for e in entries if e.source == "builtin"}
    return {e.name: molecule_split(e.name, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                   test=tuple(forced)) for e in entries}


def check_disjoint(assignments) -> None:
    """Raise ``ValueError`` if a molecule appears in two splits.

    ``assignments``: ``(name, split)`` pairs (e.g. one per training pair); names are compared in
    upper case.
    """
    seen: dict[str, set[str]] = {}
    for name, split in assignments:
        seen.setdefault(str(name).upper(), set()).add(str(split))
    bad = sorted(n for n, s in seen.items() if len(s) > 1)
    if bad:
        raise ValueError(f"molecules in more than one split: {bad}")


def entry_structure(entry: CorpusEntry):
    """The ``gemmi.Structure`` of an entry (read with hydrogens and waters removed, or made procedurally)."""
    if entry.procedural:
        from cryomap.simulate.procedural import procedural_structure

        return procedural_structure(int(entry.seed or 0), int(entry.index or 0))[0]
    from cryomap.simulate.structure_map import read_model

    return read_model(Path(entry.path))
