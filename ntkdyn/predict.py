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
from .trajectory import GossipTrajectory, Trajectory, quantity_words
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


def _check_memory(problem: KernelProblem, n_rates: int, n_records: int, record_outputs: bool,
                  eigen_reference: bool = False):
    n_test = 0 if problem.y_test is None else problem.y_test.shape[0]
    need = memory.prediction_bytes(
        problem.num_train, n_test, problem.num_outputs, problem.num_agents,
        traced=problem.traced, rates=n_rates, records=n_records, record_outputs=record_outputs,
        eigen_reference=eigen_reference)
    # the kernel itself is already in memory (numpy); the device copy doubles it on CPU
    memory.ensure_fits(
        need, "this prediction",
        "use fewer training samples, a traced kernel instead of the full one, fewer learning "
        "rates per sweep, or record_outputs=False")


DEFAULT_SAMPLES = 64  # sampled mixing sequences for a random mixing process
QUANTILE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


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
    samples: int | None = None,
    init=None,
) -> list[Trajectory]:
    """Predict one trajectory per row of ``lrs`` (each a scalar or ``(Q,)`` rates).

    ``init`` (:class:`ntkdyn.random_init.InitDraws`): sampled initial outputs; each
    trajectory is then a :class:`~ntkdyn.trajectory.RandomNetworkTrajectory` over that
    many random networks (their responses share every kernel pass with the mean network,
    ``.mean_network``), with the exact expected losses where affordable.  Squared loss,
    traced kernel, static or periodic mixing, one device; ``record_outputs`` records the
    mean network's outputs (``.mean_network.train_outputs``), not the sampled networks'.

    ``check_stability``: ``None`` (default) computes the exact stability report
    (:func:`ntkdyn.spectrum.stability`) only for rates above the cheap sufficient bound;
    ``True`` always; ``False`` never.  A rate whose linearised dynamics are unstable
    gets ``status = "unstable"`` (or ``"diverged"`` once its state left every bound)
    and the report in ``metadata["stability"]``.  ``reference=False`` drops the
    centralised reference (``central_*`` fields ``None``); it costs little either way:
    it runs diagonally in its own eigenbasis after one ``eigh`` (:mod:`ntkdyn.solver`).
    ``kernel_dtype="float32"`` stores the kernels in float32 (half the memory and
    bandwidth; the state stays float64; see the README for the error this costs).
    ``devices`` (a list of ``jax.Device`` or a ``jax.sharding.Mesh``) shards the
    kernels and the state over several devices (:mod:`ntkdyn.sharding`).

    With a random mixing sequence (``problem.process``, :mod:`ntkdyn.gossip`) each
    trajectory is a :class:`~ntkdyn.trajectory.GossipTrajectory` over ``samples``
    sampled sequences (default 64; sequence ``s`` is the one
    :func:`ntkdyn.train.train` runs with ``gossip_sample=s``), all sharing every
    kernel pass, plus the exact mean-state trajectory (``.expected``).

    With ``problem.loss == "cross_entropy"`` the dynamics are not affine: the exact
    (linearised) stability analysis is for the squared loss, so ``metadata["stability"]``
    states the sufficient bound from the largest softmax curvature instead
    (:func:`cross_entropy_bound`), ``status`` reflects an observed blow-up only, and the
    centralised reference is carried along every kernel pass (no eigenbasis).
    """
    algo = get_algorithm(algorithm)
    q_count = problem.num_agents
    rate_rows = learning_rates(lrs, q_count, rows=True)
    steps = steps_array(steps, "times" if continuous else "steps", integer=not continuous)
    mesh = _mesh(devices)
    process = problem.process
    if process is not None and process.random:
        samples = DEFAULT_SAMPLES if samples is None else samples
        if isinstance(samples, bool) or not isinstance(samples, int | np.integer) \
                or samples < 1:
            raise ValueError(f"samples: expected an integer >= 1, got {samples!r}")
    elif samples is not None:
        raise ValueError("samples: only for a random mixing sequence (ntkdyn.graphs."
                         "random_edges / one_random_edge), got a deterministic mixing")
    groups, with_expected = solver.mixing_groups(problem, samples)
    run = problem
    if init is not None:
        if with_expected or mesh is not None:
            raise ValueError("f0: sampled random networks (f0='random') run with a static or "
                             "periodic mixing, on one device; use f0='mean' (or 'network') "
                             "for this prediction")
        from . import random_init

        run = random_init.augment(problem, init)
    if mesh is None:
        _check_memory(run, len(rate_rows) * groups, len(steps) * algo.records_per_step,
                      record_outputs, eigen_reference=reference
                      and solver.use_eigen_reference(problem))
    else:
        _check_device_memory(problem, len(rate_rows) * groups, mesh, kernel_dtype)
    raw = solver.evolve(run, algo, rate_rows, steps, continuous=continuous,
                        record_outputs=record_outputs, progress=progress, central=reference,
                        kernel_dtype=kernel_dtype, mesh=mesh, samples=samples,
                        networks=0 if init is None else init.samples)
    base_meta = {
        "algorithm": algo.name,
        "num_agents": q_count,
        "num_train": problem.num_train,
        "num_outputs": problem.num_outputs,
        "kernel_layout": "traced" if problem.traced else "full",
        "kernel_dtype": kernel_dtype,
        "loss": problem.loss,
        "mixing": problem.mixing.tolist(),
        "versions": versions(),
        **(metadata or {}),
    }
    if algo.options:
        base_meta["algorithm_options"] = algo.settings
    if algo.records_per_step > 1:
        base_meta["phases"] = list(algo.phase_names)
    if process is not None:
        base_meta["mixing_process"] = process.describe()
        base_meta["mixing_note"] = ("'mixing' is the expected matrix" if process.random else
                                    "'mixing' is the average over the period")
    n_rates = len(rate_rows)
    rec_steps, phase = _record_layout(steps, algo.records_per_step)
    trajs = []
    if init is not None:
        p = init.samples
        raw_nets = {key.split("/", 1)[1]: v for key, v in raw.items()
                    if key.startswith("networks/")}
        raw_nets["diverged"] = np.repeat(raw["diverged"], p, axis=1)
        raw_nets["diverged_at"] = np.repeat(raw["diverged_at"], p)
        raw = {key: v for key, v in raw.items() if not key.startswith("networks/")}
    for r in range(n_rates):
        def one(g, r=r):
            return _trajectory(raw, g * n_rates + r, problem, rec_steps, rate_rows[r],
                               continuous, base_meta, phase)
        if init is not None:
            nets = [_trajectory(raw_nets, r * p + s, problem, rec_steps, rate_rows[r],
                                continuous, base_meta, phase) for s in range(p)]
            exact = random_init.exact_expected_losses(problem, algo, rate_rows[r], rec_steps,
                                                      continuous, init.nngp)
            trajs.append(random_init.assemble(one(0), nets, init, exact))
        elif not with_expected:
            trajs.append(one(0))
        else:
            trajs.append(_aggregate([one(g) for g in range(groups - 1)], one(groups - 1)))
    if problem.loss != "mse":
        if problem.logit_scale != 1.0:
            base_meta["logit_scale"] = problem.logit_scale
        if check_stability is False:
            return trajs
        note = cross_entropy_bound(problem, algo)
        return [dataclasses.replace(t, metadata=dict(t.metadata, stability=note))
                for t in trajs]
    if check_stability is False or (continuous and check_stability is None):
        # the discrete-time spectrum says nothing about the flow (e.g. DGD's flow converges
        # at every rate); a flow that blew up is still reported as "diverged"
        return trajs
    bound = spectrum.sufficient_bound(problem, algo) if check_stability is None else 0.0
    out = []
    for traj, lr in zip(trajs, rate_rows, strict=True):
        if check_stability is None and not traj.diverged and not np.isfinite(bound):
            # no cheap bound (gradient tracking, EXTRA, ...): one dense spectral radius
            # decides whether the exact report (lr*, a root search) is needed; beyond the
            # dense size the status reflects an observed blow-up only (nd.stability gives lr*)
            op = spectrum.StepOperator(problem, algo, lr / lr.max())
            if op.dim > spectrum.DENSE_MAX:
                meta = dict(traj.metadata, stability=(
                    "not computed: no sufficient bound for this schedule and the operator "
                    f"({op.dim} dimensions) is beyond the dense size; status reflects an "
                    "observed blow-up only; ntkdyn.stability(problem, algorithm, lr) gives lr*"))
                out.append(dataclasses.replace(traj, metadata=meta))
                continue
            if op.spectral_radius(float(lr.max())) <= 1 + spectrum.RHO_TOL:
                out.append(traj)
                continue
        if check_stability or traj.diverged or not np.isfinite(bound) or lr.max() >= bound:
            report = spectrum.stability(problem, algo, lr)
            status = traj.status if (report.stable or traj.diverged) else "unstable"
            meta = dict(traj.metadata, stability=report.to_dict())
            if not report.stable:
                meta["divergence"] = report.describe()
            traj = dataclasses.replace(traj, status=status, metadata=meta)
        out.append(traj)
    return out


