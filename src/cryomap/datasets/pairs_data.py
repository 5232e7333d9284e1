"""torch ``Dataset`` and Lightning ``DataModule`` over a pair cache (:mod:`cryomap.datasets.pairs`).

``mode="halfmaps"`` gives (cond [2, c, c, c], label [1, c, c, c]): a random crop of side ``crop``
(the network is fully convolutional and learns local density; prediction runs on the whole box)
under one of the 24 cube rotations, the same for condition and label. ``mode="stack"`` gives
the report's stack condition (1, D, D, D) — ``D`` of the pair's particle images resized to D×D
and standardised (:func:`~cryomap.datasets.conditions.build_condition`) — with the label
Fourier-resampled to D³ over the same physical box (no crop or rotation: the depth axis of a
stack is not a spatial axis).

Randomness is keyed as in :mod:`cryomap.datasets.torch_data`: item ``key`` of the training set
draws from ``default_rng([seed, stream, key])``; validation items use fixed keys (centre box, no
rotation), so every pass sees the same pairs.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cryomap.datasets.pairs import PairCache, cube_rotation
from cryomap.datasets.torch_data import EpochDrawSampler

PAIR_MODES = ("halfmaps", "stack")


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """A (1, B, B, B) label Fourier-resampled to (1, size, size, size) over the same box, clipped to [0, 1]."""
    from torch_fourier_rescale import fourier_rescale_3d

    lab = np.asarray(label, np.float32)
    if lab.shape[-1] == size:
        return lab
    out, _ = fourier_rescale_3d(torch.from_numpy(np.ascontiguousarray(lab[0])), target_shape=(size, size, size))
    return np.clip(out.numpy(), 0.0, 1.0)[None].astype(np.float32)


class PairSet(Dataset):
    """(condition, label) float32 tensors of one split of a pair cache, held in memory (float16)."""

    def __init__(self, cache: PairCache | str | Path, split: str = "train", *, mode: str = "halfmaps",
                 crop: int | None = 32, rotate: bool = True, depth: int = 32, fixed: bool = False,
                 samples_per_epoch: int | None = None, seed: int = 0) -> None:
        if mode not in PAIR_MODES:
            raise ValueError(f"pair mode must be one of {PAIR_MODES}, got {mode!r}")
        self.cache = cache if isinstance(cache, PairCache) else PairCache.load(cache)
        self.mode, self.split, self.fixed, self.seed = mode, split, bool(fixed), int(seed)
        self.crop = None if crop is None or crop >= self.cache.box else int(crop)
        self.rotate = bool(rotate) and not fixed and mode == "halfmaps"
        self.depth = int(depth)
        kinds = ("cond", "label") if mode == "halfmaps" else ("stack", "label")
        arrays, self.records = self.cache.arrays(split, kinds)
        self.n = len(self.records)
        if self.n == 0:
            raise ValueError(f"{self.cache.root}: no pairs in split {split!r}")
        self.label = arrays["label"]
        if mode == "halfmaps":
            self.cond = arrays["cond"]
        else:
            self.stack = arrays["stack"]
            self.label = np.stack([resize_label(lab, self.depth) for lab in self.label]).astype(np.float16)
        self.samples_per_epoch = int(samples_per_epoch or self.n)

    def __len__(self) -> int:
        return self.n if self.fixed else self.samples_per_epoch

    @property
    def channels(self) -> int:
        return 2 if self.mode == "halfmaps" else 1

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = int(key)
        if self.fixed and not 0 <= key < self.n:
            raise IndexError(key)
        i = key if self.fixed else key % self.n
        rng = np.random.default_rng([self.seed, 3 if self.fixed else 0, key])
        if self.mode == "stack":
            from cryomap.datasets.conditions import build_condition

            cond = build_condition(self.stack[i].astype(np.float32), "stack", self.depth, rng)
            return torch.from_numpy(cond), torch.from_numpy(self.label[i].astype(np.float32))
        cond, label = self.cond[i], self.label[i]
        if self.crop is not None:
            B, c = cond.shape[-1], self.crop
            o = (B - c) // 2 * np.ones(3, int) if self.fixed else rng.integers(0, B - c + 1, 3)
            sl = (slice(None), slice(o[0], o[0] + c), slice(o[1], o[1] + c), slice(o[2], o[2] + c))
            cond, label = cond[sl], label[sl]
        if self.rotate:
            k = int(rng.integers(24))
            cond, label = cube_rotation(cond, k), cube_rotation(label, k)
        return (torch.from_numpy(np.ascontiguousarray(cond, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)))


class PairDataModule(pl.LightningDataModule):
    """Train (fresh crops/rotations each epoch) and val (fixed centre crops) loaders over a pair cache."""

    def __init__(self, pairs_dir: str | Path, *, mode: str = "halfmaps", crop: int | None = 32, depth: int = 32,
                 batch_size: int = 4, num_workers: int = 0, samples_per_epoch: int | None = None,
                 val_crop: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.cache = PairCache.load(pairs_dir)
        self.mode, self.crop, self.depth = mode, crop, depth
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.samples_per_epoch, self.val_crop = samples_per_epoch, val_crop
        self.train_set: PairSet | None = None
        self.val_set: PairSet | None = None
        train_names = [m["name"] for m in self.cache.molecules("train")]
        grid_box = depth if mode == "stack" else self.cache.box
        self.meta = {
            "source": "pairs",
            "pairs_dir": str(self.cache.root),
            "mode": mode,
            "channels": 2 if mode == "halfmaps" else 1,
            "depth": depth if mode == "stack" else (crop or self.cache.box),
            "grid_box": grid_box,
            "grid_apix": float(np.mean(self.cache.data["ranges"]["apix"])) * self.cache.box / grid_box,
            "apix_range": list(self.cache.data["ranges"]["apix"]),
            "pair_box": self.cache.box,
            "wiener_constant": self.cache.data.get("wiener_constant"),
            "pairs_command": self.cache.data.get("command"),
            "pairs_seed": self.cache.data.get("seed"),
            "train_molecules": train_names,
            "val_molecules": [m["name"] for m in self.cache.molecules("val")],
            "test_molecules": [m["name"] for m in self.cache.molecules("test")],
            "n_train_pairs": self.cache.data["counts"]["train"],
        }

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = PairSet(self.cache, "train", mode=self.mode, crop=self.crop, depth=self.depth,
                                     samples_per_epoch=self.samples_per_epoch, seed=self.seed)
        if self.val_set is None and stage in (None, "fit", "validate") and self.cache.data["counts"].get("val"):
            self.val_set = PairSet(self.cache, "val", mode=self.mode, crop=self.val_crop, depth=self.depth,
                                   fixed=True, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=EpochDrawSampler(len(self.train_set)),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        self.setup("validate")
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
