"""Procedural pseudo-molecules and the corpus: determinism, protein-like geometry, symmetry, splits by molecule."""

from __future__ import annotations

import numpy as np
import pytest

from cryomap.simulate.corpus import TEST_MOLECULES, CorpusEntry, check_disjoint, corpus_entries, molecule_split, \
    split_entries
from cryomap.simulate.procedural import (
    _axis_rotation,
    add_atoms,
    build_domain,
    helix_trace,
    procedural_ca,
    write_procedural,
)


def test_helix_geometry_is_the_alpha_helix():
    ca = helix_trace(np.zeros(3), np.array([0, 0, 1.0]), 20)
    steps = np.linalg.norm(np.diff(ca, axis=0), axis=1)
    assert np.allclose(steps, 3.8, atol=0.05)  # 1.5 Å rise, 100°, radius 2.3 Å → Cα–Cα 3.8 Å
    assert np.isclose(ca[-1, 2] - ca[0, 2], 1.5 * 19)
    assert np.allclose(np.linalg.norm(ca[:, :2], axis=1), 2.3)


@pytest.mark.parametrize("fold", ["alpha", "alpha_beta", "beta"])
def test_domains_are_compact_chains_with_excluded_volume(fold):
    ca, kinds = build_domain(150, fold, np.random.default_rng(0))
    steps = np.linalg.norm(np.diff(ca, axis=0), axis=1)
    assert np.all(np.abs(steps - 3.8) < 0.3)  # a connected chain
    rg = np.sqrt(((ca - ca.mean(0)) ** 2).sum(1).mean())
    assert rg < 1.4 * 2.2 * len(ca) ** 0.38  # compact: within 40 % of a globular protein's radius of gyration
    from scipy.spatial import cKDTree

    d, j = cKDTree(ca).query(ca, k=8)
    nonbonded = np.abs(j - np.arange(len(ca))[:, None]) > 2
    assert np.quantile(d[nonbonded], 0.01) > 3.0  # excluded volume (a few clashes tolerated)
    assert {"H", "E", "L"} >= set(kinds) and (kinds != "L").mean() > 0.5


def test_same_seed_same_molecule_and_indices_differ():
    small = (50.0, 90.0)
    a, ida, ia = procedural_ca(5, 3, small)
    b, idb, ib = procedural_ca(5, 3, small)
    c, _, _ = procedural_ca(5, 4, small)
    assert np.array_equal(a, b) and np.array_equal(ida, idb) and ia == ib
    assert len(a) != len(c) or not np.allclose(a, c)


def _find_symmetric(kind: str) -> tuple[np.ndarray, object]:
    for i in range(40):
        ca, chains, info = procedural_ca(1, i, mass_range_kDa=(50, 200))
        if info.symmetry.startswith(kind) and info.symmetry != "C1":
            return ca, info
    pytest.skip(f"no {kind} assembly among the first 40 molecules")


@pytest.mark.parametrize("kind", ["C", "D"])
def test_symmetric_assemblies_are_invariant_under_their_group(kind):
    from scipy.spatial import cKDTree

    ca, info = _find_symmetric(kind)
    n = int(info.symmetry[1:])
    tree = cKDTree(ca)
    ops = [_axis_rotation(np.array([0, 0, 1.0]), 2 * np.pi / n)]
    if kind == "D":
        ops.append(_axis_rotation(np.array([1.0, 0, 0]), np.pi))
    centre = ca.mean(0)
    for R in ops:
        d, _ = tree.query((ca - centre) @ R.T + centre)
        assert d.max() < 1e-6, info.symmetry
    assert info.copies == n * (2 if kind == "D" else 1)


def test_structures_have_protein_like_atoms_and_density(tmp_path):
    (path, info), = write_procedural(1, 0, tmp_path, start=1, mass_range_kDa=(50.0, 150.0))
    assert path.name == "P0_0001.cif.gz"
    per_res = info.atoms / info.residues
    assert 7.2 < per_res < 8.4  # real proteins: 7.8 heavy atoms per residue
    assert 90 < 1000 * info.mass_kDa / info.residues < 120  # Da per residue
    assert 40 <= info.mass_kDa <= 160 and info.diameter_A <= 185
    from cryomap.simulate.structure_map import model_extent, structure_to_map

    diameter, mass = model_extent(path)
    assert abs(mass - info.mass_kDa) < 0.5
    m = structure_to_map(path, 4.0, 48).data
    # protein density: molecular volume ≈ 1.21 Å³/Da; the voxels above 10 % of the peak cover it
    occupied = (m > 0.1 * m.max()).sum() * 4.0**3
    assert 0.5 < occupied / (1.21 * mass * 1000) < 3.0


def test_add_atoms_makes_one_chain_per_id():
    ca = helix_trace(np.zeros(3), np.array([0, 0, 1.0]), 12)
    st = add_atoms(np.concatenate([ca, ca + 20]), np.array(["A"] * 12 + ["B"] * 12), np.random.default_rng(0))
    assert [c.name for c in st[0]] == ["A", "B"] and len(st[0]["A"]) == 12


def test_corpus_lists_each_molecule_once_and_splits_never_share_one(shared_data):
    entries = corpus_entries(shared_data, procedural=30)
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    assert sum(e.source.startswith("corpus/") for e in entries) >= 300
    assert sum(e.procedural for e in entries) == 30
    splits = split_entries(entries)
    for m in TEST_MOLECULES:
        assert splits[m] == "test"
    counts = {s: list(splits.values()).count(s) for s in ("train", "val", "test")}
    assert counts["train"] > 0.8 * len(entries) and counts["test"] >= 10 and counts["val"] > 0
    # a molecule's split depends on its name and the seed only, not on the rest of the list
    sub = entries[::7]
    assert all(split_entries(sub)[e.name] == splits[e.name] for e in sub)
    check_disjoint(splits.items())


def test_check_disjoint_catches_a_molecule_in_two_splits():
    check_disjoint([("1ABC", "train"), ("1abc", "train"), ("2XYZ", "test")])
    with pytest.raises(ValueError, match="1ABC"):
        check_disjoint([("1ABC", "train"), ("1abc", "test")])


def test_named_test_molecules_and_fractions():
    assert molecule_split("7pbl") == "test"
    names = [f"M{i}" for i in range(2000)]
    s = [molecule_split(n, val_fraction=0.1, test_fraction=0.2) for n in names]
    assert 0.15 < s.count("test") / 2000 < 0.25 and 0.06 < s.count("val") / 2000 < 0.14
    assert CorpusEntry.from_dict(CorpusEntry("P0_0001", "procedural", seed=0, index=1).to_dict()).index == 1


def test_simulate_procedural_command_writes_structures_and_targets(tmp_path):
    from cryomap.cli import main as cli

    out = tmp_path / "sim"
    rc = cli(["simulate", "--procedural", "1", "--seed", "2", "--particles", "6", "--micrograph-size", "384",
              "--apix", "5", "-o", str(out)])
    assert rc in (0, None)
    assert (out / "structures" / "P2_0000.cif.gz").exists()
    import json

    man = json.loads((out / "P2_0000" / "manifest.json").read_text())
    assert man["source"]["path"].endswith("structures/P2_0000.cif.gz") and man["n_particles"] == 6
