"""CTF estimation (issue 14): spectra, the fit, patches, the STAR/PNG outputs, extract --ctf, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cryomap.core.ctf import ctf_2d
from cryomap.ctf_estimation.estimate import estimate_ctf
from cryomap.ctf_estimation.fit import FitSettings, fit_spectrum
from cryomap.ctf_estimation.model import CtfGrid, Optics, check_against_core, uva_to_astig
from cryomap.ctf_estimation.power_spectrum import average_spectra, crop_spectrum, frequency_grid
from cryomap.errors import BadInputError
from cryomap.io.mrc import write_mrc
from cryomap.io.star import read_star

APIX = 2.0


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as ``estimate_ctf`` runs (two threads ran the fit up to 20x slower on the busy 2-core machine)."""
    from cryomap.core.threads import torch_threads

    with torch_threads(1):
        yield


def angle_error(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + 90.0) % 180.0 - 90.0)


# --------------------------------------------------------------------------- the model and the spectra

@pytest.mark.parametrize("optics", [Optics(300.0, 2.7, 0.1, 2.0), Optics(200.0, 2.0, 0.07, 1.05)])
def test_fast_ctf_is_the_shared_ctf(optics):
    assert check_against_core(optics) < 1e-3
    # on a cropped grid (virtual pixel size) the CTF is the crop of the full grid's CTF
    n, m = 128, 72
    full = ctf_2d(17000.0, 15500.0, -20.0, voltage=optics.voltage, cs=optics.cs,
                  amplitude_contrast=optics.amplitude_contrast, apix=optics.apix, shape=(n, n), phase_shift=30.0)
    s, th = frequency_grid(m, optics.apix * n / m)
    mean, a, b = uva_to_astig(17000.0, 15500.0, -20.0)
    ours = CtfGrid(s, th, optics, dtype=torch.float64).ctf(mean, a, b, 30.0)[0].reshape(s.shape)
    np.testing.assert_allclose(ours.numpy(), crop_spectrum(full, m)[0].numpy(), atol=2e-3)


def test_averaged_spectrum_of_white_noise_and_a_wave():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 3.0, (1024, 1024)).astype(np.float32)
    sp = average_spectra(img, 1.0, 256)
    assert sp.n_tiles == 7 * 7
    assert float(sp.total[5:, 5:].mean()) == pytest.approx(9.0, rel=0.03)  # taper keeps the scale: σ² per pixel
    # a plane wave of 32 cycles per tile along x peaks at column 32 of row 0
    yy, xx = np.mgrid[0:512, 0:512]
    wave = np.cos(2 * np.pi * 32 / 256 * xx).astype(np.float32)
    p = average_spectra(wave, 1.0, 256).total
    assert tuple(np.unravel_index(int(p.argmax()), p.shape)) == (0, 32)


def _synthetic_spectrum(u, v, angle, ps=0.0, tile=256, apix=1.5, looks=40, seed=0):
    """bg(s) · (1 + 3 env(s) CTF²) with the speckle of ``looks`` averaged periodograms."""
    s, _ = frequency_grid(tile, apix)
    c2 = ctf_2d(u, v, angle, voltage=300, cs=2.7, amplitude_contrast=0.07, apix=apix, shape=(tile, tile),
                phase_shift=ps)[0] ** 2
    bg = 1.0 / (1.0 + (s / 0.04) ** 2) + 0.3
    env = torch.exp(-80 * s**2)
    clean = bg * (1 + 3 * env * c2)
    rng = np.random.default_rng(seed)
    speckle = torch.as_tensor(rng.gamma(looks, 1.0 / looks, clean.shape), dtype=torch.float32)
    return clean * speckle


@pytest.mark.parametrize("u, v, angle", [(21000.0, 20000.0, 35.0), (9000.0, 8900.0, -70.0), (30500.0, 29000.0, 80.0)])
def test_fit_recovers_a_synthetic_spectrum(u, v, angle):
    fit, _ = fit_spectrum(_synthetic_spectrum(u, v, angle), Optics(300, 2.7, 0.07, 1.5), FitSettings())
    assert fit.defocus == pytest.approx((u + v) / 2, abs=20)
    assert fit.astigmatism == pytest.approx(u - v, abs=60)  # 3 µm on a 256 px tile: rings 1.6 px apart at 5 Å
    if u - v >= 300:
        assert angle_error(fit.angle, angle) < 2.0
    assert fit.fom > 0.3 and not fit.at_search_edge and not fit.warnings
    assert 2 * 1.5 <= fit.max_resolution < 8.0  # rings fitted until the tile no longer samples them


def test_fit_recovers_a_phase_shift():
    spec = _synthetic_spectrum(15000.0, 14200.0, 10.0, ps=70.0)
    fit, _ = fit_spectrum(spec, Optics(300, 2.7, 0.07, 1.5), FitSettings(phase_shift=True))
    assert fit.phase_shift == pytest.approx(70.0, abs=5.0)
    assert fit.defocus == pytest.approx(14600.0, abs=60)


