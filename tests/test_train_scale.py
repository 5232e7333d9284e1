"""Training at scale on the CPU: DDP launched by torchrun (the multi-node recipe of docs/scaling.md,
here one node of two processes) and gradient accumulation, both checked against one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train_lightning import UNET, _config

from cryomap.train.config import config_from_dict
from cryomap.train.run import train


def _sgd_config(batch: int, **trainer) -> dict:
    cfg = _config(UNET, 4, optim={"name": "sgd", "lr": 0.5, "momentum": 0.5})
    cfg["data"]["synthetic"]["n"] = 4
    cfg["data"]["batch_size"] = batch
    cfg["trainer"].update(trainer)
    return cfg


def _close(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """Batch 2 × 2 accumulated steps must end where batch 4 ends (SGD: linear in the gradient)."""
    train(config_from_dict(_sgd_config(2, accumulate_grad_batches=2, max_steps=2)), tmp_path / "acc")
    train(config_from_dict(_sgd_config(4, max_steps=2)), tmp_path / "big")
    _close(tmp_path / "acc", tmp_path / "big")


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun not installed")
def test_torchrun_ddp_averages_gradients_like_one_process(tmp_path):
    """``torchrun --nproc-per-node 2 -m cryomap train ... --devices 2`` (gloo on CPU) equals 1 process × batch 4."""
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(_sgd_config(2)))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nnodes", "1", "--nproc-per-node", "2", "-m", "cryomap", "train", str(cfg_path),
         "-o", str(tmp_path / "run"), "--devices", "2", "--accelerator", "cpu"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(config_from_dict(_sgd_config(4)), tmp_path / "single")
    _close(tmp_path / "run", tmp_path / "single")
