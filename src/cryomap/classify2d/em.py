"""Reference-free 2D classification: seeded start, soft EM with split-and-merge, full-box averages.

:func:`classify` runs on a :class:`~cryomap.particles.source.ParticleSource`, reading particles in
chunks on every pass (the prepared spectra are kept only when all of them fit in ``cache_mb``), so
memory stays flat in the number of particles beyond the per-particle assignments. The stages
(seeding, EM iterations with online mini-batches, split-and-merge moves, pose polishing and the
final full-box averages) are described in docs/classify2d.md; each iteration's statistics go to
:attr:`Classify2DResult.history`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from cryomap.classify2d.averages import FullBoxAverager
from cryomap.classify2d.engine import Accumulator, Aligner, Batch, References, one_hot_posterior, ring_power, working_box
from cryomap.core.fourier import resize_images
from cryomap.errors import BadInputError
from cryomap.particles.source import ParticleSource

CtfMode = Literal["wiener", "phase-flip", "none"]
InitMode = Literal["seeded", "random"]


@dataclass
class Classify2DParams:
    """Settings of :func:`classify` (units in the names)."""

    n_classes: int
    iterations: int = 20
    psi_step_deg: float = 6.0
    offset_range_px: float = 5.0  # px of the input box
    mask_diameter_A: float | None = None  # None → 90 % of the box
    ctf: CtfMode = "wiener"
    work_box: int | None = None  # px; None → min(box, 64)
    max_resolution_A: float | None = None  # band limit of the search; None → Nyquist of the working box
    tau2_fudge: float = 2.0
    init: InitMode = "seeded"
    anneal_iterations: int | None = None  # iterations over which β rises to 1; None → a third of them
    beta_start: float = 1.0  # 1: no annealing (the seeded start does not need it)
    batch_per_class: int = 200  # online EM: early iterations on ≤ this × K random particles
    full_iterations: int = 3  # the last iterations always use every particle
    chunk: int = 32
    cache_mb: float = 64.0  # keep the prepared spectra when all particles fit in this many MiB
    refine: bool | None = None  # polish poses at the full box; None → when the working box is smaller
    seed: int = 0
    threads: int | None = None

    def describe(self) -> dict:
        return asdict(self)


@dataclass
class Classify2DResult:
    """Class averages (unranked), per-particle assignments and run statistics."""

    averages: np.ndarray  # (K, D, D) full-box Wiener averages
    half_averages: np.ndarray  # (2, K, D, D)
    half_counts: np.ndarray  # (2, K)
    counts: np.ndarray  # (K,) particles per class (hard)
    classes: np.ndarray  # (N,) 0-based class
    psi_deg: np.ndarray  # (N,) RELION rlnAnglePsi
    origins_A: np.ndarray  # (N, 2) RELION rlnOriginX/YAngst
    max_prob: np.ndarray  # (N,)
    apix: float
    mask_diameter_A: float
    history: list[dict] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    seconds: float = 0.0


class _Data:
    """Prepared working-box particles, chunk by chunk, from the source.

    Particles are read, Fourier-cropped to the working box, masked and sampled on the polar grid
    (with their CTFs) on every pass; when all of them fit in ``cache_mb`` the prepared spectra are
    kept after the first pass instead (small data sets: tests, single micrographs).
    """

    def __init__(self, source: ParticleSource, box_w: int, ctf_mode: CtfMode, chunk: int, cache_mb: float) -> None:
        self.source = source
        self.box_w = box_w
        self.chunk = chunk
        self.ctf_mode = ctf_mode
        self.flipped = bool("rlnCtfDataArePhaseFlipped" in source.table
                            and (source.table["rlnCtfDataArePhaseFlipped"] == 1).all())
        self.cache_mb = float(cache_mb)
        self._cache: dict[str, torch.Tensor] | None = None
        self._cached: np.ndarray | None = None

    def working(self, rows: np.ndarray) -> np.ndarray:
        """Working-box images of ``rows`` (Fourier-cropped from the source)."""
        imgs = self.source.images(rows)
        return resize_images(imgs, self.box_w) if imgs.shape[-1] != self.box_w else imgs

    def _prepare(self, sel: np.ndarray, aligner: Aligner) -> Batch:
        ctf = self.source.ctf(sel) if self.ctf_mode == "wiener" else None
        return aligner.prepare(sel, self.working(sel), ctf, flipped=self.flipped)

    def batches(self, rows: np.ndarray, aligner: Aligner):
        """Prepared :class:`Batch` es for ``rows``, ``chunk`` at a time."""
        n = len(self.source)
        g = aligner.grid
        per = g.n_rho * g.n_theta * (8 + (4 if self.ctf_mode == "wiener" else 0)) + 4 * g.n_rho
        if self._cache is None and n * per <= self.cache_mb * 2**20:
            self._cache = {"x": torch.zeros((n, g.n_rho, g.n_theta), dtype=torch.complex64),
                           "power": torch.zeros((n, g.n_rho))}
            if self.ctf_mode == "wiener":
                self._cache["ctf"] = torch.zeros((n, g.n_rho, g.n_theta))
            self._cached = np.zeros(n, bool)
        for start in range(0, len(rows), self.chunk):
            sel = np.asarray(rows[start:start + self.chunk])
            if self._cache is None:
                yield self._prepare(sel, aligner)
                continue
            todo = sel[~self._cached[sel]]
            if len(todo):
                b = self._prepare(todo, aligner)
                idx = torch.as_tensor(todo)
                self._cache["x"][idx], self._cache["power"][idx] = b.x, b.power
                if b.ctf is not None:
                    self._cache["ctf"][idx] = b.ctf
                self._cached[todo] = True
            idx = torch.as_tensor(sel)
            c = self._cache.get("ctf")
            yield Batch(sel, self._cache["x"][idx], None if c is None else c[idx], self._cache["power"][idx])


def _check(source: ParticleSource, p: Classify2DParams) -> float:
    """Validate the request against the particles; return the mask diameter (Å)."""
    n, box = len(source), source.box
    if p.n_classes < 1:
        raise BadInputError(f"--classes must be at least 1, got {p.n_classes}", source.path)
    if p.n_classes > n:
        raise BadInputError(f"asks for {p.n_classes} classes but holds only {n} particles", source.path)
    if source.image_shape[0] != source.image_shape[1]:
        raise BadInputError(f"particles must be square, got {source.image_shape}", source.path)
    if p.iterations < 1:
        raise BadInputError(f"--iterations must be at least 1, got {p.iterations}", source.path)
    if not 0 < p.psi_step_deg <= 90:
        raise BadInputError(f"--psi-step must be in (0, 90] degrees, got {p.psi_step_deg}", source.path)
    if p.offset_range_px < 0:
        raise BadInputError(f"--offset-range must be ≥ 0 px, got {p.offset_range_px}", source.path)
    extent = box * source.pixel_size
    mask = 0.9 * extent if p.mask_diameter_A is None else float(p.mask_diameter_A)
    if mask <= 0:
        raise BadInputError(f"--mask-diameter must be positive, got {mask} Å", source.path)
    if mask > extent:
        raise BadInputError(f"a {mask:g} Å mask does not fit the {box} px box ({extent:g} Å at "
                            f"{source.pixel_size:g} Å/px); give a smaller --mask-diameter", source.path)
    if box < 16:
        raise BadInputError(f"a {box} px box is too small to classify (at least 16 px)", source.path)
    if p.ctf == "wiener":
        source.require_ctf("CTF-weighted class averages (--ctf wiener)")
    if p.ctf == "phase-flip":
        source.require_ctf("phase flipping (--ctf phase-flip)")
    return mask


def _beta(it: int, p: Classify2DParams) -> float:
    """Annealing: β rises geometrically from ``beta_start`` to 1 over ``anneal_iterations``."""
    n = p.anneal_iterations if p.anneal_iterations is not None else max(1, p.iterations // 3)
    if n <= 0 or it >= n:
        return 1.0
    return float(p.beta_start ** (1.0 - it / n))


def classify(source: ParticleSource, params: Classify2DParams,
             on_progress: Callable[[str, int, int], None] | None = None) -> Classify2DResult:
    """Classify ``source`` into ``params.n_classes`` 2D classes (see the module docstring)."""
    from cryomap.core.threads import torch_threads

    t0 = time.perf_counter()
    mask_A = _check(source, params)
    if params.ctf == "phase-flip":
        from cryomap.preprocess.ctf_correct import PhaseFlip

        source = source.map(PhaseFlip())
    with torch_threads(params.threads), torch.no_grad():
        res = _classify(source, params, mask_A, on_progress)
    res.seconds = time.perf_counter() - t0
    return res


def _make_aligner(source: ParticleSource, p: Classify2DParams, mask_A: float) -> Aligner:
    box = source.box
    bw = working_box(box, p.work_box)
    apix_w = source.pixel_size * box / bw
    r_max = bw / 2 - 1
    if p.max_resolution_A:
        r_max = min(r_max, bw * apix_w / p.max_resolution_A)
    n_psi = int(round(360.0 / p.psi_step_deg))
    return Aligner(bw, apix_w, r_max=r_max, n_psi=n_psi, offset_px=p.offset_range_px * bw / box,
                   mask_radius_px=mask_A / 2 / apix_w)


@dataclass
class _PassResult:
    """What one E+M pass over some rows returns."""

    acc: Accumulator
    sigma2: torch.Tensor  # noise per ring from the residuals at the best poses
    rows: np.ndarray
    k_idx: np.ndarray
    psi_idx: np.ndarray
    t_idx: np.ndarray
    max_prob: np.ndarray
    mean_ll: float
    features: np.ndarray | None = None  # aligned low-ring spectra (rows, F), when asked


def _em_pass(data: _Data, al: Aligner, rows: np.ndarray, refs: References, sigma2: torch.Tensor,
             log_pi: torch.Tensor, beta: float, *, feature_rings: int = 0, label: str = "",
             on_progress=None) -> _PassResult:
    """E-step and M-step sums over ``rows``; optionally the aligned spectra used for seeding."""
    g = al.grid
    k = refs.k
    acc = Accumulator(g, k)
    resid = torch.zeros(g.n_rho, dtype=torch.float64)
    n = len(rows)
    ki_all, ji_all, ti_all = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32)
    pmax_all = np.zeros(n, np.float32)
    feats = [] if feature_rings else None
    ll, pos = 0.0, 0
    for batch in data.batches(rows, al):
        e = al.expectation(batch, refs, sigma2, log_pi, beta)
        al.accumulate(acc, e.pm, e.wm, e.post)
        b = len(batch)
        ci, ki, ji, ti, pmax = e.map_pose()
        resid += al.residual_power(e, refs, sigma2, batch, ci, ki, ji).sum(0).to(torch.float64)
        sl = slice(pos, pos + b)
        ki_all[sl], ji_all[sl], ti_all[sl], pmax_all[sl] = ki.numpy(), ji.numpy(), ti.numpy(), pmax.numpy()
        if feats is not None:
            back = g.rotation_phases(torch.as_tensor(al.psi_deg)[ji]).conj()  # rotate back by ψ
            f = e.pm[torch.arange(b), ci][:, :feature_rings:2] * back[:, None, :]  # every other ring: 1 Fourier px
            feats.append(torch.cat([f.real, f.imag], -1).reshape(b, -1).numpy())
        ll += float(e.best.sum())
        pos += b
        if on_progress is not None:
            on_progress(label, b, n)
    sigma2_new = (resid / (n * g.n_theta)).to(torch.float32).clamp_min(1e-12)
    return _PassResult(acc, sigma2_new, rows, ki_all, ji_all, ti_all, pmax_all, ll / max(n, 1),
                       None if feats is None else np.concatenate(feats))


def _one_hot_pass(data: _Data, al: Aligner, rows: np.ndarray, k: int, k_idx: np.ndarray, psi_idx: np.ndarray,
                  t_idx: np.ndarray, sigma2: torch.Tensor) -> Accumulator:
    """M-step sums with every particle at one given pose (class, rotation index, translation index)."""
    acc = Accumulator(al.grid, k)
    M = al.grid.n_psi
    pos = 0
    for batch in data.batches(rows, al):
        b = len(batch)
        sl = slice(pos, pos + b)
        post = one_hot_posterior(b, 1, k, M, torch.as_tensor(k_idx[sl]).long(), torch.as_tensor(psi_idx[sl]).long())
        pm, wm = al.spectra(batch, sigma2, torch.as_tensor(t_idx[sl]).long())
        al.accumulate(acc, pm, wm, post)
        pos += b
    return acc


def _classify(source: ParticleSource, p: Classify2DParams, mask_A: float, on_progress) -> Classify2DResult:
    rng = np.random.default_rng(p.seed)
    torch.manual_seed(p.seed)
    n, k = len(source), p.n_classes
    al = _make_aligner(source, p, mask_A)
    g = al.grid
    data = _Data(source, al.box, p.ctf, p.chunk, p.cache_mb)
    all_rows = np.arange(n)
    history: list[dict] = []

    sigma2, refs = _random_start(data, al, all_rows, k, rng)
    if p.init == "seeded":
        sigma2, refs = _seeded_start(data, al, p, sigma2, rng, history, on_progress)
    log_pi = torch.full((k,), -math.log(k))
    cls = np.full(n, -1, np.int32)
    psi_idx = np.zeros(n, np.int32)
    t_idx = np.zeros(n, np.int32)
    maxp = np.zeros(n, np.float32)
    trial: tuple[References, torch.Tensor, dict] | None = None  # a split-merge move to test
    rejected: set[tuple[int, int]] = set()
    rejections_in_a_row = 0
    for it in range(p.iterations):
        beta = _beta(it, p)
        full = it >= p.iterations - p.full_iterations or p.batch_per_class * k >= n
        rows = all_rows if full else np.sort(rng.choice(n, size=p.batch_per_class * k, replace=False))
        label = f"iteration {it + 1}/{p.iterations}"
        t_it = time.perf_counter()
        res = None
        if trial is not None:  # a split-and-merge move proposed last iteration: keep it if the data prefer it
            t_refs, t_log_pi, move = trial
            rows_t = rows if len(rows) <= TRIAL_PARTICLES else np.sort(rng.choice(rows, TRIAL_PARTICLES, replace=False))
            base = _em_pass(data, al, rows_t, refs, sigma2, log_pi, beta, label=label + " (split-merge test)",
                            on_progress=on_progress)
            tried = _em_pass(data, al, rows_t, t_refs, sigma2, t_log_pi, beta, label=label + " (split-merge trial)",
                             on_progress=on_progress)
            move["accepted"] = bool(tried.mean_ll > base.mean_ll)
            move["mean_log_likelihood"] = [round(base.mean_ll, 3), round(tried.mean_ll, 3)]
            history.append(move)
            if move["accepted"]:
                refs, log_pi = t_refs, t_log_pi
                rejections_in_a_row = 0
            else:
                rejected.add(tuple(move["merge"]))
                rejections_in_a_row += 1
            if len(rows_t) == len(rows):
                res = tried if move["accepted"] else base
            trial = None
        if res is None:
            res = _em_pass(data, al, rows, refs, sigma2, log_pi, beta, label=label, on_progress=on_progress)
        changed = int((cls[rows] != res.k_idx).sum())
        cls[rows], psi_idx[rows], t_idx[rows], maxp[rows] = res.k_idx, res.psi_idx, res.t_idx, res.max_prob
        sigma2 = res.sigma2
        frac = res.acc.counts / res.acc.counts.sum()
        log_pi = torch.log(frac.clamp_min(1e-6)).to(torch.float32)
        refs = _solve(res.acc, al, refs, p)
        history.append({"stage": "em", "iteration": it + 1, "beta": round(beta, 4), "particles": len(rows),
                        "seconds": round(time.perf_counter() - t_it, 3),
                        "changed": changed, "mean_log_likelihood": round(res.mean_ll, 3),
                        "class_fractions": [round(float(f), 4) for f in frac]})
        late = it >= p.iterations - p.full_iterations - 1
        if k > 1 and not late:
            refs, log_pi, forced = _split_into_tiny(data, al, p, refs, res, sigma2, log_pi, history)
            if not forced and k > 2 and rejections_in_a_row < MAX_REJECTIONS:
                trial = _propose_split_merge(data, al, p, refs, res, sigma2, log_pi, rejected)
    # -- final averages at the full box, from each particle's best pose (polished locally first)
    scale = source.box / al.box
    psi_e = g.psi_degrees()[psi_idx].astype(np.float64)
    t_full = al.shifts.numpy()[t_idx].astype(np.float64) * scale
    half = rng.permutation(n) % 2
    use_ctf = p.ctf == "wiener"
    refine = p.refine if p.refine is not None else scale > 1.0
    if refine:
        first = FullBoxAverager(source, k, mask_A, use_ctf=use_ctf)
        first.add(all_rows, cls, psi_e, t_full, half, on_progress=_stage(on_progress, "full-box averages", n))
        full0, _ = first.solve(p.tau2_fudge)
        psi_e, t_full = first.refine(all_rows, cls, psi_e, t_full, full0, shift_step_px=scale / 3,
                                     psi_step_deg=360.0 / g.n_psi / 3,
                                     on_progress=_stage(on_progress, "polishing poses", n))
    final = FullBoxAverager(source, k, mask_A, use_ctf=use_ctf)
    final.add(all_rows, cls, psi_e, t_full, half, on_progress=_stage(on_progress, "final averages", n))
    averages, halves = final.solve(p.tau2_fudge)
    return Classify2DResult(
        averages=averages, half_averages=halves, half_counts=final.counts.copy(),
        counts=np.bincount(cls, minlength=k), classes=cls, psi_deg=_wrap(-psi_e),
        origins_A=-t_full * source.pixel_size, max_prob=maxp, apix=source.pixel_size,
        mask_diameter_A=mask_A, history=history, params=p.describe())


def _wrap(deg: np.ndarray) -> np.ndarray:
    """Angles in [−180, 180) degrees."""
    return (np.asarray(deg, np.float64) + 180.0) % 360.0 - 180.0


def _stage(on_progress, label: str, total: int):
    if on_progress is None:
        return None
    return lambda done: on_progress(label, done, total)


def _solve(acc: Accumulator, al: Aligner, refs: References, p: Classify2DParams) -> References:
    """New references from the sums: Wiener with τ² from the previous averages' ring power."""
    tau2 = ring_power(al.grid.to_polar(refs.images)) * p.tau2_fudge
    inv_tau2 = 1.0 / tau2.clamp_min(1e-12)
    polar = acc.solve(inv_tau2)
    empty = acc.counts < 1e-3
    images = al.grid.to_image(polar)
    if bool(empty.any()):  # keep the old average of a class no particle chose
        images[empty] = refs.images[empty]
    return al.references(images)


