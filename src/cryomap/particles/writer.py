"""The one writer of particle sources: a stack (``.mrcs``) and its RELION 3.1 STAR, streamed and atomic.

:func:`write_particles` reads a :class:`~cryomap.particles.source.ParticleSource` chunk by chunk
(its ops applied), writes every chunk straight into the output stack (positioned writes, so memory
does not grow with the stack) and writes ``particles.star`` with the same rows in the same order,
``rlnImageName`` pointing at the new stack. The output folder is built under a temporary name and
renamed when complete (with cryomap's output marker, so ``--force`` may later replace it).
:func:`write_subset_star` writes a STAR of some rows that points at the *existing* stacks (no
images copied), for selections.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from cryomap.particles.source import ParticleSource

STACK_NAME = "particles.mrcs"
STAR_NAME = "particles.star"
#: Rows per chunk: 256 images of 256² float32 are 64 MiB.
DEFAULT_CHUNK = 256


@dataclass
class WriteResult:
    """What :func:`write_particles` wrote."""

    out_dir: Path
    star_path: Path
    stack_path: Path
    n_particles: int
    n_nonfinite: int
    n_constant: int  # images that were constant as read (no information; written as the ops made them)
    seconds: float


def output_table(source: ParticleSource, stack_name: str = STACK_NAME) -> pd.DataFrame:
    """The STAR table of a source written as ``stack_name``: its rows, op columns, image names 1..n."""
    from cryomap.io.star import format_image_name

    tab = source.table.copy()
    n = len(tab)
    if "rlnImageName" in tab and "rlnImageOriginalName" not in tab and not any(
            s.startswith("<memory:") for s in map(str, source._images.stacks)):  # noqa: SLF001
        tab["rlnImageOriginalName"] = source.image_names()  # where each image came from
    tab["rlnImageName"] = [format_image_name(i + 1, stack_name) for i in range(n)]
    tab["rlnImagePixelSize"] = round(float(source.pixel_size), 6)
    tab["rlnImageSize"] = int(source.box)
    tab["rlnImageDimensionality"] = 2
    return tab


_WORKER_SOURCE: ParticleSource | None = None


def _init_worker(source: ParticleSource) -> None:
    """Worker start: one thread each (set before torch/numpy start their pools), the source kept."""
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CRYOMAP_IMAGE_THREADS"):
        os.environ[var] = "1"
    global _WORKER_SOURCE
    _WORKER_SOURCE = source
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _write_chunk(source: ParticleSource | None, start: int, stop: int, target) -> tuple[tuple, int, int]:
    """Read rows [start, stop) through the source's ops and write them at ``start``;
    (stats, non-finite count, constant count)."""
    src = source if source is not None else _WORKER_SOURCE
    assert src is not None
    images, bad, constant = src.read_flags(np.arange(start, stop))
    return target.write(start, images), int(bad.sum()), int(constant.sum())


def write_particles(
    source: ParticleSource,
    out_dir: str | Path,
    *,
    force: bool = False,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 1,
    label: str = "writing particles",
    progress: bool = True,
    sidecar: dict[str, Any] | None = None,
    sidecar_name: str = "preprocess.json",
    star_blocks: dict[str, pd.DataFrame] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> WriteResult:
    """Write ``source`` (ops applied) as ``out_dir/particles.mrcs`` + ``out_dir/particles.star``.

    Chunks of ``chunk`` rows are read, processed and written one at a time (``workers`` > 1: in
    that many processes, each writing its own chunks into the stack; the bytes do not depend on
    the number of workers). ``sidecar`` is written as JSON beside the STAR; ``star_blocks`` are
    extra STAR data blocks after the particles (e.g. the preprocessing steps). ``out_dir`` must not
    exist unless ``force`` (then only a folder cryomap wrote is replaced).
    """
    from cryomap.io.atomic import atomic_dir
    from cryomap.io.mrc import StackWriter
    from cryomap.io.star import write_star
    from cryomap.progress import progress_bar

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    n = len(source)
    if n == 0:
        from cryomap.errors import BadInputError

        raise BadInputError("no particles to write", source.path)
    bad_total = constant_total = 0
    with atomic_dir(out_dir, force=force) as tmp:
        writer = StackWriter(tmp / STACK_NAME, n=n, box=source.box, apix=source.pixel_size, force=True)
        try:
            bounds = [(s, min(s + chunk, n)) for s in range(0, n, max(1, int(chunk)))]
            with progress_bar(transient=not progress) as bar:
                task = bar.add_task(label, total=n, visible=progress)
                for (start, stop), (stats, bad, constant) in zip(bounds, _run(source, bounds, writer.target, workers)):
                    writer.record(start, stats)
                    bad_total += bad
                    constant_total += constant
                    bar.advance(task, stop - start)
                    if on_chunk is not None:
                        on_chunk(stop - start)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        write_star(tmp / STAR_NAME, output_table(source), force=True)
        if star_blocks:
            _append_blocks(tmp / STAR_NAME, star_blocks)
        if sidecar is not None:
            (tmp / sidecar_name).write_text(json.dumps(sidecar, indent=1, default=str))
    source.nonfinite_count += bad_total
    return WriteResult(out_dir, out_dir / STAR_NAME, out_dir / STACK_NAME, n, bad_total, constant_total,
                       time.perf_counter() - t0)


def _run(source: ParticleSource, bounds: list[tuple[int, int]], target, workers: int):
    """(stats, non-finite count, constant count) per chunk, in chunk order; a bounded window in flight."""
    if workers <= 1 or len(bounds) <= 1:
        for start, stop in bounds:
            yield _write_chunk(source, start, stop, target)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    window = 2 * workers
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(source,)) as pool:
        pending = []
        for start, stop in bounds:
            pending.append(pool.submit(_write_chunk, None, start, stop, target))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def _append_blocks(star_path: Path, blocks: dict[str, pd.DataFrame]) -> None:
    """Append data blocks to a STAR file (starfile formats them; RELION skips blocks it does not read)."""
    import tempfile

    import starfile

    with tempfile.TemporaryDirectory() as d:
        extra = Path(d) / "extra.star"
        starfile.write(blocks, extra, overwrite=True)
        with open(star_path, "a") as fh:
            fh.write("\n" + extra.read_text())


def write_subset_star(source: ParticleSource, path: str | Path, *, force: bool = False,
                      columns: dict[str, Any] | None = None) -> Path:
    """Write the rows of ``source`` as a RELION 3.1 STAR naming the existing stacks (absolute paths).

    The source must carry no ops (its images are the stored ones); use :func:`write_particles`
    to write processed images. ``columns`` adds (or replaces) per-row columns (name → values).
    """
    from cryomap.io.star import write_star

    if source.ops:
        raise ValueError("a source with ops has new images: write it with write_particles")
    tab = source.table.copy()
    tab["rlnImageName"] = source.image_names()
    for name, values in (columns or {}).items():
        tab[name] = np.asarray(values)
    return write_star(path, tab, force=force)
