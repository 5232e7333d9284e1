"""Readers for STAR flavours, cryoSPARC .cs, coordinates, micrographs and CryoPPP folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryomap.errors import BadInputError
from cryomap.io.coords import read_coordinates, write_box, write_cryoppp_csv
from cryomap.io.cryoppp import discover, micrograph_key
from cryomap.io.cs import read_cs, resolve_blob_path
from cryomap.io.describe import describe
from cryomap.io.micrograph import micrograph_info, read_micrograph
from cryomap.io.mrc import write_mrc
from cryomap.io.star import read_star, write_star

STARS = ["relion31", "cryosparc_exported_relion31", "relion30_sample", "empiar_10076_7"]


@pytest.mark.parametrize("name", STARS + ["../relion_projections/rln_proj_65_shifted"])
def test_star_roundtrip_keeps_values_columns_and_dtypes(shared_data, tmp_path, name):
    table = read_star(shared_data / "star" / f"{name}.star")
    write_star(tmp_path / "out.star", table.particles)
    back = read_star(tmp_path / "out.star")
    assert list(back.particles.columns) == list(table.particles.columns)
    assert back.particles.equals(table.particles)
    assert back.optics is not None and "rlnOpticsGroup" in back.optics


def test_relion30_pixel_size_from_detector_and_magnification(shared_data):
    t = read_star(shared_data / "star" / "empiar_10076_7.star")
    # 5 µm detector pixel at 38168x: 5e4 / 38168 Å
    assert t.pixel_size == pytest.approx(5e4 / 38168, abs=1e-5)
    assert t.optics is None and (t.particles["rlnOpticsGroup"] == 1).all()
    t30 = read_star(shared_data / "star" / "relion30_sample.star")
    assert t30.pixel_size == pytest.approx(5e4 / 37369.207031, abs=1e-5)
    # per-particle voltage differs (300 and 200 kV) and stays per particle
    assert set(t30.particles["rlnVoltage"]) == {300.0, 200.0}


def test_cryosparc_exported_star(shared_data):
    t = read_star(shared_data / "star" / "cryosparc_exported_relion31.star")
    p = t.particles
    assert (p["rlnOpticsGroup"] == 4).all() and t.pixel_size == pytest.approx(0.8257)
    assert {"rlnOriginXAngst", "rlnOriginYAngst", "rlnVoltage", "rlnDefocusU"} <= set(p.columns)
    key = micrograph_key(p["rlnMicrographName"].iloc[0])
    assert key.startswith("PDE5A_apo_17") and "/" not in key and not key.endswith(".mrc")


def test_cs_matches_star_and_units(shared_data):
    cs = read_cs(shared_data / "star" / "empiar_10076_7.cs")
    star = read_star(shared_data / "star" / "empiar_10076_7.star").particles
    assert len(cs) == len(star) == 7
    np.testing.assert_allclose(cs["rlnDefocusU"], star["rlnDefocusU"], rtol=1e-6)
    np.testing.assert_allclose(cs["rlnDefocusV"], star["rlnDefocusV"], rtol=1e-6)
    np.testing.assert_allclose(cs["rlnDefocusAngle"], star["rlnDefocusAngle"], atol=1e-3)  # rad -> deg
    np.testing.assert_allclose(cs["rlnImagePixelSize"], star["rlnImagePixelSize"], atol=1e-5)
    assert list(cs["rlnImageName"].str.split("@").str[0].astype(int)) == list(range(1, 8))
    # blob/path says .mrc, the stack on disk is .mrcs
    stack = resolve_blob_path(cs["rlnImageName"].iloc[0].split("@")[1], shared_data / "star" / "empiar_10076_7.cs")
    assert stack.name == "empiar_10076_7.mrcs"


def test_cs_shifts_are_blob_pixels_not_angstrom(tmp_path):
    dt = np.dtype([("uid", "<u8"), ("blob/path", "S10"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
                   ("alignments2D/shift", "<f4", (2,)), ("alignments2D/pose", "<f4"), ("ctf/df1_A", "<f4")])
    arr = np.zeros(2, dtype=dt)
    arr["blob/psize_A"] = 2.5
    arr["alignments2D/shift"] = [[1.0, -2.0], [0.5, 0.0]]
    arr["alignments2D/pose"] = [np.pi / 2, 0]
    arr["ctf/df1_A"] = 12000
    with open(tmp_path / "p.cs", "wb") as fh:
        np.save(fh, arr)
    df = read_cs(tmp_path / "p.cs")
    np.testing.assert_allclose(df["rlnOriginXAngst"], [2.5, 1.25])
    np.testing.assert_allclose(df["rlnOriginYAngst"], [-5.0, 0.0])
    np.testing.assert_allclose(df["rlnAnglePsi"], [90.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(df["rlnDefocusU"], 12000)


def _pyem_expmap(e: np.ndarray) -> np.ndarray:
    """pyem.geom.expmap as pyem writes it (its skew matrix is transposed: it returns Rodrigues(e)ᵀ)."""
    theta = np.linalg.norm(e)
    w = e / theta
    k = np.array([[0, w[2], -w[1]], [-w[2], 0, w[0]], [w[1], -w[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def test_cs_poses_follow_pyem_csparc2star(tmp_path):
    """pyem sets RELION's Euler matrix A(rot, tilt, psi) = expmap(pose); cryomap must give the same angles."""
    from cryomap.core.euler import euler_to_matrix

    rng = np.random.default_rng(4)
    poses = rng.uniform(-1.5, 1.5, (5, 3))
    dt = np.dtype([("alignments3D/pose", "<f4", (3,)), ("blob/psize_A", "<f4"), ("alignments3D/shift", "<f4", (2,))])
    arr = np.zeros(5, dtype=dt)
    arr["alignments3D/pose"] = poses
    arr["blob/psize_A"] = 1.0
    with open(tmp_path / "p.cs", "wb") as fh:
        np.save(fh, arr)
    df = read_cs(tmp_path / "p.cs")
    ours = euler_to_matrix(df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"])
    for a, pose in zip(ours, arr["alignments3D/pose"].astype(float)):
        np.testing.assert_allclose(a, _pyem_expmap(pose), atol=1e-5)
    # the inverse rotation (the old, wrong reading) would not match
    assert not np.allclose(ours[0], _pyem_expmap(poses[0]).T, atol=1e-3)
    # gimbal lock, decomposed as RELION/pyem do (rot = 0): 30° about z is psi = 30°
    from cryomap.io.cs import _euler_zyz_from_rotvec

    np.testing.assert_allclose(_euler_zyz_from_rotvec(np.array([[0.0, 0.0, np.pi / 6]])), [[0.0, 0.0, 30.0]],
                               atol=1e-9)


def test_cs_shift_uses_alignment_pixel_size_and_optics_group_is_one_based(tmp_path):
    dt = np.dtype([("blob/psize_A", "<f4"), ("alignments3D/psize_A", "<f4"), ("alignments3D/shift", "<f4", (2,)),
                   ("alignments3D/pose", "<f4", (3,)), ("ctf/exp_group_id", "<u4")])
    arr = np.zeros(2, dtype=dt)
    arr["blob/psize_A"] = 1.0
    arr["alignments3D/psize_A"] = 2.0  # refined on 2x binned images: shifts are in 2 Å pixels
    arr["alignments3D/shift"] = [[1.5, -1.0], [0.0, 3.0]]
    arr["ctf/exp_group_id"] = [0, 3]
    with open(tmp_path / "p.cs", "wb") as fh:
        np.save(fh, arr)
    df = read_cs(tmp_path / "p.cs")
    np.testing.assert_allclose(df["rlnOriginXAngst"], [3.0, 0.0])
    np.testing.assert_allclose(df["rlnOriginYAngst"], [-2.0, 6.0])
    assert list(df["rlnOpticsGroup"]) == [1, 4]


def test_cryoppp_csv_real_file(shared_data, tmp_path):
    src = shared_data / "empiar10017" / "Falcon_2012_06_12-14_33_35_0.csv"
    df = read_coordinates(src)
    assert len(df) == 629 and (df["diameter"] == 108).all()
    assert df.loc[0, "x"] == 3752 and df.loc[0, "y"] == 693
    # write → read gives the same picks, and the file CryoPPP ships byte for byte (integers, same header)
    write_cryoppp_csv(tmp_path / "back.csv", df)
    pd.testing.assert_frame_equal(read_coordinates(tmp_path / "back.csv"), df)
    assert (tmp_path / "back.csv").read_text().split() == src.read_text().split()


def test_coordinate_roundtrips_csv_box_star(tmp_path):
    df = pd.DataFrame({"x": [10.0, 200.5, 33.0], "y": [40.0, 5.0, 60.25], "diameter": [20.0, 20.0, 20.0]})
    write_cryoppp_csv(tmp_path / "a.csv", df)
    back = read_coordinates(tmp_path / "a.csv")
    np.testing.assert_allclose(back[["x", "y", "diameter"]], df[["x", "y", "diameter"]])
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "X-Coordinate,Y-Coordinate,Diameter"
    write_box(tmp_path / "a.box", df, box=32)
    box = read_coordinates(tmp_path / "a.box")
    np.testing.assert_allclose(box[["x", "y"]], df[["x", "y"]])
    assert (box["diameter"] == 32).all()
    star = pd.DataFrame({"rlnCoordinateX": df.x, "rlnCoordinateY": df.y, "rlnMicrographName": "m.mrc"})
    write_star(tmp_path / "c.star", star)
    s = read_coordinates(tmp_path / "c.star")
    np.testing.assert_allclose(s[["x", "y"]], df[["x", "y"]])


def test_coordinate_files_without_coordinates_are_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BadInputError, match="bad.csv.*no coordinate columns"):
        read_coordinates(tmp_path / "bad.csv")
    write_star(tmp_path / "nocoord.star", pd.DataFrame({"rlnDefocusU": [1.0], "rlnMicrographName": ["m.mrc"]}))
    with pytest.raises(BadInputError, match="no coordinate columns"):
        read_coordinates(tmp_path / "nocoord.star")
    (tmp_path / "x.txt").write_text("1 2\n")
    with pytest.raises(BadInputError, match="unknown coordinate file type"):
        read_coordinates(tmp_path / "x.txt")


