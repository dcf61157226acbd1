r"""Elementwise activations and their Gaussian dual kernels.

For an activation :math:`\phi` and a centred Gaussian pair

.. math::  (u, v) \sim \mathcal N\!\left(0, \begin{pmatrix} k_{11} & k_{12} \\
           k_{12} & k_{22} \end{pmatrix}\right)

the *dual kernels* are the two expectations that drive the infinite-width
NNGP / NTK recursions (:mod:`ntkdyn.kernels.analytic`):

.. math::  \hat\phi(k_{11}, k_{12}, k_{22}) = E[\phi(u)\phi(v)], \qquad
           \hat\phi'(k_{11}, k_{12}, k_{22}) = E[\phi'(u)\phi'(v)].

Closed forms (formulas in the docstrings of ``_ABReluDual``, ``_erf_dual``,
``_gelu_dual``, ``_identity_dual``): the arc-cosine kernels for
``a min(x, 0) + b max(x, 0)`` (Cho & Saul 2009; ``relu`` = (0, 1),
``leaky_relu`` = (slope, 1), ``abs`` = (-1, 1)); ``erf`` (Williams 1997);
exact ``gelu`` = ``x Phi(x)`` (Tsuchida et al. 2020, as in neural-tangents'
``stax.Gelu``); ``identity``.

Every other activation (``tanh``, ``softplus``, ``sigmoid``, :func:`custom`)
uses a 2-D product rule with 1-D standard-normal nodes ``z_i``, weights
``w_i`` (summing to 1):

.. math::  E[g(u) h(v)] \approx \sum_{i,j} w_i w_j\, g(\sqrt{k_{11}} z_i)\,
           h\big(\sqrt{k_{22}}(\rho z_i + \sqrt{1 - \rho^2} z_j)\big),
           \quad \rho = k_{12}/\sqrt{k_{11}k_{22}} \in [-1, 1] \text{ (clipped)}.

1-D rules (``rule=``, see :func:`quadrature_rule`): ``"trapezoid"`` (default;
``n`` equispaced nodes on ``[-T, T]``, error ``O(exp(-2 pi d/h) +
exp(-T^2/2))`` for integrands analytic in the strip ``|Im z| < d``: Trefethen
& Weideman 2014) and ``"hermite"`` (Gauss--Hermite, ``hermegauss``: exact for
polynomials, but its nodes spread to ``|z| ~ 2 sqrt(n)`` where the weight is
negligible, so it resolves saturating activations at large variance poorly).
Measured at the default ``n = 64``: max over variances in [0.05, v] and all
correlations of ``max|error| / max|value|`` of either dual, against 300-node
Gauss--Hermite:

=========  =============================  =====================================
variance   trapezoid (default)            hermite
=========  =============================  =====================================
v = 2      <= 2e-9 (all)                  2e-5 tanh, 2e-7 erf, <= 1e-11 others
v = 3      2e-9 tanh, <= 2e-9 others      2e-4 tanh, 2e-5 erf, 2e-8 gelu
v = 5      4e-7 tanh, <= 2e-9 others      2e-3 tanh, 7e-4 erf, 1e-5 gelu
v = 10     7e-5 tanh, 4e-6 erf            2e-2 tanh, erf; 2e-3 gelu
=========  =============================  =====================================

(``erf``/``gelu``/``identity`` use closed forms; they are listed as test
integrands.) On neural-tangents' golden kernels (depths 1-4, inputs with
``|x|^2/d <= 1.5``) ``tanh`` is within 6e-9 with the trapezoid rule and 4e-4
with Gauss--Hermite. Kinked functions (ReLU-like) converge only algebraically
with either rule (~1e-3 at n = 64), hence their closed forms. Derivatives come
from :func:`jax.jvp` of ``fn`` with a tangent of ones (exact for elementwise
``fn``). Elements are processed in chunks of about 32 MiB.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf as _erf
from jax.scipy.special import ndtr

__all__ = [
    "Activation",
    "ACTIVATION_NAMES",
    "custom",
    "dual",
    "get_activation",
    "quadrature_rule",
]

ArrayFn = Callable[[jax.Array], jax.Array]
DualFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

DEFAULT_DEGREE = 64
DEFAULT_LEAKY_SLOPE = 0.01
DEFAULT_RULE = "trapezoid"
QUADRATURE_RULES = ("trapezoid", "hermite")
_CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Activation:
    """An elementwise activation and, when known, its closed-form dual.

    Attributes
    ----------
    name : str
        Registry name (``"relu"``, ``"tanh"``, ...) or the user's name for a
        :func:`custom` activation.
    fn : callable
        Elementwise ``jnp`` function ``x -> phi(x)``.
    dual : callable or None
        ``(k11, k12, k22) -> (E[phi(u) phi(v)], E[phi'(u) phi'(v)])`` in closed
        form; ``None`` means 2-D quadrature (``degree`` nodes per dimension,
        1-D rule ``rule``).
    degree : int
        Quadrature nodes per dimension used when ``dual`` is ``None``.
    rule : str
        ``"trapezoid"`` or ``"hermite"`` (see the module docstring).
    params : tuple of (str, float)
        Shape parameters it was built with (e.g. ``(("slope", 0.1),)``).

    Instances are hashable and compare by value for registry activations, so
    they can be static arguments of :func:`jax.jit`.
    """

    name: str
    fn: ArrayFn
    dual: DualFn | None = None
    degree: int = DEFAULT_DEGREE
    rule: str = DEFAULT_RULE
    params: tuple[tuple[str, float], ...] = ()

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x)

    def value_and_derivative(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Return ``(phi(x), phi'(x))`` elementwise, by forward-mode autodiff."""
        x = jnp.asarray(x)
        return jax.jvp(self.fn, (x,), (jnp.ones_like(x),))