def cross_entropy_bound(problem: KernelProblem, algorithm) -> str:
    r"""The sufficient stability bound for cross-entropy, in words (with its value).

    The Hessian of ``CE(softmax(s f), y)`` in ``f`` is ``s^2 (diag(p) - p p^T)``, whose
    largest eigenvalue is at most ``s^2 / 2`` for every ``f``: the squared loss's
    sufficient bound (:func:`ntkdyn.spectrum.sufficient_bound`, curvature 1) scaled by
    ``2 / s^2`` keeps every local step non-expansive along the whole trajectory.  It is
    sufficient only; the exact linearised analysis at ``f_0`` is not computed.
    """
    bound = spectrum.sufficient_bound(problem, algorithm) * 2.0 / problem.logit_scale ** 2
    value = (f"lr < {bound:.6g}" if np.isfinite(bound) else
             "none known for this schedule and mixing")
    return ("loss='cross_entropy': the dynamics are not affine, exact stability is not "
            "computed; sufficient bound from the largest softmax curvature (s^2/2, "
            f"s = logit_scale = {problem.logit_scale:g}): {value}; status reflects an "
            "observed blow-up only")


def _record_layout(steps: np.ndarray, per_step: int):
    """Steps and phase index of every record (``per_step`` records per recorded step)."""
    if per_step == 1:
        return steps, None
    return np.repeat(steps, per_step), np.tile(np.arange(per_step), len(steps))


