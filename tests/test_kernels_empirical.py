"""Empirical NTKs (ntkdyn.kernels.empirical): NT reference, Jacobian identity, convergence."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkdyn  # noqa: F401  (float64)
from ntkdyn.kernels import analytic_ntk, empirical_ntk, mlp_empirical_ntk, ntk_memory_bytes
from ntkdyn.models import MLP

GOLDEN = Path(__file__).parent / "data" / "nt_golden.npz"
NT_MODEL = MLP(hidden=(16, 16), out=3, activation="relu", W_std=1.4, b_std=0.1)


@pytest.fixture(scope="module")
def golden():
    assert GOLDEN.exists(), f"missing {GOLDEN}; run tests/data/make_nt_golden.py"
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def _direct_ntk(apply_fn, params, xa, xb):
    """J(xa) J(xb)^T from full jax.jacrev Jacobians, (Na K, Nb K) sample-major."""

    @jax.jit
    def flat_jacobian(x):
        jac = jax.jacrev(apply_fn)(params, jnp.asarray(x))
        leaves = [leaf.reshape(leaf.shape[0] * leaf.shape[1], -1) for leaf in jax.tree.leaves(jac)]
        return jnp.concatenate(leaves, axis=1)

    return np.asarray(flat_jacobian(xa) @ flat_jacobian(xb).T)


def _traced(full, k):
    n1, n2 = full.shape[0] // k, full.shape[1] // k
    return np.einsum("akbk->ab", full.reshape(n1, k, n2, k)) / k


def _rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


# ------------------------------------------------------------- NT reference


@pytest.mark.parametrize("pair", ["11", "12"])
def test_matches_neural_tangents(golden, pair):
    params = tuple(
        (golden[f"empirical/params/{i}/W"], golden[f"empirical/params/{i}/b"]) for i in range(3)
    )
    x1 = golden["inputs/x1"]
    x2 = None if pair == "11" else golden["inputs/x2"]
    nt_full = golden[f"empirical/ntk_full_{pair}"]  # (n1, n2, k1, k2)
    n1, n2, k, _ = nt_full.shape
    want_full = nt_full.transpose(0, 2, 1, 3).reshape(n1 * k, n2 * k)
    want_traced = golden[f"empirical/ntk_traced_{pair}"]
    np.testing.assert_allclose(_traced(want_full, k), want_traced, rtol=1e-12)  # mean convention
    for traced, want in ((False, want_full), (True, want_traced)):
        fast = mlp_empirical_ntk(NT_MODEL, params, x1, x2, traced=traced)
        generic = empirical_ntk(NT_MODEL.apply, params, x1, x2, traced=traced)
        assert fast.shape == generic.shape == want.shape
        assert _rel(fast, want) <= 1e-8
        assert _rel(generic, want) <= 1e-8


# ------------------------------------------- three implementations agree


@pytest.mark.parametrize(("activation", "batch_size"), [("relu", None), ("tanh", 3)])
def test_fast_generic_and_jacobian_agree(activation, batch_size):
    model = MLP(hidden=(12, 7, 9), out=4, activation=activation, W_std=1.3, b_std=0.2)
    params = model.init(jax.random.PRNGKey(4), 5)  # float32 params: computed in float64
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    rng = np.random.default_rng(2)
    x1, x2 = rng.normal(size=(8, 5)), rng.normal(size=(5, 5))
    for xb in (None, x2):
        direct = _direct_ntk(model.apply, params64, x1, x1 if xb is None else xb)
        for traced in (False, True):
            want = _traced(direct, 4) if traced else direct
            fast = mlp_empirical_ntk(model, params, x1, xb, traced=traced, batch_size=batch_size)
            generic = empirical_ntk(
                model.apply, params, x1, xb, traced=traced, batch_size=batch_size
            )
            assert fast.dtype == generic.dtype == np.float64
            assert _rel(fast, want) <= 1e-10
            assert _rel(generic, want) <= 1e-10
            assert _rel(fast, generic) <= 1e-10
            if xb is None:
                np.testing.assert_array_equal(fast, fast.T)


def test_generic_pytree_network():
    """A non-MLP network with dict params: only the generic path applies."""
    rng = np.random.default_rng(0)
    w, scale, out = (jnp.asarray(rng.normal(size=shape)) for shape in [(3, 6), (6,), (6, 2)])
    params = {"w": w, "v": {"scale": scale, "out": out}}

    def apply(p, x):
        h = jnp.sin(x @ p["w"]) * p["v"]["scale"]
        return h @ p["v"]["out"] + jnp.sum(x**2, axis=1, keepdims=True)

    x1, x2 = rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
    direct = _direct_ntk(apply, params, x1, x2)
    np.testing.assert_allclose(
        empirical_ntk(apply, params, x1, x2, traced=False, batch_size=2), direct, rtol=1e-12
    )
    np.testing.assert_allclose(empirical_ntk(apply, params, x1, x2), _traced(direct, 2), rtol=1e-12)


# --------------------------------------------------------------- convergence


def test_converges_to_the_analytic_kernel_like_inverse_sqrt_width():
    """||Theta_emp - Theta||_F / ||Theta||_F ~ width^(-1/2) (depth-2 ReLU, 32 inputs, 3 seeds)."""
    x = np.random.default_rng(0).normal(size=(32, 10))
    analytic = analytic_ntk(x, hidden_layers=2)
    widths = np.array([64, 256, 1024, 4096])
    errors = []
    for width in widths:
        model = MLP(hidden=(width, width), out=2)
        errs = []
        for seed in range(3):
            params = model.init(jax.random.PRNGKey(seed), 10)
            emp = mlp_empirical_ntk(model, params, x)
            errs.append(np.linalg.norm(emp - analytic) / np.linalg.norm(analytic))
        errors.append(np.mean(errs))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    assert -0.75 <= slope <= -0.3, (slope, errors)
    assert errors[0] / errors[-1] >= 4, errors


# ---------------------------------------------------------------- memory, errors


def test_ntk_memory_bytes():
    assert ntk_memory_bytes(100, 50, 10, traced=True) == 100 * 50 * 8
    assert ntk_memory_bytes(100, 50, 10, traced=False) == 100 * 50 * 100 * 8
    assert ntk_memory_bytes(10, 10, 3, traced=True, dtype=np.float32) == 400


def test_output_larger_than_memory_is_refused(monkeypatch):
    from ntkdyn._utils.memory import ProblemTooLargeError

    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "1KB")
    params = NT_MODEL.init(jax.random.PRNGKey(0), 5)
    with pytest.raises(ProblemTooLargeError):
        mlp_empirical_ntk(NT_MODEL, params, np.ones((40, 5)))


@pytest.mark.parametrize(
    ("call", "argname"),
    [
        (lambda m, p: mlp_empirical_ntk(m, p, np.ones(5)), "x1"),
        (lambda m, p: mlp_empirical_ntk(m, p, np.full((2, 5), np.inf)), "x1"),
        (lambda m, p: mlp_empirical_ntk(m, p, np.ones((2, 5)), np.ones((2, 4))), "x2"),
        (lambda m, p: mlp_empirical_ntk(m, p, np.ones((2, 4))), "params"),
        (lambda m, p: mlp_empirical_ntk(m, p[:2], np.ones((2, 5))), "params"),
        (lambda m, p: mlp_empirical_ntk(m, p, np.ones((2, 5)), batch_size=0), "batch_size"),
        (lambda m, p: empirical_ntk(m.apply, p, np.ones((2, 5)), batch_size=1.5), "batch_size"),
        (lambda m, p: empirical_ntk(m.apply, p, np.ones((0, 5))), "x1"),
        (lambda m, p: empirical_ntk(m.apply, p, np.ones((2, 5)), np.ones((2, 6))), "x2"),
        (lambda m, p: empirical_ntk("apply", p, np.ones((2, 5))), "apply_fn"),
        (lambda m, p: mlp_empirical_ntk("mlp", p, np.ones((2, 5))), "model"),
        (
            lambda m, p: empirical_ntk(lambda q, x: m.apply(q, x)[:, 0], p, np.ones((2, 5))),
            "apply_fn",
        ),
    ],
)
def test_bad_arguments_name_the_argument(call, argname):
    params = NT_MODEL.init(jax.random.PRNGKey(0), 5)
    with pytest.raises(ValueError, match=rf"^{argname}:"):
        call(NT_MODEL, params)
