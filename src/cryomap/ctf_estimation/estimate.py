"""``estimate_ctf``: the CTF of every micrograph of a folder or STAR file → ``micrographs_ctf.star`` + pictures.

Sources: a CryoPPP folder (:func:`cryomap.io.cryoppp.discover`; MRC preferred over JPEG), a flat
folder of micrographs, a STAR file naming micrographs (``rlnMicrographName``; a micrograph STAR
or a particle STAR, one row per micrograph is kept), or one micrograph file.

Optics: ``--voltage`` / ``--cs`` / ``--amplitude-contrast`` / ``--apix`` win; else the STAR's
values (``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``,
``rlnMicrographPixelSize``); the pixel size otherwise from the micrograph header. Without any pixel
size the run stops (one line); missing voltage, Cs or amplitude contrast take 300 kV, 2.7 mm and
0.1, and the summary says so. 8-bit JPEG/PNG micrographs are refused unless ``allow_8bit``: they
are contrast-stretched previews whose Thon rings are not linear in the recorded dose.

Everything is checked (headers, sizes, pixel sizes, 8-bit files) before anything is written; the
output folder is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryomap.errors import BadInputError, CryomapError

STAR_NAME = "micrographs_ctf.star"
DEFAULT_OPTICS = {"voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.1}
_STAR_OPTICS = {"voltage": "rlnVoltage", "cs": "rlnSphericalAberration", "amplitude_contrast": "rlnAmplitudeContrast"}


@dataclass
class MicrographTask:
    """One micrograph to fit: its file, the name written to ``rlnMicrographName``, a unique file stem, its optics."""

    path: Path
    name: str
    stem: str
    voltage: float
    cs: float
    amplitude_contrast: float
    apix: float


@dataclass
class CtfRunResult:
    """What a CTF run wrote."""

    star_path: Path
    table: pd.DataFrame
    seconds: float
    patches: bool
    warnings: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        from cryomap.progress import counted

        t = self.table
        mean = (t.rlnDefocusU + t.rlnDefocusV) / 2
        line = (f"fitted the CTF of {counted(len(t), 'micrograph')} in {self.seconds:.1f} s: median defocus {mean.median():.0f} Å "
                f"({mean.min():.0f}–{mean.max():.0f}), median astigmatism {(t.rlnDefocusU - t.rlnDefocusV).median():.0f} Å, "
                f"median FOM {t.rlnCtfFigureOfMerit.median():.3f}, rings fitted to {t.rlnCtfMaxResolution.median():.1f} Å")
        if self.patches:
            line += "; per-patch defocus models written"
        if self.warnings:
            shown = "; ".join(f"{n} ({w})" for n, w in self.warnings[:3])
            more = f" and {len(self.warnings) - 3} more" if len(self.warnings) > 3 else ""
            line += f"; WARNING {len(self.warnings)} unreliable fit(s): {shown}{more}"
        for note in self.notes:
            line += f"; {note}"
        return line + f" → {self.star_path.parent}"


# --------------------------------------------------------------------------- planning

def is_8bit_image(path: Path) -> bool:
    """True for a JPEG, or a PNG stored with 8 bits per channel (contrast-stretched previews)."""
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return True
    if suffix == ".png":
        from PIL import Image

        try:
            with Image.open(path) as im:
                return im.mode in ("1", "L", "P", "LA", "RGB", "RGBA")
        except Exception as exc:
            raise BadInputError(f"not a readable image ({exc})", path) from exc
    return False


def _first(rows: pd.DataFrame | None, column: str) -> float | None:
    if rows is None or column not in rows or not len(rows):
        return None
    v = pd.to_numeric(rows[column], errors="coerce").dropna()
    return float(v.iloc[0]) if len(v) else None


def _listing(source: Path) -> tuple[list[tuple[Path, str, pd.DataFrame | None]], Path | None]:
    """(micrograph path, name to write, its STAR rows or None) for every micrograph of ``source``."""
    from cryomap.io.micrograph import MICROGRAPH_SUFFIXES

    if source.is_dir():
        from cryomap.io.cryoppp import discover

        ds = discover(source)
        out = []
        for e in ds.entries:
            if e.micrograph is None:
                continue
            try:
                name = str(e.micrograph.relative_to(source))
            except ValueError:
                name = str(e.micrograph)
            out.append((e.micrograph, name, e.star_rows))
        return out, ds.star_path
    if source.suffix.lower() == ".star":
        from cryomap.io.star import read_star
        from cryomap.particles.plan import resolve_micrograph

        table = read_star(source).particles
        if "rlnMicrographName" not in table:
            raise BadInputError("STAR file has no rlnMicrographName column naming micrographs", source)
        out = []
        for name, rows in table.groupby("rlnMicrographName", sort=False):
            path = resolve_micrograph(str(name), source)
            if path is None:
                raise BadInputError(f"micrograph {name} named in the STAR file is not on disk", source)
            out.append((path, str(name), rows))
        if not out:
            raise BadInputError("STAR file names no micrographs", source)
        return out, source
    if source.suffix.lower() in MICROGRAPH_SUFFIXES:
        return [(source, str(source), None)], None
    raise BadInputError("ctf needs a CryoPPP folder, a folder of micrographs, a micrograph STAR or a micrograph file", source)


def plan_tasks(source: str | Path, *, tile: int, apix: float | None = None, voltage: float | None = None,
               cs: float | None = None, amplitude_contrast: float | None = None,
               allow_8bit: bool = False) -> tuple[list[MicrographTask], list[str]]:
    """Check every micrograph's header and optics; return the tasks and notes for the summary (nothing written)."""
    from cryomap.io.micrograph import micrograph_info
    from cryomap.particles.plan import clear_caches, star_pixel_size

    clear_caches()
    source = Path(source)
    if not source.exists():
        raise BadInputError("not found", source)
    listing, _ = _listing(source)
    flags = {"voltage": voltage, "cs": cs, "amplitude_contrast": amplitude_contrast}
    defaulted: set[str] = set()
    tasks, stems = [], set()
    for path, name, rows in listing:
        if is_8bit_image(path) and not allow_8bit:
            raise BadInputError(
                "an 8-bit JPEG/PNG micrograph is a contrast-enhanced preview whose Thon rings are not linear in the dose; "
                "fit the MRC/TIFF micrograph, or pass --allow-8bit to fit it anyway", path)
        info = micrograph_info(path)
        rows_px, cols_px = info.shape
        if rows_px < tile or cols_px < tile:
            raise BadInputError(f"micrograph of {cols_px}x{rows_px} px is smaller than the {tile} px tile; use a smaller --tile",
                                path)
        px = apix if apix is not None else (info.apix if info.apix is not None else star_pixel_size(rows))
        if px is None or not px > 0:
            raise BadInputError("no pixel size: the file carries none and no STAR gives rlnMicrographPixelSize; "
                                "give --apix (Å/px)", path)
        values = {}
        for key, flag in flags.items():
            v = flag if flag is not None else _first(rows, _STAR_OPTICS[key])
            if v is None:
                v = DEFAULT_OPTICS[key]
                defaulted.add(key)
            values[key] = float(v)
        stem, k = Path(name).stem, 2
        while stem in stems:
            stem, k = f"{Path(name).stem}_{k}", k + 1
        stems.add(stem)
        tasks.append(MicrographTask(path, name, stem, apix=float(px), **values))
    notes = []
    if defaulted:
        order = [k for k in ("voltage", "cs", "amplitude_contrast") if k in defaulted]
        names = {"voltage": "voltage", "cs": "Cs", "amplitude_contrast": "amplitude contrast"}
        units = {"voltage": "300 kV", "cs": "Cs 2.7 mm", "amplitude_contrast": "amplitude contrast 0.1"}
        notes.append("no " + ", ".join(names[k] for k in order) + " given: assumed " + ", ".join(units[k] for k in order))
    return tasks, notes


