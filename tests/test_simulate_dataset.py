"""Simulated CryoPPP-layout datasets: layout, ground truth meaning, SNR, CTF zeros, errors (issue 3)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cryomap.errors import BadInputError, OutputExistsError
from cryomap.io.mrc import read_map, read_mrc, read_stack
from cryomap.io.star import read_star
from cryomap.core.ctf import CtfParams, apply_ctf, ctf_params_from_table, ctf_zero_frequencies
from cryomap.simulate.dataset import simulate_dataset
from cryomap.simulate.micrograph import crop_boxes, place_particles, render_micrograph
from cryomap.core.projector import project
from cryomap.simulate.structure_map import structure_to_map

APIX = 2.5
SMALL = dict(n_particles=60, micrograph_size=256, apix=APIX, snr=0.1, defocus_range=(12000, 20000), seed=7,
             progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "data"
    folders = simulate_dataset(["1BHL"], out, **SMALL)
    return folders[0]


def test_layout_and_contents(dataset):
    t = dataset
    assert t.name == "1BHL"
    manifest = json.loads((t / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["parameters"]["snr"] == 0.1
    box = manifest["box_px"]
    mics = sorted((t / "micrographs").glob("*.mrc"))
    assert len(mics) == manifest["n_micrographs"] and len(mics) >= 1
    assert sorted(p.stem for p in (t / "micrographs_jpg").glob("*.jpg")) == [p.stem for p in mics]
    m0 = read_mrc(mics[0])
    assert m0.apix == pytest.approx(APIX) and m0.data.shape == (256, 256)

    star = read_star(t / "ground_truth" / "1BHL_particles_selected.star")
    df = star.particles
    assert len(df) == 60 and star.optics is not None
    for col in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV",
                "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                "rlnImagePixelSize", "rlnMicrographPixelSize", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                "rlnOriginXAngst", "rlnOriginYAngst"):
        assert col in df, col
    assert all((t / name).exists() for name in df.rlnMicrographName.unique())
    assert (df.rlnDefocusU >= df.rlnDefocusV).all()
    assert df.rlnDefocusU.between(11000, 21000).all()

    # the CSVs hold the same picks as the STAR, x = column, y = row, header exactly as CryoPPP
    rows = []
    for mic in mics:
        csv = t / "ground_truth" / "particle_coordinates" / f"{mic.stem}.csv"
        assert csv.read_text().splitlines()[0] == "X-Coordinate,Y-Coordinate,Diameter"
        c = pd.read_csv(csv)
        c["mic"] = f"micrographs/{mic.name}"
        rows.append(c)
    coords = pd.concat(rows, ignore_index=True)
    assert np.array_equal(coords["X-Coordinate"].to_numpy(), df.rlnCoordinateX.to_numpy().astype(int))
    assert np.array_equal(coords["Y-Coordinate"].to_numpy(), df.rlnCoordinateY.to_numpy().astype(int))
    assert list(coords["mic"]) == list(df.rlnMicrographName)
    # non-overlapping: picks on one micrograph are at least a diameter apart
    for _, g in coords.groupby("mic"):
        xy = g[["X-Coordinate", "Y-Coordinate"]].to_numpy(float)
        dist = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
        assert dist.min() >= g["Diameter"].iloc[0] - 1

    truth = read_map(t / "maps" / "1BHL_truth.mrc")
    assert truth.apix == pytest.approx(APIX) and truth.data.shape == (box,) * 3
    clean_star = read_star(t / "clean" / "particles.star").particles
    clean = read_stack(t / "clean" / "particles.mrcs")
    assert clean.data.shape == (60, box, box) and clean.apix == pytest.approx(APIX)
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        assert np.allclose(clean_star[col], df[col])
    assert "rlnDefocusU" not in clean_star  # clean images carry no CTF


def test_poses_mean_what_relion_means(dataset):
    """Projecting the truth map with a row's angles and origin gives that row's clean image."""
    t = dataset
    truth = read_map(t / "maps" / "1BHL_truth.mrc")
    df = read_star(t / "clean" / "particles.star").particles
    clean = read_stack(t / "clean" / "particles.mrcs").data
    ours = project(truth.data, df.rlnAngleRot, df.rlnAngleTilt, df.rlnAnglePsi,
                   df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), truth.apix)
    assert np.allclose(ours, clean, atol=1e-4 * np.abs(clean).max())


def test_particles_sit_at_the_written_coordinates(dataset, tmp_path):
    """Crops at the picks match the CTF-modulated clean image far better than crops 4 px away."""
    out = simulate_dataset(["1BHL"], tmp_path / "hi", **{**SMALL, "snr": 4.0})[0]
    df = read_star(out / "ground_truth" / "1BHL_particles_selected.star").particles
    clean = read_stack(out / "clean" / "particles.mrcs").data
    expected = apply_ctf(clean, ctf_params_from_table(df), APIX)
    box = clean.shape[-1]
    good, off = [], []
    for name, g in df.groupby("rlnMicrographName", sort=False):
        mic = -read_mrc(out / name).data  # invert: particles bright, as the STAR convention
        xy = g[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(int)
        for shift, acc in (((0, 0), good), ((4, 0), off)):
            crops = crop_boxes(np.pad(mic, 8, mode="reflect"), xy + 8 + np.array(shift), box)
            for c, e in zip(crops, expected[g.index]):
                acc.append(np.corrcoef(c.ravel(), e.ravel())[0, 1])
    assert np.mean(good) > 0.75
    assert np.mean(good) > np.mean(off) + 0.3


def test_average_of_one_orientation_recovers_the_clean_projection():
    # 100 particles at SNR 0.1: the average has SNR ≈ 10, so its correlation with the truth
    # should be ≈ sqrt(10 / 11) ≈ 0.95
    apix, box, size, n = 2.5, 40, 512, 100
    truth = structure_to_map("1BHL", apix, box).data
    rng = np.random.default_rng(3)
    coords = place_particles(n, size, box, 30, rng)
    clean = project(truth, np.full(n, 20.0), np.full(n, 70.0), np.full(n, -40.0))
    ctf = CtfParams(np.full(n, 15000.0), np.full(n, 15000.0), np.zeros(n))
    layers = render_micrograph(clean, coords, ctf, CtfParams(15000.0, 15000.0, 0.0), size=size, apix=apix,
                               snr=0.1, dose=40, ice_fraction=0.25, gradient=0.03, rng=rng)
    crops = crop_boxes(-layers.counts, coords, box)
    crops -= crops.mean(axis=(1, 2), keepdims=True)
    average = crops.mean(0)
    reference = apply_ctf(clean[:1], CtfParams(15000.0, 15000.0, 0.0), apix)[0]
    assert np.corrcoef(average.ravel(), reference.ravel())[0, 1] > 0.9
    # a single noisy particle is far worse: the average is what recovers it
    assert np.corrcoef(crops[0].ravel(), reference.ravel())[0, 1] < 0.6


def test_cryomap_extract_of_one_orientation_averages_to_the_clean_projection(tmp_path):
    """The same check through the real pipeline: write the micrograph and its CSV picks in the CryoPPP
    layout, run ``extract_particles`` (RELION normalisation, contrast inverted), average the stack."""
    from cryomap.io.coords import write_cryoppp_csv
    from cryomap.io.mrc import write_mrc
    from cryomap.particles.extract import extract_particles

    apix, box, size, n = 2.5, 40, 512, 100
    truth = structure_to_map("1BHL", apix, box).data
    rng = np.random.default_rng(4)
    coords = place_particles(n, size, box, 30, rng)
    origins = rng.uniform(-0.5, 0.5, (n, 2)) * apix  # sub-pixel offsets, as the simulator draws them
    clean = project(truth, np.full(n, 20.0), np.full(n, 70.0), np.full(n, -40.0), origins, apix)
    ctf = CtfParams(np.full(n, 15000.0), np.full(n, 15000.0), np.zeros(n))
    layers = render_micrograph(clean, coords, ctf, CtfParams(15000.0, 15000.0, 0.0), size=size, apix=apix,
                               snr=0.1, dose=40, ice_fraction=0.25, gradient=0.03, rng=rng)
    root = tmp_path / "10999"
    write_mrc(root / "micrographs" / "m.mrc", layers.counts, apix)
    write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / "m.csv",
                      pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "diameter": 30}))
    res = extract_particles(root, tmp_path / "out", box, invert=True, progress=False)
    assert res.n_particles == n and res.apix == pytest.approx(apix)
    average = np.asarray(read_stack(res.stack_path).data).mean(0)
    reference = apply_ctf(project(truth, [20.0], [70.0], [-40.0]), CtfParams(15000.0, 15000.0, 0.0), apix)[0]
    # averaging 100 particles at SNR 0.1 (±0.5 px offsets blur it slightly): expected ≈ 0.94
    assert np.corrcoef(average.ravel(), reference.ravel())[0, 1] > 0.9
    # not inverting, or cutting the boxes 3 px off the picks, breaks it
    flipped = extract_particles(root, tmp_path / "out2", box, progress=False)
    assert np.corrcoef(np.asarray(read_stack(flipped.stack_path).data).mean(0).ravel(), reference.ravel())[0, 1] < -0.9
    write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / "m.csv",
                      pd.DataFrame({"x": coords[:, 0] + 3, "y": coords[:, 1], "diameter": 30}), force=True)
    off = extract_particles(root, tmp_path / "out3", box, invert=True, progress=False)
    assert np.corrcoef(np.asarray(read_stack(off.stack_path).data).mean(0).ravel(), reference.ravel())[0, 1] < 0.8


@pytest.mark.parametrize("snr", [0.05, 1.0])
def test_measured_snr_matches_the_request(snr):
    apix, box, size, n = 2.5, 40, 512, 80
    truth = structure_to_map("1BHL", apix, box).data
    rng = np.random.default_rng(11)
    from cryomap.core.euler import random_euler_angles

    coords = place_particles(n, size, box, 30, rng)
    clean = project(truth, *random_euler_angles(n, rng))
    du = rng.uniform(12000, 20000, n)
    layers = render_micrograph(clean, coords, CtfParams(du, du - 200, np.full(n, 30.0)),
                               CtfParams(16000.0, 15800.0, 30.0), size=size, apix=apix, snr=snr, dose=40,
                               ice_fraction=0.25, gradient=0.03, rng=rng)
    signal = crop_boxes(layers.particle_signal, coords, box)
    noise = crop_boxes(layers.counts - layers.background - layers.particle_signal, coords, box)
    measured = signal.var(axis=(1, 2)).mean() / noise.var(axis=(1, 2)).mean()
    assert measured == pytest.approx(snr, rel=0.10)


def test_ctf_zeros_in_the_particle_power_spectrum():
    """Minima of a simulated particle box's power spectrum fall on the CTF zeros for its defocus."""
    apix, box, size, n, defocus = 2.0, 96, 640, 30, 10000.0
    truth = structure_to_map("1BHL", apix, box).data
    rng = np.random.default_rng(5)
    from cryomap.core.euler import random_euler_angles

    coords = place_particles(n, size, box, 40, rng)
    clean = project(truth, *random_euler_angles(n, rng))
    ctf = CtfParams(np.full(n, defocus), np.full(n, defocus), np.zeros(n))
    layers = render_micrograph(clean, coords, ctf, CtfParams(defocus, defocus, 0.0), size=size, apix=apix,
                               snr=2.0, dose=1e4, ice_fraction=0.5, gradient=0.0, rng=rng)
    crops = crop_boxes(layers.counts, coords, box)
    crops = crops - crops.mean(axis=(1, 2), keepdims=True)
    ps = (np.abs(np.fft.fft2(crops)) ** 2).mean(0)  # incoherent average over the particles
    f = np.fft.fftfreq(box) / apix
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    step = 1.0 / (box * apix)
    shells = np.rint(radius / step).astype(int)
    profile = np.bincount(shells.ravel(), ps.ravel()) / np.bincount(shells.ravel())
    expected = ctf_zero_frequencies(defocus, 300.0, 2.7, 0.1, 0.5 / apix, n=3)
    log_profile = np.log(profile)
    for z in expected:
        k = int(round(z / step))
        window = log_profile[k - 3:k + 4]
        # remove the falling envelope (a straight line in log power), then the dip must sit
        # within one shell of the predicted zero
        x = np.arange(-3, 4)
        detrended = window - np.polyval(np.polyfit(x, window, 1), x)
        assert abs(int(np.argmin(detrended)) - 3) <= 1, (z, window)


