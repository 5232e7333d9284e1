"""``cryomap reconstruct / abinitio / refine``: outputs, and bad input as one line with nothing written (issue 16)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryomap.cli import main
from cryomap.core.ctf import CtfParams, apply_ctf
from cryomap.core.euler import random_euler_angles
from cryomap.core.projector import project
from cryomap.io.mrc import read_map, write_mrc
from cryomap.io.star import format_image_name, read_star, write_star

BOX, APIX = 24, 4.0


def _blobs(box: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2).astype(np.float32)
    v = np.zeros((box,) * 3, np.float32)
    for _ in range(6):
        c = rng.uniform(-box / 6, box / 6, 3)
        v += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 1.5**2)).astype(np.float32)
    return v


def _write(folder, n: int = 120, ctf: bool = True, poses: bool = True, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = _blobs(BOX)
    rot, tilt, psi = random_euler_angles(n, rng)
    images = project(truth, rot, tilt, psi, apix=APIX)
    du = rng.uniform(1.2e4, 2.2e4, n)
    if ctf:
        images = apply_ctf(images, CtfParams(du, du, np.zeros(n)), APIX)
    images = images + rng.normal(0, images.std(), images.shape).astype(np.float32)
    write_mrc(folder / "p.mrcs", images, APIX)
    df = pd.DataFrame({"rlnImageName": [format_image_name(i + 1, "p.mrcs") for i in range(n)],
                       "rlnOpticsGroup": 1, "rlnImagePixelSize": APIX, "rlnImageSize": BOX})
    if poses:
        df = df.assign(rlnAngleRot=rot, rlnAngleTilt=tilt, rlnAnglePsi=psi, rlnOriginXAngst=0.0, rlnOriginYAngst=0.0)
    if ctf:
        df = df.assign(rlnDefocusU=du, rlnDefocusV=du, rlnDefocusAngle=0.0, rlnVoltage=300.0,
                       rlnSphericalAberration=2.7, rlnAmplitudeContrast=0.1, rlnPhaseShift=0.0)
    write_star(folder / "p.star", df)
    write_mrc(folder / "truth.mrc", truth, APIX)
    return folder / "p.star", truth


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_reconstruct_writes_map_half_maps_and_the_split(tmp_path, capsys):
    star, truth = _write(tmp_path / "d")
    out = tmp_path / "o" / "map.mrc"
    assert main(["reconstruct", str(star), "-o", str(out), "--half-sets"]) == 0
    assert "half-set FSC 0.143" in capsys.readouterr().err
    full = read_map(out).data
    assert np.corrcoef(full.ravel(), truth.ravel())[0, 1] > 0.8
    h1, h2 = read_map(out.with_name("map_half1.mrc")).data, read_map(out.with_name("map_half2.mrc")).data
    assert not np.allclose(h1, h2)
    split = read_star(out.with_name("map_particles.star")).particles
    assert sorted(split["rlnRandomSubset"].unique()) == [1, 2]
    # the split written back is the one used again, and existing outputs need --force
    rc = main(["reconstruct", str(out.with_name("map_particles.star")), "-o", str(out)])
    assert "already exists" in _one_line_error(capsys, rc)
    assert main(["reconstruct", str(out.with_name("map_particles.star")), "-o", str(out), "--half-sets", "--force",
                 "--symmetry", "c1", "--wiener-constant", "1"]) == 0
    assert "rlnRandomSubset" in capsys.readouterr().err


def test_particles_without_ctf_are_refused_unless_no_ctf(tmp_path, capsys):
    star, _ = _write(tmp_path / "d", ctf=False)
    out = tmp_path / "o" / "map.mrc"
    for cmd in (["reconstruct", str(star), "-o", str(out)], ["abinitio", str(star), "-o", str(tmp_path / "ab")]):
        err = _one_line_error(capsys, main(cmd))
        assert "CTF" in err and "--no-ctf" in err
    assert not out.exists() and not (tmp_path / "ab").exists()
    assert main(["reconstruct", str(star), "-o", str(out), "--no-ctf"]) == 0
    assert out.exists()


def test_too_few_particles_unknown_symmetry_and_no_poses(tmp_path, capsys):
    star, _ = _write(tmp_path / "d", n=3)
    out = tmp_path / "o" / "map.mrc"
    assert "at least" in _one_line_error(capsys, main(["reconstruct", str(star), "-o", str(out)]))
    assert "at least" in _one_line_error(capsys, main(["abinitio", str(star), "-o", str(tmp_path / "ab")]))
    star, _ = _write(tmp_path / "e", n=40)
    assert "unknown symmetry" in _one_line_error(capsys, main(["reconstruct", str(star), "-o", str(out), "--symmetry", "Q7"]))
    assert "mirror" in _one_line_error(capsys, main(["refine", str(star), "--reference", str(tmp_path / "e" / "truth.mrc"),
                                                      "-o", str(tmp_path / "r"), "--symmetry", "D2h"]))
    star, _ = _write(tmp_path / "f", n=40, poses=False)
    assert "poses" in _one_line_error(capsys, main(["reconstruct", str(star), "-o", str(out)]))
    assert not out.exists() and not (tmp_path / "ab").exists() and not (tmp_path / "r").exists()


def test_refine_reference_checks_and_another_grid(tmp_path, capsys):
    star, truth = _write(tmp_path / "d", n=160)
    flat = tmp_path / "flat.mrc"
    write_mrc(flat, np.zeros((8, 24, 24), np.float32), APIX)
    err = _one_line_error(capsys, main(["refine", str(star), "--reference", str(flat), "-o", str(tmp_path / "r")]))
    assert "cubic" in err and "flat.mrc" in err
    assert "not found" in _one_line_error(capsys, main(["refine", str(star), "--reference", str(tmp_path / "none.mrc"),
                                                        "-o", str(tmp_path / "r")]))
    assert not (tmp_path / "r").exists()
    # a reference at half the pixel size in a bigger box is resampled onto the particles' grid, and said so
    from cryomap.labels.resample import resample_map

    fine = resample_map(truth, APIX, APIX / 2)
    write_mrc(tmp_path / "fine.mrc", fine, APIX / 2)
    assert main(["refine", str(star), "--reference", str(tmp_path / "fine.mrc"), "-o", str(tmp_path / "r"),
                 "--iterations", "1"]) == 0
    assert "resampled" in capsys.readouterr().err
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "particles.star", "fsc.csv", "fsc.png", "log.csv"):
        assert (tmp_path / "r" / name).exists(), name
    m = read_map(tmp_path / "r" / "map.mrc")
    assert m.data.shape == (BOX,) * 3 and m.apix == pytest.approx(APIX)
    fsc = pd.read_csv(tmp_path / "r" / "fsc.csv")
    assert {"fsc_unmasked", "fsc_masked_corrected"} <= set(fsc.columns)
