"""Peer-to-peer algorithms as schedules of two linear primitives.

Every algorithm here is written once, in terms of an :class:`Operators`
bundle, and runs unchanged on any representation of the agents' state:

* the kernel-space state of the solver (``alpha``, see :mod:`ntkdyn.solver`),
* the parameters of real networks stacked on an agent axis (the validation
  harness).

The primitives are

* **combine**  ``x_q <- sum_p W_qp x_p``           (``ops.mix``)
* **adapt**    ``x_q <- x_q - eta_q grad L_q(x_q)`` (``ops.adapt``; built from
  ``ops.grad`` and the per-agent learning rate ``ops.lr``)

and the three classical recursions are the three ways of composing them
(Sayed 2014, "Adaptation, learning, and optimization over networks";
Nedić & Ozdaglar 2009; Yuan, Ling & Yin 2016):

============  ==============================================================
``dgd``       ``x+ = W x - eta grad(x)``            (both from the same x)
``atc``       ``x+ = W (x - eta grad(x))``          (adapt, then combine)
``cta``       ``x+ = (W x) - eta grad(W x)``        (combine, then adapt)
``gd``        ``x+ = x - eta grad(x)``              (no communication)
============  ==============================================================

With ``Q = 1`` (``W = [[1]]``) all of them are centralised gradient descent.
New algorithms are new schedules (a new :class:`Algorithm`), never a new
solver: the solver and the training harness only call ``step``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

State = Any  # an array or a pytree whose leaves carry a leading agent axis


@dataclass(frozen=True)
class Operators:
    """The primitives an algorithm may use, for one representation of the state.

    Attributes
    ----------
    mix:
        ``x -> (W (x) I) x``: every agent replaces its state by the
        ``W``-weighted average of its neighbours' states.
    grad:
        ``x -> [grad L_q(x_q)]_q``: each agent's local gradient at its own
        state (any affine function of ``x`` in the linearised model).
    scale:
        ``(g) -> [eta_q g_q]_q``: multiply each agent's block by its learning
        rate.
    """

    mix: Callable[[State], State]
    grad: Callable[[State], State]
    scale: Callable[[State], State]

    # --- algebra on states (arrays or pytrees) ---------------------------
    @staticmethod
    def add(a: State, b: State) -> State:
        return jax.tree.map(lambda u, v: u + v, a, b)

    @staticmethod
    def sub(a: State, b: State) -> State:
        return jax.tree.map(lambda u, v: u - v, a, b)

    def adapt(self, x: State) -> State:
        """Local gradient step ``x_q - eta_q grad L_q(x_q)``."""
        return self.sub(x, self.scale(self.grad(x)))


@dataclass(frozen=True)
class Algorithm:
    """A peer-to-peer algorithm: a schedule of ``mix`` and ``adapt``.

    Attributes
    ----------
    name:
        Short identifier (``"dgd"``, ``"atc"``, ...).
    step:
        ``(x, ops) -> x``, one iteration. It must be affine in ``x`` when
        ``ops.grad`` is (this is what makes the closed forms exist).
    description:
        The recursion in words, for reports.
    """

    name: str
    step: Callable[[State, Operators], State]
    description: str = ""

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Algorithm({self.name!r})"


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

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (DGD, ATC, CTA, GD)}


def get_algorithm(algorithm: str | Algorithm) -> Algorithm:
    """Return the :class:`Algorithm` named ``algorithm`` (or ``algorithm`` itself).

    Raises
    ------
    ValueError
        If the name is unknown; the message lists the valid names.
    """
    if isinstance(algorithm, Algorithm):
        return algorithm
    if isinstance(algorithm, str):
        key = algorithm.strip().lower()
        if key in ALGORITHMS:
            return ALGORITHMS[key]
    raise ValueError(
        f"algorithm: unknown algorithm {algorithm!r}; expected one of {sorted(ALGORITHMS)} "
        "or an ntkdyn.algorithms.Algorithm"
    )
