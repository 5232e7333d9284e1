"""The thin end-to-end path behind ``cryomap demo`` and ``make demo``.

simulate (built-in PDB models → CryoPPP-layout micrographs with true poses) → extract →
labels + dataset (split by particles: a held-out share of every target is never trained on) →
train a 3D U-Net → predict the demo target's map from its held-out particles → oracle
reconstruction (true poses) → evaluate every map against the truth label → HTML report.

Everything runs on the CPU with the embedded structures; ``quick`` shrinks every stage so the
whole path takes well under three minutes on two cores (it runs in CI as a test). A stage whose
code is missing is reported in ``run_summary.json`` (``missing_stages``) and the rest still runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError
from cryomap.io.atomic import check_writable
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
    widths: tuple[int, ...] = (8, 16, 32)
    bottleneck: int = 64
    train_steps: int = 300
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
    seconds: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        """Run one stage, timing it; an ImportError (stage not built yet) is recorded, not raised."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except ImportError as exc:
            self.missing[name] = f"stage code missing: {exc}"
            return None
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


def _simulate(s: DemoSettings, out: Path) -> list[Path]:
    from cryomap.simulate.dataset import simulate_dataset

    return simulate_dataset(
        list(s.targets), out, n_particles=s.n_particles, micrograph_size=s.micrograph_size, apix=s.apix,
        snr=s.snr, seed=s.seed, box=s.particle_box, force=True, progress=False,
    )


def _extract(s: DemoSettings, folders: list[Path], out: Path) -> dict[str, Path]:
    from cryomap.particles.extract import extract_particles

    stars = {}
    for folder in folders:
        # the simulation records particles dark, as micrographs are; invert to RELION's bright particles
        res = extract_particles(folder, out / folder.name, box=s.particle_box, invert=True, force=True, progress=False)
        summary(res.summary_line())
        stars[folder.name] = res.star_path
    return stars


