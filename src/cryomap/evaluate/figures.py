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

from cryomap.plotting import pyplot, save_figure

#: axis of the (z, y, x) array summed/sliced for a view "along" x, y, z
_AXES = {"x": 2, "y": 1, "z": 0}


def _plt():
    return pyplot()


def _save(fig, path: str | Path, force: bool) -> Path:
    return save_figure(fig, path, force)


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


def isosurface_figure(
    maps: dict[str, np.ndarray],
    path: str | Path,
    reference: str | None = None,
    contour: float | None = None,
    force: bool = True,
    views: tuple[tuple[float, float], ...] = ((20.0, -60.0), (20.0, 30.0), (80.0, -90.0)),
) -> Path:
    """Shaded isosurface renderings (rows: maps, columns: ``views`` as (elevation°, azimuth°)).

    Surfaces come from ``skimage.measure.marching_cubes``. Maps in other units (reconstructions)
    would be unfair at one shared level, so every map is contoured at the level that encloses
    as many voxels as ``maps[reference]`` does at ``contour`` (the equal-volume contour of
    :mod:`cryomap.evaluate.metrics`); the reference defaults to the first map and its contour
    to Otsu's threshold. matplotlib's 3D axes draw the mesh with a fixed light, so the views
    are comparable between rows.
    """
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from skimage.measure import marching_cubes

    from cryomap.evaluate.metrics import contour_for_volume, default_contour

    plt = _plt()
    names = list(maps)
    ref = maps[reference if reference is not None else names[0]]
    level_ref = default_contour(ref) if contour is None else float(contour)
    n_inside = int((np.asarray(ref) >= level_ref).sum())
    light = np.array([0.4, -0.4, 0.8]) / np.linalg.norm([0.4, -0.4, 0.8])
    # every panel shows the same cube: the reference's enclosed region plus a margin
    inside = np.argwhere(np.asarray(ref) >= level_ref)
    n_box = int(np.asarray(ref).shape[0])
    if len(inside):
        centre = (inside.min(0) + inside.max(0)) / 2.0
        half = 0.6 * float((inside.max(0) - inside.min(0)).max()) + 2.0
    else:
        centre, half = np.full(3, n_box / 2.0), n_box / 2.0
    lims = [(c - half, c + half) for c in centre[::-1]]  # (x, y, z)
    fig = plt.figure(figsize=(2.1 * len(views), 2.1 * len(names) + 0.3))
    for i, name in enumerate(names):
        v = np.asarray(maps[name], np.float32)
        # many voxels tied at the top (a clipped map) would put the level at the maximum, where
        # marching cubes finds no surface: stay just below it
        level = min(contour_for_volume(v, n_inside), float(v.max()) - 1e-4 * float(np.ptp(v)))
        try:
            # (z, y, x) array → vertices as (x, y, z) so the plot axes read x, y, z
            verts, faces, normals, _ = marching_cubes(v, level=level, step_size=1 if v.shape[0] <= 64 else 2)
            verts = verts[:, ::-1]
            face_normals = normals[faces].mean(axis=1)[:, ::-1]
            face_normals /= np.linalg.norm(face_normals, axis=1, keepdims=True) + 1e-12
            shade = 0.25 + 0.75 * np.clip(face_normals @ light, 0.0, 1.0)
        except (ValueError, RuntimeError):  # flat map: no surface at any level
            verts = faces = None
        for j, (elev, azim) in enumerate(views):
            ax = fig.add_subplot(len(names), len(views), i * len(views) + j + 1, projection="3d")
            if verts is not None:
                colors = np.stack([0.35 * shade, 0.55 * shade, 0.85 * shade, np.ones_like(shade)], axis=1)
                ax.add_collection3d(Poly3DCollection(verts[faces], facecolors=colors, edgecolors="none"))
            ax.set_xlim(*lims[0])
            ax.set_ylim(*lims[1])
            ax.set_zlim(*lims[2])
            ax.set_box_aspect((1, 1, 1), zoom=1.4)
            ax.view_init(elev=elev, azim=azim)
            ax.set_axis_off()
            if j == 0:
                ax.text2D(0.0, 0.95, name, transform=ax.transAxes, fontsize=8)
    fig.suptitle(f"isosurfaces at equal enclosed volume ({n_inside} voxels)", fontsize=9)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=0.95, wspace=0.0, hspace=0.05)
    return _save(fig, path, force)


def _display_range(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def particles_figure(
    micrograph: np.ndarray,
    coords_xy: np.ndarray,
    box_px: int,
    extracted: np.ndarray,
    clean: np.ndarray | None,
    path: str | Path,
    title: str = "",
    force: bool = True,
) -> Path:
    """A micrograph with its picked boxes, and extracted particles above their clean projections.

    ``coords_xy`` are box centres in micrograph pixels (x = column, y = row, CryoPPP/RELION);
    ``extracted`` (n, b, b) are the particles as the models see them; ``clean`` (n, b', b') the
    noise- and CTF-free projections of the same particles in the same order (or None). The
    micrograph is shown low-passed by 4× binning so particles are visible by eye.
    """
    from matplotlib.patches import Rectangle

    plt = _plt()
    n = len(extracted)
    rows = 1 if clean is None else 2
    fig = plt.figure(figsize=(4.2 + 1.1 * n, 4.4))
    grid = fig.add_gridspec(rows, n + 4)
    ax = fig.add_subplot(grid[:, :4])
    mic = np.asarray(micrograph, np.float32)
    b = 4 if min(mic.shape) >= 256 else 1
    h, w = (mic.shape[0] // b) * b, (mic.shape[1] // b) * b
    shown = mic[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3))
    lo, hi = _display_range(shown)
    ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi, extent=(0, w, h, 0))
    for i, (x, y) in enumerate(np.asarray(coords_xy, float)):
        color = "tab:orange" if i < n else "tab:cyan"
        ax.add_patch(Rectangle((x - box_px / 2, y - box_px / 2), box_px, box_px, fill=False, lw=0.8, color=color))
    ax.set_title(f"micrograph, {len(coords_xy)} picks (orange: shown)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    for i in range(n):
        for r, (stack, label) in enumerate(((extracted, "extracted"), (clean, "clean projection"))):
            if stack is None:
                continue
            a = fig.add_subplot(grid[r, 4 + i])
            img = np.asarray(stack[i], np.float32)
            lo, hi = _display_range(img)
            a.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, force)
