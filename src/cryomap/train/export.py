"""The weights and description a finished run hands to ``predict`` (safetensors + JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from safetensors.torch import save_file

from cryomap.io.atomic import atomic_path


def inference_network(module: pl.LightningModule):
    """The network predict should use: the EMA weights for diffusion, the trained ones otherwise."""
    ema = getattr(module, "ema", None)
    return ema.net if ema is not None else module.net


def export_model(module: pl.LightningModule, hparams: dict[str, Any], run_dir: Path) -> Path:
    """Write ``model.json`` then ``model.safetensors`` (last, atomically) into ``run_dir``."""
    net = inference_network(module)
    info = {"config": hparams, "in_channels": int(module.hparams["in_channels"]), "weights": "model.safetensors"}
    with atomic_path(run_dir / "model.json", force=True) as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    out = run_dir / "model.safetensors"
    with atomic_path(out, force=True) as tmp:
        save_file(state, str(tmp), metadata={"model": hparams["model"]["name"]})
    return out
