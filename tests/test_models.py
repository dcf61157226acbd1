"""The NTK-parameterised MLP (ntkdyn.models)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkdyn  # noqa: F401  (float64)
from ntkdyn.kernels import analytic_kernels
from ntkdyn.models import MLP

GOLDEN = Path(__file__).parent / "data" / "nt_golden.npz"
NT_MODEL = MLP(hidden=(16, 16), out=3, activation="relu", W_std=1.4, b_std=0.1)


@pytest.fixture(scope="module")
def golden():
    assert GOLDEN.exists(), f"missing {GOLDEN}; run tests/data/make_nt_golden.py"
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def _nt_style_params(golden):
    """Golden params as stax.serial returns them: () for activations, b of shape (1, n)."""
    dense = [(golden[f"empirical/params/{i}/W"], golden[f"empirical/params/{i}/b"][None])
             for i in range(3)]  # fmt: skip
    return (dense[0], (), dense[1], (), dense[2])


def test_apply_matches_neural_tangents(golden):
    params = NT_MODEL.from_neural_tangents_params(_nt_style_params(golden))
    assert [W.shape for W, _ in params] == [(5, 16), (16, 16), (16, 3)]
    assert [b.shape for _, b in params] == [(16,), (16,), (3,)]
    out = NT_MODEL.apply(params, jnp.asarray(golden["inputs/x1"]))
    want = golden["empirical/f_x1"]
    assert out.shape == (6, 3)
    assert np.max(np.abs(out - want)) <= 1e-6 * np.max(np.abs(want))
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-13)


def test_init_reproduces_neural_tangents_draws(golden):
    """Same key-splitting as stax.serial: equal draws under JAX's pre-0.5 PRNG (the same
    bits; the normal transform's last bit depends on XLA's fusion: bit-identical with
    its default optimisations, within 1 ulp in this suite, which compiles without them,
    tests/conftest.py; asserted to 1e-15 relative)."""
    with jax.threefry_partitionable(False):
        params = NT_MODEL.init(jax.random.PRNGKey(1), 5, dtype=jnp.float64)
    for i, (W, b) in enumerate(params):
        np.testing.assert_allclose(W, golden[f"empirical/params/{i}/W"], rtol=1e-15, atol=0)
        np.testing.assert_allclose(b, golden[f"empirical/params/{i}/b"], rtol=1e-15, atol=0)


def test_init_shapes_dtypes_and_statistics():
    model = MLP(hidden=(300, 200), out=4)
    params = model.init(jax.random.PRNGKey(0), 50)
    assert [(W.shape, b.shape) for W, b in params] == [
        ((50, 300), (300,)), ((300, 200), (200,)), ((200, 4), (4,)),
    ]  # fmt: skip
    assert all(W.dtype == jnp.float32 and b.dtype == jnp.float32 for W, b in params)
    W = np.asarray(params[1][0])
    assert abs(W.mean()) < 0.01 and abs(W.std() - 1) < 0.01  # N(0, 1): NTK parameterisation
    p64 = model.init(jax.random.PRNGKey(0), 50, dtype=jnp.float64)
    assert p64[0][0].dtype == jnp.float64
    assert model.num_params(50) == 50 * 300 + 300 + 300 * 200 + 200 + 200 * 4 + 4
    assert model.num_params(50) == sum(W.size + b.size for W, b in params)
    assert model.depth == 2 and MLP(hidden=()).depth == 0


def test_apply_formula_and_activation_params():
    model = MLP(hidden=(8,), out=2, activation="leaky_relu", W_std=1.1, b_std=0.3,
                activation_params={"slope": 0.2})  # fmt: skip
    assert model.activation_params == (("slope", 0.2),)
    hash(model)
    params = model.init(jax.random.PRNGKey(3), 4, dtype=jnp.float64)
    x = np.random.default_rng(0).normal(size=(5, 4))
    (W1, b1), (W2, b2) = (tuple(np.asarray(a) for a in pair) for pair in params)
    z = 1.1 / 2 * x @ W1 + 0.3 * b1
    h = np.where(z > 0, z, 0.2 * z)
    want = 1.1 / np.sqrt(8) * h @ W2 + 0.3 * b2
    np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-13)


def test_kernel_and_nngp_are_the_analytic_kernels():
    model = MLP(hidden=(10, 10, 10), out=2, activation="erf", W_std=1.2, b_std=0.05)
    x1 = np.random.default_rng(0).normal(size=(6, 3))
    x2 = np.random.default_rng(1).normal(size=(4, 3))
    nngp, ntk = analytic_kernels(x1, x2, hidden_layers=3, activation="erf", W_std=1.2, b_std=0.05)
    np.testing.assert_array_equal(model.kernel(x1, x2), ntk)
    np.testing.assert_array_equal(model.nngp(x1, x2), nngp)
    assert model.kernel(x1).shape == (6, 6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hidden": (16, 0)}, "hidden"),
        ({"hidden": (16, -2)}, "hidden"),
        ({"hidden": (16.0,)}, "hidden"),
        ({"hidden": "16"}, "hidden"),
        ({"out": 0}, "out"),
        ({"activation": "swish"}, "activation"),
        ({"W_std": 0.0}, "W_std"),
        ({"W_std": float("inf")}, "W_std"),
        ({"b_std": -1.0}, "b_std"),
        ({"b_std": "0.1"}, "b_std"),
        ({"activation_params": {"slope": 0.1}}, "activation_params"),  # relu takes none
        ({"activation_params": 3}, "activation_params"),
    ],
)
def test_bad_fields_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        MLP(**{"hidden": (16,), **kwargs})


def test_bad_params_and_in_dim():
    with pytest.raises(ValueError, match="^in_dim:"):
        NT_MODEL.init(jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="^nt_params:"):
        NT_MODEL.from_neural_tangents_params([(np.ones((5, 16)), np.ones((1, 16))), ()])
    bad = [(np.ones((5, 16)), np.ones(16)), (np.ones((16, 7)), np.ones(7)),
           (np.ones((7, 3)), np.ones(3))]  # fmt: skip
    with pytest.raises(ValueError, match="^nt_params:"):
        NT_MODEL.from_neural_tangents_params(bad)


def test_hidden_accepts_a_list():
    assert MLP(hidden=[4, 5]).hidden == (4, 5)
