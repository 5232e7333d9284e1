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


def _chunk_task(source: ParticleSource, start: int, stop: int, target) -> tuple[tuple, int, int]:
    """One task: read rows [start, stop) through the source's ops and write them at ``start`` in the stack.

    Returns (stats for :meth:`StackWriter.record`, non-finite count, constant count); runs inline or
    on a Dask worker (:class:`cryomap.tasks.TaskRunner`).
    """
    images, bad, constant = source.read_flags(np.arange(start, stop))
    source.release()  # unmap: the stack pages read so far would otherwise stay in this process's RSS
    return target.write(start, images), int(bad.sum()), int(constant.sum())


def write_particles(
    source: ParticleSource,
    out_dir: str | Path,
    *,
    force: bool = False,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 1,
    scheduler: str | None = None,
    resume: bool = False,
    label: str = "writing particles",
    progress: bool = True,
    sidecar: dict[str, Any] | None = None,
    sidecar_name: str = "preprocess.json",
    star_blocks: dict[str, pd.DataFrame] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> WriteResult:
    """Write ``source`` (ops applied) as ``out_dir/particles.mrcs`` + ``out_dir/particles.star``.

    Chunks of ``chunk`` rows are read, processed and written as tasks (:class:`cryomap.tasks.TaskRunner`):
    inline with ``workers=1``, on a local Dask cluster of ``workers`` processes, or on the cluster at
    ``scheduler``; each task writes its own chunk into the stack, so the bytes do not depend on the
    number of workers. A crashed run continues with ``resume`` (finished chunks are not redone).
    ``sidecar`` is written as JSON beside the STAR; ``star_blocks`` are extra STAR data blocks after
    the particles (e.g. the preprocessing steps). ``out_dir`` must not exist unless ``force`` (then
    only a folder cryomap wrote is replaced).
    """
    from cryomap.io.atomic import resumable_dir
    from cryomap.io.mrc import StackWriter
    from cryomap.io.star import write_star
    from cryomap.progress import progress_bar
    from cryomap.tasks import TaskRunner

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    n = len(source)
    if n == 0:
        from cryomap.errors import BadInputError

        raise BadInputError("no particles to write", source.path)
    chunk = max(1, int(chunk))
    signature = {"input": str(source.path), "n": n, "box": source.box, "apix": source.pixel_size, "chunk": chunk,
                 "ops": source.describe_ops(), "rows": _rows_digest(source)}
    bad_total = constant_total = 0
    with resumable_dir(out_dir, signature, force=force, resume=resume) as (tmp, journal):
        writer = StackWriter(tmp / STACK_NAME, n=n, box=source.box, apix=source.pixel_size, force=True, resume=resume)
        if not writer.resumed:
            journal.clear()
        bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        for start, stop in bounds:  # chunks a crashed run finished
            done = journal.done.get(str(start))
            if done is not None:
                stats, bad, constant = done
                writer.record(start, tuple(stats))
                bad_total, constant_total = bad_total + bad, constant_total + constant
        todo = [(s, e) for s, e in bounds if str(s) not in journal.done]
        with progress_bar(transient=not progress) as bar:
            task = bar.add_task(label, total=n, completed=n - sum(e - s for s, e in todo), visible=progress)
            with TaskRunner(workers, scheduler) as runner:
                results = runner.map(_chunk_task, [(s, e, writer.target) for s, e in todo], context=source)
                for (start, stop), (stats, bad, constant) in zip(todo, results):
                    writer.record(start, stats)
                    journal.record(str(start), [list(stats), bad, constant])
                    bad_total += bad
                    constant_total += constant
                    bar.advance(task, stop - start)
                    if on_chunk is not None:
                        on_chunk(stop - start)
        writer.close()
        write_star(tmp / STAR_NAME, output_table(source), force=True)
        if star_blocks:
            _append_blocks(tmp / STAR_NAME, star_blocks)
        if sidecar is not None:
            (tmp / sidecar_name).write_text(json.dumps(sidecar, indent=1, default=str))
    source.nonfinite_count += bad_total
    return WriteResult(out_dir, out_dir / STAR_NAME, out_dir / STACK_NAME, n, bad_total, constant_total,
                       time.perf_counter() - t0)


def _rows_digest(source: ParticleSource) -> str:
    """A digest of which images the rows name (so a resumed run writes the same particles)."""
    import hashlib

    h = hashlib.sha1()
    h.update(np.ascontiguousarray(source._images.index).tobytes())  # noqa: SLF001
    h.update(np.ascontiguousarray(source._images.stack_of_row).tobytes())  # noqa: SLF001
    h.update("\n".join(map(str, source._images.stacks)).encode())  # noqa: SLF001
    return h.hexdigest()


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
