"""Importers: 2D classes made by cryoSPARC or RELION, written in classify2d's output layout.

* cryoSPARC: the particles ``.cs`` of a 2D classification (``alignments2D/class`` 0-based,
  ``alignments2D/pose`` radians, ``alignments2D/shift`` px, ``alignments2D/class_posterior``;
  read by :mod:`cryomap.io.cs`) and its class-average stack ``.mrc``. A ``*_class_averages.cs``
  beside the ``.mrc`` (``blob/res_A`` per class) gives cryoSPARC's own resolutions.
* RELION: ``run_itNNN_model.star`` (``data_model_classes``: ``rlnReferenceImage``,
  ``rlnClassDistribution``, ``rlnEstimatedResolution``), the ``run_itNNN_classes.mrcs`` it names and
  the ``run_itNNN_data.star`` beside it (``rlnClassNumber``, ``rlnAnglePsi``,
  ``rlnOriginXAngst/YAngst``, ``rlnMaxValueProbDistribution``).

Ranking uses the same resolution as ``classify2d`` when it can: when the particle images can be
read, every class is re-averaged from the tool's poses in two random halves
(:class:`~cryomap.classify2d.averages.FullBoxAverager`) and the FRC of the halves at 0.143 gives the
resolution. The re-averaged classes are compared with the tool's own averages first (median Pearson
correlation inside the mask), and again with the in-plane angles negated; unless the poses as read
match (≥ :data:`POSE_CHECK`) and match better than negated ones, they are not in the convention
cryomap reads, and the tool's own resolution is used instead — ``run.json`` says which
(``resolution_source``, ``pose_check_median_cc``). The class averages written are always the tool's
own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryomap.classify2d.output import ClassOutput, write_class_output
from cryomap.errors import BadInputError

#: Median correlation between cryomap's re-averaged classes and the tool's own below which the poses are not trusted.
POSE_CHECK = 0.5


def _read_class_stack(path: Path) -> tuple[np.ndarray, float | None]:
    from cryomap.io.mrc import read_stack

    try:
        data = read_stack(path, mmap=False)
    except BadInputError:
        data = read_stack(path, apix=1.0, mmap=False)
        return np.asarray(data.data, np.float32), None
    return np.asarray(data.data, np.float32), data.apix


def _try_source(path: Path, apix: float | None):
    from cryomap.particles.source import open_particles

    try:
        return open_particles(path, apix=apix), None
    except BadInputError as exc:
        return None, str(exc)


def _median_cc(full: np.ndarray, theirs: np.ndarray, mask: np.ndarray, counts: np.ndarray) -> float:
    cc = []
    for c in range(len(full)):
        if counts[:, c].sum() < 2:
            continue
        a, b = full[c][mask], theirs[c][mask]
        a, b = a - a.mean(), b - b.mean()
        den = float(np.linalg.norm(a) * np.linalg.norm(b))
        cc.append(float(a @ b / den) if den > 0 else 0.0)
    return float(np.median(cc)) if cc else float("nan")


def _reaverage(source, classes: np.ndarray, psi_deg: np.ndarray, origins_A: np.ndarray, k: int,
               mask_diameter_A: float | None, tool_averages: np.ndarray, seed: int) -> dict:
    """Re-average the tool's classes from its poses; resolution from the halves; a check of the pose convention.

    The check re-averages a second time with the in-plane angles negated (the other common
    convention): the poses are trusted when the averages as read match the tool's own averages
    (median correlation ≥ :data:`POSE_CHECK`) and match them better than the negated ones do.
    """
    from cryomap.classify2d.averages import FullBoxAverager
    from cryomap.classify2d.rank import class_resolutions
    from cryomap.core.fourier import resize_images

    mask_A = mask_diameter_A or 0.9 * source.box * source.pixel_size
    use_ctf = source.has_ctf
    rng = np.random.default_rng(seed)
    half = rng.permutation(len(source)) % 2
    shifts = -np.asarray(origins_A, float) / source.pixel_size
    out = {}
    for name, sign in (("as_read", 1.0), ("negated", -1.0)):
        avg = FullBoxAverager(source, k, mask_A, use_ctf=use_ctf)
        avg.add(np.arange(len(source)), classes, -sign * np.asarray(psi_deg, float), shifts, half)
        full, halves = avg.solve()
        theirs = resize_images(tool_averages, avg.box) if tool_averages.shape[-1] != avg.box else tool_averages
        out[name] = _median_cc(full, theirs, avg.mask.numpy() > 0.5, avg.counts)
        if name == "as_read":
            res, _ = class_resolutions(halves, avg.counts, source.pixel_size)
    trusted = bool(np.isfinite(out["as_read"]) and out["as_read"] >= POSE_CHECK
                   and out["as_read"] >= out["negated"])
    return {"resolution": res, "pose_check": out["as_read"], "pose_check_negated": out["negated"], "trusted": trusted,
            "mask_diameter_A": mask_A, "ctf": use_ctf}


def _finish(out_dir: Path, source, why: str | None, table, averages: np.ndarray, apix: float, classes: np.ndarray,
            psi: np.ndarray, origins: np.ndarray, maxp: np.ndarray, tool_res: np.ndarray | None, info: dict,
            top: int | None, force: bool, *, reaverage: bool, mask_diameter_A: float | None, seed: int,
            numbers: np.ndarray | None = None) -> Path:
    """Re-average the tool's classes from its poses when the particle images could be read (``source``;
    else ``why`` says why not), rank and write the classify2d layout."""
    k = len(averages)
    reavg = None
    if source is not None and reaverage:
        reavg = _reaverage(source, classes, psi, origins, k, mask_diameter_A, averages, seed)
    elif why:
        info["particle_images"] = f"not read: {why}"
    counts = np.bincount(classes[classes >= 0], minlength=k)[:k]
    resolution = np.full(k, np.nan) if tool_res is None else np.asarray(tool_res, float)
    source_of_res = "tool" if tool_res is not None else "none"
    if reavg is not None:
        info["pose_check_median_cc"] = reavg["pose_check"]
        info["pose_check_median_cc_psi_negated"] = reavg["pose_check_negated"]
        if reavg["trusted"]:
            resolution, source_of_res = reavg["resolution"], "cryomap FRC of half-set re-averages"
    info["resolution_source"] = source_of_res
    out = ClassOutput(averages, resolution, counts, apix, classes, psi, origins, maxp, original_numbers=numbers,
                      info=info)
    return write_class_output(out_dir, source if source is not None else table, out, top=top, force=force)


# ---------------------------------------------------------------------- cryoSPARC

def import_cryosparc(particles_cs: str | Path, classes_mrc: str | Path, out_dir: str | Path, *,
                     top: int | None = None, mask_diameter_A: float | None = None, apix: float | None = None,
                     reaverage: bool = True, force: bool = False, seed: int = 0) -> Path:
    """Write a cryoSPARC 2D classification (particles ``.cs`` + class ``.mrc``) as a classify2d folder."""
    from cryomap.io.atomic import check_replaceable_dir
    from cryomap.io.cs import cs_to_dataframe, read_cs_array

    particles_cs, classes_mrc, out_dir = Path(particles_cs), Path(classes_mrc), Path(out_dir)
    check_replaceable_dir(out_dir, force)
    arr = read_cs_array(particles_cs)
    names = set(arr.dtype.names or ())
    if "alignments2D/class" not in names:
        raise BadInputError("has no alignments2D/class field: not the particles of a 2D classification", particles_cs)
    table = cs_to_dataframe(arr, particles_cs)
    averages, mrc_apix = _read_class_stack(classes_mrc)
    k = len(averages)
    classes = table["rlnClassNumber"].to_numpy(np.int64) - 1
    if classes.max() >= k:
        raise BadInputError(f"particles name class {classes.max() + 1} but the class stack holds {k} images", classes_mrc)
    psi = table["rlnAnglePsi"].to_numpy(float) if "rlnAnglePsi" in table else np.zeros(len(table))
    origins = np.column_stack([table.get("rlnOriginXAngst", pd.Series(np.zeros(len(table)))).to_numpy(float),
                               table.get("rlnOriginYAngst", pd.Series(np.zeros(len(table)))).to_numpy(float)])
    maxp = np.asarray(arr["alignments2D/class_posterior"], float) if "alignments2D/class_posterior" in names \
        else np.ones(len(table))
    tool_res = _cryosparc_class_resolution(classes_mrc, k)
    source, why = _try_source(particles_cs, apix)
    px = apix or mrc_apix or (float(table["rlnImagePixelSize"].iloc[0]) if "rlnImagePixelSize" in table else None)
    if px is None:
        raise BadInputError("no pixel size in the class stack or the particles; give --apix", classes_mrc)
    info = {"imported_from": "cryosparc", "particles": str(particles_cs), "classes": str(classes_mrc)}
    return _finish(out_dir, source, why, table, averages, px, classes, psi, origins, maxp, tool_res, info, top, force,
                   reaverage=reaverage, mask_diameter_A=mask_diameter_A, seed=seed)


def _cryosparc_class_resolution(classes_mrc: Path, k: int) -> np.ndarray | None:
    """``blob/res_A`` of the ``*_class_averages.cs`` beside the class stack, by ``blob/idx``; None when absent."""
    from cryomap.io.cs import read_cs_array

    cs = classes_mrc.with_suffix(".cs")
    if not cs.exists():
        return None
    arr = read_cs_array(cs)
    if "blob/res_A" not in (arr.dtype.names or ()):
        return None
    res = np.full(k, np.nan)
    idx = np.asarray(arr["blob/idx"], int) if "blob/idx" in arr.dtype.names else np.arange(len(arr))
    ok = (idx >= 0) & (idx < k)
    res[idx[ok]] = np.asarray(arr["blob/res_A"], float)[ok]
    return res


# ---------------------------------------------------------------------- RELION

def _resolve_relion_path(name: str, model_star: Path) -> Path:
    """A path written by RELION (relative to its project folder) found from the model STAR's location."""
    p = Path(name)
    here = model_star.resolve().parent
    if p.is_absolute():  # a moved job folder: the stack sits beside the model STAR
        return p if p.exists() else here / p.name
    for base in (Path.cwd(), here, here.parent, here.parent.parent, here.parent.parent.parent):
        if (base / p).exists():
            return base / p
    return here / p.name


