"""Seeded procedural protein-like pseudo-molecules: a training corpus that grows without limit.

Each molecule is built from secondary structure up, in Å:

1. **Domains** (60–260 residues) of one of three folds: an α bundle (helices on a hexagonal
   lattice, 10 Å apart, alternating direction), an α/β sandwich (a twisted β-sheet, strands
   4.8 Å apart, with a layer of helices 10 Å above and below it) or a β sandwich (two sheets
   10 Å apart). Helix Cα atoms follow the α-helix (1.5 Å rise, 100° per residue, radius
   2.3 Å), strand Cα atoms a pleated line (3.3 Å per residue); consecutive elements are joined
   by loops that bulge away from the domain centre with 3.8 Å Cα–Cα steps.
2. **Excluded volume**: a few relaxation sweeps push non-bonded Cα atoms closer than 4 Å apart;
   domains and subunits are placed by bisection on their distance so that they touch (closest
   Cα pair 4.5–6 Å) without interpenetrating.
3. **Assemblies**: a subunit of 1–3 domains, alone or repeated by cyclic C\\ :sub:`n`
   (n = 2–8) or dihedral D\\ :sub:`n` (n = 2–4) symmetry, sized so the whole weighs a target
   mass drawn log-uniformly from 50–1,000 kDa.
4. **Atoms**: every residue gets its backbone N, CA, C, O and, except glycines, a CB and 0–6
   side-chain atoms (C, N, O, S) pointing away from the backbone — 7.8 heavy atoms and ~110 Da
   per residue on average (real proteins: 7.8 and ~110 Da), so gemmi's electron density calculator
   (:mod:`cryomap.simulate.structure_map`) gives protein-like density at 3–10 Å.

:func:`procedural_structure` returns a ``gemmi.Structure`` determined by ``(seed, index)`` alone;
:func:`write_procedural` writes N of them as mmCIF (``P<seed>_<index>.cif.gz``), which every
cryomap tool reads like a PDB entry. The geometry is coarse on purpose (no side-chain rotamers,
no hydrogen-bond network): what a 3–10 Å map shows of a protein — rods, slabs, compact domains,
solvent channels, symmetric rings — is what it reproduces.
"""

from __future__ import annotations

import gzip
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

#: Average mass of a residue (Da) with the atoms written here.
RESIDUE_DA = 103.0
#: Cα–Cα distance (Å) along the chain.
CA_STEP = 3.8
#: Closest allowed non-bonded Cα pair (Å) after relaxation.
MIN_CA_DIST = 4.0
#: Largest molecule diameter (Å) drawn unless the caller asks otherwise.
DEFAULT_MAX_DIAMETER = 180.0

_RESIDUES_BY_SIDECHAIN = {  # side-chain atoms beyond CB → plausible residue names
    -1: ["GLY"], 0: ["ALA"], 1: ["SER", "CYS"], 2: ["VAL", "THR", "ASP", "ASN", "PRO"],
    3: ["LEU", "ILE", "GLU", "GLN", "MET"], 4: ["LYS", "HIS"], 5: ["ARG", "PHE"], 6: ["TYR", "TRP"],
}


@dataclass
class MoleculeInfo:
    """What was drawn for one procedural molecule (recorded next to it)."""

    name: str
    seed: int
    index: int
    symmetry: str
    copies: int
    domains_per_subunit: int
    folds: list[str] = field(default_factory=list)
    residues: int = 0
    atoms: int = 0
    mass_kDa: float = 0.0
    target_mass_kDa: float = 0.0
    diameter_A: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def molecule_name(seed: int, index: int) -> str:
    """The name of procedural molecule ``index`` of ``seed``: ``P<seed>_<index:04d>``."""
    return f"P{int(seed)}_{int(index):04d}"


# --- geometry helpers --------------------------------------------------------------------------

