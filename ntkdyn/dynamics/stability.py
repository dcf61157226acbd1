r"""Stability of the linearised peer-to-peer dynamics, and their fixed point.

One step of any algorithm is affine in the kernel-space state,
``alpha <- A(s) alpha + c``, where the learning rates are ``s * profile``
(``profile = lr / max(lr)``; ``s`` is the largest per-agent rate).  The
iteration converges iff the spectral radius ``rho(A(s)) < 1`` on the
directions the kernel sees (eigenvalues of modulus exactly 1 that belong to
the null space of ``Theta`` change no output and are ignored: the test is
``rho > 1 + RHO_TOL``).  Derivations: ``theory/stability.md``.

* **Exact boundary** ``lr*``: the largest ``s`` with ``rho(A(s)) <= 1``.
  For DGD with symmetric ``W`` and one rate for all agents the operator is
  similar to the symmetric ``W (x) I - s H`` (``H = blockdiag(Theta^{1/2}
  P_q Theta^{1/2} / N_q)``), its eigenvalues are real and the boundary is
  where the smallest reaches ``-1``: ``1/lr* = lambda_max((I + W)^{-1} (x) I . H)``
  (one extreme eigenvalue of an operator similar to a PSD one); ATC and CTA
  likewise with ``(I + W)^{-1} W`` (exact for ``W >= 0``, verified otherwise).
  Which schedules have such a crossing, and with which factor ``g(W)``, is a field of
  the schedule (:attr:`Algorithm.minus_one_crossing`), never a test of its name.
  Other cases are bracketed on ``rho(A(s)) - 1``: ``rho`` computed densely for small
  operators (each edge refined by Brent) and by ARPACK for large ones (each edge
  approached from its unstable side, :func:`_locate_edge`).
* **Sufficient bounds** (DESIGN.md; the schedule's :attr:`Algorithm.sufficient_bound`):
  DGD, symmetric doubly stochastic ``W``:
  ``lr max_q lambda_max(Theta_qq)/N_q < 1 + lambda_min(W)``; ATC and CTA:
  ``lr max_q lambda_max(Theta_qq)/N_q < 2`` whatever the graph.

Public functions take a name or an :class:`~ntkdyn.algorithms.Algorithm` and resolve it
once; everything below them (:class:`StepOperator` included) takes the object.
* **Any schedule** (``theory/algorithms.md``): the operator acts on the full
  (augmented) state, restricted by ``Algorithm.project`` to the invariant subspace of
  a schedule with conserved quantities (gradient tracking, EXTRA); one round for
  P2PL; the steps of one period of a periodic mixing sequence (per-step rate
  ``rho^(1/n)``); the mean-state operator with ``E[W]`` for random gossip.  Its
  ``lr*`` is bracketed (no sufficient bound applies).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse.linalg as spla

from ntkdyn import graphs
from ntkdyn._utils.checks import learning_rates
from ntkdyn.algorithms import GD, Algorithm, MixingFacts, Operators, get_algorithm
from ntkdyn.dynamics.problem import KernelProblem
from ntkdyn.dynamics.solver import kernel_operators, row_blocks

RHO_TOL = 1e-9
#: inside the stable set, a spectral radius at most this far above 1 is the kernel's
#: round-off, not an instability: a float32-rounded or rank-deficient kernel has
#: eigenvalues of about -1e-7 ||Theta|| where it should have 0, and the modes it barely
#: sees then grow by ``1 + O(lr 1e-7 / n_q)`` a step (measured 1.7e-9 to 3.9e-9 on
#: ``tests/test_stability.py``'s problem; 5.4e-9 at N = 8,192); the report says so
ROUNDOFF_RHO = 1e-6
DENSE_MAX = 1500
#: a stable-set scan evaluates its grid's dense radii side by side in threads (one BLAS
#: thread each) from this many dimensions on: LAPACK's Hessenberg QR barely uses a second
#: core, so two at once take 2.3 s where one after the other take 3.3-3.7 s (four
#: 1,330 x 1,330 eigenvalue problems, 2 cores, measured 2026-12-04)
PARALLEL_DENSE_MIN = 300


@dataclass(frozen=True)
class StabilityReport:
    """Stability of one algorithm at one learning rate (all in linearised dynamics).

    ``lr`` and ``lr_star`` are the largest per-agent rate (``max_q lr_q``);
    with per-agent rates the ratios between agents are kept fixed.
    ``stable_rates``: the stable set as closed intervals ``(lo, hi)`` (empty: unstable
    at every rate, ``lr_star = 0``; ``(0, inf)``: stable at every rate, ``lr_star = inf``),
    ``stable_set`` says it in words.  ``lr_min``: the smallest per-agent rate where the
    rates differ (``None``: one rate for all agents); :meth:`describe` then names ``lr`` as
    the largest and ``lr*`` as that of the largest rate.  ``loss``/``note``: for
    cross-entropy the report is of the linearisation at ``f_0``
    (:mod:`ntkdyn.dynamics.ce_stability`), ``note`` says so.  ``lr_star`` is the upper end
    of the interval holding ``lr`` (the nearest one if ``lr`` is unstable) and
    ``margin = min(1 - lr/hi, 1 - lo/lr)`` for that interval ``[lo, hi]``
    (``1 - lr / lr_star`` when it starts at 0): > 0 exactly when ``stable``, ``-inf`` when
    no rate is stable.  ``lr_bound`` is the sufficient bound
    of DESIGN.md (``nan`` where no such bound applies).  ``spectral_radius`` is ``nan`` when
    the Krylov eigensolver could not verify one (``method`` says so); ``stable`` is then the
    stable set's verdict at ``lr``.
    """

    algorithm: str
    lr: float
    spectral_radius: float
    lr_star: float
    lr_bound: float
    stable: bool
    margin: float
    method: str
    operator: str = "one step"
    stable_rates: tuple[tuple[float, float], ...] = ()
    stable_set: str = ""
    loss: str = "mse"
    note: str = ""
    lr_min: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        word = "converge" if self.stable else "diverge"
        where = self.stable_set or f"exact largest stable rate lr*={self.lr_star:.6g}"
        radius = ("spectral radius not computed" if np.isnan(self.spectral_radius)
                  else f"spectral radius {self.spectral_radius:.6f}")
        bound = "none" if np.isnan(self.lr_bound) else f"{self.lr_bound:.6g}"
        rate = f"lr={self.lr:.4g}" if self.lr_min is None else (
            f"per-agent rates {self.lr_min:.4g}..{self.lr:.4g} (lr={self.lr:.4g}, the largest; "
            "the stable set, lr* and the bound are of the largest rate, the agents' ratios "
            "kept fixed)")
        text = (f"{self.algorithm.upper()} at {rate}: linearised dynamics {word} "
                f"({radius}); {where}; sufficient bound {bound}, margin {self.margin:+.1%}")
        return text + (f" [{self.note}]" if self.note else "")


def dense_eigvals(matrix: np.ndarray) -> np.ndarray:
    """Eigenvalues of a dense non-symmetric matrix, with BLAS limited to one thread.

    For the sizes solved densely here (``<= DENSE_MAX``) the Hessenberg QR gains little
    from threads, and threaded BLAS waiting on busy cores made it 3-10x slower on a loaded
    2-core machine (measured); threadpoolctl comes with scikit-learn.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return np.linalg.eigvals(matrix)
    with threadpool_limits(1, user_api="blas"):
        return np.linalg.eigvals(matrix)


# --------------------------------------------------------------------------- operators
def state_structure(algorithm: Algorithm):
    """``(treedef, B)``: structure of the algorithm's (augmented) state and its number of
    leaves (each shaped like the parameters)."""
    dummy = Operators(mix=lambda x, j=0: x, grad=lambda x: x, scale=lambda x: x)
    shapes = jax.eval_shape(lambda: algorithm.initial_state(jnp.zeros((1, 1, 1)), dummy))
    leaves, treedef = jax.tree.flatten(shapes)
    if any(tuple(leaf.shape) != (1, 1, 1) for leaf in leaves):
        raise ValueError(f"algorithm: the state of {algorithm.name!r} must be a pytree of "
                         "arrays shaped like the parameters")
    return treedef, len(leaves)


@partial(jax.jit, static_argnames=("algorithm", "offsets", "rps", "treedef", "project"))
def _apply_linear(x, s, blocks, mixings, profile, pi, *, algorithm, offsets, rps, treedef,
                  project):
    """``A(s) x`` for stacked states ``(B, Q, R, C)``: the steps of one period without their
    affine part, after the projection onto the schedule's invariant subspace."""
    zeros = jnp.zeros((offsets[-1] * rps, 1), x.dtype)
    lr = s * profile[:, None, None]
    state = jax.tree.unflatten(treedef, [x[b] for b in range(x.shape[0])])
    if project and algorithm.project is not None:
        state = algorithm.project(state, pi)
    common = dict(offsets=offsets, rows_per_sample=rps, central=False)
    if mixings.ndim == 2:
        state = algorithm.step(state, kernel_operators(blocks, zeros, mixings, lr, **common))
    else:  # a periodic sequence: (n, m, Q, Q), n steps of m mixing events
        for i in range(mixings.shape[0]):
            ops = kernel_operators(blocks, zeros, lambda j, i=i: mixings[i, j][None], lr,
                                   **common)
            state = algorithm.step(state, ops)
    return jnp.stack(jax.tree.leaves(state))


def step_mixings(problem: KernelProblem, algorithm: Algorithm) -> tuple[np.ndarray, int]:
    """Mixing for the stability analysis and the number of steps it spans.

    Static ``W``: ``(W, 1)``.  Random sequence: ``(E[W], 1)`` -- the mean-state
    dynamics.  Periodic sequence of ``P`` matrices with ``m`` mixes per step: the
    ``n = P / gcd(P, m)`` steps after which the events repeat, ``(n, m, Q, Q)``.
    """
    process = problem.process
    if process is None or process.random:
        return problem.mixing, 1
    period, m = process.period, algorithm.mixes_per_step
    n = period // math.gcd(period, m)
    events = np.arange(n * m).reshape(n, m)
    return process.cycle[events % period], n


