"""Keep the process's compiled code under the kernel's limit on memory mappings.

Every program XLA compiles for the CPU maps its code sections into the process, and JAX
keeps every compiled program for reuse.  Linux caps the mappings of one process
(``vm.max_map_count``, 65,530 by default); once they run out, LLVM aborts the whole process
(``LLVM ERROR: Unable to allocate section memory``), which no Python handler can catch.
Measured (2026-12-01, jax 0.10, 2-core CPU): a kernel-space prediction with shapes not seen
before left about 150 more mappings (``solver.evolve``, ATC, 4 agents); a loop of random
small predictions (every schedule, test sets, three variants of each) aborted after 114
runs in one process.  A notebook or script sweeping data sizes, agents or topologies
compiles a new program per configuration and would end the same way.

:func:`bound_compiled_code`, called by the engine before each run compiles
(:func:`ntkdyn.engine.padded_chunks`), drops JAX's compiled programs
(:func:`jax.clear_caches`) when the process holds more than :data:`MAP_FRACTION` of its
limit.  Programs still needed are compiled again on their next call (a few seconds, once per
several hundred runs); results do not change.  Where ``/proc`` is absent (not Linux) it does
nothing.  Counting costs the kernel about 1.4 us per mapping (27 ms at 20,000, measured), so
the count is taken at most once per :data:`CHECK_INTERVAL_S`: each new program takes tens of
milliseconds or more to compile, so a second adds far fewer mappings than the half of the
limit left free.
"""

from __future__ import annotations

import time
from pathlib import Path

#: clear JAX's caches above this fraction of ``vm.max_map_count`` (half leaves room for the
#: run about to compile and for allocators that map memory themselves)
MAP_FRACTION = 0.5
#: the kernel's default ``vm.max_map_count``, used where the setting cannot be read
DEFAULT_MAP_LIMIT = 65530
#: seconds between two counts of the mappings (:func:`bound_compiled_code`)
CHECK_INTERVAL_S = 1.0
_last_check = [-float("inf")]


def map_limit() -> int | None:
    """``vm.max_map_count`` (mappings one process may hold), or None without ``/proc``."""
    path = Path("/proc/sys/vm/max_map_count")
    if not Path("/proc/self/maps").exists():
        return None
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_MAP_LIMIT


def mapped_regions() -> int | None:
    """The memory mappings this process holds now (lines of ``/proc/self/maps``), or None
    without ``/proc``."""
    try:
        with open("/proc/self/maps", "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return None


def bound_compiled_code(fraction: float = MAP_FRACTION) -> bool:
    """Drop JAX's compiled programs if the process holds more than ``fraction`` of its
    mapping limit; returns whether it did.  Within :data:`CHECK_INTERVAL_S` of the last
    count it returns False without counting."""
    now = time.monotonic()
    if now - _last_check[0] < CHECK_INTERVAL_S:
        return False
    _last_check[0] = now
    limit, held = map_limit(), mapped_regions()
    if limit is None or held is None or held <= fraction * limit:
        return False
    import jax

    jax.clear_caches()
    return True


__all__ = ["CHECK_INTERVAL_S", "DEFAULT_MAP_LIMIT", "MAP_FRACTION", "bound_compiled_code",
           "map_limit", "mapped_regions"]