def test_real_jpeg_micrograph(shared_data):
    path = shared_data / "empiar10017" / "Falcon_2012_06_12-14_33_35_0.jpg"
    info = micrograph_info(path)
    assert info.shape == (4096, 4096) and info.apix is None
    m = read_micrograph(path)
    assert m.data.shape == (4096, 4096) and m.data.dtype == np.float32 and m.apix is None
    assert 0 <= m.data.min() and m.data.max() <= 255 and m.data.std() > 1
    assert read_micrograph(path, apix=1.77).apix == 1.77


def test_micrograph_formats_roundtrip(tmp_path):
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(1)
    img8 = rng.integers(0, 256, size=(40, 60), dtype=np.uint8)
    Image.fromarray(img8).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_micrograph(tmp_path / "m.png").data, img8.astype(np.float32))
    f = rng.normal(size=(40, 60)).astype(np.float32)
    tifffile.imwrite(tmp_path / "m.tif", f)
    np.testing.assert_array_equal(read_micrograph(tmp_path / "m.tif").data, f)
    assert read_micrograph(tmp_path / "m.tif").apix is None
    # pixel size from TIFF resolution tags: 1e8/1.5 px per cm = 1.5 Å/px
    tifffile.imwrite(tmp_path / "r.tif", f, resolution=(1e8 / 1.5, 1e8 / 1.5), resolutionunit="CENTIMETER")
    assert read_micrograph(tmp_path / "r.tif").apix == pytest.approx(1.5)
    write_mrc(tmp_path / "m.mrc", f, 1.5)
    m = read_micrograph(tmp_path / "m.mrc")
    np.testing.assert_array_equal(m.data, f)
    assert m.apix == pytest.approx(1.5) and micrograph_info(tmp_path / "m.mrc").shape == (40, 60)
    m.data[0, 0] = 7.0  # an in-memory copy by default; mmap=True maps the file read-only
    mm = read_micrograph(tmp_path / "m.mrc", mmap=True)
    np.testing.assert_array_equal(mm.data, f)
    assert not mm.data.flags.writeable


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_bad_micrographs_are_one_clear_error(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8) + 100).save(tmp_path / "ok.jpg", quality=95)
    raw = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BadInputError, match="cut.jpg"):
        read_micrograph(tmp_path / "cut.jpg")
    nan = np.ones((8, 8), np.float32)
    nan[2, 3] = np.nan
    import mrcfile

    with mrcfile.new(tmp_path / "nan.mrc") as mrc:
        mrc.set_data(nan)
        mrc.voxel_size = 1.0
    with pytest.raises(BadInputError, match="nan.mrc.*NaN"):
        read_micrograph(tmp_path / "nan.mrc")
    (tmp_path / "m.xyz").write_text("x")
    with pytest.raises(BadInputError, match="unknown micrograph file type"):
        read_micrograph(tmp_path / "m.xyz")
    with pytest.raises(BadInputError, match="file not found"):
        read_micrograph(tmp_path / "absent.mrc")


