"""Resource checks before work starts: refuse a request this machine cannot hold, with the numbers.

A ``labels --box 4000`` (a 4000³ float32 grid: 238 GiB) or ``simulate --micrograph-size 100000``
would otherwise run until numpy's ``MemoryError`` (or the kernel's OOM killer) stops it. The
estimates below are peak bytes per voxel or pixel measured on this code (``/usr/bin/time -v``
on box 128/256 and micrograph 1024/2048), rounded up; they need not be exact, only honest about
the order of magnitude.
"""

from __future__ import annotations

from cryomap.errors import CryomapError

#: Peak bytes per voxel of the label box (resampled map, boxed copy, normalisation, threshold).
LABEL_BYTES_PER_VOXEL = 12
#: Peak bytes per micrograph pixel while simulating one micrograph (signal, CTF'd ice, noise, layers).
MICROGRAPH_BYTES_PER_PIXEL = 48


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def human_bytes(n: float) -> str:
    """``1.5 GiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_memory(needed: int, what: str, option: str, *, available: int | None = None) -> None:
    """Raise :class:`CryomapError` when ``needed`` bytes exceed the memory available now.

    ``what`` says what needs it (``"a 4000³ label box"``), ``option`` which option to lower.
    """
    free = available_memory() if available is None else int(available)
    if needed > free:
        raise CryomapError(f"{option}: {what} needs about {human_bytes(needed)} of memory, and "
                           f"{human_bytes(free)} is available; choose a smaller {option}")


def check_label_box(box: int, *, available: int | None = None) -> None:
    """``labels --box``: refuse a box³ grid that cannot fit in memory."""
    check_memory(int(box) ** 3 * LABEL_BYTES_PER_VOXEL, f"a {int(box)}³ label box", "--box", available=available)


def check_micrograph_size(size: int, *, available: int | None = None) -> None:
    """``simulate --micrograph-size``: refuse a size² micrograph that cannot be simulated in memory."""
    check_memory(int(size) ** 2 * MICROGRAPH_BYTES_PER_PIXEL, f"a {int(size)} × {int(size)} px micrograph",
                 "--micrograph-size", available=available)
