"""PNG figures for evaluation and the report (matplotlib, Agg backend, no display needed).

* :func:`views_figure`: one row per map, columns x/y/z — central slices, sum projections or
  maximum-intensity projections (an isosurface-free view of the 3D shape).
* :func:`fsc_figure`: FSC curves of several maps on one plot with the 0.5 and 0.143 lines;
  x is spatial frequency in 1/Å with resolution in Å on the top axis.
* :func:`loss_figure`: loss curves from Lightning's CSVLogger ``metrics.csv``.

Each writes its PNG atomically and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryomap.io.atomic import atomic_path

#: axis of the (z, y, x) array summed/sliced for a view "along" x, y, z
_AXES = {"x": 2, "y": 1, "z": 0}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, force: bool) -> Path:
    path = Path(path)
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


def view(volume: np.ndarray, axis: str, kind: str) -> np.ndarray:
    """2D view of a (z, y, x) map along ``axis`` ('x', 'y', 'z'): kind 'slice' (central), 'sum' or 'max'."""
    ax = _AXES[axis]
    v = np.asarray(volume, dtype=np.float32)
    if kind == "slice":
        return np.take(v, v.shape[ax] // 2, axis=ax)
    if kind == "sum":
        return v.sum(axis=ax)
    if kind == "max":
        return v.max(axis=ax)
    raise ValueError(f"unknown view kind {kind!r}")


def views_figure(maps: dict[str, np.ndarray], kind: str, path: str | Path, force: bool = True, title: str | None = None) -> Path:
    """Grid of views (rows: maps, columns: along x, y, z); each panel scaled to its own 1–99.5 percentiles."""
    plt = _plt()
    names = list(maps)
    fig, axes = plt.subplots(len(names), 3, figsize=(5.4, 1.8 * len(names) + 0.4), squeeze=False)
    label = {"slice": "central slice", "sum": "projection", "max": "MIP"}[kind]
    for i, name in enumerate(names):
        for j, axis in enumerate(("x", "y", "z")):
            img = view(maps[name], axis, kind)
            lo, hi = np.percentile(img, [1, 99.5])
            a = axes[i, j]
            a.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(f"{label} along {axis}", fontsize=9)
            if j == 0:
                a.set_ylabel(name if len(name) < 18 else name.replace(" (", "\n("), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, force)


def fsc_figure(curves: dict, path: str | Path, force: bool = True, title: str = "Fourier shell correlation") -> Path:
    """Plot FSC curves (``{name: FSCCurve}``) on one axis with 0.5 and 0.143 thresholds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    fmax = 0.0
    for name, c in curves.items():
        res = c.resolution(0.143)
        ax.plot(c.frequency, c.fsc, label=f"{name} (0.143: {res:.1f} Å)", lw=1.6)
        fmax = max(fmax, float(c.frequency[-1]))
    for t, style in ((0.5, "--"), (0.143, ":")):
        ax.axhline(t, color="gray", ls=style, lw=1)
        ax.text(fmax, t + 0.01, f"{t}", ha="right", va="bottom", fontsize=8, color="gray")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlim(0, fmax if fmax > 0 else 1)
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(title, fontsize=10)
    top = ax.secondary_xaxis("top", functions=(lambda f: 1 / np.maximum(f, 1e-6), lambda r: 1 / np.maximum(r, 1e-6)))
    top.set_xlabel("resolution (Å)")
    if fmax > 0:
        ticks = [r for r in (100, 50, 30, 20, 15, 10, 8, 6, 5, 4, 3, 2) if 1 / r <= fmax]
        top.set_xticks(ticks)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return _save(fig, path, force)


def read_loss_log(csv_path: str | Path):
    """Lightning CSVLogger ``metrics.csv`` as a DataFrame (or None when it has no loss column)."""
    import pandas as pd

    df = pd.read_csv(csv_path)
    if not any("loss" in c for c in df.columns):
        return None
    return df


def loss_figure(csv_paths: list[str | Path], path: str | Path, force: bool = True) -> Path | None:
    """Every ``*loss*`` column of the given CSV logs against step (or epoch); None when no loss found."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    plotted = 0
    for csv in csv_paths:
        df = read_loss_log(csv)
        if df is None:
            continue
        x_col = "step" if "step" in df.columns else ("epoch" if "epoch" in df.columns else None)
        for col in [c for c in df.columns if "loss" in c]:
            sub = df[[col] + ([x_col] if x_col else [])].dropna(subset=[col])
            if sub.empty:
                continue
            x = sub[x_col].to_numpy() if x_col else np.arange(len(sub))
            label = col if len(csv_paths) == 1 else f"{Path(csv).parent.name}: {col}"
            ax.plot(x, sub[col].to_numpy(), marker="o" if len(sub) < 30 else None, ms=3, lw=1.4, label=label)
            plotted += 1
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(np.nanmin(line.get_ydata()) > 0 for line in ax.get_lines()):
        ax.set_yscale("log")
    ax.set_title("training and validation loss", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, force)
