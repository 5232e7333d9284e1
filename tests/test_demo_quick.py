"""``cryomap demo --quick``: the whole pipeline runs end to end and its numbers make physical sense."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import chromium, run_chromium

from cryomap.cli import main

STAGES = ("simulate", "extract", "preprocess", "classify2d", "encode", "datasets", "train", "reconstruct",
          "predict", "evaluate", "report")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, str]:
    """Run ``cryomap demo --quick -o demo`` once (relative -o, as `make demo` gives it); (folder, stdout)."""
    import contextlib
    import io
    import os

    base = tmp_path_factory.mktemp("quick_demo")
    here = os.getcwd()
    buf = io.StringIO()
    try:
        os.chdir(base)
        with contextlib.redirect_stdout(buf):
            assert main(["demo", "--quick", "-o", "demo"]) == 0
    finally:
        os.chdir(here)
    return base / "demo", buf.getvalue()


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_writes_a_self_contained_report(quick_demo):
    out, printed = quick_demo
    assert "report:" in printed and str((out / "report.html").resolve()) in printed.replace("\n", "")

    info = json.loads((out / "run_summary.json").read_text())
    for stage in STAGES:
        assert stage in info["stage seconds"], stage
    seen, unseen = info["seen"], info["unseen"]
    oracle = "physics: true-pose reconstruction (oracle)"
    # physics: the seen molecule backprojected at its true poses agrees with its truth better than 30 Å
    assert seen[oracle]["fsc0.143_A"] < 30.0
    assert seen[oracle]["cc"] > 0.5
    # every trained model was scored on the seen molecule, beside the mean of the training labels
    for name in ("unet-stack", "diffusion-stack", "unet-classes", "unet-latents", "mean training label"):
        assert name in seen, name
    # the unseen molecule: its own reconstruction and the shipped physics-conditioned model, which
    # starts from that reconstruction and must not make it worse than the input by much
    learned = unseen["learned (physics-conditioned)"]
    physics = next(v for k, v in unseen.items() if k.startswith("physics:"))
    assert physics["fsc0.143_A"] < 30.0
    assert learned["cc"] > physics["cc"] - 0.05
    # the stack models, given a molecule they never saw, do worse than the physics-conditioned one
    assert learned["cc"] > unseen["unet-stack"]["cc"]

    page = (out / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 6
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "learned (physics-conditioned)" in page and "in no training set" in page
    # every compared map has its evaluation folder
    n_maps = len(seen) + len(unseen)
    assert len(list((out / "evaluate").glob("*/*/metrics.json"))) == n_maps


#: Injected into a copy of the page: after load, the body records how many images decoded.
_COUNT_IMAGES = ("<script>window.addEventListener('load', () => {const im = [...document.images];"
                 "document.body.dataset.total = im.length;"
                 "document.body.dataset.loaded = im.filter(i => i.complete && i.naturalWidth > 0).length;});</script>")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no headless Chromium on PATH (.ci/run installs Debian's `chromium`)")
def test_quick_demo_report_loads_every_figure_in_headless_chromium(quick_demo, tmp_path):
    """The demo's page, rendered by a real browser: every <img> decodes and the page is not blank."""
    from PIL import Image

    out, _ = quick_demo
    page = tmp_path / "report.html"
    page.write_text((out / "report.html").read_text().replace("</body>", _COUNT_IMAGES + "</body>"))
    window, budget = "1200,2400", "--virtual-time-budget=10000"
    dom = run_chromium(page, "--dump-dom", tmp_path / "profile", window, budget)
    assert dom.returncode == 0, dom.stderr[-2000:]
    total = re.search(r'data-total="(\d+)"', dom.stdout)
    loaded = re.search(r'data-loaded="(\d+)"', dom.stdout)
    assert total and loaded, "the page's load event did not run"
    assert int(total.group(1)) >= 6
    assert loaded.group(1) == total.group(1), f"{loaded.group(1)} of {total.group(1)} figures loaded"
    shot = tmp_path / "shot.png"
    run = run_chromium(page, f"--screenshot={shot}", tmp_path / "profile", window, budget)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert (pixels < 200).mean() > 0.02 and pixels.std() > 20  # figures drawn, not a flat page
