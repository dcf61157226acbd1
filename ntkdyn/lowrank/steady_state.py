r"""The fixed point on the low-rank coordinates (squared loss; ``theory/low_rank.md``
section 6).

With ``Theta~ = Phi Phi^T`` the feature-space step of :mod:`ntkdyn.lowrank.evolve` is the
affine map ``x <- B x + c`` on the algorithm's state (``B`` blocks of ``Q x r x K``
feature coordinates ``beta_q``, outputs ``f_q = f_0 + Phi beta_q``).  When it is stable
(``rho(B) < 1`` on the invariant subspace, :mod:`ntkdyn.lowrank.stability`) it converges to
``x* = (I - B)^{-1} c``, solved as on the exact path (:func:`ntkdyn.dynamics.steady_state.
fixed_point`): densely up to ``DENSE_SOLVE_MAX`` unknowns, by GMRES with operator
applications above, each ``O(Q r^2 K)`` through the Gram matrices ``G_q = Phi_q^T Phi_q``.
The centralised solution minimises the global objective
``sum_q ||Phi_q beta + r_q||^2 / (2 Q N_q)``: ``G_c beta_c = -l_c`` with
``G_c = sum_q G_q / (Q N_q)`` and ``l_c = sum_q Phi_q^T r_q / (Q N_q)`` (``r x r``; ``Phi``
has full column rank, so ``G_c`` is positive definite).

**DGD with a symmetric (or reversible) ``W``: preconditioned conjugate gradients at any
size.**  There
``x* = W x* - eta D (G x* + l)`` reads ``M x* = -eta D l`` with
``M = (I - W) (x) I_r + blockdiag(eta_q / N_q G_q)``, symmetric, and positive definite when
the graph is connected (``(I - W)`` is PSD with kernel the consensus directions, on which
the gradient term is ``sum_q eta_q / N_q G_q``, positive definite).  CG on the ``K``
columns at once, each iteration ``O(Q r^2 K + Q^2 r K)``, needs no ``(Q r)^2`` matrix.  The
preconditioner is two-level (additive): the agents' diagonal blocks
``(1 - W_qq) I + eta_q / N_q G_q`` (one ``r x r`` Cholesky each) plus the exact solve on
the consensus directions ``Z = 1_Q (x) I_r / sqrt(Q)``, where ``Z^T M Z = C =
sum_q eta_q / N_q G_q / Q`` (``(I - W) 1 = 0``): ``P^{-1} = blockdiag^{-1} + Z C^{-1} Z^T``,
symmetric positive definite.  Without the coarse term the slow directions (consensus,
small curvature ``eta lambda_r / N_q``) cost thousands of iterations.  A reversible ``W``
(detailed balance with its Perron vector ``pi``, e.g. the ``"uniform"`` rule) is solved
in the coordinates ``Pi^{1/2} x``, where ``M`` becomes the same matrix with the symmetric
``S = Pi^{1/2} W Pi^{-1/2}`` and the consensus directions ``sqrt(pi) (x) I_r``
(:func:`_pcg`).

The ``beta`` coordinates are the exact path's ``u = Lambda^{1/2} V^T alpha`` coordinates of
``range(Theta~)``: the result is the fixed point of the kernel-space dynamics with the
truncated kernel, equal to :func:`~ntkdyn.dynamics.steady_state.fixed_point` with
``Phi Phi^T`` (tested to 1e-8), and at the kernel's rank to the exact fixed point.  It is
the fixed point of the *truncated* dynamics: a stable rate on the low-rank coordinates
can be unstable for the full kernel (section 6), and the discarded directions, which move
little over a finite horizon, all converge in the limit, so the truncation error of the
fixed point is not bounded by the trajectory's a-priori estimate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ntkdyn._utils import memory
from ntkdyn.algorithms import Algorithm, get_algorithm
from ntkdyn.dynamics.stability import operator_bound, operator_stable_set, state_structure
from ntkdyn.dynamics.steady_state import (
    DENSE_SOLVE_MAX,
    FixedPoint,
    consensual_always,
    fixed_point_schedule,
    marked,
    network_words,
    solve_system,
)
from ntkdyn.graphs.sequences import resolve_mixing
from ntkdyn.lowrank.evolve import lowrank_inputs, lowrank_operators, prepare_features, record_state
from ntkdyn.lowrank.factor import LowRankFactor
from ntkdyn.lowrank.pcg import TwoLevelPCG
from ntkdyn.lowrank.stability import FeatureProblem, FeatureStepOperator

__all__ = ["lowrank_fixed_point"]


METHODS = ("auto", "dense", "gmres", "cg")


def cg_applies(algo: Algorithm, mixing) -> bool:
    """Whether the steady state is an SPD system solved by :func:`_pcg` (DGD with a static
    symmetric or reversible ``W``; random gossip with such an ``E[W]``)."""
    from ntkdyn.algorithms import DGD
    from ntkdyn.graphs.topology import symmetrised

    w, process = resolve_mixing(mixing, name="mixing")
    return algo is DGD and (process is None or process.random) and \
        symmetrised(w) is not None


def solved_schedule(algo: Algorithm, w: np.ndarray, lrs: np.ndarray) -> Algorithm | None:
    """The schedule whose fixed-point system ``method="auto"`` solves for ``algo``:
    ``None`` where the fixed point is known without one (the centralised solution,
    :func:`~ntkdyn.dynamics.steady_state.consensual_always`), else ``algo``'s
    (:func:`~ntkdyn.dynamics.steady_state.fixed_point_schedule`: momentum's base)."""
    system = fixed_point_schedule(algo)
    return None if consensual_always(w, system, lrs) else system


def _pcg(problem: FeatureProblem, lr_q: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, int]:
    """``(x, iterations)``: ``M x = rhs`` (module docstring) for ``rhs`` of shape
    ``(Q, r, K)`` by two-level preconditioned conjugate gradients
    (:class:`~ntkdyn.lowrank.pcg.TwoLevelPCG`), every column at once.  A reversible
    ``W`` is solved in the similar coordinates ``y = (Pi^{1/2} (x) I) x``:
    ``Pi^{1/2} M Pi^{-1/2} = (I - S) (x) I + blockdiag(eta_q G_q / N_q)`` with the
    symmetric ``S = Pi^{1/2} W Pi^{-1/2}`` (:func:`ntkdyn.graphs.symmetrised`; the
    blocks commute with the per-agent scaling), positive definite as ``M`` is."""
    from ntkdyn.graphs.topology import symmetrised

    scale = (lr_q / problem.counts)[:, None, None]
    solver = TwoLevelPCG(symmetrised(problem.mixing), scale * problem.grams)
    root = solver.consensus[:, None, None]  # sqrt(pi); 1 / sqrt(Q) for a symmetric W
    y = solver.solve(root * np.asarray(rhs), "lowrank_fixed_point")
    return y / root, solver.iterations


def lowrank_fixed_point(factor: LowRankFactor, y_train, agent, mixing,
                        algorithm: str | Algorithm = "dgd", lr=0.1, *, f0_train=None,
                        y_test=None, f0_test=None, method: str = "auto",
                        info: dict | None = None, verify: bool = True) -> FixedPoint:
    """The steady state of ``algorithm`` at rate(s) ``lr`` on the rank-``r`` coordinates of
    ``factor`` (module docstring), and the centralised solution, as a
    :class:`~ntkdyn.dynamics.steady_state.FixedPoint` (per-agent losses, accuracies,
    distances and outputs; meaningful when the truncated dynamics are stable).

    ``mixing``: a static ``W`` or random gossip (the mean state's fixed point, ``E[W]``, as
    on the exact path); a periodic sequence is a ``ValueError`` naming ``mixing`` (the
    iteration ends on a periodic orbit).  ``method``: ``"dense"`` (LU of ``I - B``),
    ``"gmres"`` (operator applications), ``"cg"`` (DGD with a symmetric or reversible ``W``,
    :func:`cg_applies`); ``"auto"``: conjugate gradients where they apply, else dense up
    to ``DENSE_SOLVE_MAX`` unknowns and GMRES above; and no system at all where the fixed
    point is known: ``"consensual"`` for gradient tracking, NEXT, DIGing (and EXTRA with
    one rate) on a doubly stochastic ``W``, the centralised solution at every agent
    (:func:`~ntkdyn.dynamics.steady_state.consensual_always`), and heavy-ball momentum
    solves its base's system (CG for momentum on DGD with a symmetric ``W``).  ``info``: a
    dict that receives the method used, the unknowns per column and, for CG, the
    iterations.  ``verify`` (default): also decide whether the truncated dynamics
    converge at ``lr`` (the stable set of the rank-``r`` operator, as
    :func:`~ntkdyn.lowrank.stability.lowrank_stable_set` finds it, at this rate profile):
    ``FixedPoint.stable`` and ``stable_set`` say it, and an unstable rate gets a
    ``UserWarning`` (its affine iteration still has this fixed point, which it never
    reaches), as :func:`ntkdyn.fixed_point`; ``verify=False`` skips that search
    (``stable`` is ``None``; ``ntkdyn check`` solves only inside the stable set it found).
    The other arguments as :func:`ntkdyn.lowrank.predict_lowrank`.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    algo = get_algorithm(algorithm)
    if method == "cg" and not cg_applies(algo, mixing):
        raise ValueError("method: 'cg' solves DGD with a symmetric or reversible mixing "
                         "matrix (an SPD "
                         f"system); got algorithm {algo.name!r}: use 'dense' or 'gmres'")
    w, process = resolve_mixing(mixing, name="mixing")
    if process is not None and not process.random:
        raise ValueError("mixing: with a periodic mixing sequence the iteration ends on a "
                         "periodic orbit, not a fixed point; predict a long trajectory instead")
    inp = lowrank_inputs(factor, y_train, agent, w, lr, [0], f0_train, y_test, f0_test, None)
    prep = prepare_features(factor, inp, form="features", reference=False, record_outputs=True,
                            acc_rows=None, seed=0, what="this low-rank fixed point")
    # the centralised solution: weighted least squares on the global objective, whose
    # quadratic form (rows weighted 1 / (Q N_q)) the records already hold
    gram_c, lin_c = (np.asarray(prep.data["obj"][key]) for key in ("gram", "lin"))
    try:
        beta_c = -scipy.linalg.solve(gram_c, lin_c, assume_a="pos")
    except (scipy.linalg.LinAlgError, ValueError):
        beta_c = -scipy.linalg.lstsq(gram_c, lin_c)[0]
    system = solved_schedule(algo, inp.w, inp.lr_q) if method == "auto" else algo
    problem = FeatureProblem(factor, agent, mixing) if verify or system is not None else None
    if system is None:
        # consensus at the centralised solution (theory/fixed_point.md section 4a)
        beta = np.broadcast_to(beta_c, (inp.w.shape[0],) + beta_c.shape)
        if info is not None:
            info.update(method="consensual", unknowns=0)
    else:
        beta = _agents_fixed_point(problem, system, inp, prep, method, info)
    fp = _as_fixed_point(np.concatenate([beta, beta_c[None]], axis=0), algo, inp, prep)
    if not verify:
        return fp
    top = float(np.max(inp.lr_q))
    op = FeatureStepOperator(problem, algo, inp.lr_q / top)
    return marked(fp, operator_stable_set(op, operator_bound(op), extra=(top,)))


def _agents_fixed_point(problem: FeatureProblem, algo: Algorithm, inp, prep, method: str,
                        info: dict | None) -> np.ndarray:
    """The agents' parameters ``beta`` ``(Q, r, K)`` at the fixed point ``x* = B x* + c``:
    ``c`` one step from the zero state, ``B`` the stability's operator (restricted to the
    invariant subspace of a schedule with memory); solved by ``method``."""
    (_, r), k, q = inp.phi.shape, inp.y.shape[1], inp.w.shape[0]
    treedef, blocks = state_structure(algo)
    zero = jax.tree.unflatten(treedef, [jnp.zeros((q, r, k))] * blocks)
    ops = lowrank_operators(prep.data, q, central=False)
    c = np.stack([np.asarray(v) for v in jax.tree.leaves(algo.step(zero, ops))])
    dim = blocks * q * r
    rhs = c.reshape(dim, k)
    if method == "auto":
        mixing = problem.mixing if problem.process is None else problem.process
        method = ("cg" if cg_applies(algo, mixing) else
                  "dense" if dim <= DENSE_SOLVE_MAX else "gmres")
    if info is not None:
        info.update(method=method, unknowns=dim)
    if method == "cg":
        u, iterations = _pcg(problem, inp.lr_q, c[0])
        u = u.reshape(dim, k)
        if info is not None:
            info["iterations"] = iterations
    else:
        s = float(inp.lr_q.max())
        op = FeatureStepOperator(problem, algo, inp.lr_q / s)
        if method == "dense":  # the identity, B, I - B and LAPACK's copy: 4 dim^2
            memory.ensure_fits(4 * 8 * dim * dim, f"this low-rank fixed point ({dim} "
                               "unknowns, solved densely)", "use a smaller rank")
            eye = np.eye(dim)
            u = solve_system(None, eye - op.matvec(eye, s), rhs, dim)
        else:
            u = solve_system(lambda v: v - op.matvec(v[:, None], s)[:, 0], None, rhs, dim)
    state = jax.tree.unflatten(treedef, list(u.reshape(blocks, q, r, k)))
    return np.asarray(algo.parameters(state))


def _as_fixed_point(x: np.ndarray, algo: Algorithm, inp, prep) -> FixedPoint:
    """Record the state ``x`` (the agents, then the centralised solution) as a
    :class:`~ntkdyn.dynamics.steady_state.FixedPoint`."""
    q, has_test = inp.w.shape[0], inp.yt is not None
    rec = {key: np.asarray(v) for key, v in record_state(
        jnp.asarray(x), prep.data, q_count=q, central=True, has_test=has_test,
        record_outputs=True).items()}
    cons, cen = rec["consensus_dist"], rec["central_dist"]
    inverse = np.argsort(prep.order)
    return FixedPoint(
        algorithm=algo.name, lr=inp.lr_q,
        train_loss=rec["train_loss"][:q], train_acc=rec["train_acc"][:q],
        param_dist=rec["param_dist"][:q], consensus_dist=cons, central_dist=cen,
        consensus_gap=float(np.sqrt(np.mean(cons ** 2))),
        central_gap=float(np.sqrt(np.mean(cen ** 2))),
        central_train_loss=float(rec["train_loss"][q]),
        central_param_dist=float(rec["param_dist"][q]),
        test_loss=rec["test_loss"][:q] if has_test else None,
        test_acc=rec["test_acc"][:q] if has_test else None,
        central_test_loss=float(rec["test_loss"][q]) if has_test else None,
        train_outputs=rec["train_outputs"][:q][:, inverse],
        test_outputs=rec["test_outputs"][:q] if has_test else None,
        network=network_words(inp.f0, inp.ft))