def test_discover_pairs_and_reports_missing(tmp_path):
    root = tmp_path / "10999"
    (root / "micrographs").mkdir(parents=True)
    (root / "ground_truth" / "particle_coordinates").mkdir(parents=True)
    for stem in ("mic_a", "mic_b", "mic_c"):
        write_mrc(root / "micrographs" / f"{stem}.mrc", np.zeros((32, 32)), 1.2)
    write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / "mic_a.csv",
                      pd.DataFrame({"x": [10], "y": [12], "diameter": [8]}))
    write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / "mic_z.csv",
                      pd.DataFrame({"x": [10], "y": [12]}))
    star = pd.DataFrame({
        "rlnMicrographName": ["J1/motioncorrected/0000012814672437370591_mic_b.mrc",
                              "J1/motioncorrected/0000012814672437370592_mic_d.mrc"],
        "rlnCoordinateX": [5.0, 6.0], "rlnCoordinateY": [7.0, 8.0], "rlnDefocusU": [1e4, 2e4]})
    write_star(root / "ground_truth" / "10999_particles_selected.star", star)
    ds = discover(root)
    by = {e.key: e for e in ds.entries}
    assert set(by) == {"mic_a", "mic_b", "mic_c"}
    assert by["mic_a"].coordinates.name == "mic_a.csv" and by["mic_a"].star_rows is None
    assert by["mic_b"].coordinates is None and len(by["mic_b"].star_rows) == 1
    assert [e.key for e in ds.usable] == ["mic_a", "mic_b"]
    text = "\n".join(ds.missing)
    assert "mic_c" in text and "mic_d" in text and "mic_z.csv" in text
    with pytest.raises(BadInputError, match="no micrographs"):
        discover(tmp_path / "10999" / "ground_truth" / "particle_coordinates")


