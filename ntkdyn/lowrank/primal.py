r"""The primal path: the linearised network evolved in parameter space (issue 17, item 3).

Mathematics (``theory/low_rank.md`` section 6).  The linearised network at parameters
``theta_0`` is ``f(x; theta) = f_0(x) + J(x) (theta - theta_0)`` with the Jacobian
``J(x)`` of shape ``(K, P)``; its empirical NTK in the full layout is
``Theta[(x, k), (x', k')] = J_k(x) . J_k'(x')``, i.e. ``Theta = J J^T`` with ``J`` the
``(N K, P)`` matrix of rows ``(x, k)`` (row ``x K + k``, as :mod:`ntkdyn.kernels.empirical`).
Peer-to-peer training of the linearised network on the squared loss keeps one parameter
vector per agent, ``d_q = theta_q - theta_0`` (``P`` numbers), with the primitives

* combine: ``d_q <- sum_p W_qp d_p``;
* local gradient: ``g_q = (1/N_q) J_q^T (f_0 - Y + J_q d_q)`` (rows of agent ``q``),

so DGD is ``d_q <- sum_p W_qp d_p - (eta_q / N_q) J_q^T (f0_q + J_q d_q - Y_q)``.  Applying
``J^T`` to the kernel-space state (``d_q = J^T alpha_q``) maps the kernel-space recursion
of :mod:`ntkdyn.dynamics.solver` with the full empirical kernel onto this one exactly, for every
static-mixing schedule of :mod:`ntkdyn.algorithms` (they are compositions of the two affine
primitives); so the two paths give the same trajectory to round-off.  This is the feature
recursion of :mod:`ntkdyn.lowrank.evolve` with ``Phi = J`` (``N K`` rows, ``P`` columns, one
output column) -- the same operators and recorded quantities, the outputs read back as
``(N, K)``.

Cost: one step reads ``J`` twice, ``4 N K P`` flops (``8 N K P`` with the centralised
reference) against ``2 (N K)^2`` for the kernel path in the full layout, and ``N K P``
floats of memory against ``(N K)^2``: the better path when ``P < N K`` (and always when
``P < N``).  ``||theta_q - theta_0|| = ||d_q||`` exactly.

Matrix-free form (``form="matrix_free"``, :mod:`ntkdyn.lowrank.matfree`): ``J_q d`` and
``J_q^T r`` as JVPs / VJPs of ``apply_fn`` at ``theta_0`` on batches of one agent's samples,
``J`` never stored: memory ``O(Q P + N K)`` plus one batch's activations; ``"auto"`` takes
it when ``N K P`` does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn import graphs
from ntkdyn._utils import memory
from ntkdyn._utils.checks import (
    agent_indices,
    as_float_array,
    check_shape,
    learning_rates,
    steps_array,
)
from ntkdyn.algorithms import Algorithm, get_algorithm
from ntkdyn.lowrank.evolve import (
    PAD_MAX,
    divergence_limit,
    feature_data,
    held_out_data,
    records_trajectory,
    run_features,
    schedule_metadata,
    use_gram,
)
from ntkdyn.trajectory import Trajectory

__all__ = ["jacobian_features", "predict_primal", "primal_bytes"]

PRIMAL_FORMS = ("auto", "gram", "features", "matrix_free")


def jacobian_features(apply_fn, params: Any, x, *, batch_size: int | None = None) -> np.ndarray:
    """``J(x)`` of shape ``(N, K, P)`` (float64), parameters in the order of
    ``jax.tree.leaves(params)``, computed ``batch_size`` samples at a time with the
    per-sample reverse-mode Jacobians of :func:`ntkdyn.kernels.empirical_ntk`."""
    from ntkdyn.kernels.empirical import generic_batch_plan, jacobian_leaves, to_float64

    x = as_float_array("x", x)
    params = to_float64(params)
    n_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    k_out = int(jax.eval_shape(apply_fn, params, jnp.asarray(x[:1])).shape[1])
    memory.ensure_fits(8 * x.shape[0] * k_out * n_params, "the Jacobian of the network",
                       "use the kernel path (fewer parameters than samples favour the primal "
                       "path, more favour the kernel path)")
    _, batch = generic_batch_plan(k_out, n_params, x.shape[0], True, batch_size)
    out = np.empty((x.shape[0], k_out, n_params))
    for s in range(0, x.shape[0], batch):
        xb = x[s:s + batch]
        pad = batch - xb.shape[0]
        if pad:  # one compiled shape
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
        leaves = jacobian_leaves(apply_fn, params, jnp.asarray(xb))
        out[s:s + batch] = np.concatenate([np.asarray(v) for v in leaves],
                                          axis=-1)[:batch - pad]
    return out


def primal_bytes(n: int, n_test: int, outputs: int, n_params: int, agents: int, *,
                 padded_rows: int | None = None, record_outputs: bool = False,
                 records: int = 50) -> int:
    """Peak bytes of :func:`predict_primal`: the Jacobians (training ``N K P``, twice: host
    and device, the latter zero padded to ``padded_rows``; test ``M K P``), three ``P x P``
    Gram matrices, the state and ~8 temporaries ``9 (Q + 1) P`` and the outputs of every
    slot ``2 (Q + 1) (N + M) K``; float64."""
    rows = n if padded_rows is None else padded_rows
    a = agents + 1
    b = (n + rows + 2 * n_test) * outputs * n_params + 3 * n_params ** 2 + 9 * a * n_params
    b += 2 * a * (n + n_test) * outputs + 4 * rows * outputs
    if record_outputs:
        b += records * a * (n + n_test) * outputs
    return int(8 * b)


def predict_primal(
    apply_fn,
    params: Any,
    x_train,
    y_train,
    agent,
    mixing,
    lr,
    steps,
    algorithm: str | Algorithm = "dgd",
    *,
    x_test=None,
    y_test=None,
    f0: str = "network",
    reference: bool = True,
    record_outputs: bool = False,
    chunk: int = 25,
    progress: bool = False,
    batch_size: int | None = None,
    metadata: dict | None = None,
    form: str = "auto",
    cache: bool | None = None,
) -> Trajectory:
    r"""Predict peer-to-peer training of the linearised network in parameter space.

    ``apply_fn(params, x) -> (B, K)`` and ``params`` define the network and the point of
    linearisation; the trajectory equals that of :func:`ntkdyn.predict_from_kernels` with
    the full-layout empirical kernel ``J J^T`` (``traced=False``) to round-off
    (module docstring).  ``f0``: ``"network"`` (the network's outputs at ``params``: the
    exact linearisation) or ``"zero"``.  Other arguments as
    :func:`ntkdyn.predict_from_kernels` (static mixing matrix, one rate or one per agent,
    squared loss, discrete steps).  ``form`` as :func:`~ntkdyn.lowrank.predict_lowrank`
    (the Gram form multiplies by ``P x P`` matrices ``J_q^T J_q``, chosen by ``"auto"`` when
    cheaper), or ``"matrix_free"``: ``J`` is never stored; each step applies ``J_q`` and
    ``J_q^T`` as Jacobian-vector and vector-Jacobian products of ``apply_fn`` at ``params``
    on batches of ``batch_size`` samples of one agent (:mod:`ntkdyn.lowrank.matfree`:
    memory ``O(Q P + N K)`` plus one batch's activations; per step about one forward and
    one backward pass per slot over the ``N`` samples instead of ``4 N K P`` flops).
    ``"auto"`` takes it when the stored form (:func:`primal_bytes`) does not fit in memory.
    ``cache`` (matrix-free only): keep the linearisation of every batch at ``params`` (the
    forward pass's residuals, :func:`ntkdyn.lowrank.matfree.linearisation_cache`) instead
    of recomputing it at every step: ``None`` (default) when it fits in
    :data:`~ntkdyn.lowrank.matfree.CACHE_SHARE` of the memory left after the estimate,
    ``True`` always (counted in the memory check), ``False`` never.
    ``metadata["primal"]`` holds ``P``, ``N K``, the form and the bytes of the Jacobians
    (and, matrix-free, the batch size and the memory estimate).
    """
    if form not in PRIMAL_FORMS:
        raise ValueError(f"form: expected one of {list(PRIMAL_FORMS)}, got {form!r}")
    algo = get_algorithm(algorithm)
    inp = _primal_inputs(x_train, y_train, agent, mixing, lr, steps, x_test, y_test, f0)
    n, k, m, q_count = inp.n, inp.k, inp.m, inp.q_count
    n_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    n_max = int(inp.counts.max())
    stacked = q_count * n_max <= PAD_MAX * n
    gram = use_gram(form, n * k, n_params, q_count) if form != "matrix_free" else False
    need = primal_bytes(n, m, k, n_params, q_count,
                        padded_rows=q_count * n_max if stacked else n,
                        record_outputs=record_outputs, records=len(inp.steps))
    if form == "matrix_free" or (form == "auto" and need > memory.available_memory_bytes()):
        return _predict_matrix_free(apply_fn, params, inp, algo, f0, stored_bytes=need,
                                    reference=reference, record_outputs=record_outputs,
                                    chunk=chunk, progress=progress, batch_size=batch_size,
                                    metadata=metadata, cache=cache)
    memory.ensure_fits(need, "this primal prediction",
                       f"the network has P = {n_params} parameters for N = {n} samples and "
                       f"K = {k} outputs; use the kernel path, or record_outputs=False")

    order = np.argsort(inp.agent, kind="stable")
    phi = jacobian_features(apply_fn, params, inp.x[order], batch_size=batch_size).reshape(
        n * k, n_params)  # rows (x, k): x K + k
    f0_s, f0_t = _initial_outputs(apply_fn, params, inp, order, f0)
    data = _train_data(phi, f0_s, inp.y[order], inp.counts, inp.lr_q, inp.w, gram, stacked,
                       n_max, reference, record_outputs)
    if inp.has_test:
        jt = jacobian_features(apply_fn, params, inp.xt, batch_size=batch_size).reshape(
            m * k, n_params)
        data.update(held_out_data(jt, f0_t, inp.yt))

    a = q_count + int(reference)
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((a, n_params, 1)), data, algo, inp.steps, q_count=q_count,
        central=reference, has_test=inp.has_test, record_outputs=record_outputs, chunk=chunk,
        progress=progress, desc=f"primal {algo.name}")
    meta = _primal_metadata(algo, inp, n_params, gram, stacked and q_count * n_max > n,
                            reference, f0, metadata)
    return records_trajectory(raw, q_count, reference, rec_steps, phase, inp.lr_q, meta, order,
                              float(carry[3]))


@dataclass(frozen=True)
class _PrimalInputs:
    """The checked arguments of :func:`predict_primal` (float64 arrays)."""

    x: np.ndarray
    y: np.ndarray
    agent: np.ndarray
    counts: np.ndarray
    w: np.ndarray
    lr_q: np.ndarray
    steps: np.ndarray
    xt: np.ndarray | None
    yt: np.ndarray | None

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def k(self) -> int:
        return self.y.shape[1]

    @property
    def m(self) -> int:
        return 0 if self.yt is None else self.yt.shape[0]

    @property
    def q_count(self) -> int:
        return self.w.shape[0]

    @property
    def has_test(self) -> bool:
        return self.yt is not None


def _primal_inputs(x_train, y_train, agent, mixing, lr, steps, x_test, y_test,
                   f0: str) -> _PrimalInputs:
    """Check every argument of :func:`predict_primal` before anything is computed; a
    ``ValueError`` names the argument and what was expected."""
    from ntkdyn.graphs.sequences import is_process

    x = as_float_array("x_train", x_train)
    y = as_float_array("y_train", y_train, ndim=2)
    n, k = y.shape
    check_shape("x_train", x, (n,) + x.shape[1:], f"one row per row of y_train ({n})")
    agent = np.asarray(agent)
    check_shape("agent", agent, (n,), "one agent index per training sample")
    if is_process(mixing):
        raise ValueError("mixing: the primal path takes a static (Q, Q) mixing matrix; "
                         "time-varying and random sequences run on the kernel path")
    if f0 not in ("network", "zero"):
        raise ValueError(f"f0: expected 'network' or 'zero', got {f0!r}")
    w = graphs.check_mixing(mixing, name="mixing")
    agent, counts = agent_indices(agent, w.shape[0])
    xt = yt = None
    if y_test is not None:
        if x_test is None:
            raise ValueError("x_test: needed with y_test")
        xt = as_float_array("x_test", x_test)
        yt = as_float_array("y_test", y_test, ndim=2)
        check_shape("y_test", yt, (xt.shape[0], k), "one row per test input, K columns")
    elif x_test is not None:
        raise ValueError("x_test: given without y_test")
    return _PrimalInputs(x, y, agent, counts, w, learning_rates(lr, w.shape[0]),
                         steps_array(steps), xt, yt)


def _initial_outputs(apply_fn, params, inp: _PrimalInputs, order: np.ndarray,
                     f0: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``f_0`` on the (agent-sorted) training inputs and on the test inputs: the network's
    float64 outputs at ``params`` (``f0="network"``) or zeros."""
    if f0 == "network":
        from ntkdyn.kernels.empirical import to_float64

        p64 = to_float64(params)
        f0_s = np.asarray(apply_fn(p64, jnp.asarray(inp.x[order])), np.float64)
        f0_t = (np.asarray(apply_fn(p64, jnp.asarray(inp.xt)), np.float64)
                if inp.has_test else None)
    else:
        f0_s = np.zeros((inp.n, inp.k))
        f0_t = np.zeros((inp.m, inp.k)) if inp.has_test else None
    check_shape("apply_fn", f0_s, (inp.n, inp.k), "outputs (N, K) matching y_train")
    return f0_s, f0_t


def _train_data(phi: np.ndarray, f0_s: np.ndarray, y_s: np.ndarray, counts: np.ndarray,
                lr_q: np.ndarray, w: np.ndarray, gram: bool, stacked: bool, n_max: int,
                reference: bool, record_outputs: bool) -> dict:
    """:func:`~ntkdyn.lowrank.evolve.feature_data` with ``Phi = J`` (``K`` rows per sample,
    sorted by agent; curvature bound ``tr(J^T J)``) and the accuracy rows."""
    n, k = y_s.shape
    res = (f0_s - y_s).reshape(n * k, 1)
    offsets = tuple(int(v) * k for v in np.concatenate([[0], np.cumsum(counts)]))
    data = feature_data(phi, res, offsets, counts, lr_q, w, gram=gram, stacked=stacked,
                        n_max=n_max * k, reference=reference,
                        curvature=float(np.einsum("ij,ij->", phi, phi)))
    data.update(outputs=jnp.zeros(k),  # marks K rows per sample (evolve._per_sample)
                acc_phi=jnp.asarray(phi), acc_f0=jnp.asarray(f0_s.reshape(1, n * k, 1)),
                acc_labels=jnp.asarray(np.argmax(y_s, axis=1)))
    if record_outputs:
        data.update(phi_all=jnp.asarray(phi), f0=jnp.asarray(f0_s.reshape(1, n * k, 1)))
    return data


def _primal_metadata(algo: Algorithm, inp: _PrimalInputs, n_params: int, gram: bool,
                     padded: bool, reference: bool, f0: str, metadata: dict | None) -> dict:
    """``Trajectory.metadata`` of a primal prediction: sizes, form, Jacobian bytes, flops
    per step and which network it is."""
    n, k, q_count = inp.n, inp.k, inp.q_count
    a = q_count + int(reference)
    meta = {
        "algorithm": algo.name, "num_agents": q_count, "num_train": n, "num_outputs": k,
        "kernel_layout": "full", "path": "primal",
        "primal": {"num_params": n_params, "rows": n * k, "jacobian_bytes": 8 * n * k * n_params,
                   "padded": bool(not gram and padded),
                   "form": "gram" if gram else "features",
                   "cost_per_step_flops": 2 * a * n_params ** 2 if gram
                   else (8 if reference else 4) * n * k * n_params},
        "quantity": ("the linearised network at the given parameters" if f0 == "network"
                     else "the linearised network with f0 = 0"),
        "mixing": inp.w.tolist(), **(metadata or {}),
    }
    return {**meta, **schedule_metadata(algo)}


def _predict_matrix_free(apply_fn, params, inp: _PrimalInputs, algo: Algorithm, f0: str, *,
                         stored_bytes: int, reference: bool, record_outputs: bool, chunk: int,
                         progress: bool, batch_size: int | None,
                         metadata: dict | None, cache: bool | None = None) -> Trajectory:
    """:func:`predict_primal` with ``form="matrix_free"`` (:mod:`ntkdyn.lowrank.matfree`):
    the memory estimate checked first, then the same engine, records and metadata as the
    stored form, ``J`` never formed."""
    from jax.flatten_util import ravel_pytree

    from ntkdyn.kernels.empirical import to_float64
    from ntkdyn.lowrank import matfree

    p64 = to_float64(params)
    theta0, unravel = ravel_pytree(p64)
    model = matfree.MatrixFreeModel(apply_fn, unravel)
    n_params = int(theta0.size)
    batch, batch_agent = matfree.agent_batches(inp.counts, batch_size)
    order = np.argsort(inp.agent, kind="stable")
    x_s = inp.x[order]
    need = matfree.matrix_free_bytes(
        inp.n, inp.m, inp.k, n_params, inp.q_count, in_dim=int(np.prod(inp.x.shape[1:])),
        batch=batch, activation_bytes=matfree.residual_bytes(model, theta0, x_s[:batch]),
        record_outputs=record_outputs, records=len(inp.steps))
    budget = _cache_budget(model, theta0, x_s[:batch], len(batch_agent), inp, need, cache)
    memory.ensure_fits(need + (budget if cache else 0), "this matrix-free primal prediction",
                       f"the network has P = {n_params} parameters for N = {inp.n} samples; "
                       f"the stored-Jacobian form would need {memory.format_bytes(stored_bytes)};"
                       " use a smaller batch_size, record_outputs=False, or fewer samples")
    f0_s, f0_t = _initial_outputs(apply_fn, params, inp, order, f0)
    y_s = inp.y[order]
    data = matfree.matrix_free_data(
        np.asarray(theta0), x_s, f0_s, y_s, inp.counts, inp.lr_q, inp.w, batch=batch,
        batch_agent=batch_agent, reference=reference, limit=0.0,
        test=(inp.xt, f0_t, inp.yt) if inp.has_test else None)
    cached = matfree.add_cache(model, data, budget)
    if inp.n * inp.k * n_params <= matfree.EXACT_TRACE_MAX:
        curvature, trace_how = matfree.jacobian_sq_norm(apply_fn, p64, x_s, None), "exact"
    else:
        curvature = float(matfree.jacobian_sq_norm_probes(
            model, data["theta0"], data["train"], jax.random.PRNGKey(0),
            matfree.TRACE_PROBES))
        trace_how = f"Hutchinson, {matfree.TRACE_PROBES} probes"
    data["limit_per_step"] = jnp.asarray(
        divergence_limit(inp.lr_q, f0_s - y_s, curvature, inp.counts))
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((inp.q_count + int(reference), n_params, 1)), data, algo, inp.steps,
        q_count=inp.q_count, central=reference, has_test=inp.has_test,
        record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"primal (matrix-free) {algo.name}", runner=matfree.matrix_free_runner(model))
    meta = _primal_metadata(algo, inp, n_params, False, False, reference, f0, metadata)
    meta["primal"].update(form="matrix_free", batch_size=batch, batches=len(batch_agent),
                          memory_bytes=need, stored_bytes=stored_bytes, cache_bytes=cached,
                          trace_JtJ=trace_how,
                          cached=[k for k in ("train", "test") if "cache" in data.get(k, {})],
                          cost_per_step="one linearisation of apply_fn and "
                          f"{2 if reference else 1} JVP + VJP pairs over the N samples")
    del meta["primal"]["cost_per_step_flops"]
    return records_trajectory(raw, inp.q_count, reference, rec_steps, phase, inp.lr_q, meta,
                              order, float(carry[3]))


def _cache_budget(model, theta0, x_batch, n_batches: int, inp: _PrimalInputs, need: int,
                  cache: bool | None) -> int:
    """Bytes the linearisation cache of the matrix-free form may take: 0 with
    ``cache=False``; all of it (training and test batches) with ``True``; else
    :data:`~ntkdyn.lowrank.matfree.CACHE_SHARE` of the memory left beside ``need``."""
    from ntkdyn.lowrank import matfree

    if cache is not None and not isinstance(cache, bool):
        raise ValueError(f"cache: expected None, True or False, got {cache!r}")
    if cache is False:
        return 0
    full = matfree.cache_bytes(model, theta0, x_batch, n_batches)
    if inp.has_test:
        full += matfree.cache_bytes(model, theta0, x_batch, -(-inp.m // x_batch.shape[0]))
    if cache:
        return full
    return int(max(0.0, matfree.CACHE_SHARE * (memory.available_memory_bytes() - need)))
