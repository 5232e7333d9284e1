"""Issue 10 through the real ``cryomap`` command: every bad input is exit code 2 and exactly one line on
stderr naming the file or option and the problem (Ctrl-C: 130), nothing is left behind, and the inputs
are byte-for-byte what they were (each test hashes its input folder before and after)."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cryomap.cli import main

S_APIX = 2.5


# ---------------------------------------------------------------------------- helpers

def run(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """Run ``cryomap argv`` in-process: (exit code, non-empty stderr lines, stdout)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, [line for line in cap.err.splitlines() if line.strip() and "━" not in line], cap.out


def one_line(lines: list[str], *needles: str) -> str:
    """The single ``cryomap: error:`` line, which must contain every needle (case-insensitive)."""
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("cryomap: error: "), line
    assert "Traceback" not in line
    for n in needles:
        assert n.lower() in line.lower(), (n, line)
    return line


def tree_hash(*roots: Path) -> str:
    """Hash of every file (relative path and bytes) under ``roots`` (files or folders)."""
    h = hashlib.sha256()
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            h.update(str(p.relative_to(root.parent)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def listing(folder: Path) -> set[str]:
    """Every path under ``folder`` (hidden ones too), relative."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


class Guard:
    """Snapshot a work folder; afterwards nothing new (no output, no hidden partial) and inputs intact."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.before = listing(folder)
        self.hash = tree_hash(folder)

    def check(self) -> None:
        new = listing(self.folder) - self.before
        assert not new, f"left behind: {sorted(new)}"
        assert tree_hash(self.folder) == self.hash, "an input changed"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small simulated CryoPPP folder (sim/1BHL) and its extracted particles (parts/)."""
    root = tmp_path_factory.mktemp("issue10")
    assert main(["simulate", "--builtin", "1BHL", "--particles", "12", "--micrograph-size", "192", "--apix",
                 str(S_APIX), "--snr", "0.2", "--seed", "1", "-o", str(root / "sim")]) == 0
    assert main(["extract", str(root / "sim" / "1BHL"), "--box", "48", "-o", str(root / "parts")]) == 0
    return root


@pytest.fixture
def work(base, tmp_path) -> Path:
    """A private copy of the base data in ``tmp_path``."""
    for name in ("sim", "parts"):
        shutil.copytree(base / name, tmp_path / name)
    return tmp_path


def star_rows(path: Path) -> tuple[str, list[str], list[list[str]]]:
    """(text before the particle rows, column names, rows as token lists) of a STAR cryomap wrote."""
    text = path.read_text()
    head, body = text.split("data_particles", 1)
    lines = body.splitlines()
    cols = [ln.split()[0][1:] for ln in lines if ln.startswith("_")]
    rows = [ln.split() for ln in lines if ln.strip() and not ln.startswith(("_", "loop_", "#"))]
    return head + "data_particles\n\nloop_\n" + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(cols)), cols, rows


def write_star_rows(path: Path, header: str, rows: list[list[str]]) -> None:
    path.write_text(header + "".join("\t".join(r) + "\n" for r in rows))


def mutate_star(src: Path, dst: Path, column: str, row: int, value: str) -> Path:
    header, cols, rows = star_rows(src)
    rows[row][cols.index(column)] = value
    write_star_rows(dst, header, rows)
    return dst


# ---------------------------------------------------------------------------- data loss

def test_extract_onto_its_source_deletes_nothing(work, capsys):
    g = Guard(work)
    for out in (work / "sim" / "1BHL", work / "sim"):  # the source itself, and a cryomap folder holding it
        rc, lines, _ = run(["extract", work / "sim" / "1BHL", "-o", out, "--force", "--box", "48"], capsys)
        assert rc == 2
        one_line(lines, str(out), "never replaces its inputs")
    g.check()


def test_output_holding_an_input_read_later_is_refused_at_the_rename(work, capsys):
    """A STAR elsewhere names the stack in parts/ (a folder cryomap wrote): `dataset build -o parts --force`
    learns of the stack only while it works, and is refused when it would replace the folder."""
    other = work / "other.star"
    other.write_text((work / "parts" / "particles.star").read_text().replace("@particles.mrcs", "@parts/particles.mrcs"))
    cfg = work / "ds.yaml"
    cfg.write_text(f"label: {{apix: {S_APIX}, box: 48}}\ncondition: {{mode: stack, n_images: 4}}\n"
                   "split: {by: particles, val_fraction: 0.0, particle_holdout: 0.25}\n"
                   f"targets:\n  - {{name: a, particles: {other}, map: {work / 'sim/1BHL/maps/1BHL_truth.mrc'}}}\n")
    g = Guard(work)
    rc, lines, _ = run(["dataset", "build", cfg, "-o", work / "parts", "--force"], capsys)
    assert rc == 2
    one_line(lines, "parts", "holds an input", "particles.mrcs")
    g.check()


def test_simulate_force_does_not_empty_an_unrelated_folder(work, capsys):
    mine = work / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    g = Guard(work)
    rc, lines, _ = run(["simulate", "--builtin", "1BHL", "--particles", "5", "--micrograph-size", "192", "--apix", "2.5",
                        "-o", mine, "--force"], capsys)
    assert rc == 2
    one_line(lines, "mine", "not written by cryomap")
    g.check()


def test_train_force_never_removes_its_dataset_or_config(work, trained_run, capsys):
    shutil.copytree(trained_run.parent / "ds", work / "ds")  # a folder cryomap wrote: --force could replace it
    cfg = work / "train.yaml"
    cfg.write_text(f"model: {{name: unet3d, widths: [2, 4]}}\ndata: {{dataset_dir: {work / 'ds'}}}\n"
                   "trainer: {max_steps: 1, accelerator: cpu}\n")
    g = Guard(work)
    for out in (work / "ds", work):
        rc, lines, _ = run(["train", cfg, "-o", out, "--force"], capsys)
        assert rc == 2
        one_line(lines, "never replaces its inputs")
    g.check()


# ---------------------------------------------------------------------------- silent wrong answers

def test_relion31_pixel_origins_reach_reconstruct(shared_data, tmp_path, capsys):
    """rln_proj_65_shifted.star carries pixel shifts in rlnOriginX/Y beside the Å columns' absence: the
    reconstruction from the shifted images must equal the one from the centred images."""
    import mrcfile

    from cryomap.particles.source import open_particles

    proj = shared_data / "relion_projections"
    src = open_particles(proj / "rln_proj_65_shifted.star")
    np.testing.assert_allclose(src.poses().shifts_A[0], [6.0, 10.0])  # px × 1 Å/px
    maps = {}
    for name in ("centered", "shifted"):
        out = tmp_path / f"{name}.mrc"
        rc, lines, _ = run(["reconstruct", proj / f"rln_proj_65_{name}.star", "--no-ctf", "-o", out], capsys)
        assert rc == 0, lines
        with mrcfile.open(out) as m:
            maps[name] = np.asarray(m.data, dtype=np.float64)
    cc = np.corrcoef(maps["centered"].ravel(), maps["shifted"].ravel())[0, 1]
    assert cc > 0.9, cc  # was −0.03 when the pixel shifts were ignored


@pytest.mark.parametrize("version", ["3.0", "3.1"])
def test_star_cut_mid_row_is_refused(work, capsys, shared_data, version):
    if version == "3.0":
        text = (shared_data / "star" / "relion30_sample.star").read_text().rstrip()
    else:
        text = (work / "parts" / "particles.star").read_text().rstrip()
    cut = work / "parts" / "cut.star"
    cut.write_text(text[: text.rfind(" ", 0, len(text) - 3) if version == "3.0" else text.rfind("\t")] + "\n")
    g = Guard(work)
    rc, lines, _ = run(["reconstruct", cut, "-o", work / "out.mrc"], capsys)
    assert rc == 2
    one_line(lines, "cut.star", "cut mid-row")
    g.check()


# ---------------------------------------------------------------------------- NaN spreads silently

def _nan_stack(work: Path) -> Path:
    import mrcfile

    stack = work / "parts" / "particles.mrcs"
    with mrcfile.open(stack, mode="r+") as m:
        m.data[2, 5, 5] = np.nan
    return work / "parts" / "particles.star"


def test_nan_pixel_in_a_stack_is_refused_by_reconstruct(work, capsys):
    star = _nan_stack(work)
    g = Guard(work)
    rc, lines, _ = run(["reconstruct", star, "-o", work / "map.mrc"], capsys)
    assert rc == 2
    one_line(lines, "particles.mrcs", "image 3", "NaN")
    g.check()


def test_nan_pixel_in_a_stack_is_refused_by_dataset_build(work, capsys):
    star = _nan_stack(work)
    cfg = work / "ds.yaml"
    cfg.write_text(f"label: {{apix: {S_APIX}, box: 48}}\ncondition: {{mode: stack}}\n"
                   "split: {by: particles, val_fraction: 0.0, particle_holdout: 0.0}\n"
                   f"targets:\n  - {{name: a, particles: {star}, map: {work / 'sim/1BHL/maps/1BHL_truth.mrc'}}}\n")
    g = Guard(work)
    rc, lines, _ = run(["dataset", "build", cfg, "-o", work / "ds"], capsys)
    assert rc == 2
    one_line(lines, "particles.mrcs", "NaN")
    g.check()


def test_nan_euler_angle_is_refused(work, capsys):
    bad = mutate_star(work / "parts" / "particles.star", work / "parts" / "nan.star", "rlnAngleRot", 1, "nan")
    g = Guard(work)
    rc, lines, _ = run(["reconstruct", bad, "-o", work / "map.mrc"], capsys)
    assert rc == 2
    one_line(lines, "nan.star", "row 2", "rlnAngleRot", "finite")
    g.check()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_extract_apix_must_be_a_positive_number(work, capsys, value):
    g = Guard(work)
    rc, lines, _ = run(["extract", work / "sim" / "1BHL", "--box", "48", f"--apix={value}", "-o", work / "out"], capsys)
    assert rc == 2
    one_line(lines, "--apix", value if value in ("nan", "inf") else "> 0")
    g.check()


def test_truncated_gzip_structure_is_refused(work, capsys, shared_data):
    raw = gzip.decompress((shared_data / "structures" / "1BHL.pdb.gz").read_bytes())
    whole = gzip.compress(raw[: raw.rfind(b"\n", 0, len(raw) // 2) + 1])  # cut at a line end: gemmi reads it
    bad = work / "cut.pdb.gz"
    bad.write_bytes(gzip.compress(raw)[: len(whole)])
    g = Guard(work)
    rc, lines, _ = run(["simulate", "--structure", bad, "--particles", "5", "--micrograph-size", "192", "--apix", "2.5",
                        "-o", work / "simcut"], capsys)
    assert rc == 2
    one_line(lines, "cut.pdb.gz", "gzip", "truncated")
    g.check()


# ---------------------------------------------------------------------------- usage errors

@pytest.mark.parametrize("argv, needle", [
    (["nope"], "No such command 'nope'"),
    (["extract"], "Missing argument"),
    (["extract", "x", "--box", "abc", "-o", "y"], "--box"),
    (["reconstruct", "x.star", "-o", "y.mrc", "--max-particles", "0"], "--max-particles"),
    (["evaluate", "a.mrc", "b.mrc", "-o", "e", "--apix", "-1"], "--apix"),
    (["simulate", "--dose", "-1"], "--dose"),
    (["simulate", "--map-apix", "-1"], "--map-apix"),
    (["simulate", "--micrographs", "0"], "--micrographs"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    rc, lines, _ = run(argv, capsys)
    assert rc == 2
    line = one_line(lines, needle, "usage: cryomap")
    assert "--help" in line
    assert not list(tmp_path.iterdir())


def test_cryomap_alone_prints_usage_and_exits_2(capsys):
    capsys.readouterr()
    assert main([]) == 2
    cap = capsys.readouterr()
    assert "Usage" in cap.out + cap.err and "Traceback" not in cap.err


# ---------------------------------------------------------------------------- one line, not a traceback

def test_text_in_a_numeric_star_column(work, capsys):
    star = work / "parts" / "particles.star"
    bad = mutate_star(star, work / "parts" / "text.star", "rlnDefocusU", 2, "abc")
    g = Guard(work)
    for argv in (["extract", bad, "--box", "48", "-o", work / "out"], ["reconstruct", bad, "-o", work / "m.mrc"]):
        rc, lines, _ = run(argv, capsys)
        assert rc == 2
        one_line(lines, "text.star", "row 3", "rlnDefocusU", "'abc' is not a number")
    g.check()


@pytest.mark.parametrize("index, needle", [("000099", "names image 99 but the stack holds"),
                                           ("000000", "counts images from 1")])
def test_image_index_outside_the_stack(work, capsys, index, needle):
    star = work / "parts" / "particles.star"
    bad = mutate_star(star, work / "parts" / "idx.star", "rlnImageName", 3, f"{index}@particles.mrcs")
    g = Guard(work)
    rc, lines, _ = run(["reconstruct", bad, "-o", work / "m.mrc"], capsys)
    assert rc == 2
    one_line(lines, needle)
    g.check()


def test_all_zero_map_in_evaluate_writes_nothing(work, capsys):
    from cryomap.io.mrc import write_mrc

    truth = work / "sim" / "1BHL" / "maps" / "1BHL_truth.mrc"
    zero = work / "zero.mrc"
    import mrcfile

    with mrcfile.open(truth) as m:
        write_mrc(zero, np.zeros_like(m.data), S_APIX)
    g = Guard(work)
    for pred, ref in ((zero, truth), (truth, zero)):
        rc, lines, _ = run(["evaluate", pred, ref, "-o", work / "eval"], capsys)
        assert rc == 2
        one_line(lines, "zero.mrc", "constant")
    g.check()


def test_absurd_sizes_are_refused_up_front_with_the_memory_needed(work, capsys):
    truth = work / "sim" / "1BHL" / "maps" / "1BHL_truth.mrc"
    g = Guard(work)
    rc, lines, _ = run(["labels", truth, "--box", "4000", "-o", work / "label.mrc"], capsys)
    assert rc == 2
    line = one_line(lines, "--box", "4000³", "GiB", "available")
    assert re.search(r"needs about [\d.]+ GiB", line)
    rc, lines, _ = run(["simulate", "--builtin", "1BHL", "--micrograph-size", "100000", "-o", work / "big"], capsys)
    assert rc == 2
    one_line(lines, "--micrograph-size", "100000", "GiB")
    g.check()


def test_check_memory_says_the_numbers():
    from cryomap.errors import CryomapError
    from cryomap.resources import check_label_box, check_micrograph_size

    check_label_box(128, available=1 << 30)  # 25 MiB fits in 1 GiB
    with pytest.raises(CryomapError, match=r"--box: a 512³ label box needs about 1\.5 GiB of memory, and 1\.0 GiB"):
        check_label_box(512, available=1 << 30)
    with pytest.raises(CryomapError, match="4096 × 4096 px micrograph"):
        check_micrograph_size(4096, available=100 << 20)


@pytest.mark.parametrize("command", ["dataset", "train"])
def test_binary_yaml(work, capsys, command):
    bad = work / "config.yaml"
    bad.write_bytes(bytes(range(256)) * 8)
    g = Guard(work)
    argv = ["dataset", "build", bad, "-o", work / "ds"] if command == "dataset" else ["train", bad, "-o", work / "run"]
    rc, lines, _ = run(argv, capsys)
    assert rc == 2
    one_line(lines, "config.yaml", "not a yaml", "binary")
    g.check()


@pytest.fixture(scope="module")
def trained_run(base) -> Path:
    """A one-step U-Net run on a dataset of the base particles (predict needs a dataset-trained run)."""
    ds_cfg = base / "ds.yaml"
    ds_cfg.write_text(f"label: {{apix: {S_APIX}, box: 48}}\ncondition: {{mode: stack, n_images: 4}}\n"
                      "split: {by: particles, val_fraction: 0.0, particle_holdout: 0.25}\n"
                      f"targets:\n  - {{name: a, particles: {base / 'parts/particles.star'}, "
                      f"map: {base / 'sim/1BHL/maps/1BHL_truth.mrc'}}}\n")
    assert main(["dataset", "build", str(ds_cfg), "-o", str(base / "ds")]) == 0
    cfg = base / "unet.yaml"
    cfg.write_text(f"model: {{name: unet3d, widths: [2, 4]}}\ndata: {{dataset_dir: {base / 'ds'}}}\n"
                   "trainer: {max_steps: 1, accelerator: cpu, seed: 0}\n")
    assert main(["train", str(cfg), "-o", str(base / "run")]) == 0
    return base / "run"


@pytest.mark.parametrize("damage, needle", [
    ("model.safetensors", "not a readable safetensors file"),
    ("model.json", "not a cryomap model description"),
])
def test_corrupt_model_files(work, trained_run, capsys, damage, needle):
    run_dir = work / "run"
    shutil.copytree(trained_run, run_dir)
    f = run_dir / damage
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    g = Guard(work)
    rc, lines, _ = run(["predict", run_dir, "--particles", work / "parts" / "particles.star", "-o", work / "p.mrc"], capsys)
    assert rc == 2
    one_line(lines, damage, needle)
    g.check()


def test_predict_refuses_a_nan_stack(work, trained_run, capsys):
    star = _nan_stack(work)
    g = Guard(work)
    rc, lines, _ = run(["predict", trained_run, "--particles", star, "-o", work / "p.mrc"], capsys)
    assert rc == 2
    one_line(lines, "particles.mrcs", "NaN")
    g.check()


def test_output_path_is_a_folder_or_below_a_file(work, capsys):
    truth = work / "sim" / "1BHL" / "maps" / "1BHL_truth.mrc"
    (work / "afile").write_text("not a folder\n")
    g = Guard(work)
    for force in ([], ["--force"]):
        rc, lines, _ = run(["labels", truth, "--box", "64", "-o", work / "parts", *force], capsys)
        assert rc == 2
        one_line(lines, "parts", "is a folder; give a file name")
    rc, lines, _ = run(["labels", truth, "--box", "64", "-o", work / "afile" / "label.mrc"], capsys)
    assert rc == 2
    one_line(lines, "label.mrc", "afile is a file, not a folder")
    rc, lines, _ = run(["evaluate", truth, truth, "-o", work / "afile" / "eval"], capsys)
    assert rc == 2
    one_line(lines, "afile is a file, not a folder")
    g.check()


def test_train_config_whose_box_does_not_fit_the_unet_levels(work, capsys):
    cfg = work / "bad.yaml"
    cfg.write_text("model: {name: unet3d, widths: [4, 8, 16]}\ndata: {synthetic: {n: 2, depth: 20, val_n: 0}}\n"
                   "trainer: {max_steps: 1, accelerator: cpu}\n")
    g = Guard(work)
    rc, lines, _ = run(["train", cfg, "-o", work / "run"], capsys)
    assert rc == 2
    one_line(lines, "bad.yaml", "divisible by 8", "D = 20")
    g.check()


# ---------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_exits_130_and_keeps_no_partial_output(work, capsys, monkeypatch):
    import cryomap.particles.extract as extract_mod
    from cryomap.io.atomic import atomic_dir

    def interrupted(source, out, *args, **kwargs):
        with atomic_dir(out) as tmp:
            (tmp / "particles.mrcs").write_bytes(b"\0" * 4096)  # half-way through
            raise KeyboardInterrupt

    monkeypatch.setattr(extract_mod, "extract_particles", interrupted)
    g = Guard(work)
    rc, lines, _ = run(["extract", work / "sim" / "1BHL", "--box", "48", "-o", work / "out"], capsys)
    assert rc == 130
    assert len(lines) == 1 and "interrupted" in lines[0]
    g.check()


# ---------------------------------------------------------------------------- misleading messages

@pytest.mark.parametrize("mode, needle", [(3, "mode 3 is complex"), (101, "mode 101 is 4-bit packed")])
def test_unsupported_mrc_modes_are_named(work, capsys, mode, needle):
    truth = work / "sim" / "1BHL" / "maps" / "1BHL_truth.mrc"
    raw = bytearray(truth.read_bytes())
    raw[12:16] = np.int32(mode).tobytes()
    bad = work / f"mode{mode}.mrc"
    bad.write_bytes(bytes(raw))
    g = Guard(work)
    for argv in (["info", bad], ["labels", bad, "--box", "64", "-o", work / "l.mrc"]):
        rc, lines, _ = run(argv, capsys)
        assert rc == 2
        line = one_line(lines, bad.name, needle)
        assert "truncated" not in line
    g.check()


def test_negative_cell_is_called_negative(work, capsys):
    truth = work / "sim" / "1BHL" / "maps" / "1BHL_truth.mrc"
    raw = bytearray(truth.read_bytes())
    raw[40:52] = np.float32([-64, -64, -64]).tobytes()
    bad = work / "neg.mrc"
    bad.write_bytes(bytes(raw))
    g = Guard(work)
    rc, lines, _ = run(["labels", bad, "--box", "64", "-o", work / "l.mrc"], capsys)
    assert rc == 2
    line = one_line(lines, "neg.mrc", "negative", "--in-apix")
    assert "cell is 0" not in line
    g.check()


def test_empty_csv_is_called_empty(work, capsys):
    coords = work / "sim" / "1BHL" / "ground_truth" / "particle_coordinates"
    for i, csv in enumerate(sorted(coords.glob("*.csv"))):
        csv.write_text("" if i == 0 else "X-Coordinate,Y-Coordinate,Diameter\n")
    (work / "sim" / "1BHL" / "ground_truth" / "1BHL_particles_selected.star").unlink()
    g = Guard(work)
    rc, lines, _ = run(["extract", work / "sim" / "1BHL", "--box", "48", "-o", work / "out"], capsys)
    assert rc == 2
    line = one_line(lines, "empty", ".csv")
    assert "left the micrograph" not in line
    g.check()


def test_cs_file_given_as_a_star(work, capsys, shared_data):
    fake = work / "particles.star"
    shutil.copy(shared_data / "star" / "empiar_10076_7.cs", fake)
    g = Guard(work)
    rc, lines, _ = run(["reconstruct", fake, "-o", work / "m.mrc"], capsys)
    assert rc == 2
    line = one_line(lines, "particles.star", "cryoSPARC .cs")
    assert "no table" not in line
    g.check()


# ---------------------------------------------------------------------------- library chatter

def test_no_library_warning_reaches_the_terminal(work, capsys):
    """The README path on the base data: no Python warning is shown; ``train`` runs as a real process
    (Lightning logs its banners to its own handler), whose stderr must hold only cryomap's own lines."""
    import os
    import subprocess
    import sys
    import warnings

    cfg = work / "unet.yaml"
    cfg.write_text("model: {name: unet3d, widths: [2]}\ndata: {synthetic: {n: 2, depth: 8, val_n: 1}}\n"
                   "trainer: {max_steps: 2, accelerator: cpu, seed: 0}\n")
    truth = work / "sim" / "1BHL" / "maps" / "1BHL_truth.mrc"
    steps = [
        ["info", work / "parts" / "particles.star"],
        ["extract", work / "sim" / "1BHL", "--box", "48", "--invert", "-o", work / "parts2"],
        ["labels", truth, "--apix", str(S_APIX), "--box", "64", "-o", work / "label.mrc"],
        ["evaluate", truth, truth, "--auto-mask", "-o", work / "eval"],
    ]
    for argv in steps:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            rc, lines, _ = run(argv, capsys)
        assert rc == 0, (argv, lines)
        assert not [str(w.message) for w in shown], argv[0]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-m", "cryomap", "train", str(cfg), "-o", str(work / "run2")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "━" not in ln]
    assert all(not re.search(r"Warning\b|GPU available|TPU available|\.py:\d+: ", ln) for ln in lines), lines