# Elementwise functions are module level or value-comparable, so that
# Activation instances built twice compare equal and share compiled code.


def _identity(x: jax.Array) -> jax.Array:
    return x


def _gelu_exact(x: jax.Array) -> jax.Array:
    """``x * Phi(x)`` with ``Phi`` the standard normal CDF."""
    return x * ndtr(x)


@dataclass(frozen=True)
class _ABRelu:
    """``a * min(x, 0) + b * max(x, 0)``."""

    a: float
    b: float

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.a * jnp.minimum(x, 0) + self.b * jnp.maximum(x, 0)


@dataclass(frozen=True)
class _ABReluDual:
    """Arc-cosine dual of ``a * min(x, 0) + b * max(x, 0)``.

    With ``s = sqrt(k11 k22)``, ``c = k12 / s`` clipped to [-1, 1] (``c = 0``
    when ``s = 0``, i.e. ``theta = pi/2`` as in neural-tangents) and
    ``theta = arctan2(sqrt((1 - c)(1 + c)), c)``:
    ``E[phi' phi'] = (a^2 + b^2)/2 - (a - b)^2 theta/(2 pi)`` and
    ``E[phi phi] = (a - b)^2 s sin(theta)/(2 pi) + E[phi' phi'] k12``.
    Working with ``c`` (not ``k11 k22 - k12^2``) keeps ``theta = 0`` exact
    when ``k12 = k11 = k22``, where the angle is ill-conditioned.
    """

    a: float
    b: float

    def __call__(self, k11, k12, k22):
        s = jnp.sqrt(k11 * k22)
        c = jnp.clip(jnp.where(s > 0, k12 / jnp.where(s > 0, s, 1.0), 0.0), -1.0, 1.0)
        sin_theta = jnp.sqrt((1 - c) * (1 + c))
        theta = jnp.arctan2(sin_theta, c)
        factor = (self.a - self.b) ** 2 / (2 * jnp.pi)
        dot = (self.a**2 + self.b**2) / 2 - factor * theta
        return factor * s * sin_theta + dot * k12, dot


