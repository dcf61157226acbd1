r"""The matrix-free primal path: the linearised network in parameter space without ``J``.

Mathematics (``theory/low_rank.md`` section 5).  The primal recursion of
:mod:`ntkdyn.lowrank.primal` touches the Jacobian ``J`` (``N K x P``) only through the
products ``J_q d`` and ``J_q^T r`` on the rows of one agent:

* local gradient: ``g_q = (1/N_q) J_q^T (f0_q - Y_q + J_q d_q)``,

and ``J_q d`` is a Jacobian-vector product (forward mode) of the network at ``theta_0`` on
agent ``q``'s samples, ``J_q^T r`` a vector-Jacobian product (its transpose).  Here both
come from ``jax.linearize`` of ``theta -> apply_fn(theta, x_b)`` at ``theta_0`` on one batch
``x_b`` of one agent's samples and ``jax.linear_transpose`` of that linear map, so ``J`` is
never formed: memory ``O((Q + 1) P + N (d_in + K))`` plus one batch's activations, against
``N K P`` for the stored form.  The batches are aligned with the agents (a batch holds the
samples of one agent, zero-weight padding at the end of each agent's last batch), and one
step is a ``lax.scan`` over the batches that accumulates

    ``G[q] += (1/N_q) J_b^T (m_b * (J_b d_q + r_b))``  (``m_b``: 1 on real rows, 0 on padding)

and, with the centralised reference, ``G[c] += (1/(Q N_q)) J_b^T (m_b * (J_b d_c + r_b))``
(both tangents in one ``vmap``: the forward pass at ``theta_0`` is shared).  Per step: one
forward pass (linearisation), two JVPs and two VJPs over the ``N`` samples -- for an MLP
about ``2 N P`` flops for the forward pass and ``4 N P`` for each JVP / VJP pair per
tangent (``~ 10 N P`` with the reference), independent of ``K``, against ``4 N K P``
(``8 N K P``) for the stored form, which also reads ``N K P`` floats per step.

**Linearisation cache.**  The forward pass at ``theta_0`` is the same at every step, so
what the backward pass needs from it (per batch: the activations, the activation
derivatives' masks and the weights that carry cotangents back, the residuals of
``jax.vjp``) can be kept: :func:`linearisation_cache` stacks the pullback ``J_b^T`` of
every batch, and the step applies ``J_b^T`` by that pullback and ``J_b`` by its
``jax.linear_transpose`` -- no forward pass, the same numbers.  It costs about
``N (d_in + 2 sum_l n_l) + (batches) P_{>1}`` floats for an MLP (``P_{>1}``: weights after
the first layer); :func:`add_cache` keeps it for the training, then the test batches,
within a byte budget (``predict_primal(cache=...)``).

Records (the same as the stored form): the outputs ``f_0 + J d`` of every slot and of the
network-mean model on every training and test batch (one linearisation and ``Q + 2``
JVPs per batch: about ``(Q + 2) / 3`` steps' worth per record) give the losses, the
objective (rows weighted by ``1 / (Q N_q)``), the local losses, the accuracies and the
outputs; the distances come from the state (``||theta_q - theta_0|| = ||d_q||``).  The
divergence limit uses ``tr(J^T J)``, summed once from per-sample Jacobians of bounded
batches (never all of ``J``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn.algorithms import Operators
from ntkdyn.engine import scan_records

__all__ = ["MatrixFreeModel", "add_cache", "agent_batches", "cache_bytes", "cached_linear",
           "jacobian_sq_norm", "jacobian_sq_norm_probes", "linearisation_cache",
           "matrix_free_bytes", "matrix_free_data", "matrix_free_runner", "residual_bytes"]

#: largest padding overhead of agent-aligned batches before the batch size is halved
PAD_OVERHEAD = 0.25
DEFAULT_BATCH = 256
#: share of the memory left beside the estimate that the linearisation cache may take
CACHE_SHARE = 0.5


@dataclass(frozen=True)
class MatrixFreeModel:
    """The network as a function of its flat parameters: ``apply_fn(unravel(theta), x)``
    (static in ``jit``; hashed by identity of ``apply_fn`` and ``unravel``)."""

    apply_fn: Any
    unravel: Any

    def linear(self, theta0: jax.Array, xb: jax.Array):
        """``(jvp, vjp)``: ``d -> J_b d`` (``(P,) -> (B, K)``) and ``e -> J_b^T e`` on batch
        ``xb``, from one ``jax.linearize`` at ``theta0`` and its ``jax.linear_transpose``."""
        _, jvp = jax.linearize(lambda t: self.apply_fn(self.unravel(t), xb), theta0)
        vjp_t = jax.linear_transpose(jvp, theta0)
        return jvp, lambda e: vjp_t(e)[0]

    def pullback(self, theta0: jax.Array, xb: jax.Array):
        """``jax.vjp`` of ``theta -> apply_fn(theta, x_b)`` at ``theta0``: a pytree whose
        leaves are the residuals of the forward pass (activations, masks and the weights
        the backward pass needs), so it can be stacked over batches and kept (the cache)."""
        return jax.vjp(lambda t: self.apply_fn(self.unravel(t), xb), theta0)[1]


def cached_linear(pullback, out_example: jax.Array):
    """``(jvp, vjp)`` of one batch from its cached :meth:`MatrixFreeModel.pullback`: the
    VJP is the pullback, the JVP its ``jax.linear_transpose`` (``J_b d = (J_b^T)^T d``);
    no forward pass.  ``out_example``: an array of the batch's output shape ``(B, K)``."""
    jvp_t = jax.linear_transpose(pullback, out_example)
    return (lambda d: jvp_t((d,))[0]), (lambda e: pullback(e)[0])


