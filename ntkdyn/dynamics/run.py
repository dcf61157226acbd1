"""Run a kernel-space problem: memory checks, the solver, records -> trajectories.

:func:`run_problem` is the one driver behind every prediction entry point
(:mod:`ntkdyn.prediction`), the preflight check and the validation harness: it takes a
:class:`~ntkdyn.dynamics.problem.KernelProblem` and an algorithm, checks that the run
fits in memory, runs :func:`ntkdyn.dynamics.solver.evolve` for one or several learning
rates (a sweep shares every pass over the kernel) and turns the raw records into
:class:`~ntkdyn.trajectory.Trajectory` objects (random mixing: sampled sequences,
quantile bands and the exact mean-state run in a ``GossipTrajectory``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib import metadata as _importlib_metadata

import jax
import numpy as np

from ntkdyn._utils import memory
from ntkdyn._utils.checks import (
    check_bool,
    check_nonnegative_int,
    learning_rates,
    steps_array,
)
from ntkdyn.algorithms import Algorithm, get_algorithm
from ntkdyn.dynamics import solver
from ntkdyn.dynamics import stability as spectrum
from ntkdyn.dynamics.problem import KernelProblem
from ntkdyn.graphs.sequences import process_metadata
from ntkdyn.trajectory import GossipTrajectory, Trajectory, growing_runs, observed_growth


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

    from ntkdyn.dynamics.sharding import make_mesh

    return devices if isinstance(devices, Mesh) else make_mesh(devices)


def _check_device_memory(problem: KernelProblem, n_rates: int, mesh, kernel_dtype: str):
    """Print the per-device estimate; refuse (with what would fit) before allocating."""
    import sys

    from ntkdyn.dynamics import sharding

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


def _check_memory(problem: KernelProblem, n_rates: int, algo: Algorithm, steps: np.ndarray,
                  record_outputs: bool, *, central: bool, continuous: bool) -> bool:
    """Refuse (with what would fit) before allocating; the estimate counts the outputs the
    solver's state carries where :func:`ntkdyn.dynamics.solver.carries_outputs` says so.
    Returns that choice, which the solver is then given."""
    n_test = 0 if problem.y_test is None else problem.y_test.shape[0]
    n_records = len(steps) * algo.records_per_step
    carried_outputs = solver.carries_outputs(
        problem, n_records, int(steps[-1]) if len(steps) else 0,
        mixes_per_step=algo.mixes_per_step, central=central, continuous=continuous)
    need = memory.prediction_bytes(
        problem.num_train, n_test, problem.num_outputs, problem.num_agents,
        traced=problem.traced, rates=n_rates, records=n_records, record_outputs=record_outputs,
        eigen_reference=central and solver.use_eigen_reference(problem),
        carried_outputs=carried_outputs)
    # the kernel itself is already in memory (numpy); the device copy doubles it on CPU
    memory.ensure_fits(
        need, "this prediction",
        "use fewer training samples, a traced kernel instead of the full one, fewer learning "
        "rates per sweep, fewer recorded steps, or record_outputs=False")
    return carried_outputs


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
    batch_size: int = 0,
    seed: int = 0,
    batch_sampling: str = "epoch",
    init=None,
    init_band: bool = True,
    train_records: str = "all",
) -> list[Trajectory]:
    """Predict one trajectory per row of ``lrs`` (each a scalar or ``(Q,)`` rates).

    ``init`` (:class:`ntkdyn.dynamics.random_init.InitDraws`): sampled initial outputs; each
    trajectory is then a :class:`~ntkdyn.trajectory.RandomNetworkTrajectory` over that
    many random networks (their responses share every kernel pass with the mean network,
    ``.mean_network``), with the exact expected losses where affordable.  Traced kernel,
    one device; ``record_outputs`` records the mean network's outputs
    (``.mean_network.train_outputs``), not the sampled networks'.  Squared loss with a
    static or periodic mixing and full batch: shared cyclic columns (``init.outputs == 1``);
    cross-entropy, random mixing or mini-batch SGD: independent networks, ``K`` columns
    each (``init.outputs == K``; with sequences ``samples`` must equal the networks:
    network ``s`` runs sequence ``s``; :func:`_independent_groups`).  There, for the squared
    loss, the expected dynamics from each network's ``f_0`` also run (``S`` more column
    groups, ``.init_band_run``: the band over initialisations alone); ``init_band=False``
    leaves them out (``ntkdyn check`` reports the joint band only).

    ``train_records="final"``: the training-set records (training loss and accuracy,
    parameter, consensus and centralised distances; :data:`ntkdyn.dynamics.solver.
    TRAIN_KEYS`) are ``NaN`` at every recorded step but the last, which skips a product of
    the training kernel with every agent's state per record (``ntkdyn check``'s sweep,
    which reads them at the horizon only); the test records are all there.  Discrete
    steps and the gradient flow of the squared loss; every record is computed where it
    costs nothing extra (carried outputs), with sampled random networks (``init``) and on
    the cross-entropy flow.

    ``check_stability``: ``None`` (default) computes the exact stability report
    (:func:`ntkdyn.dynamics.stability.stability`) only for rates above the cheap sufficient bound;
    ``True`` always; ``False`` never.  A rate whose linearised dynamics are unstable
    gets ``status = "unstable"`` (or ``"diverged"`` once its state left every bound)
    and the report in ``metadata["stability"]``.  ``reference=False`` drops the
    centralised reference (``central_*`` fields ``None``); it costs little either way:
    it runs diagonally in its own eigenbasis after one ``eigh`` (:mod:`ntkdyn.dynamics.solver`).
    ``kernel_dtype="float32"`` stores the kernels in float32 (half the memory and
    bandwidth; the state stays float64; see the README for the error this costs).
    ``devices`` (a list of ``jax.Device`` or a ``jax.sharding.Mesh``) shards the
    kernels and the state over several devices (:mod:`ntkdyn.dynamics.sharding`).

    With a random mixing sequence (``problem.process``, :mod:`ntkdyn.graphs.sequences`) each
    trajectory is a :class:`~ntkdyn.trajectory.GossipTrajectory` over ``samples``
    sampled sequences (default 64; sequence ``s`` is the one
    :func:`ntkdyn.training.trainer.train` runs with ``gossip_sample=s``), all sharing every
    kernel pass, plus the exact mean-state trajectory (``.expected``).

    Mini-batch SGD (``batch_size = B > 0``, at most the smallest shard): every agent
    draws ``B`` of its samples per gradient, without replacement within each epoch
    (``batch_sampling="epoch"``) or a fresh subset per draw (``"independent"``;
    :mod:`ntkdyn.minibatch`); ``samples`` (default 64) sampled batch sequences, seeded by
    ``seed`` (sequence ``s`` is the one :func:`ntkdyn.train.train` runs with the same
    ``seed`` and ``batch_sample=s``), run side by side sharing every kernel pass, and the
    result is a :class:`~ntkdyn.trajectory.GossipTrajectory` (means over the sequences,
    quantile bands, ``band(metric, lo, hi)``).  For the squared loss ``.expected`` is the
    full-batch training with the same rate: the exact expected trajectory of the
    linearised model's state and outputs for ``"independent"`` draws (the batch gradient
    is unbiased, independent of the state, and the dynamics affine in the state), the
    expectation to first order in the rate for ``"epoch"`` draws, whose draws within an
    epoch depend on each other (``theory/minibatch_sgd.md``); with a random mixing sequence too,
    sequence ``s`` draws mixing sequence ``s`` and ``.expected`` uses ``E[W]``.

    With ``problem.loss == "cross_entropy"`` the dynamics are not affine: the exact
    (linearised) stability analysis is for the squared loss, so ``metadata["stability"]``
    states the sufficient bound from the largest softmax curvature instead
    (:func:`cross_entropy_bound`), ``status`` reflects an observed blow-up only, and the
    centralised reference is carried along every kernel pass (no eigenbasis).
    """
    algo = get_algorithm(algorithm)
    _check_options(kernel_dtype, init, train_records, continuous, record_outputs)
    rate_rows = learning_rates(lrs, problem.num_agents, rows=True)
    steps = steps_array(steps, "times" if continuous else "steps", integer=not continuous)
    mesh = _mesh(devices)
    samples, batch_size, batch_sampling = _check_sampling(
        problem, samples=samples, batch_size=batch_size, batch_sampling=batch_sampling,
        seed=seed, continuous=continuous, devices=devices)
    groups, with_expected = solver.mixing_groups(problem, samples, batch_size)
    run = problem
    group_f0, copies, expected_groups = None, 0, 1
    if init is not None:
        if mesh is not None:
            raise ValueError("f0: sampled random networks (f0='random') run on one device; "
                             "use f0='mean' (or 'network') with devices=")
        from ntkdyn.dynamics import random_init

        if random_init.independent_networks(problem, batch_size):
            init_band = init_band and random_init.has_init_band(problem, batch_size)
            groups, copies, group_f0 = _independent_groups(problem, init, samples,
                                                           batch_size, kernel_dtype, init_band)
            expected_groups = init.samples + 1 if init_band else 1
        else:
            run = random_init.augment(problem, init)
    carried = None  # with a mesh: the solver's own choice (never carried)
    if mesh is None:
        carried = _check_memory(run, len(rate_rows) * groups, algo, steps, record_outputs,
                                central=reference, continuous=continuous)
    else:
        _check_device_memory(problem, len(rate_rows) * groups, mesh, kernel_dtype)
    if continuous and problem.loss != "mse":
        raw = _adaptive_flow(run, algo, rate_rows if group_f0 is None else
                             np.tile(rate_rows, (groups, 1)), steps, mesh=mesh,
                             record_outputs=record_outputs, central=reference,
                             kernel_dtype=kernel_dtype, group_f0=group_f0)
    else:
        raw = solver.evolve(run, algo, rate_rows, steps, continuous=continuous,
                            record_outputs=record_outputs, progress=progress, central=reference,
                            kernel_dtype=kernel_dtype, mesh=mesh, samples=samples,
                            batch_size=batch_size, seed=int(seed), batch_sampling=batch_sampling,
                            networks=0 if init is None or copies else init.samples,
                            group_f0=group_f0, copies=max(copies, 1),
                            expected_groups=expected_groups, carry_outputs=carried,
                            train_records=train_records)
    base_meta = _base_metadata(problem, algo, kernel_dtype, metadata)
    if "flow" in raw:
        base_meta["flow"] = raw.pop("flow")
    if batch_size:
        base_meta["minibatch"] = _minibatch_metadata(batch_size, samples, seed, batch_sampling,
                                                     with_expected)
    if copies:
        trajs = _assemble_independent(raw, problem, algo, rate_rows, steps, continuous,
                                      base_meta, init=init, copies=copies,
                                      batch_size=batch_size, init_band=init_band)
    else:
        trajs = _assemble(raw, problem, algo, rate_rows, steps, continuous, base_meta,
                          groups=groups, with_expected=with_expected,
                          minibatch=bool(batch_size), init=init)
    return _with_stability(trajs, problem, algo, rate_rows, continuous, check_stability)


def _check_options(kernel_dtype: str, init, train_records: str, continuous,
                   record_outputs) -> None:
    """``ValueError`` naming the option for a ``"mixed"`` kernel storage without sampled
    random networks, an unknown ``train_records``, or flags that are not booleans."""
    check_bool("continuous", continuous)
    check_bool("record_outputs", record_outputs)
    if kernel_dtype == "mixed" and init is None:
        raise ValueError("kernel_dtype: 'mixed' (float32 products for the sampled networks' "
                         "response columns) needs sampled random networks (f0='random')")
    if train_records not in ("all", "final"):
        raise ValueError(f"train_records: expected 'all' or 'final', got {train_records!r}")


def _independent_groups(problem: KernelProblem, init, samples, batch_size: int,
                        kernel_dtype: str, init_band: bool) -> tuple[int, int, tuple]:
    """``(G, copies, group_f0)`` of independent sampled networks
    (:mod:`ntkdyn.dynamics.random_init`): ``P + 1`` groups (cross-entropy, static or
    periodic mixing, full batch) or ``2 S + 1`` (``3 S + 1`` for the squared loss, with the
    expected dynamics from every f_0 where ``init_band``; random mixing / mini-batch SGD,
    network ``s`` on sequence ``s``; ``samples`` must equal the number of networks)."""
    from ntkdyn.dynamics import random_init

    process = problem.process
    sequences = bool(batch_size) or (process is not None and bool(process.random))
    if kernel_dtype == "mixed":
        raise ValueError("kernel_dtype: 'mixed' is for sampled networks sharing cyclic "
                         "columns (squared loss, static or periodic mixing, full batch); "
                         "use 'float64' or 'float32' here")
    if init.outputs != problem.num_outputs:
        raise ValueError(f"init: independent sampled networks need {problem.num_outputs} "
                         "draw columns per network (random_init.draw(..., outputs=K))")
    if sequences and samples != init.samples:
        raise ValueError(f"samples: with f0='random' network s runs on sequence s: expected "
                         f"samples = {init.samples} (the sampled networks), got {samples!r}")
    copies = 2 if sequences else 1
    group_f0 = random_init.group_initial_outputs(
        problem, init, copies, init_band=init_band)
    return len(group_f0[0]), copies, group_f0


def _assemble_independent(raw: dict, problem: KernelProblem, algo: Algorithm, rate_rows,
                          steps, continuous, base_meta: dict, *, init, copies: int,
                          batch_size: int, init_band: bool) -> list:
    """Raw records of independent sampled networks -> one
    :class:`~ntkdyn.trajectory.RandomNetworkTrajectory` per rate: groups ``0..P-1`` the
    networks; then the mean network (``f_0 = 0``): group ``P``, or (``copies = 2``) a
    :class:`~ntkdyn.trajectory.GossipTrajectory` over groups ``P..2P-1`` (the same
    sequences) with the expected group (the last); with the band over initialisations
    (``init_band``, where :func:`ntkdyn.dynamics.random_init.has_init_band`) groups
    ``2P..3P-1`` are the expected
    dynamics from the networks' ``f_0`` (``.init_band_run``)."""
    from ntkdyn.dynamics import random_init

    n_rates, p = len(rate_rows), init.samples
    rec_steps, phase = _record_layout(steps, algo.records_per_step)
    over = random_init.band_over(problem, batch_size)
    band = copies == 2 and init_band
    trajs = []
    for r in range(n_rates):
        def one(g, r=r):
            return _trajectory(raw, g * n_rates + r, problem, rec_steps, rate_rows[r],
                               continuous, base_meta, phase)
        nets = [one(s) for s in range(p)]
        last = one(copies * p + (p if band else 0))
        mean = one(p) if copies == 1 else _aggregate(
            [one(g) for g in range(p, 2 * p)], last,
            what="mini-batch" if batch_size else "mixing")
        run = None if not band else random_init.init_band_run(
            last, [one(g) for g in range(2 * p, 3 * p)], init, batch_size)
        trajs.append(random_init.assemble(mean, nets, init, None, over=over, init_band=run))
    return trajs