def _random_start(data: _Data, al: Aligner, rows: np.ndarray, k: int, rng: np.random.Generator):
    """Noise spectrum from the particles' power; classes from equal random shares at random rotations."""
    g = al.grid
    n = len(rows)
    member = rng.permutation(n) % k
    psi0 = rng.integers(0, g.n_psi, n)
    power = torch.zeros(g.n_rho, dtype=torch.float64)
    for batch in data.batches(rows, al):
        power += batch.power.sum(0).to(torch.float64)
    sigma2 = (power / (n * g.n_theta)).to(torch.float32)
    acc = _one_hot_pass(data, al, rows, k, member, psi0, np.zeros(n, np.int64), sigma2)
    polar = acc.solve(1e-3 * acc.ctf_weight().mean())
    return sigma2, al.references(g.to_image(polar))


#: Seeding: particles aligned to one class for this many iterations before clustering.
SEED_ALIGN_ITERATIONS = 4
#: Seeding: EM iterations over the 2·K candidates before they are pruned to K.
SEED_COMPETE_ITERATIONS = 2
#: Seeding: candidates left with less than this share of an average class (N/K) are pruned first.
SEED_TINY = 0.2
#: Seeding: at most this many particles per class (and at least 2,000 in all) are clustered.
SEED_PER_CLASS = 100