def test_describe_reports_content(shared_data):
    s = describe(shared_data / "star" / "relion31.star")
    assert "5 particles" in s and "2.806 Å/px" in s and "optics groups: 1" in s
    c = describe(shared_data / "star" / "empiar_10076_7.cs")
    assert "7 particles" in c and "1.31 Å/px" in c and "pixels, not Å" in c
    m = describe(shared_data / "maps" / "70S_ribosome_65px.mrc")
    assert "(65, 65, 65)" in m and "not in header" in m
    st = describe(shared_data / "star" / "relion31.mrcs")
    assert "image stack" in st and "(5, 256, 256)" in st


def test_image_locations_tolerate_mrc_for_mrcs(shared_data):
    from cryomap.io.mrc import read_stack
    from cryomap.io.star import image_locations

    t = read_star(shared_data / "star" / "empiar_10076_7.star")  # names empiar_10076_7.mrc
    idx, stacks = image_locations(t)
    assert list(idx) == list(range(7)) and all(p.name == "empiar_10076_7.mrcs" for p in stacks)
    s = read_stack(stacks[0], apix=t.pixel_size)  # this stack's header holds no voxel size
    assert s.data.shape == (7, 320, 320)


def test_cli_info_prints_description(shared_data, capsys):
    from cryomap.cli import main

    assert main(["info", str(shared_data / "star" / "cryosparc_exported_relion31.star")]) == 0
    out = capsys.readouterr().out
    assert "2 particles" in out and "optics groups: 1 (4)" in out and "0.8257 Å/px" in out
    assert main(["info", str(shared_data / "README.md")]) == 2
    assert "unknown file type" in capsys.readouterr().err