@partial(jax.jit, static_argnames=("algorithm", "offsets", "rps", "treedef", "project"))
def _apply_single(x, s, blocks, mixings, profile, pi, **static):
    """:func:`_apply_linear` on one single-state schedule's states ``(Q, R, C)``, the
    stacking inside the compiled program: eager ``x[None]`` and ``[0]`` around it were
    0.2 of the 0.6 ms a Krylov product took (8 agents x 800 samples, a period of 2)."""
    return _apply_linear(x[None], s, blocks, mixings, profile, pi, **static)[0]


def perron_vector(w: np.ndarray) -> np.ndarray:
    """Left Perron vector ``pi`` of a stochastic ``W`` (``pi^T W = pi^T``, sum 1)."""
    if graphs.is_doubly_stochastic(w):
        return np.full(w.shape[0], 1.0 / w.shape[0])
    vals, vecs = np.linalg.eig(w.T)
    v = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
    return v / v.sum()


def _linear_step(problem: KernelProblem, algorithm: Algorithm, profile: np.ndarray,
                 blocks, project: bool = True):
    """``(x, s) -> A(s) x`` (compiled once per shape and algorithm) on states ``(Q, R, C)``
    for single-state schedules, stacked ``(B, Q, R, C)`` for augmented ones; ``blocks``
    are the kernel's row blocks on the device (:func:`~ntkdyn.dynamics.solver.row_blocks`)."""
    mixings, _ = step_mixings(problem, algorithm)
    mixings = jnp.asarray(mixings)
    prof = jnp.asarray(profile, dtype=jnp.float64)
    pi = jnp.asarray(perron_vector(problem.mixing))
    treedef, count = state_structure(algorithm)
    static = dict(algorithm=algorithm, offsets=problem.offsets, rps=problem.rows_per_sample,
                  treedef=treedef, project=project)

    fn = _apply_single if count == 1 else _apply_linear

    def apply(x, s):
        return fn(x, s, blocks, mixings, prof, pi, **static)

    return apply


class StepOperator:
    """The linear part ``A(s)`` of one step, jitted once, applied many times.

    The state is the algorithm's full (augmented) state: ``B`` blocks of ``Q x R``
    (``B = 1`` for DGD/ATC/CTA/GD/P2PL, 3 for gradient tracking, 2 for EXTRA and
    momentum), ``dim = B Q R``.  For a schedule with conserved quantities the operator
    is restricted to the invariant subspace holding the initial state (``A Pi``,
    ``Pi`` = :attr:`Algorithm.project`: its eigenvalue-1 modes are never excited).
    For a periodic mixing sequence the operator spans ``period_steps`` steps and
    :meth:`spectral_radius` returns the per-step rate ``rho^(1/period_steps)``; for a
    random one it is the mean-state operator with ``E[W]``.
    """

    #: the class default, for subclasses with their own ``__init__`` (the low-rank
    #: :class:`~ntkdyn.lowrank.stability.FeatureStepOperator`)
    product_budget: int | None = None

    #: relative residual of the Ritz value the last :meth:`spectral_radius` returned where
    #: it came from the loose search (:meth:`_loose_top`), else ``None``
    radius_residual: float | None = None

    def __init__(self, problem: KernelProblem, algorithm: Algorithm, profile=None):
        if not isinstance(algorithm, Algorithm):
            raise TypeError(f"algorithm: expected an ntkdyn.algorithms.Algorithm (resolve a "
                            f"name with get_algorithm), got {algorithm!r}")
        self.algorithm = algorithm
        self.problem = problem
        self.q, self.r = problem.num_agents, problem.kernel.shape[0]
        _, self.blocks = state_structure(algorithm)
        self.dim = self.blocks * self.q * self.r
        self.period_steps = step_mixings(problem, algorithm)[1]
        self.profile = np.ones(self.q) if profile is None else np.asarray(profile, float)
        # the kernel's row blocks go to the device once, for A(s) and for D H
        self._kernel_blocks = row_blocks(problem.kernel, problem.offsets,
                                         problem.rows_per_sample)
        self._apply = _linear_step(problem, algorithm, self.profile, self._kernel_blocks)
        self._local = None
        self._structure = None
        #: most products one Krylov :meth:`spectral_radius` may take (``None``: no limit);
        #: beyond it :class:`RadiusTooCostly` (the Krylov stable-set search sets it to
        #: :data:`SEARCH_PRODUCTS`)
        self.product_budget: int | None = None

    def _shape(self, m: int) -> tuple:
        base = (self.q, self.r, m)
        return base if self.blocks == 1 else (self.blocks,) + base

    def dense(self, s: float) -> np.ndarray:
        """The ``dim x dim`` matrix at rate ``s`` (of one period for a periodic sequence)."""
        eye = jnp.eye(self.dim).reshape(self._shape(self.dim))
        return np.asarray(self._apply(eye, s)).reshape(self.dim, self.dim)

    def matvec(self, v: np.ndarray, s: float) -> np.ndarray:
        m = 1 if v.ndim == 1 else v.shape[1]
        x = v.reshape(self._shape(m))  # numpy: the compiled call transfers it
        return np.asarray(self._apply(x, s)).reshape(v.shape)

    def spectral_radius(self, s: float, method: str = "auto", inside: bool = False) -> float:
        """``rho(A(s))`` (per step over a period).  ``method``: ``"dense"`` (all
        eigenvalues), ``"arpack"`` (Krylov on ``A(s)``: thousands of products when the slow
        modes cluster below 1), ``"structured"`` (:meth:`structured_radius`, else ARPACK);
        ``"auto"``: dense up to :data:`DENSE_MAX` dimensions, else structured.

        Krylov (no dense or structured radius): the one eigenvalue of largest modulus alone
        (:func:`_one_eigenvalue` with :data:`CLUSTER_MAXITER` restarts: tens of products
        where it is isolated, e.g. an unstable mode leaving the disc, hundreds where it is
        the top of the slow cluster just below ``+1``, as at a periodic sequence's stable
        rates).  Where ``inside`` (``s`` lies in the stable set, which bounds every modulus
        by ``1``) and the kernel-space operator has a low-rank form (DGD/ATC/CTA, e.g. ATC
        with an indefinite ``W`` above ``1 / curv``), the search stops at
        :data:`QUICK_MAXITER` restarts, and the cluster's top is the eigenvalue nearest
        ``1`` by shift-invert (:func:`radius.nearest`, tens of solves).  A stable value
        outside the known stable set (not ``inside``) is checked against the leftmost
        eigenvalue alone (:data:`QUICK_MAXITER` restarts: a mode leaving through ``-1`` is
        isolated).  Where the search does not converge and ``inside``, the six eigenvalues
        of largest modulus (no search through ``-1``: NEXT on a Metropolis ring of 8, 7,200
        dimensions, 'LM' 4 s, where the leftmost search, in the defective pairs
        ``mu = lambda(W) < 0`` the kernel does not see, ran 12 minutes and failed);
        otherwise six eigenvalues of largest modulus and four leftmost (the larger of the
        two).  Measured on 100 agents of 14 samples (Erdos-Renyi, ATC, 140,000
        dimensions): at an unstable rate 2 s instead of 135 s (the same radius), at a
        stable one seconds instead of more than 10 minutes.  On the periodic ring+star of
        8 agents x 800 samples one search instead of two (the first's 20 restarts, about
        530 products, were repeated by the second at every stable rate).  Each
        largest-modulus search starts from the eigenvector found at the nearest rate so far
        plus the fixed random vector (:attr:`krylov_start`): 13-17 % fewer products over a
        check's scan, edge and chosen rate."""
        if method not in ("auto", "dense", "arpack", "structured"):
            raise ValueError(f"method: expected 'auto', 'dense', 'arpack' or 'structured', "
                             f"got {method!r}")
        rho, self.radius_residual = None, None
        if method == "dense" or (method == "auto" and self.dim <= DENSE_MAX):
            rho = float(np.max(np.abs(dense_eigvals(self.dense(s)))))
        elif method in ("auto", "structured"):
            rho = self.structured_radius(s)
            if rho is None and self.algorithm.heavy_ball is not None:
                rho = self.heavy_ball_radius(s)
        if rho is None:
            step = None if self._structure is None else self._structure[0]
            if step is not None:  # the same operator in numpy: no dispatch per product
                def product(v):
                    return step.apply(v.reshape(self.q, self.r, 1), s).ravel()
            else:
                def product(v):
                    return self.matvec(v, s)
            op = spla.LinearOperator((self.dim, self.dim), matvec=_budgeted(
                product, self.product_budget, s), dtype=np.float64)
            from ntkdyn.dynamics import radius

            # (a Woodbury solve needs the kernel-space form; the low-rank coordinates'
            # FeatureStep has none)
            woodbury = inside and isinstance(step, radius.LowRankStep)
            # One eigenvalue alone, with CLUSTER_MAXITER restarts: tens of products where
            # it is isolated, hundreds where it is the top of the slow cluster.  Only where
            # a shift-invert can take that top instead does it stop at QUICK_MAXITER.
            rho = _one_eigenvalue(op, self.dim, QUICK_MAXITER if woodbury else CLUSTER_MAXITER,
                                  start=self.krylov_start, rate=s)
            if rho is None and woodbury:
                try:
                    rho = float(np.max(np.abs(radius.nearest(step, s, 1.0 + radius.SHIFT))))
                except spla.ArpackNoConvergence:
                    rho = _one_eigenvalue(op, self.dim, CLUSTER_MAXITER,
                                          start=self.krylov_start, rate=s)
            if rho is not None and not inside and rho ** (1.0 / self.period_steps) <= 1 + RHO_TOL:
                # a stable verdict outside the known stable set: the leftmost eigenvalue too,
                # for a mode leaving through -1 beside the cluster that 'LM' converged to
                # (isolated, so found within QUICK_MAXITER restarts if there is one)
                rho = max(rho, _one_eigenvalue(op, self.dim, which="SR") or 0.0)
            if rho is None and inside:
                # every modulus is <= 1 here: no mode leaving through -1 to look for; the
                # cluster's top to the looser tolerance first (seconds where six to 1e-10
                # took minutes), its residual kept for the report
                rho = self._loose_top(op, s)
            if rho is None and inside:
                rho = float(np.max(np.abs(_arpack(op, "LM", 6, self.dim))))
            if rho is None:
                # The modes the kernel barely sees cluster just inside +1, so 'LM' alone
                # converges slowly to them; an unstable mode usually leaves through -1, which
                # 'SR' (the leftmost eigenvalues) finds in a few hundred products. The larger.
                found = [_arpack(op, "SR", 4, self.dim), _arpack(op, "LM", 6, self.dim)]
                rho = float(max(np.max(np.abs(v)) for v in found))
        return rho ** (1.0 / self.period_steps)

    def _loose_top(self, op, s: float) -> float | None:
        """The largest modulus at a rate inside the stable set, to :data:`LOOSE_TOL`
        (:func:`_one_eigenvalue` at that tolerance, :data:`CLUSTER_MAXITER` restarts), where
        the slow modes cluster at ``1`` closer than a search to ``1e-10`` resolves.  The Ritz
        pair's relative residual is left in :attr:`radius_residual` (the modulus is within
        about that of an eigenvalue's; :func:`operator_report` states it).  Measured on DIGing
        linearised for cross-entropy on an empirical kernel (6,900 dimensions, 115
        eigenvalues exactly ``1`` and hundreds within ``1e-3`` of it): 1,851 products, 1 s,
        ``1 - 9.3e-9`` for the true ``1``, where six eigenvalues to ``1e-10`` ran 140 s."""
        found = _one_eigenvalue(op, self.dim, CLUSTER_MAXITER, start=self.krylov_start,
                                rate=s, tol=LOOSE_TOL, rtol=LOOSE_RTOL, residual=True)
        if found is None:
            return None
        self.radius_residual = found[1]
        return found[0]

    @property
    def krylov_start(self) -> KrylovStart:
        """The start vectors of this operator's largest-modulus searches
        (:class:`KrylovStart`: each from the eigenvector found at the nearest rate and a
        fixed random vector), created on first use (the low-rank FeatureStepOperator has its
        own ``__init__``)."""
        start = getattr(self, "_krylov_start", None)
        if start is None:
            start = self._krylov_start = KrylovStart(self.dim)
        return start

    def _periodic(self) -> bool:
        """A periodic mixing sequence: the operator is not one static step.  (A random one's
        is: the mean-state step with ``E[W]``, :func:`step_mixings`, so the structured
        radii below apply to it as to a static ``W``.)"""
        process = self.problem.process
        return process is not None and not process.random

    def structured_radius(self, s: float) -> float | None:
        """``rho(A(s))`` by shift-invert through the rank-``m`` structure of DGD/ATC/CTA
        (:mod:`ntkdyn.dynamics.radius`: exact up to ``~1e-12``; a random mixing sequence's
        mean-state step with ``E[W]`` too); ``None`` where it does not
        apply (augmented state, periodic mixing sequence, an operator of another form, a spectrum
        not known to be real: a ``W`` neither symmetric nor reversible, ATC/CTA with
        indefinite ``W`` above ``1 / curv``).  The form is read off the operator once
        (:meth:`form_step`), then :meth:`form_radius` gives the radius, on the similar step
        with ``Pi^{1/2} W Pi^{-1/2}`` for a reversible ``W`` (:meth:`_similar_mixing`)."""
        from ntkdyn.dynamics import radius

        if self.blocks != 1 or self.period_steps != 1 or self._periodic():
            return None
        if self._structure is None:
            curv = float(np.max(self.profile * agent_curvatures(self.problem)))
            probe = 1.0 / curv if curv > 0 else 1.0
            form = radius.detect_form(self.form_step, self.matvec_state,
                                      self.local_curvature, (self.q, self.r, 2), probe)
            # a reversible W: the step with Pi^{1/2} W Pi^{-1/2}, similar (same spectrum)
            self._structure = (None if form is None else
                               self.form_step(form, mixing=self._similar_mixing()), curv)
        step, curv = self._structure
        return None if step is None else self.form_radius(step, s, curv)

    def heavy_ball_radius(self, s: float) -> float | None:
        """``rho(A(s))`` of heavy-ball momentum on DGD (``algorithm.heavy_ball``) from DGD's
        two extreme eigenvalues by shift-invert (:func:`radius.heavy_ball_radius`);
        ``None`` for a periodic mixing sequence, a non-symmetric ``W``, or an operator without the
        kernel-space Woodbury form (the low-rank coordinates')."""
        from ntkdyn.dynamics import radius

        if self.period_steps != 1 or self._periodic():
            return None
        step = self.form_step("dgd", mixing=self._similar_mixing())
        if not isinstance(step, radius.LowRankStep):
            return None
        curv = float(np.max(self.profile * agent_curvatures(self.problem)))
        return radius.heavy_ball_radius(step, s, curv, self.algorithm.heavy_ball)

    def _similar_mixing(self) -> np.ndarray:
        """The mixing matrix of the structured radii: ``W`` (``E[W]`` for random gossip), or
        for a reversible non-symmetric one the symmetric ``Pi^{1/2} W Pi^{-1/2}``
        (:func:`ntkdyn.graphs.symmetrised`), whose step is similar to ``W``'s
        (``theory/stability.md`` section 2): the radii that need a symmetric ``W`` apply."""
        sym = graphs.symmetrised(self.problem.mixing)
        return self.problem.mixing if sym is None else sym

    def form_step(self, form: str, mixing: np.ndarray | None = None):
        """The numpy operator of ``form`` (:class:`~ntkdyn.dynamics.radius.LowRankStep`);
        ``mixing``: another matrix in place of the problem's (a similar step)."""
        from ntkdyn.dynamics import radius

        p = self.problem
        w = p.mixing if mixing is None else mixing
        return radius.LowRankStep(p.kernel, w, p.offsets, p.rows_per_sample, self.profile,
                                  form)

    def form_radius(self, step, s: float, curv: float) -> float | None:
        """The radius of :meth:`form_step`'s operator at rate ``s`` (``None``: unknown)."""
        from ntkdyn.dynamics import radius

        return radius.structured_radius(step, s, curv)

    def matvec_state(self, x: np.ndarray, s: float) -> np.ndarray:
        """``A(s) x`` on a block of states ``(Q, R, c)`` (single-state schedules)."""
        return np.asarray(self._apply(jnp.asarray(x), s))

    def local_curvature(self, x):
        """``D H x`` on single-state arrays ``(Q, R, C)``: the local-gradient part of a step
        at unit rate (``x - A_GD(1) x``; same device blocks as :meth:`dense`).  One step
        also for a periodic sequence (GD's operator there would span the period:
        ``(I - D H)^P``)."""
        if self._local is None:
            one = dataclasses.replace(self.problem, process=None)
            self._local = _linear_step(one, GD, self.profile, self._kernel_blocks)
        return x - self._local(x, 1.0)

    def describe(self) -> str:
        """What one application of the operator is, in words (for reports)."""
        a = self.algorithm
        what = "one round" if a.records_per_step > 1 else "one step"
        if self.blocks > 1:
            what += f" on the augmented state ({self.blocks} blocks"
            what += ", restricted to the invariant subspace)" if a.project else ")"
        if self.period_steps > 1:
            what += f"; per-step rate over a period of {self.period_steps} steps"
        return what


