"""A built dataset on disk: ``manifest.json`` plus labels and per-target image stores.

Layout of DATASET_DIR::

    manifest.json           targets, split, particle subsets, label grid, condition mode
    config.yaml             the config it was built from (paths made absolute)
    labels/<target>.mrc     label, box^3 at label apix, cryo2struct-normalised
    images/<target>.npy     storage "resized" (stack mode): every particle resized to D×D and
                            standardised, float32 (n, D, D), memory-mapped when read
    classes/<target>.npy    class modes: class averages resized to D×D, standardised, ranked
    latents/<target>.npy    latents mode: per-particle latents (n, L), STAR row order
    heldout/<target>.star   the target's held-out particles (absolute stack paths), for prediction
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError

MANIFEST_NAME = "manifest.json"
SUBSETS = ("train", "val", "heldout")


@dataclass
class Manifest:
    """The parsed ``manifest.json`` of a built dataset, with loaders for its arrays."""

    root: Path
    data: dict

    @classmethod
    def load(cls, dataset_dir: str | Path) -> "Manifest":
        root = Path(dataset_dir)
        path = root / MANIFEST_NAME
        if not path.exists():
            raise BadInputError(f"not a cryomap dataset (no {MANIFEST_NAME}); build one with `cryomap dataset build`", root)
        return cls(root=root.resolve(), data=json.loads(path.read_text()))

    # --- description -------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.data["condition"]["mode"]

    @property
    def depth(self) -> int:
        return int(self.data["label"]["box"])

    @property
    def n_images(self) -> int | None:
        return self.data["condition"]["n_images"]

    @property
    def latent_fill(self) -> str:
        return self.data["condition"]["latent_fill"]

    @property
    def storage(self) -> str:
        return self.data["condition"]["storage"]

    @property
    def seed(self) -> int:
        return int(self.data["seed"])

    @property
    def target_names(self) -> list[str]:
        return [t["name"] for t in self.data["targets"]]

    def target(self, name: str) -> dict:
        for t in self.data["targets"]:
            if t["name"] == name:
                return t
        raise BadInputError(f"dataset has no target {name!r} (targets: {', '.join(self.target_names)})", self.root)

    def targets_with(self, subset: str) -> list[str]:
        """Targets whose ``subset`` (train/val/heldout) holds particles."""
        return [t["name"] for t in self.data["targets"] if len(t["subsets"][subset]) > 0]

    def targets_in_split(self, split: str) -> list[str]:
        """Targets assigned to ``split`` (train/val/test; 'shared' when split by particles)."""
        return [t["name"] for t in self.data["targets"] if t["split"] == split]

    def subset(self, name: str, subset: str) -> np.ndarray:
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        return np.asarray(self.target(name)["subsets"][subset], dtype=np.int64)

    def heldout_star(self, name: str) -> Path | None:
        """The STAR of the target's held-out particles (absolute stack paths), or None if it has none."""
        rel = self.target(name).get("heldout_star")
        return None if not rel else self.root / rel

    # --- arrays ------------------------------------------------------------------------------
    def label(self, name: str) -> np.ndarray:
        from cryomap.io.mrc import read_mrc

        return read_mrc(self.root / self.target(name)["label"]).data

    def images(self, name: str):
        """The target's particle images: the resized memmap (storage 'resized') or a lazy STAR reader."""
        t = self.target(name)
        if t.get("images"):
            return np.load(self.root / t["images"], mmap_mode="r")
        return self.open_particles(t["particles"])

    @property
    def preprocess(self) -> list[dict]:
        """The preprocessing chain every particle of this dataset went through (empty: none)."""
        return list(self.data.get("preprocess") or [])

    def open_particles(self, path: str | Path):
        """Particles of a STAR/.mrcs/.cs file through this dataset's preprocessing chain, as training saw them."""
        from cryomap.particles.source import open_particles
        from cryomap.preprocess.chain import apply_chain

        return apply_chain(open_particles(path), self.preprocess)

    def class_averages(self, name: str) -> np.ndarray | None:
        t = self.target(name)
        return None if not t.get("classes") else np.load(self.root / t["classes"])

    def latents(self, name: str) -> np.ndarray | None:
        t = self.target(name)
        return None if not t.get("latents") else np.load(self.root / t["latents"], mmap_mode="r")
