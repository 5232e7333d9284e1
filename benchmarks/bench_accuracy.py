"""Accuracy of the models on held-out particles of simulated targets (issue 5, second "Done when").

simulate (built-in targets) → extract → ``dataset build`` split by particles (every target keeps a
held-out share of its particles that no training step sees) → a short CPU training of the 3D
U-Net and of the conditional diffusion model → a prediction from each target's held-out
particles → Dice / IoU / Pearson correlation against the target's label, next to the trivial
baseline "mean of the training labels" (what a model that ignores its input would predict).

Metrics are those of ``cryomap evaluate`` (:func:`cryomap.evaluate.metrics.map_metrics`): the
label is thresholded at its Otsu contour; ``dice``/``iou`` threshold the prediction at the same
contour (predictions are on the label scale, 0…1), ``cc`` is the Pearson correlation of the
continuous maps. Diffusion predictions are the mean of K = 4 DDIM samples (50 steps, η = 0).
Each row averages ``draws`` conditions per target (different random sets of held-out particles).

Run: ``.venv/bin/python -m benchmarks accuracy`` (about 10–20 min on 2 CPU cores), or
``.venv/bin/python benchmarks/bench_accuracy.py [--reuse] [--only unet|diffusion]`` while
iterating (``--reuse`` keeps the simulated dataset and finished runs under ``bench_out/accuracy/``).
Writes ``bench_out/accuracy.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

WORK = Path("bench_out") / "accuracy"


@dataclass
class Settings:
    """Sizes of every stage (Å/px, px, voxels, optimiser steps)."""

    targets: tuple[str, ...] = ("7PBL", "4JSV", "1BHL", "7CTH")
    n_particles: int = 300  # per target
    micrograph_size: int = 768  # px
    apix: float = 3.2  # Å/px of micrographs and particles
    particle_box: int = 64  # px (204.8 Å: holds 4JSV's 178 Å)
    snr: float = 0.1
    depth: int = 32  # D: labels D³ at apix·box/D Å/voxel, conditions D particle images of D×D
    particle_holdout: float = 0.25
    val_fraction: float = 0.1
    seed: int = 0
    draws: int = 2  # conditions per target at prediction
    threads: int = 2
    unet: dict = field(default_factory=lambda: {
        "model": {"name": "unet3d", "widths": [16, 32, 64], "bottleneck": 128},
        "loss": {"kind": "mse"},
        "optim": {"lr": 2e-3},
        "steps": 300,
        "batch_size": 4,
    })
    diffusion: dict = field(default_factory=lambda: {
        "model": {"name": "diffusion", "model_channels": 16, "channel_mult": [1, 2, 4], "attention_resolutions": [8]},
        "diffusion": {"schedule": "cosine", "steps": 1000, "learn_sigma": True, "ema_decay": 0.995,
                      "prediction": "v", "timestep_sampling": "high_noise"},
        "optim": {"lr": 2e-3, "schedule": "cosine", "warmup_steps": 50, "min_lr_ratio": 0.05},
        "steps": 1200,
        "batch_size": 4,
        "samples": 4,
        "sample_steps": 50,
    })

    @property
    def label_apix(self) -> float:
        return self.apix * self.particle_box / self.depth


def build_data(s: Settings, work: Path) -> Path:
    """Simulate, extract and build the dataset (split by particles) under ``work``, as the demo does."""
    from cryomap.pipeline.demo import DemoSettings, build_split_dataset, extract_targets, simulate_targets

    d = DemoSettings(targets=tuple(s.targets), n_particles=s.n_particles, micrograph_size=s.micrograph_size,
                     apix=s.apix, particle_box=s.particle_box, snr=s.snr, label_box=s.depth,
                     particle_holdout=s.particle_holdout, val_fraction=s.val_fraction, seed=s.seed)
    folders = simulate_targets(d, work / "simulated")
    stars = extract_targets(d, folders, work / "particles")
    return build_split_dataset(d, stars, work / "simulated", work / "dataset")


def train_run(s: Settings, which: str, dataset: Path, run_dir: Path) -> float:
    """Train the ``which`` model (unet | diffusion) into ``run_dir``; return the seconds it took."""
    from cryomap.train.config import config_from_dict
    from cryomap.train.run import train

    spec = getattr(s, which)
    steps, bs = int(spec["steps"]), int(spec["batch_size"])
    n_train = len(s.targets) * 16  # samples per epoch: fresh particle draws every epoch
    cfg = {
        "model": spec["model"],
        "data": {"dataset_dir": str(dataset.resolve()), "batch_size": bs, "num_workers": 0,
                 "samples_per_epoch": n_train, "val_draws_per_target": 1},
        "optim": spec.get("optim", {}),
        "trainer": {"max_steps": steps, "seed": s.seed, "log_every": 10, "progress_bar": True,
                    "val_every_epochs": max(1, steps * bs // n_train // 4)},
    }
    for key in ("loss", "diffusion"):
        if key in spec:
            cfg[key] = spec[key]
    t0 = time.perf_counter()
    train(config_from_dict(cfg), run_dir, force=True)
    return time.perf_counter() - t0


def evaluate(s: Settings, dataset: Path, runs: dict[str, Path]) -> dict:
    """Predict every target's map from its held-out particles with each run; score them."""
    from cryomap.datasets.manifest import Manifest
    from cryomap.evaluate.metrics import map_metrics
    from cryomap.progress import progress_bar
    from cryomap.train.predict import load_model, predict_map

    m = Manifest.load(dataset)
    labels = {t: m.label(t) for t in m.target_names}
    baseline = np.mean([labels[t] for t in m.targets_with("train")], axis=0)
    models = {name: load_model(path) for name, path in runs.items()}
    d = s.diffusion
    rows: dict[str, list[dict]] = {name: [] for name in [*runs, "mean of training labels"]}
    heldout = m.targets_with("heldout")
    with progress_bar() as bar:
        task = bar.add_task("predicting held-out maps", total=len(models) * len(heldout) * s.draws)
        for name, model in models.items():
            for t in heldout:
                for k in range(s.draws):
                    t0 = time.perf_counter()
                    pred = predict_map(model, None, target=t, seed=1000 + k, samples=d["samples"],
                                       steps=d["sample_steps"], batch=d["samples"])
                    mm = map_metrics(pred.map.data, labels[t])
                    rows[name].append({"target": t, "draw": k, "dice": mm["dice"], "iou": mm["iou"], "cc": mm["cc_mean"],
                                       "dice_equal_volume": mm["dice_equal_volume"], "seconds": time.perf_counter() - t0,
                                       "mean_std": None if pred.std is None else float(pred.std.data.mean())})
                    bar.advance(task)
    for t in heldout:
        mm = map_metrics(baseline, labels[t])
        rows["mean of training labels"] += [{"target": t, "draw": k, "dice": mm["dice"], "iou": mm["iou"], "cc": mm["cc_mean"],
                                              "dice_equal_volume": mm["dice_equal_volume"], "seconds": 0.0, "mean_std": None}
                                             for k in range(s.draws)]
    out = {}
    for name, per in rows.items():
        agg = {k: float(np.mean([p[k] for p in per])) for k in ("dice", "iou", "cc", "dice_equal_volume", "seconds")}
        agg["per_target"] = {t: {k: float(np.mean([p[k] for p in per if p["target"] == t])) for k in ("dice", "iou", "cc")}
                             for t in heldout}
        out[name] = {**agg, "predictions": per}
    return out