def test_deterministic_for_a_seed(tmp_path):
    kw = {**SMALL, "n_particles": 10}
    a = simulate_dataset(["1BHL"], tmp_path / "a", **kw)[0]
    b = simulate_dataset(["1BHL"], tmp_path / "b", **kw)[0]
    c = simulate_dataset(["1BHL"], tmp_path / "c", **{**kw, "seed": 8})[0]
    ma, mb, mc = (read_mrc(next((x / "micrographs").glob("*.mrc"))).data for x in (a, b, c))
    assert np.array_equal(ma, mb) and not np.array_equal(ma, mc)
    assert (a / "ground_truth" / "1BHL_particles_selected.star").read_text().split("\n", 2)[2] == \
        (b / "ground_truth" / "1BHL_particles_selected.star").read_text().split("\n", 2)[2]


@pytest.mark.parametrize("bad, message", [
    ({"snr": 0.0}, "SNR"),
    ({"snr": -1.0}, "SNR"),
    ({"micrograph_size": 32}, "smaller than"),
    ({"n_particles": 500, "n_micrographs": 1}, "hold at most"),
    ({"box": 16}, "too small for 1BHL"),
])
def test_bad_requests_fail_cleanly_and_write_nothing(tmp_path, bad, message):
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match=message) as err:
        simulate_dataset(["1BHL"], out, **{**SMALL, **bad})
    assert "\n" not in str(err.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unreadable_structure_and_existing_output(tmp_path):
    bad = tmp_path / "junk.pdb"
    bad.write_bytes(b"\x00\x01 not a structure")
    with pytest.raises(BadInputError):
        simulate_dataset([bad], tmp_path / "o1", **SMALL)
    assert not (tmp_path / "o1").exists()
    (tmp_path / "o2").mkdir()
    with pytest.raises(OutputExistsError):
        simulate_dataset(["1BHL"], tmp_path / "o2", **SMALL)