#: Krylov basis sizes tried by :func:`_arpack`, and the residual
#: ``||A v - theta v|| / (max(|theta|, 1) ||v||)`` above which a returned Ritz pair is
#: discarded (relative to 1 for small ``theta``: the radii that matter are near 1, and the
#: projected-out null space of a schedule with memory is a defective eigenvalue 0)
ARPACK_NCV, RITZ_RTOL = (48, 160), 1e-6
#: dimensions up to which :func:`_arpack`, where ARPACK fails on every basis, forms the
#: operator and takes its dense spectrum instead (a tiny operator, whose Krylov basis is
#: nearly the whole space, can stop ARPACK with error 3, "no shifts could be applied",
#: and which path it takes there varies between processes: measured on momentum with a
#: 3-agent W, 36 dimensions, in a test that lowers DENSE_MAX)
ARPACK_DENSE_FALLBACK = 2000


def _arpack(op, which: str, k: int, dim: int) -> np.ndarray:
    """The ``k`` eigenvalues of ``op`` selected by ``which``, each checked by its own
    residual.  ARPACK can report converged Ritz values that are not eigenvalues at all
    (measured: momentum on a non-symmetric ``W``, 462 dimensions, a cluster of 180
    eigenvalues of modulus 1.18 -- with ``ncv = 48`` it returned values of modulus 9.3-11.8,
    above the operator's 2-norm of 3.86, with residuals equal to their size; with
    ``ncv = 160`` it returns the true 1.181).  If any returned pair's relative residual
    exceeds :data:`RITZ_RTOL`, the solve is repeated with the larger basis of
    :data:`ARPACK_NCV`; from the last basis the verified pairs are kept (the unverified
    discarded).  If none verifies (or ARPACK stops with an error on every basis): up to
    :data:`ARPACK_DENSE_FALLBACK` dimensions the ``k`` selected eigenvalues of the formed
    operator, else ``RuntimeError``."""
    v0 = np.random.default_rng(0).standard_normal(dim)
    for ncv in ARPACK_NCV:
        try:
            vals, vecs = spla.eigs(op, k=min(k, dim - 2), which=which, tol=1e-10, v0=v0,
                                   ncv=min(dim - 1, ncv), maxiter=5000)
        except spla.ArpackNoConvergence as exc:  # use what converged (and verifies)
            vals, vecs = exc.eigenvalues, exc.eigenvectors
        except spla.ArpackError:  # e.g. error 3, no shifts applicable: a basis nearly dim
            vals, vecs = np.empty(0, complex), np.empty((dim, 0), complex)
        good = [i for i in range(len(vals))
                if np.linalg.norm(op.matvec(vecs[:, i].real) + 1j * op.matvec(vecs[:, i].imag)
                                  - vals[i] * vecs[:, i])
                <= RITZ_RTOL * max(abs(vals[i]), 1.0) * np.linalg.norm(vecs[:, i])]
        last = ncv == ARPACK_NCV[-1] or ncv >= dim - 1
        if good and (len(good) == len(vals) or last):
            return np.asarray(vals)[good]
        if last:
            break
    if dim <= ARPACK_DENSE_FALLBACK:  # small enough to form: its dense spectrum
        vals = dense_eigvals(op.matmat(np.eye(dim)))
        order = np.argsort(-np.abs(vals) if which == "LM" else vals.real)
        return vals[order[:k]]
    raise RuntimeError("spectral_radius: ARPACK found no eigenvalue that verifies by its "
                       "residual; use method='dense'")


