"""Independent analyses side by side in threads, each stoppable at its next product.

``ntkdyn check`` analyses the stability of two or three schedules (DGD, ATC/CTA, and the
configured one where it is another).  Above the dense limit each analysis is a sequence of
Krylov solves whose products are too small to use more than one core (a periodic
ring+star of 8 agents x 800 samples: 5 MFLOP a product, about 0.5 ms), so on a 2-core
machine the analyses run side by side in threads: JAX and LAPACK release the GIL while they
compute.  A task that fails, or a Ctrl-C in the thread that waits, tells the others to stop:
they raise :class:`Stopped` at their next :func:`stop_point` (the stability module calls it
before every operator product), so an interrupted check ends promptly with nothing left
running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")

_LOCAL = threading.local()


class Stopped(Exception):
    """Raised inside a task of :func:`run_concurrently` that has been told to stop."""


def stop_point() -> None:
    """Raise :class:`Stopped` where the calling thread runs a task of
    :func:`run_concurrently` that has been told to stop (another task failed, or the
    waiting thread was interrupted); a no-op anywhere else."""
    event = getattr(_LOCAL, "stop", None)
    if event is not None and event.is_set():
        raise Stopped("stopped: another analysis failed or the run was interrupted")


def run_concurrently(tasks: Sequence[Callable[[], T]], workers: int) -> list[T]:
    """``[task() for task in tasks]``, up to ``workers`` at once in threads (in the calling
    thread, one after the other, where ``workers <= 1`` or there is one task).

    Results in the order of ``tasks``.  If a task raises, the others are told to stop
    (:func:`stop_point`), waited for, and the first error in task order is raised; an
    exception in the waiting thread (``KeyboardInterrupt``) stops and waits for them the
    same way before it propagates.  The tasks must not share mutable state.
    """
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    stop = threading.Event()

    def run(task):
        _LOCAL.stop = stop
        try:
            return task()
        finally:
            _LOCAL.stop = None

    pool = ThreadPoolExecutor(max_workers=min(workers, len(tasks)),
                              thread_name_prefix="ntkdyn-analysis")
    futures = [pool.submit(run, task) for task in tasks]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            stop.set()
        wait(futures)
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    errors = [f.exception() for f in futures]
    for exc in errors:
        if exc is not None and not isinstance(exc, Stopped):
            raise exc
    return [f.result() for f in futures]


__all__ = ["Stopped", "run_concurrently", "stop_point"]
