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
from ntkdyn.dynamics.stability import state_structure
from ntkdyn.dynamics.steady_state import DENSE_SOLVE_MAX, FixedPoint, _solve
from ntkdyn.graphs.sequences import resolve_mixing
from ntkdyn.lowrank.evolve import lowrank_inputs, lowrank_operators, prepare_features, record_state
from ntkdyn.lowrank.factor import LowRankFactor
from ntkdyn.lowrank.stability import FeatureProblem, FeatureStepOperator

__all__ = ["lowrank_fixed_point"]


def lowrank_fixed_point(factor: LowRankFactor, y_train, agent, mixing,
                        algorithm: str | Algorithm = "dgd", lr=0.1, *, f0_train=None,
                        y_test=None, f0_test=None) -> FixedPoint:
    """The steady state of ``algorithm`` at rate(s) ``lr`` on the rank-``r`` coordinates of
    ``factor`` (module docstring), and the centralised solution, as a
    :class:`~ntkdyn.dynamics.steady_state.FixedPoint` (per-agent losses, accuracies,
    distances and outputs; meaningful when the truncated dynamics are stable).

    ``mixing``: a static ``W`` or random gossip (the mean state's fixed point, ``E[W]``, as
    on the exact path); a periodic sequence is a ``ValueError`` naming ``mixing`` (the
    iteration ends on a periodic orbit).  The other arguments as
    :func:`ntkdyn.lowrank.predict_lowrank`.
    """
    algo = get_algorithm(algorithm)
    w, process = resolve_mixing(mixing, name="mixing")
    if process is not None and not process.random:
        raise ValueError("mixing: with a periodic mixing sequence the iteration ends on a "
                         "periodic orbit, not a fixed point; predict a long trajectory instead")
    inp = lowrank_inputs(factor, y_train, agent, w, lr, [0], f0_train, y_test, f0_test, None)
    (_, r), k, q = inp.phi.shape, inp.y.shape[1], inp.w.shape[0]
    prep = prepare_features(factor, inp, form="features", reference=False, record_outputs=True,
                            acc_rows=None, seed=0, what="this low-rank fixed point")
    # the centralised solution: weighted least squares on the global objective
    wts = np.repeat(1.0 / (q * inp.counts), inp.counts)[:, None]  # rows sorted by agent
    gram_c = prep.phi_s.T @ (prep.phi_s * wts)
    lin_c = prep.phi_s.T @ (prep.res * wts)
    try:
        beta_c = -scipy.linalg.solve(gram_c, lin_c, assume_a="pos")
    except (scipy.linalg.LinAlgError, ValueError):
        beta_c = -scipy.linalg.lstsq(gram_c, lin_c)[0]
    # the affine part c: one step from the zero state; the linear part B: the stability's
    # operator (restricted to the invariant subspace of a schedule with memory)
    treedef, blocks = state_structure(algo)
    zero = jax.tree.unflatten(treedef, [jnp.zeros((q, r, k))] * blocks)
    ops = lowrank_operators(prep.data, q, central=False)
    c = np.stack([np.asarray(v) for v in jax.tree.leaves(algo.step(zero, ops))])
    s = float(inp.lr_q.max())
    op = FeatureStepOperator(FeatureProblem(factor, agent, mixing), algo, inp.lr_q / s)
    dim = blocks * q * r
    rhs = c.reshape(dim, k)
    if dim <= DENSE_SOLVE_MAX:  # the identity, B, I - B and LAPACK's copy: 4 dim^2
        memory.ensure_fits(4 * 8 * dim * dim, f"this low-rank fixed point ({dim} unknowns, "
                           "solved densely)", "use a smaller rank")
        eye = np.eye(dim)
        u = _solve(None, eye - op.matvec(eye, s), rhs, dim)
    else:
        u = _solve(lambda v: v - op.matvec(v[:, None], s)[:, 0], None, rhs, dim)
    state = jax.tree.unflatten(treedef, list(u.reshape(blocks, q, r, k)))
    x = np.concatenate([np.asarray(algo.parameters(state)), beta_c[None]], axis=0)
    has_test = inp.yt is not None
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
        test_outputs=rec["test_outputs"][:q] if has_test else None)
