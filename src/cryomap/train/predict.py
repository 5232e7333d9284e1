"""Prediction: a trained run (or checkpoint) + particles → a density map on the label grid.

``predict_map(run_dir_or_checkpoint, particles_star)`` builds the condition exactly as the
training dataset did (same mode, box, image preparation: :mod:`cryomap.datasets`), runs the
network, and returns the map as :class:`~cryomap.io.mrc.MrcData` with the label grid's voxel
size and origin. For the diffusion model it draws K samples (DDIM by default) and returns their
mean; the per-voxel standard deviation comes back too (:class:`Prediction`).

Weights are loaded without unpickling: ``model.safetensors`` from a run folder, or a Lightning
``.ckpt`` through ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryomap.errors import BadInputError
from cryomap.io.mrc import MrcData


@dataclass
class LoadedModel:
    """A network ready to run, with the resolved training config it came from."""

    net: torch.nn.Module
    config: dict[str, Any]
    in_channels: int

    @property
    def name(self) -> str:
        return self.config["model"]["name"]

    @property
    def meta(self) -> dict[str, Any]:
        return self.config.get("meta", {})


@dataclass
class Prediction:
    """The predicted map and, for diffusion, the per-voxel standard deviation over K samples."""

    map: MrcData
    std: MrcData | None = None


def load_model(path: str | Path) -> LoadedModel:
    """Load a run folder, its ``model.safetensors``, a Lightning ``.ckpt`` (EMA weights for diffusion), or a
    shipped model: ``"builtin"`` (the default) or ``"builtin:NAME"`` (:mod:`cryomap.train.builtin`)."""
    from cryomap.train.builtin import resolve_model
    from cryomap.train.modules import build_network

    path = resolve_model(path)
    if not path.exists():
        raise BadInputError("not found", path)
    if path.is_dir() or path.suffix == ".safetensors":
        from safetensors.torch import load_file

        run = path if path.is_dir() else path.parent
        info_p = run / "model.json"
        weights = run / "model.safetensors" if path.is_dir() else path
        if not info_p.exists() or not weights.exists():
            raise BadInputError("no model.json/model.safetensors: the run did not finish (resume it) or this is not a run folder", run)
        from cryomap.io.atomic import note_input

        note_input(info_p)
        note_input(weights)
        try:
            info = json.loads(info_p.read_text())
            config, in_ch = info["config"], int(info["in_channels"])
            if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or in_ch < 1:
                raise ValueError("no model section or no input channels")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise BadInputError(f"model.json is not a cryomap model description ({type(exc).__name__}: {exc})",
                                info_p) from exc
        try:
            state = load_file(str(weights))
        except Exception as exc:  # safetensors raises its own SafetensorError for a corrupt header or data
            raise BadInputError(f"not a readable safetensors file ({exc})", weights) from exc
    elif path.suffix == ".ckpt":
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadInputError(f"not a loadable checkpoint ({exc})", path) from exc
        hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
        if not isinstance(hp, dict) or "config" not in hp:
            raise BadInputError("checkpoint holds no cryomap config (hyper_parameters.config)", path)
        try:
            config, in_ch = hp["config"], int(hp["in_channels"])
            sd = ckpt["state_dict"]
            prefix = "ema.net." if any(k.startswith("ema.net.") for k in sd) else "net."
            state = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInputError(f"checkpoint is not a cryomap training checkpoint ({type(exc).__name__}: {exc})",
                                path) from exc
    else:
        raise BadInputError("expected a run folder, a .ckpt or a .safetensors file", path)
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BadInputError(f"weights {bad[0]} hold NaN or infinite values; the model cannot predict", path)
    try:
        net = build_network(config, in_ch)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"the model config cannot build a network ({type(exc).__name__}: {exc})", path) from exc
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise BadInputError(f"weights do not fit the model the config describes ({exc})", path) from exc
    net.eval()
    return LoadedModel(net, config, in_ch)


@torch.no_grad()
def predict_from_condition(
    model: LoadedModel,
    condition: np.ndarray | torch.Tensor,
    *,
    samples: int | None = None,
    steps: int | None = None,
    sampler: str = "ddim",
    eta: float | None = None,
    seed: int = 0,
    batch: int = 1,
    on_step=None,
    rotations: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the model on one condition (C, D, D, D) → (map (D, D, D) in label units, std or None).

    Diffusion: K = ``samples`` (config default 4) samples with ``steps`` DDIM/DDPM steps (default
    50); x ∈ [−1, 1] is mapped back to labels by (x + 1)/2, the std by ½. ``batch`` samples run
    through the network together (faster, more memory; the result does not depend on it for η = 0).

    U-Net: ``rotations`` R (default ``config.predict.rotations``, else 1) averages the network's
    maps of the condition turned by the first R of the 24 cube rotations, each turned back
    (:func:`cryomap.datasets.pairs.cube_rotation`): the network was trained on conditions under
    all 24, so the average is the part of its answer that does not depend on the frame (R = 24:
    exactly equivariant under the cube group). Costs R forward passes.
    """
    cond = torch.as_tensor(np.asarray(condition, dtype=np.float32))[None]
    if cond.shape[1] != model.in_channels:
        raise BadInputError(f"condition has {cond.shape[1]} channels, the model takes {model.in_channels}")
    if model.name != "diffusion":
        r = int(rotations or model.config.get("predict", {}).get("rotations", 1))
        if not 1 <= r <= 24:
            raise BadInputError(f"rotations must be 1…24 (cube rotations averaged), got {r}")
        if r == 1:
            return model.net(cond)[0, 0].numpy(), None
        from cryomap.datasets.pairs import cube_rotation, inverse_cube_rotation

        c = cond[0].numpy()
        total = np.zeros(c.shape[1:], np.float64)
        for k in range(r):
            turned = torch.from_numpy(np.ascontiguousarray(cube_rotation(c, k)))[None]
            total += inverse_cube_rotation(model.net(turned)[0, 0].numpy(), k)
        return (total / r).astype(np.float32), None
    from cryomap.train.modules import build_diffusion

    d = model.config["diffusion"]
    diffusion = build_diffusion(model.config)
    mean, std = diffusion.sample_ensemble(
        model.net,
        cond,
        samples=int(samples or d.get("samples", 4)),
        steps=int(steps or d.get("sample_steps", 50)),
        sampler=sampler,
        eta=float(d.get("eta", 0.0) if eta is None else eta),
        seed=seed,
        batch=max(1, int(batch)),
        on_step=on_step,
    )
    return ((mean[0, 0] + 1.0) / 2.0).numpy(), (std[0, 0] / 2.0).numpy()


