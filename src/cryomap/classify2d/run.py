"""From a particle file to the classify2d output folder, with progress bars: what the command calls."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryomap.classify2d.em import Classify2DParams, Classify2DResult, classify
from cryomap.classify2d.output import ClassOutput, ranked, write_class_output
from cryomap.classify2d.rank import FRC_THRESHOLD, class_resolutions
from cryomap.particles.source import ParticleSource, open_particles


@dataclass
class Classify2DRun:
    """What :func:`classify_to_folder` did."""

    out_dir: Path
    n_particles: int
    n_classes: int
    kept: int
    resolution_A: np.ndarray  # ranked
    counts: np.ndarray  # ranked
    seconds: float

    def summary_line(self) -> str:
        best = self.resolution_A[0] if len(self.resolution_A) else float("nan")
        res = f"{best:.1f} Å" if np.isfinite(best) else "unknown resolution"
        return (f"classify2d: {self.n_particles} particles → {self.n_classes} classes, {self.kept} written to "
                f"{self.out_dir} (best class {res}, {int(self.counts[0])} particles) in {self.seconds:.0f} s")


class _Bars:
    """One rich progress task per stage label, advanced by the library's callback."""

    def __init__(self, bar) -> None:
        self.bar, self.tasks = bar, {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total)
        self.bar.advance(self.tasks[label], done)


def class_output(source: ParticleSource, res: Classify2DResult) -> ClassOutput:
    """The output record of a finished classification (resolution from its half-set averages)."""
    resolution, _ = class_resolutions(res.half_averages, res.half_counts, res.apix)
    info = {"params": res.params, "history": res.history, "seconds": round(res.seconds, 2),
            "frc_threshold": FRC_THRESHOLD, "mask_diameter_A": res.mask_diameter_A,
            "pixel_size_A": res.apix, "source": str(source.path) if source.path else None}
    return ClassOutput(res.averages, resolution, res.counts, res.apix, res.classes, res.psi_deg, res.origins_A,
                       res.max_prob, info=info)


def classify_to_folder(particles: str | Path | ParticleSource, out_dir: str | Path, params: Classify2DParams, *,
                       top: int | None = None, apix: float | None = None, force: bool = False,
                       progress: bool = True) -> Classify2DRun:
    """Classify a particle STAR/.mrcs/.cs (or a source) and write ``out_dir`` (see :mod:`cryomap.classify2d.output`)."""
    from cryomap.io.atomic import check_replaceable_dir
    from cryomap.progress import progress_bar

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    check_replaceable_dir(out_dir, force)  # refuse early, before hours of work
    source = particles if isinstance(particles, ParticleSource) else open_particles(particles, apix=apix)
    if top is not None and top < 1:
        from cryomap.errors import BadInputError

        raise BadInputError(f"--top must be at least 1, got {top}")
    with progress_bar(transient=not progress) as bar:
        res = classify(source, params, on_progress=_Bars(bar) if progress else None)
    out = class_output(source, res)
    write_class_output(out_dir, source, out, top=top, force=force)
    order, _ = ranked(out)
    kept = len(order) if top is None else min(top, len(order))
    return Classify2DRun(out_dir, len(source), params.n_classes, kept, out.resolution_A[order], out.counts[order],
                         time.perf_counter() - t0)
