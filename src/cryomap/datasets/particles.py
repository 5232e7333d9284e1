"""Lazy, picklable access to the particle images a RELION STAR file names (``N@stack.mrcs``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError
from cryomap.io.mrc import read_stack
from cryomap.io.star import image_locations, read_star


class ParticleImages:
    """The images of a STAR file's rows, in row order, read from memory-mapped stacks on demand.

    ``images[idx]`` (an int array) returns float32 (k, h, w). Stacks are opened lazily in each
    process, and the memory maps are not pickled, so the object can go to DataLoader workers.
    """

    def __init__(self, star_path: str | Path) -> None:
        self.star_path = Path(star_path)
        table = read_star(self.star_path)
        self.table = table
        self.pixel_size = table.pixel_size
        index, stacks = image_locations(table)
        self._index = index
        names = [str(s) for s in stacks]
        self._stack_paths = sorted(set(names))
        lookup = {p: i for i, p in enumerate(self._stack_paths)}
        self._stack_of_row = np.array([lookup[s] for s in names], dtype=np.int32)
        self._maps: dict[int, np.ndarray] | None = None
        for i, p in enumerate(self._stack_paths):
            if not Path(p).exists():
                raise BadInputError(f"particle stack named by {self.star_path.name} not found", p)
        first = self._open(0)
        self.shape = (len(self._index),) + tuple(first.shape[1:])
        for i in range(len(self._stack_paths)):
            rows = self._index[self._stack_of_row == i]
            if rows.size and (rows.min() < 0 or rows.max() >= len(self._open(i))):
                raise BadInputError(
                    f"{self.star_path.name} names image {rows.max() + 1} but the stack holds {len(self._open(i))}",
                    self._stack_paths[i],
                )
            if self._open(i).shape[1:] != first.shape[1:]:
                raise BadInputError("particle stacks of one target differ in image size", self._stack_paths[i])

    def _open(self, i: int) -> np.ndarray:
        if self._maps is None:
            self._maps = {}
        if i not in self._maps:
            self._maps[i] = read_stack(self._stack_paths[i], apix=self.pixel_size or 1.0).data
        return self._maps[i]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, idx) -> np.ndarray:
        rows = np.atleast_1d(np.arange(len(self))[idx])
        out = np.empty((len(rows),) + self.shape[1:], dtype=np.float32)
        stack_ids = self._stack_of_row[rows]
        for s in np.unique(stack_ids):
            sel = np.flatnonzero(stack_ids == s)
            out[sel] = self._open(int(s))[self._index[rows[sel]]]
        return out

    def absolute_image_names(self) -> list[str]:
        """``rlnImageName`` of every row with the stack path made absolute (1-based ``N@/abs/stack``)."""
        from cryomap.io.star import format_image_name

        return [format_image_name(int(i) + 1, self._stack_paths[s]) for i, s in zip(self._index, self._stack_of_row)]

    def write_subset_star(self, path: str | Path, rows: np.ndarray, force: bool = False) -> Path:
        """Write the STAR rows ``rows`` (0-based), image names made absolute, as RELION 3.1."""
        from cryomap.io.star import write_star

        df = self.table.particles.iloc[np.asarray(rows, dtype=np.int64)].copy()
        names = self.absolute_image_names()
        df["rlnImageName"] = [names[int(r)] for r in rows]
        return write_star(path, df.reset_index(drop=True), force=force)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = None
        return state