def _adaptive_flow(problem: KernelProblem, algo: Algorithm, rate_rows, steps, *, mesh,
                   **kw) -> dict:
    """The gradient flow of a non-affine loss (cross-entropy): no closed form, integrated
    adaptively by :func:`ntkdyn.dynamics.flow.evolve` (raw records plus ``"flow"``, the
    solver, tolerances and step counts for the metadata)."""
    from ntkdyn.dynamics import flow

    if algo.records_per_step > 1 or problem.process is not None:
        raise ValueError("continuous: the gradient flow is defined for single-phase schedules "
                         "with a static mixing matrix")
    return flow.evolve(problem, algo, rate_rows, steps, mesh=mesh, **kw)


def _check_sampling(problem: KernelProblem, *, samples, batch_size, batch_sampling, seed,
                    continuous, devices):
    """``(samples, batch_size, batch_sampling)`` checked: ``samples`` (default
    :data:`DEFAULT_SAMPLES`) only with a random mixing sequence or mini-batch SGD, which
    runs discrete steps on one device; ``ValueError`` naming the argument otherwise."""
    from ntkdyn.minibatch import check_batch_size, check_samples, check_sampling

    process = problem.process
    batch_size = check_batch_size(batch_size, problem.counts)
    batch_sampling = check_sampling(batch_sampling)
    if batch_sampling != "epoch" and not batch_size:
        raise ValueError(f"batch_sampling: only used with mini-batch SGD (batch_size > 0), "
                         f"got batch_sampling={batch_sampling!r} with batch_size=0")
    check_nonnegative_int("seed", seed)
    if (process is not None and process.random) or batch_size:
        samples = check_samples(DEFAULT_SAMPLES if samples is None else samples)
    elif samples is not None:
        raise ValueError("samples: only for a random mixing sequence (ntkdyn.graphs."
                         "random_edges / one_random_edge) or mini-batch SGD (batch_size > 0), "
                         "got a deterministic mixing and full batch")
    if batch_size and continuous:
        raise ValueError("continuous: the gradient flow is for full-batch gradients; "
                         "mini-batch SGD (batch_size > 0) runs discrete steps")
    if batch_size and devices is not None:
        raise ValueError("devices: mini-batch SGD runs on one device for now")
    return samples, batch_size, batch_sampling


