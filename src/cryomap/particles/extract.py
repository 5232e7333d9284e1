"""Particle extraction: micrographs + coordinates → one ``.mrcs`` stack and a RELION 3.1 STAR.

``extract_particles(source, out_dir, box, ...)`` reads a CryoPPP folder (see
:mod:`cryomap.io.cryoppp`) or a STAR file naming micrographs and coordinates, cuts a box around
every particle, optionally Fourier-bins it, normalises it the way RELION does and streams it into
``out_dir/particles.mrcs`` micrograph by micrograph, so peak memory does not grow with the number
of micrographs or particles. ``out_dir/particles.star`` carries every per-particle column the
source had (CTF, poses, origins, classes) plus the optics block, with the pixel size after binning.

Choices where the spec is silent (also in docs/io_extract.md):

- Default box: the smallest even integer ≥ 1.5 × particle diameter (``--diameter`` or the
  CryoPPP CSV ``Diameter`` column, median over the dataset).
- Fractional coordinates are rounded to the nearest pixel; the sub-pixel remainder is written
  into ``rlnOriginXAngst/YAngst`` (RELION: particle centre = coordinate − origin), so the
  particle's known centre is exact; ``rlnCoordinateX/Y`` hold the integer centre used.
- ``--bg-radius`` is in pixels of the output (binned) box; default 0.75 × out_box / 2.
- ``--bin F``: output box = round(box / F) (must be even), pixel size × box / out_box.
- Pixel size: ``--apix``, else the micrograph header, else the STAR (``rlnMicrographPixelSize``,
  then ``rlnImagePixelSize``); JPEG/PNG micrographs without any of these are taken as 1.0
  Å/px and the summary says so (``ExtractResult.apix_known`` is False).
- Folder sources with both CSV coordinates and a STAR: each CSV particle takes the columns of the
  STAR row of the same micrograph nearest to it (within 2 px) and that row's exact coordinate;
  CTF columns of unmatched particles take the micrograph's median; any other carried column that
  would be left empty for some particle is dropped (named in ``notes``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryomap.errors import BadInputError, CryomapError
from cryomap.particles.plan import (  # noqa: F401  (default_box, MicrographJob re-exported)
    REWRITTEN,
    MicrographJob,
    clear_caches,
    default_box,
    plan_folder,
    plan_star,
    star_pixel_size,
)

STACK_NAME = "particles.mrcs"
STAR_NAME = "particles.star"
#: Micrographs extracted at once in one process (``--workers 1``): reading, cutting, the DFTs and the
#: writes release the GIL, so two overlap on two cores. Output bytes do not depend on it.
INLINE_THREADS = int(os.environ.get("CRYOMAP_EXTRACT_THREADS", "2"))
#: Bytes of particles a task processes before writing them (one positioned write each): 64 images of
#: 256² px. A micrograph's particles never sit in memory all at once.
CHUNK_BYTES = 16 << 20


@dataclass
class ExtractResult:
    """What an extraction wrote and skipped."""

    stack_path: Path
    star_path: Path
    n_micrographs: int
    n_particles: int
    n_skipped_edge: int
    n_padded: int
    box: int
    out_box: int
    apix: float
    apix_known: bool
    seconds: float
    skipped_micrographs: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        """The one-line summary the CLI prints."""
        from cryomap.progress import counted

        line = (f"extracted {counted(self.n_particles, 'particle')} ({self.out_box} px, {self.apix:.4g} Å/px) from "
                f"{counted(self.n_micrographs, 'micrograph')} in {self.seconds:.1f} s; {self.n_skipped_edge} skipped at the edge"
                + (f", {self.n_padded} padded" if self.n_padded else ""))
        if self.skipped_micrographs:
            line += f"; {counted(len(self.skipped_micrographs), 'bad micrograph')} skipped: " + "; ".join(
                f"{name} ({why})" for name, why in self.skipped_micrographs)
        if not self.apix_known:
            line += "; micrograph pixel size unknown (JPEG/PNG without --apix): assumed 1.0 Å/px"
        for note in self.notes:
            line += f"; {note}"
        return line + f" → {self.stack_path.parent}"


# --------------------------------------------------------------------------- per-micrograph work

@dataclass
class _Params:
    box: int
    out_box: int
    edge: str
    bg_radius: float
    invert: bool
    phase_flip: bool = False
    out_apix: float = 1.0


@dataclass
class _Prepared:
    """A job after the header pre-pass: integer centres, which boxes are kept, where they go in the stack."""

    job: MicrographJob
    xi: np.ndarray
    yi: np.ndarray
    kept: np.ndarray
    padded: np.ndarray
    apix: float | None
    index: int = 0


def _prepare(job: MicrographJob, p: _Params) -> _Prepared:
    """Header-only checks of one micrograph: readable header, coordinates inside, edge policy."""
    from cryomap.io.micrograph import micrograph_info
    from cryomap.particles.boxes import box_fits

    info = micrograph_info(job.path)
    rows, cols = info.shape
    x, y = job.rows["x"].to_numpy(float), job.rows["y"].to_numpy(float)
    xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    outside = (xi < 0) | (yi < 0) | (xi >= cols) | (yi >= rows)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise BadInputError(
            f"{int(outside.sum())} particle coordinates lie outside the {cols}x{rows} image "
            f"(first: x={x[i]:g}, y={y[i]:g} px)", job.path)
    fits = box_fits(xi, yi, p.box, info.shape)
    kept = fits if p.edge == "skip" else np.ones(len(xi), dtype=bool)
    return _Prepared(job, xi, yi, kept, kept & ~fits, info.apix)


@dataclass(frozen=True)
class _FileTarget:
    """Per-micrograph output: the worker writes a whole ``.mrcs`` of its own (``--stack-per-micrograph``)."""

    path: Path
    apix: float

    def open(self, n: int, box: int):
        """A :class:`~cryomap.io.mrc.StackWriter` for this micrograph's ``n`` images of ``box`` px."""
        from cryomap.io.mrc import StackWriter

        return StackWriter(self.path, n=n, box=box, apix=self.apix, force=True)