@partial(jax.jit, static_argnames=("model",))
def linearisation_cache(model: MatrixFreeModel, theta0: jax.Array, xs: jax.Array):
    """The pullbacks of every batch of ``xs`` (``(n_batches, B, ...)``), stacked on a
    leading axis: the forward pass at ``theta_0`` done once instead of at every step."""
    return jax.vmap(model.pullback, in_axes=(None, 0))(theta0, xs)


def cache_bytes(model: MatrixFreeModel, theta0, x_batch: np.ndarray, n_batches: int) -> int:
    """Bytes of :func:`linearisation_cache` for ``n_batches`` batches shaped like
    ``x_batch``, from shapes only (``jax.eval_shape``)."""
    shapes = jax.eval_shape(model.pullback, theta0, jnp.asarray(x_batch))
    per = sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(shapes))
    return int(n_batches * per)


def agent_batches(counts: np.ndarray, batch_size: int | None) -> tuple[int, np.ndarray]:
    """``(B, agent of each batch)``: the batch size (``batch_size``, or the largest power
    of two ``<= 256`` whose agent-aligned padding adds at most 25 % to ``N``) and the agent
    of every batch (agent ``q`` gets ``ceil(N_q / B)`` consecutive batches)."""
    counts = np.asarray(counts, dtype=np.int64)
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
                or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        b = int(min(batch_size, counts.max()))
    else:
        b = int(min(DEFAULT_BATCH, 2 ** int(np.ceil(np.log2(counts.max())))))
        while b > 1 and (np.ceil(counts / b) * b).sum() > (1 + PAD_OVERHEAD) * counts.sum():
            b //= 2
    per = np.ceil(counts / b).astype(np.int64)
    return b, np.repeat(np.arange(len(counts)), per)


