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


@functools.cache
def _controller(scipy_loaded: bool):  # the argument is only the cache key
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


def one_blas_thread():
    """Context manager limiting BLAS/LAPACK to one thread (a no-op without threadpoolctl)."""
    ctl = _controller("scipy.linalg" in sys.modules)
    if ctl is None:  # pragma: no cover
        return contextlib.nullcontext()
    return ctl.limit(limits=1, user_api="blas")
