"""The pipeline config: one YAML that names every choice of the method report.

```yaml
seed: 0
data:                                   # either simulate (the embedded default) or cryoppp (your download)
  simulate: {targets: [7PBL, 4JSV, 1BHL, 7CTH], particles: 400, apix: 3.2, box: 64, snr: 0.1}
  # cryoppp: {folders: [/data/10017], box: 160, apix: 1.0, truth_maps: {10017: /data/emd_1234.mrc}}
extract: {box: 64, invert: true}
preprocess: {steps: [{step: phase-flip}, {step: denoise, method: affine}, {step: blend, weight: 0.667}],
             figure_steps: [standardize, phase-flip, denoise, blend, clahe, guided]}
classify2d: {classes: 10, iterations: 8}
encode: {latent_dim: 8, epochs: 4}
labels: {apix: 4.2667, box: 48}
seen: {targets: [7PBL, 4JSV, 1BHL], predict: 7PBL, holdout: 0.25}       # split by particles (the report)
unseen: {target: 7CTH, reconstruct: abinitio, model: builtin}           # a molecule no model saw
models:
  - {name: unet-stack, condition: stack, network: {name: unet3d, widths: [16, 32, 64], bottleneck: 256}, steps: 400}
```

Units: Å, Å/px, voxels, px. ``seen`` targets are trained on with a share of their particles held
out (the report's setting: the model has seen the molecule); the ``unseen`` target is in no
training set of any model in the run (nor in the shipped model's corpus). Relative paths resolve
against the config's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cryomap.errors import BadInputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimulateData(_Strict):
    """Simulated CryoPPP-layout data from built-in (or given) structures: truth known."""

    targets: list[str] = Field(min_length=1)
    particles: int = Field(400, ge=20)
    micrograph_size: int = Field(1024, ge=256)
    apix: float = Field(3.2, gt=0)
    box: int = Field(64, ge=16)
    snr: float = Field(0.1, gt=0)
    unseen_particles: int | None = Field(None, ge=20, description="Particles of the unseen target (default: particles).")


class CryopppData(_Strict):
    """CryoPPP folders (one per EMPIAR id); ``truth_maps`` (optional) name a density map per folder to score against."""

    folders: list[Path] = Field(min_length=1)
    truth_maps: dict[str, Path] = Field(default_factory=dict)
    truth_apix: dict[str, float] = Field(default_factory=dict)


class DataConfig(_Strict):
    simulate: SimulateData | None = None
    cryoppp: CryopppData | None = None

    @model_validator(mode="after")
    def _one(self) -> "DataConfig":
        if (self.simulate is None) == (self.cryoppp is None):
            raise ValueError("give exactly one of data.simulate and data.cryoppp")
        return self


class ExtractConfig(_Strict):
    box: int | None = Field(None, ge=8, description="Box in micrograph px (default from the particle diameter).")
    bin: float = Field(1.0, ge=1.0)
    invert: bool = Field(True, description="Invert contrast (simulated and CryoPPP micrographs show particles dark).")
    apix: float | None = Field(None, gt=0, description="Micrograph pixel size when the files carry none (JPEG).")
    phase_flip: bool = False


class PreprocessConfig(_Strict):
    steps: list[dict[str, Any]] | None = Field(None, description="Chain applied to the datasets' particles.")
    figure_steps: list[str] | None = Field(None, description="Chain of the preprocessing figures (report Fig. 2 and 10).")


class Classify2DConfig(_Strict):
    classes: int = Field(10, ge=1)
    iterations: int = Field(10, ge=1)
    top: int | None = Field(None, ge=1)
    ctf: Literal["wiener", "phase-flip", "none"] = "wiener"


class EncodeConfig(_Strict):
    latent_dim: int = Field(8, ge=1)
    epochs: int = Field(5, ge=1)


class LabelsConfig(_Strict):
    apix: float = Field(gt=0)
    box: int = Field(ge=8, le=512)
    threshold: float | None = Field(None, ge=0, le=1)


class SeenConfig(_Strict):
    targets: list[str] = Field(min_length=1)
    predict: str
    holdout: float = Field(0.25, gt=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)


class UnseenConfig(_Strict):
    target: str
    reconstruct: Literal["abinitio", "poses"] = Field(
        "abinitio", description="abinitio: ab initio + refine from unposed particles; poses: the particles' own poses.")
    model: str | None = Field("builtin", description="The learned model for it: builtin[:NAME] or a run folder; None: none.")
    abinitio_iterations: int | None = Field(None, ge=1)
    refine_iterations: int | None = Field(None, ge=1)


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    condition: Literal["stack", "classes-shuffled", "classes-ordered", "class-repeated", "latents"] = "stack"
    network: dict[str, Any] = Field(default_factory=lambda: {"name": "unet3d"})
    steps: int = Field(300, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(2e-3, gt=0)
    loss: str = "mse"
    diffusion: dict[str, Any] | None = None
    optim: dict[str, Any] | None = None
    trainer: dict[str, Any] | None = Field(None, description="Extra trainer settings, e.g. {accelerator: gpu, devices: 4, precision: bf16-mixed}.")


class PipelineConfig(_Strict):
    seed: int = 0
    data: DataConfig
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    classify2d: Classify2DConfig | None = None
    encode: EncodeConfig | None = None
    labels: LabelsConfig
    seen: SeenConfig | None = None
    unseen: UnseenConfig | None = None
    models: list[ModelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "PipelineConfig":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        targets = set(self.data.simulate.targets) if self.data.simulate else None
        if self.seen is not None:
            if self.seen.predict not in self.seen.targets:
                raise ValueError(f"seen.predict {self.seen.predict!r} must be one of seen.targets")
            if targets is not None and not set(self.seen.targets) <= targets:
                raise ValueError(f"seen.targets {sorted(set(self.seen.targets) - targets)} are not simulated")
        if self.unseen is not None:
            if self.seen is not None and self.unseen.target in self.seen.targets:
                raise ValueError(f"the unseen target {self.unseen.target!r} is also a seen (trained-on) target")
            if targets is not None and self.unseen.target not in targets:
                raise ValueError(f"the unseen target {self.unseen.target!r} is not simulated")
        modes = {m.condition for m in self.models}
        if any(m.startswith("class") for m in modes) and self.classify2d is None:
            raise ValueError("a class-conditioned model needs a classify2d section")
        if "latents" in modes and self.encode is None:
            raise ValueError("a latent-conditioned model needs an encode section")
        if self.models and self.seen is None:
            raise ValueError("models are trained on the seen targets: give a seen section")
        return self

    def resolve(self, base: Path) -> "PipelineConfig":
        """A copy whose relative paths are absolute against ``base``."""
        if self.data.cryoppp is None:
            return self
        c = self.data.cryoppp
        fix = lambda p: p if Path(p).is_absolute() else (base / p).resolve()  # noqa: E731
        cry = c.model_copy(update={"folders": [fix(p) for p in c.folders],
                                   "truth_maps": {k: fix(v) for k, v in c.truth_maps.items()}})
        return self.model_copy(update={"data": self.data.model_copy(update={"cryoppp": cry})})


def config_from_dict(raw: dict[str, Any], source: str | Path | None = None) -> PipelineConfig:
    """Validate a pipeline config; every problem in one line naming the key."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise BadInputError(f"invalid pipeline config: {problems}", source) from exc


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML; relative paths resolve against its folder."""
    from cryomap.io.yamlfile import read_yaml_mapping

    path = Path(path)
    return config_from_dict(read_yaml_mapping(path, "pipeline config"), path).resolve(path.parent.resolve())
