"""The thin end-to-end path behind ``cryomap demo`` and ``make demo``.

simulate (built-in PDB models → CryoPPP-layout micrographs with true poses) → extract →
labels + dataset (split by particles: a held-out share of every target is never trained on) →
train a 3D U-Net → predict the demo target's map from its held-out particles → oracle
reconstruction (true poses) → evaluate every map against the truth label → HTML report.

Everything runs on the CPU with the embedded structures; ``quick`` shrinks every stage so the
whole path takes well under three minutes on two cores (it runs in CI as a test).
``run_summary.json`` records the settings, the seconds of every stage and the headline numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError
from cryomap.io.atomic import check_replaceable_dir, mark_output
from cryomap.progress import summary


@dataclass
class DemoSettings:
    """Sizes of every stage. Units: Å/px, px, voxels."""

    targets: tuple[str, ...] = ("7PBL", "4JSV", "1BHL")
    demo_target: str = "7PBL"
    n_particles: int = 400  # per target
    micrograph_size: int = 1024  # px
    apix: float = 3.2  # Å/px of micrographs and particles
    particle_box: int = 64  # px (204.8 Å: holds 4JSV's 178 Å)
    snr: float = 0.1
    label_box: int = 48  # D: labels D³, conditions D images of D×D
    particle_holdout: float = 0.25
    val_fraction: float = 0.1  # of each target's training particles, for the validation loss
    widths: tuple[int, ...] = (16, 32, 64)  # the report's U-Net: 16/32/64 channels, 256 bottleneck
    bottleneck: int = 256
    train_steps: int = 600
    batch_size: int = 2
    lr: float = 2e-3
    loss: str = "mse"
    seed: int = 0
    align: bool = False  # predictions live in the label frame; alignment is for unposed maps

    @property
    def label_apix(self) -> float:
        """Å/voxel of the labels: the particle box's physical size spread over ``label_box`` voxels."""
        return self.apix * self.particle_box / self.label_box


def quick_settings() -> DemoSettings:
    """Settings for ``--quick`` (CI): small boxes, few particles, a short training."""
    return DemoSettings(
        n_particles=150, micrograph_size=768, label_box=32, particle_holdout=0.3,
        widths=(8, 16, 32), bottleneck=32, train_steps=48, batch_size=2, lr=3e-3,
    )


@dataclass
class StageLog:
    """Seconds per stage, in the order they ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        """Run one stage and record how long it took."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[name] = round(time.perf_counter() - t0, 2)


