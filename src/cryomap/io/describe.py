"""``cryomap info``: a short, human-readable description of what a file holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError


def _columns(cols) -> str:
    return ", ".join(str(c) for c in cols)


def _describe_mrc(path: Path, apix: float | None) -> list[str]:
    import warnings

    from cryomap.io.mrc import _check, _header_apix, _open, header_apix_problem

    with warnings.catch_warnings():  # permissive open: header oddities are reported, not warned
        warnings.simplefilter("ignore")
        mrc = _open(path, mmap=True)
    with mrc:
        _check(mrc, path)
        h = mrc.header
        header_apix = _header_apix(mrc)
        shape = tuple(int(s) for s in mrc.data.shape)
        kind = "image stack" if mrc.is_image_stack() or path.suffix.lower() == ".mrcs" else (
            "volume" if mrc.is_volume() else "image")
        lo, hi, mean, std = _stack_statistics(mrc.data)
        lines = [
            f"{path}: MRC {kind}, mode {int(h.mode)} ({mrc.data.dtype}), shape {shape} (z/n, y, x)",
            "pixel size: " + (f"{header_apix:.4f} Å/px" if header_apix else
                               ("not in header (cell is 0)" if "cell is 0" in str(header_apix_problem(mrc))
                                else str(header_apix_problem(mrc)).replace("header ", "", 1))
                               + (f"; using --apix {apix} Å/px" if apix else "; pass --apix")),
            f"origin: ({float(h.origin.x):g}, {float(h.origin.y):g}, {float(h.origin.z):g}) Å",
            f"values: min {lo:.4g}, max {hi:.4g}, mean {mean:.4g}, std {std:.4g}",
        ]
    return lines


def _stack_statistics(data: np.ndarray, chunk: int = 256) -> tuple[float, float, float, float]:
    """(min, max, mean, std) of every value of a memory-mapped map or stack, read ``chunk`` sections at a time."""
    if data.ndim < 3:
        data = data[None]
    lo, hi, total, total_sq, count = np.inf, -np.inf, 0.0, 0.0, 0
    for start in range(0, len(data), chunk):
        block = np.asarray(data[start:start + chunk], dtype=np.float64)
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        total += float(block.sum())
        total_sq += float(np.square(block).sum())
        count += block.size
    mean = total / count
    return lo, hi, mean, float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def _describe_model(path: Path) -> list[str]:
    """An atomic model (PDB/mmCIF, gzipped or not): chains, residues, atoms, mass and extent."""
    from cryomap.progress import counted
    from cryomap.simulate.structure_map import read_model, structure_extent

    st = read_model(path)
    model = st[0]
    n_res = sum(len(ch) for ch in model)
    n_atoms = sum(len(r) for ch in model for r in ch)
    diameter, mass = structure_extent(st)
    return [f"{path}: atomic model {st.name or path.name}, {counted(len(st), 'model')}",
            f"chains: {len(model)} ({', '.join(ch.name for ch in list(model)[:20])}{', ...' if len(model) > 20 else ''}); "
            f"{n_res} residues, {n_atoms} atoms (no hydrogens, no water)",
            f"mass {mass:.1f} kDa, {diameter:.0f} Å across (twice the largest distance from the centre of mass)"]


def _describe_folder(path: Path) -> list[str]:
    """A folder: a CryoPPP dataset (micrographs + coordinates) or a listing of what cryomap can read in it."""
    from cryomap.io.cryoppp import discover
    from cryomap.progress import counted
    from cryomap.simulate.structure_map import STRUCTURE_SUFFIXES

    try:
        found = discover(path)
        if found.usable:  # micrographs with coordinates: a CryoPPP-style dataset
            return [found.report()]
    except BadInputError:
        pass
    known = (".mrc", ".mrcs", ".map", ".star", ".cs", ".csv", ".box", ".jpg", ".jpeg", ".png", ".tif", ".tiff")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    readable = [p for p in files if p.suffix.lower() in known or p.name.lower().endswith(STRUCTURE_SUFFIXES)]
    folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    lines = [f"{path}: folder, not a CryoPPP dataset (no micrographs/ with coordinates); "
             f"{counted(len(folders), 'sub-folder')}"
             + (f" ({', '.join(folders[:10])}{', ...' if len(folders) > 10 else ''})" if folders else "")
             + f", {counted(len(files), 'file')}, {len(readable)} that cryomap can describe"]
    lines += [f"  {p.name}" for p in readable[:20]] + (["  ..."] if len(readable) > 20 else [])
    return lines


def _describe_table(path: Path, df, optics, label: str) -> list[str]:
    lines = [f"{path}: {label}, {len(df)} particles, {len(df.columns)} columns"]
    for col, name, unit in (("rlnImagePixelSize", "pixel size", "Å/px"), ("rlnImageSize", "image size", "px"),
                            ("rlnVoltage", "voltage", "kV")):
        if col in df:
            vals = sorted(set(np.round(df[col].astype(float), 6)))
            lines.append(f"{name}: {', '.join(f'{v:g}' for v in vals[:5])} {unit}")
    if "rlnOpticsGroup" in df:
        groups = sorted(set(df["rlnOpticsGroup"].astype(int)))
        lines.append(f"optics groups: {len(groups)} ({', '.join(map(str, groups[:10]))})")
    if "rlnMicrographName" in df:
        lines.append(f"micrographs: {df['rlnMicrographName'].nunique()}")
    if "rlnImageName" in df:
        from cryomap.io.star import parse_image_name

        stacks = {parse_image_name(n)[1] for n in df["rlnImageName"]}
        lines.append(f"image stacks: {len(stacks)}")
    lines.append(f"columns: {_columns(df.columns)}")
    if optics is not None:
        lines.append(f"optics block columns: {_columns(optics.columns)}")
    return lines


def describe(path: str | Path, apix: float | None = None) -> str:
    """Describe a map/stack (.mrc/.mrcs/.map), STAR, cryoSPARC .cs, coordinate file, atomic model,
    micrograph image or folder (a CryoPPP dataset is summarised). Map statistics cover every section."""
    path = Path(path)
    if not path.exists():
        raise BadInputError("file not found", path)
    suffix = path.suffix.lower()
    from cryomap.simulate.structure_map import STRUCTURE_SUFFIXES

    if path.is_dir():
        lines = _describe_folder(path)
    elif path.name.lower().endswith(STRUCTURE_SUFFIXES):
        lines = _describe_model(path)
    elif suffix in (".mrc", ".mrcs", ".map", ".rec", ".st"):
        lines = _describe_mrc(path, apix)
    elif suffix == ".star":
        from cryomap.io.star import read_star

        t = read_star(path)
        version = "RELION 3.1+ (data_optics)" if t.optics is not None else "RELION 3.0 (one table)"
        lines = _describe_table(path, t.particles, t.optics, f"STAR {version}")
        if t.extra_blocks:
            lines.append(f"other blocks: {', '.join(t.extra_blocks)}")
    elif suffix == ".cs":
        from cryomap.io.cs import cs_to_dataframe, read_cs_array

        arr = read_cs_array(path)
        lines = _describe_table(path, cs_to_dataframe(arr, path), None, "cryoSPARC .cs table")
        lines.append(f"cs fields: {_columns(arr.dtype.names)}")
        lines.append("note: cryoSPARC alignments*/shift are in pixels, not Å (× alignments*/psize_A, else "
                     "blob/psize_A, gives rlnOriginX/YAngst above); ctf/*_A are Å")
    elif suffix in (".csv", ".box"):
        from cryomap.io.coords import read_coordinates

        df = read_coordinates(path)
        lines = [f"{path}: {len(df)} particle coordinates (px, x = column, y = row)"]
        if len(df):
            lines.append(f"x range {df.x.min():g}..{df.x.max():g}, y range {df.y.min():g}..{df.y.max():g}")
        if "diameter" in df and len(df):
            lines.append(f"diameter: {', '.join(f'{v:g}' for v in sorted(df.diameter.unique())[:5])} px")
    elif suffix in (".jpg", ".jpeg", ".png", ".tif", ".tiff"):
        from cryomap.io.micrograph import read_micrograph

        m = read_micrograph(path, apix=apix)
        lines = [f"{path}: micrograph {m.data.shape} (rows, cols)",
                 "pixel size: " + (f"{m.apix:.4f} Å/px" if m.apix else "not stored in this format (pass --apix)"),
                 f"values: min {m.data.min():.4g}, max {m.data.max():.4g}, mean {m.data.mean():.4g}"]
    else:
        raise BadInputError(f"unknown file type {suffix!r} (expected .mrc/.mrcs/.map, .star, .cs, .csv/.box, .pdb/.cif(.gz), an image or a folder)", path)
    return "\n".join(lines)
