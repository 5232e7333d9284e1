"""Temporarily set torch's intra-op thread count.

The simulation and reconstruction work is many small FFTs, interpolations and scatter-adds;
measured on the 2-core development machine under load, one thread ran them 2–3× faster than
two (threads spin and contend), so these functions default to one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous value; None leaves it alone."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
