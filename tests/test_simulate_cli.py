"""``cryomap simulate`` command: listing, a small run, and one-line errors with nothing written."""

from __future__ import annotations

import json

import pytest

from cryomap.cli import main


def test_list_shows_builtins(capsys):
    assert main(["simulate", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("7PBL", "7CTH", "4JSV", "1BHL"):
        assert name in out
    assert "kDa" in out


def test_small_run_writes_a_target_folder(tmp_path, capsys):
    out = tmp_path / "sim"
    rc = main(["simulate", "--builtin", "1BHL", "--particles", "12", "--micrograph-size", "192", "--apix", "2.5",
               "--snr", "0.2", "--defocus", "12000", "18000", "--seed", "3", "-o", str(out)])
    assert rc == 0
    manifest = json.loads((out / "1BHL" / "manifest.json").read_text())
    assert manifest["parameters"]["defocus_range"] == [12000.0, 18000.0]
    assert manifest["n_particles"] == 12 and manifest["seed"] == 3
    assert "simulated 1 target" in capsys.readouterr().err
    # running again without --force refuses and keeps what is there
    assert main(["simulate", "--builtin", "1BHL", "--particles", "12", "-o", str(out)]) == 2
    assert (out / "1BHL" / "manifest.json").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sim"
    for args in (["--snr", "0"], ["--builtin", "NOPE"], ["--micrograph-size", "20"],
                 ["--structure", str(tmp_path / "missing.pdb")]):
        rc = main(["simulate", "--builtin", "1BHL", "--apix", "2.5", "--particles", "5", *args, "-o", str(out)]
                  if args[0] != "--builtin" else ["simulate", *args, "-o", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("cryomap: error:") and "\n" not in err, (args, err)
        assert not out.exists()


def _junk(tmp_path):
    bad = tmp_path / "inputs" / "junk.cif"
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(b"\x00\x01 this is not a structure\n")
    return ["--structure", str(bad)], "junk.cif"


def _empty(tmp_path):
    empty = tmp_path / "inputs" / "empty.pdb"
    empty.parent.mkdir(exist_ok=True)
    empty.write_text("HEADER    EMPTY MODEL\nEND\n")
    return ["--structure", str(empty)], "empty.pdb"


ISSUE3_BAD_INPUTS = {
    # name: (arguments, or a maker of (arguments, file name); what the line must say; must it name the file)
    "unreadable structure": (_junk, "not a readable", True),
    "empty model": (_empty, "no atoms", True),
    "box too small": (["--builtin", "1BHL", "--box", "16"], "too small for 1BHL", False),
    "SNR zero": (["--builtin", "1BHL", "--snr", "0"], "SNR must be a positive", False),
    "SNR negative": (["--builtin", "1BHL", "--snr", "-0.5"], "SNR must be a positive", False),
    "micrograph smaller than the box": (["--builtin", "1BHL", "--micrograph-size", "20"], "smaller than", False),
    "too many particles for the micrographs": (["--builtin", "1BHL", "--particles", "500", "--micrographs", "1",
                                                "--micrograph-size", "128"], "hold at most", False),
}


@pytest.mark.parametrize("case", list(ISSUE3_BAD_INPUTS))
def test_issue3_bad_inputs_one_line_nothing_written(tmp_path, capsys, case):
    args, says, names_file = ISSUE3_BAD_INPUTS[case]
    culprit = None
    if callable(args):
        args, culprit = args(tmp_path)
    out = tmp_path / "sim"
    capsys.readouterr()
    argv = ["simulate", *args, "--apix", "2.5", "-o", str(out)]
    if "--particles" not in args:
        argv += ["--particles", "5"]
    rc = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("cryomap: error:"), lines
    assert says in lines[0], lines[0]
    if names_file:
        assert culprit in lines[0], lines[0]
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_map_source_without_voxel_size_needs_map_apix(shared_data, tmp_path, capsys):
    from cryomap.io.mrc import read_map

    src = shared_data / "maps" / "70S_ribosome_65px.mrc"  # header cell is 0
    base = ["simulate", "--structure", str(src), "--particles", "6", "--micrograph-size", "256", "--apix", "2"]
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "70S_ribosome_65px.mrc" in err and "--map-apix" in err and "\n" not in err
    assert not (tmp_path / "a").exists()
    assert main([*base, "--map-apix", "1.0", "-o", str(tmp_path / "b")]) == 0
    truth = read_map(tmp_path / "b" / "70S_ribosome_65px" / "maps" / "70S_ribosome_65px_truth.mrc")
    assert truth.apix == 2.0 and truth.data.std() > 0


def test_simulate_without_a_molecule_is_refused_not_defaulted(tmp_path, capsys):
    """No silent default for what to simulate: one line naming the three ways, nothing written."""
    capsys.readouterr()
    assert main(["simulate", "-o", str(tmp_path / "sim")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--builtin" in err[0] and "--procedural" in err[0]
    assert not (tmp_path / "sim").exists()
