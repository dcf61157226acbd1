"""ntkdyn._utils.concurrent: tasks side by side, results in order, stopped together."""

import threading
import time

import pytest

from ntkdyn._utils import concurrent
from ntkdyn._utils.concurrent import Stopped, run_concurrently, stop_point


def test_tasks_run_side_by_side_with_results_in_order():
    """Two tasks that each wait for the other (a barrier) finish only if they run at once."""
    barrier = threading.Barrier(2, timeout=10)

    def task(value):
        barrier.wait()
        return value

    assert run_concurrently([lambda: task("a"), lambda: task("b")], workers=2) == ["a", "b"]


def test_one_worker_runs_in_the_calling_thread_and_stop_point_is_a_no_op_there():
    main = threading.current_thread()
    stop_point()  # outside any task
    assert run_concurrently([lambda: threading.current_thread() is main] * 3,
                            workers=1) == [True] * 3


def _looping(log: list, key: str, seconds: float = 20.0):
    def task():
        end = time.perf_counter() + seconds
        try:
            while time.perf_counter() < end:
                stop_point()
                time.sleep(0.001)
        except Stopped:
            log.append(key)
            raise
        return key
    return task


def test_a_failing_task_stops_the_others_and_its_error_is_raised():
    stopped = []

    def failing():
        time.sleep(0.05)
        raise ValueError("lr: expected a positive rate")

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="lr: expected"):
        run_concurrently([_looping(stopped, "loop"), failing], workers=2)
    assert stopped == ["loop"] and time.perf_counter() - t0 < 10


def test_an_interrupted_wait_stops_the_tasks_before_it_propagates(monkeypatch):
    """A Ctrl-C in the waiting thread (here: its wait raises ``KeyboardInterrupt``) stops
    every running task at its next stop point and waits for them before propagating."""
    stopped = []
    real_wait = concurrent.wait

    def interrupted(futures, return_when=None):
        time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(concurrent, "wait", interrupted)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_concurrently([_looping(stopped, "a"), _looping(stopped, "b")], workers=2)
    assert sorted(stopped) == ["a", "b"] and time.perf_counter() - t0 < 10
    assert not [t for t in threading.enumerate() if t.name.startswith("ntkdyn-analysis")]
    monkeypatch.setattr(concurrent, "wait", real_wait)
