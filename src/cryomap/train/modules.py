"""LightningModules: the U-Net (direct regression/segmentation) and the conditional diffusion model.

Both take the resolved config as a plain dict (``hparams``) plus the number of condition
channels, so a checkpoint alone says how to rebuild its model.

Randomness inside a training step (diffusion timesteps and noise) comes from a generator seeded
by (seed, global step, rank), not from the global RNG: a resumed run draws exactly what the
uninterrupted run drew, and DDP ranks draw different noise for their different samples.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning.pytorch as pl
import torch

from cryomap.models.diffusion.gaussian_diffusion import GaussianDiffusion
from cryomap.models.losses import dice_iou, unet_loss
from cryomap.models.registry import build_model


def step_generator(seed: int, step: int, rank: int = 0, salt: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, step, rank, salt)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729 + salt) % (2**63 - 1))


def build_network(hparams: dict[str, Any], in_channels: int) -> torch.nn.Module:
    """The bare network of a config (what predict loads weights into)."""
    m = dict(hparams["model"])
    name = m.pop("name")
    if name == "diffusion":
        m.setdefault("input_size", int(hparams.get("meta", {}).get("depth", 32)))
        return build_model(name, in_channels, learn_sigma=hparams["diffusion"]["learn_sigma"], **m)
    return build_model(name, in_channels, **m)


def build_diffusion(hparams: dict[str, Any]) -> GaussianDiffusion:
    d = hparams["diffusion"]
    return GaussianDiffusion.from_schedule(
        d["schedule"], d["steps"], learn_sigma=d["learn_sigma"], vlb_weight=d["vlb_weight"],
        mse_weighting=d.get("mse_weighting", "uniform"), mse_weight_cap=float(d.get("mse_weight_cap", 20.0)),
        prediction=d.get("prediction", "eps"),
    )


def make_optimizer(params, o: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimiser ``o["name"]`` (adamw, adam, sgd) over ``params``."""
    name = o.get("name", "adamw")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o.get("momentum", 0.0), weight_decay=o["weight_decay"])
    raise ValueError(f"unknown optimiser {name!r} (adamw, adam, sgd)")


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float = 0.0):
    """Multiplier of the base learning rate after ``step`` optimiser steps (None: constant, no warm-up).

    Linear warm-up over ``warmup`` steps, then constant or a cosine from 1 to ``min_ratio`` at
    step ``total``.
    """
    if schedule == "constant" and warmup <= 0:
        return None
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (constant, cosine)")

    def lam(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return lam


class _Base(pl.LightningModule):
    def __init__(self, hparams: dict[str, Any], in_channels: int) -> None:
        super().__init__()
        self.save_hyperparameters({"config": hparams, "in_channels": in_channels})
        self.cfg = hparams
        self.net = build_network(hparams, in_channels)

    def configure_optimizers(self):
        o = self.cfg["optim"]
        opt = make_optimizer(self.net.parameters(), o)
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        lam = lr_lambda(o.get("schedule", "constant"), int(o.get("warmup_steps", 0)), total, float(o.get("min_lr_ratio", 0.0)))
        if lam is None:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @property
    def seed(self) -> int:
        return int(self.cfg["trainer"]["seed"])


class UNetModule(_Base):
    """The report's U-Net trained with BCE, Dice+BCE, MSE or L1 (``loss.kind``)."""

    def __init__(self, hparams: dict[str, Any], in_channels: int) -> None:
        super().__init__(hparams, in_channels)
        self.loss_kind = hparams["loss"]["kind"]
        self.threshold = float(hparams["loss"]["threshold"])
        self.activation = hparams["model"].get("out_activation", "sigmoid")

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        cond, label = batch
        loss = unet_loss(self.loss_kind, self.net.logits(cond), label, self.activation)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=cond.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        cond, label = batch
        logits = self.net.logits(cond)
        loss = unet_loss(self.loss_kind, logits, label, self.activation)
        pred = torch.sigmoid(logits) if self.activation == "sigmoid" else logits
        dice, iou = dice_iou(pred, label, self.threshold)
        bs = cond.shape[0]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=bs)
        self.log("val/dice", dice, sync_dist=True, batch_size=bs)
        self.log("val/iou", iou, sync_dist=True, batch_size=bs)


class EMA(torch.nn.Module):
    """Exponential moving average of a network's weights: θ̄ ← d·θ̄ + (1 − d)·θ.

    With ``warmup`` the decay after n updates is min(d, (1 + n)/(10 + n)) (the num_updates rule
    of TensorFlow's ExponentialMovingAverage): with a fixed d = 0.999, a 300-step run would still
    give its random initial weights a share of 0.999³⁰⁰ ≈ 74 %; with the warm-up the average
    follows the weights early and reaches d after ~10⁴ updates, so long runs are unchanged.

    Hand-written (instead of Lightning's EMAWeightAveraging callback) so the averaged weights
    are an ordinary sub-module: saved in every checkpoint (with the update count), restored
    bit-exactly by ``--resume``, identical on all DDP ranks, and exported as the weights
    ``predict`` uses.
    """

    def __init__(self, net: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        super().__init__()
        self.decay = decay
        self.warmup = warmup
        self.net = copy.deepcopy(net)
        self.net.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        d = self.current_decay()
        for e, p in zip(self.net.parameters(), net.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.net.buffers(), net.buffers()):
            e.copy_(b)
        self.num_updates += 1


class DiffusionModule(_Base):
    """DISPR-style conditional diffusion: ε (and Σ) prediction with the hybrid loss, EMA weights.

    Labels in [0, 1] are mapped to x_0 = 2·label − 1 in [−1, 1]; predictions are mapped back.
    """

    def __init__(self, hparams: dict[str, Any], in_channels: int) -> None:
        super().__init__(hparams, in_channels)
        self.diffusion = build_diffusion(hparams)
        d = hparams["diffusion"]
        self.timestep_sampling = d.get("timestep_sampling", "uniform")
        self.ema = EMA(self.net, float(d["ema_decay"]), bool(d.get("ema_warmup", True)))

    def _losses(self, batch, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cond, label = batch
        x0 = label * 2.0 - 1.0
        b = x0.shape[0]
        t, vb_weight = self.diffusion.sample_timesteps(b, self.timestep_sampling, generator=gen)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
        return self.diffusion.training_losses(self.net, x0, cond, t.to(x0.device), noise, vb_weight=vb_weight)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        gen = step_generator(self.seed, self.global_step, self.global_rank)
        terms = self._losses(batch, gen)
        loss = terms["loss"].mean()
        bs = batch[0].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        self.log("train/mse", terms["mse"].mean(), on_step=True, on_epoch=False, batch_size=bs)
        self.log("train/vb", terms["vb"].mean(), on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update(self.net)

    def validation_step(self, batch, batch_idx: int) -> None:
        # the same t and noise every validation, so val/loss is comparable across epochs
        gen = step_generator(self.seed, batch_idx, self.global_rank, salt=17)
        cond, label = batch
        x0 = label * 2.0 - 1.0
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), generator=gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
        terms = self.diffusion.training_losses(self.ema.net, x0, cond, t, noise)
        self.log("val/loss", terms["loss"].mean(), prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        self.log("val/mse", terms["mse"].mean(), sync_dist=True, batch_size=x0.shape[0])


def module_for(hparams: dict[str, Any], in_channels: int) -> pl.LightningModule:
    """The LightningModule class that trains ``hparams['model']['name']``."""
    if hparams["model"]["name"] == "diffusion":
        return DiffusionModule(hparams, in_channels)
    return UNetModule(hparams, in_channels)
