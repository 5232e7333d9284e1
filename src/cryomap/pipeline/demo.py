"""The demo: the whole method on the embedded default, as a pipeline config, plus the helpers the
benchmarks share (:class:`DemoSettings`, :func:`simulate_targets`, :func:`extract_targets`,
:func:`build_split_dataset`).

``cryomap demo`` runs :func:`demo_config` through :func:`cryomap.pipeline.run.run_pipeline`:
three built-in molecules seen in training (7PBL, 4JSV, 1BHL; split by particles, the report's
setting) and one that no model has seen (7CTH: ab initio + refine from its unposed particles, then
the shipped physics-conditioned model). ``--quick`` shrinks every stage (and takes the unseen
molecule's true poses instead of ab initio) so that it runs in CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryomap.pipeline.config import PipelineConfig, config_from_dict
from cryomap.progress import summary

#: The report's U-Net: 16/32/64 channels, 256 in the bottleneck.
REPORT_UNET = {"name": "unet3d", "widths": [16, 32, 64], "bottleneck": 256}
#: A small DISPR-style conditional diffusion model (v-prediction, high-noise timesteps: docs/models_training.md);
#: four levels so that the bottleneck's self-attention runs over 6³ voxels at D = 48 (≈ 1.2 s a step on 2 cores).
SMALL_DIFFUSION = {"name": "diffusion", "model_channels": 8, "channel_mult": [1, 2, 4, 4], "attention_resolutions": []}
DIFFUSION_OPTIONS = {"schedule": "cosine", "steps": 1000, "learn_sigma": True, "ema_decay": 0.995, "prediction": "v",
                     "timestep_sampling": "high_noise"}
#: The chain of the datasets (fast: the affine Topaz denoiser, the report's (2D+O)/3 blend) and of the figures.
DATASET_CHAIN = [{"step": "phase-flip"}, {"step": "denoise", "method": "affine"}, {"step": "blend", "weight": 0.667}]
FIGURE_CHAIN = ["standardize", "phase-flip", "denoise", "blend", "clahe", "guided"]


@dataclass
class DemoSettings:
    """Sizes of every stage. Units: Å/px, px, voxels."""

    targets: tuple[str, ...] = ("7PBL", "4JSV", "1BHL")
    demo_target: str = "7PBL"
    unseen_target: str = "7CTH"
    n_particles: int = 400  # per seen target
    unseen_particles: int = 1000  # of the unseen target (ab initio wants more than a few hundred)
    micrograph_size: int = 1024  # px
    apix: float = 3.2  # Å/px of micrographs and particles
    particle_box: int = 64  # px (204.8 Å: holds 4JSV's 178 Å)
    snr: float = 0.1
    label_box: int = 48  # D: labels D³, conditions D images of D×D
    particle_holdout: float = 0.25
    val_fraction: float = 0.1
    train_steps: int = 120  # the report's U-Net: ≈ 1.1 s a step on 2 cores at D = 48
    lr: float = 2e-3
    seed: int = 0

    @property
    def label_apix(self) -> float:
        """Å/voxel of the labels: the particle box's physical size spread over ``label_box`` voxels."""
        return self.apix * self.particle_box / self.label_box


def quick_settings() -> DemoSettings:
    """Settings for ``--quick`` (CI): two seen molecules, few particles, short trainings."""
    return DemoSettings(targets=("7PBL", "1BHL"), unseen_target="4JSV", n_particles=150, unseen_particles=150,
                        micrograph_size=768, label_box=32, particle_holdout=0.3, train_steps=40, lr=3e-3)


def simulate_targets(s: DemoSettings, out: Path) -> list[Path]:
    """Simulate every target of ``s`` (CryoPPP layout with truth) under ``out``; one folder per target."""
    from cryomap.simulate.dataset import simulate_dataset

    return simulate_dataset(
        list(s.targets), out, n_particles=s.n_particles, micrograph_size=s.micrograph_size, apix=s.apix,
        snr=s.snr, seed=s.seed, box=s.particle_box, force=True, progress=False,
    )


def extract_targets(s: DemoSettings, folders: list[Path], out: Path) -> dict[str, Path]:
    """Extract each simulated target's particles (contrast inverted); ``{target: particles.star}``."""
    from cryomap.particles.extract import extract_particles

    stars = {}
    for folder in folders:
        # the simulation records particles dark, as micrographs are; invert to RELION's bright particles
        res = extract_particles(folder, out / folder.name, box=s.particle_box, invert=True, force=True, progress=False)
        summary(res.summary_line())
        stars[folder.name] = res.star_path
    return stars


