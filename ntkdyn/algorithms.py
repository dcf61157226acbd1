r"""Peer-to-peer algorithms as schedules of two linear primitives.

Every algorithm here is written once, in terms of an :class:`Operators`
bundle, and runs unchanged on any representation of the agents' state:

* the kernel-space state of the solver (``alpha``, see :mod:`ntkdyn.solver`),
* the parameters of real networks stacked on an agent axis (the validation
  harness, :mod:`ntkdyn.train`).

The primitives are

* **combine**  ``x_q <- sum_p W_qp x_p``           (``ops.mix``)
* **adapt**    ``x_q <- x_q - eta_q grad L_q(x_q)`` (``ops.adapt``; built from
  ``ops.grad`` and the per-agent learning rate ``ops.scale``)

and the classical recursions are ways of composing them (Sayed 2014; Nedić &
Ozdaglar 2009; Yuan, Ling & Yin 2016; Shi, Ling, Wu & Yin 2015; Nedić, Olshevsky
& Shi 2017; Di Lorenzo & Scutari 2016; Pranav & Moura 2023).  What one *step* means:

======================  ===========================================================
``dgd``                 ``x+ = W x - eta grad(x)``           (one combine, one gradient)
``atc``                 ``x+ = W (x - eta grad(x))``         (adapt, then combine)
``cta``                 ``x+ = (W x) - eta grad(W x)``       (combine, then adapt)
``gd``                  ``x+ = x - eta grad(x)``             (no communication)
``p2pl(L, C)``          one *round*: ``L`` adapt steps on the local shard, then ``C``
                        combine steps; recorded after each phase (``"local"``,
                        ``"consensus"``)
``gradient_tracking``   ATC form (NEXT / ATC-DIGing): ``x+ = W (x - eta y)``,
                        ``y+ = W (y + grad(x+) - grad(x))``, ``y_0 = grad(x_0)``;
                        state ``(x, y, grad(x))``; on a complete graph it *is*
                        centralised GD
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
conserved quantity (gradient tracking and DIGing keep ``pi^T (y - grad x)`` and EXTRA
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

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp

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
    """

    mix: Callable[..., State]
    grad: Callable[[State], State]
    scale: Callable[[State], State]

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

    def adapt(self, x: State) -> State:
        """Local gradient step ``x_q - eta_q grad L_q(x_q)``."""
        return self.sub(x, self.scale(self.grad(x)))


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
    project:
        ``(state, pi) -> state``: projection onto the invariant subspace that holds
        the initial state (removes conserved quantities; ``pi`` is the left Perron
        vector of ``W``, leaves carry a leading agent axis and no centralised slot).
        Used by the stability analysis only; ``None``: nothing conserved.
    options:
        The schedule's parameters as ``((name, value), ...)`` (for metadata).
    """

    name: str
    step: Callable[[State, Operators], State]
    description: str = ""
    init: Callable[[State, Operators], State] | None = None
    params: Callable[[State], State] | None = None
    phases: tuple = ()
    phase_names: tuple = ()
    mixes_per_step: int = 1
    project: Callable[[State, Any], State] | None = None
    options: tuple = ()

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


DGD = Algorithm("dgd", _dgd, "x+ = W x - eta grad L(x)  (decentralised gradient descent)")
ATC = Algorithm("atc", _atc, "x+ = W (x - eta grad L(x))  (adapt then combine, diffusion)")
CTA = Algorithm("cta", _cta, "x+ = W x - eta grad L(W x)  (combine then adapt, diffusion)")
GD = Algorithm("gd", _gd, "x+ = x - eta grad L(x)  (local gradient descent, no communication)")


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
        return _repeat(local_steps, lambda j, v: ops.adapt(v), x)

    def consensus(x, ops):
        return _repeat(consensus_steps, lambda j, v: ops.mix(v, j), x)

    def round_(x, ops):
        return consensus(local(x, ops), ops)

    return Algorithm(
        "p2pl", round_,
        f"one round: {local_steps} local gradient steps, then {consensus_steps} combine "
        "steps (P2PL, Pranav & Moura); recorded after each phase",
        phases=(local, consensus), phase_names=("local", "consensus"),
        mixes_per_step=consensus_steps,
        options=(("local_steps", local_steps), ("consensus_steps", consensus_steps)))


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
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    return _p2pl(int(local_steps), int(consensus_steps))


# ------------------------------------------------------------------------ gradient tracking
def _gt_init(x, ops):
    g = ops.grad(x)
    return (x, g, g)


def _gt_step(state, ops):
    x, y, g = state
    x_new = ops.mix(ops.sub(x, ops.scale(y)))
    g_new = ops.grad(x_new)
    y_new = ops.mix(ops.add(y, ops.sub(g_new, g)))
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
    "tracking, adapt-then-combine form (NEXT / ATC-DIGing): exact consensus at the "
    "centralised solution with a constant step)",
    init=_gt_init, params=lambda s: s[0], project=_gt_project)
DIGING = Algorithm(
    "diging", _diging_step,
    "x+ = W x - eta y, y+ = W y + grad L(x+) - grad L(x), y0 = grad L(x0)  (DIGing "
    "gradient tracking: exact consensus at the centralised solution with a constant step)",
    init=_gt_init, params=lambda s: s[0], project=_gt_project)


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
    init=_extra_init, params=lambda s: s[0], project=_extra_project)


# ------------------------------------------------------------------------ heavy ball
@cache
def _momentum(beta: float, base: str) -> Algorithm:
    def init(x, ops):
        return (x, x)

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
    return Algorithm("momentum", step, f"{what}  (heavy-ball momentum per agent, beta={beta:g})",
                     init=init, params=lambda s: s[0],
                     options=(("beta", beta), ("base", base)))


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
FACTORIES: dict[str, Callable[[], Algorithm]] = {
    "p2pl": p2pl, "gradient_tracking": lambda: GRADIENT_TRACKING, "diging": lambda: DIGING,
    "extra": lambda: EXTRA, "momentum": momentum}
ALIASES = {"gt": "gradient_tracking", "next": "gradient_tracking"}


def names() -> list[str]:
    """Every algorithm name :func:`get_algorithm` accepts (aliases excluded)."""
    return sorted(set(ALGORITHMS) | set(FACTORIES))


def get_algorithm(algorithm: str | Algorithm) -> Algorithm:
    """Return the :class:`Algorithm` named ``algorithm`` (or ``algorithm`` itself).

    Names with options give their defaults: ``"p2pl"`` is ``p2pl(5, 1)``,
    ``"momentum"`` is ``momentum(0.9)``; build others with :func:`p2pl`,
    :func:`momentum`.

    Raises
    ------
    ValueError
        If the name is unknown; the message lists the valid names.
    """
    if isinstance(algorithm, Algorithm):
        return algorithm
    if isinstance(algorithm, str):
        key = algorithm.strip().lower()
        key = ALIASES.get(key, key)
        if key in ALGORITHMS:
            return ALGORITHMS[key]
        if key in FACTORIES:
            return FACTORIES[key]()
    raise ValueError(
        f"algorithm: unknown algorithm {algorithm!r}; expected one of {names()} "
        "or an ntkdyn.algorithms.Algorithm"
    )