def dense_operator(problem: KernelProblem, algorithm: str | Algorithm, s: float,
                   profile=None) -> np.ndarray:
    """The ``(Q R) x (Q R)`` matrix of one step's linear part at rate ``s``."""
    return StepOperator(problem, get_algorithm(algorithm), profile).dense(s)


def spectral_radius(problem: KernelProblem, algorithm: str | Algorithm, s: float,
                    profile=None, method: str = "auto") -> float:
    """Spectral radius of one step's linear part at largest rate ``s``."""
    return StepOperator(problem, get_algorithm(algorithm), profile).spectral_radius(s, method)


def agent_curvatures(problem: KernelProblem) -> np.ndarray:
    """``lambda_max(Theta_qq) / N_q`` for every agent (the local step's curvature); a
    problem with its own ``agent_curvatures()`` (the low-rank coordinates' problem, which
    computes them once) answers itself."""
    own = getattr(problem, "agent_curvatures", None)
    if callable(own):
        return np.asarray(own(), dtype=np.float64)
    tops = [block_lambda_max(problem.agent_block(q)) for q in range(problem.num_agents)]
    return np.asarray(tops) / problem.counts


def block_lambda_max(block: np.ndarray) -> float:
    """The largest eigenvalue of a symmetric block (LAPACK's subset solver up to 3,000
    rows, Lanczos above)."""
    if block.shape[0] <= 3000:
        return float(scipy.linalg.eigvalsh(block, subset_by_index=[block.shape[0] - 1] * 2)[0])
    return float(spla.eigsh(block, k=1, which="LA", return_eigenvectors=False)[0])


def _analysed_matrices(problem: KernelProblem) -> list[np.ndarray]:
    """The mixing matrices the stability analysis sees: ``W``, every matrix of a periodic
    sequence, or ``E[W]`` of a random one."""
    process = problem.process
    if process is not None and not process.random:
        return list(process.cycle)
    return [problem.mixing]


def mixing_facts(problem: KernelProblem) -> MixingFacts:
    """The facts a sufficient-bound rule uses about the analysed mixing
    (:func:`_analysed_matrices`).  One reversible non-symmetric matrix (a static ``W`` or
    ``E[W]``, e.g. the ``"uniform"`` rule) counts as its symmetrised
    ``Pi^{1/2} W Pi^{-1/2}`` (:func:`ntkdyn.graphs.symmetrised`): the step is similar to
    the step with it, so every rule's non-expansiveness argument holds in the coordinates
    ``Pi^{1/2} (x) I`` (``theory/stability.md`` section 2); not for a periodic sequence,
    whose matrices have different ``pi``."""
    mats = _analysed_matrices(problem)
    if len(mats) == 1 and not graphs.is_symmetric(mats[0]):
        sym = graphs.symmetrised(mats[0])
        if sym is not None:
            return MixingFacts(lambda_min=graphs.lambda_min(sym), num_matrices=1,
                               num_agents=problem.num_agents)
    symmetric = all(graphs.is_symmetric(w) and graphs.is_doubly_stochastic(w) for w in mats)
    lam = min(graphs.lambda_min(w) for w in mats) if symmetric else float("nan")
    return MixingFacts(lambda_min=lam, num_matrices=len(mats),
                       num_agents=problem.num_agents)


def sufficient_bound(problem: KernelProblem, algorithm: str | Algorithm,
                     profile=None) -> float:
    """Sufficient bound on the largest rate (``nan`` if none applies).

    The schedule's own rule (:attr:`Algorithm.sufficient_bound`, ``theory/algorithms.md``
    §3) evaluated on the analysed mixing (:func:`mixing_facts`) and the curvature
    ``curv = max_q profile_q lambda_max(Theta_qq) / N_q``.  With symmetric doubly stochastic
    mixing (every matrix of a periodic sequence; ``E[W]`` for random gossip), in the
    coordinates ``Theta^{1/2} alpha`` each local step ``I - eta D H`` is symmetric and
    non-expansive when ``eta curv <= 2`` and so is ``W``: ATC, CTA, GD and P2PL (any number
    of local and combine steps) are stable below ``2 / curv``; DGD's ``W - eta D H`` is
    non-expansive below ``(1 + lambda_min(W)) / curv`` (the smallest over a periodic
    sequence); heavy-ball momentum on DGD with a static ``W`` (or ``E[W]``) below
    ``(1 + 2 beta + lambda_min(W)) / curv`` (each eigenvalue ``mu`` of ``W - eta D H`` gives
    a stable 2x2 block iff ``-1 - 2 beta <= mu <= 1``).  With one agent every built-in
    schedule is centralised GD (``2 / curv``).  The stable-set search and the reports
    (``lr_bound``) use :func:`operator_bound`, tighter for DGD on a periodic sequence.
    """
    return schedule_sufficient_bound(problem, get_algorithm(algorithm), profile)


def schedule_sufficient_bound(problem: KernelProblem, algo: Algorithm,
                              profile=None) -> float:
    """:func:`sufficient_bound` for a resolved :class:`Algorithm` (its ``sufficient_bound``
    rule on the mixing's smallest eigenvalue and the agents' curvatures; ``nan`` if none,
    and where every curvature is 0: a zero kernel's operator does not depend on the rate,
    and the operator itself decides)."""
    if algo.sufficient_bound is None:
        return float("nan")
    profile = np.ones(problem.num_agents) if profile is None else np.asarray(profile, float)
    curv = float(np.max(profile * agent_curvatures(problem)))
    if curv == 0:  # the bounds divide by it (a ZeroDivisionError for the zero kernel)
        return float("nan")
    return float(algo.sufficient_bound(mixing_facts(problem), curv))


def operator_bound(op: StepOperator) -> float:
    """The sufficient bound on the largest stable rate of ``op``'s schedule
    (:func:`schedule_sufficient_bound` at its rate profile, ``nan``: none), raised for a
    periodic sequence of symmetric doubly stochastic ``W_i`` under a schedule whose step
    is symmetric in parameter space
    (:attr:`~ntkdyn.algorithms.MinusOneCrossing.symmetric_step`: DGD) to the smallest of
    the matrices' own ``-1`` crossings ``s_i`` (:func:`_minus_one_crossing`): below it
    every ``A_i(s)`` has its eigenvalues in ``[-1, 1]`` and so 2-norm ``<= 1``, and the
    period's product ``rho <= ||A_P|| ... ||A_1|| <= 1`` (``theory/stability.md``
    section 2, periodic sequences).  ``(1 + min_i lambda_min(W_i)) / curv`` (the rule's
    bound) is below every ``s_i``; on the periodic ring+star of 8 agents x 800 samples
    0.40 against 0.50 (the period's ``lr*`` is 0.785), one scan rate fewer."""
    problem, algo = op.problem, op.algorithm
    bound = schedule_sufficient_bound(problem, algo, op.profile)
    crossing = algo.minus_one_crossing
    process = problem.process
    if crossing is None or not crossing.symmetric_step or process is None or process.random:
        return bound
    # every matrix symmetric doubly stochastic (else nan) with lambda_min > -1
    if not mixing_facts(problem).lambda_min > -1 + 1e-10:
        return bound
    own = min(_minus_one_crossing(op, crossing.factor(w)) for w in _analysed_matrices(problem))
    return float(np.nanmax([bound, own]))


def _minus_one_crossing(op: StepOperator, factor: np.ndarray) -> float:
    """First rate at which an eigenvalue of ``A(s)`` reaches ``-1`` (symmetric ``W``).

    ``factor`` is ``g(W)`` of :class:`~ntkdyn.algorithms.MinusOneCrossing`.  DGD:
    ``A = W - s D H`` has eigenvalue ``-1`` iff ``(I + W) z = s D H z``, i.e. ``1/s`` is an
    eigenvalue of ``(I + W)^{-1} D H``; ATC/CTA: ``A = W (I - s D H)`` (or
    ``(I - s D H) W``, same spectrum) has ``-1`` iff ``1/s`` is an eigenvalue of
    ``(I + W)^{-1} W D H``; GD: ``I - s D H`` iff ``1/s`` is one of ``D H / 2``; the
    schedules with memory likewise (gradient tracking: ``2 W^2 (I + W)^{-2} D H``).  All are
    similar to symmetric matrices (``D H`` is block diagonal PSD in the coordinates
    ``Theta^{1/2} alpha``; ``g(W)`` is symmetric), so their spectra are real and the
    largest eigenvalue gives the crossing.
    """
    q, r, g = op.q, op.r, factor
    dim = q * r
    if dim <= DENSE_MAX:
        hx = np.asarray(op.local_curvature(jnp.eye(dim).reshape(q, r, dim))).reshape(
            q, r * dim)
        lam = float(np.max(dense_eigvals((g @ hx).reshape(dim, dim)).real))
    else:
        def matvec(v):
            dh = op.local_curvature(jnp.asarray(v.reshape(q, r, 1)))
            return (g @ np.asarray(dh).reshape(q, r)).ravel()
        lin = spla.LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
        lam = float(spla.eigs(lin, k=1, which="LR", tol=1e-12, return_eigenvectors=False,
                              v0=np.random.default_rng(0).standard_normal(dim))[0].real)
    return 1.0 / lam if lam > 0 else float("inf")


