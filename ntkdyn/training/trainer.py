r"""Real peer-to-peer training of Q networks, simulated in one process (validation).

The harness trains what :mod:`ntkdyn.dynamics.solver` predicts, with the *same*
update rules: one iteration is ``algorithm.step(state, ops)`` (state from
``algorithm.init``, parameters read by ``algorithm.params``, records after each
of ``algorithm.phases`` for P2PL) where ``ops = Operators(mix, grad, scale)``
acts on parameter pytrees stacked on a leading *slot* axis.  Nothing here
re-implements DGD, ATC, CTA, P2PL, gradient tracking, EXTRA or momentum.

Slots: ``A = Q + 1``.  Slots ``0..Q-1`` are the agents; slot ``Q`` is the
centralised reference, exactly as in the solver: the mixing matrix is
extended by a 1 on the diagonal, ``W_ext = blockdiag(W, 1)``, the slot's
gradient is that of the global objective ``L = (1/Q) sum_q L_q`` and its
learning rate the mean of the agents'.

* **mix**: ``x <- W_ext x``, one contraction (``tensordot``) per leaf; with a
  time-varying or random mixing sequence (:mod:`ntkdyn.graphs.sequences`) ``W`` is that of
  the current communication event, sampled exactly as the prediction samples
  sequence ``gossip_sample``;
* **grad**: ``jax.vmap`` of one agent's gradient over the agent axis (and one
  more call for the centralised slot);
* **scale**: multiply slot ``a``'s block by its rate.

Loss (the core's convention, :mod:`ntkdyn.trajectory`):
``L_q(theta) = sum_i w_qi * 1/2 ||f(x_i; theta) - y_i||^2`` over agent ``q``'s
shard padded to the largest shard, with ``w_qi = 1/N_q`` on its samples and 0
on the padding.  With ``loss="cross_entropy"`` the per-sample loss is
``CE(f, y) = logsumexp(s f) - s y^T f`` (softmax cross-entropy with logit scale
``s``, one-hot ``y``; ``theory/cross_entropy.md``), the same definition the
kernel-space prediction records.  Mini-batch SGD (``batch_size = B > 0``, at most the
smallest shard): every local gradient of agent ``q`` is the mean over ``B`` of its
samples (weights ``1/B``), drawn without replacement within each epoch by
:class:`ntkdyn.minibatch.BatchSequence` (seed ``seed``, sequence ``batch_sample``): the
same batches as sequence ``batch_sample`` of the prediction with ``batch_size`` and
``seed``; the centralised slot uses the agents' batches with weights divided by ``Q``.

Models: ``"nonlinear"``, ``f(x; theta) = apply(theta, x)``; ``"linearised"``,
``f(x; theta) = f(x; theta_0) + d/de f(x; theta_0 + e (theta - theta_0))|_{e=0}``
(``jax.jvp`` at ``theta_0``), the model the closed forms are exact for.

The whole step is jitted; records are taken inside ``lax.scan`` chunks of
``chunk`` records.  Distances are norms of the flattened parameters,
accumulated in float64 whatever the training dtype.

Divergence: after every step, a slot whose parameters are non-finite or
farther than ``DIVERGENCE_FACTOR * max(||theta_0||, 1)`` from their start, or a
record with a non-finite loss, stops the run; the trajectory then has
``status = "diverged"``, ``diverged_at`` (the step) and ends at the last
record before it, as the solver's does (no NaNs are returned).

Checkpoints: with ``checkpoint=path`` the state and the records so far are
written (atomically) after a chunk at most every ``checkpoint_interval``
seconds and at the end; a later call with the same arguments and path resumes
from it and gives the same result bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils.checks import check_nonnegative_int, learning_rates, steps_array
from ntkdyn.algorithms import Algorithm, Operators, get_algorithm
from ntkdyn.data import Partition, check_partition
from ntkdyn.engine import concatenate, padded_chunks, scan_records, trim
from ntkdyn.graphs.sequences import resolve_mixing
from ntkdyn.losses import LOSSES, accuracy, check_logit_scale, class_targets, sample_loss
from ntkdyn.minibatch import BatchSequence, check_batch_size, check_sampling
from ntkdyn.models import MLP, init_params
from ntkdyn.models import describe as _describe
from ntkdyn.training.checkpoint import InterruptGuard as _InterruptGuard
from ntkdyn.training.checkpoint import alive as _alive
from ntkdyn.training.checkpoint import fingerprint as _fingerprint
from ntkdyn.training.checkpoint import load as _load_checkpoint
from ntkdyn.training.checkpoint import save as _save_checkpoint
from ntkdyn.trajectory import Trajectory

MODELS = ("nonlinear", "linearised")
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
DIVERGENCE_FACTOR = 1e3


@dataclass(frozen=True)
class _Setup:
    """Static (hashable) description of the jitted computation."""

    apply: Any
    algorithm: Algorithm
    q: int
    linearised: bool
    batch: int
    independent: bool
    has_test: bool
    record_outputs: bool
    sampler: Any = None
    loss: str = "mse"
    logit_scale: float = 1.0
    batcher: Any = None  # a minibatch.BatchSequence when batch > 0


# --------------------------------------------------------------------------- model and loss
def _model_out(setup: _Setup, theta, theta0, x):
    if not setup.linearised:
        return setup.apply(theta, x)
    tangent = jax.tree.map(jnp.subtract, theta, theta0)
    f0, df = jax.jvp(lambda p: setup.apply(p, x), (theta0,), (tangent,))
    return f0 + df


def _sample_loss(setup: _Setup, f, y):
    """Per-sample loss over the last axis (:func:`ntkdyn.losses.sample_loss`)."""
    return sample_loss(f, y, setup.loss, setup.logit_scale)


def _weighted_loss(setup: _Setup, theta, theta0, x, y, w):
    f = _model_out(setup, theta, theta0, x)
    return jnp.sum(w * _sample_loss(setup, f, y))


def _slots(tree, sl):
    return jax.tree.map(lambda leaf: leaf[sl], tree)


def _init_of(setup: _Setup, data: dict, sl):
    """Initial parameters of slots ``sl`` (stacked) or the common init (unstacked)."""
    return _slots(data["theta0"], sl) if setup.independent else data["theta0"]


def _mixing_at(setup: _Setup, data: dict, t, j):
    """``W_ext`` of event ``t * mixes_per_step + j`` (the static matrix without a sequence)."""
    if setup.sampler is None:
        return data["mixing"]
    event = t * setup.algorithm.mixes_per_step + j
    w = setup.sampler(data["mix_arrays"], event, data["mix_key"]).astype(data["mixing"].dtype)
    return data["mixing"].at[: setup.q, : setup.q].set(w)


def _operators(setup: _Setup, data: dict, weights, t=0, batch_weights=None) -> Operators:
    """``weights``: ``(Q, n_max)`` per-sample weights of the local losses (``1/N_q``);
    ``batch_weights``: ``j -> weights`` of the step's ``j``-th mini-batch draw (SGD)."""
    q = setup.q
    axis0 = 0 if setup.independent else None
    grad_fn = jax.grad(partial(_weighted_loss, setup))
    x_all = data["x_pad"].reshape(-1, data["x_pad"].shape[-1])
    y_all = data["y_pad"].reshape(-1, data["y_pad"].shape[-1])

    def mix(x, j=0):
        w = _mixing_at(setup, data, t, j)
        return jax.tree.map(lambda leaf: jnp.tensordot(w, leaf, axes=1), x)

    def grad_with(x, w):
        g = jax.vmap(grad_fn, in_axes=(0, axis0, 0, 0, 0))(
            _slots(x, slice(0, q)), _init_of(setup, data, slice(0, q)),
            data["x_pad"], data["y_pad"], w)
        gc = grad_fn(_slots(x, q), _init_of(setup, data, q), x_all, y_all,
                     w.reshape(-1) / q)
        return jax.tree.map(lambda a, c: jnp.concatenate([a, c[None]]), g, gc)

    def grad(x):
        return grad_with(x, weights)

    def grad_at(x, j):
        return grad_with(x, batch_weights(j))

    def scale(g):
        return jax.tree.map(lambda leaf: data["lr"].reshape((-1,) + (1,) * (leaf.ndim - 1))
                            * leaf, g)

    return Operators(mix=mix, grad=grad, scale=scale,
                     grad_at=None if batch_weights is None else grad_at)