def import_relion(model_star: str | Path, out_dir: str | Path, *, top: int | None = None,
                  mask_diameter_A: float | None = None, apix: float | None = None, reaverage: bool = True,
                  force: bool = False, seed: int = 0) -> Path:
    """Write a RELION 2D classification (``*_model.star`` + classes ``.mrcs`` + ``*_data.star``) as a classify2d folder."""
    import starfile

    from cryomap.io.atomic import check_replaceable_dir
    from cryomap.io.star import parse_image_name, read_star

    model_star, out_dir = Path(model_star), Path(out_dir)
    check_replaceable_dir(out_dir, force)
    if not model_star.exists():
        raise BadInputError("file not found", model_star)
    try:
        blocks = starfile.read(model_star, always_dict=True)
    except Exception as exc:
        raise BadInputError(f"not a readable STAR file ({exc})", model_star) from exc
    model = blocks.get("model_classes")
    if not isinstance(model, pd.DataFrame) or "rlnReferenceImage" not in model:
        raise BadInputError("has no data_model_classes block with rlnReferenceImage: not a RELION *_model.star",
                            model_star)
    refs = [parse_image_name(n) for n in model["rlnReferenceImage"]]
    stack = _resolve_relion_path(refs[0][1], model_star)
    if not stack.exists():
        raise BadInputError(f"the class stack it names ({refs[0][1]}) is not on disk", model_star)
    all_avg, mrc_apix = _read_class_stack(stack)
    averages = np.stack([all_avg[i - 1] for i, _ in refs])
    k = len(averages)
    name = model_star.name
    if not name.endswith("_model.star"):
        raise BadInputError("expected a RELION file named *_model.star (its *_data.star sits beside it)", model_star)
    data_star = model_star.with_name(name[: -len("_model.star")] + "_data.star")
    if not data_star.exists():
        raise BadInputError(f"needs the particles of the run: {data_star.name} not found beside it", model_star)
    table = read_star(data_star).particles
    if "rlnClassNumber" not in table:
        raise BadInputError("has no rlnClassNumber column", data_star)
    classes = table["rlnClassNumber"].to_numpy(np.int64) - 1
    if classes.max() >= k or classes.min() < 0:
        raise BadInputError(f"particles name classes outside 1..{k}", data_star)
    psi = table["rlnAnglePsi"].to_numpy(float) if "rlnAnglePsi" in table else np.zeros(len(table))
    origins = np.column_stack([table[c].to_numpy(float) if c in table else np.zeros(len(table))
                               for c in ("rlnOriginXAngst", "rlnOriginYAngst")])
    maxp = table["rlnMaxValueProbDistribution"].to_numpy(float) if "rlnMaxValueProbDistribution" in table \
        else np.ones(len(table))
    tool_res = model["rlnEstimatedResolution"].to_numpy(float) if "rlnEstimatedResolution" in model else None
    source, why = _try_source(data_star, apix)
    px = apix or (float(table["rlnImagePixelSize"].iloc[0]) if "rlnImagePixelSize" in table else None) or mrc_apix
    if px is None:
        raise BadInputError("no pixel size in the particles or the class stack; give --apix", data_star)
    info = {"imported_from": "relion", "model": str(model_star), "classes": str(stack), "particles": str(data_star)}
    return _finish(out_dir, source, why, table, averages, px, classes, psi, origins, maxp, tool_res, info, top, force,
                   reaverage=reaverage, mask_diameter_A=mask_diameter_A, seed=seed)
