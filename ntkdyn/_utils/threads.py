"""One BLAS thread for dense factorisations of a few hundred to a few thousand rows.

At these sizes LAPACK gains little from threads, and threaded BLAS waiting on busy cores
is much slower on a shared machine: a symmetric eigendecomposition of an 800 x 800 kernel
took 1.2-7.6 s threaded against 0.30-0.32 s on one thread at load average 12 on 2 cores
(measured 2026-11-29).  threadpoolctl comes with scikit-learn; without it nothing changes.
The loaded BLAS libraries are looked up once per process (a ``ThreadpoolController``), again
once scipy's own BLAS is loaded: looking them up on every call cost 2.6 ms, a twentieth of
a small dense eigenvalue problem in a stable-set search of ~60 of them (measured
2026-11-30).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading


@functools.cache
def _controller(scipy_loaded: bool):  # the argument is only the cache key
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


#: the limit in force and how many ``with one_blas_thread()`` blocks are inside it: the
#: limit is process-wide, so with analyses in several threads
#: (:func:`ntkdyn._utils.concurrent.run_concurrently`) the first block in sets it and the
#: last one out restores the original count (each block restoring what it saw on entry
#: could leave the process on one thread)
_LOCK = threading.Lock()
_ACTIVE: list = []  # [limiter, depth] while a block is open


@contextlib.contextmanager
def one_blas_thread():
    """Context manager limiting BLAS/LAPACK to one thread (a no-op without threadpoolctl);
    safe to nest and to enter from several threads at once."""
    ctl = _controller("scipy.linalg" in sys.modules)
    if ctl is None:  # pragma: no cover
        yield
        return
    with _LOCK:
        if _ACTIVE:
            _ACTIVE[1] += 1
        else:
            _ACTIVE[:] = [ctl.limit(limits=1, user_api="blas"), 1]
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE[1] -= 1
            if _ACTIVE[1] == 0:
                _ACTIVE[0].restore_original_limits()
                _ACTIVE.clear()
