"""Physics conditions and corpus-trained models: simulation routes agree, half-map normalisation,
cube rotations, the pair cache, the particles → learned-map path on the particles' grid, shipped models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryomap.datasets.conditions import build_condition, centre_fit, normalise_halfmaps
from cryomap.datasets.pairs import cube_rotation
from cryomap.datasets.physics import (
    ParticleSettings,
    SettingRanges,
    fourier_halfmaps,
    molecule_volume,
    perturb_matrices,
    reconstruct_particles,
    simulate_particles,
)
from cryomap.errors import BadInputError


@pytest.fixture(scope="module")
def small_molecule():
    from cryomap.simulate.structure_map import builtin_structures, read_model

    return read_model(builtin_structures()["1BHL"])


def _cc(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_fast_fourier_route_equals_images_through_the_engine(small_molecule):
    """Same poses, CTF and pose errors: slices + noise inserted directly ≡ projected images backprojected."""
    vol = molecule_volume(small_molecule, 3.0, 32)
    clean = ParticleSettings(n_particles=300, snr=1e8, apix=3.0, box=32, angle_error_deg=2.0, shift_error_px=0.5)
    fast = fourier_halfmaps(vol, clean, np.random.default_rng(3))
    parts = simulate_particles(vol, clean, np.random.default_rng(3))
    slow = reconstruct_particles(parts)
    assert _cc(fast.full, slow.full) > 0.99
    assert _cc(fast.full, vol) > 0.95
    noisy = ParticleSettings(n_particles=300, snr=0.05, apix=3.0, box=32)
    f = fourier_halfmaps(vol, noisy, np.random.default_rng(4))
    p = simulate_particles(vol, noisy, np.random.default_rng(4))
    # the SNR definition (signal variance in the box / noise variance) is the same on both routes
    assert abs(f.info["noise_var_per_px"] / p.noise_var - 1) < 0.05
    signal = simulate_particles(vol, ParticleSettings(n_particles=300, snr=1e12, apix=3.0, box=32),
                                np.random.default_rng(4)).images
    assert abs(signal.var(axis=(1, 2)).mean() / p.noise_var / 0.05 - 1) < 0.05
    r = reconstruct_particles(p)
    # independent noise, same statistics: both reconstructions correlate with the truth alike
    assert abs(_cc(f.full, vol) - _cc(r.full, vol)) < 0.08


def test_pose_errors_have_the_requested_rms_angle():
    from scipy.spatial.transform import Rotation

    from cryomap.core.euler import euler_to_matrix, random_euler_angles

    A = euler_to_matrix(*random_euler_angles(4000, np.random.default_rng(0)))
    B = perturb_matrices(A, 3.0, np.random.default_rng(1))
    angles = Rotation.from_matrix(np.einsum("nij,nkj->nik", B, A)).magnitude()
    assert abs(np.degrees(np.sqrt((angles**2).mean())) - 3.0) < 0.1


def test_halfmap_normalisation_scales_by_the_signal_not_the_noise():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((24, 24, 24)) * 2.0 + 5.0
    for noise in (0.5, 2.0):
        h1 = s + noise * rng.standard_normal(s.shape)
        h2 = s + noise * rng.standard_normal(s.shape)
        c = normalise_halfmaps(h1, h2)
        inside = c[:, 12 - 8:12 + 8, 12 - 8:12 + 8, 12 - 8:12 + 8]
        assert c.shape == (2, 24, 24, 24) and abs(inside.mean()) < 0.05
        # signal part has unit variance whatever the noise: the covariance of the two channels ≈ 1
        assert abs(np.mean((inside[0] - inside[0].mean()) * (inside[1] - inside[1].mean())) - 1.0) < 0.1
    assert np.allclose(normalise_halfmaps(3 * h1 + 7, 3 * h2 + 7), c, atol=1e-4)  # scale- and offset-free
    cond = build_condition(None, "halfmaps", 24, None, half_maps=(h1, h2))
    assert np.array_equal(cond, c)
    with pytest.raises(ValueError, match="half maps"):
        build_condition(None, "halfmaps", 24, None)


def test_24_cube_rotations_are_distinct_proper_and_exact():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((2, 6, 6, 6))
    outs = [cube_rotation(v, k) for k in range(24)]
    assert np.array_equal(outs[0], v)
    assert len({o.tobytes() for o in outs}) == 24
    mirrored = v[:, ::-1]
    assert all(not np.array_equal(o, mirrored) for o in outs)  # no rotation is a mirror: the hand is kept
    # each is a signed permutation of the axes with determinant +1
    z, y, x = np.meshgrid(*(np.arange(6) - 2.5,) * 3, indexing="ij")
    coords = np.stack([x, y, z])
    for k in range(24):
        moved = np.stack([cube_rotation(c, k) for c in coords]).reshape(3, -1)
        M = np.linalg.lstsq(coords.reshape(3, -1).T, moved.T, rcond=None)[0].T
        assert np.allclose(np.abs(M).sum(0), 1) and np.isclose(np.linalg.det(M), 1.0)
    with pytest.raises(ValueError):
        cube_rotation(v, 24)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    from cryomap.datasets.pairs import build_pairs
    from cryomap.simulate.corpus import corpus_entries

    out = tmp_path_factory.mktemp("pairs") / "cache"
    entries = [e for e in corpus_entries(builtins=True) if e.name in ("1BHL", "4JSV")]
    splits = {"1BHL": "train", "4JSV": "val"}
    ranges = SettingRanges(n_particles=(150, 250), box=24, apix=(7.5, 8.2))
    build_pairs(out, entries, splits, pairs_per_molecule=1, ranges=ranges, n_stack=4, progress=False, command="test")
    return out, entries, splits, ranges


def test_pair_cache_layout_resume_and_splits(tiny_cache):
    from cryomap.datasets.pairs import PairCache, build_pairs

    out, entries, splits, ranges = tiny_cache
    c = PairCache.load(out)
    assert c.data["counts"] == {"train": 1, "val": 1, "test": 0} and c.data["command"] == "test"
    arrays, records = c.arrays("train", ("cond", "label", "stack"))
    assert arrays["cond"].shape == (1, 2, 24, 24, 24) and arrays["cond"].dtype == np.float16
    assert arrays["label"].shape == (1, 1, 24, 24, 24) and 0 <= arrays["label"].min() and arrays["label"].max() <= 1
    assert arrays["stack"].shape == (1, 4, 24, 24)
    assert {r["molecule"] for r in records} == {"1BHL"}
    assert all(150 <= r["settings"]["n_particles"] <= 250 and 7.5 <= r["settings"]["apix"] <= 8.2 for r in records)
    # the condition carries the label: the average of the two half maps correlates with it
    assert _cc(arrays["cond"][0].astype(np.float32).mean(0), arrays["label"][0]) > 0.5
    shard = out / "shards" / "1BHL.npz"
    before = shard.stat().st_mtime_ns
    build_pairs(out, entries, splits, pairs_per_molecule=1, ranges=ranges, n_stack=4, progress=False, command="test")
    assert shard.stat().st_mtime_ns == before  # resumed: nothing rebuilt
    with pytest.raises(BadInputError, match="other settings"):
        build_pairs(out, entries, splits, pairs_per_molecule=2, ranges=ranges, n_stack=4, progress=False)


def test_pair_set_crops_and_rotates_condition_and_label_together(tiny_cache):
    from cryomap.datasets.pairs_data import PairSet

    out = tiny_cache[0]
    ds = PairSet(out, "train", crop=16, samples_per_epoch=10, seed=1)
    ds.cond = np.repeat(ds.label, 2, axis=1)  # a condition equal to its label shows any misregistration
    seen = set()
    for key in range(10):
        cond, label = ds[key]
        assert cond.shape == (2, 16, 16, 16) and label.shape == (1, 16, 16, 16)
        assert torch.equal(cond[:1], label) and torch.equal(cond[1:], label)
        seen.add(label.numpy().tobytes())
    assert len(seen) > 5  # fresh crops / rotations per key
    c2, l2 = PairSet(out, "train", crop=16, samples_per_epoch=10, seed=1)[3]
    assert torch.equal(l2, ds[3][1])  # keyed: the same key draws the same crop and rotation
    stack = PairSet(out, "train", mode="stack", depth=16)
    cond, label = stack[0]
    assert cond.shape == (1, 16, 16, 16) and label.shape == (1, 16, 16, 16)


def test_model_grid_round_trip_keeps_a_smooth_map(small_molecule):
    from cryomap.train.learned_map import plan_grid, to_model_grid, to_particle_grid

    plan = plan_grid(64, 3.2, 4.0, 8)
    assert plan.n == 56 and plan.padded == 70 and abs(plan.model_apix - 4.0) < 1e-9  # 64 × 3.2 Å → 56³ at 4 Å
    assert plan_grid(48, 4.0, 4.0, 8).n == 48
    p = plan_grid(256, 1.06, 4.0, 8)
    assert p.n % 8 == 0 and abs(p.model_apix - 4.0) < 0.02 and p.padded >= 256
    vol = molecule_volume(small_molecule, 3.2, 64)
    from cryomap.evaluate.filters import low_pass

    smooth = low_pass(vol, 3.2, 10.0)
    there = to_model_grid(smooth, plan)
    assert there.shape == (56,) * 3
    back = to_particle_grid(there, plan)
    assert back.shape == (64,) * 3 and _cc(back, smooth) > 0.99


@pytest.fixture(scope="module")
def tiny_run(tiny_cache, tmp_path_factory):
    from cryomap.train.config import config_from_dict
    from cryomap.train.run import train

    run = tmp_path_factory.mktemp("run") / "unet"
    cfg = config_from_dict({
        "model": {"name": "unet3d", "widths": [4, 8], "bottleneck": 8},
        "data": {"pairs_dir": str(tiny_cache[0]), "batch_size": 2, "crop": 16, "samples_per_epoch": 2},
        "trainer": {"max_steps": 2, "progress_bar": False, "log_every": 1}, "loss": {"kind": "mse"},
    })
    train(cfg, run)
    return run


@pytest.fixture(scope="module")
def posed_particles(small_molecule, tmp_path_factory):
    from cryomap.particles.source import ParticleSource
    from cryomap.particles.writer import write_particles

    vol = molecule_volume(small_molecule, 6.0, 30)
    p = simulate_particles(vol, ParticleSettings(n_particles=60, snr=0.1, apix=6.0, box=30), np.random.default_rng(0))
    out = tmp_path_factory.mktemp("particles")
    write_particles(ParticleSource.from_arrays(p.images, 6.0, p.table()), out / "posed", progress=False)
    table = p.table().drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    write_particles(ParticleSource.from_arrays(p.images, 6.0, table), out / "unposed", progress=False)
    return out / "posed" / "particles.star", out / "unposed" / "particles.star"


def test_predict_runs_the_whole_path_onto_the_particles_grid(tiny_run, posed_particles, tmp_path):
    from cryomap.cli import main as cli
    from cryomap.io.mrc import read_map

    meta = json.loads((tiny_run / "model.json").read_text())["config"]["meta"]
    assert meta["source"] == "pairs" and meta["channels"] == 2 and meta["train_molecules"] == ["1BHL"]
    out = tmp_path / "map.mrc"
    assert cli(["predict", "--model", str(tiny_run), "--particles", str(posed_particles[0]), "-o", str(out)]) in (0, None)
    m = read_map(out)
    assert m.data.shape == (30, 30, 30) and abs(m.apix - 6.0) < 1e-4  # the particles' own grid
    assert np.isfinite(m.data).all()


def test_unposed_particles_are_refused_when_abinitio_is_missing(tiny_run, posed_particles, tmp_path, capsys,
                                                                monkeypatch):
    from cryomap.cli import main as cli
    from cryomap.train import learned_map

    monkeypatch.setattr(learned_map, "physics_available", lambda: {"abinitio": False, "refine": False})
    rc = cli(["predict", str(tiny_run), "--particles", str(posed_particles[1]), "-o", str(tmp_path / "m.mrc")])
    err = capsys.readouterr().err
    assert rc == 2 and "no poses" in err and "abinitio" in err and not (tmp_path / "m.mrc").exists()


def test_combiner_learns_to_trust_whichever_map_predicts_the_truth():
    from cryomap.train.combiner import apply_combiner, fit_combiner

    from cryomap.evaluate.filters import low_pass

    def case(seed):
        r = np.random.default_rng(seed)
        truth = low_pass(r.standard_normal((24, 24, 24)).astype(np.float32), 4.0, 9.0)
        halves = np.stack([truth + 0.05 * r.standard_normal(truth.shape) for _ in range(2)]).astype(np.float32)
        learned = low_pass(truth, 4.0, 30.0) + 0.3 * truth.std() * r.standard_normal(truth.shape).astype(np.float32)
        return learned.astype(np.float32), halves, truth

    comb = fit_combiner([case(k) for k in range(3)], 24, 4.0)
    learned, halves, truth = case(9)
    out = apply_combiner(learned, halves, comb, 4.0)
    # here the half maps are nearly noise-free and the "network" blurred: physics must win at every shell
    assert _cc(out, truth) > 0.98 > _cc(learned, truth)
    # a model grid of another size reads the weights by frequency (1/Å)
    big = apply_combiner(centre_fit(learned, 32), np.stack([centre_fit(h, 32) for h in halves]), comb, 4.0)
    assert big.shape == (32,) * 3 and _cc(centre_fit(big, 24), truth) > 0.95


def test_builtin_model_names_resolve_or_fail_in_one_line():
    from cryomap.train.builtin import builtin_models, default_model, resolve_model

    with pytest.raises(BadInputError):
        resolve_model("builtin:no-such-model")
    models = builtin_models()
    if not models:
        pytest.skip("no shipped model in this checkout")
    assert default_model() in models and resolve_model("builtin") == models[default_model()]
    from cryomap.train.predict import load_model

    m = load_model("builtin")
    meta = m.meta
    assert meta["source"] == "pairs" and meta["mode"] == "halfmaps"
    # never trained on the demo's molecules
    assert not set(meta["train_molecules"]) & {"7PBL", "4JSV", "1BHL", "7CTH"}
    assert centre_fit(np.ones((4, 4, 4)), 6).sum() == 64


def test_diffusion_std_is_larger_where_the_prediction_is_wrong(small_molecule):
    """The shipped diffusion model's per-voxel std correlates with its per-voxel error (unseen molecule)."""
    from cryomap.labels.normalize import normalize_map
    from cryomap.train.builtin import builtin_models
    from cryomap.train.learned_map import learned_map_from_halfmaps
    from cryomap.train.predict import load_model

    if "halfmaps-diffusion" not in builtin_models():
        pytest.skip("no shipped diffusion model in this checkout")
    model = load_model("builtin:halfmaps-diffusion")
    assert "1BHL" not in model.meta["train_molecules"]
    vol = molecule_volume(small_molecule, 4.0, 32)
    rec = fourier_halfmaps(vol, ParticleSettings(n_particles=500, snr=0.05, apix=4.0, box=32), np.random.default_rng(0))
    pred, _ = learned_map_from_halfmaps(model, rec.half1, rec.half2, 4.0, samples=4, steps=8, batch=4)
    err = np.abs(pred.map.data - normalize_map(vol))
    assert pred.std is not None and pred.std.data.shape == vol.shape
    assert _cc(pred.std.data, err) > 0.2  # measured 0.46: the model is unsure where it is wrong


