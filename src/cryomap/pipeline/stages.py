"""The pipeline's stages: each ``stage(ctx, folder) -> outputs`` (JSON-ready), thin over the library.

Every stage reads what earlier stages recorded in ``ctx.outputs`` and writes only into its own
folder. Paths in the outputs are absolute strings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cryomap.pipeline.run import Context
from cryomap.progress import summary

# --------------------------------------------------------------------------- data


def simulate(ctx: Context, folder: Path) -> dict:
    """Simulated CryoPPP folders (``data.simulate``), or the given CryoPPP folders as they are."""
    cfg = ctx.cfg
    if cfg.data.cryoppp is not None:
        folders = {Path(f).name: str(Path(f)) for f in cfg.data.cryoppp.folders}
        truth = {k: str(v) for k, v in cfg.data.cryoppp.truth_maps.items()}
        return {"folders": folders, "truth_maps": truth, "truth_apix": dict(cfg.data.cryoppp.truth_apix), "simulated": False}
    from cryomap.simulate.dataset import simulate_dataset

    s = cfg.data.simulate
    unseen = cfg.unseen.target if cfg.unseen is not None else None
    seen = [t for t in s.targets if t != unseen]
    made = simulate_dataset(seen, folder / "seen", n_particles=s.particles, micrograph_size=s.micrograph_size,
                            apix=s.apix, snr=s.snr, seed=cfg.seed, box=s.box, force=True, progress=True) if seen else []
    folders = {p.name: str(p) for p in made}
    if unseen is not None:  # its own simulation (its own seed and count): particles for ab initio
        extra = simulate_dataset([unseen], folder / "unseen", n_particles=s.unseen_particles or s.particles,
                                 micrograph_size=s.micrograph_size, apix=s.apix, snr=s.snr, seed=cfg.seed + 1,
                                 box=s.box, force=True, progress=True)
        folders[unseen] = str(extra[0])
    truth = {name: str(Path(f) / "maps" / f"{name}_truth.mrc") for name, f in folders.items()}
    return {"folders": folders, "truth_maps": truth, "truth_apix": {}, "simulated": True}


def extract(ctx: Context, folder: Path) -> dict:
    """Particles of every folder, contrast-inverted to RELION's bright particles when asked."""
    from cryomap.particles.extract import extract_particles

    e = ctx.cfg.extract
    stars = {}
    for name, src in ctx.outputs["simulate"]["folders"].items():
        res = extract_particles(src, folder / name, e.box, bin_factor=e.bin, invert=e.invert, apix=e.apix,
                                phase_flip=e.phase_flip, force=True, progress=True)
        summary(res.summary_line())
        stars[name] = str(res.star_path)
    return {"stars": stars}


def preprocess(ctx: Context, folder: Path) -> dict:
    """The report's Figures 2 and 10 on the particles of the first target (the chain of the figures)."""
    from cryomap.particles.source import open_particles
    from cryomap.preprocess.figures import chain_figures

    steps = ctx.cfg.preprocess.figure_steps
    if not steps:
        return {"figures": []}
    name = ctx.cfg.seen.predict if ctx.cfg.seen is not None else next(iter(ctx.outputs["extract"]["stars"]))
    src = open_particles(ctx.outputs["extract"]["stars"][name])
    if "phase-flip" in steps and not src.has_ctf:
        steps = [s for s in steps if s not in ("phase-flip", "wiener")]
    figs = chain_figures(src, [{"step": s} for s in steps], folder)
    return {"figures": [str(p) for p in figs], "target": name, "steps": steps}


