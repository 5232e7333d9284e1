"""A cache of (half-map condition, label) training pairs over a corpus of molecules, split by molecule.

:func:`build_pairs` turns every molecule of a corpus (:mod:`cryomap.simulate.corpus`) into
``pairs_per_molecule`` pairs. For each pair it draws a random orientation of the molecule (the
atoms are rotated before gemmi computes the density: exact, no interpolation), a voxel size, a
particle count, an SNR, pose errors and a B-factor (:class:`~cryomap.datasets.physics.SettingRanges`),
computes the truth map, reconstructs its simulated particles into two half maps
(:func:`~cryomap.datasets.physics.fourier_halfmaps`) and stores:

* ``cond`` (2, B, B, B) — the ``halfmaps`` condition (:func:`~cryomap.datasets.conditions.normalise_halfmaps`);
* ``label`` (1, B, B, B) — the truth map, cryo2struct-normalised (:func:`~cryomap.labels.normalize.normalize_map`);
* ``stack`` (S, B, B) — S real-space particle images of the same molecule, orientation and
  noise level, for the report's ``stack`` condition (the baseline the half maps are compared with).

Layout of PAIRS_DIR (float16 arrays; about 0.9 MB per pair at B = 48)::

    manifest.json          settings, corpus entries with their split, one record per pair
    shards/<molecule>.npz  cond (k, 2, B, B, B), label (k, 1, B, B, B), stack (k, S, B, B); meta (JSON)

A molecule's shard is written atomically when all its pairs are done; rebuilding with the same
settings skips the shards already there, so an interrupted build resumes. The splits are the
corpus's (by molecule): no molecule has pairs in two splits (checked when the manifest is written).
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryomap.datasets.physics import ParticleSettings, SettingRanges
from cryomap.errors import BadInputError
from cryomap.io.atomic import atomic_path, mark_output
from cryomap.simulate.corpus import CorpusEntry, check_disjoint

MANIFEST = "manifest.json"
VERSION = 1
#: Molecules must fit in this fraction of the box edge (the reconstruction masks beyond radius box/2).
FILL = 0.95


def molecule_seed(seed: int, name: str) -> list[int]:
    """Seed sequence of one molecule: independent of which other molecules are built, and of their order."""
    return [int(seed), zlib.crc32(name.upper().encode())]


def _molecule_pairs(task: dict) -> dict:
    """Build all pairs of one molecule (runs in a worker process); returns arrays and per-pair records."""
    from cryomap.core.threads import torch_threads
    from cryomap.datasets.conditions import normalise_halfmaps
    from cryomap.datasets.physics import draw_settings, fourier_halfmaps, molecule_volume, simulate_particles, \
        structure_diameter
    from cryomap.labels.normalize import normalize_map
    from cryomap.simulate.corpus import entry_structure
    from cryomap.simulate.procedural import random_rotation

    t0 = time.perf_counter()
    entry = CorpusEntry.from_dict(task["entry"])
    ranges = SettingRanges.from_dict(task["ranges"])
    rng = np.random.default_rng(molecule_seed(task["seed"], entry.name))
    with torch_threads(task.get("threads", 1)):
        st = entry_structure(entry)
        diameter = structure_diameter(st)
        min_apix = diameter / (FILL * ranges.box)
        if min_apix > ranges.apix[1]:
            return {"name": entry.name, "skipped": f"{diameter:.0f} Å across: larger than {FILL:g} × {ranges.box} px × "
                                                   f"{ranges.apix[1]:g} Å/px", "diameter_A": diameter}
        mass = sum(cra.atom.element.weight * cra.atom.occ for cra in st[0].all()) / 1000.0
        B, S = ranges.box, int(task["n_stack"])
        k = int(task["pairs"])
        cond = np.zeros((k, 2, B, B, B), np.float16)
        label = np.zeros((k, 1, B, B, B), np.float16)
        stack = np.zeros((k, S, B, B), np.float16)
        records = []
        for i in range(k):
            s = draw_settings(rng, ranges, min_apix=min_apix)
            R = random_rotation(rng)
            vol = molecule_volume(st, s.apix, B, R)
            rec = fourier_halfmaps(vol, s, rng)
            cond[i] = normalise_halfmaps(rec.half1, rec.half2)
            label[i, 0] = normalize_map(vol)
            if S:
                few = ParticleSettings(**{**s.to_dict(), "n_particles": S, "defocus_range": tuple(s.defocus_range)})
                stack[i] = simulate_particles(vol, few, rng).images
            records.append({"molecule": entry.name, "row": i, "settings": s.to_dict(), "rotation": np.round(R, 6).tolist(),
                            "halfmap_fsc0.143_A": round(float(rec.resolution(0.143)), 2),
                            "halfmap_fsc0.5_A": round(float(rec.resolution(0.5)), 2)})
    return {"name": entry.name, "cond": cond, "label": label, "stack": stack, "records": records,
            "diameter_A": round(diameter, 1), "mass_kDa": round(mass, 1), "seconds": round(time.perf_counter() - t0, 2)}


def _settings_signature(ranges: SettingRanges, pairs_per_molecule: int, seed: int, n_stack: int) -> dict:
    from cryomap.datasets.physics import HALFMAP_WIENER_CONSTANT

    return {"version": VERSION, "ranges": ranges.to_dict(), "pairs_per_molecule": int(pairs_per_molecule),
            "seed": int(seed), "n_stack": int(n_stack), "wiener_constant": HALFMAP_WIENER_CONSTANT, "fill": FILL}


def build_pairs(
    out_dir: str | Path,
    entries: list[CorpusEntry],
    splits: dict[str, str],
    *,
    pairs_per_molecule: int = 2,
    seed: int = 0,
    ranges: SettingRanges = SettingRanges(),
    n_stack: int = 48,
    workers: int = 1,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Build (or resume) the pair cache of ``entries`` in ``out_dir``; return ``out_dir``.

    ``splits`` maps each molecule name to train/val/test (:func:`cryomap.simulate.corpus.split_entries`).
    ``workers`` processes build molecules in parallel (one torch thread each). ``command`` is
    recorded in the manifest (how to rebuild).
    """
    out = Path(out_dir)
    shards = out / "shards"
    sig = _settings_signature(ranges, pairs_per_molecule, seed, n_stack)
    sig_path = out / "build.json"
    if sig_path.exists():
        old = json.loads(sig_path.read_text())
        if old != sig:
            raise BadInputError("this pair cache was built with other settings; use another folder", out)
    shards.mkdir(parents=True, exist_ok=True)
    mark_output(out, "pairs")
    sig_path.write_text(json.dumps(sig, indent=1))
    missing = [e for e in entries if e.name not in splits]
    if missing:
        raise ValueError(f"no split for {[e.name for e in missing][:5]}")
    todo = [e for e in entries if not (shards / f"{e.name}.npz").exists() and not (shards / f"{e.name}.skip.json").exists()]
    tasks = [{"entry": e.to_dict(), "ranges": ranges.to_dict(), "seed": seed, "pairs": pairs_per_molecule,
              "n_stack": n_stack, "threads": 1} for e in todo]

    def save(result: dict) -> None:
        name = result["name"]
        if "skipped" in result:
            (shards / f"{name}.skip.json").write_text(json.dumps(result))
            return
        meta = {k: result[k] for k in ("records", "diameter_A", "mass_kDa", "seconds")}
        with atomic_path(shards / f"{name}.npz", force=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, cond=result["cond"], label=result["label"], stack=result["stack"],
                         meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))

    from contextlib import nullcontext

    from cryomap.progress import progress_bar

    with (progress_bar() if progress else nullcontext()) as bar:
        task_id = bar.add_task("simulating and reconstructing pairs", total=len(tasks)) if bar else None
        if workers <= 1:
            for t in tasks:
                save(_molecule_pairs(t))
                if bar:
                    bar.advance(task_id)
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_molecule_pairs, t) for t in tasks]
                for fut in as_completed(futures):
                    save(fut.result())
                    if bar:
                        bar.advance(task_id)
    return write_manifest(out, entries, splits, sig, command)


