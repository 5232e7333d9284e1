"""Score one map against a truth map and write ``metrics.json``, ``fsc.csv`` and ``fsc.png``.

:func:`score_map` is the library form of ``cryomap evaluate``: optional global alignment
(rotation, translation, hand; :mod:`cryomap.evaluate.align`), the FSC (and the mask-corrected
FSC when a mask is given), and the real-space metrics of :mod:`cryomap.evaluate.metrics`.
:func:`write_evaluation` writes one evaluation folder, which ``cryomap report`` later finds.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError
from cryomap.evaluate.fsc import FSCCurve, fsc, masked_fsc
from cryomap.evaluate.metrics import map_metrics

#: file names inside an evaluation folder
METRICS_JSON = "metrics.json"
FSC_CSV = "fsc.csv"
FSC_PNG = "fsc.png"


@dataclass
class Evaluation:
    """Metrics (JSON-ready dict), the FSC curve and the (aligned) prediction that was scored."""

    metrics: dict
    curve: FSCCurve
    scored_map: np.ndarray
    extra_curves: dict[str, FSCCurve] = field(default_factory=dict)


def check_same_grid(pred_shape, truth_shape, pred_apix: float, truth_apix: float, pred_path=None) -> None:
    """Raise :class:`BadInputError` unless box and voxel size (within 1%) agree."""
    if tuple(pred_shape) != tuple(truth_shape):
        raise BadInputError(f"map shape {tuple(pred_shape)} differs from the truth's {tuple(truth_shape)}; resample first (cryomap labels)", pred_path)
    if abs(pred_apix - truth_apix) > 0.01 * truth_apix:
        raise BadInputError(f"voxel size {pred_apix:g} Å differs from the truth's {truth_apix:g} Å", pred_path)
    if len(pred_shape) != 3 or len(set(pred_shape)) != 1:
        raise BadInputError(f"expected a cubic 3D map, found shape {tuple(pred_shape)}", pred_path)


def _clean(value):
    """JSON-safe floats (inf/nan → None)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def score_map(
    pred: np.ndarray,
    truth: np.ndarray,
    apix: float,
    *,
    mask: np.ndarray | None = None,
    contour: float | None = None,
    align: bool = False,
    name: str = "prediction",
    seed: int = 0,
) -> Evaluation:
    """Score ``pred`` against ``truth`` (same cubic box, ``apix`` Å/voxel).

    ``mask`` (soft, 0…1) weights CC/MSE and adds the mask-corrected FSC (``fsc_masked_corrected``
    resolutions; Chen et al. 2013); the unmasked FSC is always reported. ``contour`` binarises
    maps for Dice/IoU (truth units; default Otsu of the truth). ``align`` first moves ``pred``
    onto ``truth`` (global rotation, translation and hand search).
    """
    t0 = time.perf_counter()
    pred = np.asarray(pred, np.float32)
    truth = np.asarray(truth, np.float32)
    check_same_grid(pred.shape, truth.shape, apix, apix)
    info: dict = {"name": name, "apix_A": float(apix), "box": int(truth.shape[0]), "aligned": bool(align)}
    if align:
        from cryomap.evaluate.align import align_maps, apply_alignment

        alignment = align_maps(pred, truth)
        pred = apply_alignment(pred, alignment)
        info["alignment"] = alignment.to_dict()
    curve = fsc(pred, truth, apix)
    info.update({"fsc": curve.summary()})
    extra = {}
    if mask is not None:
        corrected = masked_fsc(pred, truth, mask, apix, seed=seed)
        s = corrected.summary()
        s["randomize_from_shell"] = int(corrected.randomize_from_shell)  # type: ignore[attr-defined]
        info["fsc_masked_corrected"] = s
        extra["masked (corrected)"] = corrected
    info["metrics"] = map_metrics(pred, truth, contour=contour, mask=mask)
    info["masked_metrics"] = mask is not None
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return Evaluation(_clean(info), curve, pred, extra)


def write_fsc_csv(path: Path, curve: FSCCurve, extra: dict[str, FSCCurve] | None = None) -> None:
    """One row per shell: shell, frequency_per_A, resolution_A, fsc, n_voxels (+ extra curves)."""
    rows = curve.to_rows()
    for name, c in (extra or {}).items():
        key = "fsc_" + name.replace(" ", "_").replace("(", "").replace(")", "")
        for row, v in zip(rows, c.fsc):
            row[key] = float(v)
        for sub, values in c.extra.items():
            for row, v in zip(rows, values):
                row[f"{key}__{sub}"] = float(v)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_fsc_csv(path: str | Path, column: str = "fsc") -> FSCCurve:
    """Read back a curve written by :func:`write_fsc_csv` (``column`` picks which FSC)."""
    import pandas as pd

    df = pd.read_csv(path)
    freq = df["frequency_per_A"].to_numpy(float)
    apix = 1.0 / (2.0 * freq[-1]) if freq[-1] > 0 else 1.0
    return FSCCurve(freq, df[column].to_numpy(float), df["n_voxels"].to_numpy(int), apix)


def write_evaluation(
    out_dir: str | Path,
    evaluation: Evaluation,
    *,
    force: bool = False,
    pred_path: str | Path | None = None,
    truth_path: str | Path | None = None,
    extra_info: dict | None = None,
    save_scored_map: bool = False,
) -> Path:
    """Write ``metrics.json``, ``fsc.csv``, ``fsc.png`` (and ``scored_map.mrc`` if asked) atomically."""
    from cryomap.evaluate.figures import fsc_figure
    from cryomap.io.atomic import atomic_dir
    from cryomap.io.mrc import write_mrc

    out_dir = Path(out_dir)
    info = dict(evaluation.metrics)
    if pred_path is not None:
        info["pred_path"] = str(Path(pred_path).resolve())
    if truth_path is not None:
        info["truth_path"] = str(Path(truth_path).resolve())
    if extra_info:
        info.update(_clean(extra_info))
    with atomic_dir(out_dir, force=force) as tmp:
        if save_scored_map:
            write_mrc(tmp / "scored_map.mrc", evaluation.scored_map, info["apix_A"])
            info["scored_map"] = "scored_map.mrc"
        (tmp / METRICS_JSON).write_text(json.dumps(info, indent=2) + "\n")
        write_fsc_csv(tmp / FSC_CSV, evaluation.curve, evaluation.extra_curves)
        curves = {info["name"]: evaluation.curve, **{f"{info['name']} {k}": c for k, c in evaluation.extra_curves.items()}}
        fsc_figure(curves, tmp / FSC_PNG, title=f"FSC: {info['name']} vs {info.get('reference', 'truth')}")
    return out_dir
