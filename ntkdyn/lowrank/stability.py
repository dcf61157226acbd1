r"""Stability on the low-rank coordinates: the exact ``lr*`` of the truncated operator.

Mathematics (``theory/low_rank.md`` section 6).  With ``Theta~ = Phi Phi^T`` (``Phi`` N x r
of full column rank, :class:`~ntkdyn.lowrank.factor.LowRankFactor`) the kernel-space step
``alpha <- A(s) alpha + c`` and the feature-space step ``beta <- B(s) beta + c'`` of
:mod:`ntkdyn.lowrank.evolve` are intertwined by ``M = I (x) Phi^T`` (``beta = M alpha``,
every state component): ``M A = B M``.  ``M`` is onto, so ``ker M`` is ``A``-invariant,
the spectrum of ``A`` is that of ``B`` together with that of ``A`` on ``ker M``; there
``Theta~ alpha_q = 0``, the gradient vanishes and ``A`` only mixes -- the directions the
kernel does not see, which the stability test of :mod:`ntkdyn.dynamics.stability` ignores.  So the
stable set of the truncated kernel-space dynamics is that of ``B``, an operator on
``Q r`` numbers per state component, with the local curvature of agent ``q`` given by the
``r x r`` Gram matrix ``G_q = Phi_q^T Phi_q`` (``lambda_max(Theta~_qq) = lambda_max(G_q)``).
The machinery of :mod:`ntkdyn.dynamics.stability` (the ``-1`` crossing theorems, the dense
radius, the Brent search) runs on ``B`` unchanged: :func:`lowrank_stability`.  Above the
dense limit the radius of DGD, GD, ATC and CTA with a symmetric ``W`` comes from a
symmetric positive definite operator with the same spectrum, by preconditioned LOBPCG
(:mod:`ntkdyn.lowrank.radius`), and ARPACK on ``B`` otherwise.

**Relation to the full operator.**  ``Theta - Theta~`` is PSD (the Nystrom residual and the
discarded eigen-directions), so ``Theta = Psi Psi^T`` with ``Psi = [Phi, Psi_rest]``, and
the feature operator of ``Theta`` restricted to ``Psi_rest``-coordinates equal to 0 is
``B``.  Where ``lr*`` is a generalised Rayleigh quotient (DGD with a symmetric ``W``;
ATC / CTA with a symmetric ``W >= 0``; GD; one rate for all agents:
``1/lr* = max_z z^T D H z / z^T g(W)^{-1} z``) the maximum over the larger space is at
least that over the subspace: **the truncated ``lr*`` is >= the full ``lr*``, an upper
bound on it** (equal at full rank).  The sufficient bounds use
``lambda_max(G_q) <= lambda_max(Theta_qq)`` and are likewise >= the full ones.  For other
schedules and mixings no ordering is proven: the value is the exact ``lr*`` of the
truncated dynamics.

**Mixing sequences.**  The intertwining ``M A = B M`` holds step by step with any mixing
matrix (``M`` acts on the feature index, ``W_t`` on the agent index), so it holds for a
product of steps: for a periodic sequence the one-period operator of the feature
coordinates is analysed, as on the exact path (``n = P / gcd(P, m)`` steps, per-step rate
``rho^(1/n)``); random gossip analyses ``E[W]`` (the mean state).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils.checks import agent_indices, learning_rates
from ntkdyn._utils.threads import one_blas_thread
from ntkdyn.algorithms import Algorithm, Operators, get_algorithm
from ntkdyn.dynamics.stability import (
    StabilityReport,
    StableSet,
    StepOperator,
    block_lambda_max,
    operator_bound,
    operator_report,
    operator_stable_set,
    perron_vector,
    state_structure,
    step_mixings,
)
from ntkdyn.graphs.sequences import resolve_mixing
from ntkdyn.lowrank.factor import LowRankFactor
from ntkdyn.lowrank.radius import FeatureStep, feature_radius, gram_eigh

__all__ = ["FeatureProblem", "FeatureStepOperator", "lowrank_stability", "lowrank_stable_set"]

EXACT = jax.lax.Precision.HIGHEST


class FeatureProblem:
    """What :mod:`ntkdyn.dynamics.stability` reads of a problem, for the feature-space operator:
    ``mixing`` (``E[W]`` for a sequence), ``process`` (None: static; else the periodic or
    random sequence), ``num_agents``, ``counts`` (``N_q``) and ``agent_block(q)`` (``G_q``,
    whose largest eigenvalue is ``lambda_max(Theta~_qq)``); ``factor`` and ``agent`` are
    kept, so that a verdict given ``problem=`` can check it is this factor's."""

    def __init__(self, factor: LowRankFactor, agent, mixing):
        phi = np.asarray(factor.phi, dtype=np.float64)
        agent = np.asarray(agent)
        if agent.shape != (phi.shape[0],):
            raise ValueError(f"agent: expected shape ({phi.shape[0]},) (one agent index per "
                             f"training sample), got {agent.shape}")
        self.mixing, self.process = resolve_mixing(mixing)
        self.num_agents = self.mixing.shape[0]
        self.agent, self.counts = agent_indices(agent, self.num_agents)
        agent = self.agent
        self.factor, self.rank = factor, phi.shape[1]
        self.grams = np.stack([phi[agent == q].T @ phi[agent == q]
                               for q in range(self.num_agents)])
        self._eigh, self._curvatures, self._rows = None, None, None

    @property
    def gram_form(self) -> bool:
        """Whether a step of the operator reads the Gram matrices ``G_q`` (``Q r^2``
        numbers) or the agents' feature rows ``Phi_q`` (``N r``): the rule of the
        prediction (:func:`ntkdyn.lowrank.evolve.use_gram` with ``"auto"``), the Gram form
        where ``Q r <= 2 N``."""
        from ntkdyn.lowrank.evolve import use_gram

        return use_gram("auto", int(self.agent.size), self.rank, self.num_agents)

    def agent_rows(self) -> np.ndarray:
        """``Phi_q`` of every agent, zero padded to ``(Q, max N_q, r)`` (built once): with
        them ``G_q x = Phi_q^T (Phi_q x)`` costs ``4 N_q r`` flops instead of ``2 r^2``."""
        if self._rows is None:
            phi = np.asarray(self.factor.phi, dtype=np.float64)
            rows = np.zeros((self.num_agents, int(self.counts.max()), self.rank))
            for q in range(self.num_agents):
                block = phi[self.agent == q]
                rows[q, :block.shape[0]] = block
            self._rows = rows
        return self._rows

    def agent_block(self, q: int) -> np.ndarray:
        return self.grams[q]

    def agent_eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lam, vecs)``: the eigendecomposition of every ``G_q`` (``(Q, r)`` ascending,
        ``(Q, r, r)``), computed once (one ``r x r`` ``eigh`` per agent)."""
        if self._eigh is None:
            self._eigh = gram_eigh(self.grams)
        return self._eigh

    def agent_curvatures(self) -> np.ndarray:
        """``lambda_max(G_q) / N_q`` for every agent (read by
        :func:`ntkdyn.dynamics.stability.agent_curvatures`), computed once (from
        :meth:`agent_eigh` if it has run, else the largest eigenvalues alone)."""
        if self._curvatures is None:
            if self._eigh is not None:
                top = self._eigh[0][:, -1]
            else:
                with one_blas_thread():
                    top = np.array([block_lambda_max(g) for g in self.grams])
            self._curvatures = top / self.counts
        return self._curvatures


def _gram_product(curvature, v, gram: bool):
    """``G_q v_q`` for every agent, ``v`` of shape ``(Q, r, C)``: from the Gram matrices
    (``gram``, ``curvature`` ``(Q, r, r)``) or as ``Phi_q^T (Phi_q v_q)`` from the zero
    padded rows (``curvature`` ``(Q, n, r)``)."""
    if gram:
        return jnp.einsum("qrs,qsc->qrc", curvature, v, precision=EXACT)
    pred = jnp.einsum("qnr,qrc->qnc", curvature, v, precision=EXACT)
    return jnp.einsum("qnr,qnc->qrc", curvature, pred, precision=EXACT)


@partial(jax.jit, static_argnames=("algorithm", "treedef", "project", "gram"))
def _feature_linear(x, s, curvature, w, profile, inv_n, pi, *, algorithm, treedef, project,
                    gram):
    """``B(s) x`` for stacked states ``(B, Q, r, C)``: one step without its affine part
    (``w`` a ``(Q, Q)`` matrix), or the ``n`` steps of one period of a periodic sequence
    (``w`` of shape ``(n, m, Q, Q)``: step ``i``'s ``j``-th mixing event is ``w[i, j]``).
    ``curvature``: the Gram matrices ``G_q`` ``(Q, r, r)`` (``gram``) or the agents' zero
    padded rows ``Phi_q`` ``(Q, n, r)``, ``G_q v = Phi_q^T (Phi_q v)``."""
    lr = s * profile[:, None, None]

    def grad(v):
        return _gram_product(curvature, v, gram) * inv_n[:, None, None]

    def ops(mix):
        return Operators(mix=lambda v, j=0: jnp.tensordot(mix(j), v, axes=1, precision=EXACT),
                         grad=grad, scale=lambda g: lr * g)

    state = jax.tree.unflatten(treedef, [x[b] for b in range(x.shape[0])])
    if project and algorithm.project is not None:
        state = algorithm.project(state, pi)
    if w.ndim == 2:
        state = algorithm.step(state, ops(lambda j: w))
    else:
        for i in range(w.shape[0]):
            state = algorithm.step(state, ops(lambda j, i=i: w[i, j]))
    return jnp.stack(jax.tree.leaves(state))


class FeatureStepOperator(StepOperator):
    """:class:`~ntkdyn.dynamics.stability.StepOperator` of the feature-space dynamics: the state is
    ``B`` blocks of ``Q x r`` (``dim = B Q r``); dense below ``DENSE_MAX``
    dimensions, above it :meth:`form_radius` where it applies and ARPACK otherwise (the
    inherited :meth:`spectral_radius`).  For a periodic
    mixing sequence it spans one period (``period_steps`` steps) and the radius is per
    step, as on the exact path.  A product reads the Gram matrices ``G_q`` or, where
    ``Q r > 2 N`` (:attr:`FeatureProblem.gram_form`, the prediction's rule), the agents'
    rows ``Phi_q``: measured on 100 agents of 14 samples at rank 200 (20,000 coordinates,
    a periodic sequence of two matrices) 1.0 ms a product instead of 8.5 ms (2.9 ms with
    ARPACK's own work per product)."""

    def __init__(self, problem: FeatureProblem, algorithm: Algorithm, profile=None):
        if not isinstance(algorithm, Algorithm):
            raise TypeError(f"algorithm: expected an ntkdyn.algorithms.Algorithm, got "
                            f"{algorithm!r}")
        self.algorithm = algorithm
        self.problem = problem
        self.q, self.r = problem.num_agents, problem.rank
        treedef, self.blocks = state_structure(algorithm)
        self.dim = self.blocks * self.q * self.r
        mixings, self.period_steps = step_mixings(problem, algorithm)
        self.profile = np.ones(self.q) if profile is None else np.asarray(profile, float)
        gram = problem.gram_form
        args = (jnp.asarray(problem.grams if gram else problem.agent_rows()),
                jnp.asarray(mixings),
                jnp.asarray(self.profile), jnp.asarray(1.0 / problem.counts),
                jnp.asarray(perron_vector(problem.mixing)))
        single = self.blocks == 1

        def apply(x, s):
            out = _feature_linear(x[None] if single else x, s, *args, algorithm=algorithm,
                                  treedef=treedef, project=True, gram=gram)
            return out[0] if single else out

        self._apply = apply
        self._curvature, self._gram, self._inv_n = args[0], gram, args[3]
        self._structure, self._local = None, None  # read by the inherited ARPACK fallback

    def form_step(self, form: str, mixing: np.ndarray | None = None):
        """The numpy feature operator of ``form``
        (:class:`~ntkdyn.lowrank.radius.FeatureStep`), read by the inherited
        :meth:`structured_radius` and its ARPACK fallback; ``mixing``: another matrix in
        place of the problem's (a similar step)."""
        p = self.problem
        w = p.mixing if mixing is None else mixing
        return FeatureStep(p.grams, w, p.counts, self.profile, form, eigh=p.agent_eigh,
                           rows=None if p.gram_form else p.agent_rows())

    def form_radius(self, step, s: float, curv: float) -> float | None:
        """``rho(B(s))`` from the extreme eigenvalues of a symmetric operator with the same
        spectrum, by preconditioned LOBPCG (:mod:`ntkdyn.lowrank.radius`), for DGD, GD,
        ATC and CTA with a static symmetric ``W`` (ATC/CTA: ``W >= 0`` or ``s curv <= 1``);
        ``None`` elsewhere (non-symmetric ``W``, ATC/CTA with an indefinite ``W`` above
        ``1 / curv``; augmented states and sequences never get here), where the inherited
        :meth:`spectral_radius` uses ARPACK on the numpy operator."""
        return feature_radius(step, s, curv)

    def local_curvature(self, x):
        """``D H x``: ``profile_q G_q x_q / N_q`` on ``(Q, r, C)``."""
        prof = jnp.asarray(self.profile)[:, None, None]
        return prof * self._inv_n[:, None, None] * _gram_product(
            self._curvature, jnp.asarray(x), self._gram)


def _feature_problem(factor: LowRankFactor, agent, mixing,
                     problem: FeatureProblem | None) -> FeatureProblem:
    if problem is None:
        return FeatureProblem(factor, agent, mixing)
    if not isinstance(problem, FeatureProblem) or problem.factor is not factor:
        raise ValueError(f"problem: expected the FeatureProblem of this factor (rank "
                         f"{factor.rank}), agent and mixing, got {problem!r}")
    w = resolve_mixing(mixing)[0]
    if w.shape != problem.mixing.shape or not np.array_equal(w, problem.mixing) \
            or not np.array_equal(np.asarray(agent), problem.agent):
        raise ValueError(f"problem: its mixing matrix ({problem.num_agents} agents) and "
                         "agent indices are not those given (mixing with "
                         f"{w.shape[0]} agents, agent): build it as "
                         "FeatureProblem(factor, agent, mixing)")
    return problem


def lowrank_stable_set(factor: LowRankFactor, agent, mixing,
                       algorithm: str | Algorithm = "dgd", profile=None,
                       rtol: float = 1e-9, *,
                       problem: FeatureProblem | None = None) -> StableSet:
    """The stable set of the truncated dynamics (module docstring): ``.lr_star`` is the
    exact ``lr*`` of the operator with kernel ``phi phi^T`` -- an upper bound on the full
    kernel's ``lr*`` for DGD, ATC and CTA with a symmetric or reversible ``W`` (``W >= 0``
    for ATC/CTA) and one rate for all agents.  ``problem``: the :class:`FeatureProblem` of these
    arguments, built once and shared by several calls (its Gram matrices, curvatures and
    eigendecompositions are computed once)."""
    algo = get_algorithm(algorithm)
    problem = _feature_problem(factor, agent, mixing, problem)
    q = problem.num_agents
    profile = np.ones(q) if profile is None else learning_rates(profile, q, "profile")
    profile = profile / np.max(profile)
    op = FeatureStepOperator(problem, algo, profile)
    return operator_stable_set(op, operator_bound(op), rtol)


def lowrank_stability(factor: LowRankFactor, agent, mixing,
                      algorithm: str | Algorithm = "dgd", lr=None, *,
                      problem: FeatureProblem | None = None) -> StabilityReport:
    """:func:`ntkdyn.dynamics.stability.stability` on the low-rank coordinates: the report of the
    truncated operator at rate(s) ``lr``; ``method`` and ``operator`` say "low-rank".
    ``problem``: as :func:`lowrank_stable_set`."""
    algo = get_algorithm(algorithm)
    problem = _feature_problem(factor, agent, mixing, problem)
    lrs = learning_rates(lr, problem.num_agents)
    report = operator_report(FeatureStepOperator(problem, algo, lrs / np.max(lrs)), lrs)
    return dataclasses.replace(
        report, method=f"low-rank (rank {problem.rank}), {report.method}",
        operator=f"{report.operator} on the rank-{problem.rank} coordinates (truncated "
                 "kernel; its lr* is an upper bound on the full kernel's for DGD/ATC/CTA)")