def _ops_at(setup: _Setup, data: dict, t) -> Operators:
    """The operators of step ``t``: full batch, or the mini-batch draws
    ``t g, ..., t g + g - 1`` (``g = algorithm.grads_per_step``; :mod:`ntkdyn.minibatch`)."""
    if setup.batch == 0:
        return _operators(setup, data, data["w_pad"], t)
    gps = setup.algorithm.grads_per_step
    dtype = data["w_pad"].dtype

    def batch_weights(j):
        return setup.batcher.weights(data["batch_key"], t * gps + j).astype(dtype)

    return _operators(setup, data, batch_weights(0), t, batch_weights)


# --------------------------------------------------------------------------- records
def _sq_norms(tree) -> jax.Array:
    """``sum`` of squares over all but the leading axis of every leaf, in float64."""
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float64)),
                       axis=tuple(range(1, leaf.ndim))) for leaf in jax.tree.leaves(tree))


def _deviation(setup: _Setup, data: dict, x):
    theta0 = data["theta0"]
    if setup.independent:
        return jax.tree.map(lambda a, b: a.astype(jnp.float64) - b.astype(jnp.float64), x,
                            theta0)
    return jax.tree.map(lambda a, b: a.astype(jnp.float64) - b.astype(jnp.float64)[None], x,
                        theta0)


