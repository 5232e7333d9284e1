"""Lightning ``DensityDataModule`` over a built dataset, and the prediction-time condition.

Splits: ``train`` fits on the train subsets (fresh draws each epoch); ``val`` uses the val
subsets (fixed draws); ``test`` uses the held-out particles — of the test targets when the
dataset is split by targets, of every target when split by particles (the report's setting:
train on three targets, predict on their held-out particles).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from cryomap.datasets.conditions import build_condition
from cryomap.datasets.manifest import Manifest
from cryomap.datasets.torch_data import DensityPairs, EpochDrawSampler


def heldout_targets(manifest: Manifest) -> list[str]:
    """Targets of the test split: test targets (by targets) or every target (by particles)."""
    if manifest.data["split_by"] == "particles":
        return manifest.targets_with("heldout")
    return [t for t in manifest.targets_in_split("test") if t in manifest.targets_with("heldout")]


class DensityDataModule(pl.LightningDataModule):
    """Train/val/test loaders of (condition [B,C,D,D,D], label [B,1,D,D,D]) float32 batches."""

    def __init__(
        self,
        dataset_dir: str | Path,
        batch_size: int = 1,
        num_workers: int = 0,
        samples_per_epoch: int | None = None,
        seed: int | None = None,
        val_draws_per_target: int = 2,
        test_draws_per_target: int = 1,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.dataset_dir = Path(dataset_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.val_draws_per_target = val_draws_per_target
        self.test_draws_per_target = test_draws_per_target
        self.pin_memory = pin_memory
        self.manifest = Manifest.load(self.dataset_dir)
        self.train_set: DensityPairs | None = None
        self.val_set: DensityPairs | None = None
        self.test_set: DensityPairs | None = None

    @property
    def depth(self) -> int:
        return self.manifest.depth

    @property
    def channels(self) -> int:
        return 1

    def setup(self, stage: str | None = None) -> None:
        m = self.manifest
        train_targets = m.targets_with("train")
        n_train = self.samples_per_epoch or 8 * max(1, len(train_targets))
        if stage in (None, "fit") and train_targets:
            self.train_set = DensityPairs(m, "train", train_targets, samples_per_epoch=n_train, seed=self.seed)
        if stage in (None, "fit", "validate") and m.targets_with("val"):
            self.val_set = DensityPairs(m, "val", fixed=True, draws_per_target=self.val_draws_per_target, seed=self.seed)
        if stage in (None, "test", "predict") and heldout_targets(m):
            self.test_set = DensityPairs(
                m, "heldout", heldout_targets(m), fixed=True, draws_per_target=self.test_draws_per_target, seed=self.seed
            )

    def _loader(self, ds, sampler=None) -> DataLoader:
        return DataLoader(
            ds, batch_size=self.batch_size, sampler=sampler, shuffle=False, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        if self.train_set is None:
            raise ValueError(f"{self.dataset_dir}: dataset has no training particles")
        return self._loader(self.train_set, EpochDrawSampler(len(self.train_set)))

    def val_dataloader(self):
        if self.val_set is None:
            self.setup("validate")
        return [] if self.val_set is None else self._loader(self.val_set)

    def test_dataloader(self):
        if self.test_set is None:
            self.setup("test")
        return [] if self.test_set is None else self._loader(self.test_set)

    def predict_dataloader(self):
        return self.test_dataloader()


def condition_for_prediction(
    dataset: str | Path | Manifest,
    particles_star: str | Path | None = None,
    target: str | None = None,
    seed: int = 0,
    *,
    subset: str = "heldout",
    class_averages: str | Path | np.ndarray | None = None,
    latents: str | Path | np.ndarray | None = None,
) -> np.ndarray:
    """The condition (1, D, D, D) float32 for a prediction, built exactly as in training.

    Mode, depth D, ``n_images`` and latent fill come from the dataset's manifest. Either give
    ``target`` (draw from that target's ``subset`` — by default its held-out particles — using the
    stored sources), or ``particles_star`` (any RELION STAR: all its particles form the pool;
    class averages / latents then come from the arguments, or from ``target`` when also given).
    The same ``seed`` gives the same condition.
    """
    from cryomap.datasets.images import prepare_images
    from cryomap.io.mrc import read_stack

    m = dataset if isinstance(dataset, Manifest) else Manifest.load(dataset)
    rng = np.random.default_rng(seed)
    mode = m.mode
    images = classes = lat = pool = None
    if particles_star is None:
        if target is None:
            raise ValueError("give target (a dataset target) or particles_star (a STAR file)")
        pool = m.subset(target, subset)
        if mode == "stack":
            images = m.images(target)
    elif mode == "stack":
        images = m.open_particles(particles_star)  # through the dataset's preprocessing chain
    if class_averages is not None:
        classes = class_averages if isinstance(class_averages, np.ndarray) else read_stack(class_averages, apix=1.0, mmap=False).data
        classes = prepare_images(classes, m.depth)
    elif mode.startswith("class") and target is not None:
        classes = m.class_averages(target)
    if latents is not None:
        lat = latents if isinstance(latents, np.ndarray) else np.load(latents)
    elif mode == "latents" and target is not None and particles_star is None:
        lat = m.latents(target)
    if mode == "latents" and lat is None:
        raise ValueError("latents mode: give latents (an .npy of the particles' latents) or a dataset target")
    if mode.startswith("class") and classes is None:
        raise ValueError(f"{mode} mode: give class_averages or a dataset target that has them")
    return build_condition(
        images, mode, m.depth, rng, class_averages=classes, latents=lat, n_images=m.n_images,
        pool=pool, latent_fill=m.latent_fill,
    )
