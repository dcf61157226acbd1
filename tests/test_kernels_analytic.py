"""Infinite-width NNGP / NTK recursions (ntkdyn.kernels.analytic) against neural-tangents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ntkdyn  # noqa: F401  (float64)
from ntkdyn.activations import get_activation
from ntkdyn.kernels import analytic_kernels, analytic_nngp, analytic_ntk

GOLDEN = Path(__file__).parent / "data" / "nt_golden.npz"
CLOSED = ["relu", "leaky_relu", "abs", "erf", "identity", "gelu"]
QUADRATURE = ["tanh", "softplus", "sigmoid"]


@pytest.fixture(scope="module")
def golden():
    # Deliberately not a skip: the reference data is part of the repository.
    assert GOLDEN.exists(), f"missing {GOLDEN}; run tests/data/make_nt_golden.py"
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def _act(name):
    # neural-tangents' golden data uses LeakyRelu(0.1).
    return get_activation(name, slope=0.1) if name == "leaky_relu" else get_activation(name)


def _assert_rel(got, want, rtol, label):
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= rtol, f"{label}: relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("name", CLOSED + QUADRATURE)
def test_matches_neural_tangents(golden, name):
    """All depths 1..4 and both (W_std, b_std) settings, x1-x1 and x1-x2."""
    rtol = 1e-6 if name in CLOSED else 1e-4
    x1, x2 = golden["inputs/x1"], golden["inputs/x2"]
    act = _act(name)
    for s, (w_std, b_std) in enumerate(golden["analytic/settings"]):
        for depth in (1, 2, 3, 4):
            prefix = f"analytic/{name}/d{depth}/s{s}"
            for pair, args in (("11", (x1,)), ("12", (x1, x2))):
                nngp, ntk = analytic_kernels(
                    *args, hidden_layers=depth, activation=act, W_std=w_std, b_std=b_std
                )
                _assert_rel(nngp, golden[f"{prefix}/nngp_{pair}"], rtol, f"{prefix}/nngp_{pair}")
                _assert_rel(ntk, golden[f"{prefix}/ntk_{pair}"], rtol, f"{prefix}/ntk_{pair}")


def test_quadrature_activations_are_much_better_than_required(golden):
    """The default trapezoid rule reaches ~1e-9 on this data (tolerance above: 1e-4)."""
    x1 = golden["inputs/x1"]
    for name in QUADRATURE:
        for depth in (1, 4):
            nngp, ntk = analytic_kernels(x1, hidden_layers=depth, activation=name)
            _assert_rel(ntk, golden[f"analytic/{name}/d{depth}/s0/ntk_11"], 1e-7, name)


# ----------------------------------------------------------- self-consistency


def _inputs(n=7, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def test_depth_zero_is_the_linear_model():
    x = _inputs()
    nngp, ntk = analytic_kernels(x, hidden_layers=0, W_std=1.3, b_std=0.2)
    want = 1.3**2 * x @ x.T / x.shape[1] + 0.2**2
    np.testing.assert_allclose(nngp, want, rtol=1e-14)
    np.testing.assert_allclose(ntk, want, rtol=1e-14)


def test_one_hidden_relu_layer_by_hand():
    """Theta = K^1 + W^2 E[phi' phi'] K^0 with the arc-cosine kernels written out."""
    x = _inputs()
    w2, b2 = 1.4**2, 0.1**2
    k0 = w2 * x @ x.T / x.shape[1] + b2
    d = np.sqrt(np.diag(k0))
    cos = np.clip(k0 / np.outer(d, d), -1, 1)
    np.fill_diagonal(cos, 1.0)  # arccos is ill-conditioned at 1: avoid round-off there
    theta = np.arccos(cos)
    e_phi = np.outer(d, d) * (np.sin(theta) + (np.pi - theta) * cos) / (2 * np.pi)
    e_dphi = (np.pi - theta) / (2 * np.pi)
    k1 = w2 * e_phi + b2
    nngp, ntk = analytic_kernels(x, hidden_layers=1)
    np.testing.assert_allclose(nngp, k1, rtol=1e-12)
    np.testing.assert_allclose(ntk, k1 + w2 * e_dphi * k0, rtol=1e-12)


@pytest.mark.parametrize("name", ["relu", "erf", "tanh"])
def test_blocks_symmetry_and_cross_kernel(name):
    """Blockwise, symmetric x2=None and explicit x2 give the same kernel.

    For quadrature activations K(x, x') and K(x', x) carry different quadrature
    errors (the 2-D rule is not symmetric in u, v) and the x2=None kernel is
    their average, hence the looser tolerance (pre-activation variances reach
    ~8 here, where the 64-node rule is accurate to ~1e-6 for tanh).
    """
    rtol = 1e-6 if name == "tanh" else 1e-12
    xa, xb = _inputs(9, 3, 1), _inputs(5, 3, 2)
    joint = np.vstack([xa, xb])
    nngp, ntk = analytic_kernels(joint, hidden_layers=3, activation=name, block_size=4)
    np.testing.assert_array_equal(ntk, ntk.T)
    assert np.linalg.eigvalsh(ntk).min() > -1e-10 * np.abs(ntk).max()
    cross_nngp, cross_ntk = analytic_kernels(xa, xb, hidden_layers=3, activation=name)
    np.testing.assert_allclose(cross_ntk, ntk[:9, 9:], rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(cross_nngp, nngp[:9, 9:], rtol=rtol, atol=1e-14)
    assert cross_ntk.dtype == np.float64 and cross_ntk.shape == (9, 5)


def test_shortcuts():
    x = _inputs()
    nngp, ntk = analytic_kernels(x, x[:3], hidden_layers=2, activation="gelu")
    np.testing.assert_array_equal(analytic_ntk(x, x[:3], hidden_layers=2, activation="gelu"), ntk)
    np.testing.assert_array_equal(analytic_nngp(x, x[:3], hidden_layers=2, activation="gelu"), nngp)


@pytest.mark.parametrize(
    ("kwargs", "argname"),
    [
        ({"x1": np.ones(3)}, "x1"),
        ({"x1": np.full((2, 3), np.nan)}, "x1"),
        ({"x2": np.ones((2, 4))}, "x2"),
        ({"x2": np.ones((2, 2, 3))}, "x2"),
        ({"hidden_layers": -1}, "hidden_layers"),
        ({"hidden_layers": 1.5}, "hidden_layers"),
        ({"activation": "swish"}, "activation"),
        ({"activation": 3}, "activation"),
        ({"W_std": 0.0}, "W_std"),
        ({"b_std": -0.1}, "b_std"),
        ({"W_std": None}, "W_std"),
        ({"block_size": 0}, "block_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argname):
    args = {"x1": np.ones((2, 3)), "x2": None, "hidden_layers": 1, **kwargs}
    x1, x2 = args.pop("x1"), args.pop("x2")
    with pytest.raises(ValueError, match=rf"^{argname}:"):
        analytic_kernels(x1, x2, **args)


@pytest.mark.parametrize("name", ["relu", "erf", "leaky_relu"])
def test_compiled_closed_form_blocks_equal_the_per_layer_evaluation(name):
    """Closed-form activations run each row block as one compiled call
    (``_closed_form_blocks``); it equals the per-layer numpy/JAX evaluation
    (``_quadrature_blocks``, which calls the same closed-form dual layer by layer) to
    round-off, symmetric (diagonal to 5e-16) and cross, at any block size. In the cross
    kernel, entries where a row of x1 equals a row of x2 (correlation 1, where the
    arc-cosine is ill-conditioned) may differ by ~1e-8 between the two; x1 and x2 share
    no rows here."""
    from ntkdyn.kernels import analytic as mod

    act = mod.resolve_activation(name)
    w2, b2 = 1.4**2, 0.1**2
    xa, xb = _inputs(11, 4, 3), _inputs(7, 4, 4)
    for x1, x2, same in ((xa, xa, True), (xa, xb, False)):
        d1 = mod._diagonal_nngps(np.einsum("ij,ij->i", x1, x1) / 4, act, 3, w2, b2)
        d2 = mod._diagonal_nngps(np.einsum("ij,ij->i", x2, x2) / 4, act, 3, w2, b2)
        ref = mod._quadrature_blocks(act, 3, x1, x2, same, d1, d2, 100, w2, b2)
        for block in (1, 4, 100):
            got = mod._closed_form_blocks(act, 3, x1, x2, same, d1, d2, block, w2, b2)
            for g, r in zip(got, ref, strict=True):
                np.testing.assert_allclose(g, r, rtol=1e-13, atol=1e-15)
                if same:  # fused multiply-adds: the diagonal to an ulp or two
                    np.testing.assert_allclose(np.diag(g), np.diag(r), rtol=5e-16, atol=0)