def extract_micrograph(p: _Params, path: Path, xi: np.ndarray, yi: np.ndarray, target, index: int,
                       n_expected: int, ctf=None) -> dict:
    """One task: read one micrograph, cut/bin (phase-flip)/normalise its particles, write them at ``index``.

    Runs inline or on a Dask worker (:class:`cryomap.tasks.TaskRunner`, ``p`` is the shared
    context): the images go straight into the output file through ``target`` (a
    :class:`~cryomap.io.mrc.StackTarget`), only statistics come back (a picklable dict with
    ``stats`` for :meth:`StackWriter.record`, or ``error`` and ``path``). ``ctf``: the kept
    particles' :class:`~cryomap.core.ctf.CtfParams` when phase flipping.

    Each particle goes through every step while it is in cache: read where it lies in the
    memory-mapped micrograph, (phase-flipped,) normalised into a buffer of at most
    :data:`CHUNK_BYTES`, its header statistics taken; each full buffer is one positioned write.
    """
    from cryomap.core.images import Standardizer
    from cryomap.io.micrograph import read_micrograph
    from cryomap.io.mrc import combine_stats
    from cryomap.particles.boxes import box_windows

    try:
        mic = read_micrograph(path, apix=1.0, mmap=True)  # the pixel size comes from the plan
        windows, _, _ = box_windows(mic.data, xi, yi, p.box, p.edge, p.bg_radius * p.box / p.out_box)
        if len(windows) != n_expected:
            raise BadInputError(f"image size differs from its header ({len(windows)} boxes fit, header says {n_expected})", path)
        stats = np.empty((len(windows), 4), dtype=np.float64)
        step = max(1, CHUNK_BYTES // (4 * p.out_box * p.out_box))
        buffer = np.empty((min(step, len(windows)), p.out_box, p.out_box), dtype=np.float32)
        flip = None
        if p.phase_flip and len(windows):
            from cryomap.core.phase_flip import PhaseFlip

            flip = PhaseFlip(ctf, p.out_apix, (p.out_box, p.out_box))
        standardizer = Standardizer((p.out_box, p.out_box), p.bg_radius, p.invert)
        own = target.open(len(windows), p.out_box) if isinstance(target, _FileTarget) else None
        sink, offset = (own.target, 0) if own is not None else (target, index)
        try:
            for start in range(0, len(windows), step):
                stop = min(start + step, len(windows))
                out = buffer[: stop - start]
                _process_boxes(p, windows[start:stop], out, stats[start:stop], flip, standardizer, start)
                sink.write(offset + start, out, stats=stats[start:stop])
        except BaseException:
            if own is not None:
                own.abort()
            raise
        totals = combine_stats(stats)
        if own is not None:
            own.record(0, totals)
            own.close()
        return {"stats": list(totals)}
    except CryomapError as err:
        return {"error": err.message, "path": str(err.path or path)}


def _process_boxes(p: _Params, windows: list[np.ndarray], out: np.ndarray, stats: np.ndarray, flip,
                   standardizer, first: int) -> None:
    """Boxes → ``out`` (k, out_box, out_box): binned, phase-flipped (``flip``: a
    :class:`~cryomap.core.phase_flip.PhaseFlip` for particles ``first`` …), background-normalised
    (inverted) by ``standardizer`` (a :class:`~cryomap.core.images.Standardizer`), with each image's
    header statistics in ``stats`` (k, 4)."""
    from cryomap.core.images import image_stats
    from cryomap.core.threads import for_each_image

    sources = windows
    if p.out_box != p.box:
        from cryomap.core.fourier import resize_images  # imports torch: only when binning (~2 s of start-up)

        sources = resize_images(np.stack(windows), p.out_box)

    def one(k: int) -> None:
        src = sources[k]
        if flip is not None:
            flip.apply(first + k, src, out[k])
            src = out[k]
        standardizer.apply(src, out[k])
        stats[k] = image_stats(out[k])

    # micrographs already run INLINE_THREADS at a time: their particles then take one thread each
    for_each_image(one, len(out), 1 if INLINE_THREADS > 1 else None, p.out_box * p.out_box)


def _job_ctf(pj: "_Prepared"):
    """The kept particles' CTF of a job (RELION columns of its rows), for phase flipping at extraction."""
    from cryomap.core.ctf_params import ctf_params_from_table

    return ctf_params_from_table(pj.job.rows.loc[pj.kept].reset_index(drop=True))


def _file_apix(path: Path) -> float | None:
    from cryomap.io.micrograph import micrograph_info

    return micrograph_info(path).apix


# --------------------------------------------------------------------------- main entry

def extract_particles(
    source: str | Path,
    out_dir: str | Path,
    box: int | None = None,
    *,
    diameter: float | None = None,
    bin_factor: float = 1.0,
    invert: bool = False,
    edge: str = "skip",
    bg_radius: float | None = None,
    workers: int = 1,
    skip_bad: bool = False,
    apix: float | None = None,
    force: bool = False,
    progress: bool = True,
    stack_per_micrograph: bool = False,
    ctf: str | Path | None = None,
    phase_flip: bool = False,
    scheduler: str | None = None,
    resume: bool = False,
) -> ExtractResult:
    """Extract particles from a CryoPPP folder or a STAR file into ``out_dir``.

    Parameters (units): ``box`` px of the micrograph (even; default from ``diameter``, see module
    doc), ``diameter`` px, ``bin_factor`` ≥ 1 (Fourier crop), ``bg_radius`` px of the output box,
    ``apix`` Å/px of the micrographs (overrides headers). ``edge`` is ``"skip"`` or ``"pad"``.
    Writes ``particles.mrcs`` + ``particles.star`` atomically into ``out_dir`` (a folder that must
    not exist unless ``force``); with ``stack_per_micrograph`` one ``stacks/<stem>_particles.mrcs``
    per micrograph instead of ``particles.mrcs``. Raises :class:`BadInputError` for bad input,
    naming the file; a run that writes no particles is an error. ``ctf``: a ``micrographs_ctf.star``
    from ``cryomap ctf`` whose CTF (per-patch defocus where it has a model) replaces the particles'.
    ``phase_flip``: multiply each particle by the sign of its own CTF after binning, before the
    background normalisation (needs CTF columns; the STAR gets ``rlnCtfDataArePhaseFlipped = 1``).
    Micrographs are tasks (:class:`cryomap.tasks.TaskRunner`): ``workers`` > 1 starts a local Dask
    cluster, ``scheduler`` joins one; the output does not depend on either. ``resume`` continues a
    crashed run without redoing the micrographs it finished.
    """
    from cryomap.io.atomic import check_replaceable_dir, resumable_dir
    from cryomap.tasks import TaskRunner
    from cryomap.io.mrc import StackWriter
    from cryomap.io.star import format_image_name, write_star
    from cryomap.particles.boxes import EDGE_POLICIES
    from cryomap.progress import progress_bar

    t0 = time.perf_counter()
    clear_caches()
    source, out_dir = Path(source), Path(out_dir)
    if edge not in EDGE_POLICIES:
        raise BadInputError(f"edge policy must be one of {', '.join(EDGE_POLICIES)}, got {edge!r}", source)
    check_replaceable_dir(out_dir, force)
    if not source.exists():
        raise BadInputError("not found", source)
    notes: set[str] = set()
    skipped: list[tuple[str, str]] = []
    if source.is_dir():
        jobs, star_table = plan_folder(source, notes)
    elif source.suffix.lower() == ".star":
        jobs, star_table = plan_star(source, skip_bad, skipped)
    else:
        raise BadInputError("extract needs a CryoPPP dataset folder or a .star file", source)
    if ctf is not None:
        from cryomap.ctf_estimation.attach import attach_ctf

        per_patch = attach_ctf(jobs, ctf)
        notes.add(f"CTF from {Path(ctf).name}" + (", per-patch defocus" if per_patch else ""))

    if box is None:
        if diameter is None:
            diams = pd.concat([j.rows["diameter"] for j in jobs if "diameter" in j.rows], ignore_index=True) \
                if any("diameter" in j.rows for j in jobs) else pd.Series(dtype=float)
            diams = pd.to_numeric(diams, errors="coerce").dropna()
            if not len(diams):
                raise BadInputError("no particle diameter in the coordinates; give --box or --diameter", source)
            diameter = float(diams.median())
        box = default_box(diameter)
    box = int(box)
    if box <= 0 or box % 2:
        raise BadInputError(f"box must be a positive even number of pixels (RELION convention), got {box}", source)
    if bin_factor < 1:
        raise BadInputError(f"--bin must be ≥ 1 (downsampling only), got {bin_factor}", source)
    out_box = int(round(box / bin_factor))
    if out_box % 2 or out_box < 4:
        raise BadInputError(f"box {box} / bin {bin_factor} gives {out_box} px; choose a bin giving an even box ≥ 4", source)
    if bg_radius is None:
        bg_radius = 0.75 * out_box / 2
    if not 0 < bg_radius < out_box * math.sqrt(2) / 2:
        raise BadInputError(f"--bg-radius {bg_radius} px leaves no background in a {out_box} px box", source)
    params = _Params(box=box, out_box=out_box, edge=edge, bg_radius=float(bg_radius), invert=invert,
                     phase_flip=phase_flip)
    if phase_flip:
        from cryomap.core.ctf_params import missing_ctf_columns

        for job in jobs:
            missing = missing_ctf_columns(job.rows.columns)
            if missing or job.rows[[c for c in ("rlnDefocusU", "rlnVoltage") if c in job.rows]].isna().any().any():
                raise BadInputError("--phase-flip needs each particle's CTF, but the particles of "
                                    f"{job.name} lack {', '.join(missing) or 'CTF values'}; give --ctf or a STAR with CTF",
                                    source)

    # header pre-pass: shapes, coordinates inside, kept boxes -> exact place of every particle
    prepared: list[_Prepared] = []
    for job in jobs:
        try:
            prepared.append(_prepare(job, params))
        except CryomapError as err:
            if not skip_bad:
                raise
            skipped.append((job.name, err.message))
    # pixel size: --apix, else the micrograph headers (which must agree), else the STAR
    apix_known = True
    header_apix = [pj.apix for pj in prepared if pj.apix is not None]
    mic_apix = apix if apix is not None else (header_apix[0] if header_apix else star_pixel_size(star_table))
    if apix is None and header_apix:
        for pj in prepared:
            if pj.apix is not None and abs(pj.apix - mic_apix) > 1e-3 * mic_apix:
                raise BadInputError(
                    f"pixel size {pj.apix:g} Å/px differs from {mic_apix:g} Å/px of the other micrographs", pj.job.path)
    if mic_apix is None:
        mic_apix, apix_known = 1.0, False
    out_apix = mic_apix * box / out_box
    params.out_apix = out_apix
    n_total = 0
    for pj in prepared:
        pj.index = n_total
        n_total += int(pj.kept.sum())
    if n_total == 0:
        raise BadInputError(
            "no particles were written (every box left the micrograph or every micrograph was bad"
            + (": " + "; ".join(f"{n} ({w})" for n, w in skipped[:3]) if skipped else "") + ")", source)

    frames: list[pd.DataFrame] = []
    n_edge = n_padded = n_done_mics = n_written = 0
    signature = {"source": str(source.resolve()), "params": asdict(params), "per_micrograph": stack_per_micrograph,
                 "jobs": [[pj.job.name, pj.index, int(pj.kept.sum())] for pj in prepared], "ctf": str(ctf)}
    with resumable_dir(out_dir, signature, force=force, resume=resume) as (tmp_dir, journal):
        file_targets, stack_names = None, {}
        if stack_per_micrograph:
            (tmp_dir / "stacks").mkdir()
            file_targets, used = {}, set()
            for i, pj in enumerate(prepared):
                stem = Path(pj.job.name).stem
                stem = stem if stem not in used else f"{stem}_{i}"
                used.add(stem)
                stack_names[id(pj)] = f"stacks/{stem}_particles.mrcs"
                file_targets[id(pj)] = _FileTarget(tmp_dir / stack_names[id(pj)], out_apix)
            writer = None
        else:
            writer = StackWriter(tmp_dir / STACK_NAME, n=n_total, box=out_box, apix=out_apix, resume=resume)
            if not writer.resumed:
                journal.clear()
        target = writer.target if writer is not None else None

        def task_args(pj: _Prepared) -> tuple:
            t = file_targets[id(pj)] if file_targets is not None else target
            return (pj.job.path, pj.xi, pj.yi, t, pj.index, int(pj.kept.sum()), _job_ctf(pj) if phase_flip else None)

        def results():  # finished micrographs of a crashed run come from the journal, the rest are tasks
            todo = [k for k in range(len(prepared)) if str(k) not in journal.done]
            fresh = runner.map(extract_micrograph, (task_args(prepared[k]) for k in todo), context=params)
            for k in range(len(prepared)):
                res = journal.done.get(str(k))
                if res is None:
                    res = next(fresh)
                    journal.record(str(k), res)
                yield prepared[k], res

        with progress_bar() as bar, TaskRunner(workers, scheduler, threads=INLINE_THREADS) as runner:
            task = bar.add_task("extracting", total=len(prepared), visible=progress)
            for pj, res in results():
                bar.advance(task)
                if "error" in res:
                    if skip_bad:
                        skipped.append((pj.job.name, res["error"]))
                        continue
                    raise BadInputError(res["error"], res["path"])
                rows = _output_rows(pj, mic_apix)
                if writer is not None:
                    writer.record(pj.index, tuple(res["stats"]))
                    names = [format_image_name(n_written + 1 + k, STACK_NAME) for k in range(len(rows))]
                else:
                    names = [format_image_name(k + 1, stack_names[id(pj)]) for k in range(len(rows))]
                rows.insert(0, "rlnImageName", names)
                if edge == "pad":
                    rows["rlnCryomapEdgePadded"] = pj.padded[pj.kept].astype(np.int64)
                frames.append(rows)
                n_written += len(rows)
                n_edge += int((~pj.kept).sum())
                n_padded += int(pj.padded.sum())
                n_done_mics += 1
            if n_written == 0:
                raise BadInputError(
                    "no particles were written (every micrograph was bad: "
                    + "; ".join(f"{n} ({w})" for n, w in skipped[:3]) + ")", source)
        if writer is not None:
            writer.close()
        table = _finish_table(pd.concat(frames, ignore_index=True), mic_apix, out_apix, out_box, notes)
        if phase_flip:
            table["rlnCtfDataArePhaseFlipped"] = np.int64(1)
        write_star(tmp_dir / STAR_NAME, table)
    return ExtractResult(
        stack_path=out_dir / ("stacks" if stack_per_micrograph else STACK_NAME), star_path=out_dir / STAR_NAME, n_micrographs=n_done_mics,
        n_particles=int(len(table)), n_skipped_edge=n_edge, n_padded=n_padded, box=box, out_box=out_box,
        apix=out_apix, apix_known=apix_known, seconds=time.perf_counter() - t0,
        skipped_micrographs=skipped, notes=sorted(notes))


def _output_rows(pj: _Prepared, mic_apix: float) -> pd.DataFrame:
    """Metadata rows of the kept particles: integer centre, sub-pixel remainder moved into the origin."""
    kept = pj.kept
    src = pj.job.rows.loc[kept].reset_index(drop=True)
    x, y = src["x"].to_numpy(float), src["y"].to_numpy(float)
    xi, yi = pj.xi[kept].astype(float), pj.yi[kept].astype(float)
    out = src.drop(columns=[c for c in ("x", "y", "diameter") if c in src.columns])
    out.insert(0, "rlnMicrographName", pj.job.name)
    out.insert(0, "rlnCoordinateY", yi)
    out.insert(0, "rlnCoordinateX", xi)
    dx, dy = x - xi, y - yi
    if "rlnOriginXAngst" in out or np.any(dx != 0) or np.any(dy != 0):
        # RELION: particle centre (px) = coordinate - origin/apix; keep that centre exact.
        ox = out["rlnOriginXAngst"].to_numpy(float) if "rlnOriginXAngst" in out else np.zeros(len(out))
        oy = out["rlnOriginYAngst"].to_numpy(float) if "rlnOriginYAngst" in out else np.zeros(len(out))
        out["rlnOriginXAngst"] = ox - dx * mic_apix
        out["rlnOriginYAngst"] = oy - dy * mic_apix
    return out


def _finish_table(table: pd.DataFrame, mic_apix: float, out_apix: float, out_box: int, notes: set[str]) -> pd.DataFrame:
    """Drop carried columns left empty for some particles, add the optics columns."""
    empty = [c for c in table.columns if table[c].isna().any()]
    if empty:
        notes.add("dropped columns missing for some particles: " + ", ".join(empty))
        table = table.drop(columns=empty)
    if "rlnOpticsGroup" not in table:
        table["rlnOpticsGroup"] = np.int64(1)
    table["rlnOpticsGroup"] = table["rlnOpticsGroup"].astype(np.int64)
    table["rlnMicrographPixelSize"] = round(float(mic_apix), 6)
    table["rlnImagePixelSize"] = round(float(out_apix), 6)
    table["rlnImageSize"] = np.int64(out_box)
    table["rlnImageDimensionality"] = np.int64(2)
    return table
