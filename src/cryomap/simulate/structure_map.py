"""Atomic model (PDB/mmCIF, or an existing MRC map) → electron-scattering density map on a cubic grid.

The map is computed with gemmi's ``DensityCalculatorE`` (electron scattering factors) on a
``box``³ grid of ``apix`` Å/px, with the model's centre of mass at voxel ``box // 2`` on every axis
(the centre RELION and cryomap's projector use). Arrays are (z, y, x).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError
from cryomap.io.mrc import MrcData

STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
MAP_SUFFIXES = (".mrc", ".map", ".mrc.gz", ".map.gz")


def builtin_structures() -> dict[str, Path]:
    """The atomic models shipped with cryomap (PDB entries, CC0): name (e.g. ``"7PBL"``) → file path."""
    root = resources.files("cryomap") / "data" / "structures"
    out: dict[str, Path] = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        name = entry.name
        if any(name.lower().endswith(s) for s in STRUCTURE_SUFFIXES):
            out[name.split(".")[0].upper()] = Path(str(entry))
    return out


def resolve_source(source: str | Path) -> Path:
    """A file path, or a built-in structure name (case-insensitive) resolved to its packaged file."""
    p = Path(source)
    if p.exists():
        return p
    builtins = builtin_structures()
    key = str(source).upper()
    if key in builtins:
        return builtins[key]
    raise BadInputError(
        f"no such file, and not a built-in structure (built-ins: {', '.join(builtins)})", p
    )


def _is_map(path: Path) -> bool:
    return any(path.name.lower().endswith(s) for s in MAP_SUFFIXES)


def read_model(path: Path):
    """Read a PDB/mmCIF model with gemmi; hydrogens and waters removed. Raises on unreadable or empty."""
    import gemmi

    from cryomap.io.atomic import note_input

    note_input(path)
    if path.name.lower().endswith(".gz"):
        # gemmi reads a cut gzip stream up to the break and keeps the atoms before it: check the whole stream
        import gzip
        import zlib

        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 20):
                    pass
        except (EOFError, OSError, zlib.error) as exc:
            raise BadInputError(f"gzip stream is truncated or corrupt ({exc}); re-download the file", path) from exc
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with a reason
        raise BadInputError(f"not a readable PDB/mmCIF structure ({str(exc).splitlines()[0]})", path) from exc
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_waters()
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise BadInputError("the structure holds no atoms (empty model)", path)
    return st


def _model_coordinates(model) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) atom positions in Å (x, y, z) and their masses in Da."""
    pos, mass = [], []
    for cra in model.all():
        p = cra.atom.pos
        pos.append((p.x, p.y, p.z))
        mass.append(cra.atom.element.weight * cra.atom.occ)
    return np.asarray(pos, dtype=np.float64), np.asarray(mass, dtype=np.float64)


def model_extent(source: str | Path) -> tuple[float, float]:
    """(diameter in Å, mass in kDa) of an atomic model: twice the largest atom distance from the centre of mass."""
    return structure_extent(read_model(resolve_source(source)))


def structure_extent(st) -> tuple[float, float]:
    """:func:`model_extent` of a structure already read (``gemmi.Structure``; its first model)."""
    xyz, mass = _model_coordinates(st[0])
    com = (xyz * mass[:, None]).sum(0) / mass.sum()
    return 2.0 * float(np.sqrt(((xyz - com) ** 2).sum(1)).max()), float(mass.sum() / 1000.0)


