"""``train(config, run_dir)``: one Lightning run → a run folder.

Run folder::

    RUN_DIR/
      config.yaml            resolved config (defaults filled, dataset meta added)
      checkpoints/best.ckpt  lowest val/loss (train/loss when there is no validation set)
      checkpoints/last.ckpt  latest state; ``--resume`` continues from it
      logs/csv/metrics.csv   CSV log;  logs/tensorboard/  TensorBoard events
      model.safetensors      final weights for prediction (the EMA weights for diffusion)
      model.json             what predict needs to rebuild the network and the condition
      ddp_weights_check.json (multi-process runs) whether all ranks ended with identical weights

The folder is written as training goes (so an interrupted run can resume); ``model.safetensors``
is written last and atomically, so its presence means the run completed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import yaml

from cryomap.errors import BadInputError, OutputExistsError
from cryomap.io.atomic import atomic_path, check_replaceable_dir, mark_output
from cryomap.train.config import TrainConfig


def launch_rank() -> int:
    """Global rank of this process as set by Lightning's DDP launcher or torchrun (0 if none)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK", 0)) * 1000 + int(os.environ.get("LOCAL_RANK", 0))


def _prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> Path | None:
    """Check/create the run folder; return the checkpoint to resume from (or None)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not last.exists():
            raise BadInputError("nothing to resume: checkpoints/last.ckpt not found", run_dir)
        return last
    if launch_rank() == 0 and run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise OutputExistsError("run folder already exists; pass --resume to continue or --force to start over", run_dir)
        check_replaceable_dir(run_dir, force)  # --force replaces only a folder cryomap wrote
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if launch_rank() == 0:
        mark_output(run_dir, "train")
    return None


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, force=True) as tmp:
        tmp.write_text(text)


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    callbacks: list | None = None,
) -> Path:
    """Train the model of ``config`` into ``run_dir``; return the path of ``model.safetensors``.

    ``resume`` continues from ``checkpoints/last.ckpt`` (same seed and config → the same losses
    as an uninterrupted run on CPU). ``trainer.devices > 1`` runs DDP (gloo on CPU, NCCL on GPU).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from cryomap.train.callbacks import ExactResume, StepProgressBar, WeightsSyncCheck
    from cryomap.train.data import make_datamodule
    from cryomap.train.export import export_model
    from cryomap.train.modules import module_for

    run_dir = Path(run_dir).resolve()
    ckpt = _prepare_run_dir(run_dir, resume, force)
    tcfg = config.trainer
    pl.seed_everything(tcfg.seed, workers=True, verbose=False)

    dm = make_datamodule(config.data, tcfg.seed)
    meta: dict[str, Any] = dict(getattr(dm, "meta", {}))
    hparams = config.model_dump(mode="json")
    hparams["meta"] = meta
    if launch_rank() == 0 and not resume:
        _write_text(run_dir / "config.yaml", yaml.safe_dump(hparams, sort_keys=False))
    module = module_for(hparams, int(meta["channels"]))
    if config.init_from and not resume:
        _init_weights(module, config.init_from)

    has_val = _has_val(dm)
    monitor = "val/loss" if has_val else "train/loss"
    ckpt_cb = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="min",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    cbs = [ckpt_cb, ExactResume(), WeightsSyncCheck(run_dir / "ddp_weights_check.json"), *(callbacks or [])]
    if tcfg.progress_bar:
        cbs.append(StepProgressBar())
    loggers = [
        CSVLogger(save_dir=str(run_dir), name="logs", version="csv"),
        TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard", default_hp_metric=False),
    ]
    strategy: Any = tcfg.strategy
    multi = (isinstance(tcfg.devices, int) and tcfg.devices > 1) or tcfg.num_nodes > 1
    if strategy == "auto" and multi:
        strategy = "ddp"
    _quiet_lightning()
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_steps=tcfg.max_steps,
        max_epochs=tcfg.max_epochs if tcfg.max_epochs else (-1 if tcfg.max_steps > 0 else None),
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        num_nodes=tcfg.num_nodes,
        strategy=strategy,
        precision=tcfg.precision,
        deterministic=tcfg.deterministic,
        log_every_n_steps=tcfg.log_every,
        check_val_every_n_epoch=tcfg.val_every_epochs,
        gradient_clip_val=config.optim.grad_clip,
        accumulate_grad_batches=tcfg.accumulate_grad_batches,
        num_sanity_val_steps=0,
        logger=loggers,
        callbacks=cbs,
        enable_progress_bar=tcfg.progress_bar,
        enable_model_summary=False,
    )
    old_log = _read_csv_log(run_dir, ckpt) if ckpt and launch_rank() == 0 else None
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True if ckpt else None)
    if old_log is not None and trainer.is_global_zero:
        _merge_csv_log(run_dir, *old_log)
    out = run_dir / "model.safetensors"
    if trainer.is_global_zero:
        export_model(module, hparams, run_dir)
    trainer.strategy.barrier()
    return out


def _init_weights(module, source: str) -> None:
    """Load the weights of a finished run (or a shipped model) into a fresh module (and its EMA copy)."""
    from cryomap.train.predict import load_model

    loaded = load_model(source)
    try:
        module.net.load_state_dict(loaded.net.state_dict())
    except RuntimeError as exc:
        raise BadInputError(f"init_from: its network differs from this config's ({exc})", source) from exc
    ema = getattr(module, "ema", None)
    if ema is not None:
        ema.net.load_state_dict(loaded.net.state_dict())


class _DropAdverts(logging.Filter):
    """Lightning logs an advertisement for a hosted logger at every fit; users need not see it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    """Hide Lightning messages that say nothing about this run (its own deprecation, an advert)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in logger.filters):
        logger.addFilter(_DropAdverts())


def _has_val(dm) -> bool:
    try:
        vl = dm.val_dataloader()
    except Exception:  # datamodules that need setup() first report no validation here
        dm.setup("fit")
        vl = dm.val_dataloader()
    if isinstance(vl, list):
        return len(vl) > 0
    try:
        return len(vl) > 0
    except TypeError:
        return True


def _read_csv_log(run_dir: Path, ckpt: Path) -> tuple[list[dict], int] | None:
    """Rows of logs/csv/metrics.csv logged before the checkpoint's step (Lightning's CSV logger
    starts a fresh file on resume; these rows are put back in front afterwards)."""
    import csv

    import torch

    path = run_dir / "logs" / "csv" / "metrics.csv"
    if not path.exists():
        return None
    step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step") not in (None, "") and int(r["step"]) < step]
    return rows, step


def _merge_csv_log(run_dir: Path, old_rows: list[dict], step: int) -> None:
    import csv

    path = run_dir / "logs" / "csv" / "metrics.csv"
    new_rows: list[dict] = []
    if path.exists():
        with path.open(newline="") as f:
            new_rows = list(csv.DictReader(f))
    keys: list[str] = []
    for r in old_rows + new_rows:
        keys += [k for k in r if k not in keys]
    keys = ["epoch", "step"] + sorted(k for k in keys if k not in ("epoch", "step"))
    with atomic_path(path, force=True) as tmp:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(old_rows + new_rows)


def read_run_meta(run_dir: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a finished run."""
    p = Path(run_dir) / "model.json"
    if not p.exists():
        raise BadInputError("no model.json: the run did not finish (resume it) or this is not a run folder", run_dir)
    return json.loads(p.read_text())
