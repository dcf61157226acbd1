r"""Steady state of the linearised peer-to-peer dynamics.

With a constant step, ``alpha <- A alpha + c`` converges (when
``rho(A) < 1``) to the unique fixed point ``alpha* = (I - A)^{-1} c``.  For
DGD this point is *not* consensual: the agents disagree by
``O(eta / (1 - lambda_2(W)))`` (Yuan, Ling & Yin 2016) -- when the local
losses share no common minimiser; with a positive definite kernel (the
interpolation regime) the fixed point is consensual.  The centralised
solution, the limit of centralised gradient descent from ``alpha = 0`` on
the global objective, is the weighted least-squares solution (sample weights
``1/(Q N_q)``) of minimum norm in ``range(Theta)``; it interpolates
(``Theta alpha_c = Y - f_0``) when ``Theta`` is positive definite.
Derivation: ``theory/fixed_point.md``.

The linear system has ``Q R`` unknowns per output column; it is solved
densely when small and by GMRES with operator applications otherwise.

Shortcut (no ``Q R`` system at all): for DGD, ATC and CTA, whenever the
interpolation equations are consistent (``f_0 - Y`` in ``range(Theta)``, always
so for a positive definite kernel) the fixed point is the consensual
interpolant.  Proof: at a fixed point, multiplying by the left Perron vector
``pi > 0`` of ``W`` leaves ``sum_q pi_q E_q r_q / N_q = 0`` (DGD; the same for
ATC and CTA), and the ``E_q`` have disjoint supports, so every ``r_q = 0``; with
zero gradients the iteration is ``x = (W (x) I) x``, i.e. consensus.  The
consensual interpolant is the unique such point in ``range(Theta)``
coordinates, and it is the centralised solution, so one weighted least-squares
solve (which the report needs anyway) gives both.

Second shortcut: gradient tracking, NEXT and DIGing (any positive rates) and EXTRA (one
rate for all agents) with a doubly stochastic ``W`` (static, or ``E[W]`` of random
gossip) have the consensual centralised solution as their fixed point, with or without
an interpolant: at a fixed point ``y = W y`` (resp. ``z`` fixed) forces consensus of the
tracked quantity, the conserved sum ``1^T (y - g) = 0`` (``1^T z = 0``) and the mixing
step make its mean, hence every ``y_q``, zero and ``x`` consensual, and the mean gradient
at the consensus is zero: the centralised solution (``theory/fixed_point.md`` section
4a).  Heavy-ball momentum has its base schedule's fixed points (``x = x-`` there), whose
system is half the size (:attr:`~ntkdyn.algorithms.Algorithm.same_fixed_points_as`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ntkdyn import graphs
from ntkdyn._utils.checks import learning_rates
from ntkdyn._utils.threads import one_blas_thread
from ntkdyn.algorithms import (
    ATC,
    CTA,
    DGD,
    DIGING,
    EXTRA,
    GRADIENT_TRACKING,
    NEXT,
    Algorithm,
    get_algorithm,
)
from ntkdyn.dynamics import solver
from ntkdyn.dynamics.problem import KernelProblem
from ntkdyn.dynamics.stability import StepOperator, stable_set, state_structure

#: largest system (unknowns) solved densely (LU); GMRES above (the matrix is dim^2 doubles)
DENSE_SOLVE_MAX = 8192
#: relative weighted residual below which the interpolation equations count as consistent
INTERPOLATION_TOL = 1e-9
#: schedules whose fixed point is the consensual interpolant when one exists (module doc)
CONSENSUAL_AT_INTERPOLATION = (DGD, ATC, CTA)
#: schedules whose fixed point is the consensual centralised solution whenever ``W`` is
#: doubly stochastic, with any positive rates (module doc)
CONSENSUAL_ALWAYS = (GRADIENT_TRACKING, NEXT, DIGING)
#: the same, with one rate for all agents (EXTRA: per-agent rates give a rate-weighted
#: stationarity condition, ``sum_q lr_q grad L_q = 0``)
CONSENSUAL_ALWAYS_EQUAL_RATES = (EXTRA,)


@dataclass(frozen=True)
class FixedPoint:
    """The steady state (meaningful when the dynamics are stable).

    ``stable``: whether the linearised dynamics converge at ``lr`` (so reach this point),
    from the stable set (:func:`~ntkdyn.dynamics.stability.stable_set`), which
    ``stable_set`` describes in words; ``None`` where it was not checked
    (``nd.fixed_point(..., verify=False)``).  An unstable rate still has the fixed point of
    its affine iteration, which it never reaches.

    ``network``: which network the numbers describe (:func:`network_words`): the mean
    network over random initialisations, ``"mean network (f0 = 0)"`` (the problem's
    ``f_0`` is zero: :func:`ntkdyn.build_problem` with ``f0="mean"`` or the default
    ``"random"``, whose sampled networks only :func:`ntkdyn.predict` adds), whose losses are
    those of the mean output, not the expected losses of one random network (larger;
    :mod:`ntkdyn.initialisation`); or ``"the network whose f0 was given"``.

    Per-agent arrays are ``(Q,)``; ``central_*`` scalars describe the centralised
    solution; ``consensus_gap`` is the root-mean-square over agents of
    ``||theta_q* - mean_p theta_p*||`` and ``central_gap`` that of ``||theta_q* - theta_c*||``.
    """

    algorithm: str
    lr: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    param_dist: np.ndarray
    consensus_dist: np.ndarray
    central_dist: np.ndarray
    consensus_gap: float
    central_gap: float
    central_train_loss: float
    central_param_dist: float
    test_loss: np.ndarray | None
    test_acc: np.ndarray | None
    central_test_loss: float | None
    train_outputs: np.ndarray
    test_outputs: np.ndarray | None
    stable: bool | None = None
    stable_set: str = ""
    network: str = ""

    def __repr__(self) -> str:
        """Headline numbers and array shapes only (the arrays can be N x K each)."""
        lr = np.asarray(self.lr, dtype=float)
        same = np.all(lr == lr.flat[0])
        rate = f"{lr.flat[0]:.4g}" if same else f"{lr.min():.4g}..{lr.max():.4g}"
        parts = [repr(self.algorithm), f"Q={np.shape(self.train_loss)[0]}", f"lr={rate}"]
        if self.network:
            parts.append(f"network={self.network!r}")
        parts.append(f"train_loss_mean={float(np.mean(self.train_loss)):.4g}")
        if self.test_loss is not None:
            parts.append(f"test_loss_mean={float(np.mean(self.test_loss)):.4g}")
        parts += [f"consensus_gap={self.consensus_gap:.4g}", f"central_gap={self.central_gap:.4g}",
                  f"central_train_loss={self.central_train_loss:.4g}",
                  f"train_outputs.shape={tuple(np.shape(self.train_outputs))}"]
        if self.test_outputs is not None:
            parts.append(f"test_outputs.shape={tuple(np.shape(self.test_outputs))}")
        if self.stable is not None:
            parts.append(f"stable={self.stable}" + ("" if self.stable else
                         f" (not reached: {self.stable_set})"))
        return f"FixedPoint({', '.join(parts)})"


def network_words(f0_train, f0_test=None) -> str:
    """:attr:`FixedPoint.network`: ``"mean network (f0 = 0)"`` where the initial outputs
    ``f0_train`` (and ``f0_test``) are all zero, else ``"the network whose f0 was given"``."""
    zero = not np.any(np.asarray(f0_train)) and (f0_test is None or not np.any(
        np.asarray(f0_test)))
    return "mean network (f0 = 0)" if zero else "the network whose f0 was given"


def solve_system(matrix_free, dense_matrix, rhs: np.ndarray, dim: int) -> np.ndarray:
    """``A X = rhs`` (``dim`` unknowns, the columns of ``rhs``): LU of ``dense_matrix`` (least
    squares if singular or ill-conditioned), else GMRES with ``matrix_free(v) = A v`` per
    column (``RuntimeError`` if it does not converge).  Shared with the low-rank fixed point
    (:mod:`ntkdyn.lowrank.steady_state`)."""
    if dense_matrix is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
            try:
                return scipy.linalg.solve(dense_matrix, rhs)
            except (scipy.linalg.LinAlgError, scipy.linalg.LinAlgWarning, ValueError):
                pass
        return scipy.linalg.lstsq(dense_matrix, rhs)[0]
    import scipy.sparse.linalg as spla

    op = spla.LinearOperator((dim, dim), matvec=matrix_free, dtype=np.float64)
    cols = []
    for j in range(rhs.shape[1]):
        sol, info = spla.gmres(op, rhs[:, j], rtol=1e-12, atol=0.0, restart=100, maxiter=200)
        if info != 0:
            raise RuntimeError(f"fixed_point: GMRES did not converge (info={info})")
        cols.append(sol)
    return np.stack(cols, axis=1)


def _range_basis(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors ``V_r`` and eigenvalues ``lambda_r > 0`` spanning ``range(Theta)``
    (one BLAS thread: :mod:`ntkdyn._utils.threads`)."""
    with one_blas_thread():
        lam, vec = scipy.linalg.eigh(kernel)
    keep = lam > lam[-1] * kernel.shape[0] * np.finfo(float).eps
    return vec[:, keep], lam[keep]


