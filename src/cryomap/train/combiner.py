"""The last step of a halfmaps model: a per-shell combination of the network's map with the physics map.

The network is trained on crops, so its map is best at the frequencies a crop shows and weakest
at the lowest ones (whole-molecule envelope, wavelengths longer than the crop), where the half
maps are nearly noise-free. The final map combines, in every Fourier shell ``s``, the network's
map ``L`` with the FSC-weighted average of the two half maps ``P`` (RELION's filter:
``(h1 + h2)/2 × 2F/(1 + F)`` with ``F`` the half-map FSC of the shell, put on ``L``'s scale by a
least-squares fit over shells 1–3)::

    M(k) = w_L(s, F_s) · L(k) + w_P(s, F_s) · P(k)

The weights are the least-squares (linear minimum-mean-square-error) weights that best predict
the truth from ``L`` and ``P``, fitted on the **validation** molecules of the pair cache — never on
test molecules — separately for each shell and each of :data:`BINS` bins of the half-map FSC
(how reliable ``P`` is in that shell for these particles). Shells are matched by physical
frequency (1/Å), so a model grid of another size or voxel size reads the right weights. Where
``P`` is reliable (low shells, many particles) the weights lean on physics; where the half maps
disagree, on the network; and both are shrunk where neither predicts the truth well, which is
what maximises the correlation with the truth. The DC term is the network's.
"""

from __future__ import annotations

import numpy as np

#: Bins of the half-map FSC (0–1) the weights depend on.
BINS = 8
#: Fewest Fourier coefficients a (shell, bin) needs before its own weights are used.
MIN_COUNT = 200


def shell_index(n: int) -> np.ndarray:
    """Shell (rounded radius in Fourier voxels) of every coefficient of an ``n``³ rfft grid."""
    f = np.fft.fftfreq(n) * n
    fx = np.fft.rfftfreq(n) * n
    return np.rint(np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)).astype(np.int64)


def components(learned: np.ndarray, cond: np.ndarray) -> dict:
    """Spectra of the network's map and of the scaled FSC-weighted half-map average, with the half-map FSC per shell."""
    L = np.asarray(learned, np.float64)
    n = L.shape[0]
    sh = np.minimum(shell_index(n), n // 2 + 1)
    ns = n // 2 + 1
    F1, F2, FL = (np.fft.rfftn(np.asarray(x, np.float64)) for x in (cond[0], cond[1], L))

    def per_shell(w: np.ndarray) -> np.ndarray:
        return np.bincount(sh.ravel(), w.ravel(), ns + 1)[:ns]

    den = np.sqrt(per_shell(np.abs(F1) ** 2) * per_shell(np.abs(F2) ** 2))
    fsc = np.clip(per_shell((F1 * np.conj(F2)).real) / np.maximum(den, 1e-30), 0.0, 0.999)
    weight = np.append(2 * fsc / (1 + fsc), 0.0)
    P = 0.5 * (F1 + F2) * weight[sh]
    low = (sh >= 1) & (sh <= 3)
    scale = float((FL[low] * np.conj(P[low])).real.sum() / max(float((np.abs(P[low]) ** 2).sum()), 1e-30))
    return {"shell": sh, "n": n, "FL": FL, "P": scale * P, "fsc": fsc}


def _bins(fsc: np.ndarray) -> np.ndarray:
    return np.minimum((np.asarray(fsc) * BINS).astype(np.int64), BINS - 1)


def fit_combiner(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], box: int, apix: float) -> dict:
    """Least-squares weights from ``(learned, cond, truth)`` triples on a ``box``³ grid of ``apix`` Å/voxel."""
    ns = box // 2 + 1
    G = np.zeros((ns, BINS, 2, 2))
    b = np.zeros((ns, BINS, 2))
    count = np.zeros((ns, BINS))
    for learned, cond, truth in pairs:
        c = components(learned, cond)
        FT = np.fft.rfftn(np.asarray(truth, np.float64))
        fb = _bins(c["fsc"])
        for s in range(1, ns):
            m = c["shell"] == s
            X = np.stack([c["FL"][m], c["P"][m]])
            G[s, fb[s]] += (X @ X.conj().T).real
            b[s, fb[s]] += (X @ FT[m].conj()).real
            count[s, fb[s]] += m.sum()
    W = np.zeros((ns, BINS, 2))
    W[:, :, 0] = 1.0
    for s in range(1, ns):
        ok = [k for k in range(BINS) if count[s, k] >= MIN_COUNT]
        for k in ok:
            lam = 1e-3 * np.trace(G[s, k]) + 1e-12  # a ridge toward (1, 0): the network alone
            W[s, k] = np.linalg.solve(G[s, k] + lam * np.eye(2), b[s, k] + lam * np.array([1.0, 0.0]))
        for k in range(BINS):  # unpopulated bins borrow the nearest populated bin of the same shell
            if k not in ok and ok:
                W[s, k] = W[s, min(ok, key=lambda j: abs(j - k))]
    return {"bins": BINS, "freq_per_A": (np.arange(ns) / (box * apix)).tolist(),
            "w_learned": W[:, :, 0].round(5).tolist(), "w_physics": W[:, :, 1].round(5).tolist(),
            "count": count.astype(int).tolist(), "pairs": len(pairs)}


