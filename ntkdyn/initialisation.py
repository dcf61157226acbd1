r"""Outputs over random initialisations: one random network vs the mean network.

The linearised network of agent ``q`` is ``f_q(x) = f_0(x) + Theta(x, X) alpha_q``
with kernel-space state ``alpha_q`` (``theta_q - theta_0 = J^T alpha_q``).  For the
squared loss every schedule used here (DGD, ATC, CTA, local GD) is affine in
the state, and the local gradient depends on the initial outputs only through
the residual offset ``r_0 = f_0(X) - Y``:

    grad_q(alpha) = (1/N_q) P_q (r_0 + Theta alpha_q).

Starting from ``alpha = 0`` the state is therefore *linear* in ``r_0``:
``alpha_q(t) = B_q(t) r_0`` with ``B_q(t)`` an ``N x N`` matrix (the same for
every output column when the kernel is traced, ``Theta_scalar (x) I_K``).  On the
pooled inputs ``Z = [X; X*]`` (``N`` training then ``M`` test inputs)

    f_q(Z, t) = M_q(t) f_0(Z) - [Theta B_q(t); Theta* B_q(t)] Y,
    M_q(t)    = [[I_N + Theta B_q(t), 0], [Theta* B_q(t), I_M]].

At infinite width ``f_0`` is a centred Gaussian process with the NNGP kernel
``K`` and independent outputs, so ``f_q(Z, t)`` is Gaussian, every output column
with

* mean ``mu_q(t) = -[Theta; Theta*] B_q(t) Y`` (the recursion from ``f_0 = 0``:
  the **mean network**, what ``ntkdyn.dynamics.run`` returns from zero outputs);
* covariance ``C_q(t) = M_q(t) K M_q(t)^T``, identical for every output;
* expected squared loss of **one random network** on an input set ``S``

      E[ 1/(2|S|) sum_{i in S} ||f_q(x_i) - y_i||^2 ]
          = 1/(2|S|) sum_{i in S} ||mu_q(x_i) - y_i||^2  +  K/(2|S|) tr C_q(t)[S, S],

  the loss of the mean plus a variance term (never smaller).

For ``Q = 1`` and gradient flow this is neural-tangents'
``predict.gradient_descent_mse_ensemble`` (Lee et al. 2019, eq. 16) with
``lr_nt = eta * K`` (NT divides by ``N*K``, we by ``N``).  Derivation:
``theory/initialisation.md``.

This module is a *dense reference*: it runs the recursion in numpy on
``N + K`` right-hand sides at once (the responses to ``f_0 = e_j`` and to
``-Y``), costing ``O(Q N^2 (N + K))`` per step and storing ``(T, Q, N+M, N+M)``
covariances. Use it for ``N + M`` up to a few hundred; it is independent of
:mod:`ntkdyn.dynamics.solver`, which it serves to check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

#: algorithms the dense reference implements (schedules of mix and adapt)
ALGORITHMS = ("dgd", "atc", "cta", "gd")
#: largest covariance storage (bytes) ``output_distribution`` agrees to allocate
MAX_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class OutputDistribution:
    """Gaussian distribution of every agent's outputs over initialisations.

    ``T`` records, ``Q`` agents, ``N`` training and ``M`` test inputs, ``K``
    outputs.  Outputs are independent across the ``K`` columns and share one
    covariance (traced kernels).  Losses are the recorded ``train_loss`` /
    ``test_loss`` of :class:`ntkdyn.trajectory.Trajectory`,
    ``1/(2|S|) sum_{i in S} ||f(x_i) - y_i||^2``.

    Attributes
    ----------
    steps : (T,)
        Recorded steps (or times, in steps, when ``continuous``).
    train_mean, test_mean : (T, Q, N, K), (T, Q, M, K)
        Mean outputs: the mean network (``f_0 = 0``).
    cov : (T, Q, N+M, N+M)
        Covariance of one output column on ``[train; test]`` inputs.
    mean_network_train_loss, mean_network_test_loss : (T, Q)
        Loss of the mean outputs.
    expected_train_loss, expected_test_loss : (T, Q)
        Expected loss of one random network (mean of the loss).
    """

    steps: np.ndarray
    algorithm: str
    lr: np.ndarray
    continuous: bool
    train_mean: np.ndarray
    test_mean: np.ndarray
    cov: np.ndarray
    mean_network_train_loss: np.ndarray
    expected_train_loss: np.ndarray
    mean_network_test_loss: np.ndarray | None = None
    expected_test_loss: np.ndarray | None = None

    @property
    def num_train(self) -> int:
        return int(self.train_mean.shape[2])

    @property
    def train_cov(self) -> np.ndarray:
        """``(T, Q, N, N)`` covariance of one output column on the training inputs."""
        n = self.num_train
        return self.cov[:, :, :n, :n]

    @property
    def test_cov(self) -> np.ndarray:
        """``(T, Q, M, M)`` covariance of one output column on the test inputs."""
        n = self.num_train
        return self.cov[:, :, n:, n:]


def expected_squared_loss(mean: np.ndarray, cov: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""``E[1/(2|S|) sum_i ||f_i - y_i||^2]`` for Gaussian outputs.

    With ``f[:, k] ~ N(mean[:, k], cov)`` for each of the ``K`` columns,

        E = 1/(2|S|) ( sum_i ||mean_i - y_i||^2 + K tr(cov) ).

    Parameters
    ----------
    mean : (..., S, K)
    cov : (..., S, S)
        Covariance of one output column (the same for every column).
    y : (S, K)

    Returns
    -------
    (...) array of expected losses.
    """
    mean, cov, y = np.asarray(mean), np.asarray(cov), np.asarray(y)
    if mean.shape[-2:] != y.shape:
        raise ValueError(f"mean: expected trailing shape {y.shape}, got {mean.shape}")
    if cov.shape[-2:] != (y.shape[0], y.shape[0]) or cov.shape[:-2] != mean.shape[:-2]:
        raise ValueError(f"cov: expected shape {mean.shape[:-2] + (y.shape[0],) * 2}, "
                         f"got {cov.shape}")
    s, k = y.shape
    return _squared_loss(mean, y) + 0.5 * k * np.trace(cov, axis1=-2, axis2=-1) / s


