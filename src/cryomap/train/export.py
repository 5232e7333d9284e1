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


def ship_model(run_dir: str | Path, name: str, *, dest_root: str | Path | None = None, notes: str = "",
               default: bool = False) -> Path:
    """Copy a finished corpus-trained run into the package as ``cryomap/data/models/<name>/`` (``builtin:<name>``).

    Writes ``model.safetensors``, ``model.json`` (machine paths replaced by names) and ``README.md``
    (the corpus the model saw, the commands and seeds that made it, ``notes``). ``default`` makes
    it what plain ``builtin`` means.
    """
    import shutil

    from cryomap.train.builtin import models_root

    run = Path(run_dir)
    info = json.loads((run / "model.json").read_text())
    meta = info["config"].get("meta", {})
    if meta.get("source") != "pairs":
        raise ValueError(f"{run}: only corpus-trained (pair cache) models ship; this one was trained on {meta.get('source')}")
    root = Path(dest_root) if dest_root is not None else models_root()
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads(json.dumps(info))
    m = info["config"]["meta"]
    m["pairs_dir"] = Path(m.get("pairs_dir", "")).name
    info["config"]["data"]["pairs_dir"] = m["pairs_dir"]
    info["shipped_as"] = f"builtin:{name}"
    shutil.copyfile(run / "model.safetensors", out / "model.safetensors")
    (out / "model.json").write_text(json.dumps(info, indent=1))
    cfg = info["config"]
    train = m.get("train_molecules", [])
    procedural = [t for t in train if t.startswith("P")]
    lines = [
        f"# builtin:{name}", "",
        f"{cfg['model']['name']} on the `{m.get('mode')}` condition, trained on a pair cache of {len(train)} molecules "
        f"({len(train) - len(procedural)} PDB entries, {len(procedural)} procedural), {m.get('n_train_pairs')} training pairs.",
        "", notes.strip(), "",
        "## How to remake it", "",
        f"    {m.get('pairs_command') or '(pair cache command not recorded)'}   # pair seed {m.get('pairs_seed')}",
        f"    cryomap train CONFIG.yaml -o RUN    # config: model.json → config (trainer.seed {cfg['trainer']['seed']}, "
        f"{cfg['trainer']['max_steps']} steps)",
        "",
        f"Model grid: {m.get('grid_apix')} Å/voxel (pairs drawn at {m.get('apix_range')} Å/voxel, box {m.get('pair_box')}); "
        f"half maps with the engine's Wiener constant {m.get('wiener_constant')}.",
        "", "## Molecules seen in training", "", ", ".join(train), "",
        "## Validation molecules", "", ", ".join(m.get("val_molecules", [])), "",
        "## Never seen (test split; includes the demo's 7PBL, 4JSV, 1BHL, 7CTH)", "", ", ".join(m.get("test_molecules", [])), "",
    ]
    (out / "README.md").write_text("\n".join(lines))
    if default:
        (root / "DEFAULT").write_text(name + "\n")
    return out
