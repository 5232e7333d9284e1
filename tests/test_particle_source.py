"""The lazy particle source and its writer: every format, map/subset semantics, non-finite images,
pose and CTF accessors, worker-independent output."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryomap.errors import BadInputError
from cryomap.io.mrc import read_stack, write_mrc
from cryomap.io.star import format_image_name, read_star, write_star
from cryomap.particles.source import ParticleSource, open_particles
from cryomap.particles.writer import write_particles, write_subset_star


def _stack(tmp_path, n=20, box=16, seed=0, name="p"):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, box, box)).astype(np.float32)
    write_mrc(tmp_path / f"{name}.mrcs", images, 1.5)
    df = pd.DataFrame({
        "rlnImageName": [format_image_name(i + 1, f"{name}.mrcs") for i in range(n)],
        "rlnDefocusU": rng.uniform(1e4, 2e4, n), "rlnDefocusV": rng.uniform(1e4, 2e4, n),
        "rlnDefocusAngle": rng.uniform(-90, 90, n), "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
        "rlnAmplitudeContrast": 0.1, "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": rng.uniform(0, 180, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n), "rlnOriginXAngst": rng.normal(size=n),
        "rlnOriginYAngst": rng.normal(size=n), "rlnOpticsGroup": 1, "rlnImagePixelSize": 1.5, "rlnImageSize": box,
    })
    write_star(tmp_path / f"{name}.star", df)
    return images, df


@pytest.fixture(autouse=True)
def _quiet_nan_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Data array contains NaN")
        yield


class _Scale:
    """A minimal op: multiply by a factor (records it, sets a column)."""

    def __init__(self, factor, key="scale"):
        self.factor, self.key = factor, key

    def __call__(self, images, ctx):
        return images * self.factor

    def check(self, source):
        pass

    def update_table(self, table):
        return table.assign(rlnCryomapScaled=self.factor)

    def describe(self):
        return {"factor": self.factor}


def test_star_source_reads_rows_lazily_in_any_order(tmp_path):
    images, df = _stack(tmp_path)
    src = open_particles(tmp_path / "p.star")
    assert len(src) == 20 and src.shape == (20, 16, 16) and src.pixel_size == pytest.approx(1.5)
    np.testing.assert_array_equal(src.images([7, 2, 7]), images[[7, 2, 7]])
    np.testing.assert_array_equal(src[3], images[3])
    np.testing.assert_array_equal(src[5:9], images[5:9])
    got = np.concatenate([im for _, im in src.chunks(6)])
    np.testing.assert_array_equal(got, images)
    poses = src.poses([1, 0])
    np.testing.assert_allclose(poses.rot, df.rlnAngleRot.to_numpy()[[1, 0]], atol=1e-5)
    np.testing.assert_allclose(poses.shifts_A[:, 1], df.rlnOriginYAngst.to_numpy()[[1, 0]], atol=1e-5)
    ctf = src.ctf([4])
    assert ctf.defocus_u[0] == pytest.approx(df.rlnDefocusU[4]) and ctf.voltage == 300.0


def test_map_and_subset_return_new_sources_and_leave_the_original(tmp_path):
    images, _ = _stack(tmp_path)
    src = open_particles(tmp_path / "p.star")
    doubled = src.map(_Scale(2.0))
    np.testing.assert_array_equal(doubled.images([1]), 2 * images[[1]])
    np.testing.assert_array_equal(src.images([1]), images[[1]])  # untouched
    assert "rlnCryomapScaled" in doubled.table and "rlnCryomapScaled" not in src.table
    chained = doubled.map(_Scale(3.0, key="again")).subset([4, 0])
    np.testing.assert_array_equal(chained.images(), 6 * images[[4, 0]])
    assert chained.describe_ops() == [{"step": "scale", "factor": 2.0}, {"step": "again", "factor": 3.0}]
    with pytest.raises(ValueError):
        doubled.map(_Scale(1.0))  # the key 'scale' is taken
    again = pickle.loads(pickle.dumps(chained))
    np.testing.assert_array_equal(again.images(), chained.images())


def test_bare_stack_cs_and_pixel_origins(shared_data, tmp_path):
    cs = open_particles(shared_data / "star" / "empiar_10076_7.cs")
    st = open_particles(shared_data / "star" / "empiar_10076_7.star")
    assert len(cs) == len(st) == 7
    np.testing.assert_array_equal(cs.images([6, 0]), st.images([6, 0]))
    assert cs.ctf().defocus_u == pytest.approx(st.ctf().defocus_u, rel=1e-4)
    # a bare stack: one row per image, pixel size from the header
    images, _ = _stack(tmp_path)
    bare = open_particles(tmp_path / "p.mrcs")
    assert len(bare) == 20 and bare.pixel_size == pytest.approx(1.5) and not bare.has_ctf
    np.testing.assert_array_equal(bare.images([19]), images[[19]])
    # relion_project's pixel origins in a RELION 3.1 file are Å after reading (1 Å/px here)
    shifted = open_particles(shared_data / "relion_projections" / "rln_proj_65_shifted.star")
    np.testing.assert_allclose(shifted.poses().shifts_A[0], [6.0, 10.0])
    # no voxel size anywhere: refused unless --apix
    with pytest.raises(BadInputError, match="pixel size"):
        open_particles(shared_data / "star" / "empiar_10076_7.mrcs")
    assert open_particles(shared_data / "star" / "empiar_10076_7.mrcs", apix=1.31).pixel_size == 1.31


def test_nonfinite_images_are_refused_or_zeroed_and_counted(tmp_path):
    images, _ = _stack(tmp_path)
    images[3, 2, 2] = np.nan
    images[8] = np.inf
    write_mrc(tmp_path / "p.mrcs", images, 1.5, force=True)
    src = open_particles(tmp_path / "p.star")
    with pytest.raises(BadInputError, match="image 4 holds NaN"):
        src.images(np.arange(10))
    zero = src.with_nonfinite("zero")
    got, bad = zero.read(np.arange(10))
    assert bad.tolist() == [i in (3, 8) for i in range(10)]
    assert np.all(got[3] == 0) and np.all(got[8] == 0) and np.isfinite(got).all()
    np.testing.assert_array_equal(got[4], images[4])


def test_index_past_the_end_and_missing_stack_are_one_line(tmp_path):
    _, df = _stack(tmp_path, n=5)
    bad = df.copy()
    bad.loc[2, "rlnImageName"] = format_image_name(9, "p.mrcs")
    write_star(tmp_path / "past.star", bad)
    with pytest.raises(BadInputError, match="names image 9 but the stack holds 5"):
        open_particles(tmp_path / "past.star")
    gone = df.assign(rlnImageName=[format_image_name(i + 1, "nope.mrcs") for i in range(5)])
    write_star(tmp_path / "gone.star", gone)
    with pytest.raises(BadInputError, match="not found"):
        open_particles(tmp_path / "gone.star")


def test_writer_streams_the_mapped_images_in_row_order(tmp_path):
    images, df = _stack(tmp_path, n=23)
    src = open_particles(tmp_path / "p.star").map(_Scale(-1.0))
    res = write_particles(src, tmp_path / "out1", chunk=5, progress=False)
    out = read_stack(res.stack_path, mmap=False)
    np.testing.assert_array_equal(out.data, -images)
    assert out.apix == pytest.approx(1.5)
    table = read_star(res.star_path).particles
    np.testing.assert_allclose(table.rlnDefocusU, df.rlnDefocusU)
    assert table.rlnImageName.iloc[22] == "000023@particles.mrcs" and (table.rlnCryomapScaled == -1).all()
    assert table.rlnImageOriginalName.iloc[0].endswith("p.mrcs")
    np.testing.assert_array_equal(open_particles(res.star_path).images([22]), -images[[22]])
    # two worker processes write the same bytes
    two = write_particles(src, tmp_path / "out2", chunk=5, workers=2, progress=False)
    assert two.stack_path.read_bytes() == res.stack_path.read_bytes()
    assert two.star_path.read_text() == res.star_path.read_text()


def test_a_crashed_write_resumes_without_redoing_finished_chunks(tmp_path):
    images, _ = _stack(tmp_path, n=12)
    calls: list[int] = []

    class Flaky(_Scale):
        crash = True

        def __call__(self, images, ctx):
            calls.append(int(ctx.rows[0]))
            if Flaky.crash and ctx.rows[0] >= 6:
                raise RuntimeError("worker lost")
            return images * self.factor

    src = open_particles(tmp_path / "p.star").map(Flaky(2.0))
    with pytest.raises(RuntimeError):
        write_particles(src, tmp_path / "out", chunk=3, progress=False)
    assert not (tmp_path / "out").exists() and (tmp_path / ".out.partial").is_dir()  # kept for --resume
    Flaky.crash = False
    calls.clear()
    res = write_particles(src, tmp_path / "out", chunk=3, progress=False, resume=True)
    assert calls == [6, 9]  # chunks 0 and 3 were done before the crash
    np.testing.assert_array_equal(read_stack(res.stack_path, mmap=False).data, 2 * images)
    assert not (tmp_path / ".out.partial").exists()


def test_bad_input_or_ctrl_c_during_a_write_leaves_nothing(tmp_path):
    _stack(tmp_path, n=12)

    class Stop(_Scale):
        def __call__(self, images, ctx):
            if ctx.rows[0] >= 6:
                raise self.exc
            return images

    for exc in (KeyboardInterrupt(), BadInputError("bad image", tmp_path / "p.mrcs")):
        op = Stop(1.0)
        op.exc = exc
        with pytest.raises(type(exc)):
            write_particles(open_particles(tmp_path / "p.star").map(op), tmp_path / "out", chunk=6, progress=False)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]


def test_subset_star_names_the_original_stacks(tmp_path):
    images, _ = _stack(tmp_path)
    src = open_particles(tmp_path / "p.star")
    path = write_subset_star(src.subset([9, 1]), tmp_path / "sub" / "s.star")
    back = open_particles(path)
    np.testing.assert_array_equal(back.images(), images[[9, 1]])
    with pytest.raises(ValueError):
        write_subset_star(src.map(_Scale(2.0)), tmp_path / "x.star")


def test_in_memory_source():
    arr = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    src = ParticleSource.from_arrays(arr, 2.0)
    assert src.pixel_size == 2.0 and len(src) == 2
    np.testing.assert_array_equal(src.images([1]), arr[[1]])


def test_the_command_line_runs_without_pyarrow_and_keeps_strings(tmp_path):
    """`cryomap` keeps pyarrow out of its process (38 MiB resident; cli.keep_pyarrow_out): a command that
    reads a STAR, splits rlnImageName and writes a STAR back works on pandas' Python string storage."""
    import subprocess
    import sys

    _, df = _stack(tmp_path)
    code = ("import sys; from cryomap.cli import main; "
            f"rc = main(['reconstruct', {str(tmp_path / 'p.star')!r}, '-o', {str(tmp_path / 'map.mrc')!r}, '--half-sets']); "
            "print('PYARROW', sys.modules.get('pyarrow', 'absent')); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "PYARROW None" in res.stdout  # imported by nothing, blocked before pandas
    back = read_star(tmp_path / "map_particles.star").particles
    names = [(index, Path(stack).name) for index, stack in (n.split("@") for n in back["rlnImageName"])]
    assert names == [tuple(n.split("@")) for n in df["rlnImageName"]]  # written as absolute paths to the stack
    assert read_stack(tmp_path / "map.mrc").data.std() > 0
