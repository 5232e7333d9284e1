"""The output folder of ``cryomap classify2d`` (and of its importers), written atomically.

``OUT/classes.mrcs``
    class averages, best-ranked first (``--top k`` keeps the first k), pixel size in the header.
``OUT/classes.star``
    one row per class in that order: ``rlnReferenceImage`` (``N@classes.mrcs``),
    ``rlnClassDistribution`` (fraction of the particles), ``rlnEstimatedResolution`` (Å, FRC of
    half-set averages at 0.143; NaN when unknown), ``rlnCryomapParticleCount``,
    ``rlnCryomapOriginalClass`` (the class's number before ranking: the tool's own for imports).
``OUT/particles.star``
    every input row, in input order, with ``rlnClassNumber`` (1-based rank: the row of
    ``classes.mrcs``; numbers above k belong to classes ``--top`` left out), ``rlnAnglePsi`` (°),
    ``rlnOriginXAngst/YAngst`` (Å) and ``rlnMaxValueProbDistribution``; image names point at the
    input stacks (absolute paths).
``OUT/gallery.png``
    the classes in rank order, each labelled with its rank, particle count and resolution.
``OUT/run.json``
    parameters, per-iteration statistics, timings, what the resolution means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryomap.particles.source import ParticleSource

CLASSES_MRCS = "classes.mrcs"
CLASSES_STAR = "classes.star"
PARTICLES_STAR = "particles.star"
GALLERY_PNG = "gallery.png"
RUN_JSON = "run.json"


@dataclass
class ClassOutput:
    """Everything the output folder holds, classes in their original order (ranking happens here)."""

    averages: np.ndarray  # (K, D, D)
    resolution_A: np.ndarray  # (K,)
    counts: np.ndarray  # (K,)
    apix: float
    classes: np.ndarray  # (N,) 0-based original class per particle (−1: none)
    psi_deg: np.ndarray  # (N,) RELION rlnAnglePsi
    origins_A: np.ndarray  # (N, 2)
    max_prob: np.ndarray  # (N,)
    original_numbers: np.ndarray | None = None  # (K,) the classes' own numbers (default 1..K)
    info: dict = field(default_factory=dict)


def ranked(out: ClassOutput) -> tuple[np.ndarray, np.ndarray]:
    """(order of original classes best first, 1-based rank of every original class)."""
    from cryomap.classify2d.rank import rank_order

    order = rank_order(out.resolution_A, out.counts)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return order, rank


def write_class_output(out_dir: str | Path, source: ParticleSource | pd.DataFrame, out: ClassOutput, *, top: int | None = None,
                       force: bool = False) -> Path:
    """Write the folder described in the module docstring; returns ``out_dir``.

    ``source`` gives the particle rows (a table alone when an import's images are not at hand).
    """
    from cryomap.io.atomic import atomic_dir
    from cryomap.io.mrc import write_mrc
    from cryomap.io.star import write_star

    out_dir = Path(out_dir)
    order, rank = ranked(out)
    k_keep = len(order) if top is None else max(1, min(int(top), len(order)))
    keep = order[:k_keep]
    total = max(int(np.sum(out.counts)), 1)
    numbers = np.arange(1, len(order) + 1) if out.original_numbers is None else np.asarray(out.original_numbers)
    classes_tab = pd.DataFrame({
        "rlnReferenceImage": [f"{i + 1:06d}@{CLASSES_MRCS}" for i in range(k_keep)],
        "rlnClassDistribution": np.round(out.counts[keep] / total, 6),
        "rlnEstimatedResolution": np.round(out.resolution_A[keep].astype(float), 3),
        "rlnCryomapParticleCount": out.counts[keep].astype(np.int64),
        "rlnCryomapOriginalClass": numbers[keep].astype(np.int64),
    })
    table = _particle_table(source, out, rank)
    with atomic_dir(out_dir, force=force) as tmp:
        write_mrc(tmp / CLASSES_MRCS, out.averages[keep].astype(np.float32), out.apix, is_stack=True)
        _write_plain_star(tmp / CLASSES_STAR, classes_tab, "classes")
        write_star(tmp / PARTICLES_STAR, table)
        gallery(tmp / GALLERY_PNG, out.averages[keep], out.counts[keep], out.resolution_A[keep])
        info = {**out.info, "n_classes": int(len(order)), "kept": int(k_keep),
                "ranking": "FRC 0.143 between half-set averages (finest first), then particle count"}
        (tmp / RUN_JSON).write_text(json.dumps(info, indent=1, default=_json_default))
    return out_dir


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _particle_table(source: ParticleSource | pd.DataFrame, out: ClassOutput, rank: np.ndarray) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):  # an import whose particle images are not at hand
        tab = source.copy()
    else:
        tab = source.table.copy()
        try:
            tab["rlnImageName"] = source.image_names()  # absolute: the STAR may live anywhere
        except ValueError:  # an in-memory source has no files to point at
            pass
    cls = np.asarray(out.classes)
    tab["rlnClassNumber"] = np.where(cls >= 0, rank[np.clip(cls, 0, None)], 0).astype(np.int64)
    tab["rlnAnglePsi"] = np.round(np.asarray(out.psi_deg, float), 4)
    tab["rlnOriginXAngst"] = np.round(np.asarray(out.origins_A, float)[:, 0], 4)
    tab["rlnOriginYAngst"] = np.round(np.asarray(out.origins_A, float)[:, 1], 4)
    tab["rlnMaxValueProbDistribution"] = np.round(np.asarray(out.max_prob, float), 5)
    for stale in ("rlnOriginX", "rlnOriginY"):
        if stale in tab:
            tab = tab.drop(columns=stale)
    return tab


def _write_plain_star(path: Path, table: pd.DataFrame, block: str) -> None:
    """One loop block, RELION 3.1 style (``# version 30001``)."""
    import re

    import starfile

    starfile.write({block: table}, path, overwrite=True)
    path.write_text(re.sub(r"(?m)^data_", "# version 30001\ndata_", path.read_text()))


def gallery(path: Path, averages: np.ndarray, counts: np.ndarray, resolution_A: np.ndarray, *,
            columns: int | None = None) -> Path:
    """PNG grid of class averages in the given order, each titled ``#rank  n=count  res Å``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(averages)
    cols = columns or int(min(10, max(1, np.ceil(np.sqrt(k * 1.6)))))
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.85 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= k:
            continue
        img = averages[i]
        lo, hi = np.percentile(img, [1, 99.5])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        res = resolution_A[i]
        res_txt = f"{res:.1f} Å" if np.isfinite(res) else "– Å"
        ax.set_title(f"#{i + 1}  n={int(counts[i])}\n{res_txt}", fontsize=7, pad=2)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