# --------------------------------------------------------------------------- one micrograph

def estimate_micrograph(task: MicrographTask, settings, tile: int, patches: tuple[int, int] | None, degree: int,
                        out_dir: Path | None, threads: int | None = None) -> dict:
    """Fit one micrograph; write its PNG and patch table under ``out_dir`` (when given); return its STAR row.

    Runs in a worker process too: returns a picklable dict, ``{"row": ..., "warnings": [...]}``
    or ``{"error": message, "path": file}`` for bad input.
    """
    import torch

    from cryomap.ctf_estimation.fit import fit_spectrum
    from cryomap.ctf_estimation.model import Optics, check_against_core
    from cryomap.ctf_estimation.patches import fit_patches
    from cryomap.ctf_estimation.power_spectrum import average_spectra
    from cryomap.io.micrograph import read_micrograph

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        optics = Optics(task.voltage, task.cs, task.amplitude_contrast, task.apix)
        check_against_core(optics)
        mic = read_micrograph(task.path, apix=task.apix, mmap=True)
        spectra = average_spectra(mic.data, task.apix, tile, patches=patches, path=task.path)
        del mic
        fit, fitter = fit_spectrum(spectra.total, optics, settings, keep_diagnostics=out_dir is not None)
        row = {
            "rlnMicrographName": task.name,
            "rlnDefocusU": round(fit.defocus_u, 2), "rlnDefocusV": round(fit.defocus_v, 2),
            "rlnDefocusAngle": round(fit.angle, 3), "rlnCtfAstigmatism": round(fit.astigmatism, 2),
            "rlnCtfFigureOfMerit": round(fit.fom, 5), "rlnCtfMaxResolution": round(fit.max_resolution, 3),
        }
        if settings.phase_shift:
            row["rlnPhaseShift"] = round(fit.phase_shift, 3)
        row["rlnCryomapCtfAtSearchEdge"] = int(fit.at_search_edge)
        warnings = list(fit.warnings)
        if patches is not None:
            pr = fit_patches(fitter, fit, spectra, degree=degree)
            row["rlnCryomapDefocusModel"] = pr.model.to_string()
            row["rlnCryomapPatchTable"] = f"patches/{task.stem}.star"
            if out_dir is not None:
                from cryomap.io.star import write_star

                write_star(out_dir / "patches" / f"{task.stem}.star", pr.table, block="patches")
        if out_dir is not None:
            from cryomap.ctf_estimation.diagnostics import write_diagnostic_png

            write_diagnostic_png(out_dir / "diagnostics" / f"{task.stem}.png", fit, title=task.name)
        return {"row": row, "warnings": warnings}
    except CryomapError as err:
        return {"error": err.message, "path": str(err.path or task.path)}