def build_split_dataset(s: DemoSettings, stars: dict[str, Path], sim_dir: Path, out: Path) -> Path:
    """Build the stack-mode dataset split by particles (every target shared, ``particle_holdout`` held out)."""
    import yaml

    from cryomap.datasets.build import build_dataset

    cfg = {
        "targets": [
            {"name": name, "particles": str(Path(star).resolve()),
             "map": str((sim_dir / name / "maps" / f"{name}_truth.mrc").resolve())}
            for name, star in stars.items()
        ],
        "label": {"apix": s.label_apix, "box": s.label_box},
        "condition": {"mode": "stack"},
        "split": {"by": "particles", "val_fraction": s.val_fraction, "particle_holdout": s.particle_holdout},
        "seed": s.seed,
    }
    cfg_path = out.parent / "dataset.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return build_dataset(cfg_path, out, force=True)


def demo_config(quick: bool = False, seed: int = 0) -> PipelineConfig:
    """The demo's pipeline config (full: under 15 minutes on 2 CPU cores; quick: under 3)."""
    s = quick_settings() if quick else DemoSettings(seed=seed)
    diffusion = dict(DIFFUSION_OPTIONS, samples=1 if quick else 2, sample_steps=5 if quick else 20)
    models = [
        {"name": "unet-stack", "condition": "stack", "network": dict(REPORT_UNET) if not quick else
         {"name": "unet3d", "widths": [8, 16, 32], "bottleneck": 32}, "steps": s.train_steps, "lr": s.lr},
        {"name": "diffusion-stack", "condition": "stack", "network": SMALL_DIFFUSION if not quick else
         {"name": "diffusion", "model_channels": 8, "channel_mult": [1, 2, 2], "attention_resolutions": []},
         "steps": 20 if quick else 60, "diffusion": diffusion, "batch_size": 2,
         "optim": {"schedule": "cosine", "warmup_steps": 5 if quick else 20, "min_lr_ratio": 0.05}},
        {"name": "unet-classes", "condition": "classes-ordered", "network": {"name": "unet3d", "widths": [8, 16, 32],
         "bottleneck": 64}, "steps": 20 if quick else 100, "lr": s.lr},
        {"name": "unet-latents", "condition": "latents", "network": {"name": "unet3d", "widths": [8, 16, 32],
         "bottleneck": 64}, "steps": 20 if quick else 60, "lr": s.lr},
    ]
    raw = {
        "seed": seed,
        "data": {"simulate": {"targets": [*s.targets, s.unseen_target], "particles": s.n_particles,
                              "micrograph_size": s.micrograph_size, "apix": s.apix, "box": s.particle_box,
                              "snr": s.snr, "unseen_particles": s.unseen_particles}},
        "extract": {"box": s.particle_box, "invert": True},
        "preprocess": {"steps": DATASET_CHAIN, "figure_steps": FIGURE_CHAIN},
        "classify2d": {"classes": 4 if quick else 8, "iterations": 3 if quick else 8},
        "encode": {"latent_dim": 8, "epochs": 1 if quick else 4},
        "labels": {"apix": s.label_apix, "box": s.label_box},
        "seen": {"targets": list(s.targets), "predict": s.demo_target, "holdout": s.particle_holdout,
                 "val_fraction": s.val_fraction},
        "unseen": {"target": s.unseen_target, "reconstruct": "poses" if quick else "abinitio", "model": "builtin",
                   **({} if quick else {"abinitio_iterations": 30, "refine_iterations": 6})},
        "models": models,
    }
    return config_from_dict(raw)


def run_demo(out_dir: str | Path, quick: bool = False, force: bool = False, seed: int = 0) -> Path:
    """Run the demo pipeline into ``out_dir``; return the path of ``report.html``."""
    from cryomap.io.atomic import check_replaceable_dir
    from cryomap.pipeline.run import run_pipeline

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "pipeline.yaml").exists():
        check_replaceable_dir(out, force)  # an unrelated folder is refused
    return run_pipeline(demo_config(quick, seed), out, force=force,
                        title="cryomap demo: seen and unseen molecules" + (" (quick)" if quick else ""))