def _erf_dual(k11, k12, k22):
    """``(2/pi) arcsin(2 k12 / sqrt(p))`` and ``(4/pi) / sqrt(p - 4 k12^2)``,
    ``p = (1 + 2 k11)(1 + 2 k22)``."""
    prod = (1 + 2 * k11) * (1 + 2 * k22)
    root = jnp.sqrt(jnp.maximum(prod - 4 * k12**2, 0.0))
    nngp = (2 / jnp.pi) * jnp.arctan2(2 * k12, root)  # arcsin, clipped
    return nngp, (4 / jnp.pi) / root


def _gelu_dual(k11, k12, k22):
    """GELU dual (Tsuchida et al. 2020), written as in neural-tangents.

    With ``P = k11 k22``, ``P1 = (1 + k11)(1 + k22)``, ``D^2 = P1 - k12^2`` and
    ``A = arcsin(k12 / sqrt(P1))``:
    ``E[phi phi] = k12/4 + ((k12^2 + P D^2)/(P1 D) + k12 A)/(2 pi)`` and
    ``E[phi' phi'] = 1/4 + A/(2 pi)
    + k12 (1/D^2 + (1 - P)/P1 + 1)/(2 pi D)``.
    """
    prod = k11 * k22
    prod1 = (1 + k11) * (1 + k22)
    delta2 = jnp.maximum(prod1 - k12**2, 0.0)
    delta = jnp.sqrt(delta2)
    angle = jnp.arctan2(k12, delta)
    nngp = k12 / 4 + ((k12**2 + prod * delta2) / (prod1 * delta) + k12 * angle) / (2 * jnp.pi)
    first = (1 / delta2 + (1 - prod) / prod1 + 1) * k12 / (delta * 2 * jnp.pi)
    dot = first + 0.25 + angle / (2 * jnp.pi)
    return nngp, dot


def _identity_dual(k11, k12, k22):
    """``E[u v] = k12`` and ``E[1 * 1] = 1``."""
    k12 = jnp.asarray(k12)
    return k12, jnp.ones_like(k12)


ACTIVATION_NAMES: tuple[str, ...] = (
    "relu", "leaky_relu", "abs", "erf", "identity",
    "tanh", "gelu", "softplus", "sigmoid",
)  # fmt: skip


def get_activation(name: str, **params) -> Activation:
    """Look up an activation by name.

    Parameters
    ----------
    name : str
        One of :data:`ACTIVATION_NAMES`.
    **params
        ``slope`` for ``leaky_relu`` (slope on the negative side, default
        ``0.01`` as in :func:`jax.nn.leaky_relu`; neural-tangents'
        ``LeakyRelu(alpha)`` is ``slope=alpha``). ``degree`` (int, default 64)
        and ``rule`` (``"trapezoid"`` or ``"hermite"``) for the quadrature
        activations ``tanh``, ``softplus``, ``sigmoid``.

    Returns
    -------
    Activation

    Raises
    ------
    ValueError
        If ``name`` is unknown or a parameter does not apply to it.

    Examples
    --------
    >>> act = get_activation("leaky_relu", slope=0.1)
    >>> float(act(jnp.array(-2.0)))
    -0.2
    """
    if not isinstance(name, str) or name not in ACTIVATION_NAMES:
        raise ValueError(f"name: unknown activation {name!r}; expected one of {ACTIVATION_NAMES}")
    quad = {"degree", "rule"}
    allowed = {"leaky_relu": {"slope"}, "tanh": quad, "softplus": quad, "sigmoid": quad}
    allowed = allowed.get(name, set())
    extra = set(params) - allowed
    if extra:
        raise ValueError(
            f"params: activation {name!r} takes {sorted(allowed) or 'no parameters'}, "
            f"got {sorted(extra)}"
        )
    if name == "relu":
        return Activation("relu", jax.nn.relu, _ABReluDual(0.0, 1.0))
    if name == "leaky_relu":
        slope = params.get("slope", DEFAULT_LEAKY_SLOPE)
        is_number = isinstance(slope, (int, float)) and not isinstance(slope, bool)
        if not (is_number and math.isfinite(slope)):
            raise ValueError(f"slope: expected a finite number, got {slope!r}")
        slope = float(slope)
        return Activation(
            "leaky_relu", _ABRelu(slope, 1.0), _ABReluDual(slope, 1.0), params=(("slope", slope),)
        )
    if name == "abs":
        return Activation("abs", jnp.abs, _ABReluDual(-1.0, 1.0))
    if name == "erf":
        return Activation("erf", _erf, _erf_dual)
    if name == "identity":
        return Activation("identity", _identity, _identity_dual)
    if name == "gelu":
        return Activation("gelu", _gelu_exact, _gelu_dual)
    degree = _check_degree(params.get("degree", DEFAULT_DEGREE))
    rule = _check_rule(params.get("rule", DEFAULT_RULE))
    fn = {"tanh": jnp.tanh, "softplus": jax.nn.softplus, "sigmoid": jax.nn.sigmoid}[name]
    return Activation(name, fn, None, degree, rule)


