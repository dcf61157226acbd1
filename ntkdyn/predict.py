"""Prediction entry points.

* :func:`predict_from_kernels` — arrays in (kernels you computed yourself,
  e.g. with neural-tangents), :class:`~ntkdyn.trajectory.Trajectory` out.
* :func:`predict` — architecture + partitioned data + mixing matrix; the
  kernel (analytic or empirical) is computed for you.
* ``*_sweep`` variants — several learning rates sharing every pass over the
  kernel (a 10-rate sweep costs little more than one prediction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib import metadata as _importlib_metadata

import jax
import numpy as np

from . import memory, solver, spectrum
from .algorithms import Algorithm, get_algorithm
from .problem import KernelProblem, make_problem
from .trajectory import Trajectory
from .validation import learning_rates, steps_array


def versions() -> dict[str, str]:
    """Versions of ntkdyn and its numerical dependencies (stored with results)."""
    out = {}
    for pkg in ("ntkdyn", "jax", "jaxlib", "numpy", "scipy", "networkx"):
        try:
            out[pkg] = _importlib_metadata.version(pkg)
        except _importlib_metadata.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return out


def _mesh(devices):
    if devices is None:
        return None
    from jax.sharding import Mesh

    from .sharding import make_mesh

    return devices if isinstance(devices, Mesh) else make_mesh(devices)


def _check_device_memory(problem: KernelProblem, n_rates: int, mesh, kernel_dtype: str):
    """Print the per-device estimate; refuse (with what would fit) before allocating."""
    import sys

    from . import sharding

    d = mesh.devices.size
    n_test = 0 if problem.y_test is None else problem.y_test.shape[0]
    est = sharding.per_device_bytes(problem.num_train, n_test, problem.num_outputs,
                                    problem.num_agents, d, traced=problem.traced,
                                    rates=n_rates, kernel_dtype=kernel_dtype)
    print(f"ntkdyn: memory estimate {sharding.describe_estimate(est, d)}", file=sys.stderr)
    avail = sharding.device_memory_bytes(mesh.devices.flat[0])
    if est["total"] > avail:
        raise memory.ProblemTooLargeError(
            "this sharded prediction " + sharding.fits_hint(est, d, avail))


def _check_memory(problem: KernelProblem, n_rates: int, n_records: int, record_outputs: bool):
    n_test = 0 if problem.y_test is None else problem.y_test.shape[0]
    need = memory.prediction_bytes(
        problem.num_train, n_test, problem.num_outputs, problem.num_agents,
        traced=problem.traced, rates=n_rates, records=n_records, record_outputs=record_outputs)
    # the kernel itself is already in memory (numpy); the device copy doubles it on CPU
    memory.ensure_fits(
        need, "this prediction",
        "use fewer training samples, a traced kernel instead of the full one, fewer learning "
        "rates per sweep, or record_outputs=False")


def run_problem(
    problem: KernelProblem,
    algorithm: str | Algorithm,
    lrs: Sequence,
    steps,
    *,
    continuous: bool = False,
    record_outputs: bool = False,
    progress: bool = False,
    metadata: dict | None = None,
    check_stability: bool | None = None,
    reference: bool = True,
    kernel_dtype: str = "float64",
    devices=None,
) -> list[Trajectory]:
    """Predict one trajectory per row of ``lrs`` (each a scalar or ``(Q,)`` rates).

    ``check_stability``: ``None`` (default) computes the exact stability report
    (:func:`ntkdyn.spectrum.stability`) only for rates above the cheap sufficient bound;
    ``True`` always; ``False`` never.  A rate whose linearised dynamics are unstable
    gets ``status = "unstable"`` (or ``"diverged"`` once its state left every bound)
    and the report in ``metadata["stability"]``.  ``reference=False`` drops the
    centralised reference (``central_*`` fields ``None``), about 1.6x faster.
    ``kernel_dtype="float32"`` stores the kernels in float32 (half the memory and
    bandwidth; the state stays float64; see the README for the error this costs).
    ``devices`` (a list of ``jax.Device`` or a ``jax.sharding.Mesh``) shards the
    kernels and the state over several devices (:mod:`ntkdyn.sharding`).
    """
    algo = get_algorithm(algorithm)
    q_count = problem.num_agents
    rate_rows = np.stack([learning_rates(lr, q_count) for lr in lrs])
    steps = steps_array(steps, "times" if continuous else "steps", integer=not continuous)
    mesh = _mesh(devices)
    if mesh is None:
        _check_memory(problem, len(rate_rows), len(steps), record_outputs)
    else:
        _check_device_memory(problem, len(rate_rows), mesh, kernel_dtype)
    raw = solver.evolve(problem, algo, rate_rows, steps, continuous=continuous,
                        record_outputs=record_outputs, progress=progress, central=reference,
                        kernel_dtype=kernel_dtype, mesh=mesh)
    base_meta = {
        "algorithm": algo.name,
        "num_agents": q_count,
        "num_train": problem.num_train,
        "num_outputs": problem.num_outputs,
        "kernel_layout": "traced" if problem.traced else "full",
        "kernel_dtype": kernel_dtype,
        "mixing": problem.mixing.tolist(),
        "versions": versions(),
        **(metadata or {}),
    }
    trajs = [_trajectory(raw, r, problem, steps, rate_rows[r], continuous, base_meta)
             for r in range(len(rate_rows))]
    if check_stability is False or (continuous and check_stability is None):
        # the discrete-time spectrum says nothing about the flow (e.g. DGD's flow converges
        # at every rate); a flow that blew up is still reported as "diverged"
        return trajs
    bound = spectrum.sufficient_bound(problem, algo) if check_stability is None else 0.0
    out = []
    for traj, lr in zip(trajs, rate_rows, strict=True):
        if check_stability or traj.diverged or not np.isfinite(bound) or lr.max() >= bound:
            report = spectrum.stability(problem, algo, lr)
            status = traj.status if (report.stable or traj.diverged) else "unstable"
            meta = dict(traj.metadata, stability=report.to_dict())
            if not report.stable:
                meta["divergence"] = report.describe()
            traj = dataclasses.replace(traj, status=status, metadata=meta)
        out.append(traj)
    return out


def _trajectory(raw, r, problem, steps, lr, continuous, meta) -> Trajectory:
    q = problem.num_agents
    flags = raw["diverged"][:, r]
    n_rec = raw["train_loss"].shape[0]
    keep = int(np.argmax(flags)) if flags.any() else n_rec
    status = "diverged" if flags.any() or raw["diverged_at"][r] >= 0 else "ok"
    div_at = int(raw["diverged_at"][r]) if status == "diverged" else None
    inverse = np.argsort(problem.order)

    def agents(key):
        return None if key not in raw else raw[key][:keep, :q, r]

    def central(key):
        if key not in raw or raw[key].shape[1] == q:
            return None
        return raw[key][:keep, q, r]

    def mean_model(key):
        return None if key not in raw else raw[key][:keep, r]

    def outputs(key, unsort):
        if key not in raw:
            return None
        arr = raw[key][:keep, :q, r]
        return arr[:, :, inverse] if unsort else arr

    meta = dict(meta, lr=lr.tolist())
    return Trajectory(
        steps=np.asarray(steps)[:keep],
        train_loss=agents("train_loss"),
        local_loss=raw["local_loss"][:keep, :, r],
        objective=agents("objective"),
        train_acc=agents("train_acc"),
        param_dist=agents("param_dist"),
        consensus_dist=raw["consensus_dist"][:keep, :, r],
        central_dist=raw["central_dist"][:keep, :, r] if "central_dist" in raw else None,
        central_train_loss=central("train_loss"),
        central_objective=central("objective"),
        central_train_acc=central("train_acc"),
        central_param_dist=central("param_dist"),
        mean_model_train_loss=mean_model("mean_model_train_loss"),
        mean_model_train_acc=mean_model("mean_model_train_acc"),
        test_loss=agents("test_loss"),
        test_acc=agents("test_acc"),
        central_test_loss=central("test_loss"),
        central_test_acc=central("test_acc"),
        mean_model_test_loss=mean_model("mean_model_test_loss"),
        mean_model_test_acc=mean_model("mean_model_test_acc"),
        train_outputs=outputs("train_outputs", True),
        test_outputs=outputs("test_outputs", False),
        status=status,
        diverged_at=div_at,
        continuous=continuous,
        lr=lr,
        metadata=meta,
    )


def predict_from_kernels(
    kernel_train,
    y_train,
    agent,
    mixing,
    lr,
    steps,
    algorithm: str | Algorithm = "dgd",
    f0_train=None,
    kernel_test_train=None,
    y_test=None,
    f0_test=None,
    continuous: bool = False,
    *,
    record_outputs: bool = False,
    progress: bool = False,
    reference: bool = True,
    kernel_dtype: str = "float64",
    devices=None,
) -> Trajectory:
    r"""Predict peer-to-peer training of a linearised network from its kernels.

    Agent ``q`` minimises ``L_q = 1/(2 N_q) sum_{i in q} ||f(x_i) - y_i||^2``;
    the network is ``f = f_0 + J (theta - theta_0)`` with NTK
    ``Theta = J J^T``.  The prediction is exact for that model (to float64
    round-off) and is computed in kernel space (:mod:`ntkdyn.solver`).

    Parameters
    ----------
    kernel_train : (N, N) or (N*K, N*K)
        Training NTK: traced (``Theta_scalar``, the true kernel being
        ``Theta_scalar (x) I_K``) or full (sample-major, row ``i*K + k``).
    y_train : (N, K)
        Targets (e.g. one-hot).
    agent : (N,) int
        Agent owning each training sample (any order).
    mixing : (Q, Q)
        Row-stochastic mixing matrix of a connected graph.
    lr : float or (Q,)
        Learning rate (per agent if an array), > 0.
    steps : int, range or sequence
        Iterations at which to record (``int n`` means ``0..n``); with
        ``continuous=True``, times (in steps) of the gradient flow.
    algorithm : "dgd", "atc", "cta", "gd" or an :class:`~ntkdyn.algorithms.Algorithm`
    f0_train, f0_test : (N, K), (M, K), optional
        Outputs at initialisation (default zero: the mean prediction of the
        infinite-width network).
    kernel_test_train : (M, N) or (M*K, N*K), optional
        Test-train kernel, same layout as ``kernel_train``.
    y_test : (M, K), optional
    continuous : bool
        Predict the gradient flow ``d alpha/dt = step(alpha) - alpha``
        instead of the iteration.
    record_outputs : bool
        Also return the outputs of every agent at every record.
    reference : bool
        Also run the centralised reference (``central_*`` fields); ``False`` is
        about 1.6x faster where the solver is compute bound.
    kernel_dtype : "float64" (default) or "float32"
        Kernel storage; float32 halves memory and bandwidth, the state stays float64.
    devices : list of jax devices or a Mesh, optional
        Shard kernels and state over these devices (same answer as one device).

    Returns
    -------
    Trajectory

    Examples
    --------
    >>> import numpy as np, ntkdyn as nd
    >>> x = np.random.default_rng(0).normal(size=(8, 3))
    >>> K = x @ x.T / 3 + 0.1
    >>> y = np.eye(2)[[0, 1] * 4]
    >>> W = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    >>> traj = nd.predict_from_kernels(K, y, np.arange(8) % 4, W, lr=0.5, steps=range(0, 101, 10))
    >>> traj.train_loss.shape
    (11, 4)
    """
    problem = make_problem(kernel_train, y_train, agent, mixing, f0_train=f0_train,
                           kernel_test_train=kernel_test_train, y_test=y_test, f0_test=f0_test)
    return run_problem(problem, algorithm, [lr], steps, continuous=continuous,
                       record_outputs=record_outputs, progress=progress,
                       metadata={"kernel": "user"}, reference=reference,
                       kernel_dtype=kernel_dtype, devices=devices)[0]


def sweep_from_kernels(kernel_train, y_train, agent, mixing, lrs: Sequence, steps,
                       algorithm: str | Algorithm = "dgd", **kwargs) -> list[Trajectory]:
    """Like :func:`predict_from_kernels` for several learning rates at once.

    All rates share each pass over the kernel; the result is one
    :class:`Trajectory` per entry of ``lrs``.
    """
    prob_kw = {k: kwargs.pop(k) for k in ("f0_train", "kernel_test_train", "y_test", "f0_test")
               if k in kwargs}
    problem = make_problem(kernel_train, y_train, agent, mixing, **prob_kw)
    return run_problem(problem, algorithm, list(lrs), steps, metadata={"kernel": "user"},
                       **kwargs)


__all__ = ["predict_from_kernels", "sweep_from_kernels", "run_problem", "versions"]
_ = jax  # jax is imported for its x64 side effect via ntkdyn._config