def fixed_point(problem: KernelProblem, algorithm="dgd", lr=0.1) -> FixedPoint:
    """Steady state of ``algorithm`` at learning rate(s) ``lr``, and the centralised solution.

    Any schedule: the fixed point of its full (augmented) state, ``s = A Pi s + c``
    (``Pi`` the projection onto the invariant subspace of a schedule with conserved
    quantities, which holds ``c``; ``theory/algorithms.md``); for P2PL the state after a
    round's consensus phase; for random gossip the fixed point of the mean state (E[W]).

    Squared loss only (``ValueError`` naming ``loss`` for cross-entropy).

    The system is solved in the coordinates ``u_q = Lambda_r^{1/2} V_r^T alpha_q`` of
    ``range(Theta)`` (the parameter-space coordinates of ``theta_q - theta_0``), where
    it is well posed even when ``Theta`` is singular: directions of ``alpha`` in the null
    space of ``Theta`` change no output and are dropped.
    """
    if problem.loss != "mse":
        raise ValueError(
            f"loss: the fixed point is defined for loss='mse' only, got loss={problem.loss!r}: "
            "cross-entropy dynamics are not affine (no closed form), and on separable data "
            "they have no finite fixed point (the margin grows like log t); predict a long "
            "trajectory instead")
    algo = get_algorithm(algorithm)
    if problem.process is not None and not problem.process.random:
        raise ValueError("problem: its mixing is a periodic sequence, with which the iteration "
                         "ends on a periodic orbit, not a fixed point; predict a long trajectory "
                         "instead (a static W or random gossip has a fixed point)")
    lrs = learning_rates(lr, problem.num_agents)
    q = problem.num_agents
    vr, lam = _range_basis(problem.kernel)
    to_alpha = vr / np.sqrt(lam)  # (R, r): u -> alpha
    # centralised solution: weighted least squares on the global objective, min-norm in u
    row_w = np.repeat(1.0 / (q * problem.counts), problem.counts * problem.rows_per_sample)
    sw = np.sqrt(row_w)[:, None]
    basis = vr * np.sqrt(lam)  # outputs = basis @ u
    full_rank = len(lam) == problem.kernel.shape[0]
    if full_rank:  # square and invertible: the interpolant, whatever the weights
        u_c, misfit = (vr.T @ -problem.residual0) / np.sqrt(lam)[:, None], 0.0
    else:
        u_c, misfit = _weighted_lstsq(sw * basis, -sw * problem.residual0)
    central = to_alpha @ u_c
    system = fixed_point_schedule(algo)
    if (system in CONSENSUAL_AT_INTERPOLATION and misfit <= INTERPOLATION_TOL) or \
            consensual_always(problem.mixing, system, lrs):
        alpha = np.broadcast_to(central, (q,) + central.shape)  # consensual, centralised
    else:
        alpha = _solve_fixed_point(problem, system, lrs, vr, lam)
    x = np.concatenate([alpha, central[None]], axis=0)
    return _finish(problem, algo, lrs, x)