def custom(
    fn: ArrayFn,
    name: str = "custom",
    *,
    degree: int = DEFAULT_DEGREE,
    rule: str = DEFAULT_RULE,
) -> Activation:
    """Wrap any elementwise ``jnp`` function; its duals use quadrature.

    Parameters
    ----------
    fn : callable
        Elementwise, differentiable (almost everywhere) ``jnp`` function.
    name : str
        Label for reports.
    degree : int
        Quadrature nodes per dimension.
    rule : str
        ``"trapezoid"`` or ``"hermite"``.

    Examples
    --------
    >>> swish = custom(lambda x: x * jax.nn.sigmoid(x), "swish")
    >>> nngp, dot = dual(swish, 1.0, 0.5, 1.0)
    """
    if not callable(fn):
        raise ValueError(f"fn: expected a callable, got {type(fn).__name__}")
    return Activation(str(name), fn, None, _check_degree(degree), _check_rule(rule))


def _check_degree(degree) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 2:
        raise ValueError(f"degree: expected an integer >= 2, got {degree!r}")
    return int(degree)


def _check_rule(rule) -> str:
    if rule not in QUADRATURE_RULES:
        raise ValueError(f"rule: expected one of {QUADRATURE_RULES}, got {rule!r}")
    return rule


def quadrature_rule(degree: int, rule: str = DEFAULT_RULE) -> tuple[np.ndarray, np.ndarray]:
    """1-D nodes and weights for ``E[g(Z)]``, ``Z ~ N(0, 1)`` (weights sum to 1).

    ``"trapezoid"``: ``degree`` equispaced nodes on ``[-T, T]`` with
    ``T = min(9, (4.4 (degree - 1))^(1/3))`` and weights proportional to
    ``exp(-z^2 / 2)``; ``"hermite"``: probabilists' Gauss--Hermite nodes
    (:func:`numpy.polynomial.hermite_e.hermegauss`), weights over ``sqrt(2 pi)``.
    """
    degree, rule = _check_degree(degree), _check_rule(rule)
    if rule == "hermite":
        nodes, weights = np.polynomial.hermite_e.hermegauss(degree)
        return nodes, weights / math.sqrt(2 * math.pi)
    half_width = min(9.0, (4.4 * (degree - 1)) ** (1 / 3))
    nodes = np.linspace(-half_width, half_width, degree)
    weights = np.exp(-(nodes**2) / 2)
    return nodes, weights / weights.sum()


