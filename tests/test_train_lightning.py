"""Training runs (Lightning) on tiny synthetic data: run folder, exact resume, DDP, prediction."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cryomap.cli import main as cli
from cryomap.io.mrc import read_map, write_mrc
from cryomap.io.star import write_star
from cryomap.train.config import config_from_dict
from cryomap.train.run import train

D = 16

UNET = {"name": "unet3d", "widths": [8, 16], "bottleneck": 32}
DIFF = {"name": "diffusion", "model_channels": 8, "channel_mult": [1, 2], "attention_resolutions": [8]}


def _config(model: dict, max_steps: int, **extra) -> dict:
    cfg = {
        "model": model,
        "data": {"synthetic": {"n": 4, "depth": D, "channels": 1, "val_n": 1}, "batch_size": 2},
        "trainer": {"max_steps": max_steps, "log_every": 1, "progress_bar": False, "seed": 3},
        "diffusion": {"steps": 100, "ema_decay": 0.9},
        "loss": {"kind": "dice_bce"},
    }
    cfg.update(extra)
    return cfg


def _losses(run: Path) -> dict[int, float]:
    with (run / "logs" / "csv" / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.fixture(scope="module")
def diffusion_runs(tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted 4-step (2-epoch) diffusion run and one stopped after 2 steps then resumed."""
    base = tmp_path_factory.mktemp("runs")
    full, part = base / "full", base / "part"
    train(config_from_dict(_config(DIFF, 4)), full)
    train(config_from_dict(_config(DIFF, 2)), part)
    train(config_from_dict(_config(DIFF, 4)), part, resume=True)
    return full, part


def test_run_folder_has_checkpoints_config_and_logs(diffusion_runs):
    full, _ = diffusion_runs
    for rel in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "config.yaml", "model.json",
                "model.safetensors", "logs/csv/metrics.csv"):
        assert (full / rel).is_file(), rel
    assert any((full / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    resolved = yaml.safe_load((full / "config.yaml").read_text())
    assert resolved["diffusion"]["schedule"] == "cosine" and resolved["optim"]["lr"] == 1e-3  # defaults filled
    assert resolved["meta"]["depth"] == D
    ckpt = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)  # loads without unpickling
    assert ckpt["global_step"] == 4
    # the exported weights are the EMA weights, not the raw ones
    from safetensors.torch import load_file

    exported = load_file(str(full / "model.safetensors"))
    sd = ckpt["state_dict"]
    torch.testing.assert_close(exported["out.2.weight"], sd["ema.net.out.2.weight"])
    assert not torch.equal(sd["ema.net.out.2.weight"], sd["net.out.2.weight"])


def test_resume_gives_the_same_loss_curve(diffusion_runs):
    full, part = diffusion_runs
    a, b = _losses(full), _losses(part)
    assert sorted(a) == sorted(b) == list(range(4))
    for step in range(4):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step
    from safetensors.torch import load_file

    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7)


def test_existing_run_needs_force_or_resume(tmp_path, capsys):
    cfg_path = tmp_path / "u.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(UNET, 2)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    assert cli(["train", str(cfg_path), "-o", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "keep.txt").exists()
    assert cli(["train", str(tmp_path / "u.yaml"), "-o", str(tmp_path / "new"), "--resume"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"batch_size": 1}, "trainer": {"max_steps": 1}}))
    assert cli(["train", str(bad), "-o", str(tmp_path / "x")]) == 2
    assert "dataset_dir or data.synthetic" in capsys.readouterr().err


def _particles(tmp_path: Path, n: int = 12, box: int = 24) -> Path:
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((n, box, box)).astype(np.float32)
    write_mrc(tmp_path / "parts.mrcs", stack, 2.0)
    df = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@parts.mrcs" for i in range(n)],
        "rlnOpticsGroup": 1, "rlnImagePixelSize": 2.0, "rlnImageSize": box, "rlnVoltage": 300.0,
        "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
    })
    return write_star(tmp_path / "parts.star", df)


def test_predict_unet_and_diffusion_through_the_cli(tmp_path, diffusion_runs):
    star = _particles(tmp_path)
    unet_run = tmp_path / "unet"
    train(config_from_dict(_config(UNET, 2)), unet_run)
    out = tmp_path / "u.mrc"
    assert cli(["predict", str(unet_run), "--particles", str(star), "-o", str(out)]) == 0
    m = read_map(out)
    assert m.data.shape == (D, D, D) and m.apix == 1.0
    assert 0.0 <= m.data.min() and m.data.max() <= 1.0
    # the same prediction from the last checkpoint (training ended at an epoch end)
    from cryomap.train.predict import predict_map

    via_ckpt = predict_map(unet_run / "checkpoints" / "last.ckpt", star)
    np.testing.assert_allclose(via_ckpt.map.data, m.data, rtol=1e-5, atol=1e-6)
    assert cli(["predict", str(unet_run), "--particles", str(star), "-o", str(out)]) == 2  # no --force
    # diffusion: mean map and per-voxel std of K samples
    full, _ = diffusion_runs
    dout = tmp_path / "d.mrc"
    assert cli(["predict", str(full), "--particles", str(star), "-o", str(dout), "--samples", "2", "--steps", "3"]) == 0
    mean, std = read_map(dout), read_map(tmp_path / "d_std.mrc")
    assert mean.data.shape == std.data.shape == (D, D, D)
    assert float(std.data.mean()) > 0
    again = predict_map(full, star, samples=2, steps=3)
    np.testing.assert_allclose(again.map.data, mean.data, rtol=1e-5, atol=1e-6)  # seeded → reproducible


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    cfg = _config(UNET, 4)
    cfg["data"]["synthetic"]["n"] = 8
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "cryomap", "train", str(cfg_path), "-o", str(run), "--devices", "2", "--accelerator", "cpu"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads((run / "ddp_weights_check.json").read_text())
    assert check["world_size"] == 2
    assert check["identical"] is True and check["max_abs_diff"] == 0.0
    # the two ranks saw different halves of the data: identical weights mean gradients were averaged
    assert _losses(run)  # rank 0 logged the curve
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