def read_shard_meta(path: Path) -> dict:
    with np.load(path) as z:
        return json.loads(bytes(z["meta"]).decode())


def write_manifest(out: Path, entries: list[CorpusEntry], splits: dict[str, str], sig: dict,
                   command: str | None = None) -> Path:
    """Collect the shards of ``entries`` into ``manifest.json`` (splits checked disjoint)."""
    shards = out / "shards"
    molecules, pairs, skipped = [], [], []
    for e in entries:
        npz, skip = shards / f"{e.name}.npz", shards / f"{e.name}.skip.json"
        if skip.exists():
            skipped.append({"name": e.name, **json.loads(skip.read_text())})
            continue
        if not npz.exists():
            continue
        meta = read_shard_meta(npz)
        split = splits[e.name]
        molecules.append({**e.to_dict(), "split": split, "shard": f"shards/{e.name}.npz",
                          "diameter_A": meta["diameter_A"], "mass_kDa": meta["mass_kDa"], "n_pairs": len(meta["records"])})
        pairs += [{**r, "split": split} for r in meta["records"]]
    check_disjoint((p["molecule"], p["split"]) for p in pairs)
    manifest = {**sig, "command": command, "molecules": molecules, "skipped": skipped, "pairs": pairs,
                "counts": {s: sum(1 for p in pairs if p["split"] == s) for s in ("train", "val", "test")}}
    with atomic_path(out / MANIFEST, force=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return out


@dataclass
class PairCache:
    """A built pair cache: the manifest and, on demand, the arrays of one split (float16, in memory)."""

    root: Path
    data: dict

    @classmethod
    def load(cls, root: str | Path) -> "PairCache":
        root = Path(root)
        p = root / MANIFEST
        if not p.exists():
            raise BadInputError(f"not a pair cache (no {MANIFEST}); build one with `cryomap pairs build`", root)
        return cls(root.resolve(), json.loads(p.read_text()))

    @property
    def box(self) -> int:
        return int(self.data["ranges"]["box"])

    def molecules(self, split: str) -> list[dict]:
        return [m for m in self.data["molecules"] if m["split"] == split]

    def arrays(self, split: str, kinds: tuple[str, ...] = ("cond", "label")) -> tuple[dict[str, np.ndarray], list[dict]]:
        """Concatenated arrays of every pair of ``split`` and the matching pair records."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        records: list[dict] = []
        for m in self.molecules(split):
            with np.load(self.root / m["shard"]) as z:
                for k in kinds:
                    parts[k].append(z[k])
                meta = json.loads(bytes(z["meta"]).decode())
            records += [{**r, "split": split} for r in meta["records"]]
        out = {k: (np.concatenate(v) if v else np.zeros((0,), np.float16)) for k, v in parts.items()}
        return out, records


# --- the 24 rotations of a cube ----------------------------------------------------------------

def cube_rotation(volume: np.ndarray, k: int) -> np.ndarray:
    """Rotation ``k`` (0–23) of the cube group applied to the last three axes (z, y, x) of ``volume``.

    ``k // 4`` picks which face goes up (four quarter turns about y… then about x), ``k % 4`` the
    quarter turns about the new vertical. Proper rotations only (no mirror: a map's hand is kept).
    Exact (a permutation of voxels about the box's geometric centre, (n − 1)/2 on each axis); the
    same ``k`` on a condition and its label keeps them registered.
    """
    if not 0 <= int(k) < 24:
        raise ValueError(f"cube rotation index must be 0…23, got {k}")
    k = int(k)
    z, y, x = volume.ndim - 3, volume.ndim - 2, volume.ndim - 1
    face = k // 4
    v = volume
    if face < 4:
        v = np.rot90(v, face, axes=(z, x))
    elif face == 4:
        v = np.rot90(v, 1, axes=(z, y))
    else:
        v = np.rot90(v, -1, axes=(z, y))
    return np.rot90(v, k % 4, axes=(y, x))


def inverse_cube_rotation(volume: np.ndarray, k: int) -> np.ndarray:
    """Undo :func:`cube_rotation` ``k``: ``inverse_cube_rotation(cube_rotation(v, k), k) == v`` exactly."""
    if not 0 <= int(k) < 24:
        raise ValueError(f"cube rotation index must be 0…23, got {k}")
    k = int(k)
    z, y, x = volume.ndim - 3, volume.ndim - 2, volume.ndim - 1
    face = k // 4
    v = np.rot90(volume, -(k % 4), axes=(y, x))
    if face < 4:
        return np.rot90(v, -face, axes=(z, x))
    return np.rot90(v, -1 if face == 4 else 1, axes=(z, y))