def _build_dataset(s: DemoSettings, stars: dict[str, Path], sim_dir: Path, out: Path) -> Path:
    import yaml

    from cryomap.datasets.build import build_dataset

    cfg = {
        "targets": [
            {"name": name, "particles": str(star), "map": str(sim_dir / name / "maps" / f"{name}_truth.mrc")}
            for name, star in stars.items()
        ],
        "label": {"apix": s.label_apix, "box": s.label_box},
        "condition": {"mode": "stack"},
        "split": {"by": "particles", "val_fraction": 0.1, "particle_holdout": s.particle_holdout},
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
    from cryomap.evaluate.baselines import load_particles, oracle_reconstruction

    ps = load_particles(star)
    full = oracle_reconstruction(ps, half_sets=True, seed=s.seed)
    if heldout:
        rows = np.asarray(heldout)
        sub = type(ps)(ps.images[rows], ps.rot[rows], ps.tilt[rows], ps.psi[rows], ps.shifts_A[rows], ps.apix,
                       ps.table.iloc[rows].reset_index(drop=True))
        full["heldout"] = oracle_reconstruction(sub)["full"]
    return ps.apix, full


def run_demo(out_dir: str | Path, quick: bool = False, force: bool = False, settings: DemoSettings | None = None) -> Path:
    """Run the whole path into ``out_dir``; return the path of ``report.html``."""
    from cryomap.evaluate.baselines import mean_label, truth_low_passed
    from cryomap.evaluate.report import build_report
    from cryomap.evaluate.score import score_map, write_evaluation
    from cryomap.io.mrc import read_map, write_mrc
    from cryomap.labels import normalize_map

    t_start = time.perf_counter()
    s = settings or (quick_settings() if quick else DemoSettings())
    out = Path(out_dir)
    check_writable(out, force)
    if out.exists():
        if not (out / "run_summary.json").exists() and any(out.iterdir()):
            raise BadInputError("exists and is not a cryomap demo folder; choose another -o", out)
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = StageLog()
    headline: dict = {}

    folders = log.run("simulate", _simulate, s, out / "simulated")
    if not folders:
        raise BadInputError("the simulation stage is missing; nothing to run (" + "; ".join(log.missing.values()) + ")")
    stars = log.run("extract", _extract, s, folders, out / "particles")
    if stars is None:  # extraction missing: fall back to the simulation's own (clean-free) selected STAR
        stars = {f.name: f / "ground_truth" / f"{f.name}_particles_selected.star" for f in folders}
    dataset_dir = log.run("dataset", _build_dataset, s, stars, out / "simulated", out / "dataset")
    maps_dir = out / "maps"
    maps_dir.mkdir()
    target = s.demo_target
    truth = None
    manifest = None
    if dataset_dir is not None:
        manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
        entries = {e["name"]: e for e in manifest["targets"]}
        truth_md = read_map(Path(dataset_dir) / entries[target]["label"])
        truth, label_apix = truth_md.data, truth_md.apix
        labels = [read_map(Path(dataset_dir) / e["label"]).data for e in manifest["targets"]]
    else:  # no dataset stage: the truth on the label grid made here
        from cryomap.labels import make_label

        truth_md = make_label(read_map(out / "simulated" / target / "maps" / f"{target}_truth.mrc"), apix=s.label_apix, box=s.label_box)
        truth, label_apix, labels = truth_md.data, truth_md.apix, [truth_md.data]
    write_mrc(maps_dir / "truth_label.mrc", truth, label_apix, origin=truth_md.origin)

    maps: dict[str, np.ndarray] = {}
    model_path = None
    if dataset_dir is not None:
        model_path = log.run("train", _train, s, Path(dataset_dir), out / "train")
    if model_path is not None:
        pred = log.run("predict", _predict, Path(model_path), target, maps_dir / "unet_prediction.mrc")
        if pred is not None:
            maps["U-Net prediction"] = pred.data
    heldout = manifest and {e["name"]: e for e in manifest["targets"]}[target]["subsets"].get("heldout")
    oracle = log.run("reconstruct", _oracle, s, stars[target], heldout)
    if oracle is not None:
        p_apix, recs = oracle
        for key, name in (("full", "oracle (all particles)"), ("heldout", "oracle (held-out particles)")):
            if key in recs:
                m = normalize_map(_to_label_grid(recs[key], p_apix, label_apix, s.label_box))
                write_mrc(maps_dir / f"oracle_{key}.mrc", m, label_apix, origin=truth_md.origin)
                maps[name] = m
        for h in ("half1", "half2"):
            write_mrc(maps_dir / f"oracle_{h}.mrc", recs[h], p_apix)
    maps["mean training label"] = mean_label(labels)
    if manifest is not None and len(manifest["targets"]) > 1:
        others = [lab for e, lab in zip(manifest["targets"], labels) if e["name"] != target]
        maps["mean label of other targets"] = mean_label(others)
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
    if oracle is not None:
        p_apix, recs = oracle
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
        "missing stages": "; ".join(f"{k}: {v}" for k, v in log.missing.items()) or "none",
        "stage seconds": log.seconds,
        "settings": {k: str(v) for k, v in asdict(s).items()},
    }
    (out / "run_summary.json").write_text(json.dumps(run_summary, indent=2))
    t0 = time.perf_counter()
    report = build_report(out, out / "report.html", force=True, title=f"cryomap demo: {target}")
    log.seconds["report"] = round(time.perf_counter() - t0, 2)
    total = round(time.perf_counter() - t_start, 1)
    run_summary["stage seconds"] = log.seconds
    run_summary["total seconds"] = total
    run_summary["headline"] = headline
    (out / "run_summary.json").write_text(json.dumps(run_summary, indent=2))
    # rebuild so the page shows the final timings (cheap: figures only)
    build_report(out, out / "report.html", force=True, title=f"cryomap demo: {target}")
    return report