def output_distribution(
    kernel_train,
    y_train,
    agent,
    mixing,
    lr,
    steps,
    algorithm: str = "dgd",
    *,
    nngp,
    kernel_test_train=None,
    y_test=None,
    continuous: bool = False,
) -> OutputDistribution:
    r"""Mean and covariance of each agent's outputs over initialisations (infinite width).

    Runs, in numpy, the kernel-space recursion of ``algorithm`` on ``N + K``
    right-hand sides: residual offsets ``r_0 = e_j`` (``j < N``, the response
    ``B(t)`` to ``f_0(X)``) and ``r_0 = -Y`` (the mean network).  With
    ``D = diag(eta_q)``, ``g_q(alpha) = (1/N_q) P_q (r_0 + Theta alpha_q)`` and
    ``(W alpha)_q = sum_p W_qp alpha_p``, one step is

    * ``dgd``: ``alpha <- W alpha - D g(alpha)``
    * ``atc``: ``alpha <- W (alpha - D g(alpha))``
    * ``cta``: ``beta = W alpha``; ``alpha <- beta - D g(beta)``
    * ``gd``:  ``alpha <- alpha - D g(alpha)`` (no communication)

    and with ``continuous=True`` the flow ``d alpha/dt = step(alpha) - alpha``
    (time in steps), evaluated exactly with ``scipy.linalg.expm`` of the
    augmented ``(Q N + N + K)``-square generator.  Then (module docstring)
    ``mu_q = -[Theta; Theta*] B_q Y`` and ``C_q = M_q K M_q^T``.

    Parameters
    ----------
    kernel_train : (N, N)
        Traced training NTK ``Theta`` (the kernel is ``Theta (x) I_K``).
    y_train : (N, K)
        Targets.
    agent : (N,) int
        Agent ``0..Q-1`` owning each training sample; every agent owns one at least.
    mixing : (Q, Q)
        Mixing matrix ``W`` (not checked for stochasticity: a reference).
    lr : float or (Q,)
        Learning rate ``eta`` (per agent if an array), > 0.
    steps : int or sequence
        Steps to record (``int n`` means ``0..n``), non-negative; integers
        unless ``continuous``.
    algorithm : "dgd", "atc", "cta" or "gd"
    nngp : (N+M, N+M)
        NNGP kernel ``K`` of ``f_0`` on the training inputs (caller's order)
        followed by the test inputs; ``(N, N)`` without test inputs.
    kernel_test_train : (M, N), optional
        Traced test-train NTK ``Theta*``.
    y_test : (M, K), optional
        Test targets (for the test losses).
    continuous : bool
        Gradient flow instead of the iteration.

    Returns
    -------
    OutputDistribution

    Notes
    -----
    Dense: memory ``8 T Q (N+M)^2`` bytes for the covariances (refused above
    :data:`MAX_BYTES`), time ``O(steps Q N^2 (N + K))`` (discrete) or
    ``O(T (Q N + N + K)^3)`` (continuous).  Infinite width only: the kernels
    are fixed; their finite-width fluctuation and motion are not included.
    """
    theta, y, theta_t, y_t, prior, agent_idx, counts, w, eta, times = _checked(
        kernel_train, y_train, kernel_test_train, y_test, nngp, agent, mixing, lr, algorithm,
        steps, continuous)
    n, m, q = theta.shape[0], theta_t.shape[0], w.shape[0]

    # scale[q, i] = 1/N_q on agent q's samples, 0 elsewhere: g_q = scale[q] * (r0 + Theta alpha_q)
    scale = (agent_idx[None, :] == np.arange(q)[:, None]) / counts[:, None]
    r0 = np.concatenate([np.eye(n), -y], axis=1)  # (N, N + K) right-hand sides
    step = _step_fn(algorithm, theta, scale, w, eta)
    alphas = (_flow(step, q, n, r0, times) if continuous else _iterate(step, q, n, r0, times))

    resp, ymap = alphas[..., :n], alphas[..., n:]  # (T, Q, N, N), (T, Q, N, K)
    train_mean = np.einsum("ij,tqjk->tqik", theta, ymap)
    test_mean = np.einsum("ij,tqjk->tqik", theta_t, ymap)
    maps = np.zeros((len(times), q, n + m, n + m))
    maps[:, :, :n, :n] = np.eye(n) + np.einsum("ij,tqjl->tqil", theta, resp)
    maps[:, :, n:, :n] = np.einsum("ij,tqjl->tqil", theta_t, resp)
    maps[:, :, n:, n:] = np.eye(m)
    cov = maps @ prior @ np.swapaxes(maps, -1, -2)
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    mn_train = _squared_loss(train_mean, y)
    exp_train = expected_squared_loss(train_mean, cov[..., :n, :n], y)
    mn_test = exp_test = None
    if y_t is not None:
        mn_test = _squared_loss(test_mean, y_t)
        exp_test = expected_squared_loss(test_mean, cov[..., n:, n:], y_t)
    return OutputDistribution(
        steps=times, algorithm=algorithm, lr=eta, continuous=bool(continuous),
        train_mean=train_mean, test_mean=test_mean, cov=cov,
        mean_network_train_loss=mn_train, expected_train_loss=exp_train,
        mean_network_test_loss=mn_test, expected_test_loss=exp_test,
    )


