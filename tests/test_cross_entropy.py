"""Softmax cross-entropy in kernel space (issue 15, discrete steps).

1. The kernel-space prediction equals brute-force parameter-space training of the
   linearised ReLU MLP (``conftest.make_linearised_net``) with the cross-entropy gradient
   ``(1/N_q) J_q^T s (softmax(s f_q) - Y_q)``, written here as a plain numpy loop over
   agents (DGD, ATC, CTA, gradient tracking, P2PL), to a relative 1e-8 for every agent,
   step and metric (observed ~1e-14), with the full empirical kernel; the traced kernel
   equals a full kernel ``Theta (x) I_K`` to 1e-12.
2. ``Q = 1`` is centralised cross-entropy GD: it equals the discrete numpy reference of
   ``tests/test_nt_golden_dynamics.py`` to 1e-10 and approaches neural-tangents' flow
   (golden file, ``lr = lr_nt / K``) at first order in the step.
4. Invalid inputs are ``ValueError`` naming the field.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_linearised_net, rel_err
from test_nt_golden_dynamics import GOLDEN, _ce_inputs, _ce_steps

import ntkdyn as nd
from ntkdyn import algorithms, graphs
from ntkdyn.dynamics import stability as spectrum
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.dynamics.run import cross_entropy_bound
from ntkdyn.prediction import predict_from_kernels

TOL = 1e-8
RING = graphs.mixing(graphs.topology("ring", 4))
STAR = graphs.mixing(graphs.topology("star", 4))


def _softmax(z):
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def _ce(out, y, s):
    z = s * out
    m = z.max(axis=-1)
    return m + np.log(np.exp(z - m[..., None]).sum(-1)) - (y * z).sum(-1)


@pytest.fixture(scope="module")
def cenet():
    # outputs of O(1): a scale where the softmax is far from linear
    return make_linearised_net(seed=3)


def ce_grad(net, q, delta, s):
    """grad L_q at theta0 + delta, L_q = (1/N_q) sum_{i in q} CE(softmax(s f_i), y_i)."""
    k = net.y.shape[1]
    own = net.agent == q
    f = net.outputs(delta)
    g = s * (_softmax(s * f) - net.y)  # dCE/df per sample
    rows = np.repeat(own, k)
    return net.jac[rows].T @ g[own].ravel() / own.sum()


def reference(net, w, lr, algorithm, steps, s=1.0, local=1, consensus=1):
    """Parameter-space training of the linearised net with cross-entropy; records every
    step (for P2PL after its local and after its consensus phase)."""
    q_count = w.shape[0]
    lr_v = np.broadcast_to(np.asarray(lr, float), (q_count,))[:, None]
    lr_c = float(np.mean(lr_v))
    p = net.jac.shape[1]
    th, thc = np.zeros((q_count, p)), np.zeros(p)
    rec = {k: [] for k in ("out", "out_test", "param", "cons", "central", "train_loss",
                           "test_loss", "local_loss", "objective", "train_acc", "test_acc")}

    def grads(t):
        return np.stack([ce_grad(net, q, t[q], s) for q in range(q_count)])

    def central_grad(t):
        return sum(ce_grad(net, q, t, s) for q in range(q_count)) / q_count

    def record(th, thc):
        out = np.stack([net.outputs(th[q]) for q in range(q_count)])
        out_t = np.stack([net.outputs(th[q], test=True) for q in range(q_count)])
        ce = _ce(out, net.y, s)
        rec["out"].append(out)
        rec["out_test"].append(out_t)
        rec["param"].append(np.linalg.norm(th, axis=1))
        rec["cons"].append(np.linalg.norm(th - th.mean(0), axis=1))
        rec["central"].append(np.linalg.norm(th - thc, axis=1))
        rec["train_loss"].append(ce.mean(-1))
        rec["test_loss"].append(_ce(out_t, net.y_test, s).mean(-1))
        shard = np.stack([ce[:, net.agent == p].mean(-1) for p in range(q_count)], -1)
        rec["local_loss"].append(np.diag(shard))  # L_q(theta_q)
        rec["objective"].append(shard.mean(-1))  # (1/Q) sum_p L_p(theta_q)
        rec["train_acc"].append((out.argmax(-1) == net.y.argmax(-1)).mean(-1))
        rec["test_acc"].append((out_t.argmax(-1) == net.y_test.argmax(-1)).mean(-1))

    if algorithm == "p2pl":
        record(th, thc)
        record(th, thc)
        for _ in range(steps):
            for _ in range(local):
                th = th - lr_v * grads(th)
                thc = thc - lr_c * central_grad(thc)
            record(th, thc)
            for _ in range(consensus):
                th = w @ th
            record(th, thc)
        return {k: np.asarray(v) for k, v in rec.items()}
    y = grads(th)  # gradient tracking (ATC form), y_0 = g_0
    g_old = y.copy()
    for k in range(steps + 1):
        record(th, thc)
        if k == steps:
            break
        if algorithm == "dgd":
            th = w @ th - lr_v * grads(th)
        elif algorithm == "atc":
            th = w @ (th - lr_v * grads(th))
        elif algorithm == "cta":
            phi = w @ th
            th = phi - lr_v * grads(phi)
        elif algorithm == "gradient_tracking":
            th = w @ (th - lr_v * y)
            g_new = grads(th)
            y = w @ (y + g_new - g_old)
            g_old = g_new
        else:
            raise ValueError(algorithm)
        thc = thc - lr_c * central_grad(thc)  # every schedule with W = [[1]] is GD here
    return {k: np.asarray(v) for k, v in rec.items()}


def _predict(net, w, lr, algorithm, steps, **kw):
    return predict_from_kernels(
        net.kernel_full, net.y, net.agent, w, lr, range(steps + 1), algorithm=algorithm,
        f0_train=net.f0, kernel_test_train=net.kernel_test_full, y_test=net.y_test,
        f0_test=net.f0_test, record_outputs=True, loss="cross_entropy", **kw)


def _check(traj, ref, tol=TOL):
    scale = np.max(ref["param"])
    checks = {"train_outputs": ("out", None), "test_outputs": ("out_test", None),
              "train_loss": ("train_loss", None), "test_loss": ("test_loss", None),
              "local_loss": ("local_loss", None), "objective": ("objective", None),
              "param_dist": ("param", None),
              "consensus_dist": ("cons", scale), "central_dist": ("central", scale)}
    for field, (key, floor) in checks.items():
        got, want = getattr(traj, field), ref[key]
        assert got.shape == want.shape, (field, got.shape, want.shape)
        err = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), floor or 0, 1e-300))
        assert err < tol, (field, err)
    np.testing.assert_allclose(traj.train_acc, ref["train_acc"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(traj.test_acc, ref["test_acc"], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- test 1
@pytest.mark.parametrize("name, algorithm, kw, w, lr, s", [
    ("dgd", "dgd", {}, RING, 0.4, 1.0),
    ("atc", "atc", {}, STAR, np.array([0.2, 0.5, 0.3, 0.4]), 1.0),
    ("cta", "cta", {}, RING, 0.3, 2.0),
    ("gradient_tracking", "gradient_tracking", {}, RING, 0.3, 1.0),
    ("p2pl", algorithms.p2pl(local_steps=3, consensus_steps=2), dict(local=3, consensus=2),
     RING, 0.3, 1.0),
])
def test_kernel_space_equals_parameter_space(cenet, name, algorithm, kw, w, lr, s):
    steps = 15
    traj = _predict(cenet, w, lr, algorithm, steps, logit_scale=s)
    assert traj.status == "ok"
    assert traj.metadata["loss"] == "cross_entropy"
    ref = reference(cenet, w, lr, name, steps, s=s, **kw)
    _check(traj, ref)
    # not vacuous: the loss moves, and the squared loss would give other outputs
    assert ref["train_loss"][-1].max() < 0.95 * ref["train_loss"][0].min()
    mse = predict_from_kernels(
        cenet.kernel_full, cenet.y, cenet.agent, w, lr, range(steps + 1), algorithm=algorithm,
        f0_train=cenet.f0, record_outputs=True)
    assert rel_err(mse.train_outputs, ref["out"]) > 1e-2


def test_traced_kernel_equals_full_kernel_with_identity_blocks(cenet):
    k = cenet.y.shape[1]
    theta = cenet.kernel_full[::k, ::k]  # J_0 J_0^T: one output's kernel, PSD
    theta_t = cenet.kernel_test_full[::k, ::k]
    eye = np.eye(k)
    common = dict(f0_train=cenet.f0, y_test=cenet.y_test, f0_test=cenet.f0_test,
                  record_outputs=True, loss="cross_entropy")
    for algorithm in ("dgd", "gradient_tracking", algorithms.p2pl(2, 1)):
        tr = predict_from_kernels(theta, cenet.y, cenet.agent, RING, 0.4, range(0, 13, 3),
                                  algorithm=algorithm, kernel_test_train=theta_t, **common)
        fu = predict_from_kernels(np.kron(theta, eye), cenet.y, cenet.agent, RING, 0.4,
                                  range(0, 13, 3), algorithm=algorithm,
                                  kernel_test_train=np.kron(theta_t, eye), **common)
        for f in ("train_outputs", "test_outputs", "train_loss", "test_loss", "param_dist",
                  "consensus_dist", "central_dist", "objective"):
            assert rel_err(getattr(tr, f), getattr(fu, f)) < 1e-12, f


def test_integer_labels_equal_one_hot(cenet):
    labels = cenet.y.argmax(1)
    a = _predict(cenet, RING, 0.4, "atc", 5)
    b = predict_from_kernels(
        cenet.kernel_full, labels, cenet.agent, RING, 0.4, range(6), algorithm="atc",
        f0_train=cenet.f0, kernel_test_train=cenet.kernel_test_full,
        y_test=cenet.y_test.argmax(1), f0_test=cenet.f0_test, record_outputs=True,
        loss="cross_entropy")
    assert rel_err(b.train_outputs, a.train_outputs) == 0.0
    assert rel_err(b.test_loss, a.test_loss) == 0.0


def test_sweep_and_stability_note(cenet):
    lrs = [0.2, 0.4]
    sw = nd.sweep_from_kernels(cenet.kernel_full, cenet.y, cenet.agent, RING, lrs, range(6),
                               algorithm="dgd", f0_train=cenet.f0, loss="cross_entropy")
    for lr, t in zip(lrs, sw, strict=True):
        one = predict_from_kernels(cenet.kernel_full, cenet.y, cenet.agent, RING, lr, range(6),
                                   f0_train=cenet.f0, loss="cross_entropy")
        assert rel_err(t.train_loss, one.train_loss) < 1e-12
        assert "softmax curvature" in t.metadata["stability"]
    # the stated bound is the squared-loss sufficient bound scaled by 2 / s^2
    p = make_problem(cenet.kernel_full, cenet.y, cenet.agent, RING, f0_train=cenet.f0,
                     loss="cross_entropy", logit_scale=2.0)
    bound = spectrum.sufficient_bound(p, "atc") * 2.0 / 4.0
    assert np.isfinite(bound) and bound > 0
    assert f"lr < {bound:.6g}" in cross_entropy_bound(p, "atc")


def test_a_deterministic_run_whose_loss_grew_is_unstable_from_its_trajectory():
    """Cross-entropy has no exact operator verdict: at lr = 1e6 the loss ended 1e5 times
    above its start with status 'ok'.  Now the trajectory decides, as for sampled runs;
    a run that trains stays 'ok'."""
    x = np.random.default_rng(3).normal(size=(12, 4))
    kernel, labels = x @ x.T, np.arange(12) % 3
    w = np.full((3, 3), 1 / 3)
    agent = np.arange(12) % 3
    bad = predict_from_kernels(kernel, labels, agent, w, 1e6, range(0, 41, 4),
                               loss="cross_entropy")
    loss = bad.network_mean("train_loss")
    assert loss[-1] > 10 * loss.min() and loss[-1] > loss[0]
    assert bad.status == "unstable"
    assert bad.metadata["growing"]["factor_max"] == pytest.approx(loss[-1] / loss.min())
    assert "from the trajectory" in bad.metadata["growing"]["words"]
    good = predict_from_kernels(kernel, labels, agent, w, 0.05, range(0, 41, 4),
                                loss="cross_entropy")
    assert good.status == "ok" and "growing" not in good.metadata
    sw = nd.sweep_from_kernels(kernel, labels, agent, w, [0.05, 1e6], range(0, 41, 4),
                               loss="cross_entropy")
    assert [t.status for t in sw] == ["ok", "unstable"]


# --------------------------------------------------------------------------- test 2
@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def test_single_agent_is_centralised_cross_entropy_gd(golden):
    """Q = 1: the prediction is centralised CE GD (numpy reference, 1e-10) and approaches
    neural-tangents' gradient flow at first order in the step (error halves per halving,
    <= 1e-2 at the finest step)."""
    theta, theta_t, y, f0, f0_t, eta = _ce_inputs(golden)
    t = golden["ce/t"][:4]  # 0, 1, 5, 20
    errs = []
    for s in (4, 8, 16):
        steps = [int(round(ti * s)) for ti in t]
        traj = predict_from_kernels(
            theta, y, np.zeros(len(y), int), np.ones((1, 1)), eta / s, steps, f0_train=f0,
            kernel_test_train=theta_t, y_test=golden["inputs/y_test"], f0_test=f0_t,
            record_outputs=True, loss="cross_entropy")
        ref, ref_t = _ce_steps(theta, theta_t, y, f0, f0_t, eta / s, steps)
        assert rel_err(traj.train_outputs[:, 0], ref) <= 1e-10
        assert rel_err(traj.test_outputs[:, 0], ref_t) <= 1e-10
        assert np.max(traj.central_dist) <= 1e-12 * max(np.max(traj.param_dist), 1.0)
        errs.append(max(rel_err(traj.train_outputs[:, 0], golden["ce/fx_train_t"][:4]),
                        rel_err(traj.test_outputs[:, 0], golden["ce/fx_test_t"][:4])))
    assert errs[-1] <= 1e-2, errs
    for a, b in zip(errs, errs[1:], strict=False):
        assert 1.7 < a / b < 2.3, errs


# --------------------------------------------------------------------------- test 4
def test_invalid_inputs(cenet):
    args = (cenet.kernel_full, cenet.y, cenet.agent, RING, 0.3, range(3))
    with pytest.raises(ValueError, match=r"loss: expected one of \('mse', 'cross_entropy'\)"):
        predict_from_kernels(*args, loss="hinge")
    soft = np.full_like(cenet.y, 1.0 / cenet.y.shape[1])
    with pytest.raises(ValueError, match="y_train: loss='cross_entropy' expects one-hot"):
        predict_from_kernels(cenet.kernel_full, soft, *args[2:], loss="cross_entropy")
    with pytest.raises(ValueError, match="y_train: loss='cross_entropy' expects one-hot"):
        predict_from_kernels(cenet.kernel_full, cenet.y.argmax(1) - 0.5, *args[2:],
                             loss="cross_entropy")
    with pytest.raises(ValueError, match="y_test: loss='cross_entropy' expects one-hot"):
        predict_from_kernels(*args, loss="cross_entropy", kernel_test_train=cenet.
                             kernel_test_full, y_test=cenet.y_test * 2.0)
    for bad in (0.0, -1.0, np.inf, "x"):
        with pytest.raises(ValueError, match="logit_scale: expected a finite number > 0"):
            predict_from_kernels(*args, loss="cross_entropy", logit_scale=bad)
    # continuous=True with cross-entropy is now the adaptive flow (test_cross_entropy_flow.py)
    assert "flow" in predict_from_kernels(*args, loss="cross_entropy",
                                          continuous=True).metadata
    p = make_problem(cenet.kernel_full, cenet.y, cenet.agent, RING, loss="cross_entropy")
    with pytest.raises(ValueError, match="loss: the fixed point is defined for loss='mse' only"):
        nd.fixed_point(p, "dgd", 0.3)
    # stability with cross-entropy is now the report of the linearisation at f_0
    # (tests/test_ce_stability.py), no longer an error
    assert "linearised at" in nd.stability(p, "dgd", 0.3).note
    from ntkdyn.dynamics import solver
    with pytest.raises(ValueError, match="reference: 'eigen' is for loss='mse' only"):
        solver.evolve(p, algorithms.get_algorithm("dgd"), np.full((1, 4), 0.3), np.arange(3),
                      reference="eigen")


def test_pipeline_passes_the_loss_through():
    data = nd.data.synthetic(n_train=16, n_test=8, dim=4, classes=3, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="iid", seed=0)
    arch = nd.models.MLP(hidden=(64,), out=3)
    traj = nd.predict(arch, parts, RING, lr=0.5, steps=range(0, 11, 5), loss="cross_entropy",
                      f0="mean")  # f0 = 0 (the default is now one random network)
    assert traj.metadata["loss"] == "cross_entropy"
    assert np.allclose(traj.train_loss[0], np.log(3.0))  # f0 = 0: uniform softmax
    p = nd.build_problem(arch, parts, RING, loss="cross_entropy")
    same = nd.predict_from_kernels(p.kernel, p.y_train, np.repeat(np.arange(4), p.counts),
                                   RING, 0.5, range(0, 11, 5), kernel_test_train=p.kernel_test,
                                   y_test=p.y_test, loss="cross_entropy")
    assert rel_err(same.test_loss, traj.test_loss) < 1e-12
