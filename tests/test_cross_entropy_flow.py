"""Softmax cross-entropy gradient flow (issue 15, ``continuous=True``; ``ntkdyn.dynamics.flow``).

1. ``Q = 1``: the flow equals neural-tangents 0.6.5's ``predict.gradient_descent`` with its
   cross-entropy loss (golden file ``tests/data/nt_golden_dynamics.npz``, made by
   ``tests/data/make_nt_golden_dynamics.py``; NT normalises by ``N K``, so
   ``eta = lr_nt / K`` and the times are the same numbers) to 1e-6 relative on the train
   and test logits at every stored time up to t = 400 (NT's own odeint tolerance is
   1.4e-8; measured ~7e-9).
2. Discrete cross-entropy GD with step ``eta/m`` (``m t`` steps) converges to the flow at
   first order: the error halves per doubling of ``m``.
3. Decentralised: DGD's flow is the limit of lazy DGD (``W_m = I + (W - I)/m``, rate
   ``eta/m``), which is Euler with step ``1/m``; ATC's and gradient tracking's flows are the
   limits of their relaxed iterations ``x + (step(x) - x)/m``; error ``O(1/m)`` (ratios in
   [1.7, 2.3], and ``m * err`` bounded) on outputs and distances, per-agent rates included.
4. What is not supported is a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from conftest import make_linearised_net, rel_err
from test_nt_golden_dynamics import GOLDEN, _ce_inputs

from ntkdyn import algorithms, graphs
from ntkdyn.dynamics import flow
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.prediction import predict_from_kernels, sweep_from_kernels

RING = graphs.mixing(graphs.topology("ring", 4))


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def cenet():
    return make_linearised_net(seed=3)


def _single(golden, lr, steps, **kw):
    theta, theta_t, y, f0, f0_t, _ = _ce_inputs(golden)
    return predict_from_kernels(
        theta, y, np.zeros(len(y), int), np.ones((1, 1)), lr, steps, f0_train=f0,
        kernel_test_train=theta_t, y_test=golden["inputs/y_test"], f0_test=f0_t,
        record_outputs=True, loss="cross_entropy", **kw)


def _ce(f, y):
    z = f - f.max(-1, keepdims=True)
    return (np.log(np.exp(z).sum(-1)) - (y * z).sum(-1)).mean(-1)


# --------------------------------------------------------------------------- 1
def test_single_agent_flow_matches_neural_tangents(golden):
    eta = _ce_inputs(golden)[-1]
    t = golden["ce/t"]  # 0, 1, 5, 20, 100, 400
    traj = _single(golden, eta, t, continuous=True)
    assert traj.status == "ok" and traj.continuous
    np.testing.assert_array_equal(traj.steps, t)
    assert rel_err(traj.train_outputs[:, 0], golden["ce/fx_train_t"]) <= 1e-6
    assert rel_err(traj.test_outputs[:, 0], golden["ce/fx_test_t"]) <= 1e-6
    # not vacuous: the logits move by far more than the tolerance
    assert rel_err(golden["ce/fx_test_t"][-1], golden["ce/fx_test_t"][0]) > 0.5
    # the records are the discrete path's: the trained loss of the stored outputs
    assert rel_err(traj.train_loss[:, 0], _ce(golden["ce/fx_train_t"], golden["inputs/y_train"])) \
        <= 1e-6
    assert rel_err(traj.test_loss[:, 0], _ce(golden["ce/fx_test_t"], golden["inputs/y_test"])) \
        <= 1e-6
    assert np.max(traj.central_dist) <= 1e-12 * np.max(traj.param_dist)
    meta = traj.metadata["flow"]
    assert meta["solver"] == "diffrax.Tsit5" and meta["result"] == "successful"
    assert (meta["rtol"], meta["atol"]) == (flow.RTOL, flow.ATOL)
    assert 0 < meta["accepted_steps"] <= meta["solver_steps"] < flow.MAX_STEPS
    assert "gradient flow" in traj.metadata["stability"]


# --------------------------------------------------------------------------- 2
def test_small_steps_converge_to_the_flow_at_first_order(golden):
    eta = _ce_inputs(golden)[-1]
    t = golden["ce/t"]  # the flow of test 1 (same shapes: no new compilation)
    ode = _single(golden, eta, t, continuous=True)
    errs = []
    for m in (2, 4, 8):
        disc = _single(golden, eta / m, [int(round(ti * m)) for ti in t])
        errs.append(max(rel_err(disc.train_outputs, ode.train_outputs),
                        rel_err(disc.test_outputs, ode.test_outputs)))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), errs
    assert errs[-1] < 1e-2, errs


# --------------------------------------------------------------------------- 3
def _compare(a, b):
    scale = max(np.max(b.param_dist), 1e-300)
    return max(rel_err(a.train_outputs, b.train_outputs), rel_err(a.test_outputs, b.test_outputs),
               float(np.max(np.abs(a.consensus_dist - b.consensus_dist))) / scale,
               float(np.max(np.abs(a.central_dist - b.central_dist))) / scale,
               rel_err(a.test_loss, b.test_loss))


def _euler_errors(net, lr, times, discrete, algorithm, ms=(64, 128, 256)):
    """Errors of the step-``1/m`` iterations ``discrete(m) -> (W, lr, algorithm)`` against
    ``algorithm``'s flow at ``times``."""
    common = dict(f0_train=net.f0, kernel_test_train=net.kernel_test_full, y_test=net.y_test,
                  f0_test=net.f0_test, record_outputs=True, loss="cross_entropy")
    ode = predict_from_kernels(net.kernel_full, net.y, net.agent, RING, lr, times,
                               algorithm=algorithm, continuous=True, **common)
    assert ode.status == "ok"
    assert np.max(ode.consensus_dist) > 1e-2 * np.max(ode.param_dist)  # not consensual
    errs = []
    for m in ms:
        w, lr_m, algo_m = discrete(m)
        disc = predict_from_kernels(net.kernel_full, net.y, net.agent, w, lr_m,
                                    [int(round(t * m)) for t in times], algorithm=algo_m,
                                    **common)
        errs.append(_compare(disc, ode))
    return np.array(errs)