def _agent_deviations(tree, q: int):
    """``(x_a - x_0, mean_a (x_a - x_0), x_0)`` per leaf in float64: the consensus error
    without the round-off of a mean (zero for equal agents), summed slice by slice (XLA's CPU
    reduction over a leading axis is slow)."""
    base = jax.tree.map(lambda leaf: leaf[0].astype(jnp.float64), tree)
    dev = jax.tree.map(lambda leaf, b: leaf[:q].astype(jnp.float64) - b[None], tree, base)
    mean_dev = jax.tree.map(lambda d: sum(d[a] for a in range(1, q)) / q if q > 1
                            else jnp.zeros_like(d[0]), dev)
    return dev, mean_dev, base


def _agent_mean(tree, q: int):
    """``mean_q tree[q]`` in float64."""
    _, mean_dev, base = _agent_deviations(tree, q)
    return jax.tree.map(jnp.add, base, mean_dev)


def _record(setup: _Setup, data: dict, x) -> dict:
    q = setup.q
    axis0 = 0 if setup.independent else None
    mean64 = _agent_mean(x, q)
    mean = jax.tree.map(lambda m, leaf: m.astype(leaf.dtype), mean64, x)
    theta0_mean = (jax.tree.map(lambda m, leaf: m.astype(leaf.dtype),
                                _agent_mean(data["theta0"], q), data["theta0"])
                   if setup.independent else data["theta0"])
    outputs = jax.vmap(partial(_model_out, setup), in_axes=(0, axis0, None))

    def evaluate(xs, y, labels):
        f = outputs(x, data["theta0"], xs)  # (A, M, K)
        fm = _model_out(setup, mean, theta0_mean, xs)
        sq = _sample_loss(setup, f, y)
        acc = accuracy(f.astype(jnp.float64), labels)
        sq_m = jnp.mean(_sample_loss(setup, fm, y))
        acc_m = accuracy(fm.astype(jnp.float64), labels)
        return f, sq, acc, sq_m, acc_m

    f, sq, acc, sq_m, acc_m = evaluate(data["x_train"], data["y_train"], data["labels_train"])
    local = sq @ data["shard_w"]  # (A, Q)
    dev = _deviation(setup, data, x)
    rec = {
        "train_loss": sq.mean(axis=-1),
        "objective": local.mean(axis=-1),
        "local_loss": jnp.diagonal(local[:q]),
        "train_acc": acc,
        "param_dist": jnp.sqrt(_sq_norms(dev)),
        "consensus_dist": jnp.sqrt(_sq_norms(jax.tree.map(
            lambda d, m: d - m[None], *_agent_deviations(x, q)[:2]))),
        "central_dist": jnp.sqrt(_sq_norms(jax.tree.map(
            lambda a: a[:q].astype(jnp.float64) - a[q].astype(jnp.float64)[None], x))),
        "mean_model_train_loss": sq_m,
        "mean_model_train_acc": acc_m,
    }
    if setup.record_outputs:
        rec["train_outputs"] = f
    if setup.has_test:
        ft, sqt, acct, sqt_m, acct_m = evaluate(data["x_test"], data["y_test"],
                                                data["labels_test"])
        rec.update(test_loss=sqt.mean(axis=-1), test_acc=acct, mean_model_test_loss=sqt_m,
                   mean_model_test_acc=acct_m)
        if setup.record_outputs:
            rec["test_outputs"] = ft
    return {k: v.astype(jnp.float64) for k, v in rec.items()}


# --------------------------------------------------------------------------- evolution
@partial(jax.jit, static_argnames=("setup",))
def _init_state(x0, data, *, setup: _Setup):
    """The algorithm's (augmented) state at step 0 (gradient tracking: ``y_0 = grad(x_0)``)."""
    return setup.algorithm.initial_state(x0, _ops_at(setup, data, jnp.asarray(0, jnp.int64)))


