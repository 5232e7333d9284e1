"""``run_preprocess``: a particle file through a chain of steps into a new stack and STAR.

IN (STAR / .mrcs / .cs) → OUT/particles.mrcs + OUT/particles.star (same rows, same order; the
steps' columns set, e.g. ``rlnCtfDataArePhaseFlipped``; ``rlnImageOriginalName`` says where each
image came from) + OUT/preprocess.json (the steps with every parameter, counts, timing). The STAR
also records the steps in a ``data_cryomap_preprocess`` block. Streams in chunks, so memory does
not grow with the stack. Images that are not finite are written as zeros and counted, never
propagated.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryomap.io.atomic import atomic_path
from cryomap.particles.source import open_particles
from cryomap.particles.writer import DEFAULT_CHUNK, WriteResult, write_particles
from cryomap.preprocess.chain import apply_chain, chain_spec, steps_table


@dataclass
class PreprocessResult:
    """What a preprocessing run wrote."""

    write: WriteResult
    steps: list[dict[str, Any]]
    apix: float
    box: int
    figures: list[Path]

    def summary_line(self) -> str:
        w = self.write
        names = " → ".join(s.get("key", s["step"]) for s in self.steps)
        n = w.n_particles
        line = (f"preprocessed {n:,} particle{'s' if n != 1 else ''} ({self.box} px, {self.apix:.4g} Å/px) "
                f"through {names} in {w.seconds:.1f} s ({n / max(w.seconds, 1e-9):,.0f} particles/s)")
        if w.n_nonfinite:
            line += f"; {w.n_nonfinite:,} non-finite image{'s' if w.n_nonfinite != 1 else ''} written as zeros"
        if w.n_constant:
            line += f"; {w.n_constant:,} constant image{'s' if w.n_constant != 1 else ''}"
        return line + f" → {w.out_dir}"


def run_preprocess(
    source_path: str | Path,
    out_dir: str | Path,
    steps: list[dict[str, Any]],
    *,
    apix: float | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    resume: bool = False,
    chunk: int = DEFAULT_CHUNK,
    force: bool = False,
    figure: bool = False,
    progress: bool = True,
) -> PreprocessResult:
    """Preprocess ``source_path`` through ``steps`` (see :mod:`cryomap.preprocess.chain`) into ``out_dir``.

    ``workers``/``scheduler``: where the chunks run (:class:`cryomap.tasks.TaskRunner`); ``resume``
    continues a crashed run. ``figure`` also writes the gallery and one-particle figures.
    """
    t0 = time.perf_counter()
    source = open_particles(source_path, apix=apix, nonfinite="zero")
    chained = apply_chain(source, steps)
    spec = chain_spec(chained)
    sidecar = {"input": str(Path(source_path).resolve()), "n_particles": len(source), "box": source.box,
               "pixel_size_A": source.pixel_size, "steps": spec}
    result = write_particles(chained, out_dir, force=force, chunk=chunk, workers=workers, scheduler=scheduler,
                             resume=resume, label="preprocessing",
                             progress=progress, sidecar=sidecar, star_blocks={"cryomap_preprocess": steps_table(spec)})
    sidecar.update(n_nonfinite=result.n_nonfinite, n_constant=result.n_constant,
                   seconds=round(time.perf_counter() - t0, 2))
    with atomic_path(result.out_dir / "preprocess.json", force=True) as tmp:  # now with the counts
        tmp.write_text(json.dumps(sidecar, indent=1, default=str))
    figures: list[Path] = []
    if figure:
        from cryomap.preprocess.figures import chain_figures

        figures = chain_figures(source, steps, result.out_dir)
    return PreprocessResult(result, spec, source.pixel_size, source.box, figures)
