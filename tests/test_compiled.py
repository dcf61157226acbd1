"""ntkdyn._utils.compiled: JAX's compiled programs are dropped before the process nears the
kernel's mapping limit (past it LLVM aborts the process), and only then."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn._utils import compiled

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


@pytest.fixture(autouse=True)
def _count_every_time(monkeypatch):
    """Every call counts (the one-second interval between counts is tested on its own)."""
    monkeypatch.setattr(compiled, "CHECK_INTERVAL_S", 0.0)


@linux_only
def test_mapped_regions_counts_new_compiled_code():
    """A newly compiled program adds mappings; the limit is the kernel's setting."""
    before = compiled.mapped_regions()
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + jnp.cos(x) ** 2)
    for n in range(3, 9):
        f(jnp.ones(n)).block_until_ready()
    assert compiled.mapped_regions() > before > 0
    assert compiled.map_limit() == int(open("/proc/sys/vm/max_map_count").read())


@linux_only
def test_caches_are_dropped_above_the_fraction_and_kept_below(monkeypatch):
    f = jax.jit(lambda x: x * 2.0 + 1.0)
    f(jnp.ones(5)).block_until_ready()
    assert f._cache_size() == 1
    held = compiled.mapped_regions()
    monkeypatch.setattr(compiled, "map_limit", lambda: 4 * held)  # held < half the limit
    assert not compiled.bound_compiled_code()
    assert f._cache_size() == 1
    monkeypatch.setattr(compiled, "map_limit", lambda: held)  # held > half the limit
    assert compiled.bound_compiled_code()
    assert f._cache_size() == 0
    np.testing.assert_array_equal(f(jnp.ones(5)), 3.0)  # compiled again on its next call


def test_nothing_is_dropped_without_proc(monkeypatch):
    """Not Linux (no /proc): no count, no limit, nothing cleared."""
    monkeypatch.setattr(compiled, "mapped_regions", lambda: None)
    monkeypatch.setattr(compiled, "map_limit", lambda: None)
    f = jax.jit(lambda x: x - 1.0)
    f(jnp.ones(2)).block_until_ready()
    assert not compiled.bound_compiled_code(fraction=0.0)
    assert f._cache_size() == 1


@linux_only
def test_runs_keep_the_mappings_bounded_and_their_results(monkeypatch):
    """Predictions with new shapes, each compiling its own programs (about 160 mappings
    each): with the threshold set just above what the process holds, every run after the
    first starts by dropping the programs before it (engine.padded_chunks), so the mappings
    stay within about one run's worth of the threshold instead of growing by a run's worth
    each time, and the records are bit for bit those of the same runs without the guard."""
    import ntkdyn as nd
    import ntkdyn.engine as engine
    from ntkdyn import graphs
    from ntkdyn.dynamics import solver

    algo = nd.algorithms.get_algorithm("atc")

    def run(n):
        feats = np.random.default_rng(n).normal(size=(n, 4))
        prob = nd.make_problem(feats @ feats.T / 4 + 0.1 * np.eye(n),
                               np.eye(2)[np.arange(n) % 2], np.arange(n) % 4,
                               graphs.mixing(graphs.topology("ring", 4)))
        return solver.evolve(prob, algo, np.full((1, 4), 0.3), np.arange(0, 9, 4))

    sizes = (15, 17, 19, 21)
    base = compiled.mapped_regions()
    cleared = []

    def guard(fraction=compiled.MAP_FRACTION):
        cleared.append(compiled.bound_compiled_code(fraction))
        return cleared[-1]

    with monkeypatch.context() as m:
        m.setattr(compiled, "map_limit", lambda: 2 * base + 100)  # threshold: base + 50
        m.setattr(engine, "bound_compiled_code", guard)
        guarded, held = [], []
        for n in sizes:
            guarded.append(run(n))
            held.append(compiled.mapped_regions())
    assert len(cleared) == 4 and all(cleared[1:]), (base, held, cleared)
    assert max(held) < base + 50 + 300 and held[-1] < held[0] + 60, (base, held)
    for n, out in zip(sizes, guarded, strict=True):
        free = run(n)
        for key in out:
            np.testing.assert_array_equal(out[key], free[key], err_msg=f"{n} {key}")


@linux_only
def test_counts_at_most_once_per_interval(monkeypatch):
    """Counting reads /proc/self/maps (27 ms at 20,000 mappings): within CHECK_INTERVAL_S of
    a count the next call neither counts nor clears."""
    counted = []
    monkeypatch.setattr(compiled, "mapped_regions", lambda: counted.append(1) or 10)
    monkeypatch.setattr(compiled, "map_limit", lambda: 4)  # always above the threshold
    monkeypatch.setattr(compiled, "CHECK_INTERVAL_S", 3600.0)
    monkeypatch.setattr(compiled, "_last_check", [-float("inf")])
    assert compiled.bound_compiled_code()
    assert not compiled.bound_compiled_code()
    assert len(counted) == 1