class StabilityUndecided(RuntimeError):
    """The bounded search for the stable set could not decide (the message says what)."""


class RadiusTooCostly(RuntimeError):
    """A Krylov spectral radius needed more than :attr:`StepOperator.product_budget`
    products (raised from inside ARPACK's loop, which it ends)."""


#: Products one spectral radius may take in the Krylov stable-set search (its scan and
#: edge refinement, not the radius at the chosen rate).  Where the largest moduli cluster
#: at ``1`` ARPACK cannot separate them: measured on P2PL/ATC/DGD on a periodic
#: star/complete sequence linearised for cross-entropy at one network's outputs (2,700
#: dimensions, empirical kernel, modes within ``1e-8`` of ``1``), 33,123 products (51 s)
#: for one stable scan rate and 110 s for one edge step, where unstable rates took
#: 0.1 s.  Beyond the budget a scan rate is decided by its leftmost eigenvalue and an edge
#: is reported to the precision reached (both said in :attr:`StableSet.method`).  The
#: low-rank 100-agent check of the README (about 12,000 products a stable rate) is cut
#: there too.
SEARCH_PRODUCTS = 5000


def _budgeted(product, budget: int | None, s: float):
    """``product`` counting its calls; past ``budget`` it raises :class:`RadiusTooCostly`."""
    if budget is None:
        return product
    count = [0]

    def counted(v):
        count[0] += 1
        if count[0] > budget:
            raise RadiusTooCostly(f"spectral radius at rate {s:.6g}: more than {budget:,} "
                                  "products")
        return product(v)

    return counted


#: Rates examined by the general search, in units of ``1 / curv``
#: (``curv = max_q profile_q lambda_max(Theta_qq) / N_q``): coarse far below the natural
#: scale, ratio ``2^(1/4)`` over ``[1/8, 8]`` where the boundaries of every built-in
#: schedule lie, coarse above; ``SCAN_UP`` extends the scan when the top rate is stable.
SCAN_GRID = tuple(2.0 ** e for e in (-20, -16, -12, -9, -7, -5, -4, -3.5)) + tuple(
    2.0 ** (k / 4) for k in range(-12, 13)) + tuple(2.0 ** e for e in (3.5, 4, 5, 6))
SCAN_UP = tuple(2.0 ** e for e in (8, 11, 14, 17, 20))
BRENT_MAXITER = 200


@dataclass(frozen=True)
class StableSet:
    """The set of (max per-agent) rates ``s > 0`` at which ``rho(A(s)) <= 1 + RHO_TOL``.

    ``intervals``: disjoint closed intervals ``(lo, hi)`` in increasing order (``hi`` may be
    ``inf``, ``lo`` may be 0); empty: unstable at every rate.  ``searched``: the rates the
    search examined (``(0, inf)`` where the answer is a theorem); below the lowest rate
    examined the set is continued with the verdict there (at rates ``< 1e-6 / curv`` the
    spectral radius differs from 1 by less than the tolerance for first-order effects
    anyway).  ``lr_star`` is the upper end of the first interval (0 when empty).
    """

    intervals: tuple[tuple[float, float], ...]
    method: str
    searched: tuple[float, float] = (0.0, float("inf"))

    @property
    def empty(self) -> bool:
        return not self.intervals

    @property
    def lr_star(self) -> float:
        return self.intervals[0][1] if self.intervals else 0.0

    def interval_of(self, s: float, rtol: float = 1e-7) -> tuple[float, float] | None:
        """The interval holding ``s`` (ends widened by ``rtol``), else ``None``."""
        for lo, hi in self.intervals:
            if lo * (1 - rtol) <= s <= hi * (1 + rtol):
                return lo, hi
        return None

    def contains(self, s: float) -> bool:
        return self.interval_of(s) is not None

    def margin(self, s: float) -> tuple[float, float]:
        """``(margin, lr_star)`` at rate ``s`` for the nearest interval ``[lo, hi]``.

        ``margin = min(1 - s/hi, 1 - lo/s)``: the relative change of ``s`` that reaches the
        nearer end (``1 - s / lr*`` for an interval starting at 0); > 0 inside, < 0
        outside, ``-inf`` when the set is empty.  ``lr_star`` is that interval's ``hi``.
        """
        if not self.intervals:
            return float("-inf"), 0.0
        best = max(self.intervals, key=lambda iv: _margin(s, *iv))
        return _margin(s, *best), best[1]

    def describe(self) -> str:
        if not self.intervals:
            return "unstable at every rate (lr*=0)"
        if self.intervals == ((0.0, float("inf")),):
            return "stable at every rate (lr*=inf)"
        if len(self.intervals) == 1 and self.intervals[0][0] == 0.0:
            return f"stable for every rate up to lr*={self.intervals[0][1]:.6g}"
        parts = " and ".join(f"[{lo:.6g}, {hi:.6g}]" for lo, hi in self.intervals)
        below = " (unstable at small rates too)" if self.intervals[0][0] > 0 else ""
        return f"stable only for rates in {parts}{below}"


def _margin(s: float, lo: float, hi: float) -> float:
    return min(1.0 - s / hi, 1.0 - lo / s)


def _dgd_unstable_at_every_rate(problem: KernelProblem, sym: np.ndarray) -> bool:
    """DGD with symmetric ``W``, ``lambda_min(W) = -1``: unstable at every rate > 0.

    In the coordinates ``Theta^{1/2} alpha`` the operator is ``W (x) I - s D H``, stable
    iff ``s D H <= (I + W) (x) I``; for ``z = v (x) u`` with ``(I + W) v = 0``,
    ``z^T D H z = sum_q d_q v_q^2 |Theta^{1/2} P_q u|^2 / N_q > 0`` for some ``u`` as soon as
    an agent with ``v_q != 0`` has a non-zero kernel block: then no ``s > 0`` is stable.
    ``sym``: the symmetric matrix similar to ``W`` (:func:`_crossing_mixing`: ``W`` itself
    when symmetric), whose null vectors of ``I + W`` have the same support.
    """
    vals, vecs = np.linalg.eigh(sym)
    null = vecs[:, vals <= -1 + 1e-10]
    weight = np.sum(null**2, axis=1)  # per agent, over the null space of I + W
    return bool(np.any((weight > 1e-12) & (agent_curvatures(problem) > 0)))


def stable_set(problem: KernelProblem, algorithm: str | Algorithm, profile=None,
               rtol: float = 1e-9, extra=(), cache: dict | None = None) -> StableSet:
    """The set of stable (max per-agent) learning rates, found in bounded work.

    * **Theorems** (a schedule with a :attr:`Algorithm.minus_one_crossing`, a static
      symmetric ``W``, one rate for all agents; DGD, GD, gradient tracking, DIGing and
      EXTRA for every such ``W``, ATC, CTA and NEXT for ``W >= 0``): the set is
      ``[0, s_c]`` with ``s_c`` the ``-1`` crossing of :func:`_minus_one_crossing`; DGD
      with ``lambda_min(W) = -1`` is unstable at every rate
      (:func:`_dgd_unstable_at_every_rate`).  ATC/CTA/NEXT with indefinite ``W``, or
      per-agent rates (DGD, GD and EXTRA: still a theorem, taken as verified):
      ``[0, s_c]`` if the radius just below ``s_c`` is <= 1 (verified); the tracking
      schedules with per-agent rates are scanned
      (:attr:`~ntkdyn.algorithms.MinusOneCrossing.equal_rates_only`).
    * **Otherwise** ``f(s) = rho(A(s)) - 1 - RHO_TOL`` is evaluated on :data:`SCAN_GRID`
      (x ``1/curv``, plus the rates in ``extra`` and the sufficient bound), every sign
      change is refined to ``rtol`` in at most :data:`BRENT_MAXITER` evaluations (Brent
      on dense radii, :func:`_locate_edge` on Krylov ones),
      and a stable top rate extends the scan over :data:`SCAN_UP`; stable at ``2^20 /
      curv`` too: "stable at every rate" if the operator does not depend on the rate
      (kernel-free), else :class:`StabilityUndecided`.  Windows narrower than the grid
      spacing (``2^(1/4)`` near the natural scale) can be missed.  Each Krylov radius of
      the scan and the edge refinement may take :data:`SEARCH_PRODUCTS` products; beyond
      that a scan rate is decided by its leftmost eigenvalue (:func:`_budgeted_scan`) and
      an edge is left at the precision reached, both stated in ``method``.

    ``cache`` (optional dict) receives ``{s: rho(A(s))}`` for every rate evaluated.
    """
    algo = get_algorithm(algorithm)
    q = problem.num_agents
    profile = np.ones(q) if profile is None else learning_rates(profile, q, "profile")
    op = StepOperator(problem, algo, profile / np.max(profile))
    return operator_stable_set(op, operator_bound(op), rtol, extra, cache)


