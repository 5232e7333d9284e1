"""Core MRC and STAR round trips the rest of the package relies on."""

from __future__ import annotations

import numpy as np
import pytest

from cryomap.errors import BadInputError, OutputExistsError
from cryomap.io.mrc import StackWriter, read_map, read_mrc, read_stack, write_mrc


def test_mrc_roundtrip_keeps_data_apix_origin(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(6, 7, 8)).astype(np.float32)
    p = write_mrc(tmp_path / "v.mrc", vol, 1.37, origin=(1.0, 2.0, 3.0))
    m = read_map(p)
    np.testing.assert_array_equal(m.data, vol)
    assert m.apix == pytest.approx(1.37, rel=1e-6)
    assert m.origin == pytest.approx((1.0, 2.0, 3.0))


def test_existing_output_is_not_overwritten_without_force(tmp_path):
    p = write_mrc(tmp_path / "v.mrc", np.zeros((4, 4, 4)), 1.0)
    with pytest.raises(OutputExistsError):
        write_mrc(p, np.ones((4, 4, 4)), 1.0)
    assert read_map(p).data.max() == 0.0
    write_mrc(p, np.ones((4, 4, 4)), 1.0, force=True)
    assert read_map(p).data.min() == 1.0


def test_stack_writer_streams_and_shrinks(tmp_path):
    imgs = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    with StackWriter(tmp_path / "s.mrcs", n=8, box=4, apix=2.0) as w:
        for im in imgs:
            w.write(im)
    s = read_stack(tmp_path / "s.mrcs")
    assert s.data.shape == (5, 4, 4) and s.apix == pytest.approx(2.0)
    np.testing.assert_array_equal(np.asarray(s.data), imgs)
    assert not list(tmp_path.glob(".*partial*"))


def test_map_without_voxel_size_needs_apix(shared_data):
    path = shared_data / "maps" / "70S_ribosome_65px.mrc"
    with pytest.raises(BadInputError, match="no voxel size"):
        read_mrc(path)
    m = read_map(path, apix=1.0)
    assert m.data.shape == (65, 65, 65) and m.apix == 1.0


def test_truncated_mrc_is_one_clear_error(tmp_path):
    p = write_mrc(tmp_path / "v.mrc", np.ones((8, 8, 8)), 1.0)
    raw = p.read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(BadInputError, match="cut.mrc"):
        read_mrc(tmp_path / "cut.mrc")


def test_stack_writer_header_is_an_mrc2014_image_stack(tmp_path):
    import mrcfile

    imgs = np.random.default_rng(0).normal(size=(6, 8, 8)).astype(np.float32)
    with StackWriter(tmp_path / "s.mrcs", n=6, box=8, apix=1.5) as w:
        w.write(imgs)
    with mrcfile.open(tmp_path / "s.mrcs") as mrc:
        h = mrc.header
        assert mrc.is_image_stack() and (int(h.nz), int(h.mz)) == (6, 1)
        assert mrc.voxel_size.x == pytest.approx(1.5) and mrc.voxel_size.z == pytest.approx(1.5)
        assert float(h.dmin) == pytest.approx(imgs.min()) and float(h.dmax) == pytest.approx(imgs.max())
        assert float(h.dmean) == pytest.approx(imgs.mean(), abs=1e-5)
        assert float(h.rms) == pytest.approx(imgs.std(), rel=1e-4)
    import io

    assert mrcfile.validate(tmp_path / "s.mrcs", print_file=io.StringIO())


def test_all_finite_finds_nan_and_infinities_anywhere_and_no_false_alarm():
    """The micrograph and MRC check: one NaN, +inf or −inf anywhere is found, in contiguous images, strided
    views and 3D maps; finite values near float32's maximum, whose float32 sum would overflow, are not an alarm."""
    from cryomap.core.images import all_finite

    big = np.full((512, 700), 3.0e38, dtype=np.float32)
    big[::2] *= -1
    assert all_finite(big) and all_finite(big[10:50, 3:600])
    for bad in (np.nan, np.inf, -np.inf):
        img = np.zeros((300, 257), dtype=np.float32)
        img[299, 256] = bad
        assert not all_finite(img)
        assert not all_finite(img[200:, 100:]) and all_finite(img[:299, :])
    assert not all_finite(np.array([[1.0, np.nan]]))  # float64 goes the numpy way
    vol = np.full((5, 6, 7), -3.0e38, dtype=np.float32)
    assert all_finite(vol) and all_finite(vol[:, 1:, :4]) and all_finite(vol[:0])
    vol[4, 5, 6] = np.nan
    assert not all_finite(vol) and not all_finite(vol[:, 1:, 2:])
