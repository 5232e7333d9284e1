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


class StepProgressBar(pl.callbacks.RichProgressBar):
    """Lightning's rich bar, labelled by optimiser step when training is bounded by ``max_steps``.

    Training by steps runs with ``max_epochs = -1``, which the stock bar prints as
    "Epoch 3/-2"; here the description reads "epoch 3 · 600 steps in all" (the bar itself counts
    the epoch's batches; the label is set at each epoch start). The bar's ``v_num``
    (the logger version, here the folder name "csv") is dropped from the metrics shown.
    """

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar label
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return f"epoch {current_epoch} · {trainer.max_steps} steps in all"
        return super()._get_train_description(current_epoch)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