def _to_label_grid(volume: np.ndarray, apix_in: float, apix_out: float, box: int) -> np.ndarray:
    """Fourier-resample ``volume`` to ``apix_out`` and centre-crop/pad to ``box``³ (no normalisation)."""
    from cryomap.labels import resample_map

    v = resample_map(np.asarray(volume, np.float32), apix_in, apix_out) if abs(apix_in - apix_out) > 1e-6 else np.asarray(volume, np.float32)
    out = np.zeros((box, box, box), np.float32)
    n = v.shape[0]
    src0, dst0 = max(0, n // 2 - box // 2), max(0, box // 2 - n // 2)
    m = min(n - src0, box - dst0)
    out[dst0 : dst0 + m, dst0 : dst0 + m, dst0 : dst0 + m] = v[src0 : src0 + m, src0 : src0 + m, src0 : src0 + m]
    return out


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


def _pick_key(df, row: int) -> tuple[str, int, int]:
    """(micrograph file name, x, y) of a particle row: the same pick in two STAR tables."""
    r = df.iloc[row]
    return Path(str(r["rlnMicrographName"])).name, round(float(r["rlnCoordinateX"])), round(float(r["rlnCoordinateY"]))


def _particles_figure(folder: Path, star: Path, out_png: Path, n_show: int = 8) -> Path:
    """The demo target's first micrograph with its picks, and extracted particles over their clean projections."""
    from cryomap.evaluate.figures import particles_figure
    from cryomap.io.micrograph import read_micrograph
    from cryomap.particles.source import open_particles

    extracted = open_particles(star)
    df = extracted.table
    first = df["rlnMicrographName"].iloc[0]
    rows = np.flatnonzero(df["rlnMicrographName"].to_numpy() == first)
    mic = read_micrograph(folder / "micrographs" / Path(first).name)
    coords = df[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)[rows]
    shown = rows[:n_show]
    images = extracted.images(shown)
    # the clean stack has the simulation's row order: pair rows by micrograph and coordinates
    clean_source = open_particles(folder / "clean" / "particles.star")
    where = {_pick_key(clean_source.table, r): r for r in range(len(clean_source))}
    matched = [where.get(_pick_key(df, r)) for r in shown]
    clean = clean_source.images(matched) if all(m is not None for m in matched) else None
    box = int(images.shape[-1] * float(df["rlnImagePixelSize"].iloc[0]) / mic.apix)
    return particles_figure(mic.data, coords, box, images, clean, out_png,
                            title=f"{folder.name}: simulated micrograph {Path(first).name}, extracted particles and their truth")


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


def _train(s: DemoSettings, dataset_dir: Path, run_dir: Path) -> Path:
    from cryomap.train.config import config_from_dict
    from cryomap.train.run import train

    cfg = config_from_dict({
        "model": {"name": "unet3d", "widths": list(s.widths), "bottleneck": s.bottleneck},
        "data": {"dataset_dir": str(dataset_dir), "batch_size": s.batch_size, "num_workers": 0},
        "optim": {"lr": s.lr},
        "trainer": {"max_steps": s.train_steps, "seed": s.seed, "log_every": max(1, s.train_steps // 30),
                    "progress_bar": True},
        "loss": {"kind": s.loss},
    })
    return train(cfg, run_dir, force=True)


def _predict(model_path: Path, target: str, out: Path):
    from cryomap.io.mrc import write_mrc
    from cryomap.train.predict import predict_map

    pred = predict_map(model_path, target=target)
    write_mrc(out, pred.map.data, pred.map.apix, origin=pred.map.origin, force=True)
    return pred.map


def _oracle(s: DemoSettings, star: Path, heldout: list[int] | None):
    from cryomap.evaluate.baselines import oracle_reconstruction
    from cryomap.particles.source import open_particles

    source = open_particles(star)
    full = oracle_reconstruction(source, half_sets=True, seed=s.seed)
    if heldout:
        full["heldout"] = oracle_reconstruction(source.subset(np.asarray(heldout)))["full"]
    return source.pixel_size, full


def run_demo(out_dir: str | Path, quick: bool = False, force: bool = False, settings: DemoSettings | None = None) -> Path:
    """Run the whole path into ``out_dir``; return the path of ``report.html``."""
    from cryomap.evaluate.baselines import mean_label, scale_to, truth_low_passed
    from cryomap.evaluate.report import build_report
    from cryomap.evaluate.score import score_map, write_evaluation
    from cryomap.io.mrc import read_map, write_mrc

    t_start = time.perf_counter()
    s = settings or (quick_settings() if quick else DemoSettings())
    out = Path(out_dir).absolute()  # the dataset config resolves relative paths against its own folder
    check_replaceable_dir(out, force)  # only a folder cryomap wrote is replaced
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    mark_output(out, "demo")
    log = StageLog()
    headline: dict = {}

    folders = log.run("simulate", simulate_targets, s, out / "simulated")
    stars = log.run("extract", extract_targets, s, folders, out / "particles")
    target = s.demo_target
    figures_dir = out / "figures"
    figures_dir.mkdir()
    _particles_figure(out / "simulated" / target, stars[target], figures_dir / f"{target}_particles.png")
    dataset_dir = log.run("dataset", build_split_dataset, s, stars, out / "simulated", out / "dataset")
    maps_dir = out / "maps"
    maps_dir.mkdir()
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["targets"]}
    truth_md = read_map(dataset_dir / entries[target]["label"])
    truth, label_apix = truth_md.data, truth_md.apix
    labels = {e["name"]: read_map(dataset_dir / e["label"]).data for e in manifest["targets"]}
    write_mrc(maps_dir / "truth_label.mrc", truth, label_apix, origin=truth_md.origin)

    maps: dict[str, np.ndarray] = {}
    model_path = log.run("train", _train, s, dataset_dir, out / "train")
    maps["U-Net prediction"] = log.run("predict", _predict, model_path, target, maps_dir / "unet_prediction.mrc").data
    p_apix, recs = log.run("reconstruct", _oracle, s, stars[target], entries[target]["subsets"].get("heldout"))
    for key, name in (("full", "oracle (all particles)"), ("heldout", "oracle (held-out particles)")):
        if key in recs:
            # reconstructions come in arbitrary units: a least-squares scale puts them on the label's
            # (clipping them like a label would saturate the noise and hide the molecule)
            m = scale_to(truth, _to_label_grid(recs[key], p_apix, label_apix, s.label_box))
            write_mrc(maps_dir / f"oracle_{key}.mrc", m, label_apix, origin=truth_md.origin)
            maps[name] = m
    for h in ("half1", "half2"):
        write_mrc(maps_dir / f"oracle_{h}.mrc", recs[h], p_apix)
    maps["mean training label"] = mean_label(list(labels.values()))
    if len(labels) > 1:
        maps["mean label of other targets"] = mean_label([lab for name, lab in labels.items() if name != target])
    maps.update(truth_low_passed(truth, label_apix))

    # evaluate every map against the truth label (and the oracle half sets against each other)
    t0 = time.perf_counter()
    eval_dir = out / "evaluation"
    for i, (name, m) in enumerate(maps.items()):
        slug = f"{i:02d}_" + "".join(c if c.isalnum() else "_" for c in name).strip("_")
        path = maps_dir / f"{slug}.mrc"
        if not path.exists():
            write_mrc(path, m, label_apix, origin=truth_md.origin)
        ev = score_map(m, truth, label_apix, name=name, align=s.align)
        write_evaluation(eval_dir / slug, ev, pred_path=path, truth_path=maps_dir / "truth_label.mrc", force=True)
        mm, f = ev.metrics["metrics"], ev.metrics["fsc"]
        headline[name] = {
            "fsc0.143_A": f["resolution_fsc0.143_A"], "fsc0.5_A": f["resolution_fsc0.5_A"], "cc_mean": mm["cc_mean"],
            "dice": mm["dice"], "iou": mm["iou"], "dice_equal_volume": mm["dice_equal_volume"], "contour": mm["contour"],
        }
    ev = score_map(recs["half1"], recs["half2"], p_apix, name="oracle half sets (gold standard)")
    write_evaluation(eval_dir / "90_oracle_half_sets", ev, pred_path=maps_dir / "oracle_half1.mrc",
                     truth_path=maps_dir / "oracle_half2.mrc", extra_info={"reference": "half 2"}, force=True)
    headline["oracle half sets (gold standard)"] = {"fsc0.143_A": ev.metrics["fsc"]["resolution_fsc0.143_A"]}
    log.seconds["evaluate"] = round(time.perf_counter() - t0, 2)

    run_summary = {
        "demo": "quick" if quick else "full",
        "demo_target": target,
        "targets": ", ".join(s.targets),
        "label grid": f"{s.label_box}³ at {s.label_apix:g} Å/voxel (Nyquist {2 * s.label_apix:g} Å)",
        "particles per target": s.n_particles,
        "seconds before the report": round(time.perf_counter() - t_start, 1),
        "stage seconds": log.seconds,
        "settings": {k: str(v) for k, v in asdict(s).items()},
        "headline": headline,
    }
    (out / "run_summary.json").write_text(json.dumps(run_summary, indent=2))
    report = log.run("report", build_report, out, out / "report.html", force=True, title=f"cryomap demo: {target}")
    run_summary["total seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "run_summary.json").write_text(json.dumps(run_summary, indent=2))
    return report