def _run(tasks, settings, tile, patches, degree, out_dir, workers):
    args = lambda t: (t, settings, tile, patches, degree, out_dir)  # noqa: E731
    if workers <= 1:
        from cryomap.core.threads import torch_threads

        # one thread: the work is many mid-sized FFTs and element-wise passes, which ran 2-4x
        # slower with two threads on the shared 2-core machine; --workers scales out instead
        with torch_threads(1):
            for t in tasks:
                yield t, estimate_micrograph(*args(t))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    window = 2 * workers
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
        pending: list[tuple[MicrographTask, Future]] = []
        for t in tasks:
            pending.append((t, pool.submit(estimate_micrograph, *args(t), 1)))
            if len(pending) >= window:
                done, fut = pending.pop(0)
                yield done, fut.result()
        for done, fut in pending:
            yield done, fut.result()


def _worker_init() -> None:
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


# --------------------------------------------------------------------------- the run

def estimate_ctf(
    source: str | Path,
    out_dir: str | Path,
    *,
    patches: tuple[int, int] | None = None,
    defocus_range: tuple[float, float] = (5000.0, 50000.0),
    resolution: tuple[float, float] = (30.0, 5.0),
    tile: int = 512,
    workers: int = 1,
    voltage: float | None = None,
    cs: float | None = None,
    amplitude_contrast: float | None = None,
    apix: float | None = None,
    phase_shift: bool = False,
    max_astigmatism: float = 3000.0,
    patch_degree: int = 1,
    allow_8bit: bool = False,
    force: bool = False,
    progress: bool = True,
) -> CtfRunResult:
    """Fit the CTF of every micrograph of ``source``; write ``out_dir/micrographs_ctf.star`` and pictures.

    ``patches`` ``(ny, nx)``: also fit a defocus per patch of a ny × nx grid and smooth it with a
    polynomial of ``patch_degree`` (written to ``out_dir/patches/<stem>.star`` and as
    ``rlnCryomapDefocusModel``). ``defocus_range`` (min, max) Å of the mean defocus,
    ``resolution`` (low, high) Å of the fit band, ``tile`` px (even), ``max_astigmatism`` Å
    (U − V), voltage kV, Cs mm, ``apix`` Å/px. Raises :class:`BadInputError` (one line naming the
    file) for bad input; nothing is left half-written.
    """
    from cryomap.ctf_estimation.fit import FitSettings
    from cryomap.io.atomic import atomic_dir, check_replaceable_dir
    from cryomap.io.star import write_star
    from cryomap.progress import progress_bar

    t0 = time.perf_counter()
    source, out_dir = Path(source), Path(out_dir)
    lo, hi = defocus_range
    if not 0 < lo < hi:
        raise BadInputError(f"--defocus needs 0 < MIN < MAX (Å), got {lo:g} {hi:g}", source)
    low, high = resolution
    if not low > high > 0:
        raise BadInputError(f"--resolution needs LOW > HIGH > 0 (Å), got {low:g} {high:g}", source)
    if tile < 64 or tile % 2:
        raise BadInputError(f"--tile must be an even number of pixels ≥ 64, got {tile}", source)
    if patches is not None and (patches[0] < 1 or patches[1] < 1 or patches[0] * patches[1] < 2):
        raise BadInputError(f"--patches needs at least two patches, got {patches[1]}x{patches[0]}", source)
    if patch_degree not in (0, 1, 2):
        raise BadInputError(f"the patch model degree must be 0, 1 or 2, got {patch_degree}", source)
    if not max_astigmatism > 0:
        raise BadInputError(f"the astigmatism bound must be positive, got {max_astigmatism:g} Å", source)
    check_replaceable_dir(out_dir, force)
    tasks, notes = plan_tasks(source, tile=tile, apix=apix, voltage=voltage, cs=cs,
                              amplitude_contrast=amplitude_contrast, allow_8bit=allow_8bit)
    for t in tasks:
        nyq_res = 2.0 * t.apix
        if 1.0 / min(1.0 / high, 0.96 / nyq_res) * 1.5 > low:
            raise BadInputError(f"fit band {low:g}–{high:g} Å is too narrow at {t.apix:g} Å/px "
                                f"(Nyquist {nyq_res:g} Å); widen --resolution", t.path)
        if patches is not None:
            from cryomap.io.micrograph import micrograph_info

            rows, cols = micrograph_info(t.path).shape
            if rows / patches[0] < tile / 2 or cols / patches[1] < tile / 2:
                raise BadInputError(f"--patches {patches[1]}x{patches[0]} makes patches smaller than half a {tile} px tile "
                                    f"in a {cols}x{rows} px micrograph; use fewer patches or a smaller --tile", t.path)
    settings = FitSettings(defocus_range=(float(lo), float(hi)), resolution=(float(low), float(high)),
                           max_astigmatism=float(max_astigmatism), phase_shift=bool(phase_shift))
    rows_out, warnings = [], []
    with atomic_dir(out_dir, force=force) as tmp:
        (tmp / "diagnostics").mkdir()
        if patches is not None:
            (tmp / "patches").mkdir()
        with progress_bar() as bar:
            task_id = bar.add_task("fitting CTF", total=len(tasks), visible=progress)
            for t, res in _run(tasks, settings, tile, patches, patch_degree, tmp, max(1, int(workers))):
                bar.advance(task_id)
                if "error" in res:
                    raise BadInputError(res["error"], res["path"])
                rows_out.append({**res["row"], **_optics_columns(t)})
                if res["warnings"]:
                    warnings.append((t.name, "; ".join(res["warnings"])))
        table = _with_optics_groups(pd.DataFrame(rows_out))
        write_star(tmp / STAR_NAME, table, block="micrographs")
    return CtfRunResult(out_dir / STAR_NAME, table, time.perf_counter() - t0, patches is not None, warnings, notes)


def _optics_columns(t: MicrographTask) -> dict:
    return {"rlnVoltage": t.voltage, "rlnSphericalAberration": t.cs, "rlnAmplitudeContrast": t.amplitude_contrast,
            "rlnMicrographPixelSize": round(t.apix, 6), "rlnMicrographOriginalPixelSize": round(t.apix, 6)}


def _with_optics_groups(table: pd.DataFrame) -> pd.DataFrame:
    """One optics group per distinct (voltage, Cs, amplitude contrast, pixel size)."""
    keys = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMicrographPixelSize"]
    groups = table.groupby(keys, sort=False).ngroup().to_numpy() + 1
    table = table.copy()
    table["rlnOpticsGroup"] = groups.astype(np.int64)
    table["rlnOpticsGroupName"] = [f"opticsGroup{g}" for g in groups]
    return table
