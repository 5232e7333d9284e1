"""``build_dataset``: labels, per-target image stores and a manifest from a dataset config.

Condition storage (measured in ``benchmarks/bench_datasets.py``; see docs/labels_datasets.md):
``resized`` (default) resizes and standardises every particle once, at build time, into a
memory-mapped ``images/<target>.npy`` of (n, D, D) float32, so a training sample is a gather of
D rows; ``source`` keeps only the STAR path and reads + Fourier-resizes the drawn particles from
the original stack inside the DataLoader workers. Whole condition tensors are never stored: a
fresh random draw per sample and epoch would need one 8 MB (D = 128) tensor per draw.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml

from cryomap.datasets.config import DatasetConfig, load_config
from cryomap.datasets.images import prepare_images
from cryomap.datasets.manifest import MANIFEST_NAME
from cryomap.errors import BadInputError
from cryomap.io.atomic import atomic_dir
from cryomap.io.mrc import read_stack
from cryomap.labels.make import make_label_file
from cryomap.particles.source import ParticleSource, open_particles
from cryomap.particles.writer import write_subset_star
from cryomap.preprocess.chain import apply_chain
from cryomap.progress import progress_bar, summary

#: Particles resized per chunk while writing an image store (bounds memory at ~chunk·h·w·4 bytes).
CHUNK = 256

MANIFEST_VERSION = 1


def assign_target_splits(cfg: DatasetConfig, rng: np.random.Generator) -> dict[str, str]:
    """Split name per target. By targets: named val/test targets, else fractions of the targets
    (at least one target stays in train); by particles: every target is 'shared'."""
    names = [t.name for t in cfg.targets]
    if cfg.split.by == "particles":
        return {n: "shared" for n in names}
    split = {n: "train" for n in names}
    for n in cfg.split.val_targets:
        split[n] = "val"
    for n in cfg.split.test_targets:
        split[n] = "test"
    free = [n for n in names if split[n] == "train"]
    order = [free[i] for i in rng.permutation(len(free))]
    n_test = 0 if cfg.split.test_targets else int(round(cfg.split.test_fraction * len(names)))
    n_val = 0 if cfg.split.val_targets else int(round(cfg.split.val_fraction * len(names)))
    for n in order[:n_test]:
        split[n] = "test"
    for n in order[n_test : n_test + n_val]:
        split[n] = "val"
    if "train" not in split.values():
        raise BadInputError("the split leaves no target for training")
    return split


def particle_subsets(n: int, split: str, cfg: DatasetConfig, rng: np.random.Generator) -> dict[str, list[int]]:
    """0-based STAR row indices per subset (train/val/heldout) for one target.

    ``heldout`` (``particle_holdout`` of the particles; all of them for a test target) is never
    used in training — the particles a prediction is made from. By targets the rest is train or
    val by the target's split; by particles the rest is split again by ``val_fraction``.
    """
    perm = rng.permutation(n)
    if split == "test":
        return {"train": [], "val": [], "heldout": sorted(perm.tolist())}
    n_hold = int(round(cfg.split.particle_holdout * n))
    held, rest = perm[:n_hold], perm[n_hold:]
    if split == "shared":
        n_val = int(round(cfg.split.val_fraction * n))
        val, train = rest[:n_val], rest[n_val:]
    elif split == "val":
        val, train = rest, rest[:0]
    else:
        val, train = rest[:0], rest
    if split in ("train", "shared") and len(train) == 0:
        raise BadInputError(f"no particles left for training after the hold-out ({n} particles)")
    return {k: sorted(v.tolist()) for k, v in (("train", train), ("val", val), ("heldout", held))}


def _write_image_store(images: ParticleSource, out: Path, depth: int, bar, task) -> None:
    store = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(images), depth, depth))
    for start in range(0, len(images), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(images)))
        store[rows[0] : rows[-1] + 1] = prepare_images(images.images(rows), depth)
        bar.advance(task, len(rows))
    store.flush()
    del store


def build_dataset(config_path: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Build the dataset ``config_path`` describes into ``out_dir`` (atomically); return ``out_dir``.

    Writes labels/<target>.mrc (see :func:`cryomap.labels.make_label`), the condition sources
    (images/, classes/, latents/ as the mode needs), config.yaml and manifest.json.
    """
    config_path = Path(config_path)
    cfg = load_config(config_path)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    depth = cfg.label.box
    mode = cfg.condition.mode
    splits = assign_target_splits(cfg, rng)
    raw_sources = {t.name: open_particles(t.particles) for t in cfg.targets}  # validates stacks up front
    # the preprocessing chain (if any) is applied as the particles are read, before resizing
    sources = {name: apply_chain(src, cfg.preprocess or []) for name, src in raw_sources.items()}
    entries = []
    with atomic_dir(out_dir, force=force) as tmp:
        for sub in ("labels", "images", "classes", "latents", "heldout"):
            (tmp / sub).mkdir()
        with progress_bar() as bar:
            for t in cfg.targets:
                images = sources[t.name]
                n = len(images)
                entry: dict = {
                    "name": t.name,
                    "split": splits[t.name],
                    "n_particles": n,
                    "particles": str(t.particles),
                    "image_shape": list(images.shape[1:]),
                    "particle_apix": images.pixel_size,
                    "map": str(t.map),
                    "label": f"labels/{t.name}.mrc",
                    "images": None,
                    "classes": None,
                    "latents": None,
                }
                label = make_label_file(
                    t.map, tmp / entry["label"], apix=cfg.label.apix, box=depth,
                    threshold=cfg.label.threshold, in_apix=t.map_apix,
                )
                entry["label_origin"] = list(label.origin)
                if mode == "stack" and cfg.condition.storage == "resized":
                    entry["images"] = f"images/{t.name}.npy"
                    task = bar.add_task(f"{t.name}: images → {depth}²", total=n)
                    _write_image_store(images, tmp / entry["images"], depth, bar, task)
                if t.class_averages is not None:
                    classes = read_stack(t.class_averages, apix=1.0, mmap=False).data
                    entry["classes"] = f"classes/{t.name}.npy"
                    entry["n_classes"] = len(classes)
                    np.save(tmp / entry["classes"], prepare_images(classes, depth))
                if t.latents is not None:
                    lat = _load_latents(t.latents, n)
                    entry["latents"] = f"latents/{t.name}.npy"
                    entry["latent_dim"] = int(lat.shape[1])
                    np.save(tmp / entry["latents"], lat)
                entry["subsets"] = particle_subsets(n, splits[t.name], cfg, rng)
                entry["heldout_star"] = None
                if entry["subsets"]["heldout"]:
                    # the held-out particles as a STAR of their own, for `cryomap predict --particles`
                    entry["heldout_star"] = f"heldout/{t.name}.star"
                    write_subset_star(raw_sources[t.name].subset(np.asarray(entry["subsets"]["heldout"])),
                                      tmp / entry["heldout_star"])
                entries.append(entry)
        manifest = {
            "version": MANIFEST_VERSION,
            "seed": cfg.seed,
            "split_by": cfg.split.by,
            "label": cfg.label.model_dump(),
            "condition": {**cfg.condition.model_dump(), "depth": depth},
            "preprocess": cfg.preprocess,
            "targets": entries,
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        (tmp / "config.yaml").write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
        for sub in ("images", "classes", "latents", "heldout"):
            if not any((tmp / sub).iterdir()):
                shutil.rmtree(tmp / sub)
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    per_split = {s: sum(1 for e in entries if e["split"] == s) for s in ("train", "val", "test", "shared")}
    split_txt = ", ".join(f"{k} {v}" for k, v in per_split.items() if v)
    summary(
        f"built {out_dir}: {len(entries)} targets ({split_txt}), labels {depth}^3 at {cfg.label.apix:g} Å/voxel, "
        f"mode {mode}, {sum(e['n_particles'] for e in entries)} particles, {size / 2**20:.1f} MiB on disk"
    )
    return out_dir


def _load_latents(path: Path, n_particles: int) -> np.ndarray:
    if not path.exists():
        raise BadInputError("file not found", path)
    try:
        lat = np.load(path)
    except Exception as exc:
        raise BadInputError(f"not a readable .npy ({exc})", path) from exc
    if lat.ndim != 2 or lat.shape[0] != n_particles:
        raise BadInputError(
            f"latents must be (n_particles, L) = ({n_particles}, L) in STAR row order, got {lat.shape}", path
        )
    if not np.all(np.isfinite(lat)):
        raise BadInputError("latents contain NaN or infinite values", path)
    return lat.astype(np.float32)
