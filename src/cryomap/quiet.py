"""Library warnings and banners that would only clutter a command's output, filtered by message.

:func:`quiet_libraries` is called by ``cryomap.cli.main`` and by every task a worker process runs
(:mod:`cryomap.tasks`), so worker processes stay as quiet as the command.
"""

from __future__ import annotations

import logging
import warnings


class _DropBanners(logging.Filter):
    """Lightning's INFO banners ("GPU available: False, used: False", "TPU available", "`Trainer.fit`
    stopped: `max_steps` reached") describe the machine, not the run; cryomap's own summary line says
    what was used. Warnings and errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


#: Warnings that say nothing the user can act on; each filtered by message (and category), not blindly.
_QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # numpy floating-point notices: a NaN/inf they announce is refused by the finite checks where it
    # would matter (readers, the particle source, writers), with one line naming the file
    (r"(invalid value|divide by zero|overflow|underflow) encountered", RuntimeWarning),
    (r"Mean of empty slice", RuntimeWarning),
    (r"Degrees of freedom <= 0", RuntimeWarning),
    # mrcfile's permissive reads: the reader turns a broken header into one error line
    (r"(Unrecognised machine stamp|Map ID string|Data array contains NaN|Unrecognised mode|"
     r"Expected \d+ bytes|Unexpected data block|Mode .* not supported|Header .* invalid)", RuntimeWarning),
    # Lightning's advice about loaders and logging intervals, which cryomap's defaults choose on purpose
    (r".*does not have many workers", UserWarning),
    (r".*smaller than the logging interval", UserWarning),
    # a run shorter than one validation interval: best.ckpt falls back to the last weights, which the
    # run folder's model.safetensors holds anyway
    (r".*could not find the monitored key in the returned metrics", UserWarning),
    # a dataset without a validation split (by design: val_fraction 0) gives Lightning an empty val loader
    (r".*Total length of .* across ranks is zero", UserWarning),
    (r".*isinstance\(treespec, LeafSpec\).*", Warning),
    # `cryomap train --resume` reopens its own run folder on purpose: the checkpoints stay and the CSV
    # rows logged before the checkpoint are merged back (cryomap.train.run._merge_csv_log)
    (r"Experiment logs directory .* exists and is not empty", UserWarning),
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
)


def quiet_libraries() -> None:
    """Keep :data:`_QUIET_WARNINGS` and Lightning's banners off the terminal (called by :func:`main`)."""
    for message, category in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.distributed"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBanners) for f in logger.filters):
            logger.addFilter(_DropBanners())


