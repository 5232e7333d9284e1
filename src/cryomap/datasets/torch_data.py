"""torch ``Dataset``s over a built dataset: (condition [C,D,D,D], label [1,D,D,D]) float32 pairs.

Randomness is keyed, not stateful: a sample's draw comes from ``numpy.random.default_rng`` seeded
with (dataset seed, stream, key). Training keys come from :class:`EpochDrawSampler`, which hands
out new keys every epoch (fresh draws, reproducible from the seed); validation and test items
use fixed keys (the same draws on every pass). Workers therefore need no shared state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cryomap.datasets.conditions import build_condition
from cryomap.datasets.manifest import Manifest

#: Random streams keep train, validation and test draws independent of each other.
STREAMS = {"train": 0, "val": 1, "heldout": 2}


class _TargetCache:
    """Per-process lazy cache of one target's label and condition sources (not pickled)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._cache: dict[str, dict] = {}

    def get(self, name: str) -> dict:
        if name not in self._cache:
            m = self.manifest
            mode = m.mode
            self._cache[name] = {
                "label": torch.from_numpy(np.ascontiguousarray(m.label(name))[None]),
                "images": m.images(name) if mode == "stack" else None,
                "classes": m.class_averages(name) if mode.startswith("class") else None,
                "latents": m.latents(name) if mode == "latents" else None,
            }
        return self._cache[name]

    def __getstate__(self) -> dict:
        return {"manifest": self.manifest, "_cache": {}}


def draw_condition(manifest: Manifest, sources: dict, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A condition for one target from its cached sources, drawn from the particle rows ``pool``."""
    return build_condition(
        sources["images"], manifest.mode, manifest.depth, rng,
        class_averages=sources["classes"], latents=sources["latents"], n_images=manifest.n_images,
        pool=pool, latent_fill=manifest.latent_fill,
    )


class DensityPairs(Dataset):
    """(condition, label) pairs of one particle subset (train / val / heldout) of some targets.

    ``fixed=False`` (training): item ``key`` (any int ≥ 0, from :class:`EpochDrawSampler`) is
    target ``targets[key % n]`` with a draw seeded by ``key``; ``len`` is ``samples_per_epoch``.
    ``fixed=True`` (validation/test): ``draws_per_target`` items per target, the same on every pass.
    """

    def __init__(
        self,
        dataset_dir: str | Path | Manifest,
        subset: str = "train",
        targets: list[str] | None = None,
        *,
        fixed: bool = False,
        samples_per_epoch: int | None = None,
        draws_per_target: int = 1,
        seed: int | None = None,
    ) -> None:
        self.manifest = dataset_dir if isinstance(dataset_dir, Manifest) else Manifest.load(dataset_dir)
        self.subset = subset
        self.targets = list(targets) if targets is not None else self.manifest.targets_with(subset)
        self.pools = {t: self.manifest.subset(t, subset) for t in self.targets}
        empty = [t for t, p in self.pools.items() if p.size == 0]
        if empty:
            raise ValueError(f"targets {empty} have no particles in subset {subset!r}")
        self.fixed = fixed
        self.draws_per_target = int(draws_per_target)
        self.samples_per_epoch = int(samples_per_epoch or max(1, len(self.targets)))
        self.seed = self.manifest.seed if seed is None else int(seed)
        self._sources = _TargetCache(self.manifest)

    def __len__(self) -> int:
        if self.fixed:
            return len(self.targets) * self.draws_per_target
        return self.samples_per_epoch

    def item_target(self, key: int) -> str:
        """The target item ``key`` belongs to."""
        if self.fixed:
            return self.targets[key // self.draws_per_target]
        return self.targets[key % len(self.targets)]

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = int(key)
        if self.fixed and not 0 <= key < len(self):
            raise IndexError(key)
        name = self.item_target(key)
        rng = np.random.default_rng([self.seed, STREAMS[self.subset], key])
        sources = self._sources.get(name)
        cond = draw_condition(self.manifest, sources, self.pools[name], rng)
        return torch.from_numpy(cond), sources["label"]


class EpochDrawSampler(Sampler[int]):
    """Keys ``epoch·n … epoch·n + n − 1`` for a fresh-draw :class:`DensityPairs` (n per epoch).

    The epoch advances by one on every iteration; Lightning's ``set_epoch`` (called before each
    epoch when the sampler has it) pins it, so resumed runs draw what an uninterrupted run would.
    """

    def __init__(self, n_per_epoch: int, epoch: int = 0) -> None:
        self.n = int(n_per_epoch)
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        start = self.epoch * self.n
        self.epoch += 1
        return iter(range(start, start + self.n))