def _seeded_start(data: _Data, al: Aligner, p: Classify2DParams, sigma2: torch.Tensor, rng: np.random.Generator,
                  history: list[dict], on_progress) -> tuple[torch.Tensor, References]:
    """Starting classes that do not stall: align to one class, cluster the aligned particles, prune twins.

    1. A random subset (≤ max(2000, 100·K) particles) is aligned to a single class for a few
       iterations: every particle gets a rotation and shift relative to one common average.
    2. The aligned low-frequency spectra (rings up to 70 % of the search band) are reduced by PCA
       and clustered by k-means into 2·K groups; each group's aligned average is a candidate.
       Over-clustering catches views that aligned to the common average in two different ways.
    3. Candidates that are the same image up to rotation and shift are pruned, the smaller of the
       most similar pair first, until K remain.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    n, k = len(data.source), p.n_classes
    g = al.grid
    n_sub = min(n, max(2000, SEED_PER_CLASS * k))
    rows = np.sort(rng.choice(n, size=n_sub, replace=False))
    _, refs = _random_start(data, al, rows, 1, rng)
    zero = torch.zeros(1)
    feature_rings = max(2, int(0.7 * g.n_rho))
    for it in range(SEED_ALIGN_ITERATIONS):
        last = it == SEED_ALIGN_ITERATIONS - 1
        res = _em_pass(data, al, rows, refs, sigma2, zero, 1.0, feature_rings=feature_rings if last else 0,
                       label=f"seeding: alignment {it + 1}/{SEED_ALIGN_ITERATIONS}", on_progress=on_progress)
        sigma2 = res.sigma2
        refs = _solve(res.acc, al, refs, p)
        history.append({"stage": "seed-align", "iteration": it + 1, "particles": n_sub,
                        "mean_log_likelihood": round(res.mean_ll, 3)})
    n_cand = min(2 * k, n_sub)
    if k == 1:
        return sigma2, refs
    feats = res.features
    q = int(min(20, feats.shape[1], n_sub - 1))
    z = PCA(q, random_state=p.seed).fit_transform(feats)
    labels = KMeans(n_cand, n_init=4, random_state=p.seed).fit_predict(z)
    acc = _one_hot_pass(data, al, rows, n_cand, labels, res.psi_idx, res.t_idx, sigma2)
    polar = acc.solve(1e-3 * acc.ctf_weight().mean())
    cand = al.references(g.to_image(polar))
    sizes = np.bincount(labels, minlength=n_cand)
    history.append({"stage": "seed-cluster", "candidates": n_cand, "sizes": [int(c) for c in sizes]})
    # let the candidates compete: members of blurry mixed groups move to the pure groups' averages
    log_pi = torch.full((n_cand,), -math.log(n_cand))
    for it in range(SEED_COMPETE_ITERATIONS):
        res = _em_pass(data, al, rows, cand, sigma2, log_pi, 1.0, label=f"seeding: candidates {it + 1}/"
                       f"{SEED_COMPETE_ITERATIONS}", on_progress=on_progress)
        sigma2 = res.sigma2
        cand = _solve(res.acc, al, cand, p)
        sizes = np.bincount(res.k_idx, minlength=n_cand)
    keep = _prune_twins(al, cand, sizes, k, tiny=SEED_TINY * n_sub / k)
    history.append({"stage": "seed-prune", "sizes": [int(c) for c in sizes], "kept": [int(i) for i in keep]})
    return sigma2, al.references(cand.images[torch.as_tensor(keep)])


#: Split-merge moves stop being proposed after this many rejections in a row.
MAX_REJECTIONS = 3
#: Split-merge moves are tested on at most this many particles of the iteration.
TRIAL_PARTICLES = 1000
#: A class holding less than this share of an average class is refilled by splitting the largest one.
TINY_CLASS = 0.1


def _split_into_tiny(data: _Data, al: Aligner, p: Classify2DParams, refs: References, res: _PassResult,
                     sigma2: torch.Tensor, log_pi: torch.Tensor, history: list[dict]):
    """Refill nearly empty classes by splitting the largest class in two along its main variation.

    A class that EM left with < ``TINY_CLASS`` of an average share usually means another class
    holds two views. That class's members are re-aligned to it, their aligned low-frequency spectra
    clustered in two (PCA + k-means), and the two halves' averages replace the large and the tiny class.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    k = refs.k
    images = refs.images.clone()
    log_pi = log_pi.clone()
    labels = res.k_idx.copy()
    counts = np.bincount(labels, minlength=k)
    tiny = [int(c) for c in np.argsort(counts) if counts[c] < TINY_CLASS * len(res.rows) / k]
    for c in tiny:
        big = int(np.argmax(counts))
        members = res.rows[labels == big]
        if len(members) < 10:
            break
        one = al.references(images[big:big + 1])
        fr = max(2, int(0.7 * al.grid.n_rho))
        sub = _em_pass(data, al, members, one, sigma2, torch.zeros(1), 1.0, feature_rings=fr)
        z = PCA(int(min(10, len(members) - 1)), random_state=p.seed).fit_transform(sub.features)
        halves = KMeans(2, n_init=4, random_state=p.seed).fit_predict(z)
        acc = _one_hot_pass(data, al, members, 2, halves, sub.psi_idx, sub.t_idx, sigma2)
        two = al.grid.to_image(acc.solve(1e-3 * acc.ctf_weight().mean()))
        images[big], images[c] = two[0], two[1]
        labels[labels == c] = -1  # the tiny class's old members are unassigned until the next E-step
        labels[np.flatnonzero(labels == big)[halves == 1]] = c
        n0, n1 = int((halves == 0).sum()), int((halves == 1).sum())
        counts[big], counts[c] = n0, n1
        log_pi[big] = log_pi[c] = float(np.log(max(counts[big] + counts[c], 1) / 2 / len(res.rows)))
        history.append({"stage": "split", "class": big, "into": c, "sizes": [n0, n1]})
    if not tiny:
        return refs, log_pi, False
    return al.references(images), log_pi, True


