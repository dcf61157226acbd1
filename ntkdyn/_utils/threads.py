"""One BLAS thread for dense factorisations of a few hundred to a few thousand rows.

At these sizes LAPACK gains little from threads, and threaded BLAS waiting on busy cores
is much slower on a shared machine: a symmetric eigendecomposition of an 800 x 800 kernel
took 1.2-7.6 s threaded against 0.30-0.32 s on one thread at load average 12 on 2 cores
(measured 2026-11-29).  threadpoolctl comes with scikit-learn; without it nothing changes.
"""

from __future__ import annotations

import contextlib


def one_blas_thread():
    """Context manager limiting BLAS/LAPACK to one thread (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")