def predict_map(
    model_path: str | Path | LoadedModel,
    particles_star: str | Path | None = None,
    *,
    target: str | None = None,
    mode: str | None = None,
    samples: int | None = None,
    steps: int | None = None,
    sampler: str = "ddim",
    eta: float | None = None,
    seed: int = 0,
    class_averages: str | Path | None = None,
    latents: str | Path | None = None,
    n_images: int | None = None,
    batch: int = 1,
    on_step=None,
) -> Prediction:
    """Predict the density map for the particles of ``particles_star``.

    The condition is built by :func:`cryomap.datasets.datamodule.condition_for_prediction` with
    the mode, D and options of the training dataset (``mode``/``n_images`` may override them).
    ``target`` names a training-dataset target: without ``particles_star`` its held-out
    particles are used, and its label origin is written. Class modes need ``class_averages``
    (.mrcs, best first) and latents mode a ``.npy`` of per-particle latents unless ``target``
    supplies them. The result has the label grid's voxel size (Å/voxel) and origin (Å).
    ``on_step(i)`` is called after every diffusion sampling step (for a progress bar).
    """
    model = model_path if isinstance(model_path, LoadedModel) else load_model(model_path)
    meta = model.meta
    if meta.get("source") == "pairs":  # a corpus-trained model: the whole path from particles (learned_map)
        if particles_star is None:
            raise BadInputError("this model was trained on a corpus of molecules: give --particles")
        from cryomap.train.learned_map import predict_particles

        return predict_particles(model, particles_star, samples=samples, steps=steps, sampler=sampler, eta=eta,
                                 seed=seed, batch=batch, on_step=on_step)[0]
    cond = build_prediction_condition(
        meta, particles_star, target=target, mode=mode, seed=seed, class_averages=class_averages,
        latents=latents, n_images=n_images,
    )
    out, std = predict_from_condition(model, cond, samples=samples, steps=steps, sampler=sampler, eta=eta, seed=seed,
                                      batch=batch, on_step=on_step)
    apix, origin = label_grid(meta, target)
    return Prediction(
        MrcData(out.astype(np.float32), apix, origin),
        None if std is None else MrcData(std.astype(np.float32), apix, origin),
    )