@partial(jax.jit, static_argnames=("setup",), donate_argnums=(0,))
def _run_chunk(carry, n_steps, data, *, setup: _Setup):
    """Advance through ``len(n_steps)`` records (``n_steps[r]`` iterations before each).

    The parameter-space instance of :func:`ntkdyn.engine.scan_records` (the loop the
    kernel-space solver runs too).  The carry's state is the algorithm's (augmented)
    state; records read its parameters.  A step is rejected (the run frozen, its step
    recorded in ``diverged_at``) when ``||theta - theta_0||^2`` leaves ``data["limit2"]``
    or a record is not finite.
    """
    algo = setup.algorithm
    params = algo.parameters

    def ops_at(t):
        return _ops_at(setup, data, t)

    def check(st, new, t_new):
        x, _, diverged, div_at = st
        dev2 = _sq_norms(_deviation(setup, data, params(new)))
        bad = jnp.any(~jnp.isfinite(dev2) | (dev2 > data["limit2"])) & ~diverged
        x = jax.tree.map(lambda a, b: jnp.where(diverged | bad, a, b), x, new)
        return x, t_new, diverged | bad, jnp.where(bad, t_new, div_at)

    def record(st, x):
        rec = _record(setup, data, params(x))
        state, t, diverged, div_at = st
        bad = ~jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in rec.values()])) & ~diverged
        div_at = jnp.where(bad, t, div_at)
        diverged = diverged | bad
        rec["diverged"] = diverged
        return (state, t, diverged, div_at), rec

    return scan_records(carry, n_steps, algorithm=algo, operators=ops_at, check=check,
                        record=record)


def _device_data(parts: Partition, mixing, lrs, theta0, independent, dtype, seed,
                 targets=None) -> dict:
    """Device arrays; ``targets = (y_train, y_test)`` replaces the dataset's targets (the
    one-hot rows of cross-entropy)."""
    ds = parts.dataset
    y_train_all, y_test_all = (ds.y_train, ds.y_test) if targets is None else targets
    q, offsets, counts = parts.num_agents, parts.offsets, parts.counts
    n_max = int(counts.max())
    d, k = ds.dim, ds.num_classes
    x_pad, y_pad = np.zeros((q, n_max, d)), np.zeros((q, n_max, k))
    w_pad, shard_w = np.zeros((q, n_max)), np.zeros((ds.num_train, q))
    for a in range(q):
        s, e = offsets[a], offsets[a + 1]
        x_pad[a, : e - s], y_pad[a, : e - s] = ds.x_train[s:e], y_train_all[s:e]
        w_pad[a, : e - s] = 1.0 / counts[a]
        shard_w[s:e, a] = 1.0 / counts[a]
    w_ext = np.zeros((q + 1, q + 1))
    w_ext[:q, :q], w_ext[q, q] = mixing, 1.0
    if independent:
        init_sq = np.asarray(_sq_norms(theta0))
    else:
        init_sq = np.full(q + 1, float(_sq_norms(jax.tree.map(lambda a: a[None], theta0))[0]))
    cast = partial(jnp.asarray, dtype=dtype)
    return {
        "x_pad": cast(x_pad), "y_pad": cast(y_pad), "w_pad": cast(w_pad),
        "valid": jnp.asarray(w_pad > 0), "mixing": cast(w_ext),
        "lr": cast(np.append(lrs, lrs.mean())),
        "x_train": cast(ds.x_train), "y_train": cast(y_train_all),
        "labels_train": jnp.asarray(ds.labels_train), "shard_w": cast(shard_w),
        "x_test": cast(ds.x_test), "y_test": cast(y_test_all),
        "labels_test": jnp.asarray(ds.labels_test),
        "limit2": jnp.asarray(DIVERGENCE_FACTOR**2 * np.maximum(init_sq, 1.0)),
        "theta0": theta0,
    }


def _initial_params(arch, dim, params0, seed, dtype, q, independent):
    """``theta_0`` (common, unstacked) or ``(A, ...)`` stacked per slot (independent)."""
    if params0 is not None and isinstance(arch, MLP):  # the network arch describes
        from ntkdyn.kernels.empirical import check_mlp_params

        check_mlp_params(arch, params0, dim, name="params0")
    base = params0 if params0 is not None else init_params(arch, dim, seed)
    base = jax.tree.map(lambda a: jnp.asarray(a, dtype), base)
    if not independent:
        return base
    # agent 0 (and the centralised slot) start from theta_0; agent q from seed + q
    draws = [base] + [jax.tree.map(lambda a: jnp.asarray(a, dtype),
                                   init_params(arch, dim, seed + a)) for a in range(1, q)]
    draws.append(base)
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *draws)


