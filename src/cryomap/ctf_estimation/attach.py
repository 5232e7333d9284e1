"""Attach an estimated CTF (``micrographs_ctf.star``) to particles: per patch model where there is one.

``EstimatedCtf.load(path)`` reads the table ``cryomap ctf`` wrote; ``columns_for(name, x, y)``
gives the RELION CTF columns for particles of micrograph ``name`` at pixel coordinates (x =
column, y = row): with a per-patch model (``rlnCryomapDefocusModel``, see
:mod:`cryomap.ctf_estimation.patches`) each particle's mean defocus comes from the model at its
position, else every particle takes the micrograph's values. Micrographs are matched by
:func:`cryomap.io.cryoppp.micrograph_key` (folders, suffix and cryoSPARC UID prefixes dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryomap.errors import BadInputError

#: Columns set on every particle (those present in the CTF table).
PARTICLE_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnVoltage",
                    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnCtfFigureOfMerit", "rlnCtfMaxResolution")


@dataclass
class EstimatedCtf:
    """An estimated CTF table by micrograph key."""

    path: Path
    rows: dict[str, pd.Series]

    @classmethod
    def load(cls, path: str | Path) -> "EstimatedCtf":
        from cryomap.io.cryoppp import micrograph_key
        from cryomap.io.star import read_star

        path = Path(path)
        table = read_star(path).particles
        need = {"rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                "rlnSphericalAberration"}
        missing = sorted(need - set(table.columns))
        if missing:
            raise BadInputError(f"not a CTF table: lacks {', '.join(missing)} (write one with `cryomap ctf`)", path)
        rows = {}
        for _, row in table.iterrows():
            rows[micrograph_key(row["rlnMicrographName"])] = row
        return cls(path, rows)

    def columns_for(self, name: str, x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
        """CTF columns (one row per particle) for micrograph ``name`` at (x, y) px; BadInputError if the table lacks it."""
        from cryomap.ctf_estimation.patches import DefocusModel
        from cryomap.io.cryoppp import micrograph_key

        row = self.rows.get(micrograph_key(name))
        if row is None:
            raise BadInputError(f"has no CTF for micrograph {name}", self.path)
        n = len(x)
        out = {c: np.full(n, float(row[c])) for c in PARTICLE_COLUMNS if c in row.index and pd.notna(row[c])}
        model_text = row.get("rlnCryomapDefocusModel") if "rlnCryomapDefocusModel" in row.index else None
        if model_text is not None and pd.notna(model_text) and str(model_text).strip():
            half = (float(row["rlnDefocusU"]) - float(row["rlnDefocusV"])) / 2.0
            model = DefocusModel.from_string(str(model_text), half, float(row["rlnDefocusAngle"]))
            u, v, _ = model.ctf_at(np.asarray(x, float), np.asarray(y, float))
            out["rlnDefocusU"], out["rlnDefocusV"] = np.round(u, 2), np.round(v, 2)
        return pd.DataFrame(out)


def attach_ctf(jobs, ctf_path: str | Path) -> int:
    """Set the CTF columns of every extraction job's rows (``x``, ``y`` px) from ``ctf_path``; return how many
    particles got a per-patch defocus. Existing CTF columns are replaced."""
    ctf = EstimatedCtf.load(ctf_path)
    n_patch = 0
    for job in jobs:
        cols = ctf.columns_for(job.name, job.rows["x"].to_numpy(float), job.rows["y"].to_numpy(float))
        if "rlnDefocusU" not in cols:
            continue
        for c in cols.columns:
            job.rows[c] = cols[c].to_numpy()
        row = ctf.rows[_key(job.name)]
        if "rlnCryomapDefocusModel" in row.index and pd.notna(row["rlnCryomapDefocusModel"]):
            n_patch += len(cols)
    return n_patch


def _key(name: str) -> str:
    from cryomap.io.cryoppp import micrograph_key

    return micrograph_key(name)