def operator_stable_set(op: StepOperator, bound: float, rtol: float = 1e-9, extra=(),
                cache: dict | None = None) -> StableSet:
    """:func:`stable_set` on a built operator (its problem, schedule and rate profile);
    ``bound`` is the schedule's sufficient bound there (``nan``: none)."""
    problem, algo, profile = op.problem, op.algorithm, op.profile
    uniform = np.allclose(profile, 1.0)
    cache = {} if cache is None else cache

    def rho(s):
        if s not in cache:
            cache[s] = op.spectral_radius(s)
        return cache[s]

    found = _crossing_shortcut(op, rho, uniform)
    if isinstance(found, StableSet):
        return found
    hint = found
    kind = "dense" if op.dim <= DENSE_MAX else "arpack"
    curv = float(np.max(profile * agent_curvatures(problem)))
    if curv <= 0:  # the kernel sees nothing: A(s) = A(0) at every rate
        stable = rho(1.0) <= 1 + RHO_TOL
        return StableSet(((0.0, float("inf")),) if stable else (),
                         f"kernel-free operator ({kind} spectral radius)")

    def f(s):
        return rho(s) - (1.0 + RHO_TOL)

    pts = {g / curv for g in SCAN_GRID} | {float(x) for x in hint}
    pts |= {float(x) for x in np.atleast_1d(extra) if np.isfinite(x) and x > 0}
    # up to the sufficient bound (a theorem: theory/stability.md section 3) a rate is
    # stable without its spectral radius (at the bound itself by continuity: rho <= 1)
    known = 0.0
    if np.isfinite(bound) and bound > 0:
        pts.add(float(bound))
        known = float(bound)
    grid = sorted(pts)
    if kind == "dense" and op.dim >= PARALLEL_DENSE_MIN:
        _dense_radii(op, [s for s in grid if s > known], cache)
    clustered: list = []  # scan rates whose largest modulus was too costly to resolve
    scan = f if kind == "dense" else _budgeted_scan(op, f, clustered)
    signs = [s <= known or scan(s) <= 0 for s in grid]
    if signs[-1]:  # stable at the top: look further up
        for g in SCAN_UP:
            grid.append(g / curv)
            signs.append(scan(grid[-1]) <= 0)
            if not signs[-1]:
                break
        else:
            if _depends_on_rate(op, grid[-1]):
                raise StabilityUndecided(
                    f"stable_set: {algo.name} is stable at every rate tried up to "
                    f"{grid[-1]:.3g} (2^20 / curv) and its operator depends on the rate: "
                    "could not decide whether larger rates are stable")
    if kind == "dense":
        return StableSet(_brent_intervals(f, grid, signs, rtol, algo.name), "brent-dense",
                         (grid[0], grid[-1]))
    coarse: list = []
    found = _secant_intervals(_within_budget(op, f), grid, signs, rtol, algo.name, coarse)
    return StableSet(found, "secant-arpack" + _budget_notes(clustered, coarse),
                     (grid[0], grid[-1]))


def _budget_notes(clustered: list, coarse: list) -> str:
    """What :data:`SEARCH_PRODUCTS` left unresolved, in words (appended to the method)."""
    text = ""
    if clustered:
        text += (f"; at rate(s) {', '.join(f'{s:.4g}' for s in clustered)} the largest "
                 f"modulus needed more than {SEARCH_PRODUCTS:,} Krylov products (eigenvalues "
                 "clustered at modulus 1): stable by the leftmost eigenvalue, a mode leaving "
                 "the disc elsewhere by less than the cluster's spread not excluded")
    return text + "".join(
        f"; edge {edge:.6g} located to {gap:.1e} relative only (a spectral radius nearer it "
        f"needed more than {SEARCH_PRODUCTS:,} Krylov products)" for edge, gap in coarse)


def _budgeted_scan(op: StepOperator, f, clustered: list):
    """``f`` for the Krylov scan: the radius within :data:`SEARCH_PRODUCTS` products; beyond
    (:class:`RadiusTooCostly`: the largest moduli cluster, measured on cross-entropy's
    linearisation with an empirical kernel where the modes the kernel barely sees lie
    within ``1e-8`` of ``1`` and one radius took 40-53 s) the leftmost eigenvalue alone
    decides -- a mode leaving through ``-1`` is isolated, found within
    :data:`QUICK_MAXITER` restarts -- and the rate is appended to ``clustered``.  There
    ``f`` is ``|lambda_leftmost| - 1 - RHO_TOL`` when that exceeds ``0``, else
    ``-RHO_TOL`` (stable: the cluster's top taken as ``1``, which the all-ones outputs'
    pure mixing attains exactly for cross-entropy).  A mode leaving the disc beside the
    cluster is not seen (measured on the operator above: DGD's leftmost eigenvalue 0.08
    while the leaving mode is at ``1 + 2e-6`` per step), so such a rate may be unstable by
    about the cluster's spread; the method says so."""
    bounded = _within_budget(op, f)

    def g(s):
        try:
            return bounded(s)
        except RadiusTooCostly:
            clustered.append(s)
            lin = spla.LinearOperator((op.dim, op.dim), matvec=lambda v: op.matvec(v, s),
                                      dtype=np.float64)
            left = _one_eigenvalue(lin, op.dim, which="SR")
            left = 0.0 if left is None else left ** (1.0 / op.period_steps)
            return max(left - (1.0 + RHO_TOL), -RHO_TOL)

    return g


def _within_budget(op: StepOperator, f):
    """``f`` with :attr:`StepOperator.product_budget` set to :data:`SEARCH_PRODUCTS` while it
    runs (its radii raise :class:`RadiusTooCostly` beyond that)."""
    def g(s):
        op.product_budget = SEARCH_PRODUCTS
        try:
            return f(s)
        finally:
            op.product_budget = None

    return g


def _dense_radii(op: StepOperator, rates: list[float], cache: dict) -> None:
    """``cache[s] = rho(A(s))`` for every ``s`` of ``rates`` not cached yet, dense, in as
    many threads as there are cores (at most 8), BLAS limited to one thread throughout (so
    that the threads' own limits, :func:`dense_eigvals`, restore one thread).  The same
    numbers as one after the other: each is its own LAPACK call."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from ntkdyn._utils.threads import one_blas_thread

    todo = [s for s in rates if s not in cache]
    workers = min(8, os.cpu_count() or 1, len(todo))
    if workers < 2:
        return
    with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
        for s, rho in zip(todo, pool.map(lambda r: op.spectral_radius(r, "dense"), todo),
                          strict=True):
            cache[s] = rho


def _crossing_mixing(problem: KernelProblem, crossing) -> np.ndarray | None:
    """The symmetric matrix a ``-1`` crossing is about: a symmetric static ``W`` or the
    symmetric ``E[W]`` of random gossip (whose mean state is the static iteration with
    ``E[W]``), or, for a reversible one (:func:`ntkdyn.graphs.symmetrised`, e.g. the
    ``"uniform"`` rule on an irregular graph), ``Pi^{1/2} W Pi^{-1/2}``: the step with it
    is similar to the step with ``W`` (``Pi^{1/2} (x) I`` commutes with the agents' own
    operators), so the theorems hold for it and give ``W``'s stable set
    (``theory/stability.md`` section 2).  ``None`` where no crossing applies (none, a
    periodic sequence, a non-reversible ``W``)."""
    process = problem.process
    if crossing is None or (process is not None and not process.random):
        return None
    return graphs.symmetrised(problem.mixing)


def _crossing_lambda_min(problem: KernelProblem, crossing) -> float | None:
    """``lambda_min`` of :func:`_crossing_mixing`'s matrix (``None`` where there is none)."""
    sym = _crossing_mixing(problem, crossing)
    return None if sym is None else graphs.lambda_min(sym)


def _crossing_proven(crossing, lam: float, uniform: bool) -> bool:
    """The crossing is the boundary by a theorem: one rate for all agents,
    ``lambda_min(W) > -1``, and ``W >= 0`` unless the schedule's argument holds for every
    symmetric ``W``."""
    return uniform and lam > -1 + 1e-10 and (crossing.exact_for_indefinite_mixing
                                             or lam >= -1e-12)


def crossing_is_theorem(problem: KernelProblem, algorithm: Algorithm) -> bool:
    """Whether :func:`max_stable_lr` (one rate for all agents) is the schedule's ``-1``
    crossing by a theorem, one extreme eigenvalue with no radius (the validation harness's
    verdict on large operators)."""
    crossing = algorithm.minus_one_crossing
    lam = _crossing_lambda_min(problem, crossing)
    return lam is not None and _crossing_proven(crossing, lam, uniform=True)


def _crossing_shortcut(op: StepOperator, rho, uniform: bool) -> StableSet | list:
    """Where a schedule's stability ends when an eigenvalue crosses -1 (its
    ``minus_one_crossing``, a symmetric static ``W`` or the symmetric ``E[W]`` of random
    gossip, whose mean state is the static iteration with ``E[W]``): the stable set from
    that crossing alone (exact, or verified by the spectral radius just below it), or the
    crossing as a hint for the scan (a list, empty when there is none)."""
    problem, algo = op.problem, op.algorithm
    crossing = algo.minus_one_crossing
    sym = _crossing_mixing(problem, crossing)
    if sym is None:
        return []
    lam = graphs.lambda_min(sym)
    if (lam <= -1 + 1e-10 and crossing.lambda_min_minus_one_unstable
            and _dgd_unstable_at_every_rate(problem, sym)):
        return StableSet((), "lambda_min(W) = -1 (exact): unstable at every rate")
    if lam <= -1 + 1e-10 or (crossing.equal_rates_only and not uniform):
        return []
    s_c = _minus_one_crossing(op, crossing.factor(sym))
    if _crossing_proven(crossing, lam, uniform):
        return StableSet(((0.0, s_c),), "minus-one-crossing (exact)")
    below = s_c * (1 - 1e-7)
    if np.isfinite(s_c) and _stable_at(op, rho, below):
        return StableSet(((0.0, s_c),), "minus-one-crossing (verified)", (below, below))
    # otherwise a complex pair leaves the unit disc first: scan
    return [s_c] if np.isfinite(s_c) else []


#: restarts allowed to the quick largest-modulus search (:func:`_one_eigenvalue`: the
#: verification of :func:`_stable_at` and the first try of the Krylov radius)
QUICK_MAXITER = 20
#: restarts allowed to the second single-eigenvalue search of a Krylov radius, where the
#: first gave up: the top of the slow cluster just below ``+1``.  Measured on the periodic
#: ring+star of 8 agents x 800 samples (6,400 dimensions), at DGD's four stable grid
#: rates and at the chosen rate of DGD and ATC: 1,500-2,000 products (about 60-85
#: restarts) against 3,200-3,900 for six eigenvalues, the same modulus to 1e-11
CLUSTER_MAXITER = 200
#: ARPACK's tolerance and the accepted relative residual of the last single-eigenvalue
#: search at a rate inside the stable set (:meth:`StepOperator._loose_top`)
LOOSE_TOL, LOOSE_RTOL = 1e-6, 1e-5