def test_search_range_that_excludes_the_truth_says_so():
    spec = _synthetic_spectrum(21000.0, 20000.0, 35.0)
    good, _ = fit_spectrum(spec, Optics(300, 2.7, 0.07, 1.5), FitSettings())
    bad, _ = fit_spectrum(spec, Optics(300, 2.7, 0.07, 1.5), FitSettings(defocus_range=(30000.0, 45000.0)))
    # the fit says so: a figure of merit far below the true one, flagged as low (or at the range's edge)
    assert bad.fom < 0.2 * good.fom and bad.fom < 0.1
    assert any("low figure of merit" in w or "edge of the search range" in w for w in bad.warnings)
    edge, _ = fit_spectrum(spec, Optics(300, 2.7, 0.07, 1.5), FitSettings(defocus_range=(5000.0, 19000.0)))
    assert edge.at_search_edge and any("edge of the search range" in w for w in edge.warnings)


# --------------------------------------------------------------------------- simulated micrographs

@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """8 micrographs of 1024² px, 0.8–3 µm, astigmatism up to 1000 Å, specimen tilted 10°, fitted with 2x2 patches."""
    from cryomap.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("ctf")
    folder = simulate_dataset(["1BHL"], root / "sim", n_particles=8 * 16, micrograph_size=1024, apix=APIX, snr=0.1,
                              defocus_range=(8000.0, 30000.0), seed=5, n_micrographs=8, astigmatism=1000.0,
                              specimen_tilt=10.0, progress=False)[0]
    out = root / "ctf"
    result = estimate_ctf(folder, out, patches=(2, 2), tile=256, progress=False)
    return folder, out, result


def test_simulated_accuracy(simulated):
    folder, out, result = simulated
    truth = pd.DataFrame(json.loads((folder / "manifest.json").read_text())["micrograph_ctf"])
    est = read_star(out / "micrographs_ctf.star").particles
    m = truth.merge(est, left_on="micrograph", right_on="rlnMicrographName")
    assert len(m) == 8
    t_mean = (m.defocus_u + m.defocus_v) / 2
    err = np.abs((m.rlnDefocusU + m.rlnDefocusV) / 2 - t_mean)
    assert t_mean.min() < 12000 and t_mean.max() > 20000  # the set spans the range
    assert np.median(err) <= 100 and np.median(err / t_mean) <= 0.01
    big = (m.defocus_u - m.defocus_v) >= 300
    assert big.sum() >= 3
    assert np.median(angle_error(m.rlnDefocusAngle[big], m.defocus_angle[big])) <= 5.0
    assert (m.rlnCtfFigureOfMerit > 0.2).all() and not result.warnings

    # per particle: the patch model beats the micrograph's single value
    from cryomap.ctf_estimation.attach import EstimatedCtf

    parts = read_star(folder / "ground_truth" / "1BHL_particles_selected.star").particles
    ctf = EstimatedCtf.load(out / "micrographs_ctf.star")
    e_mic, e_patch = [], []
    for name, g in parts.groupby("rlnMicrographName"):
        truth_p = (g.rlnDefocusU + g.rlnDefocusV).to_numpy() / 2
        row = est[est.rlnMicrographName == name].iloc[0]
        e_mic.append(np.abs(truth_p - (row.rlnDefocusU + row.rlnDefocusV) / 2))
        cols = ctf.columns_for(name, g.rlnCoordinateX.to_numpy(), g.rlnCoordinateY.to_numpy())
        e_patch.append(np.abs(truth_p - (cols.rlnDefocusU + cols.rlnDefocusV).to_numpy() / 2))
    assert np.median(np.concatenate(e_patch)) < 0.8 * np.median(np.concatenate(e_mic))


def test_outputs_star_png_and_patch_tables(simulated):
    folder, out, result = simulated
    star = read_star(out / "micrographs_ctf.star")
    assert star.optics is not None
    opt = star.optics.iloc[0]
    assert opt.rlnVoltage == 300 and opt.rlnSphericalAberration == pytest.approx(2.7)
    assert opt.rlnAmplitudeContrast == pytest.approx(0.1) and opt.rlnMicrographPixelSize == pytest.approx(APIX)
    df = star.particles
    for col in ("rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfFigureOfMerit",
                "rlnCtfMaxResolution", "rlnCryomapDefocusModel"):
        assert col in df, col
    assert (df.rlnDefocusU >= df.rlnDefocusV).all()
    assert df.rlnCtfMaxResolution.between(2 * APIX, 8.0).all()
    text = (out / "micrographs_ctf.star").read_text()
    assert "data_optics" in text and "data_micrographs" in text and "# version 30001" in text
    from PIL import Image

    for name in df.rlnMicrographName:
        stem = name.split("/")[-1].rsplit(".", 1)[0]
        with Image.open(out / "diagnostics" / f"{stem}.png") as im:
            assert im.format == "PNG" and im.width > 600 and im.height > 300
        patches = read_star(out / "patches" / f"{stem}.star").particles
        assert len(patches) == 4 and {"rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU"} <= set(patches.columns)
    line = result.summary_line()
    assert "median defocus" in line and "median FOM" in line and str(out) in line


