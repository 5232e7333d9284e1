"""Training callbacks."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch


class WeightsSyncCheck(pl.Callback):
    """After a multi-process run, check every rank ended with the same weights.

    DDP averages gradients, so all replicas must stay identical; a difference means gradients
    were not synchronised. The trainable weights of every rank are gathered and compared with
    rank 0's; rank 0 writes ``{"world_size", "identical", "max_abs_diff"}`` to ``path``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size <= 1:
            return
        flat = torch.cat([p.detach().flatten().float() for p in pl_module.parameters() if p.requires_grad])
        gathered = trainer.strategy.all_gather(flat)  # [world, n]
        if trainer.is_global_zero:
            diff = (gathered - gathered[0:1]).abs().max().item()
            report = {"world_size": int(trainer.world_size), "identical": diff == 0.0, "max_abs_diff": diff,
                      "n_parameters": int(flat.numel())}
            self.path.write_text(json.dumps(report, indent=2))


class ExactResume(pl.Callback):
    """Keep epoch-dependent data order and logged steps identical after ``--resume``.

    Lightning 2.6 restores a checkpoint written at the end of an epoch (after validation) with
    its epoch-progress counter one ahead, so samplers get ``set_epoch(e + 1)`` and the logger's
    step counter is one ahead too. This callback re-pins every train sampler to
    ``trainer.current_epoch`` before the epoch's iterator is created, and the logging step to
    ``global_step``, so a resumed run draws and logs what an uninterrupted run would.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.accumulate_grad_batches == 1:
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
        loader = trainer.fit_loop._combined_loader
        if loader is None:
            return
        for dl in loader.flattened:
            for s in (getattr(dl, "sampler", None), getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
                if s is not None and hasattr(s, "set_epoch"):
                    s.set_epoch(trainer.current_epoch)
