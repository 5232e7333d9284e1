"""classify2d output layout, the cryoSPARC / RELION importers, and the dataset builder reading the folders."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryomap.classify2d.em import Classify2DParams
from cryomap.classify2d.importers import import_cryosparc, import_relion
from cryomap.classify2d.metrics import purity
from cryomap.classify2d.run import classify_to_folder
from cryomap.classify2d.synthetic import simulate_views
from cryomap.errors import BadInputError
from cryomap.io.star import read_star
from cryomap.particles.source import open_particles
from cryomap.particles.writer import write_particles

APIX = 6.0


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """4 views × 20 particles of 7PBL (32 px, 6 Å/px, SNR 2, CTF) written as a RELION 3.1 stack."""
    root = tmp_path_factory.mktemp("c2d")
    s = simulate_views("7PBL", n_views=4, per_view=20, box=32, apix=APIX, snr=2.0, max_shift_px=1.5, seed=5)
    write_particles(s.source, root / "parts", progress=False)
    return s, root


@pytest.fixture(scope="module")
def classified(sim):
    s, root = sim
    src = open_particles(root / "parts" / "particles.star")
    run = classify_to_folder(src, root / "c2d", Classify2DParams(n_classes=4, iterations=4, offset_range_px=1.5,
                                                                 full_iterations=2), top=3, progress=False)
    return s, root, run


def test_output_layout_and_numbering(classified):
    s, root, run = classified
    out = root / "c2d"
    for name in ("classes.mrcs", "classes.star", "particles.star", "gallery.png", "run.json", ".cryomap-output"):
        assert (out / name).exists(), name
    with mrcfile.open(out / "classes.mrcs") as m:
        assert m.data.shape == (3, 32, 32)  # --top 3
        assert m.voxel_size.x == pytest.approx(APIX)
    classes = starfile.read(out / "classes.star")
    assert list(classes["rlnReferenceImage"]) == ["000001@classes.mrcs", "000002@classes.mrcs", "000003@classes.mrcs"]
    res = classes["rlnEstimatedResolution"].to_numpy()
    assert np.all(np.diff(res) >= -1e-9)  # ranked finest first
    parts = read_star(out / "particles.star").particles
    assert len(parts) == len(s.source)
    assert set(parts["rlnClassNumber"]) <= {1, 2, 3, 4}
    counts = parts["rlnClassNumber"].value_counts()
    assert list(classes["rlnCryomapParticleCount"]) == [int(counts.get(i, 0)) for i in (1, 2, 3)]
    assert purity(parts["rlnClassNumber"].to_numpy(), s.view) >= 0.9
    for col in ("rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnMaxValueProbDistribution"):
        assert col in parts
    assert parts["rlnImageName"].str.contains("@/").all()  # absolute stack paths
    assert open_particles(out / "particles.star").shape == (len(s.source), 32, 32)
    info = json.loads((out / "run.json").read_text())
    assert info["frc_threshold"] == 0.143 and info["kept"] == 3


def test_gallery_is_an_image(classified):
    from PIL import Image

    _, root, _ = classified
    with Image.open(root / "c2d" / "gallery.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100


def _relion_run(root, s, psi_sign: float = 1.0):
    """A RELION-like Class2D job folder: model.star, classes.mrcs, data.star from the simulation's truth."""
    job = root / f"relion{int(psi_sign)}" / "Class2D" / "job001"
    job.mkdir(parents=True)
    stack = "Class2D/job001/run_it025_classes.mrcs"
    with mrcfile.new(job / "run_it025_classes.mrcs") as m:
        m.set_data(s.clean.astype(np.float32))
        m.set_image_stack()
        m.voxel_size = APIX
    k = len(s.clean)
    model = pd.DataFrame({"rlnReferenceImage": [f"{i + 1:06d}@{stack}" for i in range(k)],
                          "rlnClassDistribution": np.bincount(s.view) / len(s.view),
                          "rlnEstimatedResolution": np.array([30.0, 20.0, 25.0, 40.0][:k])})
    starfile.write({"model_general": pd.DataFrame({"rlnReferenceDimensionality": [2]}), "model_classes": model},
                   job / "run_it025_model.star", overwrite=True)
    src = open_particles(root / "parts" / "particles.star")
    tab = src.table.copy()
    tab["rlnImageName"] = src.image_names()
    tab["rlnClassNumber"] = s.view + 1
    tab["rlnAnglePsi"] = psi_sign * s.source.table["rlnAnglePsi"].to_numpy()
    tab["rlnMaxValueProbDistribution"] = 0.9
    from cryomap.io.star import write_star

    write_star(job / "run_it025_data.star", tab)
    return job / "run_it025_model.star"


def test_relion_import_reaverages_with_relion_poses(sim):
    s, root = sim
    model = _relion_run(root, s)
    out = import_relion(model, root / "rel_out")
    info = json.loads((out / "run.json").read_text())
    assert info["pose_check_median_cc"] > 0.9  # RELION's psi/origins re-average to RELION's classes
    assert info["pose_check_median_cc"] > info["pose_check_median_cc_psi_negated"] + 0.02
    assert info["resolution_source"].startswith("cryomap")
    parts = read_star(out / "particles.star").particles
    classes = starfile.read(out / "classes.star")
    # the rank number of each particle's class points at the class whose original number is its view + 1
    original = classes["rlnCryomapOriginalClass"].to_numpy()
    assert np.array_equal(original[parts["rlnClassNumber"].to_numpy() - 1], s.view + 1)


