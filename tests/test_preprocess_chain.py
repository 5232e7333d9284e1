"""The preprocessing chain on simulated particles (the simulator's clean projections are the truth),
and ``cryomap preprocess`` through the real command, bad inputs included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryomap.cli import main
from cryomap.io.mrc import read_stack, write_mrc
from cryomap.io.star import read_star, write_star
from cryomap.particles.source import open_particles
from cryomap.preprocess.chain import apply_chain

N = 80


def _pick(df: pd.DataFrame, r: int) -> tuple[str, int, int]:
    row = df.iloc[r]
    return Path(str(row["rlnMicrographName"])).name, round(float(row["rlnCoordinateX"])), round(float(row["rlnCoordinateY"]))


@pytest.fixture(scope="module", params=[0.1, 1.0], ids=["snr0.1", "snr1"])
def simulated(request, tmp_path_factory):
    """(extracted particles STAR, their clean projections in the same row order) at one SNR."""
    from cryomap.particles.extract import extract_particles
    from cryomap.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp(f"sim{request.param}")
    folder = simulate_dataset(["7PBL"], root / "sim", n_particles=N, micrograph_size=768, apix=3.2,
                              snr=request.param, box=64, seed=3, progress=False)[0]
    res = extract_particles(folder, root / "ext", box=64, invert=True, progress=False)
    src = open_particles(res.star_path)
    clean = open_particles(folder / "clean" / "particles.star")
    where = {_pick(clean.table, r): r for r in range(len(clean))}
    return res.star_path, clean.images([where[_pick(src.table, r)] for r in range(len(src))])


def _median_cc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return float(np.median((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))


def test_ctf_correction_and_denoising_each_raise_the_correlation_with_the_truth(simulated):
    star, clean = simulated
    src = open_particles(star)

    def cc(steps):
        return _median_cc(apply_chain(src, steps).images(), clean)

    assert cc([{"step": "wiener"}]) > cc([])
    for method in ("lowpass", "affine"):
        assert cc([{"step": "phase-flip"}, {"step": "denoise", "method": method}]) > cc([{"step": "phase-flip"}]) + 0.1
    # one pass through the network gives every intermediate of the chain
    chain = apply_chain(src, [{"step": "phase-flip"}, {"step": "denoise", "method": "unet-small"},
                              {"step": "blend", "weight": 0.5},
                              {"step": "blend", "weight": 2 / 3, "original": "phase-flip", "key": "blend2"}])
    got = {k: _median_cc(v, clean) for k, v in chain.read_steps(np.arange(len(src))).items()}
    assert got["phase-flip"] > got["input"]  # CTF correction raises it
    assert got["denoise"] > got["phase-flip"] + 0.2  # denoising raises it
    # the blends sit between their two inputs, (2D+O)/3 nearer D
    assert got["phase-flip"] < got["blend"] < got["blend2"] < got["denoise"]


def test_preprocess_command_writes_the_chain_and_its_record(simulated, tmp_path):
    star, _ = simulated
    out = tmp_path / "pp"
    steps = "standardize,phase-flip,denoise,blend,clahe,guided"
    assert main(["preprocess", str(star), "-o", str(out), "--steps", steps, "--figure", "--chunk", "50"]) == 0
    src, done = open_particles(star), open_particles(out / "particles.star")
    assert len(done) == len(src) and done.pixel_size == src.pixel_size
    np.testing.assert_allclose(done.table.rlnDefocusU, src.table.rlnDefocusU)
    assert (done.table.rlnCtfDataArePhaseFlipped == 1).all()
    # the images are exactly the chain applied through the library
    lib = apply_chain(src, [{"step": s} for s in steps.split(",")])
    np.testing.assert_allclose(done.images([0, 77]), lib.images([0, 77]), atol=1e-5)
    block = read_star(out / "particles.star").extra_blocks["cryomap_preprocess"]
    assert block.cryomapStep.tolist() == steps.split(",")
    import json

    record = json.loads((out / "preprocess.json").read_text())
    assert [s["step"] for s in record["steps"]] == steps.split(",") and record["steps"][2]["method"] == "unet"
    for name in ("preprocess_gallery.png", "preprocess_steps.png"):
        assert (out / name).stat().st_size > 10_000


def test_config_file_sets_parameters(simulated, tmp_path):
    star, _ = simulated
    cfg = tmp_path / "chain.yaml"
    cfg.write_text("steps:\n  - {step: wiener, constant: 0.5}\n  - {step: denoise, method: lowpass, resolution: 20}\n"
                   "  - {step: denoise, method: affine, key: denoise2}\n")
    assert main(["preprocess", str(star), "-o", str(tmp_path / "o"), "--config", str(cfg)]) == 0
    import json

    steps = json.loads((tmp_path / "o" / "preprocess.json").read_text())["steps"]
    assert steps[0]["constant"] == 0.5 and steps[1]["resolution"] == 20 and steps[2]["key"] == "denoise2"


def _no_ctf_star(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "s.mrcs", rng.normal(size=(6, 16, 16)).astype(np.float32), 2.0)
    write_star(tmp_path / "s.star", pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@s.mrcs" for i in range(6)],
                                                  "rlnImagePixelSize": 2.0}))
    return tmp_path / "s.star"


def _bad(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path, capsys, monkeypatch):
    star = _no_ctf_star(tmp_path)
    out = tmp_path / "out"
    err = _bad(capsys, ["preprocess", str(star), "-o", str(out), "--steps", "standardize,phase-flip"])
    assert "rlnDefocusU" in err and "s.star" in err
    err = _bad(capsys, ["preprocess", str(star), "-o", str(out), "--steps", "standardize,sharpen"])
    assert "unknown preprocessing step 'sharpen'" in err
    err = _bad(capsys, ["preprocess", str(star), "-o", str(out), "--steps", "blend"])
    assert "needs a 'denoise' step" in err
    import cryomap.preprocess.denoise as dn

    monkeypatch.setitem(dn.TOPAZ_MODELS, "unet", "no_such_weights.sav")
    err = _bad(capsys, ["preprocess", str(star), "-o", str(out), "--steps", "denoise"])
    assert "weights" in err and "missing" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_nan_and_constant_images_are_counted_not_propagated(tmp_path, capsys):
    star = _no_ctf_star(tmp_path)
    data = read_stack(tmp_path / "s.mrcs", mmap=False).data
    data[1, 3, 3] = np.nan
    data[4] = 7.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_mrc(tmp_path / "s.mrcs", data, 2.0, force=True)
    out = tmp_path / "o"
    assert main(["preprocess", str(star), "-o", str(out), "--steps", "standardize,denoise,clahe,guided"]) == 0
    err = capsys.readouterr().err
    assert "1 non-finite image written as zeros" in err and "1 constant image" in err
    written = read_stack(out / "particles.mrcs", mmap=False).data
    assert np.isfinite(written).all() and np.all(written[1] == 0)