def dual(
    act: Activation | str,
    k11: jax.typing.ArrayLike,
    k12: jax.typing.ArrayLike,
    k22: jax.typing.ArrayLike,
    *,
    degree: int | None = None,
    rule: str | None = None,
    quadrature: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Gaussian dual kernels ``(E[phi(u) phi(v)], E[phi'(u) phi'(v)])``.

    ``(u, v) ~ N(0, [[k11, k12], [k12, k22]])``, elementwise over the
    broadcast of ``k11, k12, k22`` (float64). Closed form when ``act.dual``
    exists, else the 2-D quadrature of the module docstring.

    Parameters
    ----------
    act : Activation or str
        The activation (a name is looked up with :func:`get_activation`).
    k11, k12, k22 : array_like
        Variances (``>= 0``) and covariance; ``|k12| <= sqrt(k11 k22)`` up to
        round-off (the correlation is clipped to [-1, 1]).
    degree, rule : optional
        Quadrature nodes per dimension and 1-D rule; default ``act.degree``,
        ``act.rule``.
    quadrature : bool
        Force quadrature even when a closed form exists (used to cross-check
        closed forms).

    Returns
    -------
    (nngp, dot) : tuple of jax.Array
        Both of the broadcast shape.

    Examples
    --------
    >>> nngp, dot = dual("relu", 1.0, 1.0, 1.0)  # E[relu(u)^2] = k/2, P(u > 0) = 1/2
    >>> float(nngp), float(dot)
    (0.5, 0.5)
    """
    if isinstance(act, str):
        act = get_activation(act)
    k11, k12, k22 = jnp.broadcast_arrays(
        *(jnp.asarray(k, dtype=jnp.float64) for k in (k11, k12, k22))
    )
    if act.dual is not None and not quadrature:
        return _closed_form_dual(act.dual, k11, k12, k22)
    nodes, weights = quadrature_rule(
        act.degree if degree is None else degree, act.rule if rule is None else rule
    )
    return _quadrature_dual(act.fn, k11, k12, k22, nodes, weights)


@partial(jax.jit, static_argnums=0)
def _closed_form_dual(closed_form: DualFn, k11, k12, k22):
    """One compiled kernel per (closed form, shape) instead of one per primitive."""
    return closed_form(k11, k12, k22)


def _quadrature_dual(fn: ArrayFn, k11, k12, k22, nodes, weights) -> tuple[jax.Array, jax.Array]:
    """Chunked 2-D product-rule evaluation of both duals (see module doc)."""
    shape = k11.shape
    flat = [k.reshape(-1) for k in (k11, k12, k22)]
    n = flat[0].shape[0]
    if n == 0:
        return jnp.zeros(shape), jnp.zeros(shape)
    degree = len(nodes)
    chunk_max = max(1, _CHUNK_BYTES // (8 * 4 * degree * degree))
    # Small inputs: pad to a power of two so repeated small calls reuse compiled code.
    chunk = min(chunk_max, max(8, 1 << (n - 1).bit_length()))
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    # Pad with a harmless unit-variance, zero-covariance entry.
    fills = (1.0, 0.0, 1.0)
    padded = [jnp.concatenate([k, jnp.full((pad,), f)]) for k, f in zip(flat, fills, strict=True)]
    blocks = [p.reshape(n_chunks, chunk) for p in padded]
    nngp, dot = _quadrature_chunks(fn, *blocks, jnp.asarray(nodes), jnp.asarray(weights))
    return nngp.reshape(-1)[:n].reshape(shape), dot.reshape(-1)[:n].reshape(shape)


@partial(jax.jit, static_argnums=0)
def _quadrature_chunks(fn, k11, k12, k22, nodes, weights):
    def one_chunk(ks):
        a, c, b = ks  # k11, k12, k22 for this chunk, each (chunk,)
        sa, sb = jnp.sqrt(a), jnp.sqrt(b)
        denom = sa * sb
        rho = jnp.clip(jnp.where(denom > 0, c / jnp.where(denom > 0, denom, 1.0), 0.0), -1, 1)
        comp = jnp.sqrt(1 - rho**2)
        u = sa[:, None] * nodes[None, :]  # (chunk, i)
        v = sb[:, None, None] * (
            rho[:, None, None] * nodes[None, :, None] + comp[:, None, None] * nodes[None, None, :]
        )  # (chunk, i, j)
        fu, dfu = jax.jvp(fn, (u,), (jnp.ones_like(u),))
        fv, dfv = jax.jvp(fn, (v,), (jnp.ones_like(v),))
        inner_f = fv @ weights  # sum_j w_j f(v_ij)
        inner_df = dfv @ weights
        return (fu * inner_f) @ weights, (dfu * inner_df) @ weights

    return jax.lax.map(one_chunk, (k11, k12, k22))