def _base_metadata(problem: KernelProblem, algo: Algorithm, kernel_dtype: str,
                   metadata: dict | None) -> dict:
    """What every trajectory of a run says about its problem, schedule and versions."""
    meta = {
        "algorithm": algo.name,
        "num_agents": problem.num_agents,
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
        meta["algorithm_options"] = algo.settings
    if algo.records_per_step > 1:
        meta["phases"] = list(algo.phase_names)
    meta.update(process_metadata(problem.process))
    return meta


def _minibatch_metadata(batch_size: int, samples: int, seed: int, batch_sampling: str,
                        with_expected: bool) -> dict:
    """``metadata["minibatch"]``: the batches and what ``.expected`` is."""
    return {
        "batch_size": batch_size, "samples": samples, "seed": int(seed),
        "sampling": batch_sampling,
        "sampling_words": ("without replacement within each epoch, per agent"
                           if batch_sampling == "epoch" else
                           "a fresh uniform subset of the shard per draw, per agent"),
        "expected": None if not with_expected else (
            "full-batch training: the exact expected state and outputs (squared loss, "
            "independent draws)" if batch_sampling == "independent" else
            "full-batch training: the expected state and outputs to first order in the "
            "rate (squared loss; draws within an epoch are dependent)")}


def _assemble(raw: dict, problem: KernelProblem, algo: Algorithm, rate_rows, steps, continuous,
              base_meta: dict, *, groups: int, with_expected: bool, minibatch: bool,
              init) -> list[Trajectory]:
    """Raw solver records -> one trajectory per rate: plain, a distribution over sampled
    sequences (random mixing, mini-batches) or over sampled initialisations."""
    n_rates = len(rate_rows)
    rec_steps, phase = _record_layout(steps, algo.records_per_step)
    sampled = groups - int(with_expected)
    if init is not None:
        from ntkdyn.dynamics import random_init

        p = init.samples
        raw_nets = {key.split("/", 1)[1]: v for key, v in raw.items()
                    if key.startswith("networks/")}
        raw_nets["diverged"] = np.repeat(raw["diverged"], p, axis=1)
        raw_nets["diverged_at"] = np.repeat(raw["diverged_at"], p)
        raw = {key: v for key, v in raw.items() if not key.startswith("networks/")}
    trajs = []
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
        elif groups == 1 and not minibatch:
            trajs.append(one(0))
        else:
            trajs.append(_aggregate([one(g) for g in range(sampled)],
                                    one(groups - 1) if with_expected else None,
                                    what="mini-batch" if minibatch else "mixing"))
    return trajs


def _growth_status(traj: Trajectory) -> Trajectory:
    """``traj`` with status ``"unstable"`` and ``metadata["growing"]`` when its loss grew
    (:func:`~ntkdyn.trajectory.observed_growth`): the verdict of the trajectory itself for
    cross-entropy, whose operator gives only a sufficient bound (at ``lr = 1e6`` the loss
    ended 1e5 times above its start with status ``"ok"``)."""
    factor = observed_growth(traj)
    if factor is None:
        return traj
    words = (f"status 'unstable' from the trajectory: the network-mean loss ended above its "
             f"initial value and {factor:.3g}x above its lowest (cross-entropy has no exact "
             "operator verdict, only the sufficient bound)")
    return dataclasses.replace(traj, status="unstable", metadata=dict(
        traj.metadata, growing={"factor_max": factor, "words": words}))


def _with_stability(trajs: list[Trajectory], problem: KernelProblem, algo: Algorithm,
                    rate_rows, continuous: bool, check_stability) -> list[Trajectory]:
    """Each trajectory with its stability verdict in the metadata (and status "unstable"
    where the linearised operator diverges): the sufficient bound first, the exact report
    where the bound does not decide; cross-entropy gets its sufficient bound in words."""
    if problem.loss != "mse":
        if problem.logit_scale != 1.0:
            trajs = [dataclasses.replace(t, metadata=dict(t.metadata,
                                                          logit_scale=problem.logit_scale))
                     for t in trajs]
        trajs = [_growth_status(t) for t in trajs]
        if check_stability is False:
            return trajs
        note = (cross_entropy_bound(problem, algo) if not continuous else
                "loss='cross_entropy', gradient flow: integrated adaptively (metadata['flow']);"
                " a discrete-step rate bound says nothing about the flow; status reflects an "
                "observed blow-up only")
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
    sufficient bound (:func:`ntkdyn.dynamics.stability.sufficient_bound`, curvature 1) scaled by
    ``2 / s^2`` keeps every local step non-expansive along the whole trajectory.  It is
    sufficient only; the exact stability of the step linearised at ``f_0`` is
    :func:`ntkdyn.stability` (:mod:`ntkdyn.dynamics.ce_stability`), not computed here.
    """
    bound = spectrum.sufficient_bound(problem, algorithm) * 2.0 / problem.logit_scale ** 2
    value = (f"lr < {bound:.6g}" if np.isfinite(bound) else
             "none known for this schedule and mixing")
    return ("loss='cross_entropy': the dynamics are not affine, exact stability is not "
            "computed here (ntkdyn.stability gives the linearisation at f_0); sufficient "
            "bound from the largest softmax curvature (s^2/2, "
            f"s = logit_scale = {problem.logit_scale:g}): {value}; status reflects an "
            "observed blow-up only")


def _record_layout(steps: np.ndarray, per_step: int):
    """Steps and phase index of every record (``per_step`` records per recorded step)."""
    if per_step == 1:
        return steps, None
    return np.repeat(steps, per_step), np.tile(np.arange(per_step), len(steps))


def _aggregate(samples: list[Trajectory], expected: Trajectory | None,
               what: str = "mixing") -> GossipTrajectory:
    """Mean over sampled sequences of every metric, quantile bands, and the expected run
    (``E[W]`` / full batch; ``None`` when there is none).  The status is ``"diverged"``
    when a sequence left the bound, ``"unstable"`` when one grew
    (:func:`~ntkdyn.trajectory.observed_growth`, said in ``metadata["growing"]``), else
    ``"ok"``."""
    keep = min(len(t.steps) for t in samples)
    diverged = [t.diverged_at for t in samples if t.status == "diverged"]
    growing = None if diverged else growing_runs(samples, f"sampled {what} sequences")
    levels = np.asarray(QUANTILE_LEVELS)
    arrays, quantiles, per_sample = {}, {}, {}
    first = samples[0]
    for f in dataclasses.fields(Trajectory):
        v = getattr(first, f.name)
        if not isinstance(v, np.ndarray) or f.name in ("steps", "lr", "phase"):
            continue
        stack = np.stack([getattr(t, f.name)[:keep] for t in samples])
        arrays[f.name] = stack.mean(axis=0)
        per_sample[f.name] = stack
        if not f.name.endswith("_outputs"):
            quantiles[f.name] = np.quantile(stack, levels, axis=0)
    if what == "mixing" and first.metadata.get("loss") == "cross_entropy":
        note = ("fields: mean over sampled mixing sequences of each metric (mean of the "
                "loss); .expected: the run with E[W] (cross-entropy: not the expected "
                "trajectory, the dynamics are not affine); quantiles: bands over the samples")
    elif what == "mixing":
        note = ("fields: mean over sampled mixing sequences of each metric (mean of the "
                "loss); .expected: exact mean-state trajectory with E[W] (loss of the "
                "mean); quantiles: bands over the samples")
    else:
        note = ("fields: mean over sampled mini-batch sequences of each metric (mean of the "
                "loss); .expected: "
                + ("full-batch training, the exact mean state and outputs for the squared "
                   "loss (loss of the mean)" if expected is not None else
                   "none (cross-entropy: no closed-form expectation)")
                + "; quantiles: bands over the samples")
    meta = dict(first.metadata, samples=len(samples), sampled=what, note=note)
    if growing:
        meta["growing"] = growing
    return GossipTrajectory(
        steps=first.steps[:keep], phase=None if first.phase is None else first.phase[:keep],
        status="diverged" if diverged else "unstable" if growing else "ok",
        diverged_at=min(diverged) if diverged else None, continuous=first.continuous,
        lr=first.lr, metadata=meta, samples=len(samples), quantile_levels=levels,
        quantiles=quantiles, expected=expected, per_sample=per_sample, **arrays)


def aggregate_sequences(samples: list[Trajectory], expected: Trajectory | None,
                        what: str = "mixing") -> GossipTrajectory:
    """The public name of :func:`_aggregate`: one :class:`~ntkdyn.trajectory.GossipTrajectory`
    from the trajectories of the sampled sequences and the expected run (the low-rank path's
    random gossip assembles its groups with it, :mod:`ntkdyn.lowrank.gossip`)."""
    return _aggregate(samples, expected, what)


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


_ = jax  # jax is imported for its x64 side effect via ntkdyn._utils.precision

__all__ = ["aggregate_sequences", "run_problem", "versions"]