def _aggregate(samples: list[Trajectory], expected: Trajectory) -> GossipTrajectory:
    """Mean over sampled sequences of every metric, quantile bands, and the E[W] run."""
    keep = min(len(t.steps) for t in samples)
    diverged = [t.diverged_at for t in samples if t.status == "diverged"]
    levels = np.asarray(QUANTILE_LEVELS)
    arrays, quantiles = {}, {}
    first = samples[0]
    for f in dataclasses.fields(Trajectory):
        v = getattr(first, f.name)
        if not isinstance(v, np.ndarray) or f.name in ("steps", "lr", "phase"):
            continue
        stack = np.stack([getattr(t, f.name)[:keep] for t in samples])
        arrays[f.name] = stack.mean(axis=0)
        if not f.name.endswith("_outputs"):
            quantiles[f.name] = np.quantile(stack, levels, axis=0)
    meta = dict(first.metadata, samples=len(samples),
                note="fields: mean over sampled mixing sequences of each metric (mean of the "
                     "loss); .expected: exact mean-state trajectory with E[W] (loss of the "
                     "mean); quantiles: bands over the samples")
    return GossipTrajectory(
        steps=first.steps[:keep], phase=None if first.phase is None else first.phase[:keep],
        status="diverged" if diverged else "ok",
        diverged_at=min(diverged) if diverged else None, continuous=first.continuous,
        lr=first.lr, metadata=meta, samples=len(samples), quantile_levels=levels,
        quantiles=quantiles, expected=expected, **arrays)