def lowpass(volume: np.ndarray, apix: float, resolution: float) -> np.ndarray:
    """Low-pass filter a map to ``resolution`` Å with a raised-cosine edge one Fourier shell wide.

    Hand-written (a few lines of FFT) because it must run on any cubic box and keep the DC term.
    """
    n = volume.shape[-1]
    f = np.fft.fftfreq(n) / apix
    fr = np.fft.rfftfreq(n) / apix
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fr[None, None, :] ** 2)
    cutoff = 1.0 / resolution
    width = 1.0 / (n * apix)
    mask = np.clip((cutoff + width / 2 - r) / width, 0.0, 1.0)
    mask = 0.5 - 0.5 * np.cos(np.pi * mask)
    return np.fft.irfftn(np.fft.rfftn(volume) * mask, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def structure_to_map(
    source: str | Path,
    apix: float,
    box: int,
    resolution: float | None = None,
    map_apix: float | None = None,
) -> MrcData:
    """Electron-scattering density of an atomic model (or an existing map) on a ``box``³ grid of ``apix`` Å/px.

    ``source`` is a ``.pdb``/``.cif`` (optionally gzipped), a built-in name (see
    :func:`builtin_structures`) or a ``.mrc`` map (resampled to ``apix`` and padded/cropped to
    ``box`` about its centre). The model's centre of mass sits at voxel ``box // 2``.
    ``resolution`` (Å) low-passes the map; gemmi's own blur keeps the sampled atoms alias-free.
    ``map_apix`` (Å/px) is the voxel size of a ``.mrc`` source whose header holds none.
    Raises :class:`BadInputError` for an unreadable or empty model, or a box smaller than the molecule.
    """
    if apix <= 0:
        raise BadInputError(f"pixel size must be positive, got {apix} Å/px")
    if box < 8:
        raise BadInputError(f"box must be at least 8 px, got {box}")
    path = resolve_source(source)
    if _is_map(path):
        data = _map_to_grid(path, apix, box, map_apix)
    else:
        data = _model_to_grid(path, apix, box)
    if resolution is not None:
        if resolution < 2 * apix:
            raise BadInputError(f"resolution {resolution} Å is finer than Nyquist (2 × {apix} Å/px)", path)
        data = lowpass(data, apix, resolution)
    return MrcData(data.astype(np.float32), float(apix), (0.0, 0.0, 0.0))


def _model_to_grid(path: Path, apix: float, box: int) -> np.ndarray:
    import gemmi

    st = read_model(path)
    model = st[0]
    xyz, mass = _model_coordinates(model)
    com = (xyz * mass[:, None]).sum(0) / mass.sum()
    diameter = 2.0 * float(np.sqrt(((xyz - com) ** 2).sum(1)).max())
    if diameter > box * apix:
        need = int(np.ceil(diameter / apix))
        raise BadInputError(
            f"box {box} px × {apix} Å/px = {box * apix:.0f} Å is too small for this molecule "
            f"({diameter:.0f} Å across); use a box of at least {need + need % 2} px",
            path,
        )
    # move the centre of mass to the grid point box//2 of a P1 cell of box*apix Å
    centre = (box // 2) * apix
    shift = gemmi.Position(*(centre - com))
    for cra in model.all():
        cra.atom.pos += shift
    st.cell = gemmi.UnitCell(box * apix, box * apix, box * apix, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 2.0 * apix
    dc.rate = 1.0
    dc.set_refmac_compatible_blur(model)  # gemmi's anti-aliasing blur for this sampling
    dc.set_grid_cell_and_spacegroup(st)
    dc.d_min = 0.0  # keep the grid size set below instead of one derived from d_min
    dc.grid.set_size(box, box, box)
    dc.put_model_density_on_grid(model)
    arr = np.array(dc.grid, copy=True)  # indexed [x, y, z]
    return np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(np.float32)


def read_source_map(path: Path, map_apix: float | None = None) -> MrcData:
    """Read a source map; one without a voxel size in its header needs ``map_apix`` (``--map-apix``)."""
    from cryomap.io.mrc import read_map

    try:
        return read_map(path, apix=map_apix)
    except BadInputError as err:
        if "--apix" in err.message:  # read_map's hint names --apix, which here is the output sampling
            raise BadInputError(err.message.replace("--apix", "--map-apix"), path) from err
        raise


def _map_to_grid(path: Path, apix: float, box: int, map_apix: float | None = None) -> np.ndarray:
    """Resample an MRC map to ``apix`` (Fourier cropping/padding) and pad/crop it to ``box`` about its centre."""
    m = read_source_map(path, map_apix)
    vol = m.data
    if vol.shape[0] != vol.shape[1] or vol.shape[1] != vol.shape[2]:
        raise BadInputError(f"map must be cubic, found {vol.shape}", path)
    if abs(m.apix - apix) > 1e-4 * apix:
        import torch
        from torch_fourier_rescale import fourier_rescale_3d

        vol, _ = fourier_rescale_3d(torch.as_tensor(vol), source_spacing=m.apix, target_spacing=apix)
        vol = vol.numpy()
    n = vol.shape[0]
    out = np.zeros((box, box, box), dtype=np.float32)
    # copy the overlap of the two boxes, centre (n//2) onto centre (box//2)
    src0 = max(0, n // 2 - box // 2)
    dst0 = max(0, box // 2 - n // 2)
    k = min(n - src0, box - dst0)
    out[dst0:dst0 + k, dst0:dst0 + k, dst0:dst0 + k] = vol[src0:src0 + k, src0:src0 + k, src0:src0 + k]
    return out
