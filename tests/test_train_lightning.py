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
    import lightning.pytorch as pl

    class Interrupt(pl.Callback):  # stop the same 4-step run after its first epoch (2 steps)
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step >= 2:
                trainer.should_stop = True

    # a warm-up + cosine learning rate (its shape depends on max_steps): resume must restore the scheduler
    cfg = config_from_dict(_config(DIFF, 4, optim={"schedule": "cosine", "warmup_steps": 1, "min_lr_ratio": 0.1}))
    train(cfg, full)
    train(cfg, part, callbacks=[Interrupt()])
    assert torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    train(cfg, part, resume=True)
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


def test_ema_warmup_follows_early_weights_and_checkpoints_its_count():
    from cryomap.train.modules import EMA

    net = torch.nn.Linear(3, 2)
    w0 = net.weight.detach().clone()
    ema = EMA(net, decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0)/(10 + 0)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.net.weight, 0.1 * w0 + 0.9 * (w0 + 1.0))
    assert int(ema.num_updates) == 1 and ema.current_decay() == pytest.approx(2 / 11)
    for _ in range(20_000):
        ema.num_updates += 1
    assert ema.current_decay() == 0.999  # long runs reach the configured decay
    restored = EMA(torch.nn.Linear(3, 2), decay=0.999)
    restored.load_state_dict(ema.state_dict())
    assert int(restored.num_updates) == int(ema.num_updates)
    plain = EMA(net, decay=0.999, warmup=False)
    before = plain.net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    plain.update(net)
    torch.testing.assert_close(plain.net.weight, 0.999 * before + 0.001 * net.weight.detach())


def test_learning_rate_schedules():
    from cryomap.train.modules import lr_lambda, make_optimizer

    assert lr_lambda("constant", 0, 100) is None
    warm = lr_lambda("constant", 4, 100)
    assert [warm(i) for i in (0, 3, 4, 50)] == [0.25, 1.0, 1.0, 1.0]
    cos = lr_lambda("cosine", 2, 12, min_ratio=0.1)
    assert cos(0) == 0.5 and cos(2) == pytest.approx(1.0) and cos(7) == pytest.approx(0.55) and cos(12) == pytest.approx(0.1)
    assert cos(50) == pytest.approx(0.1)
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert isinstance(make_optimizer(p, {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.9}), torch.optim.SGD)
    assert type(make_optimizer(p, {"lr": 0.1, "weight_decay": 0.0})) is torch.optim.AdamW


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
    assert cli(["predict", str(full), "--particles", str(star), "-o", str(dout), "--samples", "2", "--steps", "3",
                "--batch", "2"]) == 0
    mean, std = read_map(dout), read_map(tmp_path / "d_std.mrc")
    assert mean.data.shape == std.data.shape == (D, D, D)
    assert float(std.data.mean()) > 0
    again = predict_map(full, star, samples=2, steps=3)
    # seeded → reproducible, and (η = 0) independent of how many samples ran through the net together
    # (up to float32 rounding: batched convolutions sum in another order)
    np.testing.assert_allclose(again.map.data, mean.data, rtol=1e-4, atol=1e-4)


def test_ddp_two_cpu_processes_average_gradients(tmp_path):
    """2 gloo processes × batch 2 must end where 1 process × batch 4 ends.

    The synthetic set holds 4 samples, so every step's global batch is the whole set, split 2 + 2
    over the ranks (which half goes where depends on Lightning's distributed sampler, which does
    not matter for the sum). Identical weights on both ranks alone would also hold if each rank
    just used its own gradient on identical data; equality with the single-process run holds only
    if the gradients are averaged over the ranks. SGD keeps the comparison linear in the gradient
    (Adam's g/√v would amplify rounding noise in near-zero gradients to ±lr).
    """
    cfg = _config(UNET, 4, optim={"name": "sgd", "lr": 0.5, "momentum": 0.5})
    cfg["data"]["synthetic"]["n"] = 4
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
    assert _losses(run)  # rank 0 logged the curve
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    # the same 4 steps in one process with the global batch of 4
    single = dict(cfg, data={**cfg["data"], "batch_size": 4})
    train(config_from_dict(single), tmp_path / "single")
    from safetensors.torch import load_file

    from cryomap.train.modules import build_network

    ddp_w, one_w = load_file(str(run / "model.safetensors")), load_file(str(tmp_path / "single" / "model.safetensors"))
    for k in one_w:
        torch.testing.assert_close(ddp_w[k], one_w[k], rtol=1e-4, atol=1e-5)
    # training moved the weights away from their (seeded) initial values, so the equality is not trivial
    torch.manual_seed(3)  # what seed_everything(3) gives the network's initialisation in train()
    init = build_network(yaml.safe_load((run / "config.yaml").read_text()), 1).state_dict()
    assert max(float((one_w[k] - init[k]).abs().max()) for k in init) > 1e-2