def with_verdict(fp: FixedPoint, problem: KernelProblem,
                 algorithm: str | Algorithm) -> FixedPoint:
    """``fp`` (of ``algorithm`` on ``problem``) with :attr:`FixedPoint.stable` and
    ``stable_set`` from the stable set of that schedule at ``fp``'s rate profile (the
    rate itself is examined: ``extra``), and a ``UserWarning`` when the dynamics diverge
    there (the point is not reached)."""
    lrs = np.asarray(fp.lr, dtype=float)
    top = float(np.max(lrs))
    return marked(fp, stable_set(problem, algorithm, lrs / top, extra=(top,)), stacklevel=4)


def marked(fp: FixedPoint, found, *, stacklevel: int = 3) -> FixedPoint:
    """``fp`` with :attr:`FixedPoint.stable` / ``stable_set`` from ``found`` (the
    :class:`~ntkdyn.dynamics.stability.StableSet` of its schedule at its rate profile,
    in units of its largest rate), and a ``UserWarning`` when that rate is outside it
    (``stacklevel``: the user's frame, counted from here)."""
    top = float(np.max(np.asarray(fp.lr, dtype=float)))
    stable, words = found.contains(top), found.describe()
    if not stable:
        warnings.warn(
            f"fixed_point: the linearised {fp.algorithm} dynamics diverge at lr={top:.6g} "
            f"({words}): the iteration does not reach this fixed point "
            "(FixedPoint.stable is False)", UserWarning, stacklevel=stacklevel)
    return dataclasses.replace(fp, stable=stable, stable_set=words)


