"""ntkdyn._utils.threads: one BLAS thread inside the context, every BLAS restored after."""

import numpy as np
import scipy.linalg  # noqa: F401  (its own BLAS is loaded before the context is entered)
from threadpoolctl import threadpool_info

from ntkdyn._utils.threads import one_blas_thread


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_one_blas_thread_limits_every_loaded_blas_and_restores_it():
    before = _blas_threads()
    assert before  # numpy's BLAS at least
    for _ in range(2):  # the second time from the cached controller
        with one_blas_thread():
            assert _blas_threads() == [1] * len(before)
            np.linalg.eigvals(np.eye(3))
        assert _blas_threads() == before
