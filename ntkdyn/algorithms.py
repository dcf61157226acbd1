r"""Peer-to-peer algorithms as schedules of two linear primitives.

Every algorithm here is written once, in terms of an :class:`Operators`
bundle, and runs unchanged on any representation of the agents' state:

* the kernel-space state of the solver (``alpha``, see :mod:`ntkdyn.dynamics.solver`),
* the parameters of real networks stacked on an agent axis (the validation
  harness, :mod:`ntkdyn.training.trainer`).

The primitives are

* **combine**  ``x_q <- sum_p W_qp x_p``           (``ops.mix``)
* **adapt**    ``x_q <- x_q - eta_q grad L_q(x_q)`` (``ops.adapt``; built from
  ``ops.grad`` and the per-agent learning rate ``ops.scale``)

and the classical recursions are ways of composing them (Sayed 2014; Nedić &
Ozdaglar 2009; Yuan, Ling & Yin 2016; Shi, Ling, Wu & Yin 2015; Nedić, Olshevsky
& Shi 2017; Xu, Zhu, Soh & Xie 2015; Di Lorenzo & Scutari 2016; Pranav & Moura 2023).
Each name means what its source means (``theory/algorithms.md`` §1).  What one *step* means:

======================  ===========================================================
``dgd``                 ``x+ = W x - eta grad(x)``           (one combine, one gradient)
``atc``                 ``x+ = W (x - eta grad(x))``         (adapt, then combine)
``cta``                 ``x+ = (W x) - eta grad(W x)``       (combine, then adapt)
``gd``                  ``x+ = x - eta grad(x)``             (no communication)
``p2pl(L, C)``          one *round*: ``L`` adapt steps on the local shard, then ``C``
                        combine steps; recorded after each phase (``"local"``,
                        ``"consensus"``)
``gradient_tracking``   ATC form (ATC-DIGing, Nedić, Olshevsky, Shi & Uribe 2017; Aug-DGM,
                        Xu, Zhu, Soh & Xie 2015; also ``"atc_diging"``, ``"aug_dgm"``):
                        ``x+ = W (x - eta y)``, ``y+ = W (y + grad(x+) - grad(x))``,
                        ``y_0 = grad(x_0)``; state ``(x, y, grad(x))``; on a complete
                        graph it *is* centralised GD
``next``                NEXT / SONATA with a linear surrogate (Di Lorenzo & Scutari 2016):
                        ``x+ = W (x - eta y)``, ``y+ = W y + grad(x+) - grad(x)``,
                        ``y_0 = grad(x_0)``; state ``(x, y, grad(x))``
``diging``              DIGing: ``x+ = W x - eta y``, ``y+ = W y + grad(x+) - grad(x)``,
                        ``y_0 = grad(x_0)``; state ``(x, y, grad(x))``
``extra``               EXTRA: ``x+ = W x - eta grad(x) - z``, ``z+ = z + (x - W x)/2``,
                        ``z_0 = 0`` (= ``x+ = W~(2x - x-) - eta(grad x - grad x-)``,
                        ``W~ = (I + W)/2``); state ``(x, z)``
``momentum(beta)``      heavy ball per agent on DGD:
                        ``x+ = W x - eta grad(x) + beta (x - x-)``; state ``(x, x-)``
======================  ===========================================================

One step uses ``mixes_per_step`` communication events (``C`` for P2PL, 1
otherwise; gradient tracking sends ``x`` and ``y`` in the same event, so both
are combined with the same matrix).  With a time-varying or random mixing
sequence event ``e = k * mixes_per_step + j`` of step ``k`` uses ``W_e``:
``ops.mix(x, j)`` combines with the ``j``-th matrix of the current step.

Schedules with memory carry an *augmented state* (a tuple whose first entry is
the parameters): :attr:`Algorithm.init` builds it from the parameters,
:attr:`Algorithm.params` reads the parameters back.  A schedule with a
conserved quantity (gradient tracking, NEXT and DIGing keep ``pi^T (y - grad x)`` and EXTRA
``pi^T z`` fixed at 0, ``pi`` the left Perron vector of ``W``) names its
projection onto the invariant subspace in :attr:`Algorithm.project`; the
stability analysis uses it to leave out the eigenvalue-1 modes the initial
state never excites (``theory/algorithms.md``).

With ``Q = 1`` (``W = [[1]]``) every one of them is centralised gradient
descent (heavy-ball GD for ``momentum``; ``L`` GD steps per round for P2PL);
that is the centralised reference the solver and the harness carry.  New
algorithms are new schedules (a new :class:`Algorithm`), never a new solver:
the solver and the training harness only call ``init``, ``step`` (or its
``phases``) and ``params``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

State = Any  # an array or a pytree whose leaves carry a leading agent axis
UNROLL_MAX = 8  # phases with more repetitions than this run in a fori_loop


@dataclass(frozen=True)
class Operators:
    """The primitives an algorithm may use, for one representation of the state.

    Attributes
    ----------
    mix:
        ``(x, j=0) -> (W_j (x) I) x``: every agent replaces its state by the
        ``W``-weighted average of its neighbours' states, ``W_j`` being the
        ``j``-th mixing matrix of the current step (the only one, ``j = 0``, unless
        the algorithm has ``mixes_per_step > 1``).
    grad:
        ``x -> [grad L_q(x_q)]_q``: each agent's local gradient at its own
        state (any affine function of ``x`` in the linearised model).
    scale:
        ``(g) -> [eta_q g_q]_q``: multiply each agent's block by its learning
        rate.
    grad_at:
        ``(x, j) -> grad`` with the ``j``-th mini-batch draw of the current step
        (:mod:`ntkdyn.minibatch`; ``j < Algorithm.grads_per_step``); ``None``: ``grad``
        (full batch, or one draw per step).
    """

    mix: Callable[..., State]
    grad: Callable[[State], State]
    scale: Callable[[State], State]
    grad_at: Callable[[State, Any], State] | None = None

    # --- algebra on states (arrays or pytrees) ---------------------------
    @staticmethod
    def add(a: State, b: State) -> State:
        return jax.tree.map(lambda u, v: u + v, a, b)

    @staticmethod
    def sub(a: State, b: State) -> State:
        return jax.tree.map(lambda u, v: u - v, a, b)

    @staticmethod
    def times(c: float, a: State) -> State:
        """``c * a`` for a scalar ``c``."""
        return jax.tree.map(lambda u: c * u, a)

    @staticmethod
    def zeros_like(a: State) -> State:
        return jax.tree.map(jnp.zeros_like, a)

    def adapt(self, x: State, j=0) -> State:
        """Local gradient step ``x_q - eta_q grad L_q(x_q)`` (``j``: the step's ``j``-th
        mini-batch draw when the gradient is stochastic, see ``grad_at``)."""
        g = self.grad(x) if self.grad_at is None else self.grad_at(x, j)
        return self.sub(x, self.scale(g))


@dataclass(frozen=True)
class MixingFacts:
    """What a sufficient-bound rule may use about the mixing the stability analysis sees.

    Attributes
    ----------
    lambda_min:
        ``min_k lambda_min(W_k)`` over the analysed matrices (``W``; every matrix of a
        periodic sequence; ``E[W]`` for random gossip), or ``nan`` unless every one of
        them is symmetric and doubly stochastic, or the one matrix is reversible (then
        its symmetrised matrix's, the same spectrum).
    num_matrices:
        1 for a static ``W`` (or ``E[W]``), ``P`` for a periodic sequence of ``P``.
    num_agents:
        ``Q``.
    """

    lambda_min: float
    num_matrices: int
    num_agents: int

    @property
    def symmetric(self) -> bool:
        """Every analysed matrix is symmetric and doubly stochastic."""
        return not np.isnan(self.lambda_min)


#: ``(mixing, curv) -> rate``: a sufficient bound on the largest per-agent rate, ``nan``
#: where the rule does not apply; ``curv = max_q profile_q lambda_max(Theta_qq) / N_q``.
BoundRule = Callable[[MixingFacts, float], float]


@dataclass(frozen=True)
class MinusOneCrossing:
    r"""The closed-form stability boundary of a single-state schedule with symmetric ``W``.

    One step's linear part is similar to a symmetric matrix whose eigenvalues stay
    ``<= 1`` at every rate, so the boundary is where the smallest reaches ``-1``:
    ``1 / lr* = lambda_max(g(W) (x) I . D H)`` (``D H`` the local-gradient operator at unit
    rate, block-diagonal PSD in the coordinates ``Theta^{1/2} alpha``;
    ``theory/stability.md``).

    Attributes
    ----------
    factor:
        ``W -> g(W)``: ``(I + W)^{-1}`` for DGD (``W - s D H`` has ``-1`` iff
        ``(I + W) z = s D H z``), ``(I + W)^{-1} W`` for ATC and CTA (``W (I - s D H)``),
        ``I / 2`` for GD (``I - s D H``).  Schedules with memory (two states) have a
        quadratic eigenproblem whose Cayley transform has symmetric coefficients and a
        PSD middle one, so no eigenvalue crosses the unit circle except at ``+-1``
        (``theory/stability.md`` section 5a): ``2 W^2 (I + W)^{-2}`` for gradient tracking
        (``(mu I - W)^2 + s (mu - 1) W^2 D H``), ``2 W (I + W)^{-2}`` for NEXT,
        ``2 (I + W)^{-2}`` for DIGing and ``4 (5 I + 3 W)^{-1}`` for EXTRA.
    exact_for_indefinite_mixing:
        The similarity holds for every symmetric ``W`` (DGD, GD, gradient tracking,
        DIGing, EXTRA); otherwise only for ``W >= 0`` (ATC, CTA, NEXT: ``W^{1/2}`` must
        exist) and the crossing is verified.
    lambda_min_minus_one_unstable:
        ``lambda_min(W) = -1`` makes the schedule unstable at every rate (DGD: ``I + W``
        singular) rather than leaving the crossing undefined.
    equal_rates_only:
        The argument needs one rate for all agents (the tracking schedules scale the
        tracked gradient ``y``, whose recursion does not commute with per-agent rates):
        with per-agent rates the stable set is searched.  Gradient tracking on a ring of 4
        with rates ``1 : 0.3 : 0.6 : 0.2`` is stable up to 6.43 where the crossing is 4.00;
        DIGing's crossing was off by up to 3 %, in both directions.  EXTRA scales the
        gradient itself, ``D H`` stays symmetric, and its crossing is exact for any rates.
    symmetric_step:
        One step's linear part is itself symmetric in parameter space, for any rates
        (DGD: ``W (x) I - s (D (x) I) J^T J``, block-diagonal ``J^T J``), so its 2-norm
        is its spectral radius, ``<= 1`` up to the crossing.  A periodic sequence of such
        steps with symmetric ``W_i`` is then stable below the smallest of the matrices' own
        crossings (the norm of a product is at most the product of the norms;
        ``theory/stability.md`` section 2, periodic sequences):
        :func:`ntkdyn.dynamics.stability.operator_bound`.
    """

    factor: Callable[[np.ndarray], np.ndarray]
    exact_for_indefinite_mixing: bool = False
    lambda_min_minus_one_unstable: bool = False
    equal_rates_only: bool = False
    symmetric_step: bool = False


@dataclass(frozen=True)
class Algorithm:
    """A peer-to-peer algorithm: a schedule of ``mix`` and ``adapt``.

    Attributes
    ----------
    name:
        Short identifier (``"dgd"``, ``"atc"``, ``"p2pl"``, ...).
    step:
        ``(state, ops) -> state``, one iteration (one *round* for multi-phase
        schedules). It must be affine in the state when ``ops.grad`` is (this is
        what makes the closed forms exist).
    description:
        The recursion in words, for reports.
    init:
        ``(x, ops) -> state``: the augmented state from the parameters ``x``
        (default: the parameters themselves).
    params:
        ``state -> x``: the parameters in the state (default: the state itself).
    phases:
        For schedules recorded more than once per step: the phases whose
        composition is ``step``, with ``phase_names``; a record is taken after each.
    mixes_per_step:
        Communication events (mixing matrices) one step uses.
    grads_per_step:
        Local-gradient draws one step uses (mini-batch SGD, :mod:`ntkdyn.minibatch`):
        ``local_steps`` for P2PL (a fresh batch per local step), 1 otherwise.
    project:
        ``(state, pi) -> state``: projection onto the invariant subspace that holds
        the initial state (removes conserved quantities; ``pi`` is the left Perron
        vector of ``W``, leaves carry a leading agent axis and no centralised slot).
        Used by the stability analysis only; ``None``: nothing conserved.
    options:
        The schedule's parameters as ``((name, value), ...)`` (for metadata).
    sufficient_bound:
        :data:`BoundRule`: a sufficient bound on the stable rate from the mixing's smallest
        eigenvalue and the local curvature (``theory/algorithms.md`` §3); ``None``: no bound
        is known (a user's schedule, unless it supplies one).
    minus_one_crossing:
        :class:`MinusOneCrossing`: the exact boundary for a static symmetric ``W``;
        ``None``: the boundary is searched (Brent on ``rho(A(s)) - 1``).
    shares_spectrum_with:
        Name of a schedule whose one-step operator has the same spectrum at every rate
        (CTA: ``"atc"``, ``(I - s D H) W`` and ``W (I - s D H)`` being ``BA`` and ``AB``);
        ``""``: none.
    heavy_ball:
        ``beta`` when one step is heavy-ball momentum on DGD, ``[[A + beta I, -beta I],
        [I, 0]]`` with DGD's ``A(s)``: its eigenvalues are the roots of
        ``mu^2 - (lam + beta) mu + beta`` over DGD's eigenvalues ``lam``, so its spectral
        radius follows from DGD's two extreme eigenvalues; ``None``: not such a step.
    same_fixed_points_as:
        Name of a schedule with the same fixed points at every rate (heavy-ball momentum:
        its base, since ``x = x-`` there), whose smaller system
        :func:`ntkdyn.dynamics.steady_state.fixed_point` solves instead; ``""``: none.

    The facts above are the schedule's own: built-in schedules carry them, a schedule a
    user writes has none unless given (``dataclasses.replace`` keeps them, so a changed
    ``step`` must drop facts that no longer hold).
    """

    name: str
    step: Callable[[State, Operators], State]
    description: str = ""
    init: Callable[[State, Operators], State] | None = None
    params: Callable[[State], State] | None = None
    phases: tuple = ()
    phase_names: tuple = ()
    mixes_per_step: int = 1
    grads_per_step: int = 1
    project: Callable[[State, Any], State] | None = None
    options: tuple = ()
    sufficient_bound: BoundRule | None = None
    minus_one_crossing: MinusOneCrossing | None = None
    shares_spectrum_with: str = ""
    heavy_ball: float | None = None
    same_fixed_points_as: str = ""

    def initial_state(self, x: State, ops: Operators) -> State:
        return x if self.init is None else self.init(x, ops)

    def parameters(self, state: State) -> State:
        return state if self.params is None else self.params(state)

    @property
    def records_per_step(self) -> int:
        """Records taken per step: one per phase (1 for single-phase schedules)."""
        return max(1, len(self.phases))

    @property
    def phase_list(self) -> tuple:
        """The phases (``(step,)`` for single-phase schedules)."""
        return self.phases or (self.step,)

    @property
    def settings(self) -> dict:
        return dict(self.options)

    def label(self) -> str:
        """Name with options, e.g. ``"p2pl(local_steps=5, consensus_steps=2)"``."""
        if not self.options:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in self.options) + ")"

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Algorithm({self.label()!r})"


# ------------------------------------------------------------------------ classical
def _dgd(x: State, ops: Operators) -> State:
    return ops.sub(ops.mix(x), ops.scale(ops.grad(x)))


def _atc(x: State, ops: Operators) -> State:
    return ops.mix(ops.adapt(x))


def _cta(x: State, ops: Operators) -> State:
    return ops.adapt(ops.mix(x))


def _gd(x: State, ops: Operators) -> State:
    return ops.adapt(x)


# ------------------------------------------------------------------------ per-schedule facts
# Sufficient bounds (theory/algorithms.md §3): in the coordinates Theta^{1/2} alpha a local
# step I - eta D H is symmetric with eigenvalues in [1 - eta curv, 1] and a symmetric doubly
# stochastic W has them in [lambda_min, 1].
def _one_agent_bound(mixing: MixingFacts, curv: float) -> float:
    """``Q = 1``: the schedule is centralised GD, stable below ``2 / curv``."""
    return 2.0 / curv if mixing.num_agents == 1 else float("nan")


def _dgd_bound(mixing: MixingFacts, curv: float) -> float:
    """``W_k - eta D H`` is non-expansive below ``(1 + min_k lambda_min(W_k)) / curv``."""
    return (1.0 + mixing.lambda_min) / curv


def _combine_adapt_bound(mixing: MixingFacts, curv: float) -> float:
    """A product of non-expansive symmetric maps (``W_k`` and ``I - eta D H``, the latter
    for ``eta curv <= 2``) is non-expansive: ATC, CTA, P2PL below ``2 / curv``."""
    return 2.0 / curv if mixing.symmetric else _one_agent_bound(mixing, curv)


def _gd_bound(mixing: MixingFacts, curv: float) -> float:
    """No communication: each agent's GD is stable below ``2 / curv``."""
    return 2.0 / curv


@dataclass(frozen=True)
class _InverseShifted:
    """``W -> (c I + W)^{-1}``: the crossing factor of DGD (``c = 1``) and of heavy-ball
    momentum on DGD (``c = 1 + 2 beta``)."""

    c: float

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return np.linalg.inv(self.c * np.eye(w.shape[0]) + w)


_inverse_one_plus = _InverseShifted(1.0)


def _inverse_one_plus_times(w: np.ndarray) -> np.ndarray:
    return _inverse_one_plus(w) @ w


def _half_identity(w: np.ndarray) -> np.ndarray:
    return np.eye(w.shape[0]) / 2.0


def _spectral(w: np.ndarray, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``f(W) = V f(Lambda) V^T`` for a symmetric ``W`` (``lambda_min(W) > -1``)."""
    vals, vecs = np.linalg.eigh((w + w.T) / 2.0)
    return (vecs * f(vals)) @ vecs.T


def _tracking_factor(w: np.ndarray) -> np.ndarray:
    """Gradient tracking (ATC form): ``2 W^2 (I + W)^{-2}``."""
    return _spectral(w, lambda v: 2.0 * v**2 / (1.0 + v) ** 2)


def _next_factor(w: np.ndarray) -> np.ndarray:
    """NEXT: ``2 W (I + W)^{-2}``."""
    return _spectral(w, lambda v: 2.0 * v / (1.0 + v) ** 2)


def _diging_factor(w: np.ndarray) -> np.ndarray:
    """DIGing: ``2 (I + W)^{-2}``."""
    return _spectral(w, lambda v: 2.0 / (1.0 + v) ** 2)


def _extra_factor(w: np.ndarray) -> np.ndarray:
    """EXTRA with ``W~ = (I + W) / 2``: ``4 (5 I + 3 W)^{-1}``."""
    return _spectral(w, lambda v: 4.0 / (5.0 + 3.0 * v))


DGD = Algorithm(
    "dgd", _dgd, "x+ = W x - eta grad L(x)  (decentralised gradient descent)",
    sufficient_bound=_dgd_bound,
    minus_one_crossing=MinusOneCrossing(_inverse_one_plus, exact_for_indefinite_mixing=True,
                                        lambda_min_minus_one_unstable=True,
                                        symmetric_step=True))
_ATC_CROSSING = MinusOneCrossing(_inverse_one_plus_times)
ATC = Algorithm("atc", _atc, "x+ = W (x - eta grad L(x))  (adapt then combine, diffusion)",
                sufficient_bound=_combine_adapt_bound, minus_one_crossing=_ATC_CROSSING)
CTA = Algorithm("cta", _cta, "x+ = W x - eta grad L(W x)  (combine then adapt, diffusion)",
                sufficient_bound=_combine_adapt_bound, minus_one_crossing=_ATC_CROSSING,
                shares_spectrum_with="atc")
GD = Algorithm("gd", _gd, "x+ = x - eta grad L(x)  (local gradient descent, no communication)",
               sufficient_bound=_gd_bound,
               minus_one_crossing=MinusOneCrossing(_half_identity,
                                                   exact_for_indefinite_mixing=True))


def _repeat(count: int, body: Callable[[int, State], State], x: State) -> State:
    """``count`` applications of ``body(j, x)``: unrolled when short, else a fori_loop."""
    if count <= UNROLL_MAX:
        for j in range(count):
            x = body(j, x)
        return x
    return jax.lax.fori_loop(0, count, body, x)


# ------------------------------------------------------------------------ P2PL
@cache
def _p2pl(local_steps: int, consensus_steps: int) -> Algorithm:
    def local(x, ops):
        return _repeat(local_steps, lambda j, v: ops.adapt(v, j), x)

    def consensus(x, ops):
        return _repeat(consensus_steps, lambda j, v: ops.mix(v, j), x)

    def round_(x, ops):
        return consensus(local(x, ops), ops)

    return Algorithm(
        "p2pl", round_,
        f"one round: {local_steps} local gradient steps, then {consensus_steps} combine "
        "steps (P2PL, Pranav & Moura); recorded after each phase",
        phases=(local, consensus), phase_names=("local", "consensus"),
        mixes_per_step=consensus_steps, grads_per_step=local_steps,
        options=(("local_steps", local_steps), ("consensus_steps", consensus_steps)),
        sufficient_bound=_combine_adapt_bound)


def p2pl(local_steps: int = 5, consensus_steps: int = 1) -> Algorithm:
    """Peer-to-peer learning with local steps (Pranav & Moura, "Peer-to-Peer Deep Learning
    for Beyond-5G IoT").

    One *step* is a round: ``local_steps`` adapt steps on the local shard
    (``x <- x - eta grad L_q(x)``), then ``consensus_steps`` combine steps
    (``x <- W x``).  Records are taken after the local phase and after the
    consensus phase (``Trajectory.phase``), so the oscillation between the two is
    visible.  ``p2pl(1, 1)`` is ATC.  Equal arguments give the same object (one
    compilation).
    """
    for name, v in (("local_steps", local_steps), ("consensus_steps", consensus_steps)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    return _p2pl(int(local_steps), int(consensus_steps))


# ------------------------------------------------------------------------ gradient tracking
def _first(state):
    """The parameters of an augmented state ``(x, ...)``."""
    return state[0]


def _gt_init(x, ops):
    g = ops.grad(x)
    return (x, g, g)


def _gt_step(state, ops):
    x, y, g = state
    x_new = ops.mix(ops.sub(x, ops.scale(y)))
    g_new = ops.grad(x_new)
    y_new = ops.mix(ops.add(y, ops.sub(g_new, g)))
    return (x_new, y_new, g_new)


def _next_step(state, ops):
    x, y, g = state
    x_new = ops.mix(ops.sub(x, ops.scale(y)))
    g_new = ops.grad(x_new)
    y_new = ops.add(ops.mix(y), ops.sub(g_new, g))
    return (x_new, y_new, g_new)


def _diging_step(state, ops):
    x, y, g = state
    x_new = ops.sub(ops.mix(x), ops.scale(y))
    g_new = ops.grad(x_new)
    y_new = ops.add(ops.mix(y), ops.sub(g_new, g))
    return (x_new, y_new, g_new)


def _weighted_mean(leaf, pi):
    """``1 pi^T leaf`` over the leading agent axis (broadcast back)."""
    return jnp.tensordot(pi, leaf, axes=1)[None]


def _gt_project(state, pi):
    x, y, g = state
    y = jax.tree.map(lambda yy, gg: yy - _weighted_mean(yy - gg, pi), y, g)
    return (x, y, g)


GRADIENT_TRACKING = Algorithm(
    "gradient_tracking", _gt_step,
    "x+ = W (x - eta y), y+ = W (y + grad L(x+) - grad L(x)), y0 = grad L(x0)  (gradient "
    "tracking, adapt-then-combine form (ATC-DIGing / Aug-DGM): exact consensus at the "
    "centralised solution with a constant step)",
    init=_gt_init, params=_first, project=_gt_project, sufficient_bound=_one_agent_bound,
    minus_one_crossing=MinusOneCrossing(_tracking_factor, exact_for_indefinite_mixing=True,
                                        equal_rates_only=True))
NEXT = Algorithm(
    "next", _next_step,
    "x+ = W (x - eta y), y+ = W y + grad L(x+) - grad L(x), y0 = grad L(x0)  (NEXT / SONATA "
    "with a linear surrogate, Di Lorenzo & Scutari 2016: exact consensus at the centralised "
    "solution with a constant step)",
    init=_gt_init, params=_first, project=_gt_project, sufficient_bound=_one_agent_bound,
    minus_one_crossing=MinusOneCrossing(_next_factor, equal_rates_only=True))
DIGING = Algorithm(
    "diging", _diging_step,
    "x+ = W x - eta y, y+ = W y + grad L(x+) - grad L(x), y0 = grad L(x0)  (DIGing "
    "gradient tracking: exact consensus at the centralised solution with a constant step)",
    init=_gt_init, params=_first, project=_gt_project, sufficient_bound=_one_agent_bound,
    minus_one_crossing=MinusOneCrossing(_diging_factor, exact_for_indefinite_mixing=True,
                                        equal_rates_only=True))


# ------------------------------------------------------------------------ EXTRA
def _extra_init(x, ops):
    return (x, ops.zeros_like(x))


def _extra_step(state, ops):
    x, z = state
    wx = ops.mix(x)
    x_new = ops.sub(ops.sub(wx, ops.scale(ops.grad(x))), z)
    z_new = ops.add(z, ops.times(0.5, ops.sub(x, wx)))
    return (x_new, z_new)


def _extra_project(state, pi):
    x, z = state
    return (x, jax.tree.map(lambda zz: zz - _weighted_mean(zz, pi), z))


EXTRA = Algorithm(
    "extra", _extra_step,
    "x+ = W x - eta grad L(x) - z, z+ = z + (I - W) x / 2, z0 = 0  (EXTRA with "
    "W~ = (I + W)/2: exact consensus at the centralised solution with a constant step)",
    init=_extra_init, params=_first, project=_extra_project,
    sufficient_bound=_one_agent_bound,
    minus_one_crossing=MinusOneCrossing(_extra_factor, exact_for_indefinite_mixing=True))


# ------------------------------------------------------------------------ heavy ball
@cache
def _momentum(beta: float, base: str) -> Algorithm:
    def init(x, ops):
        return (x, x)

    def bound(mixing: MixingFacts, curv: float) -> float:
        """Heavy ball on DGD, one ``W``: each eigenvalue ``mu`` of ``W - eta D H`` gives a
        stable 2x2 block iff ``-1 - 2 beta <= mu <= 1``: below
        ``(1 + 2 beta + lambda_min(W)) / curv``."""
        if base == "dgd" and mixing.symmetric and mixing.num_matrices == 1:
            return (1.0 + 2.0 * beta + mixing.lambda_min) / curv
        return _one_agent_bound(mixing, curv)

    if base == "dgd":
        def step(state, ops):
            x, xp = state
            new = ops.add(_dgd(x, ops), ops.times(beta, ops.sub(x, xp)))
            return (new, x)
        what = "x+ = W x - eta grad L(x) + beta (x - x-)"
    else:  # atc
        def step(state, ops):
            x, xp = state
            new = ops.mix(ops.add(ops.adapt(x), ops.times(beta, ops.sub(x, xp))))
            return (new, x)
        what = "x+ = W (x - eta grad L(x) + beta (x - x-))"
    # On DGD the augmented step is [[A + beta I, -beta I], [I, 0]] with A = W - s D H: a
    # polynomial in A, so each eigenvalue lam of A gives the two roots of
    # mu^2 - (lam + beta) mu + beta = 0, both inside the unit disc iff
    # -1 - 2 beta < lam < 1 (Schur-Cohn).  A's eigenvalues are real, <= 1 and
    # non-increasing in s (symmetric W), so the stable set is [0, s_c) with s_c where
    # lam_min(A) reaches -(1 + 2 beta), i.e. where a root reaches -1:
    # ((1 + 2 beta) I + W) z = s D H z, the crossing with g(W) = ((1 + 2 beta) I + W)^{-1}
    # (theory/stability.md).  On ATC the blocks do not commute: no closed form.
    crossing = (MinusOneCrossing(_InverseShifted(1.0 + 2.0 * beta),
                                 exact_for_indefinite_mixing=True) if base == "dgd" else None)
    return Algorithm("momentum", step, f"{what}  (heavy-ball momentum per agent, beta={beta:g})",
                     init=init, params=_first,
                     options=(("beta", beta), ("base", base)), sufficient_bound=bound,
                     minus_one_crossing=crossing, heavy_ball=beta if base == "dgd" else None,
                     same_fixed_points_as=base)


def momentum(beta: float = 0.9, base: str = "dgd") -> Algorithm:
    """Heavy-ball momentum per agent (Polyak), on DGD (default) or ATC.

    ``base="dgd"``: ``x+ = W x - eta grad L(x) + beta (x - x-)``;
    ``base="atc"``: ``x+ = W (x - eta grad L(x) + beta (x - x-))``; ``x- = x`` at the
    start.  ``beta = 0`` is the base algorithm.
    """
    try:
        b = float(beta)
    except (TypeError, ValueError):
        b = float("nan")
    if not 0.0 <= b < 1.0:
        raise ValueError(f"beta: expected a momentum in [0, 1), got {beta!r}")
    if base not in ("dgd", "atc"):
        raise ValueError(f"base: expected 'dgd' or 'atc', got {base!r}")
    return _momentum(b, base)


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (DGD, ATC, CTA, GD)}
#: names that take options; ``get_algorithm`` gives their defaults
FACTORIES: dict[str, Callable[..., Algorithm]] = {
    "p2pl": p2pl, "gradient_tracking": lambda: GRADIENT_TRACKING, "next": lambda: NEXT,
    "diging": lambda: DIGING, "extra": lambda: EXTRA, "momentum": momentum}
#: every algorithm name, in the order the documentation lists them: the one list the
#: configuration schema, ``ntkdyn check`` and the CLI accept
NAMES: tuple[str, ...] = ("dgd", "atc", "cta", "gd", "p2pl", "gradient_tracking", "next",
                          "diging", "extra", "momentum")
#: other names of a schedule in the literature
ALIASES = {"gt": "gradient_tracking", "atc_diging": "gradient_tracking",
           "aug_dgm": "gradient_tracking"}


def names() -> list[str]:
    """Every algorithm name :func:`get_algorithm` accepts (aliases excluded), sorted."""
    return sorted(NAMES)


def get_algorithm(algorithm: str | Algorithm, **options) -> Algorithm:
    """Return the :class:`Algorithm` named ``algorithm`` (or ``algorithm`` itself).

    This is where a name becomes an :class:`Algorithm`: public entry points call it once
    and pass the object on.  Names with options give their defaults unless ``options``
    are given: ``"p2pl"`` is ``p2pl(5, 1)``, ``get_algorithm("p2pl", local_steps=3)`` is
    ``p2pl(3, 1)``, ``"momentum"`` is ``momentum(0.9)``.

    Raises
    ------
    ValueError
        If the name is unknown (the message lists the valid names), or ``options`` are
        given for an :class:`Algorithm` or a name without options.
    """
    if isinstance(algorithm, Algorithm) and not options:
        return algorithm
    if isinstance(algorithm, str):
        key = algorithm.strip().lower()
        key = ALIASES.get(key, key)
        if key in ALGORITHMS and not options:
            return ALGORITHMS[key]
        if key in FACTORIES:
            accepted = sorted(inspect.signature(FACTORIES[key]).parameters)
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise ValueError(f"algorithm: {key!r} takes the options {accepted}, got "
                                 f"{unknown}")
            return FACTORIES[key](**options)
        if key in ALGORITHMS:
            raise ValueError(f"algorithm: {key!r} takes no options, got {sorted(options)}")
    if isinstance(algorithm, Algorithm):
        raise ValueError(f"algorithm: options {sorted(options)} are for a name, got the "
                         f"built {algorithm!r}")
    raise ValueError(
        f"algorithm: unknown algorithm {algorithm!r}; expected one of {list(NAMES)} "
        "or an ntkdyn.algorithms.Algorithm"
    )
