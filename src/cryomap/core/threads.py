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


#: Environment variable that caps the threads per-image OpenCV kernels use (worker processes set it to 1).
IMAGE_THREADS_ENV = "CRYOMAP_IMAGE_THREADS"


def image_threads() -> int:
    """Threads for per-image kernels that release the GIL (OpenCV): ``$CRYOMAP_IMAGE_THREADS``, else the cores we may use."""
    import os

    env = os.environ.get(IMAGE_THREADS_ENV)
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: Pixels per image below which :func:`for_each_image` runs in one thread unless told otherwise.
#: Each image makes a dozen short OpenCV/numpy calls, and between them the threads hand the GIL
#: back and forth; measured on the 2-core machine (standardise → CLAHE → guided filter), two
#: threads ran 128² images at 0.7–0.9× the rate of one and 256² images at 1.2–1.4×.
THREADED_MIN_PIXELS = 160 * 160


def for_each_image(fn, n: int, threads: int | None = None, pixels: int | None = None) -> None:
    """Call ``fn(k)`` for k in 0..n−1, split into contiguous blocks over ``threads`` threads.

    For per-image kernels whose work happens in C with the GIL released (OpenCV's CLAHE and guided
    filter): one image at a time in Python leaves every other core idle, and a batched numpy
    version of the same filters is slower (measured: a NumPy/SciPy batched guided filter ran at
    a seventh of OpenCV's per-image rate). ``fn`` must write its own result (e.g. ``out[k] = ...``).
    ``threads`` None: :func:`image_threads`, or one when the images have fewer than
    :data:`THREADED_MIN_PIXELS` ``pixels`` each.
    """
    if threads is None:
        threads = 1 if pixels is not None and pixels < THREADED_MIN_PIXELS else image_threads()
    threads = max(1, int(threads))
    if threads == 1 or n < 2 * threads:
        for k in range(n):
            fn(k)
        return
    from concurrent.futures import ThreadPoolExecutor

    bounds = [(n * i // threads, n * (i + 1) // threads) for i in range(threads)]

    def block(b: tuple[int, int]) -> None:
        for k in range(*b):
            fn(k)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(block, bounds))