def fixed_point_schedule(algo: Algorithm) -> Algorithm:
    """The schedule whose fixed-point system is solved for ``algo``: its
    ``same_fixed_points_as`` (momentum: the base, half the unknowns), else itself.  Shared
    with the low-rank fixed point (:mod:`ntkdyn.lowrank.steady_state`)."""
    return get_algorithm(algo.same_fixed_points_as) if algo.same_fixed_points_as else algo


def consensual_always(mixing: np.ndarray, algo: Algorithm, lrs: np.ndarray) -> bool:
    """Whether the fixed point is the consensual centralised solution without a system
    (module doc): a tracking schedule, or EXTRA with equal rates, on a doubly stochastic
    ``mixing`` (``W``, or ``E[W]`` of random gossip; connected, as every mixing the library
    accepts).  Shared with the low-rank fixed point."""
    if algo not in CONSENSUAL_ALWAYS + CONSENSUAL_ALWAYS_EQUAL_RATES:
        return False
    lrs = np.asarray(lrs, dtype=float)
    if algo in CONSENSUAL_ALWAYS_EQUAL_RATES and not np.all(lrs == lrs.flat[0]):
        return False
    return bool(np.all(lrs > 0)) and graphs.is_doubly_stochastic(mixing)


def _weighted_lstsq(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares solution of ``a u = b`` and the relative misfit ``||a u - b|| / ||b||``."""
    u = scipy.linalg.lstsq(a, b)[0]
    norm = float(np.linalg.norm(b))
    return u, float(np.linalg.norm(a @ u - b)) / norm if norm > 0 else 0.0


def _solve_fixed_point(problem: KernelProblem, algo, lrs, vr, lam) -> np.ndarray:
    """Parameters ``alpha`` ``(Q, R, C0)`` of the fixed point from the full linear system."""
    s = float(lrs.max())
    op = StepOperator(problem, algo, lrs / s)
    q, r = problem.num_agents, problem.kernel.shape[0]
    c0 = problem.residual0.shape[1]
    treedef, blocks = state_structure(algo)
    rank = len(lam)
    full_rank = rank == r  # then alpha itself is a fine coordinate system: no change of basis
    to_alpha = vr / np.sqrt(lam)  # (R, r): u -> alpha
    to_u = vr.T * np.sqrt(lam)[:, None]  # (r, R): alpha -> u
    # affine part: one full step from the zero state (central slot dropped); for a random
    # mixing sequence W is E[W]: the fixed point of the mean state
    data = solver.device_data(problem, lrs[None, :], for_records=False)
    ops = solver.kernel_operators(data["blocks"], data["residual"], data["mixing"],
                                  data["lr_cols"][:q], offsets=problem.offsets,
                                  rows_per_sample=problem.rows_per_sample, central=False)
    zero = jax.tree.unflatten(treedef, [jnp.zeros((q, r, c0))] * blocks)
    c = np.stack([np.asarray(v) for v in jax.tree.leaves(algo.step(zero, ops))])  # (B,Q,R,C0)

    def change(mat, x):  # (a, b) applied to every (B, Q) block of x: (B Q b, m) -> (B Q a, m)
        m = x.shape[1]
        out = np.matmul(mat, x.reshape(blocks * q, mat.shape[1], m))  # BLAS, batched
        return out.reshape(blocks * q * mat.shape[0], m)

    c_u = c.reshape(blocks * q * r, c0) if full_rank else change(to_u, c.reshape(-1, c0))

    def a_u(u):  # (B Q r, m) -> (B Q r, m); A restricted to the invariant subspace
        if full_rank:
            return op.matvec(u, s)
        return change(to_u, op.matvec(change(to_alpha, u), s))

    dim = blocks * q * rank
    if dim <= DENSE_SOLVE_MAX:
        eye = np.eye(dim)
        u = solve_system(None, eye - a_u(eye), c_u, dim)
    else:
        u = solve_system(lambda v: v - a_u(v[:, None])[:, 0], None, c_u, dim)
    state = (u if full_rank else change(to_alpha, u)).reshape(blocks, q, r, c0)
    return np.asarray(algo.parameters(jax.tree.unflatten(treedef, list(state))))


def _finish(problem: KernelProblem, algo, lrs, x: np.ndarray) -> FixedPoint:
    """Record the fixed point ``x`` (agents then the centralised solution, alpha coordinates)."""
    q = problem.num_agents
    rec_data = solver.device_data(problem, lrs[None, :])
    rec = solver.record_jit(jnp.asarray(x), rec_data, q_count=q, n_rates=1,
                         traced=problem.traced, has_test=problem.has_test, record_outputs=True)
    rec = {k: np.asarray(v) for k, v in rec.items()}
    inverse = np.argsort(problem.order)
    cons, cen = rec["consensus_dist"][:, 0], rec["central_dist"][:, 0]
    return FixedPoint(
        algorithm=algo.name,
        lr=lrs,
        train_loss=rec["train_loss"][:q, 0],
        train_acc=rec["train_acc"][:q, 0],
        param_dist=rec["param_dist"][:q, 0],
        consensus_dist=cons,
        central_dist=cen,
        consensus_gap=float(np.sqrt(np.mean(cons**2))),
        central_gap=float(np.sqrt(np.mean(cen**2))),
        central_train_loss=float(rec["train_loss"][q, 0]),
        central_param_dist=float(rec["param_dist"][q, 0]),
        test_loss=rec["test_loss"][:q, 0] if problem.has_test else None,
        test_acc=rec["test_acc"][:q, 0] if problem.has_test else None,
        central_test_loss=float(rec["test_loss"][q, 0]) if problem.has_test else None,
        train_outputs=rec["train_outputs"][:q, 0][:, inverse],
        test_outputs=rec["test_outputs"][:q, 0] if problem.has_test else None,
        network=network_words(problem.f0_train, problem.f0_test),
    )
