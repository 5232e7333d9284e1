"""Training on a built dataset (``cryomap.datasets``): the DataModule plus what predict needs.

``meta`` records, from the dataset's manifest, everything needed to rebuild a condition at
prediction time (mode, D, n_images, latent fill, seed) and the label grid (voxel size, per-target
origins), so a run folder predicts without guessing.
"""

from __future__ import annotations

from typing import Any

from cryomap.train.config import DataConfig

#: Config keys of ``data`` that are passed on to :class:`~cryomap.datasets.datamodule.DensityDataModule`.
DATAMODULE_KEYS = ("samples_per_epoch", "val_draws_per_target", "test_draws_per_target", "pin_memory")


def manifest_meta(manifest) -> dict[str, Any]:
    """The part of a dataset manifest a trained model carries with it."""
    d = manifest.data
    return {
        "source": "dataset",
        "dataset_dir": str(manifest.root),
        "channels": 1,
        "depth": manifest.depth,
        "mode": manifest.mode,
        "condition": d["condition"],
        "preprocess": d.get("preprocess"),
        "label": d["label"],
        "dataset_seed": manifest.seed,
        "label_apix": float(d["label"]["apix"]),
        "label_origins": {t["name"]: list(t.get("label_origin", [0.0, 0.0, 0.0])) for t in d["targets"]},
        "targets": manifest.target_names,
    }


def dataset_datamodule(cfg: DataConfig, seed: int):
    """A :class:`DensityDataModule` for ``cfg.dataset_dir`` with a ``meta`` dict attached."""
    from cryomap.datasets.datamodule import DensityDataModule

    extra = {k: v for k, v in (cfg.model_extra or {}).items() if k in DATAMODULE_KEYS}
    unknown = sorted(set(cfg.model_extra or {}) - set(DATAMODULE_KEYS))
    if unknown:
        from cryomap.errors import BadInputError

        raise BadInputError(f"unknown data options {unknown} (known: dataset_dir, synthetic, batch_size, num_workers, {', '.join(DATAMODULE_KEYS)})")
    dm = DensityDataModule(cfg.dataset_dir, batch_size=cfg.batch_size, num_workers=cfg.num_workers, seed=seed, **extra)
    dm.meta = manifest_meta(dm.manifest)
    return dm