def _targets(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    return list(cfg.seen.targets) if cfg.seen is not None else list(ctx.outputs["extract"]["stars"])


def classify2d(ctx: Context, folder: Path) -> dict:
    """2D classes of every seen target (the report's cryoSPARC classes, made here)."""
    from cryomap.classify2d.em import Classify2DParams
    from cryomap.classify2d.run import classify_to_folder
    from cryomap.particles.source import open_particles

    c = ctx.cfg.classify2d
    out = {}
    for name in _targets(ctx):
        src = open_particles(ctx.outputs["extract"]["stars"][name])
        ctf = c.ctf if src.has_ctf else "none"
        run = classify_to_folder(src, folder / name, Classify2DParams(n_classes=c.classes, iterations=c.iterations,
                                                                      ctf=ctf, seed=ctx.cfg.seed), top=c.top, force=True)
        summary(run.summary_line())
        out[name] = str(folder / name)
    return {"folders": out}


def encode(ctx: Context, folder: Path) -> dict:
    """A per-target autoencoder's latents for every seen target (the report's approach 4.4)."""
    from cryomap.encode.train import EncodeParams, encode_particles
    from cryomap.particles.source import open_particles

    e = ctx.cfg.encode
    out = {}
    for name in _targets(ctx):
        encode_particles(open_particles(ctx.outputs["extract"]["stars"][name]), folder / name,
                         EncodeParams(latent_dim=e.latent_dim, epochs=e.epochs, seed=ctx.cfg.seed), force=True)
        out[name] = str(folder / name)
    return {"folders": out}


def datasets(ctx: Context, folder: Path) -> dict:
    """One dataset per condition mode over the seen targets, split by particles (a held-out share each)."""
    import yaml

    from cryomap.datasets.build import build_dataset

    cfg = ctx.cfg
    modes = sorted({m.condition for m in cfg.models})
    out = {}
    for mode in modes:
        targets = []
        for name in cfg.seen.targets:
            t = {"name": name, "particles": ctx.outputs["extract"]["stars"][name],
                 "map": ctx.outputs["simulate"]["truth_maps"][name]}
            apix = ctx.outputs["simulate"].get("truth_apix", {}).get(name)
            if apix:
                t["map_apix"] = apix
            if mode.startswith("class"):
                t["class_averages"] = ctx.outputs["classify2d"]["folders"][name]
            if mode == "latents":
                t["latents"] = ctx.outputs["encode"]["folders"][name]
            targets.append(t)
        spec = {"targets": targets, "label": cfg.labels.model_dump(), "condition": {"mode": mode},
                "split": {"by": "particles", "val_fraction": cfg.seen.val_fraction, "particle_holdout": cfg.seen.holdout},
                "seed": cfg.seed}
        if cfg.preprocess.steps:
            spec["preprocess"] = cfg.preprocess.steps
        path = folder / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        build_dataset(path, folder / mode, force=True)
        out[mode] = str(folder / mode)
    return {"datasets": out}


def train(ctx: Context, folder: Path) -> dict:
    """Every model of the config on the dataset of its condition mode."""
    from cryomap.train.config import config_from_dict
    from cryomap.train.run import train as train_run

    runs = {}
    for m in ctx.cfg.models:
        raw: dict[str, Any] = {
            "model": m.network,
            "data": {"dataset_dir": ctx.outputs["datasets"]["datasets"][m.condition], "batch_size": m.batch_size,
                     "num_workers": 0},
            "optim": {"lr": m.lr, **(m.optim or {})},
            "trainer": {"max_steps": m.steps, "seed": ctx.cfg.seed, "log_every": max(1, m.steps // 30),
                        "progress_bar": True, **(m.trainer or {})},
        }
        if m.network.get("name") == "diffusion":
            raw["diffusion"] = m.diffusion or {}
        else:
            raw["loss"] = {"kind": m.loss}
        summary(f"training {m.name} ({m.network.get('name')}, condition {m.condition}, {m.steps} steps)")
        runs[m.name] = str(train_run(config_from_dict(raw), folder / m.name, force=True))
    return {"runs": runs}


# --------------------------------------------------------------------------- physics


def _write(path: Path, data: np.ndarray, apix: float) -> str:
    from cryomap.io.mrc import write_mrc

    write_mrc(path, np.asarray(data, np.float32), apix, force=True)
    return str(path)


def _write_reconstruction(folder: Path, stem: str, rec) -> dict:
    """``STEM.mrc`` and ``STEM_half1/2.mrc`` of a reconstruction in ``folder``; their paths and Å/voxel."""
    return {"map": _write(folder / f"{stem}.mrc", rec.full, rec.apix),
            "half1": _write(folder / f"{stem}_half1.mrc", rec.half1, rec.apix),
            "half2": _write(folder / f"{stem}_half2.mrc", rec.half2, rec.apix), "apix": rec.apix}


def reconstruct(ctx: Context, folder: Path) -> dict:
    """The seen target from its true poses (oracle); the unseen target by ab initio + refine (or its poses)."""
    from cryomap.cli import app
    from cryomap.particles.source import open_particles
    from cryomap.reconstruct.backproject import reconstruct_source

    cfg = ctx.cfg
    out: dict[str, Any] = {}
    stars = ctx.outputs["extract"]["stars"]
    if cfg.seen is not None:
        src = open_particles(stars[cfg.seen.predict])
        if src.has_poses:
            rec, _, _ = reconstruct_source(src, ctf=src.has_ctf, seed=cfg.seed)
            out["seen"] = {**_write_reconstruction(folder, "seen_oracle", rec), "fsc0.143_A": rec.resolution(0.143),
                           "poses": "true (simulated)"}
    if cfg.unseen is not None:
        u = cfg.unseen
        star = Path(stars[u.target])
        src = open_particles(star)
        if u.reconstruct == "abinitio":
            unposed = folder / "unseen_unposed.star"  # what a user has: no poses
            table = src.table.drop(columns=[c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                                                         "rlnOriginYAngst") if c in src.table])
            from cryomap.io.star import write_star

            table = table.assign(rlnImageName=src.image_names())
            write_star(unposed, table, force=True)
            args = ["abinitio", str(unposed), "-o", str(folder / "abinitio"), "--seed", str(cfg.seed), "--force"]
            if u.abinitio_iterations:
                args += ["--iterations", str(u.abinitio_iterations)]
            app(args, standalone_mode=False)
            args = ["refine", str(folder / "abinitio" / "particles.star"), "--reference",
                    str(folder / "abinitio" / "map.mrc"), "-o", str(folder / "refine"), "--force"]
            if u.refine_iterations:
                args += ["--iterations", str(u.refine_iterations)]
            app(args, standalone_mode=False)
            refined = folder / "refine"
            info = json.loads((refined / "settings.json").read_text()) if (refined / "settings.json").exists() else {}
            out["unseen"] = {"map": str(refined / "map.mrc"), "half1": str(refined / "half1.mrc"),
                             "half2": str(refined / "half2.mrc"), "particles": str(refined / "particles.star"),
                             "apix": src.pixel_size, "poses": "ab initio + refine (hand unknown)", "refine": info}
        else:
            rec, _, _ = reconstruct_source(src, ctf=src.has_ctf, seed=cfg.seed)
            out["unseen"] = {**_write_reconstruction(folder, "unseen", rec), "particles": str(star),
                             "poses": "the particles' own"}
    return out


# --------------------------------------------------------------------------- learned maps


def predict(ctx: Context, folder: Path) -> dict:
    """Every trained model on the seen target's held-out particles and on the unseen target's particles;
    the physics-conditioned model (built-in by default) on the unseen target's refined particles."""
    from cryomap.io.mrc import write_mrc
    from cryomap.train.predict import load_model, predict_map

    cfg = ctx.cfg
    out: dict[str, dict] = {"seen": {}, "unseen": {}}
    runs = (ctx.outputs.get("train") or {}).get("runs", {})
    for name, run in runs.items():
        model = load_model(run)
        if cfg.seen is not None:
            pred = predict_map(model, target=cfg.seen.predict, seed=cfg.seed)
            p = folder / f"seen_{name}.mrc"
            write_mrc(p, pred.map.data, pred.map.apix, origin=pred.map.origin, force=True)
            out["seen"][name] = {"map": str(p), "apix": pred.map.apix, "grid": "label"}
        if cfg.unseen is not None and model.meta.get("mode") in ("stack", None):
            pred = predict_map(model, ctx.outputs["extract"]["stars"][cfg.unseen.target], seed=cfg.seed)
            p = folder / f"unseen_{name}.mrc"
            write_mrc(p, pred.map.data, pred.map.apix, origin=pred.map.origin, force=True)
            out["unseen"][name] = {"map": str(p), "apix": pred.map.apix, "grid": "label"}
    if cfg.unseen is not None and cfg.unseen.model and "unseen" in ctx.outputs["reconstruct"]:
        from cryomap.train.builtin import resolve_model
        from cryomap.train.learned_map import predict_particles

        model = load_model(resolve_model(cfg.unseen.model))
        pred, info = predict_particles(model, ctx.outputs["reconstruct"]["unseen"]["particles"], seed=cfg.seed)
        p = folder / "unseen_learned.mrc"
        write_mrc(p, pred.map.data, pred.map.apix, force=True)
        entry = {"map": str(p), "apix": pred.map.apix, "grid": "particles", "model": cfg.unseen.model, "info": info}
        if pred.std is not None:
            sp = folder / "unseen_learned_std.mrc"
            write_mrc(sp, pred.std.data, pred.std.apix, force=True)
            entry["std"] = str(sp)
        out["unseen"]["learned (physics-conditioned)"] = entry
    return out


# --------------------------------------------------------------------------- scoring


def _label(path: str, apix: float | None, cfg) -> tuple[np.ndarray, float, tuple]:
    from cryomap.io.mrc import read_map
    from cryomap.labels import make_label

    m = make_label(read_map(path, apix=apix), apix=cfg.labels.apix, box=cfg.labels.box, threshold=cfg.labels.threshold)
    return m.data, m.apix, m.origin


def _on_label_grid(path: str, truth: np.ndarray, label_apix: float, box: int) -> np.ndarray:
    """A particle-grid map resampled to the label grid and put on the label's scale (least squares)."""
    from cryomap.evaluate.baselines import scale_to
    from cryomap.io.mrc import read_map
    from cryomap.labels import resample_map

    m = read_map(path)
    v = resample_map(m.data, m.apix, label_apix) if abs(m.apix - label_apix) > 1e-6 else m.data
    out = np.zeros((box, box, box), np.float32)
    n = v.shape[0]
    s0, d0 = max(0, n // 2 - box // 2), max(0, box // 2 - n // 2)
    k = min(n - s0, box - d0)
    out[d0:d0 + k, d0:d0 + k, d0:d0 + k] = v[s0:s0 + k, s0:s0 + k, s0:s0 + k]
    return scale_to(truth, out)


def _score(name: str, m: np.ndarray, truth: np.ndarray, apix: float, folder: Path, truth_path: Path,
           align: bool, seed: int) -> dict:
    from cryomap.evaluate.score import score_map, write_evaluation
    from cryomap.io.mrc import write_mrc

    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    path = folder / f"{slug}.mrc"
    write_mrc(path, m, apix, force=True)
    ev = score_map(m, truth, apix, name=f"{name} [{folder.name}]", align=align, seed=seed)  # [seen] / [unseen]
    write_evaluation(folder / slug, ev, pred_path=path, truth_path=truth_path, force=True, save_scored_map=align)
    mm, f = ev.metrics["metrics"], ev.metrics["fsc"]
    # an aligned map was put on the truth's scale before the alignment (in its own frame), so its Dice is
    # taken at the contour enclosing the truth's volume; a map already in the truth's frame at the truth's contour
    return {"fsc0.5_A": f["resolution_fsc0.5_A"], "fsc0.143_A": f["resolution_fsc0.143_A"], "cc": mm["cc_mean"],
            "dice": mm["dice_equal_volume"] if align else mm["dice"],
            "dice_contour": "equal volume" if align else "truth contour", "aligned": align}


def evaluate(ctx: Context, folder: Path) -> dict:
    """Every map against its molecule's truth label (label grid), seen and unseen apart."""
    from cryomap.evaluate.baselines import mean_label
    from cryomap.io.mrc import read_map, write_mrc

    cfg = ctx.cfg
    sim = ctx.outputs["simulate"]
    pred = ctx.outputs["predict"]
    rec = ctx.outputs["reconstruct"]
    result: dict[str, dict] = {"seen": {}, "unseen": {}, "notes": {}}
    train_labels = []
    for ds in (ctx.outputs.get("datasets") or {}).get("datasets", {}).values():
        from cryomap.datasets.manifest import Manifest

        man = Manifest.load(ds)
        train_labels = [man.label(t) for t in man.target_names]
        break
    for key, target in (("seen", cfg.seen.predict if cfg.seen else None), ("unseen", cfg.unseen.target if cfg.unseen else None)):
        if target is None or target not in sim["truth_maps"]:
            continue
        truth, lapix, origin = _label(sim["truth_maps"][target], sim.get("truth_apix", {}).get(target), cfg)
        sub = folder / key
        sub.mkdir()
        truth_path = sub / "truth_label.mrc"
        write_mrc(truth_path, truth, lapix, origin=origin)
        maps: dict[str, tuple[np.ndarray, bool]] = {}
        for name, entry in pred.get(key, {}).items():
            if entry["grid"] == "label":
                maps[name] = (read_map(entry["map"]).data, False)
            else:
                maps[name] = (_on_label_grid(entry["map"], truth, lapix, cfg.labels.box), key == "unseen")
        if key in rec:
            physics = "physics: true-pose reconstruction (oracle)" if key == "seen" else \
                f"physics: {rec[key]['poses']}"
            maps[physics] = (_on_label_grid(rec[key]["map"], truth, lapix, cfg.labels.box),
                             key == "unseen" and "ab initio" in rec[key]["poses"])
        if train_labels:
            maps["mean training label"] = (mean_label(train_labels), False)
        for name, (m, align) in maps.items():
            result[key][name] = _score(name, m, truth, lapix, sub, truth_path, align, cfg.seed)
    result["notes"] = {
        "seen": f"{cfg.seen.predict}: the models were trained on this molecule (other particles of it); "
                "predicted from held-out particles" if cfg.seen else "",
        "unseen": f"{cfg.unseen.target}: in no training set of this run nor of the shipped model; "
                  "ab initio maps are scored after alignment over both hands" if cfg.unseen else "",
        "mean training label": "the voxel-wise mean of the seen targets' labels: what a model that ignores "
                               "its input predicts; for the seen molecule it contains the truth",
    }
    return result


def report(ctx: Context, run_summary: dict, title: str) -> Path:
    """One HTML page for the run (evaluate/report.py), headline seen vs unseen first."""
    from cryomap.evaluate.report import build_report

    return build_report(ctx.out, ctx.out / "report.html", force=True, title=title)
