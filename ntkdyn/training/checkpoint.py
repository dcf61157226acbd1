"""Checkpoints of a training run (:func:`ntkdyn.training.trainer.train`): write, check, resume.

A checkpoint is one ``.npz`` file holding the carried state (the stacked
parameters, the step counter, the divergence flags), the records so far, the
number of records and steps done, and a *fingerprint*: a SHA-256 of the run's
description (algorithm, architecture, rates, mixing, steps, settings) and of
its data and initial parameters.  Resuming from a checkpoint whose fingerprint
differs is refused.  Writes are atomic (temporary file, then ``os.replace``):
an interrupted write leaves the previous checkpoint intact.

Ctrl-C during a checkpointed run (:class:`InterruptGuard`): the first press lets the
running chunk finish, writes a checkpoint and then raises ``KeyboardInterrupt``; a second
press stops at once (the last checkpoint written stays valid).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils import interrupt
from ntkdyn.data import Partition

VERSION = 1


def fingerprint(description: dict, parts: Partition, theta0) -> str:
    """SHA-256 of the run's description, its data and its initial parameters."""
    h = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
    parts = parts.sorted()  # the agent-sorted layout: digests of earlier versions still match
    ds = parts.dataset
    for arr in (ds.x_train, ds.y_train, ds.x_test, ds.y_test, parts.agent,
                *jax.tree.leaves(theta0)):
        h.update(np.ascontiguousarray(np.asarray(arr)).tobytes())
    return h.hexdigest()


def save(path: Path, digest: str, carry, pieces: list[dict], done: int,
         steps_done: int) -> None:
    """Write the carry ``(x, t, diverged, diverged_at)`` and the records ``pieces``."""
    x, t, diverged, div_at = carry
    arrays = {f"state_{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(x))}
    arrays.update(t=np.asarray(t), diverged=np.asarray(diverged), div_at=np.asarray(div_at),
                  records_done=np.asarray(done), steps_done=np.asarray(steps_done),
                  fingerprint=np.asarray(digest), version=np.asarray(VERSION))
    if pieces:
        for key in pieces[0]:
            arrays[f"rec_{key}"] = np.concatenate([p[key] for p in pieces])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load(path: Path, digest: str, x_template):
    """``(carry, records, records_done, steps_done)``; ``ValueError`` if from another run."""
    with np.load(path, allow_pickle=False) as ck:
        if int(ck["version"]) != VERSION or str(ck["fingerprint"]) != digest:
            raise ValueError(
                f"checkpoint: {path} was written by a different run (other configuration, "
                "data, initialisation or version); delete it or choose another path")
        treedef = jax.tree.structure(x_template)
        leaves = [jnp.asarray(ck[f"state_{i}"]) for i in range(treedef.num_leaves)]
        carry = (jax.tree.unflatten(treedef, leaves), jnp.asarray(ck["t"]),
                 jnp.asarray(ck["diverged"]), jnp.asarray(ck["div_at"]))
        records = {k[4:]: ck[k] for k in ck.files if k.startswith("rec_")}
        return carry, records, int(ck["records_done"]), int(ck["steps_done"])


class InterruptGuard:
    """Defer Ctrl-C (SIGINT) to the end of the running chunk, so that it can be checkpointed.

    Active only in the main thread and only while SIGINT has Python's default handler or
    the command's (:func:`ntkdyn._utils.interrupt.replaceable`; otherwise a no-op).  The
    first Ctrl-C sets :attr:`requested` (the caller checks it at a safe point and raises
    ``KeyboardInterrupt`` there); a second one raises at once.
    :meth:`release` restores the previous handler.  The state a chunk starts from is
    donated to it (``jax.jit`` buffer donation), so an interrupt inside a chunk cannot be
    checkpointed without this deferral.
    """

    def __init__(self, active: bool = True) -> None:
        self.requested = False
        self._previous = None
        if (active and threading.current_thread() is threading.main_thread()
                and interrupt.replaceable(signal.getsignal(signal.SIGINT))):
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("\nCtrl-C: stopping after the running chunk of training to write a "
                         "checkpoint (press Ctrl-C again to stop at once)\n")

    def release(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def alive(carry) -> bool:
    """False when a buffer of ``carry`` has been donated to a later chunk (deleted)."""
    return not any(getattr(leaf, "is_deleted", lambda: False)()
                   for leaf in jax.tree.leaves(carry))
