"""``cryomap demo --quick``: the whole path runs end to end and its numbers make physical sense (issue 6)."""

from __future__ import annotations

import base64
import json
import re

import pytest

from cryomap.cli import main


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_writes_a_self_contained_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative -o, as `make demo` gives it
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", "demo"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {(out / 'report.html').resolve()}" in printed

    info = json.loads((out / "run_summary.json").read_text())
    for stage in ("simulate", "extract", "dataset", "train", "predict", "reconstruct", "evaluate", "report"):
        assert stage in info["stage seconds"]
    head = info["headline"]
    for name in ("U-Net prediction", "oracle (all particles)", "mean training label", "truth 20 Å",
                 "oracle half sets (gold standard)"):
        assert name in head, name
    # physics: the truth low-passed to 20 Å crosses FSC 0.143 near 20 Å (within one shell of the label grid)
    box, apix = 32, float(info["label grid"].split(" at ")[1].split(" ")[0])
    shell = 1.0 / (box * apix)
    assert abs(1.0 / head["truth 20 Å"]["fsc0.143_A"] - 1.0 / 20.0) <= shell
    # the oracle, from particles with their true poses, agrees with the truth better than 30 Å
    assert head["oracle (all particles)"]["fsc0.143_A"] < 30.0
    assert head["U-Net prediction"]["cc_mean"] > 0.0

    page = (out / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 6
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "U-Net prediction" in page and "oracle (all particles)" in page
    # every compared map has its evaluation folder
    assert len(list((out / "evaluation").glob("*/metrics.json"))) == len(head)