def test_cube_rotations_invert_and_rotation_averaging_is_equivariant():
    """inverse_cube_rotation undoes each of the 24 turns; the U-Net averaged over all 24 turns of its input
    answers a turned input with the turned answer (exactly, up to float sums), and 1 turn is the plain network."""
    from cryomap.datasets.pairs import cube_rotation, inverse_cube_rotation
    from cryomap.train.builtin import builtin_models
    from cryomap.train.predict import load_model, predict_from_condition

    v = np.random.default_rng(0).standard_normal((2, 6, 6, 6)).astype(np.float32)
    turned = {cube_rotation(v, k).tobytes() for k in range(24)}
    assert len(turned) == 24  # 24 different turns
    for k in range(24):
        assert np.array_equal(inverse_cube_rotation(cube_rotation(v, k), k), v)
    if "halfmaps-unet" not in builtin_models():
        pytest.skip("no shipped halfmaps U-Net in this checkout")
    model = load_model("builtin:halfmaps-unet")
    assert model.config["predict"]["rotations"] == 24
    rng = np.random.default_rng(1)
    cond = rng.standard_normal((2, 16, 16, 16)).astype(np.float32)
    plain, _ = predict_from_condition(model, cond, rotations=1)
    import torch

    with torch.no_grad():
        assert np.allclose(plain, model.net(torch.from_numpy(cond)[None])[0, 0].numpy())
    avg, _ = predict_from_condition(model, cond)  # the model's own default: 24
    for j in (1, 7, 13, 22):
        other, _ = predict_from_condition(model, np.ascontiguousarray(cube_rotation(cond, j)))
        assert np.allclose(other, cube_rotation(avg, j), atol=1e-5)
    # the plain network is not equivariant: the average really does something
    turned_plain, _ = predict_from_condition(model, np.ascontiguousarray(cube_rotation(cond, 7)), rotations=1)
    assert not np.allclose(turned_plain, cube_rotation(plain, 7), atol=1e-5)