def test_relion_import_with_wrong_poses_falls_back_to_relion_resolution(sim):
    s, root = sim
    model = _relion_run(root, s, psi_sign=-1.0)  # the opposite in-plane convention
    out = import_relion(model, root / "rel_bad")
    info = json.loads((out / "run.json").read_text())
    assert info["pose_check_median_cc"] < info["pose_check_median_cc_psi_negated"]
    assert info["resolution_source"] == "tool"
    classes = starfile.read(out / "classes.star")
    assert list(classes["rlnEstimatedResolution"]) == [20.0, 25.0, 30.0, 40.0]


def test_cryosparc_import(sim):
    s, root = sim
    parts = root / "parts"
    n = len(s.view)
    tab = s.source.table
    dtype = [("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"), ("blob/shape", "<u4", (2,)),
             ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/accel_kv", "<f4"),
             ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/phase_shift_rad", "<f4"),
             ("alignments2D/class", "<u4"), ("alignments2D/pose", "<f4"), ("alignments2D/shift", "<f4", (2,)),
             ("alignments2D/class_posterior", "<f4")]
    arr = np.zeros(n, dtype=dtype)
    arr["uid"] = np.arange(n)
    arr["blob/path"] = b"particles.mrcs"
    arr["blob/idx"] = np.arange(n)
    arr["blob/psize_A"] = APIX
    arr["blob/shape"] = 32
    arr["ctf/df1_A"], arr["ctf/df2_A"] = tab["rlnDefocusU"], tab["rlnDefocusV"]
    arr["ctf/df_angle_rad"] = np.radians(tab["rlnDefocusAngle"])
    arr["ctf/accel_kv"], arr["ctf/cs_mm"], arr["ctf/amp_contrast"] = 300.0, 2.7, 0.1
    arr["alignments2D/class"] = s.view
    arr["alignments2D/pose"] = np.radians(tab["rlnAnglePsi"])
    arr["alignments2D/shift"] = np.column_stack([tab["rlnOriginXAngst"], tab["rlnOriginYAngst"]]) / APIX
    arr["alignments2D/class_posterior"] = 0.75
    with open(parts / "J1_particles.cs", "wb") as fh:
        np.save(fh, arr)
    with mrcfile.new(root / "J1_class_averages.mrc") as m:
        m.set_data(s.clean.astype(np.float32))
        m.voxel_size = APIX
    out = import_cryosparc(parts / "J1_particles.cs", root / "J1_class_averages.mrc", root / "cs_out", top=2)
    info = json.loads((out / "run.json").read_text())
    assert info["pose_check_median_cc"] > 0.8
    p = read_star(out / "particles.star").particles
    assert len(p) == n and p["rlnMaxValueProbDistribution"].eq(0.75).all()
    with mrcfile.open(out / "classes.mrcs") as m:
        assert m.data.shape == (2, 32, 32)
    with pytest.raises(BadInputError, match="alignments2D/class"):
        bare = arr[["uid", "blob/path", "blob/idx", "blob/psize_A"]]
        with open(parts / "bare.cs", "wb") as fh:
            np.save(fh, bare)
        import_cryosparc(parts / "bare.cs", root / "J1_class_averages.mrc", root / "cs_bad")
    assert not (root / "cs_bad").exists()


def test_dataset_builder_takes_classify2d_and_encode_folders(classified, tmp_path):
    """A target names the classify2d and encode output folders; the builder finds classes.mrcs and latents.npy."""
    import yaml

    from cryomap.datasets.build import build_dataset
    from cryomap.encode import EncodeParams, encode_particles
    from cryomap.io.mrc import write_mrc
    from cryomap.simulate.structure_map import structure_to_map

    s, root, _ = classified
    src = open_particles(root / "parts" / "particles.star")
    encode_particles(src, root / "enc", EncodeParams(latent_dim=4, epochs=1, input_size=32, channels=(8, 16)), force=True)
    write_mrc(tmp_path / "map.mrc", structure_to_map("7PBL", APIX, 32).data, APIX)
    for mode, key in (("classes-ordered", "classes"), ("latents", "latents")):
        cfg = {"seed": 0, "label": {"apix": APIX, "box": 32}, "condition": {"mode": mode, "n_images": 2},
               "split": {"by": "particles", "val_fraction": 0.0, "particle_holdout": 0.1},
               "targets": [{"name": "t", "particles": str(root / "parts" / "particles.star"), "map": str(tmp_path / "map.mrc"),
                            "class_averages": str(root / "c2d"), "latents": str(root / "enc")}]}
        (tmp_path / f"{key}.yaml").write_text(yaml.safe_dump(cfg))
        out = build_dataset(tmp_path / f"{key}.yaml", tmp_path / f"ds_{key}")
        manifest = json.loads((out / "manifest.json").read_text())
        entry = manifest["targets"][0]
        assert entry["n_classes"] == 3  # the --top 3 classes of the classify2d folder
        assert entry["latent_dim"] == 4
        assert np.load(out / entry["latents"]).shape == (len(s.view), 4)
