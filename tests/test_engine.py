"""The one engine (ntkdyn.engine) on a toy state: records, phases, divergence, chunks.

The solver, the trainer and the low-rank path are tested against brute force elsewhere;
here the loop itself is checked exactly on ``x <- a x + b`` (closed form), integers and
doubles, so a change to the loop shows up without any kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.algorithms import Algorithm, Operators
from ntkdyn.engine import concatenate, padded_chunks, scan_records, trim


def _ops(a: float, b: float):
    return lambda t: Operators(mix=lambda x, j=0: a * x, grad=lambda x: -b * jnp.ones_like(x),
                               scale=lambda g: g)


def _affine(a, b, limit=np.inf):
    """``x <- mix(x) - scale(grad(x)) = a x + b``; records x; check freezes |x| > limit."""
    algo = Algorithm("affine", lambda x, ops: ops.mix(x) - ops.scale(ops.grad(x)))

    def check(st, new, t_new):
        x, _, diverged, div_at = st
        bad = (jnp.abs(new) > limit) & ~diverged
        return jnp.where(diverged | bad, x, new), t_new, diverged | bad, jnp.where(bad, t_new,
                                                                                   div_at)

    def record(st, x):
        return st, {"x": x, "diverged": st[2]}

    return algo, check, record


def _closed_form(a, b, x0, n):
    return a ** n * x0 + b * sum(a ** j for j in range(n))


def test_records_follow_the_schedule_exactly():
    a, b, x0 = 0.9, 0.5, 2.0
    algo, check, record = _affine(a, b)
    counts = np.array([0, 1, 3, 0, 5])
    carry = (jnp.asarray(x0), jnp.asarray(0), jnp.asarray(False), jnp.asarray(-1))
    carry, recs = jax.jit(lambda c, s: scan_records(
        c, s, algorithm=algo, operators=_ops(a, b), check=check, record=record))(
        carry, jnp.asarray(counts))
    expected = [_closed_form(a, b, x0, n) for n in np.cumsum(counts)]
    np.testing.assert_allclose(np.asarray(recs["x"]), expected, rtol=1e-14)
    assert int(carry[1]) == counts.sum() and not bool(carry[2])


def test_divergence_freezes_the_state_at_the_first_bad_step():
    algo, check, record = _affine(2.0, 0.0, limit=100.0)  # 1, 2, 4, ..., 64, 128 > 100
    carry = (jnp.asarray(1.0), jnp.asarray(0), jnp.asarray(False), jnp.asarray(-1))
    carry, recs = scan_records(carry, jnp.asarray([3, 3, 3]), algorithm=algo,
                               operators=_ops(2.0, 0.0), check=check, record=record)
    np.testing.assert_array_equal(np.asarray(recs["x"]), [8.0, 64.0, 64.0])
    np.testing.assert_array_equal(np.asarray(recs["diverged"]), [False, False, True])
    assert int(carry[3]) == 7  # the step that would have reached 128


def test_phases_are_recorded_after_each_phase_of_the_last_step():
    mix = Algorithm("two-phase", lambda x, ops: ops.mix(x) + 1.0,
                    phases=(lambda x, ops: ops.mix(x), lambda x, ops: x + 1.0),
                    phase_names=("mix", "add"))
    _, check, record = _affine(0.5, 0.0)
    carry = (jnp.asarray(4.0), jnp.asarray(0), jnp.asarray(False), jnp.asarray(-1))
    carry, recs = scan_records(carry, jnp.asarray([0, 2]), algorithm=mix,
                               operators=_ops(0.5, 0.0), check=check, record=record)
    # record 0: no step, both phases repeat the state; record 1: one step (4 -> 3), then
    # the last step's phases: mix 3 -> 1.5, add -> 2.5
    np.testing.assert_allclose(np.asarray(recs["x"]), [[4.0, 4.0], [1.5, 2.5]])
    assert float(carry[0]) == 2.5


@pytest.mark.parametrize("total, chunk", [(7, 3), (6, 3), (1, 4)])
def test_chunks_cover_the_schedule_once_and_trim_drops_the_padding(total, chunk):
    sched = (np.arange(1, total + 1), np.linspace(0, 1, total))
    pieces, seen = [], []
    for sl, padded, pad in padded_chunks(sched, chunk):
        assert all(len(p) == chunk for p in padded)
        assert np.all(np.asarray(padded[0])[chunk - pad:] == 0)
        seen.extend(range(total)[sl])
        pieces.append(trim({"n": padded[0]}, pad, 1))
    assert seen == list(range(total))
    np.testing.assert_array_equal(concatenate(pieces)["n"], sched[0])
    phases = trim({"r": np.arange(12).reshape(3, 2, 2)}, 1, 2)["r"]
    assert phases.shape == (4, 2)  # (n, P, ...) -> (n P, ...) after dropping one entry


def test_balanced_chunk_pads_fewer_records_with_the_same_calls():
    """``balanced_chunk`` keeps the number of compiled calls of ``chunk`` and pads fewer
    records than there are calls (51 records at 25: 17 each, no padding; the old 25 padded
    24); every length fits ``chunk`` and covers ``total``."""
    from ntkdyn.engine import balanced_chunk

    assert balanced_chunk(51, 25) == 17 and balanced_chunk(101, 25) == 21
    assert balanced_chunk(5, 25) == 5 and balanced_chunk(0, 25) == 1
    for total in range(1, 300):
        for chunk in (1, 7, 25, 64):
            c = balanced_chunk(total, chunk)
            calls = -(-total // chunk)
            assert 1 <= c <= chunk and -(-total // c) == calls
            assert calls * c - total < calls
