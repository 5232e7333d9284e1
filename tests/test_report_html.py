"""The HTML report embeds every figure and references nothing outside itself (issue 6)."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import chromium, run_chromium

from cryomap.cli import main
from cryomap.evaluate.filters import low_pass
from cryomap.evaluate.report import build_report
from cryomap.evaluate.score import score_map, write_evaluation
from cryomap.io.mrc import write_mrc

D = 24
APIX = 2.0


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])


def _blob_map(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:D, :D, :D] - D // 2
    v = np.zeros((D, D, D))
    for _ in range(5):
        p = rng.uniform(-5, 5, 3)
        v += np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / 6.0)
    return v.astype(np.float32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    truth = _blob_map(0)
    pred = low_pass(truth, APIX, 8.0) + 0.01 * np.random.default_rng(1).normal(size=truth.shape).astype(np.float32)
    write_mrc(run / "truth.mrc", truth, APIX)
    write_mrc(run / "pred.mrc", pred, APIX)
    for name, m in (("model", pred), ("truth 20 Å", low_pass(truth, APIX, 20.0))):
        ev = score_map(m, truth, APIX, name=name)
        write_evaluation(run / "eval" / name.split()[0], ev, pred_path=run / "pred.mrc", truth_path=run / "truth.mrc")
    (run / "train" / "logs").mkdir(parents=True)
    (run / "train" / "logs" / "metrics.csv").write_text(
        "epoch,step,train_loss,val_loss\n0,0,0.9,\n0,1,0.7,\n0,1,,0.75\n1,2,0.5,\n1,3,0.4,\n1,3,,0.45\n"
    )
    from PIL import Image

    (run / "preprocess").mkdir()
    Image.fromarray((np.random.default_rng(2).random((16, 16)) * 255).astype(np.uint8)).save(run / "preprocess" / "clahe.png")
    (run / "run_summary.json").write_text(json.dumps({"target": "synthetic", "seconds": 1.5, "stages": {"train": 1.0}}))
    return run


def test_report_embeds_every_image_as_valid_png(run_dir, tmp_path):
    from PIL import Image

    out = build_report(run_dir, tmp_path / "report.html")
    text = out.read_text()
    refs = _Refs()
    refs.feed(text)
    # metrics FSC plot, 3 map views, loss curves, the preprocessing figure
    assert len(refs.imgs) >= 6
    for src in refs.imgs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 100
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
        with Image.open(io.BytesIO(raw)) as im:
            assert im.size[0] > 0 and im.size[1] > 0
    assert refs.links == []  # no external stylesheet, script or link
    # the metrics table names both maps and shows their resolutions
    assert "model" in text and "truth 20 Å" in text and "FSC 0.143 (Å)" in text
    assert "synthetic" in text  # run summary


def test_report_cli_refuses_to_overwrite_and_names_missing_folder(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "-o", str(out)]) == 0
    assert main(["report", str(run_dir), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope"), "-o", str(tmp_path / "x.html")]) == 2
    assert not (tmp_path / "x.html").exists()


def test_evaluate_cli_writes_metrics_and_says_if_aligned(run_dir, tmp_path):
    out = tmp_path / "ev"
    rc = main(["evaluate", str(run_dir / "pred.mrc"), str(run_dir / "truth.mrc"), "-o", str(out), "--auto-mask", "--threshold", "0.3"])
    assert rc == 0
    info = json.loads((out / "metrics.json").read_text())
    assert info["aligned"] is False and info["metrics"]["contour"] == pytest.approx(0.3)
    assert 0.9 < info["metrics"]["cc_mean"] <= 1.0
    assert info["fsc_masked_corrected"]["resolution_fsc0.143_A"] is not None
    rows = (out / "fsc.csv").read_text().splitlines()
    assert rows[0].startswith("shell,frequency_per_A,resolution_A,fsc,n_voxels") and len(rows) == D // 2 + 2
    assert (out / "fsc.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_cli_rejects_maps_on_different_grids(run_dir, tmp_path, capsys):
    write_mrc(tmp_path / "small.mrc", np.zeros((16, 16, 16), np.float32), APIX)
    rc = main(["evaluate", str(tmp_path / "small.mrc"), str(run_dir / "truth.mrc"), "-o", str(tmp_path / "ev")])
    assert rc == 2
    assert "differs from the truth" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no headless Chromium on PATH (Debian package `chromium`)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """The page loads in a real browser and draws its figures (not a blank or broken page)."""
    from PIL import Image

    page = build_report(run_dir, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    dom = run_chromium(page, "--dump-dom", tmp_path / "profile", "1200,3000", timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    refs = _Refs()
    refs.feed(dom.stdout)
    assert len(refs.imgs) >= 6 and "FSC 0.143 (Å)" in dom.stdout
    run = run_chromium(page, f"--screenshot={shot}", tmp_path / "profile", "1200,3000", timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    # figures drawn: a good share of the page is not white, and it is not one flat colour
    assert (pixels < 200).mean() > 0.02 and pixels.std() > 20
