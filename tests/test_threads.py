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


def test_one_blas_thread_from_overlapping_threads_restores_the_original_count(monkeypatch):
    """Blocks entered and left in overlapping order by two threads (A in, B in, A out, B
    out): the process-wide limit is set by the first block in and restored by the last one
    out, once each (each block restoring what it saw on entry left the process on one
    thread).  A fake controller records the calls (OpenBLAS itself may ignore a limit set
    from another thread than the one that set it first)."""
    import threading

    from ntkdyn._utils import threads

    calls = []

    class Limiter:
        def restore_original_limits(self):
            calls.append("restore")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.restore_original_limits()

    class Controller:
        def limit(self, limits, user_api):
            calls.append(("limit", limits, user_api))
            return Limiter()

    monkeypatch.setattr(threads, "_controller", lambda scipy_loaded: Controller())
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with one_blas_thread():
            a_in.set()
            b_in.wait(10)
        seen["after A"] = list(calls)
        a_out.set()

    def b():
        a_in.wait(10)
        with one_blas_thread():
            b_in.set()
            a_out.wait(10)

    workers = [threading.Thread(target=f) for f in (a, b)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(20)
    assert seen["after A"] == [("limit", 1, "blas")]
    assert calls == [("limit", 1, "blas"), "restore"]
