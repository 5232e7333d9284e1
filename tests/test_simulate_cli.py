"""``cryomap simulate`` command: listing, a small run, and one-line errors with nothing written."""

from __future__ import annotations

import json

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