class KrylovStart:
    """Start vectors of one operator's successive largest-modulus searches (at the rates of
    a scan, an edge search, then the chosen rate): the unit random vector of seed 0 plus,
    once a search has converged, the eigenvector (real part, unit norm) of the converged
    search at the rate nearest the new one (:data:`KEPT` of them, at the smallest rates: a
    scan's far end, unstable and far from every later rate, goes first).

    At a nearby rate the eigenvector of largest modulus is close to the one found there, so
    the search starts mostly inside the subspace it converges to: measured on the periodic
    ring+star of 8 agents x 800 samples, 20-30 % fewer products at stable rates after a
    stable one (the top of the slow cluster below ``+1``: DGD 1,398 -> 1,062 and 1,133 ->
    917), 10-15 % on the edge search, the same radii to 1e-11.  The nearest rate, not the
    last: the chosen rate, searched after the edge, starts from the nearest scan rate's
    eigenvector (DGD at 0.4: 1,969 products cold or from the edge's leaving mode, 1,513
    from the scan rate 0.508's).  The random half keeps every eigenvector's weight in the
    start within a factor of about 1.4 of a cold start's, so a mode that the earlier
    search did not see (one leaving the disc at a higher rate) is still found as an
    isolated eigenvalue is: the start is never an old eigenvector alone."""

    #: converged eigenvectors kept, one per rate (those at the smallest rates)
    KEPT = 16

    def __init__(self, dim: int):
        self.dim = dim
        r = np.random.default_rng(0).standard_normal(dim)
        self.random = r / np.linalg.norm(r)
        self.found: list[tuple[float, np.ndarray]] = []

    def vector(self, rate: float) -> np.ndarray:
        """The start vector of a search at ``rate``."""
        if not self.found:
            return self.random
        _, warm = min(self.found, key=lambda pair: abs(pair[0] - rate))
        return self.random + warm

    def keep(self, vec: np.ndarray, rate: float) -> None:
        """Remember a converged search's eigenvector at ``rate`` (real part, normalised)."""
        re = np.real(vec)
        norm = float(np.linalg.norm(re))
        if norm > 0 and np.isfinite(norm):
            found = sorted([p for p in self.found if p[0] != rate] + [(float(rate), re / norm)],
                           key=lambda pair: pair[0])
            self.found = found[: self.KEPT]  # the largest rates go first (a scan's far end)


def _one_eigenvalue(lin, dim: int, maxiter: int = QUICK_MAXITER, which: str = "LM",
                    start: KrylovStart | None = None, rate: float = 0.0, tol: float = 1e-10,
                    rtol: float = RITZ_RTOL, residual: bool = False):
    """``|lambda|`` of one eigenvalue of ``lin``, searched for alone: the one of largest
    modulus (``which="LM"``) or the leftmost (``which="SR"``), where ARPACK, asked for
    that one alone (``k=1``), converges within
    ``maxiter`` restarts (default :data:`QUICK_MAXITER`) and the pair's relative residual
    is below :data:`RITZ_RTOL` (an isolated eigenvalue: tens of products); ``None``
    otherwise (the extreme eigenvalues cluster).  ``start``: the operator's
    :class:`KrylovStart` (the search at ``rate`` starts from its vector and leaves its
    eigenvector there), else the random vector of seed 0.  ``tol``: ARPACK's; ``rtol``: the
    largest relative residual accepted; ``residual``: return ``(|lambda|, relative
    residual)``."""
    v0 = (np.random.default_rng(0).standard_normal(dim) if start is None
          else start.vector(rate))
    try:
        vals, vecs = spla.eigs(lin, k=1, which=which, tol=tol, ncv=min(dim - 1, 48),
                               v0=v0, maxiter=maxiter)
    except spla.ArpackError:  # not converged, or no shift applicable (a tiny operator)
        return None
    v, lam = vecs[:, 0], complex(vals[0])
    res = (np.linalg.norm(lin.matvec(v.real) + 1j * lin.matvec(v.imag) - lam * v)
           / (max(abs(lam), 1.0) * np.linalg.norm(v)))
    if res > rtol:
        return None
    if start is not None:
        start.keep(v, rate)
    return (abs(lam), float(res)) if residual else abs(lam)


def _stable_at(op: StepOperator, rho, s: float) -> bool:
    """``rho(A(s)) <= 1 + RHO_TOL`` (just below a ``-1`` crossing).  Above the dense limit
    without a structured radius, one Krylov eigenvalue decides first where that is cheap:
    there the largest eigenvalue in modulus sits near ``-1``, isolated in the plane from
    the slow modes that cluster just below ``+1``, so ARPACK asked for that one eigenvalue
    alone (:func:`_one_eigenvalue`) converges in a few restarts, where asking for six waits
    for the cluster to resolve.  If it has not converged within :data:`QUICK_MAXITER`
    restarts, or the eigenvalue found exceeds ``1 + RHO_TOL``, the full radius ``rho(s)``
    decides."""
    if op.dim > DENSE_MAX:
        structured = op.structured_radius(s)
        if structured is not None:
            return structured <= 1 + RHO_TOL
        lin = spla.LinearOperator((op.dim, op.dim), matvec=lambda v: op.matvec(v, s),
                                  dtype=np.float64)
        top = _one_eigenvalue(lin, op.dim, start=op.krylov_start, rate=s)
        if top is not None and top ** (1.0 / op.period_steps) <= 1 + RHO_TOL:
            return True
    return rho(s) <= 1 + RHO_TOL


def _sign_intervals(grid: list, signs: list, locate) -> tuple:
    """The stable intervals from the signs of ``f`` on a sorted grid (``True``: stable),
    ``locate(i)`` giving the edge between ``grid[i - 1]`` and ``grid[i]``."""
    intervals, start = [], (0.0 if signs[0] else None)
    for i in range(1, len(grid)):
        if signs[i] == signs[i - 1]:
            continue
        edge = locate(i)
        if signs[i]:
            start = edge
        else:
            intervals.append((start, edge))
            start = None
    if start is not None:
        intervals.append((start, float("inf")))
    return tuple((float(lo), float(hi)) for lo, hi in intervals)


def _brent_intervals(f, grid: list, signs: list, rtol: float, name: str) -> tuple:
    """The stable intervals ``{s : f(s) <= 0}`` from the signs of ``f`` on a sorted grid:
    each sign change located by Brent's method to ``rtol``."""
    def locate(i):
        a, b = grid[i - 1], grid[i]
        try:
            return scipy.optimize.brentq(f, a, b, rtol=rtol, xtol=1e-15 * a,
                                         maxiter=BRENT_MAXITER)
        except RuntimeError as exc:  # no convergence within BRENT_MAXITER
            raise StabilityUndecided(
                f"stable_set: could not locate the stability boundary of {name} "
                f"between rates {a:.6g} and {b:.6g} in {BRENT_MAXITER} evaluations") from exc

    return _sign_intervals(grid, signs, locate)


def _secant_intervals(f, grid: list, signs: list, rtol: float, name: str,
                      coarse: list | None = None) -> tuple:
    """:func:`_brent_intervals` for Krylov radii: each sign change located by
    :func:`_locate_edge`, which evaluates ``f`` on the unstable side of the edge, where it
    is cheap, instead of Brent's steps on the stable side, where it is not.  Each interval
    end is a rate verified stable, within ``rtol`` of a rate verified unstable, or within
    the precision appended to ``coarse`` where ``f`` became too costly
    (:class:`RadiusTooCostly`)."""
    def locate(i):
        # a second unstable rate beyond the unstable end, from the grid (already evaluated)
        far = i + 1 if signs[i - 1] else i - 2
        far = grid[far] if 0 <= far < len(grid) and not signs[far] else None
        return _locate_edge(f, grid[i - 1], grid[i], signs[i - 1], rtol, name, far, coarse)

    return _sign_intervals(grid, signs, locate)


#: :func:`_locate_edge` aims this fraction of the secant step short of its estimate, on
#: the unstable side
SECANT_SHORT = 0.25
#: ... and at least this fraction, once successive estimates agree (the secant converging)
SECANT_MIN_SHORT = 0.01


