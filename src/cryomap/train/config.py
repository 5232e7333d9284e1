"""The training config (YAML), validated with pydantic.

```yaml
model: {name: unet3d, widths: [16, 32, 64], bottleneck: 256, attention_gates: true}
data: {dataset_dir: ds/, batch_size: 2, num_workers: 0}
optim: {lr: 1.0e-3, weight_decay: 0.0}
trainer: {max_steps: 500, precision: "32-true", devices: 1, accelerator: cpu, seed: 0}
loss: {kind: dice_bce}
diffusion: {schedule: cosine, steps: 1000, learn_sigma: true, ema_decay: 0.999}
```
Everything the model needs beyond ``name`` goes in ``model`` and is passed to its constructor
(see :mod:`cryomap.models.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cryomap.errors import BadInputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(BaseModel):
    """``name`` (unet3d | diffusion) plus constructor keywords of that model."""

    model_config = ConfigDict(extra="allow")
    name: Literal["unet3d", "unet3d_plain", "diffusion"] = "unet3d"

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SyntheticData(_Strict):
    """Deterministic random blobs for smoke tests and benchmarks (no dataset on disk)."""

    n: int = 8
    depth: int = 16
    channels: int = 1
    val_n: int = 2


class DataConfig(BaseModel):
    """Where the (condition, label) pairs come from; extra keys go to the DataModule.

    ``pairs_dir``: a pair cache over a corpus (``cryomap pairs build``); its extra keys are
    ``mode`` (halfmaps | stack), ``crop`` (training crop side, voxels), ``depth`` (stack mode's
    D), ``samples_per_epoch`` and ``val_crop``.
    """

    model_config = ConfigDict(extra="allow")
    dataset_dir: Path | None = None
    synthetic: SyntheticData | None = None
    pairs_dir: Path | None = None
    batch_size: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if sum(x is not None for x in (self.dataset_dir, self.synthetic, self.pairs_dir)) != 1:
            raise ValueError("give exactly one of data.pairs_dir, data.dataset_dir or data.synthetic")
        return self


class OptimConfig(_Strict):
    """Optimiser (AdamW by default) and learning-rate schedule (per optimiser step).

    ``schedule``: ``constant``, or ``cosine`` (decay from ``lr`` to ``min_lr_ratio``·lr over the
    run's steps); either starts with ``warmup_steps`` of linear warm-up from 0.
    """

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd only")
    grad_clip: float | None = None
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainerConfig(_Strict):
    max_steps: int = -1
    max_epochs: int | None = None
    precision: str = "32-true"
    devices: int | str = 1
    accelerator: str = "cpu"
    strategy: str = "auto"
    num_nodes: int = 1
    accumulate_grad_batches: int = Field(1, ge=1, description="Batches whose gradients are summed per optimizer step.")
    seed: int = 0
    log_every: int = 10
    val_every_epochs: int = 1
    deterministic: bool = True
    progress_bar: bool = True

    @model_validator(mode="after")
    def _some_limit(self) -> "TrainerConfig":
        if self.max_steps <= 0 and not self.max_epochs:
            raise ValueError("set trainer.max_steps or trainer.max_epochs")
        return self


class LossConfig(_Strict):
    """U-Net loss: bce | dice_bce | dice (thresholded labels), mse | l1 (continuous labels)."""

    kind: Literal["bce", "dice_bce", "dice", "mse", "l1"] = "dice_bce"
    threshold: float = 0.5


class DiffusionConfig(_Strict):
    schedule: Literal["linear", "cosine"] = "cosine"
    steps: int = Field(1000, ge=2)
    learn_sigma: bool = True
    vlb_weight: float = 0.001
    prediction: Literal["eps", "v"] = Field("eps", description="what the network's mean channel predicts: eps (the paper) or v (see docs)")
    mse_weighting: Literal["uniform", "inv_snr"] = Field("uniform", description="weight of the ε term per t: uniform (the paper) or inv_snr = clip(1/SNR_t, 1, mse_weight_cap)")
    mse_weight_cap: float = Field(20.0, ge=1)
    timestep_sampling: Literal["uniform", "high_noise"] = Field("uniform", description="training t: uniform (the paper) or high_noise, p(t) ∝ 2t + 1 (L_vlb importance-weighted, see docs)")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_warmup: bool = Field(True, description="decay min(ema_decay, (1 + n)/(10 + n)) after n updates, so short runs are not averaged with their random initial weights")
    sample_steps: int = 50
    samples: int = 4
    eta: float = 0.0


class TrainConfig(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig(max_steps=100)
    loss: LossConfig = LossConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    init_from: str | None = Field(None, description="start from these weights: a finished run folder, its "
                                  "model.safetensors or builtin[:NAME] (the same network); optimiser and steps start afresh")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a YAML training config; ``overrides`` are nested dicts merged on top."""
    from cryomap.io.yamlfile import read_yaml_mapping

    path = Path(path)
    raw = read_yaml_mapping(path, "training config", empty_ok=True)
    data = raw.get("data")
    if (isinstance(data, dict) and isinstance(data.get("dataset_dir"), str) and data["dataset_dir"]
            and not Path(data["dataset_dir"]).is_absolute()):
        data["dataset_dir"] = str((path.parent / data["dataset_dir"]).resolve())
    return config_from_dict(_merge(raw, overrides or {}), path)


def config_from_dict(raw: dict[str, Any], path: str | Path | None = None) -> TrainConfig:
    """Validate a config dict; errors become one :class:`BadInputError` line."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise BadInputError(f"invalid training config: {msgs}", path) from exc


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
