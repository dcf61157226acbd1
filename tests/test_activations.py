"""Activations and their Gaussian duals (ntkdyn.activations)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm

import ntkdyn  # noqa: F401  (float64)
from ntkdyn.activations import (
    ACTIVATION_NAMES,
    Activation,
    custom,
    dual,
    get_activation,
    quadrature_rule,
)

SMOOTH_CLOSED = ["erf", "gelu", "identity"]
KINKED = {"relu": (0.0, 1.0), "leaky_relu": (0.1, 1.0), "abs": (-1.0, 1.0)}


def _grid(vmax: float = 5.0, n: int = 150, seed: int = 0):
    """Variances in [0.05, vmax], correlations in [-1, 1] including the ends."""
    rng = np.random.default_rng(seed)
    k11, k22 = rng.uniform(0.05, vmax, n), rng.uniform(0.05, vmax, n)
    c = rng.uniform(-1, 1, n)
    c[:10], c[10:20], c[20:30] = 1.0, -1.0, 0.9999
    k22[:10] = k11[:10]  # exact diagonal entries
    return k11, c * np.sqrt(k11 * k22), k22


def _scaled_err(a, b):
    """max |a - b| / max |b|, per output of a dual."""
    return max(float(np.max(np.abs(x - y)) / np.max(np.abs(y))) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ registry


def test_registry_names_and_values():
    x = jnp.linspace(-3, 3, 13)
    expected = {
        "relu": np.maximum(x, 0),
        "leaky_relu": np.where(x > 0, x, 0.01 * x),
        "abs": np.abs(x),
        "erf": jax.scipy.special.erf(x),
        "identity": x,
        "tanh": np.tanh(x),
        "gelu": jax.nn.gelu(x, approximate=False),
        "softplus": np.log1p(np.exp(x)),
        "sigmoid": 1 / (1 + np.exp(-x)),
    }
    assert set(expected) == set(ACTIVATION_NAMES)
    for name, want in expected.items():
        act = get_activation(name)
        assert isinstance(act, Activation) and act.name == name
        np.testing.assert_allclose(act(x), want, rtol=1e-12, atol=1e-14)
    slope = get_activation("leaky_relu", slope=0.1)
    np.testing.assert_allclose(slope(x), np.where(x > 0, x, 0.1 * x))


def test_activations_are_value_comparable():
    # Equal activations share compiled quadrature code (static jit argument).
    assert get_activation("tanh") == get_activation("tanh")
    assert get_activation("leaky_relu", slope=0.2) == get_activation("leaky_relu", slope=0.2)
    assert get_activation("leaky_relu", slope=0.2) != get_activation("leaky_relu", slope=0.3)
    hash(get_activation("leaky_relu", slope=0.2))


def test_value_and_derivative():
    x = jnp.array([-2.0, -0.5, 0.5, 2.0])
    val, der = get_activation("tanh").value_and_derivative(x)
    np.testing.assert_allclose(val, np.tanh(x))
    np.testing.assert_allclose(der, 1 - np.tanh(x) ** 2, rtol=1e-14)
    _, der = get_activation("leaky_relu", slope=0.1).value_and_derivative(x)
    np.testing.assert_allclose(der, [0.1, 0.1, 1.0, 1.0])


@pytest.mark.parametrize(
    ("call", "argname"),
    [
        (lambda: get_activation("swish"), "name"),
        (lambda: get_activation("relu", slope=0.1), "params"),
        (lambda: get_activation("tanh", slope=0.1), "params"),
        (lambda: get_activation("leaky_relu", slope=float("nan")), "slope"),
        (lambda: get_activation("leaky_relu", slope="x"), "slope"),
        (lambda: get_activation("tanh", degree=1), "degree"),
        (lambda: get_activation("tanh", degree=10.5), "degree"),
        (lambda: get_activation("sigmoid", rule="simpson"), "rule"),
        (lambda: custom(3.0), "fn"),
        (lambda: quadrature_rule(0), "degree"),
    ],
)
def test_bad_arguments_name_the_argument(call, argname):
    with pytest.raises(ValueError, match=rf"^{argname}:"):
        call()


# ---------------------------------------------------------------- quadrature


@pytest.mark.parametrize("rule", ["trapezoid", "hermite"])
def test_quadrature_rule_moments(rule):
    z, w = quadrature_rule(64, rule)
    assert z.shape == w.shape == (64,)
    assert abs(w.sum() - 1) < 1e-14
    # Truncation at |z| = 6.5 costs the trapezoid rule ~1e-9 on E[z^2], 2e-7 on E[z^6].
    for p, moment, tol in [(1, 0, 1e-14), (2, 1, 1e-8), (3, 0, 1e-14), (4, 3, 1e-7), (6, 15, 1e-6)]:
        assert abs(np.sum(w * z**p) - moment) < tol * max(moment, 1)


@pytest.mark.parametrize("name", SMOOTH_CLOSED)
def test_closed_forms_match_quadrature_at_degree_64(name):
    """Closed forms and the default quadrature (64 nodes) agree to 1e-6."""
    ks = _grid(vmax=5.0)
    act = get_activation(name)
    closed = dual(act, *ks)
    quad = dual(act, *ks, quadrature=True)
    assert _scaled_err(quad, closed) < 1e-6


def test_trapezoid_beats_hermite_at_moderate_variance():
    """The measurement behind the default rule (see the module docstring)."""
    ks = _grid(vmax=3.0, n=60)
    act = get_activation("erf")
    closed = dual(act, *ks)
    trap = _scaled_err(dual(act, *ks, quadrature=True, rule="trapezoid"), closed)
    herm = _scaled_err(dual(act, *ks, quadrature=True, rule="hermite"), closed)
    assert trap < 1e-8 < herm
    tanh = get_activation("tanh")
    ref = dual(tanh, *ks, degree=128)
    assert _scaled_err(dual(tanh, *ks), ref) < 1e-8


def _arccos_reference(a, b, k11, k12, k22):
    """E[phi(u)phi(v)], E[phi'(u)phi'(v)] for phi = a min(x,0) + b max(x,0), by 1-D quadrature.

    Conditions on z1 (u = sqrt(k11) z1); the inner Gaussian expectation of a
    piecewise-linear function is exact: E[max(m + sZ, 0)] = m Phi(m/s) + s phi(m/s).
    """
    rho = k12 / math.sqrt(k11 * k22)
    s = math.sqrt(k22 * (1 - rho**2))

    def inner(z1):
        m = math.sqrt(k22) * rho * z1
        pos = m * norm.cdf(m / s) + s * norm.pdf(m / s)
        phi_v = b * pos + a * (m - pos)
        dphi_v = b * norm.cdf(m / s) + a * norm.cdf(-m / s)
        return phi_v, dphi_v

    def phi(x):
        return a * min(x, 0.0) + b * max(x, 0.0)

    def integrand(z1, which):
        u = math.sqrt(k11) * z1
        outer = phi(u) if which == 0 else (b if u > 0 else a)
        return outer * inner(z1)[which] * norm.pdf(z1)

    out = []
    for which in (0, 1):
        left = integrate.quad(integrand, -np.inf, 0, args=(which,), epsabs=1e-13, epsrel=1e-12)
        right = integrate.quad(integrand, 0, np.inf, args=(which,), epsabs=1e-13, epsrel=1e-12)
        out.append(left[0] + right[0])
    return out


@pytest.mark.parametrize("name", list(KINKED))
def test_arccos_closed_forms_match_reference_integrals(name):
    a, b = KINKED[name]
    act = get_activation(name, slope=0.1) if name == "leaky_relu" else get_activation(name)
    for k11, rho, k22 in [(2.5, -0.7, 0.4), (0.3, 0.95, 3.0), (1.7, 0.0, 0.9)]:
        k12 = rho * math.sqrt(k11 * k22)
        got = dual(act, k11, k12, k22)
        want = _arccos_reference(a, b, k11, k12, k22)
        np.testing.assert_allclose([float(g) for g in got], want, rtol=1e-9, atol=1e-12)


def test_relu_duals_at_degenerate_correlations():
    nngp, dot = dual("relu", [2.0, 2.0, 0.0], [2.0, -2.0, 0.0], [2.0, 2.0, 1.0])
    np.testing.assert_allclose(nngp, [1.0, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(dot[:2], [0.5, 0.0], atol=1e-15)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_duals_match_monte_carlo(name):
    rng = np.random.default_rng(1)
    k11, k12, k22 = 1.3, -0.6, 0.8
    chol = np.linalg.cholesky(np.array([[k11, k12], [k12, k22]]))
    u, v = chol @ rng.standard_normal((2, 200_000))
    act = get_activation(name)
    fu, dfu = act.value_and_derivative(jnp.asarray(u))
    fv, dfv = act.value_and_derivative(jnp.asarray(v))
    mc = (float(jnp.mean(fu * fv)), float(jnp.mean(dfu * dfv)))
    got = dual(act, k11, k12, k22)
    for g, m in zip(got, mc, strict=True):
        assert abs(float(g) - m) < 1e-2 * max(1.0, abs(m))


def test_custom_activation_uses_quadrature():
    mine = custom(lambda x: jnp.tanh(x), "my_tanh")
    ks = _grid(vmax=2.0, n=30)
    assert mine.dual is None and mine.name == "my_tanh"
    assert _scaled_err(dual(mine, *ks), dual("tanh", *ks)) < 1e-13
    erf_quad = custom(jax.scipy.special.erf, degree=96)
    assert _scaled_err(dual(erf_quad, *ks), dual("erf", *ks)) < 1e-10


def test_quadrature_is_chunked_and_shape_preserving():
    """More elements than one chunk, odd shape: same values as one-by-one."""
    ks = [k.reshape(20, 15) for k in _grid(vmax=2.0, n=300, seed=3)]  # 3 chunks at degree 96
    nngp, dot = dual("softplus", *ks, degree=96)
    assert nngp.shape == dot.shape == (20, 15)
    for i, j in [(0, 0), (7, 11), (19, 14)]:
        one = dual("softplus", *(k[i, j] for k in ks), degree=96)
        np.testing.assert_allclose([nngp[i, j], dot[i, j]], [float(o) for o in one], rtol=1e-13)


@settings(max_examples=40, deadline=None)
@given(
    k11=st.floats(0.01, 5.0),
    k22=st.floats(0.01, 5.0),
    rho=st.floats(-1.0, 1.0),
    name=st.sampled_from(["relu", "leaky_relu", "abs", "erf", "gelu", "identity"]),
)
def test_closed_form_properties(k11, k22, rho, name):
    """Symmetry in (u, v), Cauchy-Schwarz, and finiteness at |rho| = 1."""
    k12 = rho * math.sqrt(k11 * k22)
    act = get_activation(name)
    nngp, dot = (float(t) for t in dual(act, k11, k12, k22))
    swapped = [float(t) for t in dual(act, k22, k12, k11)]
    np.testing.assert_allclose([nngp, dot], swapped, rtol=1e-10, atol=1e-14)
    var1, dvar1 = (float(t) for t in dual(act, k11, k11, k11))
    var2, dvar2 = (float(t) for t in dual(act, k22, k22, k22))
    assert abs(nngp) <= math.sqrt(var1 * var2) * (1 + 1e-9) + 1e-14
    assert abs(dot) <= math.sqrt(dvar1 * dvar2) * (1 + 1e-9) + 1e-12
    assert math.isfinite(nngp) and math.isfinite(dot)


@settings(max_examples=25, deadline=None)
@given(k=st.floats(0.05, 4.0), rho=st.floats(-1.0, 1.0), scale=st.floats(0.1, 10.0))
@example(k=1.0, rho=0.9999999999999999, scale=5.0)  # failed with atol 1e-13 alone
def test_relu_dual_is_homogeneous(k, rho, scale):
    """phi positively homogeneous: E[phi phi] scales with K, E[phi' phi'] is invariant."""
    nngp, dot = dual("relu", k, rho * k, k)
    nngp_s, dot_s = dual("relu", scale * k, scale * rho * k, scale * k)
    np.testing.assert_allclose(float(nngp_s), scale * float(nngp), rtol=1e-12, atol=1e-15)
    # Near rho = +-1 the scaled correlation (scale rho k) / (scale k) is only known to one
    # ulp, and arccos amplifies that by 1 / sqrt(1 - rho^2): absolute error ~1e-16 * 224
    # at rho = -0.99999 (measured 4e-15 on a value of 7e-4), and at rho = 1 - 1e-16
    # (1 - rho^2 ~ 2e-16) arccos(1 - d) ~ sqrt(2 d) turns one ulp into ~1e-8 (measured
    # 9.8e-10 at k = 1, scale 5; at most sqrt(2 eps) / (2 pi) ~ 2.4e-9 at rho = +-1), hence
    # the absolute term scaled by that condition number and capped there.
    cond = 1.0 / math.sqrt(max(1.0 - rho * rho, 1e-32))
    np.testing.assert_allclose(float(dot_s), float(dot), rtol=1e-12,
                               atol=1e-13 + min(1e-15 * cond, 1e-8))