def _locate_edge(f, a: float, b: float, a_stable: bool, rtol: float, name: str,
                 far: float | None = None, coarse: list | None = None) -> float:
    """The stability edge between rates ``a < b`` (``f(s) = rho(A(s)) - 1 - RHO_TOL``
    changes sign there; ``a_stable`` says which end is stable), as a rate verified stable
    within ``rtol`` (relative) of one verified unstable.

    Above the dense limit a stable rate costs a Krylov solve that waits for the slow modes
    clustered just below ``+1`` to resolve (thousands of products: 4-13 s on a periodic
    ring+star of 8 agents), an unstable one a few restarts (the leaving eigenvalue is
    isolated: 0.05-0.5 s).  On the unstable side ``f`` is the leaving eigenvalue's modulus,
    smooth through the edge; on the stable side it is the cluster's top, flat, so Brent's
    interpolation with it lands on the expensive side step after step.  Here the secant
    through the two nearest unstable rates (``far``: a second one from the grid) estimates
    the edge, and the next rate is aimed short of the estimate, so that it is most likely
    unstable: by :data:`SECANT_SHORT` of the step at first, then by twice the difference
    of the last two estimates (at least :data:`SECANT_MIN_SHORT` of the step: fewer
    evaluations once the secant converges), and by :data:`SECANT_MIN_SHORT` alone where
    ``f`` is convex through the three nearest unstable rates (:func:`_convex_toward_edge`:
    the secant then lands short of the edge by itself; 10 evaluations instead of 13 on
    the kinked test function, 16 instead of 19 on the ATC edge of a periodic ring+star,
    where ``f`` halves per step far from the edge), and otherwise by at most twice the
    secant's distance to the root of the quadratic through those three rates
    (:func:`_quadratic_root`, an estimate of the secant's error: 10 evaluations instead of
    12 on a concave test function); once the step is below ``rtol`` the rate
    just past the estimate closes the bracket (stable, and cheap: so near the edge the
    leaving eigenvalue is the largest).  Bisection where the secant does not apply (its
    estimate outside the bracket, ``f`` not falling on the unstable side, or not by half in
    three steps); :class:`StabilityUndecided` after
    :data:`BRENT_MAXITER` evaluations.  Where an evaluation raises :class:`RadiusTooCostly`
    (and ``coarse`` is a list) the search stops: the stable end is returned and
    ``(edge, relative width of the bracket)`` appended to ``coarse``."""
    st, un = (a, b) if a_stable else (b, a)
    pts = [(un, f(un))] + ([(far, f(far))] if far is not None else [])
    prev = None  # the last secant estimate
    for _ in range(BRENT_MAXITER):
        if abs(un - st) <= rtol * min(st, un):
            return float(st)
        cand = None
        # the secant, while the unstable side approaches the edge (f down by half in 3)
        if len(pts) >= 2 and pts[0][1] < pts[1][1] and (len(pts) < 4
                                                        or pts[0][1] <= 0.5 * pts[3][1]):
            (u1, f1), (u2, f2) = pts[0], pts[1]
            est = u1 - f1 * (u1 - u2) / (f1 - f2)
            step = u1 - est
            if abs(step) <= rtol * min(st, un):  # close the bracket just past the estimate
                cand = est - np.sign(un - st) * 0.5 * rtol * min(st, un)
            else:
                # short by twice the last estimate's error (which bounds this one's where
                # the secant converges), at most SECANT_SHORT of the step
                frac = SECANT_SHORT if prev is None else min(
                    SECANT_SHORT, max(SECANT_MIN_SHORT, 2.0 * abs(est - prev) / abs(step)))
                quad = _quadratic_root(pts, est)
                if _convex_toward_edge(pts):  # the secant cannot cross the edge
                    frac = SECANT_MIN_SHORT
                elif quad is not None:  # short by twice the secant's error, as estimated
                    frac = min(frac, max(SECANT_MIN_SHORT, 2.0 * abs(est - quad) / abs(step)))
                cand = est + frac * step
            prev = est
        else:
            prev = None
        if cand is None or not min(st, un) < cand < max(st, un):
            cand = 0.5 * (st + un)
        try:
            value = f(cand)
        except RadiusTooCostly:
            if coarse is None:
                raise
            coarse.append((float(st), abs(un - st) / min(st, un)))
            return float(st)
        if value > 0:
            un = cand
            pts.insert(0, (cand, value))
        else:
            st = cand
    raise StabilityUndecided(
        f"stable_set: could not locate the stability boundary of {name} between rates "
        f"{a:.6g} and {b:.6g} in {BRENT_MAXITER} evaluations")


def _divided_differences(pts: list) -> tuple[float, float] | None:
    """``(d1, a)`` of the quadratic ``f0 + d1 (u - u0) + a (u - u0)(u - u1)`` through the
    three rates of ``pts`` nearest the edge: ``d1`` the first divided difference (the
    slope between the two nearest), ``a`` the second (half the curvature; ``>= 0``:
    convex in the rate); ``None`` with fewer than three distinct rates."""
    if len(pts) < 3 or len({u for u, _ in pts[:3]}) < 3:
        return None
    (u0, f0), (u1, f1), (u2, f2) = pts[:3]
    d1, d2 = (f1 - f0) / (u1 - u0), (f2 - f1) / (u2 - u1)
    return d1, (d2 - d1) / (u2 - u0)


def _quadratic_root(pts: list, est: float) -> float | None:
    """The root nearest ``est`` of the quadratic through the three rates of ``pts`` nearest
    the edge (``None``: fewer rates, or no real root): where ``f`` is smooth, its distance
    to the secant's estimate ``est`` estimates the secant's error."""
    dd = _divided_differences(pts)
    if dd is None:
        return None
    (u0, f0), (u1, _) = pts[:2]
    d1, a = dd
    b = d1 - a * (u1 - u0)  # f = f0 + b (u - u0) + a (u - u0)^2
    if a == 0:
        return u0 - f0 / b if b != 0 else None
    disc = b * b - 4 * a * f0
    if disc < 0:
        return None
    roots = [u0 + (-b + sign * math.sqrt(disc)) / (2 * a) for sign in (1.0, -1.0)]
    return min(roots, key=lambda r: abs(r - est))


def _convex_toward_edge(pts: list) -> bool:
    """Whether ``f`` on the unstable side, through its three rates nearest the edge
    (``pts``, nearest first), is convex in the rate (second divided difference ``>= 0``:
    on either side of the edge, its slope falls toward the edge): where it stays so up to
    the edge, the secant through the two nearest lands short of the edge, on the unstable
    side (the ATC edge of a periodic ring+star: 0.0054 per unit rate within 0.01 of the
    edge, 0.19 at 0.1)."""
    dd = _divided_differences(pts)
    return dd is not None and dd[1] >= 0


def _depends_on_rate(op: StepOperator, s: float) -> bool:
    """Whether ``A(s) != A(0)`` (on random vectors, to rounding)."""
    v = np.random.default_rng(1).standard_normal((op.dim, 2))
    a, b = op.matvec(v, s), op.matvec(v, 0.0)
    return bool(np.max(np.abs(a - b)) > 1e-12 * max(np.max(np.abs(b)), 1e-300))


def max_stable_lr(problem: KernelProblem, algorithm: str | Algorithm, profile=None,
                  rtol: float = 1e-9) -> tuple:
    """Exact largest stable (max per-agent) learning rate ``lr*``, and the method used.

    ``lr*`` is the upper end of the first interval of :func:`stable_set` (0: unstable at
    every rate; ``inf``: stable at every rate).  Where the set does not start at 0 (it
    can, e.g. heavy-ball momentum on a non-symmetric ``W``), rates below ``lr*`` need
    not be stable: :func:`stable_set` gives the whole set.
    """
    found = stable_set(problem, algorithm, profile, rtol)
    return found.lr_star, found.method


def stability(problem: KernelProblem, algorithm: str | Algorithm, lr) -> StabilityReport:
    """Full stability report for ``algorithm`` at learning rate(s) ``lr``.

    Any schedule: the spectral radius is that of :class:`StepOperator` (the augmented
    operator for schedules with memory, one round for P2PL, per step over a period for
    a periodic mixing sequence, the mean-state operator with ``E[W]`` for random gossip;
    ``operator`` says which).  ``stable_rates`` is the whole stable set
    (:func:`stable_set`, which examines ``lr`` itself); ``lr_star`` and ``margin`` refer
    to the interval holding ``lr`` (the nearest one when ``lr`` is unstable), and the
    sign of ``margin`` always agrees with ``stable`` (``-inf``: no stable rate).  The name
    is resolved once and one operator is built for the whole report.
    """
    algo = get_algorithm(algorithm)
    lrs = learning_rates(lr, problem.num_agents)
    profile = lrs / np.max(lrs)
    return operator_report(StepOperator(problem, algo, profile), lrs)


def operator_report(op: StepOperator, lrs: np.ndarray) -> StabilityReport:
    """:func:`stability` on a built operator (its problem, schedule and rate profile) at the
    per-agent rates ``lrs``: the stable set, the spectral radius at ``max(lrs)`` and the
    margin to the interval holding it.  Any object with :class:`StepOperator`'s interface
    serves (the low-rank coordinates' operator of :mod:`ntkdyn.lowrank.stability`)."""
    algo = op.algorithm
    s = float(np.max(lrs))
    bound = operator_bound(op)
    cache: dict = {}
    found = operator_stable_set(op, bound, extra=(s,), cache=cache)
    method = found.method
    try:
        rho = cache[s] if s in cache else op.spectral_radius(s, inside=found.contains(s))
        stable = bool(rho <= 1 + RHO_TOL)
        res = op.radius_residual  # of this call (s not in the cache) only
        if res is not None and s not in cache:
            method += (f"; spectral radius at lr a Ritz value of relative residual {res:.1e} "
                       "(its slow modes cluster at 1 closer than a search to 1e-10 resolves)")
    except RuntimeError as exc:  # no Krylov eigenvalue verified: the stable set decides
        rho, stable = float("nan"), found.contains(s)
        method += f"; spectral radius at lr not computed ({exc})"
    if not stable and found.contains(s) and rho <= 1 + ROUNDOFF_RHO:
        stable = True
        method += (f"; spectral radius 1 + {rho - 1:.1e} inside the stable set: the modes the "
                   "kernel barely sees (its round-off: slightly negative eigenvalues of a "
                   "float32 or rank-deficient kernel) grow by at most that factor a step, "
                   f"x{rho ** 10_000:.6g} over 10,000 steps; the verdict follows the stable set")
    margin, lr_star = found.margin(s)
    # at a boundary (within the root finder's tolerance) the radius decides: clamp the sign
    margin = max(margin, 0.0) if stable else min(margin, -0.0)
    return StabilityReport(
        algorithm=algo.name, lr=s, spectral_radius=rho, lr_star=lr_star,
        lr_bound=bound, stable=stable, margin=margin, method=method,
        operator=operator_words(op), stable_rates=found.intervals,
        stable_set=found.describe(),
        lr_min=None if np.all(lrs == s) else float(np.min(lrs)))


def operator_words(op: StepOperator) -> str:
    """How a report names the operator: ``"one step"`` for a static single-phase schedule,
    else the operator's own description (a period, a round, an augmented state)."""
    problem, algo = op.problem, op.algorithm
    words = op.describe() if problem.process is not None or \
        algo.init is not None or algo.records_per_step > 1 else "one step"
    if problem.process is not None and problem.process.random:
        words += ("; expected mixing matrix E[W]: stability of the mean state (the "
                  "mean trajectory converges), not of every sampled sequence")
    return words