# --------------------------------------------------------------------------- entry point
def _check_options(*, model, dtype, batch_sample, chunk) -> None:
    """``ValueError`` naming the first of ``train``'s scalar options that is not valid."""
    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {tuple(DTYPES)}, got {dtype!r}")
    for name, value, low in (("batch_sample", batch_sample, 0), ("chunk", chunk, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


def _check_loss(loss, logit_scale) -> float:
    """The checked ``logit_scale`` for ``loss`` (``ValueError`` naming the argument)."""
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    logit_scale = check_logit_scale(logit_scale)
    if loss != "cross_entropy" and logit_scale != 1.0:
        raise ValueError("logit_scale: only for loss='cross_entropy', got "
                         f"logit_scale={logit_scale!r} with loss={loss!r}")
    return logit_scale


def _class_targets(parts: Partition) -> tuple[np.ndarray, np.ndarray]:
    """One-hot ``(y_train, y_test)`` for cross-entropy (``ValueError`` for other targets)."""
    ds = parts.dataset
    y_tr = class_targets("parts.dataset.y_train", ds.y_train, ds.num_classes)
    y_te = (class_targets("parts.dataset.y_test", ds.y_test, ds.num_classes)
            if ds.num_test > 0 else ds.y_test)
    return y_tr, y_te


def _apply_fn(arch, parts: Partition):
    """``apply(params, x)`` of an :class:`MLP` or a stax triple, checked against the data."""
    if isinstance(arch, MLP):
        if arch.out != parts.dataset.num_classes:
            raise ValueError(f"arch.out: the data have K={parts.dataset.num_classes} outputs, "
                             f"the MLP has out={arch.out}")
        return arch.apply
    if isinstance(arch, tuple) and len(arch) == 3 and all(callable(f) for f in arch):
        return arch[1]
    raise ValueError("arch: expected an ntkdyn.models.MLP or a neural-tangents (init_fn, "
                     f"apply_fn, kernel_fn) triple, got {type(arch).__name__}")


def _run_chunks(carry, x0, deltas: np.ndarray, data: dict, setup: _Setup, *, chunk: int,
                progress: str | None, checkpoint: Path | None, fingerprint: str,
                checkpoint_interval: float) -> tuple[tuple, dict, dict]:
    """The engine's chunks with checkpoints: resume from ``checkpoint`` when it exists,
    write it every ``checkpoint_interval`` seconds and at the end, and on Ctrl-C keep the
    last finished chunk before re-raising.  Returns ``(carry, records, timing)``."""
    pieces: list[dict] = []
    done = steps_done = 0
    resumed_from = None
    if checkpoint is not None and checkpoint.is_file():
        carry, records, done, steps_done = _load_checkpoint(checkpoint, fingerprint, x0)
        pieces = [records] if records else []
        resumed_from = steps_done
    total, per = len(deltas), setup.algorithm.records_per_step
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm
        bar = tqdm(total=int(deltas.sum()), initial=steps_done, unit="step", desc=progress)
    start = last_write = time.perf_counter()
    warm_time = warm_steps = 0.0
    first = True
    saved = (carry, list(pieces), done, steps_done)  # last consistent state (for Ctrl-C)
    written = done  # records in the checkpoint file
    guard = _InterruptGuard(active=checkpoint is not None)
    try:
        for sl, sched, pad in padded_chunks((deltas,), chunk, start=done):
            if bool(carry[2]):
                break
            t_chunk = time.perf_counter()
            ns = deltas[sl]
            carry, recs = _run_chunk(carry, sched[0], data, setup=setup)
            pieces.append(trim(recs, pad, per))
            done += len(ns)
            steps_done += int(ns.sum())
            if not first:  # the first chunk includes compilation
                warm_time += time.perf_counter() - t_chunk
                warm_steps += float(ns.sum())
            first = False
            if bar is not None:
                bar.update(int(ns.sum()))
            now = time.perf_counter()
            finished = done >= total or bool(carry[2])
            if checkpoint is not None and (finished or now - last_write >= checkpoint_interval):
                _save_checkpoint(checkpoint, fingerprint, carry, pieces, done, steps_done)
                pieces = [concatenate(pieces)]
                last_write, written = now, done
            saved = (carry, list(pieces), done, steps_done)
            if guard.requested:  # Ctrl-C during this chunk: checkpoint it below, then stop
                raise KeyboardInterrupt
    except KeyboardInterrupt:  # Ctrl-C: keep the last finished chunk, then stop
        if checkpoint is not None and saved[2] > written and _alive(saved[0]):
            _save_checkpoint(checkpoint, fingerprint, *saved)
        raise
    finally:
        guard.release()
    if bar is not None:
        bar.close()
    timing = {"wall_time_s": time.perf_counter() - start, "resumed_from_step": resumed_from,
              "steps_per_second": warm_steps / warm_time if warm_time > 0 else None}
    return carry, concatenate(pieces), timing


def _metadata(algo: Algorithm, arch, parts: Partition, mixing: np.ndarray, settings: dict, *,
              process, gossip_sample: int, batch_sample: int) -> dict:
    """``Trajectory.metadata`` of a training run (settings, notes on what it describes)."""
    notes = []
    if settings["independent_init"]:
        notes.append("independent initialisations: outside the theory (it assumes a common "
                     "theta_0)")
    if settings["batch_size"]:
        notes.append(f"mini-batch SGD (batch {settings['batch_size']}, sequence "
                     f"{int(batch_sample)} of seed {settings['seed']}): the same batches as "
                     f"sequence {int(batch_sample)} of the prediction with batch_size and seed "
                     "(a prediction over several sequences gives their mean and band; "
                     "ntkdyn validate compares with its sequence 0 alone)")
    meta = {"algorithm": algo.name, "num_agents": parts.num_agents,
            "num_train": parts.dataset.num_train, "num_outputs": parts.dataset.num_classes,
            "mixing": mixing.tolist(), "architecture": _describe(arch), "training": settings,
            "notes": notes, "data": parts.dataset.name, "partition": parts.scheme,
            "kernel": "none (trained)", "loss": settings["loss"],
            "source": f"trained ({settings['model']})"}
    if algo.options:
        meta["algorithm_options"] = algo.settings
    if process is not None:
        meta.update(mixing_process=process.describe(), gossip_sample=int(gossip_sample))
    return meta


def train(
    arch: Any,
    parts: Partition,
    mixing,
    lr,
    algorithm: str | Algorithm = "dgd",
    steps=range(0, 1001, 10),
    *,
    params0: Any = None,
    seed: int = 0,
    model: str = "nonlinear",
    dtype: str = "float32",
    batch_size: int = 0,
    independent_init: bool = False,
    record_outputs: bool = False,
    chunk: int = 10,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_interval: float = 30.0,
    gossip_sample: int = 0,
    loss: str = "mse",
    logit_scale: float = 1.0,
    batch_sample: int = 0,
    batch_sampling: str = "epoch",
) -> Trajectory:
    """Train ``Q`` copies of ``arch`` peer to peer and record what the prediction records.

    Parameters
    ----------
    arch : MLP or neural-tangents stax triple
        The network (its ``apply``; parameters from ``params0`` or drawn with
        ``seed`` as :func:`ntkdyn.init_params` draws them, then cast to ``dtype``).
    parts : Partition
        Training data split across the ``Q`` agents (test data, if any, is evaluated).
    mixing : (Q, Q) array or MixingProcess
        Row-stochastic mixing matrix, or a time-varying / random sequence
        (:mod:`ntkdyn.graphs.sequences`; a random one runs its sequence ``gossip_sample``, the
        same matrices as sample ``gossip_sample`` of the prediction).
    lr : float or (Q,)
        Learning rate(s); the centralised reference uses their mean.
    algorithm : a name of :func:`ntkdyn.algorithms.get_algorithm` or an
        :class:`~ntkdyn.algorithms.Algorithm` (``p2pl(...)``, ``momentum(...)``); one
        *step* is one of its steps (a round for P2PL, recorded after each phase)
    steps : int or non-decreasing sequence of iteration numbers to record
    model : "nonlinear" or "linearised"
    dtype : "float32" (default) or "float64"
    batch_size : 0 for full batch (default), ``B > 0`` for mini-batch SGD (at most the
        smallest shard; batches drawn without replacement within each epoch,
        :mod:`ntkdyn.minibatch`, seeded by ``seed``)
    batch_sample : the mini-batch sequence to run (default 0): the batches of sequence
        ``batch_sample`` of the prediction with the same ``batch_size``, ``seed`` and
        ``batch_sampling``
    batch_sampling : "epoch" (default: without replacement within each epoch) or
        "independent" (a fresh subset per draw), :mod:`ntkdyn.minibatch`
    independent_init : bool
        Agent ``q > 0`` starts from its own draw (seed ``seed + q``): outside the
        theory, which assumes a common ``theta_0``.
    record_outputs : also return every agent's outputs at every record
    chunk : records per jitted ``lax.scan`` call
    progress : show a tqdm bar (steps per second)
    checkpoint : path of an ``.npz`` checkpoint: resumed from when it exists (it
        must come from the same arguments), written as chunks finish
    checkpoint_interval : seconds between checkpoint writes (0: after every chunk)
    loss : "mse" (default, ``||f - y||^2 / 2``) or "cross_entropy"
        (``logsumexp(s f) - s y^T f`` per sample, one-hot targets; the local loss is
        its mean over the agent's shard), as :func:`ntkdyn.dynamics.run` with ``loss=``
    logit_scale : float
        ``s > 0``, the inverse temperature of cross-entropy (default 1)

    Returns
    -------
    Trajectory
        Same fields and conventions as the prediction's
        (:mod:`ntkdyn.trajectory`); ``metadata["training"]`` holds the settings,
        wall time and steps per second.

    Examples
    --------
    >>> import ntkdyn as nd
    >>> from ntkdyn.training.trainer import train
    >>> data = nd.data.digits(classes=range(3), n_train=60, n_test=30)
    >>> parts = nd.data.partition(data, agents=3)
    >>> W = nd.graphs.mixing(nd.graphs.topology("ring", 3))
    >>> arch = nd.models.MLP(hidden=(256,), out=3)
    >>> obs = train(arch, parts, W, lr=0.5, algorithm="atc", steps=range(0, 101, 10))
    >>> obs.test_loss.shape
    (11, 3)
    """
    check_partition(parts)
    # agents' shards contiguous (the layout of the padded shards); the same samples in the
    # same order within each shard as the caller's partition; outputs unsorted at the end
    user_order = parts.order
    parts = parts.sorted()
    _check_options(model=model, dtype=dtype, batch_sample=batch_sample, chunk=chunk)
    batch_size = check_batch_size(batch_size, parts.counts)
    logit_scale = _check_loss(loss, logit_scale)
    targets = _class_targets(parts) if loss == "cross_entropy" else None
    apply = _apply_fn(arch, parts)
    algo = get_algorithm(algorithm)
    q = parts.num_agents
    mixing, process = resolve_mixing(mixing, q)
    if process is not None:
        check_nonnegative_int("gossip_sample", gossip_sample)
    lrs = learning_rates(lr, q)
    steps = steps_array(steps)
    jdtype = DTYPES[dtype]
    theta0 = _initial_params(arch, parts.dataset.dim, params0, seed, jdtype, q,
                             independent_init)
    setup, data = _prepare(parts, apply, algo, mixing, process, lrs, theta0, targets,
                           model=model, batch_size=batch_size, batch_sample=batch_sample,
                           batch_sampling=batch_sampling, gossip_sample=gossip_sample,
                           independent_init=independent_init, record_outputs=record_outputs,
                           loss=loss, logit_scale=logit_scale, jdtype=jdtype, seed=seed)

    settings = {"model": model, "dtype": dtype, "batch_size": int(batch_size),
                "independent_init": bool(independent_init), "chunk": int(chunk), "seed": seed,
                "loss": loss, **({"logit_scale": logit_scale} if loss == "cross_entropy"
                                 else {})}
    x0 = _initial_state(theta0, data, setup)
    carry = (x0, jnp.asarray(0, jnp.int64), jnp.asarray(False), jnp.asarray(-1, jnp.int64))
    ck_path = None if checkpoint is None else Path(checkpoint)
    fingerprint = "" if ck_path is None else _fingerprint(_description(
        algo, arch, lrs, mixing, steps, settings, record_outputs, process, gossip_sample,
        batch_sample, batch_sampling, batch_size), parts, theta0)
    carry, raw, timing = _run_chunks(
        carry, x0, np.diff(np.concatenate([[0], steps])).astype(np.int64), data, setup,
        chunk=chunk, progress=f"train {model} {algo.name}" if progress else None,
        checkpoint=ck_path, fingerprint=fingerprint, checkpoint_interval=checkpoint_interval)
    settings.update(timing)
    meta = _metadata(algo, arch, parts, mixing, settings, process=process,
                     gossip_sample=gossip_sample, batch_sample=batch_sample)
    return _finish(raw, steps, lrs, q, int(carry[3]) if bool(carry[2]) else None, meta, algo,
                   user_order)


def _initial_state(theta0, data: dict, setup: _Setup):
    """The stacked state at step 0: ``Q + 1`` copies of ``theta_0`` (the agents and the
    centralised slot; already stacked with independent initialisations), then the
    schedule's own initialisation (e.g. the trackers of gradient tracking)."""
    x0 = jax.tree.map(jnp.copy, theta0) if setup.independent else jax.tree.map(
        lambda a: jnp.repeat(a[None], setup.q + 1, axis=0), theta0)
    if setup.algorithm.init is not None:
        x0 = _init_state(x0, data, setup=setup)
    return x0


def _prepare(parts: Partition, apply, algo: Algorithm, mixing: np.ndarray, process, lrs,
             theta0, targets, *, model: str, batch_size: int, batch_sample: int,
             batch_sampling: str, gossip_sample: int, independent_init: bool,
             record_outputs: bool, loss: str, logit_scale: float, jdtype,
             seed: int) -> tuple[_Setup, dict]:
    """The static description of a run (:class:`_Setup`, one compilation per shape) and
    its device data (shards, mixing, rates, initial parameters, the keys of the sampled
    mini-batch and gossip sequences)."""
    batcher = None
    if batch_size:
        batcher = BatchSequence(tuple(int(c) for c in parts.counts), batch_size, int(seed),
                                check_sampling(batch_sampling))
    setup = _Setup(apply=apply, algorithm=algo, q=parts.num_agents,
                   linearised=model == "linearised", batch=batch_size,
                   independent=bool(independent_init),
                   has_test=parts.dataset.num_test > 0, record_outputs=record_outputs,
                   sampler=None if process is None else process.sampler, loss=loss,
                   logit_scale=logit_scale, batcher=batcher)
    data = _device_data(parts, mixing, lrs, theta0, setup.independent, jdtype, seed, targets)
    if batcher is not None:
        data["batch_key"] = batcher.key(int(batch_sample))
        # static part without the seed (it lives in the key): one compilation per shape
        setup = dataclasses.replace(setup, batcher=dataclasses.replace(batcher, seed=0))
    if process is not None:
        data["mix_arrays"] = process.device_arrays()
        data["mix_key"] = process.key(int(gossip_sample))
    return setup, data


def _description(algo: Algorithm, arch, lrs, mixing, steps, settings: dict,
                 record_outputs: bool, process, gossip_sample, batch_sample,
                 batch_sampling: str, batch_size: int) -> dict:
    """Everything that determines a training run, for the checkpoint's fingerprint (a
    checkpoint resumes only a run with the same description)."""
    description = {"algorithm": algo.name, "architecture": _describe(arch), "lr": lrs.tolist(),
                   "mixing": mixing.tolist(), "steps": steps.tolist(), **settings,
                   "record_outputs": record_outputs}
    if algo.options:
        description["algorithm_options"] = algo.settings
    if process is not None:
        description["mixing_process"] = process.describe()
        description["gossip_sample"] = int(gossip_sample)
    if batch_size:
        description["batch_sample"] = int(batch_sample)
        description["batch_sampling"] = batch_sampling
    return description


def _finish(raw: dict, steps, lrs, q: int, diverged_at, meta: dict, algo: Algorithm,
            user_order: np.ndarray) -> Trajectory:
    """The :class:`Trajectory` of a run: one record per phase of a multi-phase schedule,
    outputs back in the caller's sample order."""
    phase = None
    if algo.records_per_step > 1:
        meta["phases"] = list(algo.phase_names)
        per = algo.records_per_step
        steps, phase = np.repeat(steps, per), np.tile(np.arange(per), len(steps))
    traj = _trajectory(raw, steps, lrs, q, diverged_at, meta, phase)
    if traj.train_outputs is not None:  # back to the caller's sample order
        traj = dataclasses.replace(traj, train_outputs=traj.train_outputs[
            :, :, np.argsort(user_order)])
    return traj


def _trajectory(raw: dict, steps, lrs, q: int, diverged_at, meta: dict,
                phase=None) -> Trajectory:
    flags = raw.pop("diverged")
    keep = int(np.argmax(flags)) if flags.any() else len(flags)
    if phase is not None and flags.any():  # drop the whole step
        keep -= keep % int(phase.max() + 1)
    status = "diverged" if diverged_at is not None else "ok"
    if status == "diverged":
        meta = dict(meta, divergence=f"diverged at step {diverged_at} (training stopped; "
                                     "records end at the last finite state before it)")

    def cut(key, sl=None):
        if key not in raw:
            return None
        arr = raw[key][:keep]
        return arr if sl is None else arr[:, sl]

    return Trajectory(
        steps=np.asarray(steps)[:keep], train_loss=cut("train_loss", slice(0, q)),
        local_loss=cut("local_loss"), objective=cut("objective", slice(0, q)),
        train_acc=cut("train_acc", slice(0, q)), param_dist=cut("param_dist", slice(0, q)),
        consensus_dist=cut("consensus_dist"), central_dist=cut("central_dist"),
        central_train_loss=cut("train_loss", q), central_objective=cut("objective", q),
        central_train_acc=cut("train_acc", q), central_param_dist=cut("param_dist", q),
        mean_model_train_loss=cut("mean_model_train_loss"),
        mean_model_train_acc=cut("mean_model_train_acc"),
        test_loss=cut("test_loss", slice(0, q)), test_acc=cut("test_acc", slice(0, q)),
        central_test_loss=cut("test_loss", q), central_test_acc=cut("test_acc", q),
        mean_model_test_loss=cut("mean_model_test_loss"),
        mean_model_test_acc=cut("mean_model_test_acc"),
        train_outputs=cut("train_outputs", slice(0, q)),
        test_outputs=cut("test_outputs", slice(0, q)),
        phase=None if phase is None else phase[:keep], status=status,
        diverged_at=diverged_at, lr=np.asarray(lrs), metadata=meta)


__all__ = ["train", "MODELS", "DTYPES"]
