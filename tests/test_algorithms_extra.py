"""New schedules (issue 6) against brute-force training of the linearised network.

P2PL (local steps), gradient tracking (DIGing), EXTRA, heavy-ball momentum,
time-varying (periodic) and random gossip mixing.  The references below are
plain numpy loops in parameter space over an explicit Jacobian, written from
the published update rules (EXTRA in its original two-step form, not the
``(x, z)`` form the library uses), so agreement is evidence.

Tolerances: every recorded quantity (outputs, losses, distances, the
after-local / after-consensus records) agrees to a relative 1e-8 of its largest
value (observed ~1e-14); reductions are checked to 1e-12 (identical arithmetic up
to round-off) or 1e-10 (mathematically equal, different arithmetic).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rel_err

from ntkdyn import algorithms, graphs
from ntkdyn.prediction import predict_from_kernels

TOL = 1e-8


def _predict(net, w, lr, algorithm, steps, **kw):
    return predict_from_kernels(
        net.kernel_full, net.y, net.agent, w, lr, range(steps + 1), algorithm=algorithm,
        f0_train=net.f0, kernel_test_train=net.kernel_test_full, y_test=net.y_test,
        f0_test=net.f0_test, record_outputs=True, **kw)


# --------------------------------------------------------------------------- references
class Reference:
    """Parameter-space training of the linearised net with any mixing sequence.

    ``mixing(e)`` is the matrix of communication event ``e``.  Records every step (and,
    for P2PL, after the local phase and after the consensus phase of every round).
    """

    def __init__(self, net, mixing, lr, q_count):
        self.net, self.mixing, self.q = net, mixing, q_count
        self.lr = np.broadcast_to(np.asarray(lr, float), (q_count,))
        self.events = 0
        self.rec = {k: [] for k in ("out", "out_test", "param", "cons", "central",
                                    "train_loss", "test_loss")}

    def grads(self, th):
        return np.stack([self.net.grad(q, th[q]) for q in range(self.q)])

    def central_grad(self, thc):
        return sum(self.net.grad(q, thc) for q in range(self.q)) / self.q

    def mix(self, th):
        w = self.mixing(self.events)
        return w @ th

    def record(self, th, thc):
        net = self.net
        out = np.stack([net.outputs(th[q]) for q in range(self.q)])
        out_t = np.stack([net.outputs(th[q], test=True) for q in range(self.q)])
        r = self.rec
        r["out"].append(out)
        r["out_test"].append(out_t)
        r["param"].append(np.linalg.norm(th, axis=1))
        r["cons"].append(np.linalg.norm(th - th.mean(0), axis=1))
        r["central"].append(np.linalg.norm(th - thc, axis=1))
        r["train_loss"].append(0.5 * ((out - net.y) ** 2).sum(-1).mean(-1))
        r["test_loss"].append(0.5 * ((out_t - net.y_test) ** 2).sum(-1).mean(-1))

    def result(self):
        return {k: np.stack(v) for k, v in self.rec.items()}


def run_reference(net, mixing, lr, algorithm, steps, q_count=4, beta=0.0, local=1,
                  consensus=1):
    ref = Reference(net, mixing, lr, q_count)
    lr_v, lr_c = ref.lr[:, None], ref.lr.mean()
    p = net.jac.shape[1]
    th, thc = np.zeros((q_count, p)), np.zeros(p)
    if algorithm == "p2pl":
        ref.record(th, thc)
        ref.record(th, thc)
        for _ in range(steps):
            for _ in range(local):
                th = th - lr_v * ref.grads(th)
                thc = thc - lr_c * ref.central_grad(thc)
            ref.record(th, thc)
            for _ in range(consensus):
                th = ref.mix(th)
                ref.events += 1
            ref.record(th, thc)
        return ref.result()
    # single-phase schedules
    th_prev, g_prev, thc_prev = th.copy(), None, thc.copy()
    y = ref.grads(th)  # gradient tracking
    g_old = y.copy()
    for k in range(steps + 1):
        ref.record(th, thc)
        if k == steps:
            break
        g = ref.grads(th)
        if algorithm in ("dgd", "atc", "cta"):
            if algorithm == "dgd":
                new = ref.mix(th) - lr_v * g
            elif algorithm == "atc":
                new = ref.mix(th - lr_v * g)
            else:
                phi = ref.mix(th)
                new = phi - lr_v * ref.grads(phi)
        elif algorithm == "diging":  # Nedic, Olshevsky, Shi 2017
            w = ref.mixing(ref.events)
            new = w @ th - lr_v * y
            g_new = ref.grads(new)
            y = w @ y + g_new - g_old
            g_old = g_new
        elif algorithm == "gradient_tracking":  # ATC form (NEXT; Di Lorenzo & Scutari 2016)
            w = ref.mixing(ref.events)
            new = w @ (th - lr_v * y)
            g_new = ref.grads(new)
            y = w @ (y + g_new - g_old)
            g_old = g_new
        elif algorithm == "extra":  # Shi, Ling, Wu, Yin 2015, W~ = (I + W)/2
            w = ref.mixing(ref.events)
            if k == 0:
                new = w @ th - lr_v * g
            else:
                w_t = 0.5 * (np.eye(q_count) + w)
                new = (np.eye(q_count) + w) @ th - w_t @ th_prev - lr_v * (g - g_prev)
            g_prev = g
        elif algorithm == "momentum":  # heavy ball on DGD
            new = ref.mix(th) - lr_v * g + beta * (th - th_prev)
        else:
            raise ValueError(algorithm)
        th_prev, th = th, new
        ref.events += 1
        gc = ref.central_grad(thc)
        if algorithm == "momentum":
            thc, thc_prev = thc - lr_c * gc + beta * (thc - thc_prev), thc
        else:
            thc = thc - lr_c * gc
    return ref.result()


def _check(traj, ref, tol=TOL):
    scale = np.max(ref["param"])
    checks = {"train_outputs": ("out", None), "test_outputs": ("out_test", None),
              "train_loss": ("train_loss", None), "test_loss": ("test_loss", None),
              "param_dist": ("param", None), "consensus_dist": ("cons", scale),
              "central_dist": ("central", scale)}
    for field, (key, floor) in checks.items():
        got, want = getattr(traj, field), ref[key]
        assert got.shape == want.shape, (field, got.shape, want.shape)
        err = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), floor or 0, 1e-300))
        assert err < tol, (field, err)


RING = graphs.mixing(graphs.topology("ring", 4))
STAR = graphs.mixing(graphs.topology("star", 4))


# --------------------------------------------------------------------------- test 1
@pytest.mark.parametrize("name, algorithm, kw", [
    ("p2pl", algorithms.p2pl(local_steps=3, consensus_steps=2), dict(local=3, consensus=2)),
    ("gradient_tracking", "gradient_tracking", {}),
    ("diging", "diging", {}),
    ("extra", "extra", {}),
    ("momentum", algorithms.momentum(beta=0.6), dict(beta=0.6)),
])
def test_new_schedules_equal_parameter_space(net, name, algorithm, kw):
    steps, lr = 12, 0.25
    traj = _predict(net, RING, lr, algorithm, steps)
    assert traj.status == "ok"
    ref = run_reference(net, lambda e: RING, lr, name, steps, **kw)
    _check(traj, ref)
    if name == "p2pl":  # records after each phase: (local, consensus) per round
        assert traj.phases == ["local", "consensus"]
        np.testing.assert_array_equal(traj.phase, np.tile([0, 1], steps + 1))
        np.testing.assert_array_equal(traj.steps, np.repeat(np.arange(steps + 1), 2))
        local, cons = traj.at_phase("local"), traj.at_phase("consensus")
        assert rel_err(local.test_loss, ref["test_loss"][0::2]) < TOL
        assert rel_err(cons.test_loss, ref["test_loss"][1::2]) < TOL
        assert np.max(np.abs(local.consensus_dist - cons.consensus_dist)) > 1e-3


def test_per_agent_rates_for_augmented_schedules(net):
    lr = np.array([0.1, 0.3, 0.2, 0.25])
    for name in ("gradient_tracking", "extra"):
        traj = _predict(net, STAR, lr, name, 10)
        _check(traj, run_reference(net, lambda e: STAR, lr, name, 10))


@pytest.mark.parametrize("name, algorithm, kw", [
    ("cta", "cta", {}),
    ("p2pl", algorithms.p2pl(local_steps=2, consensus_steps=3), dict(local=2, consensus=3)),
    ("gradient_tracking", "gradient_tracking", {}),
])
def test_periodic_mixing_equals_parameter_space(net, name, algorithm, kw):
    seq = graphs.periodic([RING, STAR])
    traj = _predict(net, seq, 0.25, algorithm, 10)
    ref = run_reference(net, lambda e: (RING, STAR)[e % 2], 0.25, name, 10, **kw)
    _check(traj, ref)


@pytest.mark.parametrize("process, name", [
    (graphs.random_edges(graphs.topology("complete", 4), p=0.5, seed=3), "atc"),
    (graphs.one_random_edge(graphs.topology("ring", 4), seed=1), "gradient_tracking"),
    (graphs.random_edges(graphs.topology("ring", 4), p=0.7, seed=0), "p2pl"),
])
def test_random_gossip_samples_equal_parameter_space(net, process, name):
    """Each sampled sequence s is the matrices ``process.matrix(e, s)``; the prediction's
    fields are the means over the samples of each metric."""
    algorithm = algorithms.p2pl(2, 2) if name == "p2pl" else name
    kw = dict(local=2, consensus=2) if name == "p2pl" else {}
    samples = 3
    traj = _predict(net, process, 0.25, algorithm, 8, samples=samples)
    refs = [run_reference(net, lambda e, s=s: process.matrix(e, s), 0.25, name, 8, **kw)
            for s in range(samples)]
    mean = {k: np.mean([r[k] for r in refs], axis=0) for k in refs[0]}
    _check(traj, mean)
    for k, (field, key) in {"train_loss": ("train_loss", "train_loss"),
                            "param_dist": ("param_dist", "param")}.items():
        lo, hi = traj.band(field, 0.05, 0.95)
        stack = np.stack([r[key] for r in refs])
        assert np.all(lo >= stack.min(0) - 1e-12) and np.all(hi <= stack.max(0) + 1e-12), k


# --------------------------------------------------------------------------- test 2
def test_p2pl_one_local_one_consensus_step_is_atc(net):
    p2pl = _predict(net, RING, 0.3, algorithms.p2pl(1, 1), 15).at_phase("consensus")
    atc = _predict(net, RING, 0.3, "atc", 15)
    for f in ("train_outputs", "test_outputs", "param_dist", "consensus_dist", "central_dist"):
        assert rel_err(getattr(p2pl, f), getattr(atc, f)) < 1e-12, f


def test_periodic_sequence_of_one_matrix_is_static(net):
    seq = _predict(net, graphs.periodic([RING]), 0.3, "cta", 15)
    static = _predict(net, RING, 0.3, "cta", 15)
    for f in ("train_outputs", "test_outputs", "param_dist", "consensus_dist", "central_dist"):
        assert rel_err(getattr(seq, f), getattr(static, f)) < 1e-12, f


def test_gradient_tracking_on_complete_graph_is_centralised_gd(net):
    """W = 11^T/Q: x1 = mean(x0 - eta g0) is the GD step and y stays the mean gradient, so
    every agent follows centralised GD (the ATC form; DIGing does not: it steps with the
    local y before averaging)."""
    w = np.full((4, 4), 0.25)
    gt = _predict(net, w, 0.3, "gradient_tracking", 20)
    ref = Reference(net, lambda e: w, 0.3, 4)
    thc = np.zeros(net.jac.shape[1])
    for k in range(21):  # centralised GD in parameter space
        assert rel_err(gt.train_outputs[k], np.stack([net.outputs(thc)] * 4)) < 1e-10
        thc = thc - 0.3 * ref.central_grad(thc)
    assert np.max(gt.central_dist) < 1e-10 * np.max(gt.param_dist)
    assert rel_err(gt.train_loss, np.stack([gt.central_train_loss] * 4, axis=1)) < 1e-10
    diging = _predict(net, w, 0.3, "diging", 20)
    assert np.max(diging.central_dist) > 1e-3 * np.max(diging.param_dist)


def test_random_gossip_with_p_one_is_the_static_graph(net):
    ring = graphs.topology("ring", 4)
    gossip = _predict(net, graphs.random_edges(ring, p=1.0, seed=5), 0.3, "dgd", 15, samples=2)
    static = _predict(net, RING, 0.3, "dgd", 15)
    for f in ("train_outputs", "test_outputs", "param_dist", "consensus_dist", "central_dist",
              "test_loss"):
        assert rel_err(getattr(gossip, f), getattr(static, f)) < 1e-10, f
        assert rel_err(getattr(gossip.expected, f), getattr(static, f)) < 1e-10, f
    assert np.max(np.abs(gossip.quantiles["test_loss"] - static.test_loss[None])) < 1e-10


def test_momentum_zero_is_dgd(net):
    hb = _predict(net, RING, 0.3, algorithms.momentum(0.0), 10)
    dgd = _predict(net, RING, 0.3, "dgd", 10)
    assert rel_err(hb.train_outputs, dgd.train_outputs) < 1e-12


# --------------------------------------------------------------------------- issue 13
def _published_update(name: str, net, w: np.ndarray, lr: float, steps: int) -> np.ndarray:
    """Each named algorithm's update as its source publishes it, one agent at a time, in
    parameter space on the linearised net (a least-squares problem): returns the agents'
    training outputs after every step (every round for P2PL), ``(steps + 1, Q, N, K)``.

    Written from the formulas (no ntkdyn schedule code): ``x_i`` agent i's parameters,
    ``g_i(.)`` its local gradient, ``sum_j W_ij`` its neighbours' average.
    """
    q, p = w.shape[0], net.jac.shape[1]

    def g(i, v):
        return net.grad(i, v)

    def avg(i, vs):
        return sum(w[i, j] * vs[j] for j in range(q))

    x = [np.zeros(p) for _ in range(q)]
    y = [g(i, x[i]) for i in range(q)]  # trackers start at the local gradients
    x_prev = [v.copy() for v in x]  # EXTRA's x^{k-1}, heavy ball's x^-
    out = [np.stack([net.outputs(v) for v in x])]
    for k in range(steps):
        if name == "dgd":  # Nedic & Ozdaglar 2009
            new = [avg(i, x) - lr * g(i, x[i]) for i in range(q)]
        elif name == "atc":  # Sayed 2014, adapt then combine
            psi = [x[i] - lr * g(i, x[i]) for i in range(q)]
            new = [avg(i, psi) for i in range(q)]
        elif name == "cta":  # Sayed 2014, combine then adapt
            phi = [avg(i, x) for i in range(q)]
            new = [phi[i] - lr * g(i, phi[i]) for i in range(q)]
        elif name == "gd":
            new = [x[i] - lr * g(i, x[i]) for i in range(q)]
        elif name == "p2pl":  # Pranav & Moura: 5 local steps, then 1 combine (the default)
            loc = list(x)
            for _ in range(5):
                loc = [loc[i] - lr * g(i, loc[i]) for i in range(q)]
            new = [avg(i, loc) for i in range(q)]
        elif name in ("gradient_tracking", "atc_diging", "aug_dgm", "gt"):
            # ATC-DIGing (Nedic et al. 2017) / Aug-DGM (Xu et al. 2015)
            new = [avg(i, [x[j] - lr * y[j] for j in range(q)]) for i in range(q)]
            y = [avg(i, [y[j] + g(j, new[j]) - g(j, x[j]) for j in range(q)])
                 for i in range(q)]
        elif name == "next":  # NEXT / SONATA, linear surrogate (Di Lorenzo & Scutari 2016)
            new = [avg(i, [x[j] - lr * y[j] for j in range(q)]) for i in range(q)]
            y = [avg(i, y) + g(i, new[i]) - g(i, x[i]) for i in range(q)]
        elif name == "diging":  # Nedic, Olshevsky, Shi 2017
            new = [avg(i, x) - lr * y[i] for i in range(q)]
            y = [avg(i, y) + g(i, new[i]) - g(i, x[i]) for i in range(q)]
        elif name == "extra":  # Shi, Ling, Wu, Yin 2015, two-step form, W~ = (I + W)/2
            if k == 0:
                new = [avg(i, x) - lr * g(i, x[i]) for i in range(q)]
            else:
                new = [x[i] + avg(i, x) - 0.5 * (x_prev[i] + avg(i, x_prev))
                       - lr * (g(i, x[i]) - g(i, x_prev[i])) for i in range(q)]
        elif name == "momentum":  # Polyak heavy ball on DGD, beta = 0.9 (the default)
            new = [avg(i, x) - lr * g(i, x[i]) + 0.9 * (x[i] - x_prev[i]) for i in range(q)]
        else:
            raise AssertionError(f"no published update written for {name!r}")
        x_prev, x = x, new
        out.append(np.stack([net.outputs(v) for v in x]))
    return np.stack(out)


@pytest.mark.parametrize("name", list(algorithms.NAMES) + sorted(algorithms.ALIASES))
def test_every_named_algorithm_equals_its_published_update(net, name):
    """Issue 13: a name means what the literature means.  Every name ``get_algorithm``
    accepts (aliases included), run by the kernel-space solver with its defaults, equals
    the published update run agent by agent in parameter space, to 1e-10 of the largest
    output (float64; observed ~1e-14)."""
    steps, lr = 10, 0.1
    traj = _predict(net, RING, lr, name, steps)
    assert traj.status == "ok"
    got = traj.train_outputs
    if traj.phases:  # P2PL records after each phase: compare after the consensus phase
        got = traj.at_phase("consensus").train_outputs
    want = _published_update(name, net, RING, lr, steps)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-10, name


def test_next_and_atc_gradient_tracking_are_different_algorithms(net):
    """NEXT mixes the tracker before adding the gradient change (``y+ = W y + g+ - g``), the
    ATC form after (``y+ = W (y + g+ - g)``): the same x-update, different trajectories.
    On the ring of 4 at lr 0.25 the agents' parameter distances differ by up to 0.24 % of
    their largest value over 10 steps (measured; 0.11 % over 30 steps, and up to 0.73 % of
    the ATC form's own distance at step 2), far above round-off.  On the
    complete graph both are centralised GD (``x+ = mean(x - eta y)`` sees only the mean
    tracker, which both keep equal to the mean gradient); DIGing is not."""
    steps = 10
    gt = _predict(net, RING, 0.25, "gradient_tracking", steps)
    nxt = _predict(net, RING, 0.25, "next", steps)
    gap = float(np.max(np.abs(gt.param_dist - nxt.param_dist)) / np.max(gt.param_dist))
    assert 1e-3 < gap < 1e-2, gap
    assert np.allclose(gt.train_outputs[1], nxt.train_outputs[1], rtol=0, atol=1e-12)
    w = np.full((4, 4), 0.25)
    nxt = _predict(net, w, 0.3, "next", 20)
    assert np.max(nxt.central_dist) < 1e-10 * np.max(nxt.param_dist)


def test_periodic_matrices_is_the_inherited_method():
    """Issue 13 item 4: ``Periodic.matrices`` was a field hiding
    ``MixingProcess.matrices(events)``; the stack of one period is now ``cycle`` and
    ``matrices(events)`` gives ``W_e`` for any events, as for random processes."""
    seq = graphs.periodic([RING, STAR])
    assert seq.cycle.shape == (2, 4, 4)
    np.testing.assert_array_equal(seq.matrices([0, 1, 2, 5]), np.stack([RING, STAR, RING, STAR]))
    np.testing.assert_array_equal(seq.matrix(3), STAR)
    np.testing.assert_allclose(seq.expected(), (RING + STAR) / 2, rtol=0, atol=1e-15)


def test_unknown_options_list_the_accepted_ones_and_numpy_integers_count():
    """get_algorithm('momentum', betta=0.5) said "'momentum' takes no options ['betta']"
    (momentum takes beta and base); p2pl(np.int64(2)) was refused."""
    from ntkdyn.algorithms import get_algorithm, p2pl

    with pytest.raises(ValueError, match=r"^algorithm: 'momentum' takes the options "
                                         r"\['base', 'beta'\], got \['betta'\]$"):
        get_algorithm("momentum", betta=0.5)
    assert p2pl(np.int64(2), 1) is p2pl(2, 1)