def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 1e-9, n, 1.0)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians about ``axis`` (Rodrigues)."""
    a = _unit(np.asarray(axis, float))
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _perpendiculars(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = _unit(axis)
    ref = np.array([1.0, 0, 0]) if abs(a[0]) < 0.9 else np.array([0, 1.0, 0])
    u = _unit(np.cross(a, ref))
    return u, np.cross(a, u)


def helix_trace(start: np.ndarray, axis: np.ndarray, n: int, phase: float = 0.0) -> np.ndarray:
    """Cα positions (n, 3) of an α-helix from ``start`` along ``axis``: rise 1.5 Å, 100°/residue, radius 2.3 Å."""
    u, v = _perpendiculars(axis)
    i = np.arange(n)
    ang = phase + np.deg2rad(100.0) * i
    return start + 1.5 * i[:, None] * _unit(axis) + 2.3 * (np.cos(ang)[:, None] * u + np.sin(ang)[:, None] * v)


def strand_trace(start: np.ndarray, axis: np.ndarray, normal: np.ndarray, n: int) -> np.ndarray:
    """Cα positions (n, 3) of a β-strand: 3.3 Å per residue along ``axis``, ±0.9 Å pleat along ``normal``."""
    i = np.arange(n)
    pleat = 0.9 * np.where(i % 2 == 0, 1.0, -1.0)
    return start + 3.3 * i[:, None] * _unit(axis) + pleat[:, None] * _unit(normal)


def loop_trace(a: np.ndarray, b: np.ndarray, centre: np.ndarray, rng: np.random.Generator,
               extra: int | None = None) -> np.ndarray:
    """Cα positions strictly between ``a`` and ``b`` on a curve bulging away from ``centre`` (≈ 3.8 Å steps)."""
    d = float(np.linalg.norm(b - a))
    k = int(np.ceil(d / CA_STEP)) + (int(rng.integers(1, 5)) if extra is None else int(extra))
    mid = 0.5 * (a + b)
    out = _unit(mid - centre)
    # the bulge makes the arc about k steps long (a parabola's length ≈ chord + 8h²/3c)
    need = max(k * CA_STEP, d + 1.0)
    h = np.sqrt(max(0.0, (need - d) * 3.0 * max(d, 1.0) / 8.0))
    ctrl = mid + out * h * 2.0 + rng.normal(0, 1.0, 3)
    t = np.linspace(0, 1, 400)
    curve = ((1 - t) ** 2)[:, None] * a + (2 * (1 - t) * t)[:, None] * ctrl + (t**2)[:, None] * b
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    k = max(2, int(round(s[-1] / CA_STEP)))  # steps of the arc actually drawn
    targets = np.linspace(0, s[-1], k + 1)[1:-1]
    idx = np.clip(np.searchsorted(s, targets), 1, len(s) - 1)
    f = (targets - s[idx - 1]) / np.maximum(s[idx] - s[idx - 1], 1e-9)
    return curve[idx - 1] + f[:, None] * (curve[idx] - curve[idx - 1])


def relax(ca: np.ndarray, iterations: int = 30, min_dist: float = MIN_CA_DIST,
          breaks: np.ndarray | None = None) -> np.ndarray:
    """Excluded volume: push non-bonded Cα pairs (|i − j| > 2) closer than ``min_dist`` apart while
    springs hold consecutive Cα atoms at 3.8 Å (``breaks[i]`` True where a new chain starts)."""
    from scipy.spatial import cKDTree

    ca = np.array(ca, dtype=np.float64)
    bonded = np.ones(max(0, len(ca) - 1), bool) if breaks is None else ~np.asarray(breaks, bool)[1:]
    for _ in range(iterations):
        delta = np.zeros_like(ca)
        pairs = cKDTree(ca).query_pairs(min_dist, output_type="ndarray")
        clashes = 0
        if len(pairs):
            pairs = pairs[np.abs(pairs[:, 0] - pairs[:, 1]) > 2]
            clashes = len(pairs)
            if clashes:
                d = ca[pairs[:, 1]] - ca[pairs[:, 0]]
                dist = np.linalg.norm(d, axis=1, keepdims=True)
                push = 0.5 * (min_dist - dist) * _unit(d + 1e-6)
                np.add.at(delta, pairs[:, 0], -push)
                np.add.at(delta, pairs[:, 1], push)
        step = ca[1:] - ca[:-1]
        length = np.linalg.norm(step, axis=1, keepdims=True)
        pull = 0.5 * (length - CA_STEP) * _unit(step) * bonded[:, None]
        if not clashes and np.abs(length[bonded] - CA_STEP).max(initial=0.0) < 0.1:
            break
        delta[:-1] += pull
        delta[1:] -= pull
        ca += 0.8 * delta
    return ca


# --- domains -----------------------------------------------------------------------------------

@dataclass
class _Element:
    kind: str  # "H" helix or "E" strand
    trace: np.ndarray  # (n, 3) Cα


def _hex_lattice(n: int, spacing: float) -> np.ndarray:
    """The ``n`` points of a hexagonal 2D lattice nearest the origin, in spiral (nearest-first) order."""
    r = int(np.ceil(np.sqrt(n))) + 2
    pts = []
    for i in range(-r, r + 1):
        for j in range(-r, r + 1):
            pts.append((spacing * (i + 0.5 * j), spacing * (np.sqrt(3) / 2) * j))
    pts = np.asarray(pts)
    ang = np.arctan2(pts[:, 1], pts[:, 0])
    order = np.lexsort((ang, np.round(np.hypot(pts[:, 0], pts[:, 1]), 1)))
    return pts[order[:n]]


def _path_order(points: np.ndarray) -> np.ndarray:
    """A nearest-neighbour walk through 2D points starting at the first (so consecutive elements touch)."""
    left = list(range(1, len(points)))
    order = [0]
    while left:
        last = points[order[-1]]
        k = int(np.argmin([np.sum((points[j] - last) ** 2) for j in left]))
        order.append(left.pop(k))
    return np.asarray(order)


def _helix_layer(n_helices: int, length: tuple[int, int], z0: float, rng: np.random.Generator,
                 spacing: float = 10.0, lattice: np.ndarray | None = None) -> list[_Element]:
    """Helices along ±y at lattice points of the x–z plane (offset ``z0``), alternating direction."""
    pts = _hex_lattice(n_helices, spacing) if lattice is None else lattice
    order = _path_order(pts)
    out = []
    for k, i in enumerate(order):
        n = int(rng.integers(length[0], length[1] + 1))
        axis = np.array([0.0, 1.0 if k % 2 == 0 else -1.0, 0.0])
        tilt = _axis_rotation(rng.normal(size=3), np.deg2rad(rng.normal(0, 10)))
        axis = tilt @ axis
        centre = np.array([pts[i, 0], 0.0, pts[i, 1] + z0]) + rng.normal(0, 0.8, 3)
        start = centre - 0.5 * 1.5 * (n - 1) * axis
        out.append(_Element("H", helix_trace(start, axis, n, rng.uniform(0, 2 * np.pi))))
    return out


def _sheet(n_strands: int, length: tuple[int, int], z0: float, rng: np.random.Generator,
           twist_deg: float = -15.0) -> list[_Element]:
    """A twisted sheet in the x–y plane at height ``z0``: strands along ±y, 4.8 Å apart along x."""
    out = []
    x0 = -0.5 * 4.8 * (n_strands - 1)
    for k in range(n_strands):
        n = int(rng.integers(length[0], length[1] + 1))
        rot = _axis_rotation(np.array([1.0, 0, 0]), 0.0) @ _axis_rotation(np.array([0, 0, 1.0]),
                                                                            np.deg2rad(twist_deg * k / max(1, n_strands - 1) - twist_deg / 2))
        axis = rot @ np.array([0.0, 1.0 if k % 2 == 0 else -1.0, 0.0])
        centre = np.array([x0 + 4.8 * k, rng.normal(0, 1.5), z0 + 0.15 * (x0 + 4.8 * k) ** 2 / 10.0])
        start = centre - 0.5 * 3.3 * (n - 1) * axis
        out.append(_Element("E", strand_trace(start, axis, np.array([0, 0, 1.0]), n)))
    return out


def _domain_elements(n_res: int, fold: str, rng: np.random.Generator) -> list[_Element]:
    """Secondary-structure elements of a domain of about ``n_res`` residues (≈ 65 % in elements)."""
    in_sse = 0.65 * n_res
    if fold == "alpha":
        hl = (10, 22)
        n_h = max(2, int(round(in_sse / np.mean(hl))))
        return _helix_layer(n_h, hl, 0.0, rng)
    if fold == "beta":
        sl = (5, 10)
        n_s = max(4, int(round(in_sse / np.mean(sl))))
        a = n_s // 2
        return _sheet(a, sl, -5.0, rng) + _sheet(n_s - a, sl, 5.0, rng)
    # alpha/beta: a central sheet, helices packed above and below
    sl, hl = (5, 9), (10, 18)
    n_s = max(3, int(round(0.4 * in_sse / np.mean(sl))))
    n_h = max(2, int(round(0.6 * in_sse / np.mean(hl))))
    width = 4.8 * n_s
    per_side = [n_h // 2 + n_h % 2, n_h // 2]
    elems = _sheet(n_s, sl, 0.0, rng)
    for side, count in zip((1.0, -1.0), per_side):
        if count:
            xs = np.linspace(-0.5 * width + 4, 0.5 * width - 4, count) if count > 1 else np.array([0.0])
            lattice = np.stack([xs, np.zeros(count)], 1)
            for e in _helix_layer(count, hl, 0.0, rng, lattice=lattice):
                e.trace = e.trace + np.array([0.0, 0.0, side * 10.0])
                elems.append(e)
    return elems


def build_domain(n_res: int, fold: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One domain: Cα trace (n, 3) centred at the origin and its per-residue kind ('H', 'E', 'L')."""
    elems = _domain_elements(n_res, fold, rng)
    # order elements along a short path through their centres so loops stay short
    centres = np.array([e.trace.mean(0) for e in elems])
    order = _path_order(centres[:, [0, 2]] if fold == "alpha" else centres[:, :2] + 0.01 * centres[:, [2, 2]])
    centre = centres.mean(0)
    parts, kinds = [], []
    for k, i in enumerate(order):
        e = elems[i]
        tr = e.trace
        if k and np.linalg.norm(tr[0] - parts[-1][-1]) > np.linalg.norm(tr[-1] - parts[-1][-1]):
            tr = tr[::-1]  # enter the element from its nearer end
        if k:
            loop = loop_trace(parts[-1][-1], tr[0], centre, rng)
            parts.append(loop)
            kinds.append(np.full(len(loop), "L"))
        parts.append(tr)
        kinds.append(np.full(len(tr), e.kind))
    # N- and C-terminal tails
    for end in (0, 1):
        n_tail = int(rng.integers(2, 7))
        ref = parts[0][0] if end == 0 else parts[-1][-1]
        direction = _unit(ref - centre + rng.normal(0, 2.0, 3))
        tail = ref + CA_STEP * np.arange(1, n_tail + 1)[:, None] * direction + rng.normal(0, 0.7, (n_tail, 3))
        if end == 0:
            parts.insert(0, tail[::-1])
            kinds.insert(0, np.full(n_tail, "L"))
        else:
            parts.append(tail)
            kinds.append(np.full(n_tail, "L"))
    ca = relax(np.concatenate(parts))
    return ca - ca.mean(0), np.concatenate(kinds)


