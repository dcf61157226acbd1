r"""The one engine: a chunked ``jax.lax.scan`` over records, for predictions and training.

Kernel-space prediction (:mod:`ntkdyn.dynamics.solver`, state: the kernel coefficients
``alpha`` of every agent) and real-network training (:mod:`ntkdyn.training.trainer`,
state: the stacked parameters ``theta`` of every agent) run the *same* loop; only the
state, the two primitives behind :class:`~ntkdyn.algorithms.Operators` (``mix`` and the
gradient) and the records differ, and those are the arguments.

The carry is ``(state, t, diverged, diverged_at)``: the algorithm's (augmented) state,
the time (an iteration count, or a time in steps for a flow), and the divergence flags
and first divergent step (scalars, or one per column group of a sweep).  For every entry
of the schedule the engine advances ``count(entry)`` steps, each
``algorithm.step(x, operators(t))`` passed through ``check`` (which freezes what
diverged), and then records.  A schedule with several phases (P2PL: local steps, then
combines) records after each phase of the last step before a record, so one entry gives
``P`` records, stacked on a leading axis.

On the Python side :func:`padded_chunks` cuts the schedule into chunks of a fixed length
(one compilation for every chunk; the last one padded with zero-step entries) and
:func:`trim` / :func:`concatenate` turn the records of the chunks back into arrays with
one row per record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils.compiled import bound_compiled_code
from ntkdyn.algorithms import Algorithm, Operators

#: ``check(carry, new_state, t_new) -> carry``: accept ``new_state`` at time ``t_new``
#: where it is sound, keep the old state where it diverged, update the flags
Check = Callable[[tuple, Any, Any], tuple]
#: ``record(carry, x) -> (carry, records)``: the metrics of state ``x`` (a dict of
#: arrays); may update the divergence flags of the carry (non-finite records)
Record = Callable[[tuple, Any], tuple[tuple, dict]]


def plain_advance(algorithm: Algorithm, operators: Callable[[Any], Operators], check: Check):
    """``advance(carry, n, entry)``: ``n`` steps, each checked (the default)."""

    def advance(carry, n, entry):
        def body(_, st):
            return check(st, algorithm.step(st[0], operators(st[1])), st[1] + 1)

        return jax.lax.fori_loop(0, n, body, carry)

    return advance


def scan_records(carry, schedule, *, algorithm: Algorithm,
                 operators: Callable[[Any], Operators], check: Check, record: Record,
                 count: Callable[[Any], Any] = lambda entry: entry, advance=None):
    """Advance through ``schedule`` and record after each entry (inside ``jit``).

    Parameters
    ----------
    carry : (state, t, diverged, diverged_at)
    schedule : pytree of arrays with a leading axis (one entry per record)
    algorithm : Algorithm
        Its ``step`` and, for several phases, its ``phases`` and ``parameters``.
    operators : t -> Operators
        The primitives at time ``t`` (mixing matrix of that step, gradients, rates).
    check, record : see :data:`Check`, :data:`Record`; ``record`` receives the
        algorithm's full state (it applies ``algorithm.parameters`` itself).
    count : entry -> number of steps before the record (default: the entry itself)
    advance : (carry, n, entry) -> carry, optional
        How ``n`` steps are taken (default :func:`plain_advance`; the kernel-space solver
        checks blocks of steps at once and integrates flows).

    Returns
    -------
    (carry, records) : records stacked over the schedule (``(T, ...)``, or
    ``(T, P, ...)`` for a schedule with ``P > 1`` phases).
    """
    advance = advance or plain_advance(algorithm, operators, check)
    phases = algorithm.phases

    def per_record(st, entry):
        st = advance(st, count(entry), entry)
        return record(st, st[0])

    def per_record_phases(st, entry):
        n = count(entry)
        st = advance(st, jnp.maximum(n - 1, 0), entry)

        def last_step(s):
            ops, cur, stages = operators(s[1]), s[0], []
            for phase in phases:
                cur = phase(cur, ops)
                stages.append(cur)
            return check(s, cur, s[1] + 1), stages

        def no_step(s):
            return s, [s[0]] * len(phases)

        st, stages = jax.lax.cond(n > 0, last_step, no_step, st)
        recs = []
        for x in stages:
            st, rec = record(st, x)
            recs.append(rec)
        return st, jax.tree.map(lambda *r: jnp.stack(r), *recs)

    return jax.lax.scan(per_record_phases if len(phases) > 1 else per_record, carry, schedule)


def balanced_chunk(total: int, chunk: int) -> int:
    """The chunk length for ``total`` records at most ``chunk`` per compiled call, with the
    fewest padding records: ``ceil(total / ceil(total / chunk))``.  The number of calls is
    the same as with ``chunk``, and the padding (records computed and dropped) falls from up to
    ``chunk - 1`` to fewer than the number of calls (51 records at 25: 3 calls of 17, none
    padded, instead of 25 + 25 + 1 padded with 24)."""
    total, chunk = int(total), max(1, int(chunk))
    if total <= 0:
        return 1
    calls = -(-total // chunk)
    return -(-total // calls)


def padded_chunks(schedule: tuple[np.ndarray, ...], chunk: int,
                  start: int = 0) -> Iterator[tuple[slice, tuple, int]]:
    """Cut a schedule (a tuple of equal-length arrays) into chunks of ``chunk`` entries.

    Yields ``(slice, padded, pad)``: the entries covered, the chunk as device arrays
    padded to ``chunk`` entries with zeros (zero steps: the padding records repeat the
    last state and are dropped by :func:`trim`), and the number of padded entries.

    Every run compiles its chunk function after this starts, so this is where the process's
    compiled code is kept under the kernel's mapping limit
    (:func:`ntkdyn._utils.compiled.bound_compiled_code`: past it LLVM aborts the process).
    """
    bound_compiled_code()
    total = len(schedule[0])
    for lo in range(start, total, chunk):
        sl = slice(lo, min(lo + chunk, total))
        parts = [np.asarray(a[sl]) for a in schedule]
        pad = chunk - len(parts[0])
        if pad:
            parts = [np.concatenate([a, np.zeros(pad, a.dtype)]) for a in parts]
        yield sl, tuple(jnp.asarray(a) for a in parts), pad


def trim(records: dict, pad: int, records_per_step: int) -> dict[str, np.ndarray]:
    """Records of one chunk as numpy, without the padding, one row per record
    (``(n, P, ...) -> (n P, ...)`` for ``P > 1`` phases)."""
    out = {}
    for key, value in records.items():
        arr = np.asarray(value)
        arr = arr[: len(arr) - pad] if pad else arr
        out[key] = arr.reshape((-1,) + arr.shape[2:]) if records_per_step > 1 else arr
    return out


def concatenate(pieces: list[dict]) -> dict[str, np.ndarray]:
    """The records of several chunks, concatenated along the record axis."""
    return {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}


__all__ = ["Check", "Record", "balanced_chunk", "concatenate", "padded_chunks", "plain_advance",
           "scan_records", "trim"]