def test_star_several_optics_groups_either_block_order(tmp_path):
    flat = pd.DataFrame({
        "rlnImageName": [f"{i:06d}@s.mrcs" for i in range(1, 5)],
        "rlnDefocusU": [1e4, 1.1e4, 1.2e4, 1.3e4],
        "rlnOpticsGroup": [1, 2, 1, 2],
        "rlnImagePixelSize": [1.0, 1.5, 1.0, 1.5],
        "rlnVoltage": [300.0, 200.0, 300.0, 200.0],
    })
    write_star(tmp_path / "a.star", flat)
    t = read_star(tmp_path / "a.star")
    assert len(t.optics) == 2 and "rlnImagePixelSize" not in t.extra_blocks
    np.testing.assert_allclose(t.particles["rlnImagePixelSize"], flat["rlnImagePixelSize"])
    np.testing.assert_allclose(t.particles["rlnVoltage"], flat["rlnVoltage"])
    assert t.pixel_size is None  # two pixel sizes: no single answer
    # particles block before optics block (as some programs write it)
    text = (tmp_path / "a.star").read_text()
    i = text.index("# version 30001\ndata_particles")
    (tmp_path / "b.star").write_text(text[i:] + "\n" + text[:i])
    b = read_star(tmp_path / "b.star")
    assert b.particles.equals(t.particles)


def test_mrc_modes_int16_uint16_float16_read_as_float32(tmp_path):
    import mrcfile

    from cryomap.io.mrc import read_mrc

    for dtype in (np.int8, np.int16, np.uint16, np.float16):
        arr = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
        with mrcfile.new(tmp_path / f"m_{np.dtype(dtype).name}.mrc", overwrite=True) as mrc:
            mrc.set_data(arr)
            mrc.voxel_size = 1.25
        m = read_mrc(tmp_path / f"m_{np.dtype(dtype).name}.mrc")
        assert m.data.dtype == np.float32 and m.apix == pytest.approx(1.25)
        np.testing.assert_array_equal(m.data, arr.astype(np.float32))


def test_image_names_both_ways():
    from cryomap.io.star import format_image_name, parse_image_name

    assert format_image_name(12, "Extract/job3/particles.mrcs") == "000012@Extract/job3/particles.mrcs"
    assert parse_image_name("000012@Extract/job3/particles.mrcs") == (12, "Extract/job3/particles.mrcs")
    assert parse_image_name(" 7@a@b.mrcs ") == (7, "a@b.mrcs")  # only the first '@' splits
    assert parse_image_name("single.mrc") == (1, "single.mrc")
    for i in (1, 99, 123456, 1234567):
        assert parse_image_name(format_image_name(i, "s.mrcs")) == (i, "s.mrcs")
    with pytest.raises(ValueError):
        format_image_name(0, "s.mrcs")
    with pytest.raises(ValueError):
        parse_image_name("x@s.mrcs")


def test_relion30_pixel_origins_become_angstrom(shared_data, tmp_path):
    import starfile

    raw = starfile.read(shared_data / "star" / "relion30_sample.star")
    t = read_star(shared_data / "star" / "relion30_sample.star")
    p = t.particles
    assert "rlnOriginX" not in p and "rlnOriginXAngst" in p
    np.testing.assert_allclose(p["rlnOriginXAngst"], raw["rlnOriginX"] * t.pixel_size, atol=1e-6)
    np.testing.assert_allclose(p["rlnOriginYAngst"], raw["rlnOriginY"] * t.pixel_size, atol=1e-6)
    # written as RELION 3.1 the shifts are in Å, where RELION 3.1 looks for them
    write_star(tmp_path / "o.star", p)
    blocks = starfile.read(tmp_path / "o.star", always_dict=True)
    assert "rlnOriginXAngst" in blocks["particles"] and "rlnOriginX" not in blocks["particles"]


