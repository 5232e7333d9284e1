"""Atomic model → map (gemmi), built-in structures, and the bad-input errors of issue 3."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from cryomap.errors import BadInputError
from cryomap.simulate.structure_map import builtin_structures, lowpass, model_extent, structure_to_map


def test_builtins_are_packaged():
    b = builtin_structures()
    assert {"7PBL", "7CTH", "4JSV", "1BHL"} <= set(b)
    assert all(p.exists() and p.stat().st_size > 1000 for p in b.values())


def test_map_is_centred_on_the_centre_of_mass_with_mass_proportional_density():
    apix, box = 2.0, 48
    m = structure_to_map("1BHL", apix, box)
    assert m.apix == apix and m.data.shape == (box, box, box)
    v = np.clip(m.data, 0, None)
    z, y, x = np.indices(v.shape)
    com = [(v * a).sum() / v.sum() for a in (x, y, z)]
    assert np.allclose(com, box // 2, atol=0.5)
    # total scattering potential scales with the number of atoms: 4JSV (22k atoms) ≫ 1BHL (1.1k)
    big = structure_to_map("4JSV", 4.0, 64)
    ratio = big.data.sum() * 4.0**3 / (m.data.sum() * apix**3)
    assert 12 < ratio < 30
    d, mass = model_extent("1BHL")
    assert 50 < d < 80 and 10 < mass < 16


def test_lowpass_removes_power_beyond_the_resolution():
    m = structure_to_map("1BHL", 1.5, 48, resolution=8.0)
    f = np.abs(np.fft.fftn(m.data)) ** 2
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(48) / 1.5] * 3, indexing="ij")))
    assert f[k > 1 / 8.0 + 1 / (48 * 1.5)].sum() < 1e-6 * f.sum()
    raw = structure_to_map("1BHL", 1.5, 48).data
    assert np.allclose(lowpass(raw, 1.5, 8.0), m.data, atol=1e-5 * np.abs(raw).max())


def test_existing_map_as_source(shared_data, tmp_path):
    from cryomap.io.mrc import read_map, write_mrc

    ribo = read_map(shared_data / "maps" / "70S_ribosome_65px.mrc", apix=1.0)
    src = write_mrc(tmp_path / "ribo.mrc", ribo.data, 1.0)
    m = structure_to_map(src, 1.0, 64)
    assert m.data.shape == (64,) * 3
    # the map's centre voxel (65 // 2 = 32) lands on the new box's centre (64 // 2 = 32)
    assert np.array_equal(m.data, ribo.data[:64, :64, :64])
    coarse = structure_to_map(src, 2.0, 40)  # resampled to 2 Å/px (Fourier cropping), padded
    assert coarse.apix == 2.0 and coarse.data.shape == (40,) * 3
    assert np.isclose(coarse.data.sum() * 8.0, ribo.data.sum(), rtol=0.05)


def test_unreadable_structure_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("this is not mmCIF\n")
    with pytest.raises(BadInputError) as err:
        structure_to_map(bad, 2.0, 32)
    assert "broken.cif" in str(err.value) and "\n" not in str(err.value)


def test_empty_model_is_rejected(tmp_path):
    empty = tmp_path / "empty.pdb.gz"
    with gzip.open(empty, "wt") as fh:
        fh.write("HEADER    EMPTY\nEND\n")
    with pytest.raises(BadInputError, match="no atoms"):
        structure_to_map(empty, 2.0, 32)


def test_box_too_small_names_the_size_needed():
    with pytest.raises(BadInputError, match=r"too small.*at least \d+ px"):
        structure_to_map("7PBL", 2.0, 32)


def test_missing_file_lists_the_builtins(tmp_path):
    with pytest.raises(BadInputError, match="7PBL"):
        structure_to_map(tmp_path / "nope.pdb", 2.0, 32)