TIMES = np.array([0.0, 0.5, 2.0, 4.0])


def test_dgd_flow_is_the_limit_of_lazy_dgd(cenet):
    lr = np.array([0.4, 0.2, 0.3, 0.5])  # per-agent rates

    def lazy(m):
        return np.eye(4) + (RING - np.eye(4)) / m, lr / m, "dgd"

    errs = _euler_errors(cenet, lr, TIMES, lazy, "dgd")
    ratios = errs[:-1] / errs[1:]
    assert np.all((ratios > 1.7) & (ratios < 2.3)), errs
    assert errs[-1] < 1e-3, errs  # m = 256 substeps per unit time


@pytest.mark.slow  # one compilation per m and schedule: ~10 s of CPU each
@pytest.mark.parametrize("base", ["atc", "gradient_tracking"])
def test_flow_is_the_limit_of_relaxed_iterations(cenet, base):
    algo = algorithms.get_algorithm(base)

    def relaxed(m):
        def step(x, ops):
            return jax.tree.map(lambda u, v: u + (v - u) / m, x, algo.step(x, ops))
        return RING, 0.4, dataclasses.replace(algo, name=f"relaxed-{base}-{m}", step=step)

    errs = _euler_errors(cenet, 0.4, TIMES, relaxed, base, ms=(32, 64, 128))
    ratios = errs[:-1] / errs[1:]
    assert np.all((ratios > 1.7) & (ratios < 2.3)), errs


def test_sweep_shares_one_integration(cenet):
    common = dict(f0_train=cenet.f0, kernel_test_train=cenet.kernel_test_full,
                  y_test=cenet.y_test, f0_test=cenet.f0_test, record_outputs=True,
                  loss="cross_entropy", continuous=True)
    lrs = [0.2, 0.5]
    sw = sweep_from_kernels(cenet.kernel_full, cenet.y, cenet.agent, RING, lrs, TIMES,
                            algorithm="dgd", **common)
    for lr, t in zip(lrs, sw, strict=True):
        one = predict_from_kernels(cenet.kernel_full, cenet.y, cenet.agent, RING, lr, TIMES,
                                   algorithm="dgd", **common)
        assert rel_err(t.train_outputs, one.train_outputs) < 1e-8
        assert rel_err(t.test_loss, one.test_loss) < 1e-8


# --------------------------------------------------------------------------- 4
def test_unsupported_is_an_error_naming_the_argument(cenet):
    args = (cenet.kernel_full, cenet.y, cenet.agent, RING, 0.3, [0.0, 1.0])
    kw = dict(loss="cross_entropy", continuous=True)
    with pytest.raises(ValueError, match="^continuous: the gradient flow is defined for "
                                         "single-phase schedules"):
        predict_from_kernels(*args, algorithm=algorithms.p2pl(2, 1), **kw)
    # devices= is accepted now (sharded flow: tests/test_sharding.py on 4 devices)
    one = predict_from_kernels(*args, devices=jax.devices()[:1], **kw)
    np.testing.assert_allclose(one.train_loss, predict_from_kernels(*args, **kw).train_loss,
                               rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="^continuous: the gradient flow is for full-batch"):
        predict_from_kernels(*args, batch_size=2, **kw)
    p = make_problem(cenet.kernel_full, cenet.y, cenet.agent, RING, loss="cross_entropy")
    dgd = algorithms.get_algorithm("dgd")
    for name, bad in (("rtol", 0.0), ("atol", -1.0), ("rtol", "x"), ("method", "Euler"),
                      ("max_steps", 0)):
        with pytest.raises(ValueError, match=f"^{name}: expected"):
            flow.evolve(p, dgd, np.full((1, 4), 0.3), np.array([0.0, 1.0]), **{name: bad})


@pytest.mark.slow
def test_a_run_the_solver_cannot_finish_is_reported(cenet):
    p = make_problem(cenet.kernel_full, cenet.y, cenet.agent, RING, f0_train=cenet.f0,
                     loss="cross_entropy")
    raw = flow.evolve(p, algorithms.get_algorithm("dgd"), np.full((1, 4), 0.3),
                      np.array([0.0, 1.0, 50.0]), max_steps=4)
    assert raw["flow"]["result"] == "stopped: max_steps = 4 reached"
    assert raw["diverged"][:, 0].tolist() == [False, True, True] or \
        raw["diverged"][:, 0].tolist() == [False, False, True]
    assert raw["diverged_at"][0] in (1.0, 50.0)
    assert np.isfinite(raw["train_loss"][0]).all()