def print_table(result: dict) -> None:
    res, s = result["results"], result["settings"]
    base = res["mean of training labels"]
    print(f"\nheld-out particles of {len(s['targets'])} simulated targets ({', '.join(s['targets'])}), D = {s['depth']}, "
          f"{s['draws']} draws per target; load average {result['loadavg']}")
    print(f"{'model':26s} {'Dice':>6s} {'IoU':>6s} {'CC':>6s} {'Dice eqV':>8s} {'s/pred':>7s} {'train s':>8s}  beats baseline?")
    for name, r in res.items():
        train_s = result["train_seconds"].get(name)
        beats = "-" if r is base else ("yes" if r["dice"] > base["dice"] and r["iou"] > base["iou"] and r["cc"] > base["cc"] else "NO")
        print(f"{name:26s} {r['dice']:6.3f} {r['iou']:6.3f} {r['cc']:6.3f} {r['dice_equal_volume']:8.3f} {r['seconds']:7.1f} "
              f"{'' if train_s is None else f'{train_s:8.0f}':>8s}  {beats}")
    print("per target (Dice / CC):")
    for name, r in res.items():
        print(f"  {name:24s} " + "  ".join(f"{t} {v['dice']:.2f}/{v['cc']:.2f}" for t, v in r["per_target"].items()))


def main(reuse: bool = False, only: str | None = None, settings: Settings | None = None) -> dict:
    import torch

    s = settings or Settings()
    torch.set_num_threads(s.threads)
    work = WORK
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset = work / "dataset"
    stamp = work / "settings.json"
    data_key = json.loads(json.dumps({k: v for k, v in asdict(s).items() if k not in ("unet", "diffusion", "draws", "threads")}))
    if not (reuse and dataset.exists() and stamp.exists() and json.loads(stamp.read_text()).get("data") == data_key):
        for sub in ("simulated", "particles", "dataset", "runs"):
            shutil.rmtree(work / sub, ignore_errors=True)
        build_data(s, work)
        stamp.write_text(json.dumps({"data": data_key}))
    data_s = time.perf_counter() - t0
    names = {"unet": "3D U-Net", "diffusion": "diffusion (DDIM 50, K=4)"}
    runs, train_s = {}, {}
    for which in ("unet", "diffusion"):
        if only and which != only:
            continue
        run = work / "runs" / which
        spec_file = run / "bench_spec.json"
        spec = json.dumps(getattr(s, which), sort_keys=True)
        if reuse and (run / "model.safetensors").exists() and spec_file.exists() and spec_file.read_text() == spec:
            train_s[names[which]] = json.loads((run / "bench_seconds.json").read_text())["seconds"]
        else:
            train_s[names[which]] = train_run(s, which, dataset, run)
            spec_file.write_text(spec)
            (run / "bench_seconds.json").write_text(json.dumps({"seconds": train_s[names[which]]}))
        runs[names[which]] = run
    t1 = time.perf_counter()
    results = evaluate(s, dataset, runs)
    result = {
        "settings": asdict(s) | {"label_apix": s.label_apix},
        "results": results,
        "train_seconds": train_s,
        "seconds": {"data": round(data_s, 1), "predict": round(time.perf_counter() - t1, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }
    Path("bench_out").mkdir(exist_ok=True)
    Path("bench_out/accuracy.json").write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"(data {data_s:.0f} s, training {sum(train_s.values()):.0f} s, prediction {result['seconds']['predict']:.0f} s)")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", action="store_true", help="keep the dataset and runs of an earlier call with equal settings")
    ap.add_argument("--only", choices=("unet", "diffusion"), help="train and score one model only")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main(reuse=args.reuse, only=args.only)