# --- packing -----------------------------------------------------------------------------------

def _min_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(a).query(b, k=1)
    return float(d.min())


def place_touching(fixed: np.ndarray, moving: np.ndarray, direction: np.ndarray, gap: float = 5.0) -> np.ndarray:
    """Translate ``moving`` (centred) along ``direction`` from ``fixed``'s centre until the closest Cα pair is ``gap`` Å."""
    direction = _unit(direction)
    c = fixed.mean(0)
    lo, hi = 0.0, float(np.ptp(fixed, axis=0).max() + np.ptp(moving, axis=0).max() + 20.0)
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if _min_distance(fixed, moving + c + mid * direction) < gap:
            lo = mid
        else:
            hi = mid
    return moving + c + hi * direction


def _symmetry_copies(sub: np.ndarray, symmetry: str, n: int, gap: float = 5.0) -> list[np.ndarray]:
    """Copies of a (centred) subunit under C_n or D_n about z, packed so neighbours touch."""
    def ring(r: float, z: float = 0.0) -> list[np.ndarray]:
        return [(sub + np.array([r, 0.0, z])) @ _axis_rotation(np.array([0, 0, 1.0]), 2 * np.pi * k / n).T
                for k in range(n)]

    def closest(copies: list[np.ndarray]) -> float:
        return min(_min_distance(copies[0], c) for c in copies[1:])

    # radius: smallest r with the ring's closest pair ≥ gap (r = 0 for a lone copy is never used)
    size = float(np.ptp(sub, axis=0).max())
    lo, hi = 0.0, size * 2 + 20
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if closest(ring(mid)) < gap:
            lo = mid
        else:
            hi = mid
    r = hi
    if symmetry == "C":
        return ring(r)
    flip = _axis_rotation(np.array([1.0, 0, 0]), np.pi)  # the dihedral two-fold about x
    lo, hi = 0.0, size + 20
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        top = ring(r, mid)
        bottom = [c @ flip.T for c in top]
        if _min_distance(np.concatenate(top), np.concatenate(bottom)) < gap:
            lo = mid
        else:
            hi = mid
    top = ring(r, hi)
    return top + [c @ flip.T for c in top]


