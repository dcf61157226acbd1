"""Memory estimates, made before anything large is allocated.

A prediction holds the training kernel (``R x R`` float64, ``R = N`` for a
traced kernel and ``N K`` for a full one), the test-train kernel, and the
state ``(Q + 1) x R x C`` (agents plus the centralised reference, ``C``
columns: outputs times learning rates), plus a few temporaries of the
state's size.  :func:`ensure_fits` compares the estimate with the memory
available and raises :class:`ProblemTooLargeError` naming what would fit.
"""

from __future__ import annotations

import os

GB = 1024.0**3


class ProblemTooLargeError(MemoryError):
    """The problem would not fit in memory (raised before allocating)."""


def available_memory_bytes() -> int:
    """Bytes of memory usable by this process.

    ``NTKDYN_MEMORY_LIMIT`` (bytes, or with a suffix: ``"8GB"``, ``"512MB"``)
    overrides the detected value; otherwise ``MemAvailable`` from
    ``/proc/meminfo`` or, failing that, the physical memory.
    """
    env = os.environ.get("NTKDYN_MEMORY_LIMIT")
    if env:
        return parse_bytes(env)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return int(8 * GB)


def parse_bytes(text: str | int | float) -> int:
    """Parse ``"8GB"``, ``"512 MB"``, ``"1.5e9"`` or a number into bytes."""
    if isinstance(text, int | float):
        return int(text)
    s = text.strip().upper().replace(" ", "")
    for suffix, factor in (("GB", GB), ("G", GB), ("MB", 1024**2), ("M", 1024**2),
                           ("KB", 1024), ("K", 1024), ("B", 1)):
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * factor)
    return int(float(s))


def format_bytes(n: float) -> str:
    """Human-readable size (binary units)."""
    for unit, factor in (("GB", GB), ("MB", 1024**2), ("KB", 1024)):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{int(n)} B"


def prediction_bytes(
    n_train: int,
    n_test: int,
    outputs: int,
    agents: int,
    *,
    traced: bool = True,
    rates: int = 1,
    records: int = 100,
    record_outputs: bool = False,
    itemsize: int = 8,
) -> int:
    """Estimated peak bytes of one kernel-space prediction.

    kernel ``R^2`` + test kernel ``R_test R`` (``R = N`` traced, ``N K`` full)
    + state and ~6 temporaries ``7 (Q+1) R C`` + per-record products
    ``(Q+1) C (R + R_test)`` + recorded outputs if asked.
    """
    rows = n_train * (1 if traced else outputs)
    rows_test = n_test * (1 if traced else outputs)
    cols = rates * (outputs if traced else 1)
    b = rows * rows + rows_test * rows
    b += 7 * (agents + 1) * rows * cols
    b += 2 * (agents + 1) * cols * (rows + rows_test)
    if record_outputs:
        b += records * (agents + 1) * rates * (n_train + n_test) * outputs
    return int(b * itemsize)


def ensure_fits(needed: int, what: str, suggestions: str = "", limit: int | None = None) -> None:
    """Raise :class:`ProblemTooLargeError` if ``needed`` bytes exceed the memory available."""
    avail = available_memory_bytes() if limit is None else int(limit)
    if needed > avail:
        msg = (
            f"{what} needs about {format_bytes(needed)} but only {format_bytes(avail)} is "
            "available (set NTKDYN_MEMORY_LIMIT to override the detected value)"
        )
        if suggestions:
            msg += f"; {suggestions}"
        raise ProblemTooLargeError(msg)
