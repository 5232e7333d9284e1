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
        data = mrc.data
        sample = np.asarray(data[: min(len(data), 64)] if data.ndim == 3 else data, dtype=np.float32)
        lines = [
            f"{path}: MRC {kind}, mode {int(h.mode)} ({mrc.data.dtype}), shape {shape} (z/n, y, x)",
            "pixel size: " + (f"{header_apix:.4f} Å/px" if header_apix else
                               ("not in header (cell is 0)" if "cell is 0" in str(header_apix_problem(mrc))
                                else str(header_apix_problem(mrc)).replace("header ", "", 1))
                               + (f"; using --apix {apix} Å/px" if apix else "; pass --apix")),
            f"origin: ({float(h.origin.x):g}, {float(h.origin.y):g}, {float(h.origin.z):g}) Å",
            f"values{(' (first 64 ' + ('sections' if kind == 'volume' else 'images') + ')') if data.ndim == 3 and len(data) > 64 else ''}: "
            f"min {sample.min():.4g}, max {sample.max():.4g}, mean {sample.mean():.4g}, std {sample.std():.4g}",
        ]
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
    """Describe a map/stack (.mrc/.mrcs/.map), STAR, cryoSPARC .cs, coordinate file or micrograph image."""
    path = Path(path)
    if not path.exists():
        raise BadInputError("file not found", path)
    suffix = path.suffix.lower()
    if suffix in (".mrc", ".mrcs", ".map", ".rec", ".st"):
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
        raise BadInputError(f"unknown file type {suffix!r} (expected .mrc/.mrcs/.map, .star, .cs, .csv/.box or an image)", path)
    return "\n".join(lines)