# --- atoms -------------------------------------------------------------------------------------

def _residue_frames(ca: np.ndarray, chain_breaks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-residue tangent, normal and binormal from the Cα trace (chain ends use one-sided differences)."""
    n = len(ca)
    prev = np.roll(ca, 1, axis=0)
    nxt = np.roll(ca, -1, axis=0)
    first = np.r_[True, chain_breaks[1:]] if n else np.zeros(0, bool)
    last = np.r_[chain_breaks[1:], True] if n else np.zeros(0, bool)
    prev[first] = ca[first] - (nxt[first] - ca[first])
    nxt[last] = ca[last] + (ca[last] - prev[last])
    t = _unit(nxt - prev)
    nrm = prev + nxt - 2 * ca
    nrm = nrm - (nrm * t).sum(1, keepdims=True) * t
    fallback = np.cross(t, np.array([0.3, 0.5, 0.8]))
    nrm = np.where(np.linalg.norm(nrm, axis=1, keepdims=True) > 1e-3, nrm, fallback)
    nrm = _unit(nrm)
    return t, nrm, np.cross(t, nrm)


def add_atoms(ca: np.ndarray, chain_ids: np.ndarray, rng: np.random.Generator):
    """A ``gemmi.Structure`` with backbone, CB and 0–4 side-chain atoms per Cα (one chain per id)."""
    import gemmi

    breaks = np.r_[True, chain_ids[1:] != chain_ids[:-1]]
    t, nrm, b = _residue_frames(ca, breaks)
    n_side = rng.choice(np.arange(-1, 7), size=len(ca), p=[0.06, 0.07, 0.10, 0.18, 0.22, 0.20, 0.10, 0.07])
    st = gemmi.Structure()
    st.name = "procedural"
    model = gemmi.Model("1")
    chain = None
    seq = 0
    elements = {e: gemmi.Element(e) for e in ("N", "C", "O", "S")}
    for i in range(len(ca)):
        if breaks[i]:
            if chain is not None:
                model.add_chain(chain)
            chain = gemmi.Chain(str(chain_ids[i]))
            seq = 0
        seq += 1
        res = gemmi.Residue()
        res.name = str(rng.choice(_RESIDUES_BY_SIDECHAIN[int(n_side[i])]))
        res.seqid = gemmi.SeqId(seq, " ")
        res.entity_type = gemmi.EntityType.Polymer
        p = ca[i]
        # backbone: N behind, C ahead of CA along the chain, O off the C on the binormal side
        side_dir = _unit(-0.9 * nrm[i] + 0.45 * b[i])  # away from the curvature centre (a helix axis)
        atoms = [("N", "N", p - 1.25 * t[i] + 0.55 * nrm[i]), ("CA", "C", p),
                 ("C", "C", p + 1.3 * t[i] + 0.5 * nrm[i]), ("O", "O", p + 1.3 * t[i] + 0.5 * nrm[i] + 1.23 * _unit(nrm[i] - 0.3 * b[i]))]
        if n_side[i] >= 0:
            cb = p + 1.53 * side_dir
            atoms.append(("CB", "C", cb))
            last, direction = cb, side_dir
            for k in range(int(n_side[i])):
                direction = _unit(direction + rng.normal(0, 0.35, 3))
                last = last + 1.5 * direction
                el = rng.choice(["C", "N", "O", "S"], p=[0.72, 0.12, 0.14, 0.02]) if k == n_side[i] - 1 else "C"
                atoms.append((f"X{k + 1}", el, last))
        for name, el, pos in atoms:
            a = gemmi.Atom()
            a.name = name
            a.element = elements[el]
            a.pos = gemmi.Position(*map(float, pos))
            a.occ = 1.0
            a.b_iso = 20.0
            res.add_atom(a)
        chain.add_residue(res)
    if chain is not None:
        model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    return st


def _chain_name(k: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return letters[k] if k < len(letters) else f"{letters[k // len(letters) - 1]}{letters[k % len(letters)]}"


# --- molecules ---------------------------------------------------------------------------------

def _draw_layout(rng: np.random.Generator, mass_range_kDa: tuple[float, float]) -> tuple[float, str, int, int]:
    """(target mass kDa, symmetry kind '' / 'C' / 'D', order n, copies)."""
    lo, hi = mass_range_kDa
    mass = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    u = rng.uniform()
    if u < 0.45:
        kind, n = "", 1
    elif u < 0.8:
        kind, n = "C", int(rng.integers(2, 9))
    else:
        kind, n = "D", int(rng.integers(2, 5))
    copies = n * (2 if kind == "D" else 1)
    # a subunit needs at least one domain of ~60 residues
    while copies > 1 and mass / copies < 60 * RESIDUE_DA / 1000:
        if kind == "D" and n == 2:
            kind, n = "C", 2
        elif n > 2:
            n -= 1
        else:
            kind, n = "", 1
        copies = n * (2 if kind == "D" else 1)
    return mass, kind, n, copies


def procedural_ca(seed: int, index: int, mass_range_kDa: tuple[float, float] = (50.0, 1000.0),
                  max_diameter: float = DEFAULT_MAX_DIAMETER, attempts: int = 12):
    """Cα trace (n, 3), chain ids (n,) and :class:`MoleculeInfo` of molecule ``(seed, index)``.

    Layouts wider than ``max_diameter`` Å are redrawn (deterministically, up to ``attempts``
    times, the target mass shrinking by 15 % each time).
    """
    rng = np.random.default_rng([int(seed), int(index), 7919])
    hi = float(mass_range_kDa[1])
    best = None
    for attempt in range(attempts):
        mass, kind, n, copies = _draw_layout(rng, (min(mass_range_kDa[0], hi), hi))
        sub_res = max(60, int(round(mass * 1000 / RESIDUE_DA / copies)))
        n_dom = int(np.clip(round(sub_res / rng.uniform(110, 230)), 1, 3))
        sizes = np.maximum(60, np.round(rng.dirichlet(np.full(n_dom, 4.0)) * sub_res)).astype(int)
        folds = [str(rng.choice(["alpha", "alpha_beta", "beta"], p=[0.4, 0.4, 0.2])) for _ in range(n_dom)]
        domains = [build_domain(int(s), f, rng) for s, f in zip(sizes, folds)]
        sub = domains[0][0] @ random_rotation(rng).T
        for ca, _ in domains[1:]:
            ca = ca @ random_rotation(rng).T
            # of a few touching placements, the most compact (smallest radius of gyration)
            tries = [np.concatenate([sub, place_touching(sub, ca, rng.normal(size=3))]) for _ in range(4)]
            sub = min(tries, key=lambda x: float(((x - x.mean(0)) ** 2).sum(1).mean()))
        sub = sub - sub.mean(0)
        sub = sub @ random_rotation(rng).T
        if copies == 1:
            units = [sub]
        else:
            units = _symmetry_copies(sub, kind, n)
        ca = np.concatenate(units)
        ca = ca - ca.mean(0)
        chain_ids = np.concatenate([np.full(len(u), _chain_name(k)) for k, u in enumerate(units)])
        diameter = 2.0 * float(np.sqrt((ca**2).sum(1)).max()) + 6.0  # + side chains
        sym = "C1" if copies == 1 else f"{kind}{n}"
        info = MoleculeInfo(molecule_name(seed, index), int(seed), int(index), sym, copies, n_dom, folds,
                            residues=len(ca), target_mass_kDa=round(mass, 1), diameter_A=round(diameter, 1))
        if diameter <= max_diameter:
            return ca, chain_ids, info
        if best is None or diameter < best[2].diameter_A:
            best = (ca, chain_ids, info)
        hi = max(float(mass_range_kDa[0]), 0.85 * min(hi, mass))
    return best


def procedural_structure(seed: int, index: int, mass_range_kDa: tuple[float, float] = (50.0, 1000.0),
                         max_diameter: float = DEFAULT_MAX_DIAMETER):
    """The ``gemmi.Structure`` and :class:`MoleculeInfo` of procedural molecule ``(seed, index)``.

    Deterministic: the same ``(seed, index)`` (and size limits) give the same atoms on every
    machine. Centred at the origin; a symmetric assembly has its symmetry axis along z (and its
    dihedral two-fold along x).
    """
    ca, chain_ids, info = procedural_ca(seed, index, mass_range_kDa, max_diameter)
    rng = np.random.default_rng([int(seed), int(index), 104729])
    st = add_atoms(ca, chain_ids, rng)
    st.name = info.name
    model = st[0]
    info.atoms = int(model.count_atom_sites())
    info.mass_kDa = round(sum(a.element.weight for r in model.all() for a in [r.atom]) / 1000.0, 1)
    return st, info


def write_structure(st, path: str | Path) -> Path:
    """Write a ``gemmi.Structure`` as mmCIF (gzipped when the name ends in ``.gz``)."""
    path = Path(path)
    text = st.make_mmcif_document().as_string()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def write_procedural(n: int, seed: int, out_dir: str | Path, *, start: int = 0,
                     mass_range_kDa: tuple[float, float] = (50.0, 1000.0),
                     max_diameter: float = DEFAULT_MAX_DIAMETER, progress=None) -> list[tuple[Path, MoleculeInfo]]:
    """Write molecules ``start … start + n − 1`` of ``seed`` as ``out_dir/P<seed>_<index>.cif.gz``.

    ``progress(k)`` is called after each molecule. Returns ``(path, info)`` per molecule.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(start, start + n):
        st, info = procedural_structure(seed, index, mass_range_kDa, max_diameter)
        written.append((write_structure(st, out_dir / f"{info.name}.cif.gz"), info))
        if progress is not None:
            progress(1)
    return written