# --------------------------------------------------------------------------- internals
def _checked(kernel_train, y_train, kernel_test_train, y_test, nngp, agent, mixing, lr,
             algorithm: str, steps, continuous: bool):
    """Every argument of :func:`output_distribution` checked (a ``ValueError`` names it)
    before anything is computed, including the memory of the covariances."""
    theta = _matrix(kernel_train, "kernel_train")
    n = theta.shape[0]
    if theta.shape != (n, n):
        raise ValueError(f"kernel_train: expected a square traced (N, N) kernel, got {theta.shape}")
    y = _matrix(y_train, "y_train")
    if y.shape[0] != n:
        raise ValueError(f"y_train: expected {n} rows (kernel_train's N), got {y.shape[0]}")
    k_out = y.shape[1]
    theta_t = (np.zeros((0, n)) if kernel_test_train is None
               else _matrix(kernel_test_train, "kernel_test_train"))
    if theta_t.shape[1] != n:
        raise ValueError(f"kernel_test_train: expected shape (M, {n}), got {theta_t.shape}")
    m = theta_t.shape[0]
    y_t = None
    if y_test is not None:
        if kernel_test_train is None:
            raise ValueError("y_test: given without kernel_test_train")
        y_t = _matrix(y_test, "y_test")
        if y_t.shape != (m, k_out):
            raise ValueError(f"y_test: expected shape {(m, k_out)}, got {y_t.shape}")
    prior = _matrix(nngp, "nngp")
    if prior.shape != (n + m, n + m):
        raise ValueError(f"nngp: expected shape {(n + m, n + m)} (train then test inputs), "
                         f"got {prior.shape}")
    if not np.allclose(prior, prior.T, rtol=0, atol=1e-10 * max(1.0, np.max(np.abs(prior)))):
        raise ValueError("nngp: expected a symmetric matrix")
    lam = np.linalg.eigvalsh(prior)  # a covariance (dense: this module's work is O(N^3))
    if lam[0] < -1e-8 * max(abs(lam[0]), abs(lam[-1])):
        raise ValueError(f"nngp: expected a positive semi-definite covariance (the outputs' "
                         f"at initialisation), got smallest eigenvalue {lam[0]:.6g} against "
                         f"largest {lam[-1]:.6g}; it would give negative expected losses")
    agent_idx = np.asarray(agent)
    if agent_idx.shape != (n,) or not np.issubdtype(agent_idx.dtype, np.integer):
        raise ValueError(f"agent: expected {n} integer agent ids, got shape {agent_idx.shape} "
                         f"dtype {agent_idx.dtype}")
    w = _matrix(mixing, "mixing")
    q = w.shape[0]
    if w.shape != (q, q):
        raise ValueError(f"mixing: expected a square (Q, Q) matrix, got {w.shape}")
    if agent_idx.min() < 0 or agent_idx.max() >= q:
        raise ValueError(f"agent: expected ids in 0..{q - 1} (mixing is {q} x {q})")
    counts = np.bincount(agent_idx, minlength=q)
    if np.any(counts == 0):
        raise ValueError(f"agent: agents {np.flatnonzero(counts == 0).tolist()} own no sample")
    eta = np.asarray(lr, dtype=np.float64)
    eta = np.full(q, float(eta)) if eta.ndim == 0 else eta
    if eta.shape != (q,) or not np.all(np.isfinite(eta)) or np.any(eta <= 0):
        raise ValueError(f"lr: expected a finite value > 0 or {q} of them, got {lr!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    times = _steps(steps, continuous)
    need = 8 * len(times) * q * (n + m) ** 2
    if need > MAX_BYTES:
        raise ValueError(f"kernel_train: covariances need {need / 1e9:.1f} GB (> "
                         f"{MAX_BYTES / 1e9:.1f} GB); this dense reference is for small problems")
    return theta, y, theta_t, y_t, prior, agent_idx, counts, w, eta, times


def _squared_loss(out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``1/(2|S|) sum_i ||out_i - y_i||^2`` over the last two axes."""
    return 0.5 * np.sum((out - y) ** 2, axis=(-2, -1)) / y.shape[0]


def _matrix(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains non-finite values")
    return arr


def _steps(steps, continuous: bool) -> np.ndarray:
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        if steps < 0:
            raise ValueError(f"steps: expected a non-negative int, got {steps}")
        return np.arange(steps + 1, dtype=np.float64 if continuous else np.int64)
    arr = np.asarray(list(steps) if isinstance(steps, (range, Sequence)) else steps,
                     dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"steps: expected a non-empty 1-D sequence of values >= 0, got {steps!r}")
    if continuous:
        return arr
    if np.any(arr != np.round(arr)):
        raise ValueError("steps: expected integers (or continuous=True for times)")
    return arr.astype(np.int64)


def _step_fn(algorithm: str, theta, scale, w, eta):
    """One step of ``algorithm`` on ``alpha`` (Q, N, C) with offsets ``r0`` (N, C)."""

    def adapt(a, r0):
        grad = scale[:, :, None] * (r0[None] + np.einsum("ij,qjc->qic", theta, a))
        return a - eta[:, None, None] * grad

    def mix(a):
        return np.einsum("qp,pic->qic", w, a)

    if algorithm == "dgd":
        return lambda a, r0: mix(a) - (a - adapt(a, r0))
    if algorithm == "atc":
        return lambda a, r0: mix(adapt(a, r0))
    if algorithm == "cta":
        return lambda a, r0: adapt(mix(a), r0)
    return adapt  # "gd"


def _iterate(step, q: int, n: int, r0, times) -> np.ndarray:
    """``alpha`` after each of ``times`` (sorted or not) steps from zero: (T, Q, N, C)."""
    out = np.empty((len(times), q, n, r0.shape[1]))
    a = np.zeros((q, n, r0.shape[1]))
    order = np.argsort(times, kind="stable")
    k = 0
    for idx in order:
        while k < times[idx]:
            a = step(a, r0)
            k += 1
        out[idx] = a
    return out


def _flow(step, q: int, n: int, r0, times) -> np.ndarray:
    """Flow ``d alpha/dt = step(alpha) - alpha`` from zero, exactly via ``expm``.

    With ``step(alpha) = A alpha + c(r0)`` (``c`` linear in ``r0``), the
    augmented generator ``G = [[A - I, C], [0, 0]]`` gives
    ``expm(G t)[:QN, QN:] = int_0^t exp((A - I) s) ds C``, i.e. ``alpha(t)`` for
    every right-hand side at once.
    """
    qn, c = q * n, r0.shape[1]
    basis = np.eye(qn).reshape(qn, q, n).transpose(1, 2, 0)  # (Q, N, QN) unit states
    a_mat = step(basis, np.zeros((n, qn))).reshape(qn, qn)
    c_mat = step(np.zeros((q, n, c)), r0).reshape(qn, c)
    gen = np.zeros((qn + c, qn + c))
    gen[:qn, :qn] = a_mat - np.eye(qn)
    gen[:qn, qn:] = c_mat
    out = np.empty((len(times), q, n, c))
    for i, t in enumerate(times):
        out[i] = scipy.linalg.expm(gen * t)[:qn, qn:].reshape(q, n, c)
    return out


__all__ = ["ALGORITHMS", "OutputDistribution", "expected_squared_loss", "output_distribution"]