def _trajectory(raw, r, problem, steps, lr, continuous, meta, phase=None) -> Trajectory:
    q = problem.num_agents
    flags = raw["diverged"][:, r]
    n_rec = raw["train_loss"].shape[0]
    keep = int(np.argmax(flags)) if flags.any() else n_rec
    if phase is not None and flags.any():  # drop the whole step
        keep -= keep % int(phase.max() + 1)
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
        phase=None if phase is None else phase[:keep],
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
    samples: int | None = None,
    loss: str = "mse",
    logit_scale: float = 1.0,
    nngp=None,
    seed: int = 0,
) -> Trajectory:
    r"""Predict peer-to-peer training of a linearised network from its kernels.

    Agent ``q`` minimises ``L_q = 1/(2 N_q) sum_{i in q} ||f(x_i) - y_i||^2``
    (``loss="mse"``) or ``L_q = (1/N_q) sum_{i in q} CE(softmax(s f(x_i)), y_i)``
    (``loss="cross_entropy"``, ``s = logit_scale``);
    the network is ``f = f_0 + J (theta - theta_0)`` with NTK
    ``Theta = J J^T``.  The prediction is exact for that model (to float64
    round-off) and is computed in kernel space (:mod:`ntkdyn.solver`).

    Parameters
    ----------
    kernel_train : (N, N) or (N*K, N*K)
        Training NTK: traced (``Theta_scalar``, the true kernel being
        ``Theta_scalar (x) I_K``) or full (sample-major, row ``i*K + k``).
    y_train : (N, K) or (N,)
        Targets (e.g. one-hot); with ``loss="cross_entropy"`` one-hot rows or integer
        class labels.
    agent : (N,) int
        Agent owning each training sample (any order).
    mixing : (Q, Q) or MixingProcess
        Row-stochastic mixing matrix of a connected graph, or a time-varying / random
        sequence of them (:func:`ntkdyn.graphs.periodic`, :func:`ntkdyn.graphs.random_edges`,
        :func:`ntkdyn.graphs.one_random_edge`).
    lr : float or (Q,)
        Learning rate (per agent if an array), > 0.
    steps : int, range or sequence
        Iterations at which to record (``int n`` means ``0..n``); with
        ``continuous=True``, times (in steps) of the gradient flow.
    algorithm : "dgd", "atc", "cta", "gd", "p2pl", "gradient_tracking", "extra",
        "momentum" or an :class:`~ntkdyn.algorithms.Algorithm` (e.g.
        ``ntkdyn.algorithms.p2pl(local_steps=5, consensus_steps=2)``)
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
        Also run the centralised reference (``central_*`` fields): one ``eigh`` of the
        kernel, then ``O(N K)`` per step (:mod:`ntkdyn.solver`).
    kernel_dtype : "float64" (default) or "float32"
        Kernel storage; float32 halves memory and bandwidth, the state stays float64.
    devices : list of jax devices or a Mesh, optional
        Shard kernels and state over these devices (same answer as one device).
    samples : int, optional
        Random mixing only: sampled sequences (default 64); the result is then a
        :class:`~ntkdyn.trajectory.GossipTrajectory` (means, quantile bands and the
        exact mean-state trajectory ``.expected``).
    loss : "mse" (default) or "cross_entropy"
        The trained loss; the ``*_loss`` and ``objective`` fields report it.  Cross-entropy
        runs discrete steps only (``continuous=True`` is refused), its centralised
        reference is carried along the kernel passes (``theory/cross_entropy.md``).
    logit_scale : float
        Cross-entropy only: the logits are ``s f`` (inverse temperature), default 1.
    nngp : (N+M, N+M), optional
        NNGP kernel on the training inputs (caller's order) then the test inputs: predict
        **one random network** (infinite width) instead of the mean network.  ``samples``
        initial outputs (default :data:`ntkdyn.random_init.DEFAULT_NETWORKS`) are drawn
        from ``N(0, nngp)`` with ``jax.random.PRNGKey(seed)`` and run as extra columns
        (:mod:`ntkdyn.random_init`); the result is a
        :class:`~ntkdyn.trajectory.RandomNetworkTrajectory` (expected losses, bands,
        ``.mean_network``).  Squared loss, traced kernel, no ``f0_train``/``f0_test``.
    seed : int
        Seed of the sampled initial outputs (with ``nngp``).

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
                           kernel_test_train=kernel_test_train, y_test=y_test, f0_test=f0_test,
                           loss=loss, logit_scale=logit_scale)
    init = None
    if nngp is not None:
        from . import random_init

        if f0_train is not None or f0_test is not None:
            raise ValueError("nngp: samples random initial outputs; it cannot be combined "
                             "with f0_train / f0_test")
        init = random_init.draw(random_init.sorted_nngp(problem, nngp), problem.num_train,
                                random_init.DEFAULT_NETWORKS if samples is None else samples,
                                seed)
        samples = None
    return run_problem(problem, algorithm, [lr], steps, continuous=continuous,
                       record_outputs=record_outputs, progress=progress,
                       metadata={"kernel": "user", "quantity": quantity_words(f0_train is None)},
                       reference=reference, kernel_dtype=kernel_dtype, devices=devices,
                       samples=samples, init=init)[0]


def sweep_from_kernels(kernel_train, y_train, agent, mixing, lrs: Sequence, steps,
                       algorithm: str | Algorithm = "dgd", **kwargs) -> list[Trajectory]:
    """Like :func:`predict_from_kernels` for several learning rates at once.

    All rates share each pass over the kernel; the result is one
    :class:`Trajectory` per entry of ``lrs``.
    """
    prob_kw = {k: kwargs.pop(k) for k in ("f0_train", "kernel_test_train", "y_test", "f0_test",
                                          "loss", "logit_scale") if k in kwargs}
    problem = make_problem(kernel_train, y_train, agent, mixing, **prob_kw)
    meta = {"kernel": "user", "quantity": quantity_words(prob_kw.get("f0_train") is None)}
    return run_problem(problem, algorithm, list(lrs), steps, metadata=meta, **kwargs)


__all__ = ["predict_from_kernels", "sweep_from_kernels", "run_problem", "versions"]
_ = jax  # jax is imported for its x64 side effect via ntkdyn._config
