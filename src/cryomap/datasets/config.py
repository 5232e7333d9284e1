"""The dataset config (YAML → pydantic): targets, label grid, condition mode, splits, seed.

Relative paths resolve against the folder of the config file. Example::

    seed: 0
    label: {apix: 1.0, box: 64, threshold: null}
    condition: {mode: stack, n_images: null}   # n_images: default D (stack) / 20 (class modes)
    split: {by: targets, val_targets: [b], test_targets: [], particle_holdout: 0.1}
    preprocess: [{step: phase-flip}, {step: denoise, method: unet}]   # optional, cryomap.preprocess.chain
    targets:
      - {name: a, particles: a/particles.star, map: a/map.mrc}
      - {name: b, particles: b/particles.star, map: b/map.mrc, map_apix: 1.2}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cryomap.errors import BadInputError

ConditionMode = Literal["stack", "classes-shuffled", "classes-ordered", "class-repeated", "latents"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: A target's class_averages / latents may name a ``cryomap classify2d`` / ``cryomap encode`` output
#: folder; these are the files used from it (classes.mrcs is ranked best first).
FOLDER_FILES = {"class_averages": "classes.mrcs", "latents": "latents.npy"}


class TargetConfig(_Strict):
    """One target: its particle stack (RELION STAR), its density map, optional class averages/latents."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="Unique name; used for file names.")
    particles: Path = Field(description="RELION STAR whose rlnImageName points at the particle stack(s).")
    map: Path = Field(description="Density map (.mrc/.map) the label is made from.")
    map_apix: float | None = Field(None, gt=0, description="Voxel size of the map in Å/voxel (overrides its header).")
    class_averages: Path | None = Field(None, description=".mrcs of 2D class averages, best-ranked first (or a classify2d output folder).")
    latents: Path | None = Field(None, description=".npy of per-particle latents (n_particles, L), STAR row order (or an encode output folder).")


class LabelConfig(_Strict):
    """Label grid: voxel size (Å/voxel), cubic box (voxels, = condition depth D), optional binary threshold."""

    apix: float = Field(1.0, gt=0)
    box: int = Field(128, ge=8, le=512)
    threshold: float | None = Field(None, ge=0, le=1)


class ConditionConfig(_Strict):
    """What the network sees (see :mod:`cryomap.datasets.conditions`)."""

    mode: ConditionMode = "stack"
    n_images: int | None = Field(None, ge=1, description="stack: images per condition (default D); classes: top-k (default 20).")
    latent_fill: Literal["tile", "zero"] = Field("tile", description="latents: how to fill D^3 with too few particles.")
    storage: Literal["resized", "source"] = Field(
        "resized",
        description="resized: images resized to D×D and standardised once, memory-mapped .npy per target; "
        "source: read and resize from the particle stack in the DataLoader workers.",
    )


class SplitConfig(_Strict):
    """Train/validation/test split, by target (default) or by particle subsets of the same targets."""

    by: Literal["targets", "particles"] = "targets"
    val_targets: list[str] = Field(default_factory=list)
    test_targets: list[str] = Field(default_factory=list)
    val_fraction: float = Field(0.0, ge=0, lt=1, description="targets: fraction of targets; particles: of each target's particles.")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="targets: fraction of targets (when test_targets is empty).")
    particle_holdout: float = Field(
        0.1, ge=0, lt=1, description="Fraction of each target's particles never used in training (the test/prediction subset)."
    )

    @model_validator(mode="after")
    def _check(self) -> "SplitConfig":
        if set(self.val_targets) & set(self.test_targets):
            raise ValueError(f"targets in both val and test: {sorted(set(self.val_targets) & set(self.test_targets))}")
        if self.by == "particles" and (self.val_targets or self.test_targets):
            raise ValueError("split by particles shares every target; val_targets/test_targets apply to by: targets")
        if self.by == "particles" and self.val_fraction + self.particle_holdout >= 1:
            raise ValueError("val_fraction + particle_holdout must leave particles for training")
        return self


class DatasetConfig(_Strict):
    """A whole dataset config; ``base`` is the folder relative paths resolve against."""

    targets: list[TargetConfig] = Field(min_length=1)
    label: LabelConfig = Field(default_factory=LabelConfig)
    condition: ConditionConfig = Field(default_factory=ConditionConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: list[dict] | None = Field(
        None, description="Preprocessing chain applied to every particle before it is resized (cryomap.preprocess.chain; "
        "the same list `cryomap preprocess --config` takes). Recorded in the manifest and in trained models.")
    seed: int = 0

    @field_validator("preprocess")
    @classmethod
    def _valid_chain(cls, steps: list[dict] | None) -> list[dict] | None:
        if steps is None:
            return None
        from cryomap.preprocess.chain import make_op

        if not steps:
            raise ValueError("preprocess: an empty chain; leave it out instead")
        for spec in steps:
            try:
                make_op(spec)
            except BadInputError as exc:
                raise ValueError(exc.message) from exc
        return steps

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[TargetConfig]) -> list[TargetConfig]:
        names = [t.name for t in targets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate target names: {dup}")
        return targets

    @model_validator(mode="after")
    def _check(self) -> "DatasetConfig":
        names = {t.name for t in self.targets}
        unknown = sorted((set(self.split.val_targets) | set(self.split.test_targets)) - names)
        if unknown:
            raise ValueError(f"split names unknown targets: {unknown}")
        mode = self.condition.mode
        for t in self.targets:
            if mode.startswith("class") and t.class_averages is None:
                raise ValueError(f"mode {mode} needs class_averages for target {t.name}")
            if mode == "latents" and t.latents is None:
                raise ValueError(f"mode latents needs latents for target {t.name}")
        n = self.condition.n_images
        if mode == "stack" and n is not None and n > self.label.box:
            raise ValueError(f"stack mode stacks at most D = box = {self.label.box} images, got n_images {n}")
        return self

    def resolve(self, base: Path) -> "DatasetConfig":
        """A copy whose relative target paths are made absolute against ``base``."""
        def fix(p: Path | None, key: str = "") -> Path | None:
            q = None if p is None else (p if p.is_absolute() else (base / p).resolve())
            # a classify2d / encode output folder stands for the file it holds
            return q / FOLDER_FILES[key] if q is not None and key in FOLDER_FILES and q.is_dir() else q

        targets = [
            t.model_copy(update={k: fix(getattr(t, k), k) for k in ("particles", "map", "class_averages", "latents")})
            for t in self.targets
        ]
        return self.model_copy(update={"targets": targets})


def load_config(path: str | Path) -> DatasetConfig:
    """Read and validate a dataset YAML; paths come back absolute. Errors name the file."""
    from cryomap.io.yamlfile import read_yaml_mapping

    path = Path(path)
    raw = read_yaml_mapping(path, "dataset config")
    try:
        cfg = DatasetConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise BadInputError(f"invalid dataset config: {problems}", path) from exc
    return cfg.resolve(path.parent.resolve())
