"""The diagnostic picture of one CTF fit (people check a CTF fit by looking).

Left: the background-subtracted power spectrum, centred (low frequencies in the middle), its
left half the data and its right half the fitted CTF², so the rings must continue across the
vertical midline; dashed circles mark the fit band. Right: the equiphase average of the spectrum
(astigmatic rings lined up) against frequency with the fitted envelope × CTF², and the fit-quality
curve (correlation over every two Thon rings) with the fitted resolution marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryomap.ctf_estimation.fit import QUALITY_THRESHOLD, CtfFit


def _full_centred(half: torch.Tensor) -> np.ndarray:
    """An rfft-layout array (T, T//2+1) → the full (T, T) array, fftshifted (DC at [T//2, T//2])."""
    h = half.numpy()
    t = h.shape[0]
    full = np.empty((t, t), dtype=np.float32)
    full[:, : h.shape[1]] = h
    # Hermitian symmetry of a power spectrum: P(-k) = P(k)
    cols = np.arange(h.shape[1], t)
    full[:, cols] = h[(-np.arange(t)) % t][:, t - cols]
    return np.fft.fftshift(full)


def write_diagnostic_png(path: str | Path, fit: CtfFit, title: str = "") -> Path:
    """Write the two-panel PNG for ``fit`` (which must carry diagnostics) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = fit.diagnostics
    if d is None:
        raise ValueError("the fit carries no diagnostics")
    t = d.spectrum.shape[0]
    data = _full_centred(d.spectrum)
    model = _full_centred(d.model)
    # show the frequencies up to a bit past the fit band
    s_show = min(0.5 / d.apix, d.band[1] * 1.15)
    r = int(min(t // 2, np.ceil(s_show * t * d.apix)))
    c = t // 2
    data = data[c - r:c + r, c - r:c + r]
    model = model[c - r:c + r, c - r:c + r]
    yy, xx = np.mgrid[-r:r, -r:r]
    rad = np.hypot(yy, xx) / (t * d.apix)
    inner = rad < d.band[0] * 0.9
    data = np.where(inner, np.nan, data)
    band = (rad >= d.band[0]) & (rad <= d.band[1])
    lo, hi = np.percentile(data[band], [2.0, 99.0]) if band.any() else (0.0, 1.0)
    shown = np.clip((np.nan_to_num(data) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    pic = np.where(xx < 0, shown, model)
    pic[inner & (xx < 0)] = 0.0

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 5.4), gridspec_kw={"width_ratios": [1, 1.35]})
    ext = [-r / (t * d.apix), r / (t * d.apix), r / (t * d.apix), -r / (t * d.apix)]
    ax0.imshow(pic, cmap="gray", extent=ext, interpolation="nearest")
    for s_ in d.band:
        ax0.add_patch(plt.Circle((0, 0), s_, fill=False, ls="--", lw=0.7, color="tab:orange"))
    ax0.axvline(0, color="tab:orange", lw=0.5)
    ax0.set_title("spectrum (left) | fitted CTF² (right)", fontsize=10)
    ax0.set_xlabel("spatial frequency x (1/Å)")
    ax0.set_ylabel("spatial frequency y (1/Å)")

    sel = d.s >= d.band[0] * 0.9
    s = d.s[sel]
    ax1.plot(s, d.epa[sel], color="0.35", lw=0.8, label="equiphase average of the spectrum")
    ax1.plot(s, d.epa_model[sel], color="tab:red", lw=0.9, label="fit: envelope × CTF²")
    lo_y = np.percentile(d.epa[sel], 0.5)
    hi_y = np.percentile(np.concatenate([d.epa[sel], d.epa_model[sel]]), 99.5)
    ax1.set_ylim(lo_y - 0.1 * (hi_y - lo_y), hi_y + 0.1 * (hi_y - lo_y))
    ax1.set_xlabel("spatial frequency (1/Å)")
    ax1.set_ylabel("spectrum / background − 1")
    ax1.axvspan(d.band[0], d.band[1], color="tab:orange", alpha=0.06, label="fit band")
    ax1.axvline(1.0 / fit.max_resolution, color="tab:green", ls=":", lw=1.0,
                label=f"rings fitted to {fit.max_resolution:.1f} Å")
    q_ax = ax1.twinx()
    if len(d.quality):
        q_ax.plot(d.quality_s, d.quality, color="tab:blue", lw=1.2, label="fit quality")
    q_ax.axhline(QUALITY_THRESHOLD, color="tab:blue", lw=0.5, ls="--")
    q_ax.set_ylim(-0.2, 1.05)
    q_ax.set_ylabel("fit quality (correlation over two rings)", color="tab:blue")
    top = ax1.secondary_xaxis("top", functions=(lambda f: f, lambda f: f))
    ticks = [x for x in (30, 20, 15, 10, 8, 6, 5, 4, 3.5, 3, 2.5, 2) if d.band[0] * 0.9 <= 1 / x <= s[-1]]
    top.set_xticks([1 / x for x in ticks])
    top.set_xticklabels([f"{x:g}" for x in ticks])
    top.set_xlabel("resolution (Å)")
    lines = ax1.get_legend_handles_labels()
    qlines = q_ax.get_legend_handles_labels()
    fig.legend(lines[0] + qlines[0], lines[1] + qlines[1], fontsize=8, loc="lower center", ncol=5, frameon=False)
    text = (f"U {fit.defocus_u:.0f} Å  V {fit.defocus_v:.0f} Å  angle {fit.angle:.1f}°"
            + (f"  phase {fit.phase_shift:.1f}°" if fit.phase_shift else "")
            + f"   FOM {fit.fom:.3f}   fitted to {fit.max_resolution:.1f} Å")
    if fit.warnings:
        text += "\n" + "; ".join(fit.warnings)
    fig.suptitle((title + "\n" if title else "") + text, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.93, bottom=0.17, top=0.80, wspace=0.22)  # fixed: tight_layout draws twice
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
