"""What every preprocessing op shares: a typed batch function wrapped as a chainable op.

Each operation is two things: a plain function on a batch of images (N×H×W float32, explicit
parameters with units) that tests and other stages call directly, and an :class:`Op` that wraps
it for :meth:`cryomap.particles.source.ParticleSource.map`. An op has a ``key`` (its step name in a
chain, unique there), checks a source before work starts (:meth:`Op.check`), may set STAR columns
(:meth:`Op.update_table`) and describes its parameters for the records (:meth:`Op.describe`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cryomap.particles.source import BatchContext, ParticleSource


@dataclass
class Op:
    """Base of the preprocessing ops; subclasses set :attr:`step` and implement :meth:`apply`."""

    #: The step name in ``--steps`` and configs (e.g. ``"phase-flip"``).
    step: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.key = self.step

    def named(self, key: str) -> "Op":
        """The same op under another step key (to use an op twice in one chain)."""
        self.key = key
        return self

    def apply(self, images: np.ndarray, ctx: BatchContext) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, images: np.ndarray, ctx: BatchContext) -> np.ndarray:
        return self.apply(np.asarray(images, dtype=np.float32), ctx)

    def check(self, source: ParticleSource) -> None:
        """Raise :class:`~cryomap.errors.BadInputError` when ``source`` lacks what this op needs."""

    def update_table(self, table: pd.DataFrame) -> pd.DataFrame:
        """The table with the columns this op sets (unchanged by default)."""
        return table

    def describe(self) -> dict[str, Any]:
        """The op's parameters (JSON-ready), recorded in the STAR and the sidecar."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value