def label_grid(meta: dict[str, Any], target: str | None = None) -> tuple[float, tuple[float, float, float]]:
    """Voxel size (Å/voxel) and origin (Å) of the training labels (of ``target`` when given).

    Without a target the origin is the one all targets share, or (0, 0, 0) when they differ.
    """
    apix = float(meta.get("label_apix", 1.0))
    origins = meta.get("label_origins") or {}
    if target is not None:
        if target not in origins:
            raise BadInputError(f"the model was not trained on a target {target!r} (targets: {', '.join(origins) or 'none'})")
        return apix, tuple(float(v) for v in origins[target])  # type: ignore[return-value]
    uniq = {tuple(float(v) for v in o) for o in origins.values()}
    origin = uniq.pop() if len(uniq) == 1 else tuple(float(v) for v in meta.get("label_origin", (0.0, 0.0, 0.0)))
    return apix, origin  # type: ignore[return-value]


def build_prediction_condition(
    meta: dict[str, Any],
    particles_star: str | Path | None,
    *,
    target: str | None = None,
    mode: str | None = None,
    seed: int = 0,
    class_averages: str | Path | None = None,
    latents: str | Path | None = None,
    n_images: int | None = None,
) -> np.ndarray:
    """The condition (C, D, D, D) for new particles, built as the training dataset built its own."""
    if particles_star is None and target is None:
        raise BadInputError("give --particles (a STAR file) or --target (a training target's held-out particles)")
    if meta.get("source") == "dataset":
        from cryomap.datasets.datamodule import condition_for_prediction
        from cryomap.datasets.manifest import Manifest

        root = Path(meta["dataset_dir"])
        if target is not None:
            manifest = Manifest.load(root)  # the target's stored particles and label live there
        else:
            manifest = Manifest(root=root, data={"condition": dict(meta["condition"]), "label": dict(meta["label"]),
                                                 "seed": meta.get("dataset_seed", 0), "targets": [],
                                                 "preprocess": meta.get("preprocess")})
        if mode is not None:
            manifest.data["condition"]["mode"] = mode
        if n_images is not None:
            manifest.data["condition"]["n_images"] = n_images
        try:
            return condition_for_prediction(manifest, particles_star, target, seed,
                                            class_averages=class_averages, latents=latents)
        except ValueError as exc:
            raise BadInputError(str(exc), particles_star) from exc
    # synthetic-data runs: a stack condition from the STAR file's particles
    from cryomap.datasets.conditions import build_condition

    if particles_star is None:
        raise BadInputError("this model was trained on synthetic data: give --particles")
    mode = mode or "stack"
    if mode != "stack":
        raise BadInputError(f"a synthetic-data model predicts from particle stacks only, not mode {mode!r}")
    from cryomap.particles.source import open_particles

    images = open_particles(particles_star)
    return build_condition(images, "stack", int(meta["depth"]), np.random.default_rng(seed), n_images=n_images)


def std_path(out: str | Path) -> Path:
    """Where the per-voxel standard deviation of ``out`` goes: MAP.mrc → MAP_std.mrc."""
    out = Path(out)
    return out.with_name(f"{out.stem}_std{out.suffix or '.mrc'}")