def test_extract_attaches_the_per_particle_ctf(simulated, tmp_path):
    from cryomap.ctf_estimation.attach import EstimatedCtf
    from cryomap.particles.extract import extract_particles

    folder, out, _ = simulated
    res = extract_particles(folder, tmp_path / "parts", 48, invert=True, progress=False,
                            ctf=out / "micrographs_ctf.star")
    parts = read_star(res.star_path).particles
    ctf = EstimatedCtf.load(out / "micrographs_ctf.star")
    assert any("CTF from micrographs_ctf.star" in n for n in res.notes)
    for name, g in parts.groupby("rlnMicrographName"):
        cols = ctf.columns_for(name, g.rlnCoordinateX.to_numpy(), g.rlnCoordinateY.to_numpy())
        np.testing.assert_allclose(g.rlnDefocusU.to_numpy(), cols.rlnDefocusU.to_numpy(), atol=0.01)
        assert g.rlnDefocusU.nunique() > 1  # per particle, not one value per micrograph
    assert "rlnCtfFigureOfMerit" in parts and parts.rlnVoltage.eq(300).all()


# --------------------------------------------------------------------------- bad input

def _mrc(path, data, apix=APIX):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mrc(path, np.asarray(data, dtype=np.float32), apix)
    return path


def test_jpeg_is_refused_unless_asked(simulated, tmp_path):
    import shutil

    folder, _, _ = simulated
    flat = tmp_path / "jpgs"
    flat.mkdir()
    shutil.copy(sorted((folder / "micrographs_jpg").glob("*.jpg"))[0], flat)
    with pytest.raises(BadInputError, match="8-bit JPEG/PNG .* --allow-8bit"):
        estimate_ctf(flat, tmp_path / "o1", tile=256, progress=False)
    # asked anyway: a JPEG has no pixel size, which is the next one line
    with pytest.raises(BadInputError, match="no pixel size.*--apix"):
        estimate_ctf(flat, tmp_path / "o2", tile=256, allow_8bit=True, progress=False)
    res = estimate_ctf(flat, tmp_path / "o3", tile=256, allow_8bit=True, apix=APIX, progress=False)
    assert len(res.table) == 1
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_missing_pixel_size_small_and_constant_micrographs(tmp_path):
    import mrcfile

    rng = np.random.default_rng(1)
    nopx = tmp_path / "nopx" / "m.mrc"
    nopx.parent.mkdir()
    with mrcfile.new(nopx) as mrc:  # header cell 0: no voxel size
        mrc.set_data(rng.normal(size=(600, 600)).astype(np.float32))
    with pytest.raises(BadInputError, match="no pixel size"):
        estimate_ctf(nopx.parent, tmp_path / "o1", tile=256, progress=False)
    small = _mrc(tmp_path / "small" / "m.mrc", rng.normal(size=(200, 300)))
    with pytest.raises(BadInputError, match="smaller than the 512 px tile"):
        estimate_ctf(small, tmp_path / "o2", progress=False)
    const = _mrc(tmp_path / "const" / "m.mrc", np.full((600, 600), 7.0))
    with pytest.raises(BadInputError, match="constant"):
        estimate_ctf(const.parent, tmp_path / "o3", tile=256, progress=False)
    for o in ("o1", "o2", "o3"):
        assert not (tmp_path / o).exists()  # nothing half-written
    # white noise has no rings: it runs, and the summary warns
    noise = _mrc(tmp_path / "noise" / "m.mrc", rng.normal(size=(768, 768)))
    res = estimate_ctf(noise.parent, tmp_path / "o4", tile=256, progress=False)
    assert res.warnings and "WARNING" in res.summary_line()


def test_cli_one_line_errors_and_patches_syntax(tmp_path, capsys):
    from cryomap.cli import main
    from cryomap.commands.ctf import parse_patches

    assert parse_patches("5x3") == (3, 5) and parse_patches(None) is None
    with pytest.raises(BadInputError):
        parse_patches("5by3")
    const = _mrc(tmp_path / "const" / "m.mrc", np.full((600, 600), 7.0))
    assert main(["ctf", str(const.parent), "-o", str(tmp_path / "o"), "--tile", "256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "constant" in err[0] and "m.mrc" in err[0]
    assert main(["ctf", str(const.parent), "-o", str(tmp_path / "o"), "--defocus", "30000", "10000"]) == 2
    assert main(["ctf", str(const.parent), "-o", str(tmp_path / "o"), "--patches", "1x1"]) == 2