def _split_class(data: _Data, al: Aligner, p: Classify2DParams, image: torch.Tensor, members: np.ndarray,
                 sigma2: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Two averages (2, box, box) from one class's members, split along their main variation; and the halves' labels."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    one = al.references(image[None])
    fr = max(2, int(0.7 * al.grid.n_rho))
    sub = _em_pass(data, al, members, one, sigma2, torch.zeros(1), 1.0, feature_rings=fr)
    z = PCA(int(min(10, len(members) - 1)), random_state=p.seed).fit_transform(sub.features)
    halves = KMeans(2, n_init=4, random_state=p.seed).fit_predict(z)
    acc = _one_hot_pass(data, al, members, 2, halves, sub.psi_idx, sub.t_idx, sigma2)
    return al.grid.to_image(acc.solve(1e-3 * acc.ctf_weight().mean())), halves


def _propose_split_merge(data: _Data, al: Aligner, p: Classify2DParams, refs: References, res: _PassResult,
                         sigma2: torch.Tensor, log_pi: torch.Tensor, rejected: set) -> tuple | None:
    """A split-and-merge move (Ueda et al. 2000): merge the two most similar classes, split the largest other one.

    EM cannot undo one view spread over two classes while two views share another; the move
    does, and the next iteration keeps it only if it raises the mean log-likelihood.
    """
    k = refs.k
    counts = np.bincount(res.k_idx, minlength=k)
    cc = aligned_similarity(al, refs.images, rings=max(2, int(0.4 * al.grid.n_rho)))
    np.fill_diagonal(cc, -np.inf)
    pairs = sorted(((cc[i, j], i, j) for i in range(k) for j in range(i + 1, k)), reverse=True)
    for _, a, b in pairs:
        if (a, b) in rejected:
            continue
        for c in np.argsort(-counts):
            c = int(c)
            if c in (a, b) or counts[c] < 20:
                continue
            keep, free = (a, b) if counts[a] >= counts[b] else (b, a)
            two, halves = _split_class(data, al, p, refs.images[c], res.rows[res.k_idx == c], sigma2)
            images = refs.images.clone()
            images[c], images[free] = two[0], two[1]
            pi = torch.exp(log_pi.to(torch.float64))
            new_pi = pi.clone()
            new_pi[keep] = pi[a] + pi[b]
            new_pi[c] = new_pi[free] = pi[c] / 2
            move = {"stage": "split-merge", "merge": [a, b], "split": c,
                    "split_sizes": [int((halves == 0).sum()), int((halves == 1).sum())]}
            return al.references(images), torch.log(new_pi.clamp_min(1e-6)).to(torch.float32), move
    return None


def _prune_twins(al: Aligner, refs: References, sizes: np.ndarray, k: int, tiny: float = 0.0) -> list[int]:
    """Indices of ``k`` references left after dropping, one at a time, the smallest reference while
    it holds fewer than ``tiny`` particles, then the smaller of the most similar pair.

    Similarity: the normalised cross-correlation of two references at their best relative rotation
    and shift (the aligner's search, no CTF, white noise).
    """
    cc = aligned_similarity(al, refs.images, rings=max(2, int(0.4 * al.grid.n_rho)))
    alive = list(range(refs.k))
    while len(alive) > k:
        small = min(alive, key=lambda i: sizes[i])
        if sizes[small] < tiny:
            alive.remove(small)
            continue
        sub = cc[np.ix_(alive, alive)].copy()
        np.fill_diagonal(sub, -np.inf)
        i, j = np.unravel_index(np.argmax(sub), sub.shape)
        a, b = alive[i], alive[j]
        alive.remove(a if sizes[a] < sizes[b] else b)
    return alive


def aligned_similarity(al: Aligner, images: torch.Tensor, rings: int | None = None, chunk: int = 8) -> np.ndarray:
    """(K, K) normalised cross-correlation of images at their best relative in-plane rotation and shift.

    ``rings`` limits the comparison to the lowest rings (a low-pass: noisy averages of one view
    then look alike). Images are compared ``chunk`` at a time against all of them.
    """
    refs = al.references(images)
    k = refs.k
    r = al.grid.n_rho if rings is None else int(rings)
    ones = torch.ones(al.grid.n_rho)
    aq = (refs.am[:, :r] * al.scale[None, :r, None]).permute(2, 1, 0)  # (m, r, K)
    best = np.zeros((k, k))
    for start in range(0, k, chunk):
        sel = np.arange(start, min(k, start + chunk))
        batch = al.prepare(sel, images[sel].numpy())
        y, _ = al._weighted(batch, ones)  # white weights: score = <x, R A>
        pm = al.spectra_at(y, torch.arange(len(al.shifts))[None].expand(len(sel), -1), r)
        b, t, _, m = pm.shape
        s = torch.matmul(pm.conj().permute(3, 0, 1, 2).reshape(m, b * t, r), aq)
        score = torch.fft.fft(s.permute(1, 2, 0), dim=-1).real.reshape(b, t, k, m)
        best[sel] = score.amax(dim=(1, 3)).numpy()
    norms = np.sqrt(np.clip(np.diag(best), 1e-30, None))
    return best / norms[:, None] / norms[None, :]
