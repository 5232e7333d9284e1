"""Every bad input of issue 2 through the real ``cryomap`` command: one line naming the file and the
problem on stderr, exit code 2, and no output folder (nor a hidden partial one) left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_extract_core import blob_micrograph, make_dataset

from cryomap.io.coords import write_cryoppp_csv
from cryomap.io.star import read_star, write_star

pytestmark = pytest.mark.filterwarnings("ignore:Data array contains NaN")  # the NaN micrograph the test writes


def cli(argv: list[str]) -> int:
    from cryomap.cli import main

    return main(argv)


def _truncated_mrc(root: Path) -> tuple[list[str], str]:
    make_dataset(root, n_mics=3)
    bad = root / "micrographs" / "mic_1.mrc"
    bad.write_bytes(bad.read_bytes()[:2000])
    return [str(root)], "mic_1.mrc"


def _missing_mrc(root: Path) -> tuple[list[str], str]:
    make_dataset(root, n_mics=2, with_star=True)
    (root / "micrographs" / "mic_1.mrc").unlink()
    return [str(root / "ground_truth" / "10999_particles_selected.star")], "mic_1.mrc"


def _jpeg_folder(root: Path, n: int = 2) -> None:
    from PIL import Image

    root.mkdir(parents=True)
    for m in range(n):
        img = blob_micrograph((96, 128), [(30, 30), (70, 40)], seed=m)
        u8 = np.clip((img - img.min()) / (img.max() - img.min()) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(u8).save(root / f"mic_{m}.jpg", quality=95)
        write_cryoppp_csv(root / f"mic_{m}.csv", pd.DataFrame({"x": [30, 70], "y": [30, 40], "diameter": 20}))


def _truncated_jpeg(root: Path) -> tuple[list[str], str]:
    _jpeg_folder(root)
    bad = root / "mic_1.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    return [str(root)], "mic_1.jpg"


def _truncated_jpeg_data(root: Path) -> tuple[list[str], str]:
    _jpeg_folder(root)
    bad = root / "mic_1.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size * 2 // 3])  # header intact, image data cut
    return [str(root)], "mic_1.jpg"


def _missing_jpeg(root: Path) -> tuple[list[str], str]:
    _jpeg_folder(root)
    star = pd.DataFrame({"rlnMicrographName": ["mic_0.jpg", "mic_9.jpg"], "rlnCoordinateX": [30.0, 30.0],
                         "rlnCoordinateY": [30.0, 30.0]})
    write_star(root / "picks.star", star)
    return [str(root / "picks.star")], "mic_9.jpg"


def _star_without_coordinates(root: Path) -> tuple[list[str], str]:
    make_dataset(root, n_mics=1, with_star=True)
    star = root / "ground_truth" / "10999_particles_selected.star"
    table = read_star(star).particles.drop(columns=["rlnCoordinateX", "rlnCoordinateY"])
    write_star(star, table, force=True)
    return [str(star)], "10999_particles_selected.star"


def _coordinates_outside(root: Path) -> tuple[list[str], str]:
    make_dataset(root, n_mics=2)
    write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / "mic_1.csv",
                      pd.DataFrame({"x": [30, 900], "y": [30, 30]}), force=True)
    return [str(root)], "mic_1.mrc"


def _nan_pixels(root: Path) -> tuple[list[str], str]:
    from cryomap.io.mrc import write_mrc

    make_dataset(root, n_mics=2)
    img = blob_micrograph((96, 128), [(30, 30)])
    img[50, 60] = np.nan
    write_mrc(root / "micrographs" / "mic_0.mrc", img, 2.0, force=True)
    return [str(root)], "mic_0.mrc"


def _unknown_type(root: Path) -> tuple[list[str], str]:
    root.mkdir(parents=True)
    (root / "particles.xyz").write_text("1 2 3\n")
    return [str(root / "particles.xyz")], "particles.xyz"


def _no_particles(root: Path) -> tuple[list[str], str]:
    make_dataset(root, n_mics=1)
    write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / "mic_0.csv",
                      pd.DataFrame({"x": [2, 120], "y": [2, 90]}), force=True)  # every 32 px box leaves the image
    return [str(root)], "ds"


def _missing_source(root: Path) -> tuple[list[str], str]:
    return [str(root / "nowhere")], "nowhere"


CASES = {
    "truncated MRC": (_truncated_mrc, "truncated"),
    "missing MRC named in the STAR": (_missing_mrc, "not on disk"),
    "truncated JPEG header": (_truncated_jpeg, "truncated file"),
    "truncated JPEG data": (_truncated_jpeg_data, "truncated"),
    "missing JPEG named in the STAR": (_missing_jpeg, "not on disk"),
    "STAR without coordinate columns": (_star_without_coordinates, "no coordinate columns"),
    "coordinates outside the image": (_coordinates_outside, "outside"),
    "NaN pixels": (_nan_pixels, "NaN"),
    "unknown file type": (_unknown_type, "needs a CryoPPP dataset folder or a .star file"),
    "no particles written": (_no_particles, "no particles were written"),
    "missing source": (_missing_source, "not found"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    make, problem = CASES[case]
    args, culprit = make(tmp_path / "ds")
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli(["extract", *args, "--box", "32", "-o", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("cryomap: error: ") and culprit in lines[0], lines[0]
    assert problem.lower() in lines[0].lower(), lines[0]
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder or file


def test_skip_bad_carries_on_and_lists_what_it_skipped(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", n_mics=3)
    bad = root / "micrographs" / "mic_1.mrc"
    bad.write_bytes(bad.read_bytes()[:2000])
    write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / "mic_2.csv",
                      pd.DataFrame({"x": [30, 900], "y": [30, 30]}), force=True)
    capsys.readouterr()
    assert cli(["extract", str(root), "--box", "32", "--skip-bad", "-o", str(tmp_path / "out")]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "extracted 3 particles" in summary and "2 bad micrographs skipped" in summary
    assert "micrographs/mic_1.mrc (" in summary and "micrographs/mic_2.mrc (" in summary
    assert len(read_star(tmp_path / "out" / "particles.star")) == 3
    # every micrograph bad: --skip-bad still exits non-zero, naming what it skipped, and writes nothing
    (root / "micrographs" / "mic_0.mrc").write_bytes(b"\x00" * 100)
    assert cli(["extract", str(root), "--box", "32", "--skip-bad", "-o", str(tmp_path / "out2")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no particles were written" in lines[0] and "mic_0.mrc" in lines[0]
    assert not (tmp_path / "out2").exists()