def _pad_rows(arrs, counts, b: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Split the agent-sorted rows of every array into agent-aligned batches of ``b`` rows
    (``(n_batches, b, ...)``, zero padded) and return them with the mask ``(n_batches, b)``."""
    offsets = np.concatenate([[0], np.cumsum(counts)])
    per = np.ceil(np.asarray(counts) / b).astype(np.int64)
    nb = int(per.sum())
    outs = [np.zeros((nb * b,) + a.shape[1:], dtype=a.dtype) for a in arrs]
    mask = np.zeros(nb * b)
    start = 0
    for q, c in enumerate(counts):
        for o, a in zip(outs, arrs, strict=True):
            o[start:start + c] = a[offsets[q]:offsets[q] + c]
        mask[start:start + c] = 1.0
        start += int(per[q]) * b
    return [o.reshape((nb, b) + o.shape[1:]) for o in outs], mask.reshape(nb, b)


def _set(x, f0, y, counts, b: int) -> dict:
    """The device arrays of one sample set in agent-aligned batches: inputs, ``f_0 - Y``,
    ``f_0``, labels, mask and the positions of the real rows (for the outputs)."""
    (xb, rb, fb, lb), mask = _pad_rows([x, f0 - y, f0, np.argmax(y, axis=1)], counts, b)
    return {"x": jnp.asarray(xb), "res": jnp.asarray(rb), "f0": jnp.asarray(fb),
            "labels": jnp.asarray(lb), "mask": jnp.asarray(mask),
            "rows": jnp.asarray(np.flatnonzero(mask.reshape(-1)))}


def matrix_free_data(theta0: np.ndarray, x_s, f0_s, y_s, counts, lr_q, w, *, batch: int,
                     batch_agent: np.ndarray, reference: bool, limit: float,
                     test: tuple | None = None) -> dict:
    """The device data of the matrix-free recursion: flat ``theta_0``, the training set in
    agent-aligned batches (rows sorted by agent; ``batch_agent`` from
    :func:`agent_batches`), the test set ``(x_t, f0_t, y_t)`` in batches of the same size,
    ``1/N_q``, the rate of every slot (the centralised one at the mean rate), ``W`` and the
    divergence limit per step (as :func:`ntkdyn.lowrank.evolve.feature_data`)."""
    from ntkdyn.lowrank.evolve import slot_rates

    counts = np.asarray(counts)
    train = _set(x_s, f0_s, y_s, counts, batch)
    train["agent"] = jnp.asarray(batch_agent)
    data = {"theta0": jnp.asarray(theta0), "train": train,
            "inv_n": jnp.asarray(1.0 / counts),
            "lr": jnp.asarray(slot_rates(lr_q, reference)),
            "mixing": jnp.asarray(w), "limit_per_step": jnp.asarray(limit),
            "n": float(counts.sum())}
    if test is not None:
        m = test[0].shape[0]
        data["test"] = _set(test[0], test[1], test[2], np.array([m]), batch)
        data["m"] = float(m)
    return data


def add_cache(model: MatrixFreeModel, data: dict, budget: int) -> int:
    """Keep the linearisation of the training batches, then of the test batches, in
    ``data`` (``data[set]["cache"]``, :func:`linearisation_cache`) while the total stays
    within ``budget`` bytes; return the bytes kept.  Sets without a cache are linearised
    again at every step (same numbers: the same operations on the same residuals)."""
    kept = 0
    for name in ("train", "test"):
        s = data.get(name)
        if s is None:
            continue
        need = cache_bytes(model, data["theta0"], s["x"][0], s["x"].shape[0])
        if kept + need > budget:
            break
        s["cache"] = linearisation_cache(model, data["theta0"], s["x"])
        kept += need
    return kept


def _mix(w, x, q_count: int, central: bool):
    agents = jnp.tensordot(w, x[:q_count], axes=1, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([agents, x[q_count:]], axis=0) if central else agents


def matrix_free_operators(model: MatrixFreeModel, data: dict, q_count: int,
                          central: bool) -> Operators:
    """The primitives on the state ``x`` of shape ``(A, P, 1)`` (``d_q = theta_q - theta_0``):
    ``mix`` by ``W`` (the centralised slot unmixed), ``grad`` the scan over the agent-aligned
    batches of the module docstring, ``scale`` by the slot rates."""
    inv_n, tr, theta0 = data["inv_n"], data["train"], data["theta0"]

    def grad(x):
        d = x[..., 0]

        def body(acc, batch):
            xb, rb, mb, a, pb = batch
            jvp, vjp = model.linear(theta0, xb) if pb is None else cached_linear(pb, rb)
            dirs = jnp.stack([d[a], d[q_count]]) if central else d[a][None]
            e = (jax.vmap(jvp)(dirs) + rb) * mb[:, None]
            g = jax.vmap(vjp)(e) * inv_n[a]
            acc = acc.at[a].add(g[0])
            return (acc.at[q_count].add(g[1] / q_count) if central else acc), None

        acc, _ = jax.lax.scan(body, jnp.zeros_like(d),
                              (tr["x"], tr["res"], tr["mask"], tr["agent"],
                               tr.get("cache")))
        return acc[..., None]

    return Operators(mix=lambda x, j=0: _mix(data["mixing"], x, q_count, central), grad=grad,
                     scale=lambda g: data["lr"][:, None, None] * g)


def _sweep(model: MatrixFreeModel, theta0, dirs, s: dict, agent_w, q_count: int,
           keep_outputs: int):
    """Outputs of every direction of ``dirs`` (``(S, P)``) on one sample set, batch by batch:
    per direction the sum of squared residuals, the same weighted by ``agent_w[agent]`` (the
    objective), the correct predictions, each agent's squared residual on its own rows
    (``(Q,)``, slot ``q`` on agent ``q``'s batches) and, when ``keep_outputs``, the outputs
    ``f_0 + J d`` of the first ``keep_outputs`` directions on the real rows."""
    agents = s.get("agent", jnp.zeros(s["x"].shape[0], dtype=jnp.int32))

    def body(acc, batch):
        xb, rb, fb, lb, mb, a, pb = batch
        jvp, _ = model.linear(theta0, xb) if pb is None else cached_linear(pb, rb)
        u = jax.vmap(jvp)(dirs)  # (S, B, K)
        sq = jnp.sum((u + rb) ** 2 * mb[None, :, None], axis=(1, 2))
        hit = jnp.sum((jnp.argmax(fb + u, axis=-1) == lb) * mb, axis=1)
        local = acc[3].at[a].add(sq[jnp.minimum(a, q_count - 1)])
        acc = (acc[0] + sq, acc[1] + sq * agent_w[a], acc[2] + hit, local)
        return acc, ((fb + u)[:keep_outputs] if keep_outputs else None)

    zeros = jnp.zeros(dirs.shape[0])
    acc, outs = jax.lax.scan(body, (zeros, zeros, zeros, jnp.zeros(q_count)),
                             (s["x"], s["res"], s["f0"], s["labels"], s["mask"], agents,
                              s.get("cache")))
    if keep_outputs:  # (nb, S, B, K) -> (S, rows, K) on the real rows
        outs = jnp.swapaxes(outs, 0, 1).reshape(keep_outputs, -1, outs.shape[-1])[:, s["rows"]]
    return acc, outs


def matrix_free_record(model: MatrixFreeModel, x, data: dict, *, q_count: int, central: bool,
                       has_test: bool, record_outputs: bool) -> dict:
    """The records of :func:`ntkdyn.lowrank.evolve._record` (same keys, same conventions)
    from the outputs of every slot and of the network-mean model (slot ``A``)."""
    d = x[..., 0]
    a = d.shape[0]
    xa = d[:q_count]
    xm = xa.mean(axis=0)
    dirs = jnp.concatenate([d, xm[None]], axis=0)
    n, inv_n, theta0 = data["n"], data["inv_n"], data["theta0"]
    (sq, obj, hit, local), outs = _sweep(model, theta0, dirs, data["train"], inv_n / q_count,
                                         q_count, a if record_outputs else 0)
    rec = {"train_loss": sq[:a] / (2.0 * n), "objective": obj[:a] / 2.0,
           "local_loss": 0.5 * local * inv_n,
           "param_dist": jnp.sqrt(jnp.sum(d ** 2, axis=1)),
           "consensus_dist": jnp.sqrt(jnp.sum((xa - xm) ** 2, axis=1)),
           "train_acc": hit[:a] / n, "mean_model_train_acc": hit[a] / n,
           "mean_model_train_loss": sq[a] / (2.0 * n)}
    if central:
        rec["central_dist"] = jnp.sqrt(jnp.sum((xa - d[q_count]) ** 2, axis=1))
    if record_outputs:
        rec["train_outputs"] = outs
    if has_test:
        m = data["m"]
        (tl, _, th, _), outs_t = _sweep(model, theta0, dirs, data["test"], jnp.zeros(1),
                                        1, a if record_outputs else 0)
        rec.update(test_loss=tl[:a] / (2.0 * m), test_acc=th[:a] / m,
                   mean_model_test_loss=tl[a] / (2.0 * m), mean_model_test_acc=th[a] / m)
        if record_outputs:
            rec["test_outputs"] = outs_t
    return rec


@partial(jax.jit, static_argnames=("model", "algorithm", "q_count", "central"))
def _init_state(x0, data, *, model, algorithm, q_count, central):
    return algorithm.initial_state(x0, matrix_free_operators(model, data, q_count, central))


@partial(jax.jit, static_argnames=("model", "algorithm", "q_count", "central", "has_test",
                                   "record_outputs"))
def _run_chunk(carry, n_steps, data, *, model, algorithm, q_count, central, has_test,
               record_outputs):
    """:func:`ntkdyn.engine.scan_records` with the matrix-free operators and records."""
    from ntkdyn.lowrank.evolve import divergence_check

    ops = matrix_free_operators(model, data, q_count, central)
    params = algorithm.parameters

    def record(st, x):
        rec = matrix_free_record(model, params(x), data, q_count=q_count, central=central,
                                 has_test=has_test, record_outputs=record_outputs)
        rec["diverged"] = st[2]
        return st, rec

    return scan_records(carry, n_steps, algorithm=algorithm, operators=lambda t: ops,
                        check=divergence_check(params, data["limit_per_step"]),
                        record=record)


def matrix_free_runner(model: MatrixFreeModel):
    """``(init_state, run_chunk)`` for :func:`ntkdyn.lowrank.evolve.run_features`."""
    return partial(_init_state, model=model), partial(_run_chunk, model=model)


def jacobian_sq_norm(apply_fn, params: Any, x: np.ndarray, batch_size: int | None) -> float:
    """``tr(J^T J) = sum_x ||J(x)||_F^2`` from per-sample Jacobians of bounded batches
    (:func:`ntkdyn.kernels.empirical.jacobian_leaves`; never all of ``J``)."""
    from ntkdyn.kernels.empirical import generic_batch_plan, jacobian_leaves

    n_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    k_out = int(jax.eval_shape(apply_fn, params, jnp.asarray(x[:1])).shape[1])
    _, batch = generic_batch_plan(k_out, n_params, x.shape[0], True, batch_size)
    total = 0.0
    for s in range(0, x.shape[0], batch):
        xb = x[s:s + batch]
        pad = batch - xb.shape[0]
        if pad:  # one compiled shape; the padding rows are dropped
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
        leaves = jacobian_leaves(apply_fn, params, jnp.asarray(xb))
        total += sum(float(jnp.sum(v[:batch - pad] ** 2)) for v in leaves)
    return total


#: ``N K P`` above which :func:`predict_primal`'s matrix-free form estimates ``tr(J^T J)``
#: (:func:`jacobian_sq_norm_probes`) instead of summing per-sample Jacobians (which reads
#: all of ``J``: 303 GiB at N = 20,000, P = 203,530)
EXACT_TRACE_MAX = 2**30
TRACE_PROBES = 16


@partial(jax.jit, static_argnames=("model", "probes"))
def jacobian_sq_norm_probes(model: MatrixFreeModel, theta0, s: dict, key, probes: int):
    r"""Hutchinson estimate of ``tr(J^T J) = E_v ||J v||^2`` (``v`` Rademacher in ``R^P``)
    over ``probes`` probes, ``J v`` by JVPs batch by batch on the sample set ``s`` (its
    cache when there is one): ``probes`` forward-mode passes, ``J`` never read.  Relative
    standard deviation ``<= sqrt(2 / probes)`` (``||J^T J||_F <= tr(J^T J)``); it enters
    only the divergence limit, through a square root."""
    v = jax.random.rademacher(key, (probes, theta0.size), dtype=theta0.dtype)

    def body(acc, batch):
        xb, rb, mb, pb = batch
        jvp, _ = model.linear(theta0, xb) if pb is None else cached_linear(pb, rb)
        u = jax.vmap(jvp)(v)
        return acc + jnp.sum(u ** 2 * mb[None, :, None]), None

    total, _ = jax.lax.scan(body, jnp.zeros(()), (s["x"], s["res"], s["mask"], s.get("cache")))
    return total / probes


def residual_bytes(model: MatrixFreeModel, theta0, x_batch: np.ndarray) -> int:
    """Bytes of what ``jax.linearize`` keeps for one batch (the activations at ``theta_0``),
    from shapes only (``jax.eval_shape``: nothing is computed)."""
    shapes = jax.eval_shape(lambda t: model.linear(t, jnp.asarray(x_batch))[0], theta0)
    return int(sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize
                   for s in jax.tree.leaves(shapes)))


def matrix_free_bytes(n: int, n_test: int, outputs: int, n_params: int, agents: int, *,
                      in_dim: int, batch: int, activation_bytes: int,
                      record_outputs: bool = False, records: int = 50) -> int:
    """Peak bytes of the matrix-free primal path: ``O(P + N K)``, never ``N K P``.

    The state, the gradient accumulator, the ``Q + 2`` record directions and ~9 temporaries
    ``12 (Q + 2) P``; the samples in batches, host and device
    (``2 (N + M + Q B) (d_in + 2 K + 2)``, padding included); per batch the linearisation
    (``activation_bytes``) and its tangents and cotangents for ``Q + 2`` directions
    (``(2 Q + 5) activation_bytes``) and outputs ``3 (Q + 2) B K``; the outputs of every
    record when ``record_outputs``; float64.
    """
    a = agents + 2
    rows = n + n_test + (agents + 1) * batch
    b = 12 * a * n_params + 2 * rows * (in_dim + 2 * outputs + 2) + 3 * a * batch * outputs
    if record_outputs:
        b += records * a * (n + n_test) * outputs + 2 * a * (n + n_test) * outputs
    return int(8 * b + (2 * agents + 5) * activation_bytes)
