"""Every prediction entry point, in one module.

* :func:`predict`, :func:`predict_sweep` — architecture + partitioned data + mixing; the
  kernel (analytic or empirical) is computed for you.
* :func:`predict_from_kernels`, :func:`sweep_from_kernels` — arrays in (kernels you
  computed yourself, e.g. with neural-tangents), :class:`~ntkdyn.trajectory.Trajectory` out.
* ``*_sweep`` variants — several learning rates sharing every pass over the kernel.
* :func:`build_problem`, :func:`stability`, :func:`fixed_point` — the kernel-space problem
  and its analysis.

:func:`build_problem` computes the kernels (analytic infinite-width NTK, or
the empirical NTK of the finite network at its initialisation) and returns a
:class:`~ntkdyn.dynamics.problem.KernelProblem`; :func:`predict` and
:func:`predict_sweep` run it; :func:`stability` and :func:`fixed_point`
analyse it.  Sizes are checked against the memory available *before* any
kernel is computed.

Architectures: :class:`ntkdyn.models.MLP`, or a neural-tangents ``stax``
triple ``(init_fn, apply_fn, kernel_fn)`` (optional backend: neural-tangents is
never imported by ntkdyn itself).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ntkdyn._utils import memory
from ntkdyn._utils.checks import check_instance, check_nonnegative_int, learning_rates
from ntkdyn._utils.types import ArrayLike, Rates, Steps
from ntkdyn.algorithms import Algorithm
from ntkdyn.data import Partition, check_partition
from ntkdyn.dynamics.problem import KernelProblem, make_problem
from ntkdyn.dynamics.run import run_problem
from ntkdyn.dynamics.stability import StabilityReport
from ntkdyn.dynamics.stability import stability as _stability
from ntkdyn.dynamics.steady_state import FixedPoint, with_verdict
from ntkdyn.dynamics.steady_state import fixed_point as _fixed_point
from ntkdyn.graphs.sequences import MixingProcess, resolve_mixing
from ntkdyn.kernels.empirical import empirical_ntk, mlp_empirical_ntk
from ntkdyn.losses import check_logit_scale, check_loss
from ntkdyn.models import MLP, init_params
from ntkdyn.models import describe as _describe
from ntkdyn.models import is_stax_triple as _is_stax_triple
from ntkdyn.trajectory import Trajectory, quantity_words

KERNELS = ("analytic", "empirical")
#: what the analyses taking ``problem`` expect (the ``TypeError`` naming ``problem`` says it)
_PROBLEM_EXPECTED = "a KernelProblem (from nd.make_problem or nd.build_problem)"
#: arrays of the sampled networks' record shape ``(A, N + M, P K)`` alive at once while the
#: solver records (fitted with :data:`NETWORK_RUNTIME_BYTES`, below)
NETWORK_RECORD_ARRAYS = 6
#: one random network (shared cyclic columns): resident growth of the solve phase beyond the
#: counted arrays that does not grow with N, mostly compiling the chunk that records the
#: sampled networks (0.385 -> 0.537 GB during that compilation at N = 2,000).  Fitted with
#: the record arrays counted in the solve phase only (where a VmRSS timeline puts the peak
#: at N = 2,000 and 4,500: the solver's records, above the eigh phase), tests/test_memory.py
NETWORK_RUNTIME_BYTES = 120 * 2**20
#: extra arrays of the state's shape over the pooled rows, ``(A, N + M, G K)``, alive while a
#: random mixing sequence mixes ``G`` column groups (beyond the solver's ``7 A R C``; fitted
#: to the measured peak of one random network on random gossip, ``2 S + 1 = 33`` groups, at
#: N = 2,000-4,500: 9.0-10.0, tests/test_memory.py)
SEQUENCE_STATE_ARRAYS = 9
#: mini-batch SGD (``batch_size > 0``): resident growth beyond the counted arrays that does
#: not grow with N (the compiled batch sampler: a permutation per agent and draw, vmapped over
#: the sequences), fitted to the measured peak at N = 2,000 and 4,500 (offsets 157-172 MB
#: with f0 = 0, tests/test_memory.py); the centralised reference is carried there, so no
#: eigh buffers are counted
MINIBATCH_RUNTIME_BYTES = 160 * 1024**2


def _apply(arch: Any, params, x: np.ndarray) -> np.ndarray:
    params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    fn = arch.apply if isinstance(arch, MLP) else arch[1]
    return np.asarray(fn(params64, np.asarray(x, np.float64)), np.float64)


def _kernels(arch, kernel: str, params, x: np.ndarray, xt: np.ndarray, traced: bool):
    if kernel == "analytic":
        if isinstance(arch, MLP):
            return arch.kernel(x), (arch.kernel(xt, x) if len(xt) else None)
        kfn = arch[2]
        return (np.asarray(kfn(x, None, "ntk"), np.float64),
                np.asarray(kfn(xt, x, "ntk"), np.float64) if len(xt) else None)
    if isinstance(arch, MLP):
        def fn(a, b=None):
            return mlp_empirical_ntk(arch, params, a, b, traced=traced)
    else:
        def fn(a, b=None):
            return empirical_ntk(arch[1], params, a, b, traced=traced)
    return fn(x), (fn(xt, x) if len(xt) else None)


def prediction_estimate(
    arch: Any,
    n_train: int,
    n_test: int,
    dim: int,
    outputs: int,
    agents: int,
    *,
    kernel: str = "analytic",
    traced: bool = True,
    rates: int = 1,
    f0_network: bool | None = None,
    n_params: int | None = None,
    records: int = 100,
    record_outputs: bool = False,
    reference: bool = True,
    f0_random: bool | None = None,
    loss: str = "mse",
    random_mixing: bool = False,
    batch_size: int = 0,
    samples: int | None = None,
) -> int:
    """Estimated peak growth of resident memory of :func:`predict` (bytes; see
    :func:`ntkdyn._utils.memory.prediction_bytes` for what is counted, and which baseline).

    ``f0_random`` (default: the analytic kernel, :func:`predict`'s default ``f0``): the
    kernels are built on the pooled ``N + M`` inputs (NNGP and NTK ``(N+M)^2`` each, then
    the training and test blocks copied out), the NNGP's Cholesky factor is formed in a
    copy (``2 (N+M)^2`` beside the host kernels), the state has ``K + 32`` columns, and
    during the solve (not the ``eigh`` before it) each record expands the 32 networks'
    outputs (:data:`NETWORK_RECORD_ARRAYS` arrays of ``8 (Q + 1) (N + M) 32 K`` bytes,
    plus :data:`NETWORK_RUNTIME_BYTES`).

    Column groups (as :func:`ntkdyn.dynamics.solver.mixing_groups` and the solver's own
    check count them): a random mixing sequence (``random_mixing``) or mini-batch SGD
    (``batch_size > 0``) runs ``S`` sampled sequences (``samples``, default 64) plus the
    expected group; with ``f0_random`` and cross-entropy, random mixing or mini-batch SGD
    every sampled network has ``K`` columns of its own (``P = samples``, default 16):
    ``P + 1`` groups, or ``2 S + 1`` with sequences (:mod:`ntkdyn.dynamics.random_init`),
    each group a learning rate's worth of state, per-record products and records; with the
    squared loss ``3 S + 1`` (the expected dynamics also from each network's ``f_0``: the
    band over initialisations alone).  Mini-batch SGD adds
    :data:`MINIBATCH_RUNTIME_BYTES` and counts no eigh buffers (its reference is carried).

    Adds to the solver's phases the building of the kernels on the path ``kernel`` takes:
    analytic (``3 N^2`` then ``N^2 + 2 M N``), the MLP's Gram-matrix empirical kernel
    or the generic Jacobian one (result, feature batches, block products; ``n_params``
    is needed for a neural-tangents triple), and the forward pass giving ``f_0``.
    """
    from ntkdyn.kernels.empirical import generic_batch_plan, mlp_batch_plan

    layout_traced = traced or kernel == "analytic"
    if kernel == "analytic":
        build = (memory.analytic_build_bytes(n_train, n_train, True),
                 memory.analytic_build_bytes(n_test, n_train, False) if n_test else 0)
    else:
        n_max = max(n_train, n_test)
        if isinstance(arch, MLP):
            per, batch = mlp_batch_plan(arch, dim, n_max, layout_traced)
        else:
            per, batch = generic_batch_plan(outputs, n_params or 1, n_max, layout_traced)
        build = (memory.empirical_build_bytes(n_train, n_train, outputs, layout_traced,
                                              per, batch),
                 memory.empirical_build_bytes(n_test, n_train, outputs, layout_traced, per,
                                              batch) if n_test else 0)
    if f0_network is None:
        f0_network = kernel == "empirical"
    if f0_network and isinstance(arch, MLP):  # pre-activations and activations of each layer
        forward = 8 * 2 * (n_train + n_test) * sum(arch.hidden)
        build = (build[0] + forward, build[1])
    if f0_random is None:
        f0_random = kernel == "analytic" and not f0_network
    draw = records_extra = solve_extra = 0
    cols = outputs
    groups = column_groups(f0_random, loss=loss, random_mixing=random_mixing,
                           batch_size=batch_size, samples=samples)
    if f0_random and groups > 1:  # independent networks: K columns each
        pooled = n_train + n_test
        build = (max(memory.analytic_build_bytes(pooled, pooled, True),
                     8 * (2 * pooled**2 + n_train**2 + n_test * n_train)), 0)
        draw = 8 * (n_train**2 + n_test * n_train + 2 * pooled**2) + memory.RUNTIME_BYTES
    elif f0_random:
        from ntkdyn.dynamics.random_init import DEFAULT_NETWORKS

        pooled = n_train + n_test
        build = (max(memory.analytic_build_bytes(pooled, pooled, True),
                     8 * (2 * pooled**2 + n_train**2 + n_test * n_train)), 0)
        draw = 8 * (n_train**2 + n_test * n_train + 2 * pooled**2) + memory.RUNTIME_BYTES
        nets = DEFAULT_NETWORKS if samples is None else int(samples)
        cols = outputs + nets
        # during the solve only: each record holds networks-sized arrays, (A, N + M, P K)
        # each, NETWORK_RECORD_ARRAYS of them at once, the compiled recording chunk and,
        # with kernel_dtype="mixed" (the default here), float32 copies of both kernels
        solve_extra = (8 * NETWORK_RECORD_ARRAYS * (agents + 1) * pooled * nets * outputs
                       + NETWORK_RUNTIME_BYTES + 4 * (n_train**2 + n_test * n_train))
    if random_mixing and groups > 1:
        records_extra += 8 * SEQUENCE_STATE_ARRAYS * (agents + 1) * (n_train + n_test) * \
            groups * rates * (outputs if layout_traced else 1)
    if batch_size:
        records_extra += MINIBATCH_RUNTIME_BYTES
    rows = n_train * (1 if layout_traced else outputs)
    return max(draw, memory.prediction_bytes(n_train, n_test, cols, agents,
                                             traced=layout_traced, rates=rates * groups,
                                             records=records, record_outputs=record_outputs,
                                             build=build, eigen_reference=reference
                                             and rows <= memory.REFERENCE_EIGH_MAX
                                             and not batch_size, solve_extra=solve_extra)
               + records_extra)


def column_groups(f0_random: bool, *, loss: str = "mse", random_mixing: bool = False,
                  batch_size: int = 0, samples: int | None = None) -> int:
    """Column groups ``G`` of one learning rate's run (the solver's
    :func:`~ntkdyn.dynamics.solver.mixing_groups`, and with sampled random networks
    :func:`~ntkdyn.dynamics.run.run_problem`'s independent groups), before any problem
    exists.

    Independent random networks (``f0_random`` with cross-entropy, random mixing or
    ``batch_size > 0``; ``P = samples``, default
    :data:`~ntkdyn.dynamics.random_init.DEFAULT_INDEPENDENT_NETWORKS`): ``P + 1``, or
    with sequences ``3 P + 1`` for the squared loss (the networks, the mean network on the
    same sequences, the expected dynamics from each network's ``f_0`` and from ``f_0 = 0``)
    and ``2 P + 1`` for cross-entropy (no expected dynamics from the draws).  Otherwise
    sequences (default ``S = 64``) give ``S + 1``
    groups (mini-batch cross-entropy on a static graph: ``S``, no expected group), and
    static or periodic full-batch mixing one group (the shared cyclic columns of
    ``f0_random`` with the squared loss are counted as columns, not groups).
    """
    sequences = bool(batch_size) or bool(random_mixing)
    if f0_random and (loss != "mse" or sequences):
        from ntkdyn.dynamics.random_init import DEFAULT_INDEPENDENT_NETWORKS

        p = DEFAULT_INDEPENDENT_NETWORKS if samples is None else int(samples)
        if sequences and loss == "mse":  # + the expected dynamics from each f_0 (init band)
            return 3 * p + 1
        return (2 if sequences else 1) * p + 1
    if not sequences:
        return 1
    from ntkdyn.dynamics.run import DEFAULT_SAMPLES

    s = DEFAULT_SAMPLES if samples is None else int(samples)
    return s + int(bool(random_mixing) or loss == "mse")


def lowrank_rank_that_fits(n_train: int, n_test: int, available: int) -> int:
    """Largest rank of the low-rank path whose factor (read on ``2 r`` landmarks) and
    feature rows fit in ``available`` bytes (:func:`ntkdyn.lowrank.max_fitting_rank`);
    0 when none does."""
    from ntkdyn.lowrank import max_fitting_rank

    reserve = 8 * (n_train + n_test)  # the evolution's copy of the features, per coordinate
    return int(max_fitting_rank(n_train, n_test, available, reserve=reserve) // 2)


def lowrank_hint(arch: Any, n_train: int, n_test: int, available: int, kernel: str) -> str:
    """The part of a too-large refusal that proposes the low-rank path (empty when it
    does not apply or even rank 1 would not fit)."""
    fit = min(lowrank_rank_that_fits(n_train, n_test, available), n_train)
    if fit < 1:
        return ""
    if kernel == "analytic" and not isinstance(arch, MLP):
        return (f"; the low-rank path (rank=..., up to rank {fit} would fit) takes the "
                "analytic kernel of an nd.models.MLP, or kernel='empirical' for a stax triple")
    return (f"; or use the low-rank path: nd.predict(..., rank=\"auto\", tol=1e-3) / "
            f"[prediction] rank = \"auto\" (rank chosen from tol within the memory "
            f"available), or a fixed rank <= {fit}, e.g. rank={min(fit, 512)} "
            "(theory/low_rank.md)")


def ensure_prediction_fits(arch: Any, n_train: int, n_test: int, dim: int, outputs: int,
                           agents: int, *, what: str = "a prediction",
                           limit: int | None = None, **kw) -> int:
    """Raise :class:`~ntkdyn._utils.memory.ProblemTooLargeError` (naming the largest number of
    training samples that would fit) when :func:`prediction_estimate` exceeds the memory
    available; else return the estimate."""
    need = prediction_estimate(arch, n_train, n_test, dim, outputs, agents, **kw)
    avail = memory.available_memory_bytes() if limit is None else int(limit)
    if need <= avail:
        return need
    fit = memory.largest_fitting(
        lambda m: prediction_estimate(arch, m, n_test, dim, outputs, agents, **kw), avail,
        n_train)
    layout = "" if kw.get("traced", True) or kw.get("kernel") == "analytic" else \
        " and a full kernel"
    hint = (f"at most about {fit} training samples would fit with {n_test} test samples"
            if fit >= agents else "not even one sample per agent would fit")
    memory.ensure_fits(
        need, f"{what} with N={n_train} training and {n_test} test samples, {agents} agents"
        + layout, hint + "; use fewer training samples (n_train), a traced kernel, or fewer "
        "rates per sweep" + lowrank_hint(arch, n_train, n_test, avail, kw.get("kernel",
                                                                            "analytic")),
        limit=avail)
    return need  # pragma: no cover - ensure_fits raised


#: values of ``f0`` (``"zero"`` is the older name of ``"mean"``, still accepted)
F0_CHOICES = ("random", "mean", "zero", "network")


def resolve_f0(f0: str | None, kernel: str, *, params: Any = None, loss: str = "mse",
                mixing=None, low_rank: bool = False, batch_size: int = 0) -> str:
    """``f0`` checked, with its default, as ``"random"``, ``"zero"`` (the mean network) or
    ``"network"``.

    Default: ``"network"`` with ``params`` or the empirical kernel (the exact
    linearisation of that network); otherwise (analytic kernel) ``"random"``, one random
    network over initialisations (squared loss or cross-entropy, static, periodic or random
    mixing, full batch or mini-batch SGD), on the exact path and on the low-rank path alike
    (there ``f_0`` is drawn from a low-rank NNGP factor plus the residual diagonal:
    marginal variances exact, :mod:`ntkdyn.lowrank.networks`).  (``loss``, ``mixing``,
    ``low_rank`` and ``batch_size`` are accepted for the callers; every value of them takes
    ``"random"``.)
    """

    if f0 is not None and f0 not in F0_CHOICES:
        raise ValueError(f"f0: expected one of {F0_CHOICES} ('random': one random network, "
                         "'mean' (or 'zero'): the mean network over initialisations, "
                         f"'network': the network initialised with seed or params), got {f0!r}")
    why = None
    if kernel != "analytic":
        why = "the empirical kernel describes one given network (use f0='network')"
    if f0 is None:
        if params is not None or kernel != "analytic":
            return "network"
        return "zero" if why is not None else "random"
    if f0 == "random" and why is not None:
        raise ValueError(f"f0: 'random' (one random network) is not available here: {why}")
    return "zero" if f0 == "mean" else f0


#: values of ``kernel_dtype`` (``None``: :func:`resolve_kernel_dtype`'s default)
KERNEL_DTYPES = ("float64", "float32", "mixed")


def resolve_kernel_dtype(kernel_dtype: str | None, f0: str, *, loss: str = "mse", mixing=None,
                         batch_size: int = 0, continuous: bool = False, devices=None,
                         exact: bool = True) -> str:
    """``kernel_dtype`` of :func:`predict`, with its default.

    Default (``None``): ``"mixed"`` exactly where it applies, i.e. one random network
    (``f0="random"``) whose sampled networks share cyclic columns: squared loss, static
    or periodic mixing, full batch, discrete steps, the exact path, one device.  There the
    mean network's ``K`` columns stay float64 (identical to a float64 run) and the ``P``
    response columns are multiplied by float32 copies of the kernels; each sampled
    network's losses move by at most ``1e-5`` relative (``tests/test_random_init.py``;
    measured 3.2e-6 absolute at digits size, README "One random network"), far inside the
    band's Monte-Carlo error (about ``2.1 / sqrt(P)`` sd at its 5 % / 95 % edges).
    Everywhere else ``"float64"``.  An explicit value is returned unchanged (checked
    where it is used); ``metadata["kernel_dtype"]`` records the one used.
    """
    if kernel_dtype is not None:
        return kernel_dtype
    from ntkdyn.graphs.sequences import is_process

    random_mixing = is_process(mixing) and bool(getattr(mixing, "random", False))
    shared = (f0 == "random" and loss == "mse" and not random_mixing and not batch_size
              and not continuous and devices is None and exact)
    return "mixed" if shared else "float64"


def predict_from_kernels(
    kernel_train: ArrayLike,
    y_train: ArrayLike,
    agent: ArrayLike,
    mixing: ArrayLike | MixingProcess,
    lr: Rates,
    steps: Steps,
    algorithm: str | Algorithm = "dgd",
    f0_train: ArrayLike | None = None,
    kernel_test_train: ArrayLike | None = None,
    y_test: ArrayLike | None = None,
    f0_test: ArrayLike | None = None,
    continuous: bool = False,
    *,
    record_outputs: bool = False,
    progress: bool = False,
    reference: bool = True,
    kernel_dtype: str | None = None,
    devices: Any = None,
    samples: int | None = None,
    loss: str = "mse",
    logit_scale: float = 1.0,
    batch_size: int = 0,
    seed: int = 0,
    batch_sampling: str = "epoch",
    nngp: ArrayLike | None = None,
) -> Trajectory:
    r"""Predict peer-to-peer training of a linearised network from its kernels.

    Agent ``q`` minimises ``L_q = 1/(2 N_q) sum_{i in q} ||f(x_i) - y_i||^2``
    (``loss="mse"``) or ``L_q = (1/N_q) sum_{i in q} CE(softmax(s f(x_i)), y_i)``
    (``loss="cross_entropy"``, ``s = logit_scale``);
    the network is ``f = f_0 + J (theta - theta_0)`` with NTK
    ``Theta = J J^T``.  The prediction is exact for that model (to float64
    round-off) and is computed in kernel space (:mod:`ntkdyn.dynamics.solver`).

    Parameters
    ----------
    kernel_train : (N, N) or (N*K, N*K)
        Training NTK: traced (``Theta_scalar``, the true kernel being
        ``Theta_scalar (x) I_K``) or full (sample-major, row ``i*K + k``).
    y_train : (N, K), or (N,) integer labels with ``loss="cross_entropy"``
        Targets (e.g. one-hot; one regression output is ``(N, 1)``); with
        ``loss="cross_entropy"`` one-hot rows or integer class labels.
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
    progress : bool
        A progress bar over the steps.
    reference : bool
        Also run the centralised reference (``central_*`` fields): one ``eigh`` of the
        kernel, then ``O(N K)`` per step (:mod:`ntkdyn.dynamics.solver`).
    kernel_dtype : None (default), "float64", "float32" or "mixed"
        Kernel storage; float32 halves memory and bandwidth, the state stays float64.
        ``"mixed"`` (``f0="random"`` only): the mean network in float64, the sampled
        networks' response columns with float32 kernel products (faster; error in the
        README, "One random network").  ``None``: ``"mixed"`` where it applies (``nngp``
        given, squared loss, static or periodic mixing, full batch, discrete steps, one
        device), else ``"float64"`` (:func:`resolve_kernel_dtype`).
    devices : list of jax devices or a Mesh, optional
        Shard kernels and state over these devices (same answer as one device).
    samples : int, optional
        Random mixing or mini-batch SGD: sampled sequences (default 64); the result is
        then a :class:`~ntkdyn.trajectory.GossipTrajectory` (means, quantile bands
        ``band(metric, lo, hi)``, every sequence ``sequence(s)``, and the exact mean-state
        trajectory ``.expected``).
    batch_size : int
        ``0`` (default): full-batch gradient descent.  ``B > 0`` (at most the smallest
        shard): mini-batch SGD, every agent's gradient the mean over ``B`` of its samples
        drawn without replacement within each epoch (:mod:`ntkdyn.minibatch`); for the
        squared loss ``.expected`` is full-batch training, the expected trajectory
        (exactly with ``batch_sampling="independent"``, to first order in the rate with
        ``"epoch"``; ``theory/minibatch_sgd.md``).
    batch_sampling : "epoch" (default) or "independent"
        Batches without replacement within each epoch (random reshuffling), or a fresh
        uniform subset of the shard per draw.
    seed : int
        Seed of the mini-batch sequences (sequence ``s`` is the one
        :func:`ntkdyn.train.train` draws with the same ``seed`` and ``batch_sample=s``) and
        of the sampled initial outputs (with ``nngp``).
    nngp : (N+M, N+M), optional
        NNGP kernel on the training inputs (caller's order) then the test inputs: predict
        **one random network** (infinite width) instead of the mean network.  ``samples``
        initial outputs (default :data:`ntkdyn.dynamics.random_init.DEFAULT_NETWORKS`) are
        drawn from ``N(0, nngp)`` with ``jax.random.PRNGKey(seed)`` and run as extra columns
        (:mod:`ntkdyn.dynamics.random_init`); the result is a
        :class:`~ntkdyn.trajectory.RandomNetworkTrajectory` (expected losses, bands,
        ``.mean_network``).  Traced kernel, no ``f0_train``/``f0_test``; with
        cross-entropy, a random mixing sequence or ``batch_size`` each network has ``K``
        columns of its own (``samples`` default 16, and with sequences network ``s`` runs
        sequence ``s``; :func:`init_draws`).
    loss : "mse" (default) or "cross_entropy"
        The trained loss; the ``*_loss`` and ``objective`` fields report it.  Cross-entropy
        runs discrete steps only (``continuous=True`` is refused), its centralised
        reference is carried along the kernel passes (``theory/cross_entropy.md``).
    logit_scale : float
        Cross-entropy only: the logits are ``s f`` (inverse temperature), default 1.

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
    check_nonnegative_int("seed", seed)
    _check_nngp_alone(nngp, f0_train, f0_test)
    problem = make_problem(kernel_train, y_train, agent, mixing, f0_train=f0_train,
                           kernel_test_train=kernel_test_train, y_test=y_test, f0_test=f0_test,
                           loss=loss, logit_scale=logit_scale)
    source = "default" if kernel_dtype is None else "given"
    kernel_dtype = resolve_kernel_dtype(kernel_dtype, "zero" if nngp is None else "random",
                                        loss=loss, mixing=mixing, batch_size=batch_size,
                                        continuous=continuous, devices=devices)
    init = None
    if nngp is not None:
        from ntkdyn.dynamics import random_init

        init, samples = init_draws(problem, random_init.sorted_nngp(problem, nngp), "random",
                                   samples, seed, batch_size)
    return run_problem(problem, algorithm, [lr], steps, continuous=continuous,
                       record_outputs=record_outputs, progress=progress,
                       metadata={"kernel": "user",
                                 "quantity": quantity_words(f0_train is None, loss=loss),
                                 "kernel_dtype_source": source},
                       reference=reference, kernel_dtype=kernel_dtype, devices=devices,
                       samples=samples, batch_size=batch_size, seed=seed,
                       batch_sampling=batch_sampling, init=init)[0]


def sweep_from_kernels(kernel_train: ArrayLike, y_train: ArrayLike, agent: ArrayLike,
                       mixing: ArrayLike | MixingProcess, lrs: Sequence[Rates], steps: Steps,
                       algorithm: str | Algorithm = "dgd", **kwargs) -> list[Trajectory]:
    """Like :func:`predict_from_kernels` for several learning rates at once.

    All rates share each pass over the kernel; the result is one
    :class:`Trajectory` per entry of ``lrs`` (a non-empty sequence of scalars or ``(Q,)``
    rates).  The keywords are :func:`predict_from_kernels`'s, ``nngp`` included (one
    random network: every rate starts from the same sampled ``f_0``), with its
    ``kernel_dtype`` default (:func:`resolve_kernel_dtype`).
    """
    if isinstance(lrs, str | bytes) or not hasattr(lrs, "__len__") or len(lrs) == 0:
        raise ValueError("lrs: expected a non-empty sequence of learning rates, got "
                         f"{type(lrs).__name__} {lrs!r}"[:200])
    prob_kw = {k: kwargs.pop(k) for k in ("f0_train", "kernel_test_train", "y_test", "f0_test",
                                          "loss", "logit_scale") if k in kwargs}
    nngp = kwargs.pop("nngp", None)
    _check_nngp_alone(nngp, prob_kw.get("f0_train"), prob_kw.get("f0_test"))
    unknown = sorted(set(kwargs) - _RUN_KEYWORDS)
    if unknown:
        raise TypeError(f"sweep_from_kernels() got an unexpected keyword argument "
                        f"{unknown[0]!r} (expected those of predict_from_kernels)")
    check_nonnegative_int("seed", kwargs.get("seed", 0))
    problem = make_problem(kernel_train, y_train, agent, mixing, **prob_kw)
    if nngp is not None:
        from ntkdyn.dynamics import random_init

        kwargs["init"], kwargs["samples"] = init_draws(
            problem, random_init.sorted_nngp(problem, nngp), "random", kwargs.get("samples"),
            kwargs.get("seed", 0), kwargs.get("batch_size", 0))
    source = "default" if kwargs.get("kernel_dtype") is None else "given"
    kwargs["kernel_dtype"] = resolve_kernel_dtype(
        kwargs.get("kernel_dtype"), "zero" if nngp is None else "random",
        loss=prob_kw.get("loss", "mse"), mixing=mixing, batch_size=kwargs.get("batch_size", 0),
        continuous=kwargs.get("continuous", False), devices=kwargs.get("devices"))
    meta = {"kernel": "user", "quantity": quantity_words(prob_kw.get("f0_train") is None,
                                                         loss=prob_kw.get("loss", "mse")),
            "kernel_dtype_source": source}
    return run_problem(problem, algorithm, list(lrs), steps, metadata=meta, **kwargs)


def _check_nngp_alone(nngp, f0_train, f0_test) -> None:
    """``nngp`` (one random network, ``f_0`` sampled) excludes a given ``f0_train`` /
    ``f0_test``: ``ValueError`` naming ``nngp``, before the kernel is checked."""
    if nngp is not None and (f0_train is not None or f0_test is not None):
        raise ValueError("nngp: samples random initial outputs; it cannot be combined with "
                         "f0_train / f0_test")


#: the keywords :func:`sweep_from_kernels` passes on to :func:`run_problem`
_RUN_KEYWORDS = frozenset({"continuous", "record_outputs", "progress", "reference",
                           "kernel_dtype", "devices", "samples", "batch_size", "seed",
                           "batch_sampling", "check_stability"})


def build_problem(
    arch: Any,
    parts: Partition,
    mixing: ArrayLike | MixingProcess,
    *,
    kernel: str = "analytic",
    seed: int = 0,
    params: Any = None,
    f0: str | None = None,
    traced: bool = True,
    rates: int = 1,
    loss: str = "mse",
    logit_scale: float = 1.0,
) -> KernelProblem:
    """Compute the kernels of ``arch`` on ``parts`` and assemble the problem.

    Parameters
    ----------
    arch : MLP or neural-tangents stax triple
    parts : Partition
        Training data split across agents (from :func:`ntkdyn.data.partition`), in any
        order; the problem is sorted by agent and its ``order`` maps back to
        ``parts.dataset``'s order (``train_outputs`` come back in that order).
    mixing : (Q, Q) array or MixingProcess
        Mixing matrix (e.g. ``graphs.mixing(graphs.topology("ring", Q))``), or a
        time-varying / random sequence (:mod:`ntkdyn.graphs.sequences`).
    kernel : "analytic" or "empirical"
        Infinite-width NTK, or ``J J^T`` of the finite network at ``params``
        (default: initialised with ``seed``).
    seed : int
        Seed of the network's initialisation (empirical kernel, ``f0="network"``).
    params : pytree, optional
        The network's parameters instead of those initialised with ``seed``.
    f0 : "random", "mean" (or "zero"), or "network", optional
        Outputs at initialisation (:func:`resolve_f0` gives the default).  The problem
        holds ``f_0 = 0`` for ``"mean"`` and ``"random"`` (whose sampled initial outputs
        :func:`predict` adds as extra columns) and the network's outputs for
        ``"network"`` (the network initialised with ``seed``, or ``params``).
    traced : bool
        Empirical kernel layout: traced (``Theta_s (x) I_K``, default) or full.
    rates : int
        Learning rates that will share the kernel (for the memory estimate).
    loss, logit_scale :
        The trained loss (see :func:`ntkdyn.predict_from_kernels`).
    """
    return build_problem_and_nngp(arch, parts, mixing, kernel=kernel, seed=seed, params=params,
                                  f0=f0, traced=traced, rates=rates, loss=loss,
                                  logit_scale=logit_scale)[0]


def build_problem_and_nngp(arch: Any, parts: Partition, mixing, *, kernel: str, seed: int,
                           params: Any,
           f0: str | None, traced: bool, rates: int, loss: str, logit_scale: float,
           want_nngp: bool = False, batch_size: int = 0,
           samples: int | None = None,
           runs: list[dict] | None = None) -> tuple[KernelProblem, np.ndarray | None]:
    """:func:`build_problem`, and with ``want_nngp`` the analytic NNGP on the pooled
    ``[training (agent-sorted); test]`` inputs (from the same kernel pass for an MLP);
    ``batch_size`` and ``samples`` (of the run that follows) size the memory estimate's
    column groups (:func:`column_groups`).  ``runs``: instead, the runs that follow, one
    after the other, as keywords of :func:`prediction_estimate` (``rates``, ``samples``,
    ``batch_size``, ``f0_random``), each checked to fit before any kernel is built."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    check_nonnegative_int("seed", seed)
    if not (isinstance(arch, MLP) or _is_stax_triple(arch)):
        raise ValueError(
            "arch: expected an ntkdyn.models.MLP (e.g. nd.models.MLP(hidden=(512, 512), "
            "out=10)) or a neural-tangents stax (init_fn, apply_fn, kernel_fn) triple, got "
            f"{type(arch).__name__} {arch!r}"[:300])
    check_partition(parts)
    f0 = resolve_f0(f0, kernel, params=params, loss=loss, mixing=mixing)
    random = f0 == "random"
    if random:
        f0 = "zero"  # the mean network's columns; the draws are added by the caller
    # kernels are computed in the agent-sorted layout (no reordering copy of the kernel in
    # make_problem; the same arrays, hence the same numbers, as before partitions kept the
    # caller's order); ``order`` maps outputs back to the caller's order
    user_order = parts.order
    parts = parts.sorted()
    data = parts.dataset
    n, k = data.y_train.shape
    w, process = resolve_mixing(mixing, parts.num_agents)  # checked before any kernel
    mixing = w if process is None else process
    if isinstance(arch, MLP) and arch.out != k:
        raise ValueError(f"arch.out: the data have K={k} outputs (classes), the MLP has "
                         f"out={arch.out}")
    layout_traced = traced or kernel == "analytic"
    if params is None and (kernel == "empirical" or f0 == "network"):
        params = init_params(arch, data.dim, seed)
    n_params = None if params is None else sum(int(np.size(a)) for a in jax.tree.leaves(params))
    for run in runs or [dict(rates=rates, f0_random=random, batch_size=batch_size,
                             samples=samples)]:
        ensure_prediction_fits(arch, n, data.num_test, data.dim, k, parts.num_agents,
                               kernel=kernel, traced=layout_traced, f0_network=f0 == "network",
                               n_params=n_params, loss=loss,
                               random_mixing=process is not None and bool(process.random),
                               **run)
    nngp = None
    if want_nngp and kernel == "analytic" and isinstance(arch, MLP):
        pooled = np.concatenate([data.x_train, data.x_test])
        nngp, ntk = arch._analytic(pooled, None)
        kt = np.ascontiguousarray(ntk[:n, :n])
        ktt = np.ascontiguousarray(ntk[n:, :n]) if data.num_test else None
        del ntk
    else:
        kt, ktt = _kernels(arch, kernel, params, data.x_train, data.x_test, layout_traced)
        if want_nngp:
            pooled = np.concatenate([data.x_train, data.x_test])
            nngp = np.asarray(arch[2](pooled, None, "nngp"), np.float64)
    f0_train = f0_test = None
    if f0 == "network":
        f0_train = _apply(arch, params, data.x_train)
        f0_test = _apply(arch, params, data.x_test) if data.num_test else None
    has_test = data.num_test > 0
    problem = make_problem(
        kt, data.y_train, parts.agent, mixing, f0_train=f0_train,
        kernel_test_train=ktt if has_test else None, y_test=data.y_test if has_test else None,
        f0_test=f0_test if has_test else None, loss=loss, logit_scale=logit_scale)
    if not np.array_equal(problem.order, np.arange(n)):  # pragma: no cover - sorted input
        raise AssertionError("build_problem: the agent-sorted partition was reordered")
    return dataclasses.replace(problem, order=user_order), nngp


def predict(
    arch: Any,
    parts: Partition,
    mixing: ArrayLike | MixingProcess,
    lr: Rates,
    algorithm: str | Algorithm = "dgd",
    steps: Steps = range(0, 1001, 10),
    *,
    kernel: str = "analytic",
    seed: int = 0,
    params: Any = None,
    f0: str | None = None,
    traced: bool = True,
    continuous: bool = False,
    record_outputs: bool = False,
    progress: bool = False,
    reference: bool = True,
    kernel_dtype: str | None = None,
    devices: Any = None,
    samples: int | None = None,
    loss: str = "mse",
    logit_scale: float = 1.0,
    rank: int | str | None = None,
    tol: float | None = None,
    max_rank: int | None = None,
    path: str = "kernel",
    batch_size: int = 0,
    batch_sampling: str = "epoch",
    width: int | None = None,
    width_samples: int = 16,
    acc_rows: int | None = None,
) -> Trajectory:
    """Predict per-agent training and test dynamics of ``arch`` trained peer to peer.

    **Which network** (``f0``; ``metadata["quantity"]`` and ``metadata["f0"]`` say it):

    * ``"random"`` (default with the analytic kernel): **one random network** of
      infinite width, its initial outputs drawn from the NNGP.  ``samples`` networks
      (default 32) run as extra columns sharing every kernel read
      (:mod:`ntkdyn.dynamics.random_init`); the result is a
      :class:`~ntkdyn.trajectory.RandomNetworkTrajectory`: ``traj.test_loss`` is the
      expected loss over initialisations (mean of the loss),
      ``traj.band("test_loss", 0.05, 0.95)`` the 5-95 % band, ``traj.mean_network`` the
      mean network, and ``traj.exact_test_loss`` the exact expectation on small problems.
      With cross-entropy, random gossip or mini-batch SGD each network has ``K`` columns
      of its own (default 16 networks; with sequences network ``s`` runs sequence ``s``;
      for cross-entropy ``.mean_network`` is the network from ``f_0 = 0``, not the
      expected network; :mod:`ntkdyn.dynamics.random_init`).  Also the default on the
      low-rank path (``rank=...``): ``f_0`` drawn from a low-rank factor of the NNGP on
      train + test (rank ``r``, as the NTK's) plus an independent residual of variance
      ``diag(K) - diag(factor)``: every marginal variance exact, the correlations of the
      discarded NNGP spectrum not (:mod:`ntkdyn.lowrank.networks`,
      ``metadata["low_rank"]["f0_draws"]``).
    * ``"mean"`` (``"zero"``, the default before): the **mean network** over
      initialisations (``f_0 = 0``): the loss of the mean output, below the expected loss
      of one network by the outputs' variance (``theory/initialisation.md``).
    * ``"network"`` (default with ``params`` or the empirical kernel): **a given
      network**, the one initialised with ``seed`` or ``params``: its own ``f_0``.

    ``seed`` also seeds the sampled initialisations.  See :func:`build_problem` for
    ``kernel``, ``params``, ``traced`` and :func:`ntkdyn.predict_from_kernels` for the rest
    (``reference``: also run the centralised reference; ``mixing`` may be a time-varying
    or random sequence, ``samples`` the number of sampled sequences for a random one or for
    mini-batch SGD;
    ``loss``: ``"mse"`` or ``"cross_entropy"``, ``logit_scale`` its inverse temperature).

    ``kernel_dtype``: ``None`` (default) is ``"mixed"`` where the sampled networks share
    cyclic columns (``f0="random"``, squared loss, static or periodic mixing, full batch,
    discrete steps, exact path, one device: the mean network in float64, identical to a
    float64 run; each sampled network within 1e-5 relative of its float64 run) and
    ``"float64"`` everywhere else (:func:`resolve_kernel_dtype`); ``metadata["kernel_dtype"]``
    says which was used and ``metadata["kernel_dtype_source"]`` whether it was the default.
    Pass ``kernel_dtype="float64"`` for sampled networks exact to float64 round-off.

    ``batch_size``: ``0`` (default) full batch; ``B > 0`` mini-batch SGD, ``samples``
    (default 64) batch sequences seeded by ``seed`` (the same ``seed`` as
    :func:`ntkdyn.train.train`'s, so its run is sequence 0), with mean, bands
    (``traj.band("test_loss", 0.05, 0.95)``) and, for the squared loss, the expected
    trajectory ``traj.expected`` (= full batch: exact with ``batch_sampling=
    "independent"``, to first order in the rate with the default ``"epoch"``;
    :mod:`ntkdyn.minibatch`).  With ``f0="random"`` (the default) sampled network ``s``
    draws its own ``f_0`` *and* batch sequence ``s`` (``samples`` counts both, default 16):
    its band is over both jointly (``metadata["band_over"] == "init+batch"``), the mean
    network's (``traj.mean_network``, a :class:`~ntkdyn.trajectory.GossipTrajectory`,
    ``traj.band(m, over="sequence")``) over the batches alone
    (:mod:`ntkdyn.dynamics.random_init`, "Independent networks").

    ``rank``: ``None`` (default) runs the exact path on the N x N kernel.  An integer
    ``r`` or ``"auto"`` runs the low-rank path (:mod:`ntkdyn.lowrank`,
    ``theory/low_rank.md``): ``Theta ~ Phi Phi^T`` of rank ``r`` from column blocks of the
    analytic NTK of an :class:`~ntkdyn.models.MLP` (never N x N), then the same schedule
    on the ``r`` feature coordinates, O(N r K) per step.  With ``"auto"`` the rank is the
    smallest whose a-priori error estimates are ``<= tol`` (default ``1e-3``), capped by
    ``max_rank`` and the memory available.  ``metadata["low_rank"]`` holds the rank, the
    method, the factor's facts and two numbers: ``error_estimate`` estimates
    ``max_{t,q} ||f_q(X, t) - f~_q(X, t)|| / ||f_0(X) - Y||`` on the *training* outputs (the
    probe-row estimate ``2 sum_s ||E D r~_s||`` sampled on a few kernel columns,
    ``theory/low_rank.md`` section 3; ``error_bound_trace`` keeps the looser trace bound);
    with a test set, ``error_estimate_test`` estimates the same on the *test* outputs,
    relative to ``||f_0(X_T) - Y_T||`` (forcing by the test-train residual, plus the training
    error carried into the test outputs through the residual cross kernel and through the
    retained coordinates, each reported as ``error_estimate_test_forcing`` /
    ``_propagated`` / ``_retained``; sampled on a few test rows; section 3.1).  Both
    are capped at 2; ``"auto"`` holds ``tol`` against the larger of the two.  ``acc_rows`` (low-rank
    path only; default ``None``, every training row): score the training accuracies on
    that many training rows drawn with ``seed`` (a sample estimate; the losses and
    distances stay exact on the factor), since with one random network the accuracies of
    every network on every row dominate the cost at data-set scale
    (``metadata["low_rank"]["acc_rows"]``).  The low-rank path takes a static mixing matrix
    or a periodic or random mixing sequence (the exact path's
    sequences, ``samples`` sampled ones and ``.expected`` for random gossip; with
    ``f0="random"`` on random gossip ``samples`` networks, network ``s`` on sequence ``s``,
    as the exact path; :mod:`ntkdyn.lowrank.gossip`), discrete steps and float64;
    ``loss="cross_entropy"`` runs there with any of these mixings and an integer rank
    (no ``tol``: ``metadata["low_rank"]["error_estimate"]`` is ``None``, the estimate
    bounds the squared loss only) and no ``acc_rows``, for every ``f0``: one random network
    runs its ``samples`` networks (default 16) as ``P + 1`` groups of ``K`` columns, the
    draws from the low-rank NNGP factor (:mod:`ntkdyn.lowrank.cross_entropy`).  With
    ``kernel="empirical"`` it factors the empirical NTK of the given network (``params``,
    or initialised with ``seed``; its own ``f_0``) from column blocks: the layerwise formula
    for an MLP, Jacobian-vector products of ``apply_fn`` for a stax triple
    (:func:`lowrank_source`).

    ``path``: ``"kernel"`` (default; the exact kernel-space path, or the low-rank one with
    ``rank``) or ``"primal"``: the linearised finite network evolved in parameter space
    (:mod:`ntkdyn.lowrank.primal`; one ``P``-vector per agent, ``O(N K P)`` per step and
    ``N K P`` memory instead of ``(N K)^2``), exact and equal to ``kernel="empirical",
    traced=False`` to round-off; the better path when the network has fewer parameters
    ``P`` than samples.  It needs ``kernel="empirical"`` (it *is* the finite network; the
    full layout whatever ``traced`` says), a static mixing matrix, the squared loss,
    discrete steps, float64 and one device; ``metadata["primal"]`` holds ``P`` and the
    cost.

    ``width``: also the **finite-width band** (:mod:`ntkdyn.finite_width`,
    ``theory/finite_width.md`` section 6): the same prediction with the empirical NTK and
    NNGP of ``width_samples`` (default 16) networks of hidden width ``width`` (seeds
    ``seed .. seed + width_samples - 1``), kept in ``traj.width_draws`` and read with
    ``traj.band("test_loss", 0.05, 0.95, over="width")``, apart from the band over
    initialisations (``over="init"``); ``metadata["finite_width"]`` says how it was drawn.
    An :class:`~ntkdyn.models.MLP`, the analytic kernel, ``f0`` ``"random"`` or
    ``"mean"``, the exact path, static or periodic mixing, full batch or mini-batch SGD.
    With SGD and the squared loss the width draws run each kernel's full-batch dynamics,
    the expected SGD trajectory of the linearised model (exact with
    ``batch_sampling="independent"``, first order in the rate with ``"epoch"``); with
    cross-entropy (no exact expected trajectory) each kernel runs mini-batch SGD with the
    prediction's own sampled networks (``z_i``) and batch sequences (``seed``), and the
    prediction's draws are the paired ones (``width_draws["paired/<metric>"]``,
    ``metadata["finite_width"]["dynamics"]``; :mod:`ntkdyn.finite_width`).  It costs
    ``width_samples`` more runs (and one full-batch run with squared-loss SGD).

    Examples
    --------
    >>> import ntkdyn as nd
    >>> data = nd.data.digits(n_train=200, n_test=100, seed=0)
    >>> parts = nd.data.partition(data, agents=4, scheme="iid", seed=0)
    >>> W = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    >>> arch = nd.models.MLP(hidden=(512, 512), out=10)
    >>> traj = nd.predict(arch, parts, W, lr=0.5, steps=range(0, 201, 50))
    >>> traj.test_loss.shape                         # expected over initialisations
    (5, 4)
    >>> low, high = traj.band("test_loss", 0.05, 0.95)   # over 32 sampled networks
    >>> traj.mean_network.test_loss.shape            # the mean network (f0 = 0)
    (5, 4)
    >>> p2pl = nd.algorithms.p2pl(local_steps=5, consensus_steps=2)
    >>> traj = nd.predict(arch, parts, W, lr=0.3, algorithm=p2pl, steps=range(0, 21, 10))
    >>> traj.at_phase("local").test_loss.shape       # recorded after each phase
    (3, 4)
    >>> G = nd.graphs.topology("ring", 4)
    >>> traj = nd.predict(arch, parts, nd.graphs.random_edges(G, p=0.5, seed=0), lr=0.3,
    ...                   steps=range(0, 101, 50), samples=16)
    >>> traj.quantiles["test_loss"].shape            # 5 levels, T records, Q agents
    (5, 3, 4)
    """
    _check_call(parts, seed, loss, logit_scale, width, width_samples)
    low_rank = rank is not None or tol is not None or max_rank is not None
    f0 = resolve_f0(f0, kernel, params=params, loss=loss, mixing=mixing, low_rank=low_rank,
                    batch_size=batch_size)
    meta = {"kernel": kernel, "seed": seed, "architecture": _describe(arch),
            "data": parts.dataset.name, "partition": parts.scheme,
            "f0": "mean" if f0 == "zero" else f0}
    meta["quantity"] = quantity_words(f0 == "zero", params is not None, seed, loss=loss)
    if low_rank and batch_size:
        raise ValueError("rank: the low-rank path takes full-batch gradients; batch_size "
                         "runs on the exact path (rank=None)")
    if width is not None:
        return _predict_with_width(
            arch, parts, mixing, lr, algorithm, steps, width=width,
            width_samples=width_samples, kernel=kernel, seed=seed, f0=f0, params=params,
            traced=traced, continuous=continuous, record_outputs=record_outputs,
            progress=progress, reference=reference, kernel_dtype=kernel_dtype,
            devices=devices, samples=samples, loss=loss, logit_scale=logit_scale,
            batch_size=batch_size, other_path=low_rank or path != "kernel",
            batch_sampling=batch_sampling)
    meta["kernel_dtype_source"] = "default" if kernel_dtype is None else "given"
    kernel_dtype = resolve_kernel_dtype(kernel_dtype, f0, loss=loss, mixing=mixing,
                                        batch_size=batch_size, continuous=continuous,
                                        devices=devices, exact=not low_rank and path == "kernel")
    if acc_rows is not None and (not low_rank or path != "kernel"):
        raise ValueError(f"acc_rows: only used with the low-rank path (rank='auto' or an "
                         f"integer, path='kernel'), got acc_rows={acc_rows!r}")
    if acc_rows is not None:  # before the factor: the same rule lowrank_inputs applies
        n = parts.dataset.num_train
        if isinstance(acc_rows, bool) or not isinstance(acc_rows, int | np.integer) or \
                not 1 <= acc_rows <= n:
            raise ValueError(f"acc_rows: expected an integer in [1, {n}], got {acc_rows!r}")
    if path != "kernel":
        _check_primal_call(arch, parts, mixing, path=path, kernel=kernel, rank=rank, tol=tol,
                           max_rank=max_rank, continuous=continuous,
                           kernel_dtype=kernel_dtype, devices=devices, samples=samples,
                           loss=loss)
        return _predict_primal(arch, parts, mixing, lr, algorithm, steps, seed=seed,
                               params=params, f0=f0, record_outputs=record_outputs,
                               progress=progress, reference=reference, metadata=meta)
    if low_rank:
        _check_lowrank_call(arch, parts, mixing, kernel=kernel, rank=rank, tol=tol,
                            continuous=continuous, kernel_dtype=kernel_dtype, devices=devices,
                            samples=None if f0 == "random" else samples, loss=loss, f0=f0,
                            traced=traced, max_rank=max_rank)
        return _predict_lowrank(arch, parts, mixing, lr, algorithm, steps, rank=rank, tol=tol,
                                max_rank=max_rank, seed=seed, params=params, f0=f0,
                                record_outputs=record_outputs, progress=progress,
                                reference=reference, metadata=meta, kernel=kernel,
                                samples=samples, acc_rows=acc_rows, loss=(loss, logit_scale))
    problem, nngp = build_problem_and_nngp(arch, parts, mixing, kernel=kernel, seed=seed,
        params=params, f0=f0, traced=traced, rates=1, loss=loss, logit_scale=logit_scale,
        want_nngp=f0 == "random", batch_size=batch_size, samples=samples)
    init, samples = init_draws(problem, nngp, f0, samples, seed, batch_size)
    del nngp  # the draws keep it only when small (for the exact expected losses)
    return run_problem(problem, algorithm, [lr], steps, continuous=continuous,
                       record_outputs=record_outputs, progress=progress, metadata=meta,
                       reference=reference, kernel_dtype=kernel_dtype, devices=devices,
                       samples=samples, batch_size=batch_size, seed=seed,
                       batch_sampling=batch_sampling, init=init)[0]


def init_draws(problem: KernelProblem, nngp, f0: str, samples, seed: int,
               batch_size: int = 0):
    """``(InitDraws or None, samples left for the mixing / batch sequences)``: with
    ``f0="random"`` ``samples`` counts sampled networks.  Sharing cyclic columns (squared
    loss, static or periodic mixing, full batch): default
    :data:`ntkdyn.dynamics.random_init.DEFAULT_NETWORKS`, no sequences.  Independent
    networks (:func:`ntkdyn.dynamics.random_init.independent_networks`): default
    :data:`~ntkdyn.dynamics.random_init.DEFAULT_INDEPENDENT_NETWORKS`, ``K`` draws each,
    and with a random mixing sequence or mini-batch SGD as many sequences (network ``s``
    on sequence ``s``)."""
    check_instance("problem", problem, KernelProblem, _PROBLEM_EXPECTED)
    if f0 != "random":
        return None, samples
    from ntkdyn.dynamics import random_init

    if not random_init.independent_networks(problem, batch_size):
        count = random_init.DEFAULT_NETWORKS if samples is None else samples
        return random_init.draw(nngp, problem.num_train, count, seed), None
    count = random_init.DEFAULT_INDEPENDENT_NETWORKS if samples is None else samples
    init = random_init.draw(nngp, problem.num_train, count, seed,
                            outputs=problem.num_outputs)
    process = problem.process
    sequences = bool(batch_size) or (process is not None and bool(process.random))
    return init, (count if sequences else None)


def _check_call(parts, seed, loss: str, logit_scale, width, width_samples) -> None:
    """The arguments of :func:`predict` and :func:`predict_sweep` checked before any kernel:
    ``parts`` a :class:`~ntkdyn.data.Partition`, ``seed`` an integer >= 0, ``logit_scale``
    for cross-entropy only and ``width_samples`` with ``width`` only (``ValueError`` naming
    the argument; they were ignored, or failed deep inside)."""
    check_partition(parts)
    check_nonnegative_int("seed", seed)
    check_logit_scale(logit_scale, check_loss(loss))
    if width is None and width_samples != 16:
        raise ValueError(f"width_samples: only used with width=n (the finite-width band), "
                         f"got width_samples={width_samples!r} with width=None")


def _predict_with_width(arch, parts, mixing, lr, algorithm, steps, *, width, width_samples,
                        kernel, seed, f0, params, traced, continuous, record_outputs, progress,
                        reference, kernel_dtype, devices, samples, loss, logit_scale,
                        batch_size, other_path: bool, batch_sampling: str = "epoch"
                        ) -> Trajectory:
    """:func:`predict` at infinite width plus the width band: the same prediction with the
    empirical kernels of ``width_samples`` networks of width ``width``
    (:mod:`ntkdyn.finite_width`).  With ``batch_size > 0`` (squared loss) the width draws
    run each kernel's full-batch dynamics (the expected SGD trajectory) and the
    infinite-width full-batch draws from the same ``z`` are kept as
    ``width_draws["paired/<metric>"]`` for ``over="calibrated"``; with cross-entropy they
    run mini-batch SGD with ``traj``'s own ``z_i`` and batch sequences, whose draws are
    the paired ones."""
    from ntkdyn import finite_width

    finite_width.check_width_call(arch, width=width, samples=width_samples, kernel=kernel,
                                  f0=f0, params=params, mixing=mixing, other_path=other_path)
    traj = predict(arch, parts, mixing, lr, algorithm, steps, kernel=kernel, seed=seed,
                   f0=f0, traced=traced, continuous=continuous,
                   record_outputs=record_outputs, progress=progress, reference=reference,
                   kernel_dtype=kernel_dtype, devices=devices, samples=samples, loss=loss,
                   logit_scale=logit_scale, batch_size=batch_size,
                   batch_sampling=batch_sampling)
    draws, info = finite_width.width_draws(
        arch, parts, mixing, lr, algorithm, steps, width=width, samples=width_samples,
        seed=seed, f0=f0, init_samples=samples, continuous=continuous, loss=loss,
        logit_scale=logit_scale, batch_size=batch_size, batch_sampling=batch_sampling)
    if batch_size and loss != "mse" and f0 == "random":
        # cross-entropy SGD: the width draws ran traj's own z_i and batch sequences
        draws = dict(draws, **finite_width.paired_sgd_draws(traj, draws, info))
    elif batch_size and f0 == "random":  # the full-batch infinite-width draws, same z
        paired = predict(arch, parts, mixing, lr, algorithm, steps, kernel=kernel,
                         seed=seed, f0=f0, traced=traced, continuous=continuous,
                         reference=False, kernel_dtype="float64",
                         samples=info["init_samples"], loss=loss, logit_scale=logit_scale)
        draws = dict(draws, **{f"paired/{k}": v for k, v in paired.draws.items()
                               if k in draws})
    return finite_width.with_width_band(traj, draws, info)


def _feature_path_limits(label: str, other: str, *, mixing, samples, continuous, loss,
                         kernel_dtype, devices) -> str | None:
    """Why the low-rank or primal path (``label``) cannot run this call, or ``None``: both take
    a static mixing matrix, discrete steps, the squared loss, float64 and one device."""
    from ntkdyn.graphs.sequences import is_process

    if is_process(mixing):
        return (f"{label} takes a static (Q, Q) mixing matrix; time-varying and random "
                f"mixing sequences run on {other}")
    if samples is not None:
        return ("samples counts sampled random networks (f0='random') or sampled random "
                "mixing / mini-batch sequences, none of which this call has (f0 'mean' or "
                "'network' with a static mixing matrix)")
    if continuous:
        return f"{label} runs discrete steps; the gradient flow runs on {other}"
    if loss != "mse":
        return f"{label} is for loss='mse', got loss={loss!r}"
    if kernel_dtype != "float64":
        return f"{label} runs in float64, got kernel_dtype={kernel_dtype!r}"
    if devices is not None:
        return f"{label} runs on one device; devices= (sharding) is for {other}"
    return None


def _lowrank_process_limits(process, samples, f0: str | None) -> str | None:
    """Why the low-rank path cannot run this mixing process, or ``None``: periodic and
    random sequences run on it (:mod:`ntkdyn.lowrank.gossip`) for the mean network, a
    given ``f_0`` and one random network (``f0="random"``: shared cyclic columns on a
    periodic sequence, independent networks on a random one, network ``s`` on sequence
    ``s``, whose ``samples`` the caller leaves out here: they count the networks)."""
    del f0  # every f0 runs a sequence here
    if not process.random and samples is not None:
        return "samples is for random mixing sequences; a periodic sequence is deterministic"
    return None


def _check_lowrank_call(arch, parts, mixing, *, kernel, rank, tol, continuous, kernel_dtype,
                        devices, samples, loss, f0: str | None = None, traced: bool = True,
                        max_rank=None) -> None:
    """``ValueError`` naming ``rank`` (or ``tol``) for what the low-rank path does not take
    (a mixing process: :func:`_lowrank_process_limits`, then the static checks on
    ``E[W]``)."""
    from ntkdyn.graphs.sequences import is_process

    check_loss(loss)

    if rank is None:
        raise ValueError(f"tol / max_rank: only used with the low-rank path (rank='auto' or an "
                         f"integer), got rank=None, tol={tol!r} and max_rank={max_rank!r}")
    if isinstance(rank, str) and rank != "auto":
        raise ValueError(f"rank: expected None (exact path), 'auto' or a positive integer, got "
                         f"{rank!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    why = None
    if kernel == "analytic" and not isinstance(arch, MLP):
        why = ("the low-rank path needs an ntkdyn.models.MLP for the analytic kernel (a stax "
               f"triple runs with kernel='empirical'), got {type(arch).__name__}")
    elif not (isinstance(arch, MLP) or _is_stax_triple(arch)):
        why = ("the low-rank path needs an ntkdyn.models.MLP or a stax triple, got "
               f"{type(arch).__name__}")
    elif kernel == "empirical" and not traced:
        why = ("the low-rank path factorises the traced empirical kernel (Theta_s (x) I_K); "
               "traced=False (the full N K x N K kernel) runs on the exact path (rank=None)")
    elif is_process(mixing):
        why = _lowrank_process_limits(mixing, samples, f0)
    static = mixing.expected() if is_process(mixing) else mixing
    if why is None:
        why = _feature_path_limits("the low-rank path", "the exact path (rank=None)",
                                   mixing=static, samples=None if is_process(mixing)
                                   else samples, continuous=continuous,
                                   loss="mse" if loss == "cross_entropy" else loss,
                                   kernel_dtype=kernel_dtype, devices=devices)
    if why is not None:
        raise ValueError(f"rank: {why}")
    check_partition(parts)
    q = parts.num_agents
    if np.ndim(static) != 2 or np.shape(static) != (q, q):
        raise ValueError(f"mixing: expected a ({q}, {q}) matrix for {q} agents, got shape "
                         f"{np.shape(static)}")
    if isinstance(arch, MLP) and arch.out != parts.dataset.num_classes:
        raise ValueError(f"arch.out: the data have K={parts.dataset.y_train.shape[1]} outputs "
                         f"(classes), the MLP has out={arch.out}")


def lowrank_loss(loss: str, logit_scale: float, *, rank, tol, acc_rows) -> dict:
    """The loss keywords of :func:`ntkdyn.lowrank.predict` (``{}`` for the squared loss);
    for cross-entropy what the low-rank path does not take is a ``ValueError`` naming the
    field (:func:`ntkdyn.lowrank.cross_entropy.check_call`)."""
    if loss != "cross_entropy":
        return {}
    from ntkdyn.lowrank.cross_entropy import check_call

    check_call(rank=rank, tol=tol, acc_rows=acc_rows)
    return {"loss": loss, "logit_scale": logit_scale}


PATHS = ("kernel", "primal")


def _check_primal_call(arch, parts, mixing, *, path, kernel, rank, tol, max_rank, continuous,
                       kernel_dtype, devices, samples, loss) -> None:
    """``ValueError`` naming ``path`` for what the primal path does not take."""

    if path not in PATHS:
        raise ValueError(f"path: expected one of {PATHS}, got {path!r}")
    why = None
    if kernel != "empirical":
        why = ("the primal path evolves the finite network's parameters: use "
               f"kernel='empirical', got kernel={kernel!r}")
    elif rank is not None or tol is not None or max_rank is not None:
        why = ("the primal path is exact; rank / tol / max_rank are for the low-rank kernel "
               "path (path='kernel')")
    else:
        why = _feature_path_limits("the primal path", "the kernel path", mixing=mixing,
                                   samples=samples, continuous=continuous, loss=loss,
                                   kernel_dtype=kernel_dtype, devices=devices)
    if why is not None:
        raise ValueError(f"path: {why}")
    if not (isinstance(arch, MLP) or _is_stax_triple(arch)):
        raise ValueError("arch: expected an ntkdyn.models.MLP or a neural-tangents stax "
                         f"triple, got {type(arch).__name__}")
    check_partition(parts)
    if isinstance(arch, MLP) and arch.out != parts.dataset.y_train.shape[1]:
        raise ValueError(f"arch.out: the data have K={parts.dataset.y_train.shape[1]} outputs "
                         f"(classes), the MLP has out={arch.out}")


def _predict_primal(arch: Any, parts: Partition, mixing, lr, algorithm, steps, *, seed,
                    params, f0, record_outputs, progress, reference, metadata) -> Trajectory:
    """:func:`predict` on the primal path (:func:`ntkdyn.lowrank.primal.predict_primal`)."""
    from ntkdyn.lowrank.primal import predict_primal

    data = parts.dataset
    if params is None:
        params = init_params(arch, data.dim, seed)
    has_test = data.num_test > 0
    apply_fn = arch.apply if isinstance(arch, MLP) else arch[1]
    return predict_primal(
        apply_fn, params, data.x_train, data.y_train, parts.agent,
        np.asarray(mixing, dtype=float), lr, steps, algorithm,
        x_test=data.x_test if has_test else None, y_test=data.y_test if has_test else None,
        f0=f0, reference=reference, record_outputs=record_outputs, progress=progress,
        metadata=dict(metadata, kernel="empirical"))


def lowrank_nngp_source(arch: Any, x_train: np.ndarray, x_test: np.ndarray | None):
    """The analytic NNGP columns of ``arch`` on the pooled inputs ``[x_train; x_test]``
    (:func:`ntkdyn.lowrank.analytic_columns`, ``kernel="nngp"``), from which the low-rank
    path draws one random network's ``f_0`` (:func:`ntkdyn.lowrank.networks.nngp_draws`)."""
    from ntkdyn import lowrank

    pooled = x_train if x_test is None else np.concatenate([x_train, x_test])
    return lowrank.analytic_columns(pooled, hidden_layers=arch.depth, activation=arch.act,
                                    W_std=arch.W_std, b_std=arch.b_std, kernel="nngp")


def lowrank_source(arch: Any, kernel: str, params: Any, x_train: np.ndarray,
                   x_test: np.ndarray | None):
    """The kernel-column source of the low-rank path (:mod:`ntkdyn.lowrank.factor`):

    * ``"analytic"`` (an :class:`~ntkdyn.models.MLP`): the closed-form recursion (same
      depth, activation, ``W_std``, ``b_std`` as :meth:`MLP.kernel`);
    * ``"empirical"``, an MLP: the traced empirical NTK of the network at ``params`` by the
      layerwise Gram formula (:class:`~ntkdyn.lowrank.EmpiricalColumns`, no Jacobian);
    * ``"empirical"``, a stax triple: the same kernel from Jacobian-vector products of its
      ``apply_fn`` (:class:`~ntkdyn.lowrank.JacobianColumns`; slower, any network)."""
    from ntkdyn import lowrank

    if kernel == "analytic":
        return lowrank.analytic_columns(x_train, x_test, hidden_layers=arch.depth,
                                        activation=arch.act, W_std=arch.W_std,
                                        b_std=arch.b_std)
    if isinstance(arch, MLP):
        return lowrank.empirical_columns(arch, params, x_train, x_test)
    return lowrank.jacobian_columns(arch[1], params, x_train, x_test)


def _predict_lowrank(arch: Any, parts: Partition, mixing, lr, algorithm, steps, *, rank, tol,
                     max_rank, seed, params, f0, record_outputs, progress, reference,
                     metadata, kernel: str = "analytic", samples=None,
                     acc_rows: int | None = None, sweep: bool = False,
                     loss: tuple[str, float] = ("mse", 1.0)):
    """:func:`predict` on the low-rank path: the column source of :func:`lowrank_source`
    and :func:`ntkdyn.lowrank.predict`, in the caller's sample order; ``f0="random"``: the
    NNGP columns on the pooled inputs (:func:`ntkdyn.lowrank.analytic_columns`,
    ``kernel="nngp"``) for the draws of :mod:`ntkdyn.lowrank.networks`.  ``sweep``:
    ``lr`` is a sequence of rates, run on one factor (:func:`ntkdyn.lowrank.predict_sweep`),
    and the result a list.  ``loss``: ``(loss, logit_scale)`` (:func:`lowrank_loss`)."""
    from ntkdyn import lowrank

    data = parts.dataset
    f0 = resolve_f0(f0, kernel, params=params)
    loss_kw = lowrank_loss(*loss, rank=rank, tol=tol, acc_rows=acc_rows)
    has_test = data.num_test > 0
    if params is None and (kernel == "empirical" or f0 == "network"):
        params = init_params(arch, data.dim, seed)
    source = lowrank_source(arch, kernel, params, data.x_train,
                            data.x_test if has_test else None)
    f0_train = f0_test = None
    if f0 == "network":
        f0_train = _apply(arch, params, data.x_train)
        f0_test = _apply(arch, params, data.x_test) if has_test else None
    extra = {}
    if f0 == "random":
        extra = dict(samples=samples, nngp=lowrank_nngp_source(
            arch, data.x_train, data.x_test if has_test else None))
    from ntkdyn.graphs.sequences import is_process

    if is_process(mixing):  # the sampled mixing sequences (lowrank.gossip)
        extra = dict(extra, samples=samples)
    run = lowrank.predict_sweep if sweep else lowrank.predict
    return run(
        source, data.y_train, parts.agent,
        mixing if is_process(mixing) else np.asarray(mixing, dtype=float), lr, steps,
        algorithm, rank=rank, tol=tol, max_rank=max_rank, seed=seed, f0_train=f0_train,
        y_test=data.y_test if has_test else None, f0_test=f0_test, reference=reference,
        record_outputs=record_outputs, progress=progress, metadata=metadata,
        acc_rows=acc_rows, **extra, **loss_kw)


def predict_sweep(
    arch: Any,
    parts: Partition,
    mixing: ArrayLike | MixingProcess,
    lrs: Sequence[Rates],
    algorithm: str | Algorithm = "dgd",
    steps: Steps = range(0, 1001, 10),
    *,
    kernel: str = "analytic",
    seed: int = 0,
    params: Any = None,
    f0: str | None = None,
    progress: bool = False,
    reference: bool = True,
    samples: int | None = None,
    loss: str = "mse",
    logit_scale: float = 1.0,
    batch_size: int = 0,
    batch_sampling: str = "epoch",
    width: int | None = None,
    width_samples: int = 16,
    kernel_dtype: str | None = None,
    rank: int | str | None = None,
    tol: float | None = None,
    max_rank: int | None = None,
    acc_rows: int | None = None,
    record_outputs: bool = False,
) -> list[Trajectory]:
    """:func:`predict` for several learning rates sharing every pass over the kernel.

    ``width``: also the finite-width band of every rate (as :func:`predict`'s ``width``),
    all rates sharing each width-``n`` network's kernels
    (:func:`ntkdyn.finite_width.width_draws_sweep`).  ``kernel_dtype``: as
    :func:`predict` (default ``"mixed"`` exactly where it applies, else ``"float64"``).

    ``rank`` / ``tol`` / ``max_rank`` / ``acc_rows``: the low-rank path, as :func:`predict`
    (same refusals, naming ``rank``), with the factor ``Theta ~ Phi Phi^T`` computed
    **once** for the whole sweep and every rate run on it (and, for one random network,
    the same ``f_0`` draws): trajectory ``i`` equals ``predict(..., lr=lrs[i],
    rank=r)`` with ``r`` the sweep's rank.  ``rank="auto"`` holds ``tol`` against the
    **maximum over the rates** of the a-priori estimate: the largest of the ranks
    :func:`predict` chooses at each rate alone, so ``tol`` holds at every rate.  Each
    trajectory's ``metadata["low_rank"]`` has its own rate's ``error_estimate`` and
    ``tol_reached`` (:func:`ntkdyn.lowrank.predict_sweep`).  ``record_outputs``: as
    :func:`predict`."""
    _check_call(parts, seed, loss, logit_scale, width, width_samples)
    if isinstance(lrs, str | bytes) or not hasattr(lrs, "__len__") or len(lrs) == 0:
        raise ValueError("lrs: expected a non-empty sequence of learning rates, got "
                         f"{type(lrs).__name__} {lrs!r}"[:200])
    learning_rates(list(lrs), parts.num_agents, "lrs", rows=True)  # lrs[i] named, any path
    low_rank = rank is not None or tol is not None or max_rank is not None
    f0 = resolve_f0(f0, kernel, params=params, loss=loss, mixing=mixing, batch_size=batch_size,
                    low_rank=low_rank)
    if low_rank or acc_rows is not None:
        return _sweep_lowrank(
            arch, parts, mixing, lrs, algorithm, steps, kernel=kernel, seed=seed,
            params=params, f0=f0, progress=progress, reference=reference, samples=samples,
            loss=loss, batch_size=batch_size, width=width, kernel_dtype=kernel_dtype,
            rank=rank, tol=tol, max_rank=max_rank, acc_rows=acc_rows,
            record_outputs=record_outputs, logit_scale=logit_scale)
    if width is not None:
        return _sweep_with_width(arch, parts, mixing, lrs, algorithm, steps, kernel=kernel,
                                 seed=seed, f0=f0, progress=progress, reference=reference,
                                 samples=samples, loss=loss, logit_scale=logit_scale,
                                 batch_size=batch_size, width=width,
                                 width_samples=width_samples, kernel_dtype=kernel_dtype,
                                 batch_sampling=batch_sampling)
    problem, nngp = build_problem_and_nngp(arch, parts, mixing, kernel=kernel, seed=seed,
                                           params=params,
                           f0=f0, traced=True, rates=len(lrs), loss=loss,
                           logit_scale=logit_scale, want_nngp=f0 == "random")
    meta = {"kernel": kernel, "seed": seed, "architecture": _describe(arch),
            "data": parts.dataset.name, "partition": parts.scheme,
            "f0": "mean" if f0 == "zero" else f0,
            "quantity": quantity_words(f0 == "zero", params is not None, seed, loss=loss)}
    meta["kernel_dtype_source"] = "default" if kernel_dtype is None else "given"
    kernel_dtype = resolve_kernel_dtype(kernel_dtype, f0, loss=loss, mixing=mixing,
                                        batch_size=batch_size)
    init, samples = init_draws(problem, nngp, f0, samples, seed, batch_size)
    del nngp
    return run_problem(problem, algorithm, list(lrs), steps, progress=progress, metadata=meta,
                       reference=reference, record_outputs=record_outputs, samples=samples,
                       batch_size=batch_size, seed=seed,
                       batch_sampling=batch_sampling, init=init, kernel_dtype=kernel_dtype)


def _sweep_lowrank(arch, parts, mixing, lrs, algorithm, steps, *, kernel, seed, params, f0,
                   progress, reference, samples, loss, batch_size, width, kernel_dtype, rank,
                   tol, max_rank, acc_rows, record_outputs,
                   logit_scale: float = 1.0) -> list[Trajectory]:
    """:func:`predict_sweep` on the low-rank path: :func:`predict`'s checks (a
    ``ValueError`` naming ``rank``), then one factor for every rate
    (:func:`ntkdyn.lowrank.predict_sweep`)."""
    if rank is None and tol is None and max_rank is None:
        raise ValueError(f"acc_rows: only used with the low-rank path (rank='auto' or an "
                         f"integer), got acc_rows={acc_rows!r}")
    if batch_size:
        raise ValueError("rank: the low-rank path takes full-batch gradients; batch_size "
                         "runs on the exact path (rank=None)")
    if width is not None:
        raise ValueError("rank: the finite-width band (width=...) runs on the exact path "
                         "(rank=None)")
    n = parts.dataset.num_train if isinstance(parts, Partition) else 0
    if acc_rows is not None and (isinstance(acc_rows, bool) or not isinstance(
            acc_rows, int | np.integer) or not 1 <= acc_rows <= n):
        raise ValueError(f"acc_rows: expected an integer in [1, {n}], got {acc_rows!r}")
    meta = {"kernel": kernel, "seed": seed, "architecture": _describe(arch),
            "data": parts.dataset.name, "partition": parts.scheme,
            "f0": "mean" if f0 == "zero" else f0,
            "quantity": quantity_words(f0 == "zero", params is not None, seed, loss=loss),
            "kernel_dtype_source": "default" if kernel_dtype is None else "given"}
    kernel_dtype = resolve_kernel_dtype(kernel_dtype, f0, loss=loss, mixing=mixing,
                                        exact=False)
    _check_lowrank_call(arch, parts, mixing, kernel=kernel, rank=rank, tol=tol,
                        continuous=False, kernel_dtype=kernel_dtype, devices=None,
                        samples=None if f0 == "random" else samples, loss=loss, f0=f0,
                        max_rank=max_rank)
    return _predict_lowrank(arch, parts, mixing, list(lrs), algorithm, steps, rank=rank,
                            tol=tol, max_rank=max_rank, seed=seed, params=params, f0=f0,
                            record_outputs=record_outputs, progress=progress,
                            reference=reference, metadata=meta, kernel=kernel,
                            samples=samples, acc_rows=acc_rows, sweep=True,
                            loss=(loss, logit_scale))


def _sweep_with_width(arch, parts, mixing, lrs, algorithm, steps, *, kernel, seed, f0,
                      progress, reference, samples, loss, logit_scale, batch_size, width,
                      width_samples, kernel_dtype=None, batch_sampling="epoch"
                      ) -> list[Trajectory]:
    """:func:`predict_sweep` with the finite-width band of every rate.  Cross-entropy with
    ``batch_size > 0``: every rate runs mini-batch SGD and its width draws the same
    sampled networks and batch sequences per kernel (paired, as :func:`predict`)."""
    from ntkdyn import finite_width

    finite_width.check_width_call(arch, width=width, samples=width_samples, kernel=kernel,
                                  f0=f0, mixing=mixing)
    sgd = dict(batch_size=batch_size, batch_sampling=batch_sampling)
    trajs = predict_sweep(arch, parts, mixing, lrs, algorithm, steps, kernel=kernel, seed=seed,
                          f0=f0, progress=progress, reference=reference, samples=samples,
                          loss=loss, logit_scale=logit_scale, kernel_dtype=kernel_dtype,
                          **sgd)
    bands = finite_width.width_draws_sweep(arch, parts, mixing, lrs, algorithm, steps,
                                           width=width, samples=width_samples, seed=seed,
                                           f0=f0, init_samples=samples, loss=loss,
                                           logit_scale=logit_scale, **sgd)
    if batch_size and loss != "mse" and f0 == "random":
        bands = [(dict(d, **finite_width.paired_sgd_draws(t, d, i)), i)
                 for t, (d, i) in zip(trajs, bands, strict=True)]
    elif batch_size and f0 == "random":  # squared loss: full-batch infinite-width draws
        paired = predict_sweep(arch, parts, mixing, lrs, algorithm, steps, kernel=kernel,
                               seed=seed, f0=f0, reference=False, kernel_dtype="float64",
                               samples=bands[0][1]["init_samples"], loss=loss,
                               logit_scale=logit_scale)
        bands = [(dict(d, **{f"paired/{k}": v for k, v in p.draws.items() if k in d}), i)
                 for p, (d, i) in zip(paired, bands, strict=True)]
    return [finite_width.with_width_band(t, d, i) for t, (d, i) in zip(trajs, bands,
                                                                        strict=True)]


def stability(problem: KernelProblem, algorithm: str | Algorithm,
              lr: Rates) -> StabilityReport:
    """Stability report (spectral radius, exact lr*, sufficient bound, margin).

    With ``problem.loss == "cross_entropy"`` the report is that of the step linearised at
    initialisation (the softmax Hessian at ``f_0``; :mod:`ntkdyn.dynamics.ce_stability`):
    exact for that linearisation, not a guarantee for the non-affine dynamics; ``lr_bound``
    is then the sufficient bound from the largest softmax curvature and ``note`` says so.
    """
    check_instance("problem", problem, KernelProblem, _PROBLEM_EXPECTED)
    if problem.loss == "cross_entropy":
        from ntkdyn.dynamics import ce_stability

        return ce_stability.stability(problem, algorithm, lr)
    return _stability(problem, algorithm, lr)


def fixed_point(problem: KernelProblem, algorithm: str | Algorithm, lr: Rates, *,
                verify: bool = True) -> FixedPoint:
    """Steady state and consensus gap (see :mod:`ntkdyn.dynamics.steady_state`).

    ``verify`` (default): also decide whether the linearised dynamics converge at ``lr``
    (the stable set, as :func:`stability` finds it): ``FixedPoint.stable`` and
    ``stable_set`` say it, and an unstable rate gets a ``UserWarning`` (its affine
    iteration still has this fixed point, which it never reaches).  ``verify=False``
    skips that search (``stable`` is ``None``).
    """
    check_instance("problem", problem, KernelProblem, _PROBLEM_EXPECTED)
    fp = _fixed_point(problem, algorithm, lr)
    return with_verdict(fp, problem, algorithm) if verify else fp
