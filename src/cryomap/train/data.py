"""Data for training: the dataset DataModule (cryomap.datasets) or a small synthetic one.

Both yield ``(condition float32 [B, C, D, D, D], label float32 [B, 1, D, D, D])``. Shuffling
uses :class:`EpochSeededSampler`, whose order is a function of (seed, epoch) only, so a run
resumed from a checkpoint sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from cryomap.train.config import DataConfig, SyntheticData


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch drawn from ``seed + epoch`` (Lightning calls set_epoch)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def synthetic_pairs(n: int, depth: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs of (noisy multi-channel views of a blob map, its [0, 1] map).

    Each label is a sum of 2–4 Gaussian blobs normalised to [0, 1]; each condition channel is the
    label plus Gaussian noise (σ = 0.3) — enough structure for a model to learn, in memory.
    """
    rng = np.random.default_rng(seed)
    ax = np.arange(depth) - (depth - 1) / 2
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    labels = np.zeros((n, 1, depth, depth, depth), np.float32)
    for i in range(n):
        vol = np.zeros((depth,) * 3)
        for _ in range(rng.integers(2, 5)):
            c = rng.uniform(-depth / 4, depth / 4, 3)
            s = rng.uniform(depth / 12, depth / 6)
            vol += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * s * s))
        labels[i, 0] = vol / vol.max()
    cond = labels.repeat(channels, axis=1) + 0.3 * rng.standard_normal((n, channels, depth, depth, depth)).astype(np.float32)
    return torch.from_numpy(cond.astype(np.float32)), torch.from_numpy(labels)


class TensorDataModule(pl.LightningDataModule):
    """A DataModule over in-memory (condition, label) tensors."""

    def __init__(
        self,
        train: Dataset,
        val: Dataset | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.meta = meta or {}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(len(self.train_set), self.seed),
            num_workers=self.num_workers,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None or len(self.val_set) == 0:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


def synthetic_datamodule(cfg: SyntheticData, batch_size: int, num_workers: int, seed: int) -> TensorDataModule:
    """The synthetic DataModule of ``cfg`` (train pairs from ``seed``, val pairs from ``seed + 1``)."""
    tr = TensorDataset(*synthetic_pairs(cfg.n, cfg.depth, cfg.channels, seed))
    va = TensorDataset(*synthetic_pairs(cfg.val_n, cfg.depth, cfg.channels, seed + 1)) if cfg.val_n else None
    meta = {"channels": cfg.channels, "depth": cfg.depth, "label_apix": 1.0, "label_origin": [0.0, 0.0, 0.0], "source": "synthetic"}
    return TensorDataModule(tr, va, batch_size, num_workers, seed, meta)


def make_datamodule(cfg: DataConfig, seed: int) -> pl.LightningDataModule:
    """The DataModule a config asks for; its ``meta`` dict says channels, box and label grid."""
    if cfg.synthetic is not None:
        return synthetic_datamodule(cfg.synthetic, cfg.batch_size, cfg.num_workers, seed)
    if cfg.pairs_dir is not None:
        return pairs_datamodule(cfg, seed)
    from cryomap.train.dataset_adapter import dataset_datamodule

    return dataset_datamodule(cfg, seed)


def n_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


#: Config keys of ``data`` passed on to :class:`~cryomap.datasets.pairs_data.PairDataModule`.
PAIRS_KEYS = ("mode", "crop", "depth", "samples_per_epoch", "val_crop")


def pairs_datamodule(cfg: DataConfig, seed: int) -> pl.LightningDataModule:
    """A :class:`~cryomap.datasets.pairs_data.PairDataModule` over ``cfg.pairs_dir`` (its ``meta`` describes the grid)."""
    from cryomap.datasets.pairs_data import PairDataModule
    from cryomap.errors import BadInputError

    extra = dict(cfg.model_extra or {})
    unknown = sorted(set(extra) - set(PAIRS_KEYS))
    if unknown:
        raise BadInputError(f"unknown data options {unknown} for a pair cache (known: {', '.join(PAIRS_KEYS)})")
    return PairDataModule(cfg.pairs_dir, batch_size=cfg.batch_size, num_workers=cfg.num_workers, seed=seed, **extra)
