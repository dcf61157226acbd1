"""The golden dynamics from neural-tangents 0.6.5 (``tests/data/nt_golden_dynamics.npz``).

Validates the stored data now, so that the coming solvers have a trusted target:
the stored kernels are ntkdyn's analytic kernels, and NT's cross-entropy
``predict.gradient_descent`` equals an independent numpy/scipy reference of
centralised cross-entropy gradient flow in ntkdyn's conventions. The
cross-entropy solver of issue 15 must match ``ce/fx_*_t`` with ``Q = 1``,
``continuous=True``, ``lr = ce/learning_rate / K`` and times ``ce/t`` (steps).
(The MSE ensemble data is checked in ``tests/test_initialisation.py``.)
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.integrate
from conftest import rel_err

from ntkdyn.kernels.analytic import analytic_kernels

GOLDEN = Path(__file__).parent / "data" / "nt_golden_dynamics.npz"


@pytest.fixture(scope="module")
def golden():
    # Deliberately not a skip: the reference data is part of the repository.
    assert GOLDEN.exists(), f"missing {GOLDEN}; run tests/data/make_nt_golden_dynamics.py"
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def test_metadata(golden):
    assert str(golden["meta/nt_version"]) == "0.6.5"
    assert str(golden["meta/jax_version"]).startswith("0.4.")


@pytest.mark.parametrize("pair", ["train_train", "test_train", "test_test"])
def test_stored_kernels_are_ntkdyn_analytic_kernels(golden, pair):
    """NT's analytic NTK and NNGP of the golden network equal ntkdyn's to 1e-6."""
    w_std, b_std, depth = golden["kernels/settings"]
    xs = {"train": golden["inputs/x_train"], "test": golden["inputs/x_test"]}
    first, second = pair.split("_")
    x2 = None if first == second else xs[second]
    nngp, ntk = analytic_kernels(xs[first], x2, hidden_layers=int(depth), W_std=w_std,
                                 b_std=b_std)
    assert rel_err(ntk, golden[f"kernels/ntk_{pair}"]) <= 1e-6
    assert rel_err(nngp, golden[f"kernels/nngp_{pair}"]) <= 1e-6


def _softmax(f):
    p = np.exp(f - f.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def _ce_flow(theta, theta_test, y, f0, f0_test, eta, t):
    r"""Centralised cross-entropy gradient flow in kernel space, ntkdyn's conventions.

    Loss ``L = (1/N) sum_i CE_i``, ``CE_i = -sum_k y_ik log softmax(f_i)_k``;
    ``d alpha/dt = -(eta/N) (softmax(f0 + Theta alpha) - y)`` (time in steps),
    outputs ``f = f0 + Theta alpha`` and ``f* = f0* + Theta* alpha``."""
    n, k = y.shape

    def rhs(_, a):
        return -(eta / n) * (_softmax(f0 + theta @ a.reshape(n, k)) - y).ravel()

    sol = scipy.integrate.solve_ivp(rhs, (0.0, t[-1]), np.zeros(n * k), method="DOP853",
                                    t_eval=t, rtol=1e-12, atol=1e-12)
    assert sol.success, sol.message
    alpha = sol.y.T.reshape(len(t), n, k)
    return f0 + theta @ alpha, f0_test + theta_test @ alpha


def _ce_steps(theta, theta_test, y, f0, f0_test, eta, steps):
    """Discrete centralised GD on the same loss: ``alpha <- alpha - (eta/N)(p - y)``."""
    n = len(y)
    alpha = np.zeros_like(y)
    out, out_t = [], []
    for k in range(max(steps) + 1):
        if k in steps:
            out.append(f0 + theta @ alpha)
            out_t.append(f0_test + theta_test @ alpha)
        alpha = alpha - (eta / n) * (_softmax(f0 + theta @ alpha) - y)
    return np.array(out), np.array(out_t)


def _ce_inputs(golden):
    y = golden["inputs/y_train"]
    eta = float(golden["ce/learning_rate"]) / y.shape[1]  # NT normalises by N*K, we by N
    return (golden["kernels/ntk_train_train"], golden["kernels/ntk_test_train"], y,
            golden["ce/f0_train"], golden["ce/f0_test"], eta)


def test_cross_entropy_reference_matches_neural_tangents(golden):
    """Independent scipy flow (eta = lr_nt / K, t in steps) equals NT's
    ``gradient_descent`` with ``-mean(log_softmax(fx) * y)`` to 1e-6 (NT's odeint
    tolerance is 1.4e-8; measured ~4e-8)."""
    t = golden["ce/t"]
    train, test = _ce_flow(*_ce_inputs(golden), t)
    assert rel_err(train, golden["ce/fx_train_t"]) <= 1e-6
    assert rel_err(test, golden["ce/fx_test_t"]) <= 1e-6
    # not vacuous: the logits move by far more than the tolerance
    assert rel_err(golden["ce/fx_test_t"][-1], golden["ce/fx_test_t"][0]) > 0.5
    # and NT's N*K normalisation matters: eta = lr_nt (normalising by N only) is far off
    theta, theta_t, y, f0, f0_t, eta = _ce_inputs(golden)
    wrong, _ = _ce_flow(theta, theta_t, y, f0, f0_t, eta * y.shape[1], t)
    assert rel_err(wrong, golden["ce/fx_train_t"]) > 1e-2


def test_cross_entropy_small_steps_approach_neural_tangents(golden):
    """Discrete cross-entropy GD with step eta/s, s t steps, tends to NT's flow like 1/s:
    what a discrete solver with ``lr = lr_nt / (K s)`` must reproduce."""
    theta, theta_t, y, f0, f0_t, eta = _ce_inputs(golden)
    t = golden["ce/t"][:4]  # 0, 1, 5, 20
    errs = []
    for s in (4, 8):
        steps = [int(round(ti * s)) for ti in t]
        train, _ = _ce_steps(theta, theta_t, y, f0, f0_t, eta / s, steps)
        errs.append(rel_err(train, golden["ce/fx_train_t"][:4]))
    assert errs[1] < 1e-2
    assert 1.7 < errs[0] / errs[1] < 2.3, errs