def test_real_stacks_through_their_star_and_cs_files(shared_data, tmp_path):
    """The STAR and .cs of EMPIAR-10076 name the same 7 images; relion31.star names its 5; round trips keep them."""
    import mrcfile

    from cryomap.io.mrc import read_stack
    from cryomap.io.star import image_locations

    star_path = shared_data / "star" / "empiar_10076_7.star"
    t = read_star(star_path)
    idx, stacks = image_locations(t)
    stack = read_stack(stacks[0], apix=t.pixel_size, mmap=False)
    cs = read_cs(shared_data / "star" / "empiar_10076_7.cs")
    cs_idx = cs["rlnImageName"].str.split("@").str[0].astype(int).to_numpy() - 1
    cs_stack = resolve_blob_path(cs["rlnImageName"].iloc[0].split("@")[1], shared_data / "star" / "empiar_10076_7.cs")
    assert cs_stack == stacks[0] and list(cs_idx) == list(idx)
    # the .cs table written as RELION 3.1 STAR reads back the same
    write_star(tmp_path / "cs.star", cs)
    back_cs = read_star(tmp_path / "cs.star").particles
    assert list(back_cs["csUid"].astype(str)) == list(cs["csUid"])  # 64-bit UIDs survive exactly
    cols = [c for c in cs.columns if c != "csUid"]
    pd.testing.assert_frame_equal(back_cs[cols], cs[cols], check_dtype=False, atol=1e-6)
    images = stack.data[idx]
    assert images.shape == (7, 320, 320) and images.std() > 0
    with mrcfile.open(stacks[0]) as mrc:  # what mrcfile itself reads
        np.testing.assert_array_equal(images, np.asarray(mrc.data, dtype=np.float32)[idx])
    # write → read keeps the arrays and the pixel size (taken from the STAR: this header has none)
    out = write_mrc(tmp_path / "p.mrcs", images, t.pixel_size)
    back = read_stack(out)
    np.testing.assert_array_equal(np.asarray(back.data), images)
    assert back.apix == pytest.approx(t.pixel_size, rel=1e-6)
    r31 = read_star(shared_data / "star" / "relion31.star")
    idx31, stacks31 = image_locations(r31)
    s31 = read_stack(stacks31[0], mmap=True)
    assert s31.data.shape == (5, 256, 256) and list(idx31) == list(range(5))
    assert (r31.particles["rlnImageSize"] == 256).all()
    out = write_mrc(tmp_path / "r31.mrcs", s31.data, r31.pixel_size)
    back = read_stack(out)
    np.testing.assert_array_equal(np.asarray(back.data), np.asarray(s31.data))
    assert back.apix == pytest.approx(2.806, rel=1e-6)


def test_info_covers_every_section_models_and_folders(tmp_path, capsys):
    """Statistics over the whole stack (not its first 64 images), atomic models, folders described."""
    import mrcfile
    import numpy as np

    from cryomap.cli import main

    stack = np.zeros((100, 8, 8), np.float32)
    stack[99] = 50.0  # only the last image is bright: a 64-image sample would report max 0
    with mrcfile.new(tmp_path / "s.mrcs") as m:
        m.set_data(stack)
        m.voxel_size = 2.0
    assert main(["info", str(tmp_path / "s.mrcs")]) == 0
    out = capsys.readouterr().out
    assert "max 50" in out and "mean 0.5," in out
    from cryomap.simulate.structure_map import builtin_structures

    assert main(["info", str(builtin_structures()["1BHL"])]) == 0
    out = capsys.readouterr().out
    assert "atomic model" in out and "kDa" in out and "residues" in out
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "folder" in out and "s.mrcs" in out
