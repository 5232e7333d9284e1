"""The README's five-minute tour runs as written: each command on the previous one's output."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from cryomap.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_commands() -> list[list[str]]:
    """The `cryomap ...` lines between the README's ``<!-- tour -->`` markers, as argument lists."""
    text = README.read_text()
    block = re.search(r"<!-- tour -->\s*```bash\n(.*?)```\s*<!-- /tour -->", text, re.S)
    assert block, "README.md has no <!-- tour --> block"
    lines = [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    assert all(ln.startswith("cryomap ") for ln in lines), lines
    return [shlex.split(ln)[1:] for ln in lines]


def test_tour_block_chains_its_outputs():
    """Every path a tour command reads (other than the first) was written by an earlier command."""
    cmds = tour_commands()
    assert len(cmds) >= 8
    written: list[str] = []
    for args in cmds:
        paths = [a for a in args if a.startswith("tour/")]
        outs = [args[i + 1] for i, a in enumerate(args) if a in ("-o", "--out")]
        for p in paths:
            if p in outs:
                continue
            assert any(p.startswith(w) or w.startswith(p + "/") for w in written), f"{args[0]} reads {p}, which no earlier command wrote"
        written += outs


@pytest.mark.slow
def test_readme_tour_runs_in_order(tmp_path, monkeypatch, capsys):
    """Each tour command exits 0, shows no library warning, and the README's claim about its numbers holds."""
    import warnings

    monkeypatch.chdir(tmp_path)
    for args in tour_commands():
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            assert main(args) == 0, " ".join(args)
        err = capsys.readouterr().err
        assert not [str(w.message) for w in shown], (args[0], [str(w.message) for w in shown])
        assert not re.search(r"Warning\b|\.py:\d+: ", err), (args[0], err[-2000:])
    assert Path("tour/report.html").is_file()
    physics = json.loads(Path("tour/scores/physics/metrics.json").read_text())
    learned = json.loads(Path("tour/scores/learned/metrics.json").read_text())
    # the README's claim: on this molecule (never seen by the shipped model) the learned map is
    # closer to the truth than the physics map of the same particles
    assert learned["metrics"]["cc_mean"] > physics["metrics"]["cc_mean"]
    assert learned["fsc"]["resolution_fsc0.5_A"] < physics["fsc"]["resolution_fsc0.5_A"]