def apply_combiner(learned: np.ndarray, cond: np.ndarray, combiner: dict, apix: float) -> np.ndarray:
    """The combined map (see the module docstring) on the grid of ``learned`` (``apix`` Å/voxel)."""
    c = components(learned, cond)
    n, ns = c["n"], c["n"] // 2 + 1
    freq = np.asarray(combiner["freq_per_A"])
    wl, wp = np.asarray(combiner["w_learned"]), np.asarray(combiner["w_physics"])
    fb = _bins(c["fsc"])
    f_here = np.arange(ns) / (n * apix)
    x = np.clip(np.interp(f_here, freq, np.arange(len(freq))), 0, len(freq) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(freq) - 1)
    t = x - lo
    a = (1 - t) * wl[lo, fb] + t * wl[hi, fb]
    p = (1 - t) * wp[lo, fb] + t * wp[hi, fb]
    a[0], p[0] = 1.0, 0.0
    a, p = np.append(a, 0.0), np.append(p, 0.0)
    out = a[c["shell"]] * c["FL"] + p[c["shell"]] * c["P"]
    return np.fft.irfftn(out, s=learned.shape, axes=(0, 1, 2)).astype(np.float32)


def calibrate(model, pairs_dir, split: str = "val", max_pairs: int | None = None, progress=None,
              samples: int | None = None, steps: int | None = None, per_molecule: int | None = None) -> dict:
    """Fit the combiner of a halfmaps model on the ``split`` pairs of a pair cache (its validation molecules).

    A diffusion model is calibrated on the mean of ``samples`` samples of ``steps`` DDIM steps
    (its defaults when None). ``per_molecule`` keeps the first that many pairs of each molecule
    (every molecule still counts, at a fraction of the sampling time), ``max_pairs`` the first pairs.
    """
    from cryomap.datasets.pairs import PairCache
    from cryomap.train.predict import predict_from_condition

    cache = PairCache.load(pairs_dir)
    arrays, records = cache.arrays(split, ("cond", "label"))
    chosen, taken = [], {}
    for i, rec in enumerate(records):
        k = taken.get(rec["molecule"], 0)
        if per_molecule is None or k < per_molecule:
            chosen.append(i)
            taken[rec["molecule"]] = k + 1
    chosen = chosen if max_pairs is None else chosen[:max_pairs]
    triples = []
    for i in chosen:
        cond = arrays["cond"][i].astype(np.float32)
        learned, _ = predict_from_condition(model, cond, samples=samples, steps=steps, batch=samples or 1)
        triples.append((learned, cond, arrays["label"][i, 0].astype(np.float32)))
        if progress is not None:
            progress(1)
    apix = float(np.mean(cache.data["ranges"]["apix"]))
    comb = fit_combiner(triples, cache.box, apix)
    comb.update({"split": split, "molecules": sorted({records[i]["molecule"] for i in chosen}), "pairs": len(chosen)})
    return comb


def calibrate_run(run_dir, pairs_dir=None, split: str = "val", samples: int | None = None,
                  steps: int | None = None, per_molecule: int | None = None) -> dict:
    """Calibrate a finished halfmaps run (U-Net or diffusion) and store the weights in its ``model.json`` (``config.combiner``)."""
    import json
    from pathlib import Path

    from cryomap.io.atomic import atomic_path
    from cryomap.train.predict import load_model

    run = Path(run_dir)
    model = load_model(run)
    pairs_dir = pairs_dir or model.meta["pairs_dir"]
    comb = calibrate(model, pairs_dir, split, samples=samples, steps=steps, per_molecule=per_molecule)
    info = json.loads((run / "model.json").read_text())
    info["config"]["combiner"] = comb
    with atomic_path(run / "model.json", force=True) as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    return comb


def fill_beyond_model_nyquist(mapped: np.ndarray, half1: np.ndarray, half2: np.ndarray, apix: float,
                              model_apix: float) -> np.ndarray:
    """Particle-grid map whose shells beyond the model grid's Nyquist hold the FSC-weighted half maps.

    A model grid coarser than the particles' pixels (4 Å against, say, 3.2 Å/px) leaves the
    learned map empty beyond 1/(2 × model_apix); there the half maps still carry signal where
    their FSC says so. Their FSC-weighted average, on the learned map's scale (least squares over
    shells 1–3), fills exactly those shells; below, the learned map is untouched.
    """
    if apix >= model_apix * 0.999:
        return mapped
    n = mapped.shape[0]
    c = components(mapped, np.stack([half1, half2]))
    freq = np.arange(n // 2 + 2) / (n * apix)
    beyond = (freq > 1.0 / (2.0 * model_apix))[np.minimum(c["shell"], n // 2 + 1)]
    out = np.where(beyond, c["P"], c["FL"])
    return np.fft.irfftn(out, s=mapped.shape, axes=(0, 1, 2)).astype(np.float32)
