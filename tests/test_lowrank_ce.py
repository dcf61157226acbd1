"""Softmax cross-entropy on the low-rank path (issues 15 and 17), float64.

1. With a kernel of rank ``r`` (built from ``r`` features) and rank ``r``, the low-rank
   cross-entropy prediction (feature form, ``a_q <- mix(a) - eta_q/N_q Phi_q^T g_q``) equals
   the exact path's (``rank=None``, :func:`ntkdyn.predict_from_kernels`) to 1e-10 relative
   on every recorded quantity (measured <= 7e-13), for DGD, ATC, CTA, gradient tracking and
   momentum, equal and unequal shards, per-agent rates, logit scale 2, a given ``f_0``.
2. ``nd.predict(rank=N)`` equals the exact path with the analytic kernel (1e-8; measured
   ~1e-15), the mean network and ``f0="network"``; sweeps too.
3. The metadata: no error estimate (``None``, with the reason), the exact path's
   cross-entropy stability statement on the truncated operator (equal bound at the kernel's
   rank, larger when truncated).
4. What stays unsupported is a ``ValueError`` naming the field; TOML ``ntkdyn predict`` runs,
   ``ntkdyn check`` with rank and cross-entropy is refused saying why.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import TINY_TOML
from test_lowrank import _exact_rank_problem as _problem  # the same rank-r problem

import ntkdyn as nd
from ntkdyn import lowrank
from ntkdyn.lowrank.cross_entropy import predict_lowrank_ce

FIELDS = ("train_loss", "local_loss", "objective", "train_acc", "param_dist", "consensus_dist",
          "central_dist", "central_train_loss", "central_objective", "central_train_acc",
          "central_param_dist", "mean_model_train_loss", "mean_model_train_acc", "test_loss",
          "test_acc", "central_test_loss", "central_test_acc", "mean_model_test_loss",
          "mean_model_test_acc", "train_outputs", "test_outputs")
TOL = 1e-10


def _assert_same(exact, low, tol=TOL, fields=FIELDS):
    for f in fields:
        a, b = getattr(exact, f), getattr(low, f)
        assert a is not None and b is not None, f
        assert a.shape == b.shape, (f, a.shape, b.shape)
        err = np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300)
        assert err <= tol, (f, err)


@pytest.mark.parametrize("equal", [True, False], ids=["equal-shards", "unequal-shards"])
@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta", "gradient_tracking", "momentum"])
def test_kernel_rank_equals_exact_path(algorithm, equal):
    kern, kern_t, y, yt, agent, w, r = _problem(equal)
    lr, steps = [0.4, 0.5, 0.3, 0.45], range(0, 61, 6)
    rng = np.random.default_rng(1)
    f0, f0t = 0.3 * rng.normal(size=y.shape), 0.3 * rng.normal(size=yt.shape)
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, algorithm, f0_train=f0,
                                    kernel_test_train=kern_t, y_test=yt, f0_test=f0t,
                                    record_outputs=True, loss="cross_entropy", logit_scale=2.0)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    assert factor.rank == r
    low = predict_lowrank_ce(factor, y, agent, w, lr, steps, algorithm, f0_train=f0, y_test=yt,
                             f0_test=f0t, record_outputs=True, logit_scale=2.0)
    _assert_same(exact, low)
    assert low.status == "ok" and low.metadata["loss"] == "cross_entropy"
    assert low.metadata["logit_scale"] == 2.0 and low.metadata["path"] == "low_rank"


@pytest.mark.parametrize("algorithm", ["dgd", "gradient_tracking", "p2pl"])
def test_rate_sweep_in_one_run_equals_one_run_per_rate(algorithm):
    """predict_lowrank_ce_sweep (the rates as column groups of one state, the softmax per
    group, divergence per rate) equals predict_lowrank_ce at each rate to 1e-12 on every
    recorded quantity: scalar and per-agent rates, a given f_0, phases (P2PL), memory
    (gradient tracking), the centralised reference, a large rate (5.0; at 40 the run is
    chaotic and the products' round-off, summed in another order over R K columns, grows
    to 3e-7), and with a periodic sequence."""
    from ntkdyn.lowrank.cross_entropy import predict_lowrank_ce_sweep

    kern, kern_t, y, yt, agent, w, r = _problem(False, seed=4)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    algo = nd.algorithms.p2pl(3, 2) if algorithm == "p2pl" else algorithm
    rng = np.random.default_rng(2)
    f0, f0t = 0.3 * rng.normal(size=y.shape), 0.3 * rng.normal(size=yt.shape)
    lrs = [0.2, np.array([0.3, 0.5, 0.4, 0.6]), 5.0]
    steps = range(0, 61, 6)
    kw = dict(f0_train=f0, y_test=yt, f0_test=f0t, logit_scale=2.0)
    fields = tuple(f for f in FIELDS if not f.endswith("_outputs"))
    sweep = predict_lowrank_ce_sweep(factor, y, agent, w, lrs, steps, algo, **kw)
    for lr, low in zip(lrs, sweep, strict=True):
        one = predict_lowrank_ce(factor, y, agent, w, lr, steps, algo, **kw)
        assert (low.status, low.diverged_at) == (one.status, one.diverged_at)
        assert np.array_equal(low.steps, one.steps) and np.array_equal(low.lr, one.lr)
        _assert_same(one, low, tol=1e-12, fields=fields)
    ring = nd.graphs.topology("ring", 4)
    process = nd.graphs.periodic([nd.graphs.mixing(ring), np.full((4, 4), 0.25)])
    per = predict_lowrank_ce_sweep(factor, y, agent, process, lrs[:2], steps, algo, **kw)
    for lr, low in zip(lrs[:2], per, strict=True):
        _assert_same(predict_lowrank_ce(factor, y, agent, process, lr, steps, algo, **kw),
                     low, tol=1e-12, fields=fields)
    gossip = nd.graphs.random_edges(ring, 0.5, seed=0)  # refused before; now runs
    (got,) = predict_lowrank_ce_sweep(factor, y, agent, gossip, lrs[:1], steps, samples=2)
    assert got.samples == 2 and got.expected is not None  # (tests/test_lowrank_gossip.py)
    with pytest.raises(ValueError, match="^lrs: "):
        predict_lowrank_ce_sweep(factor, y, agent, w, [], steps)


def test_integer_labels_and_the_library_entry_point():
    """``lowrank.predict(loss="cross_entropy")`` on a column source equals
    :func:`predict_lowrank_ce` on its factor; integer labels equal one-hot targets."""
    kern, kern_t, y, yt, agent, w, r = _problem(False, seed=2)
    steps = range(0, 31, 10)
    source = lowrank.kernel_columns(kern, kern_t)
    one_hot = lowrank.predict(source, y, agent, w, 0.5, steps, "atc", rank=r, y_test=yt,
                              loss="cross_entropy", record_outputs=True)
    labels = predict_lowrank_ce(lowrank.factorize(source, r), np.argmax(y, axis=1), agent, w,
                                0.5, steps, "atc", y_test=np.argmax(yt, axis=1),
                                record_outputs=True)
    _assert_same(one_hot, labels, tol=1e-12)
    low = one_hot.metadata["low_rank"]
    assert low["rank"] == r and low["requested_rank"] == r and low["tol"] is None


def test_metadata_no_estimate_and_the_truncated_stability_bound():
    """``error_estimate`` is ``None`` with the reason (the squared loss's estimate does not
    bound cross-entropy); ``metadata["stability"]`` is the exact path's statement with the
    sufficient bound of the truncated operator: equal to the exact path's at the kernel's
    rank (1e-9), at least it when truncated."""
    kern, kern_t, y, yt, agent, w, r = _problem(False, seed=4)
    call = dict(lr=0.3, steps=range(0, 21, 10), algorithm="dgd", loss="cross_entropy",
                logit_scale=1.5)
    exact = nd.predict_from_kernels(kern, y, agent, w, kernel_test_train=kern_t, y_test=yt,
                                    **call)
    source = lowrank.kernel_columns(kern, kern_t)
    full = lowrank.predict(source, y, agent, w, rank=r, y_test=yt, **call)
    low = full.metadata["low_rank"]
    assert low["error_estimate"] is None and low["error_estimate_test"] is None
    assert "does not bound cross-entropy" in low["error_estimate_reason"]

    def bound(note):
        return float(re.search(r"lr < ([0-9.e+-]+)", note).group(1))

    assert "sufficient bound from the largest softmax curvature" in full.metadata["stability"]
    assert bound(full.metadata["stability"]) == pytest.approx(bound(exact.metadata["stability"]),
                                                              rel=1e-5)
    assert full.metadata["stability_bound"] == pytest.approx(
        bound(exact.metadata["stability"]), rel=1e-5)
    trunc = lowrank.predict(source, y, agent, w, rank=3, y_test=yt, **call)
    assert trunc.metadata["stability_bound"] >= full.metadata["stability_bound"] * (1 - 1e-12)
    assert "rank-3 coordinates" in trunc.metadata["stability"]


@pytest.fixture(scope="module")
def digits_problem():
    data = nd.data.digits(classes=[0, 1, 2, 3], n_train=60, n_test=30, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="dirichlet", alpha=1.0, seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(64, 64), out=4, activation="erf", W_std=1.2, b_std=0.3)
    return data, parts, w, arch


@pytest.mark.parametrize("f0", ["mean", "network"])
def test_nd_predict_full_rank_equals_exact_path(digits_problem, f0):
    """rank = N with the analytic kernel (exact factor to round-off): nd.predict with
    cross-entropy equals the exact path (1e-8 relative; measured ~2e-15), per-agent rates;
    predict_sweep's rates equal nd.predict at each."""
    data, parts, w, arch = digits_problem
    call = dict(lr=[0.3, 0.4, 0.5, 0.35], algorithm="atc", steps=range(0, 61, 10),
                record_outputs=True, loss="cross_entropy", logit_scale=1.5, f0=f0)
    exact = nd.predict(arch, parts, w, **call)
    low = nd.predict(arch, parts, w, rank=data.num_train, **call)
    _assert_same(exact, low, tol=1e-8)
    assert low.metadata["low_rank"]["rank"] == data.num_train
    sweep = nd.predict_sweep(arch, parts, w, [0.3, 0.5], "dgd", range(0, 41, 10), f0=f0,
                             rank=20, loss="cross_entropy")
    one = nd.predict(arch, parts, w, 0.5, "dgd", range(0, 41, 10), f0=f0, rank=20,
                     loss="cross_entropy")
    _assert_same(one, sweep[1], tol=1e-12, fields=("train_loss", "test_loss", "param_dist"))


def test_unsupported_is_refused_naming_the_field(digits_problem):
    data, parts, w, arch = digits_problem
    call = dict(lr=0.3, steps=range(0, 21, 10), loss="cross_entropy")
    with pytest.raises(ValueError, match="^rank: 'auto' chooses the rank from the squared"):
        nd.predict(arch, parts, w, rank="auto", f0="mean", **call)
    with pytest.raises(ValueError, match="^tol: there is no a-priori error estimate"):
        nd.predict(arch, parts, w, rank=8, tol=1e-3, f0="mean", **call)
    # one random network (the analytic kernel's default f0) runs now (tests below)
    assert nd.predict(arch, parts, w, rank=8, samples=2, **call).samples == 2
    with pytest.raises(ValueError, match="^acc_rows: "):
        nd.predict(arch, parts, w, rank=8, f0="mean", acc_rows=10, **call)
    with pytest.raises(ValueError, match="^rank: 'auto'"):
        nd.predict_sweep(arch, parts, w, [0.3], rank="auto", f0="mean", loss="cross_entropy")
    with pytest.raises(ValueError, match="^loss: expected one of"):
        nd.predict(arch, parts, w, rank=8, f0="mean", lr=0.3, steps=[0, 10], loss="hinge")
    kern, kern_t, y, yt, agent, w4, r = _problem(True)
    source = lowrank.kernel_columns(kern, kern_t)
    with pytest.raises(ValueError, match="^form: "):
        lowrank.predict(source, y, agent, w4, 0.3, [0, 5], rank=r, loss="cross_entropy",
                        form="gram")
    with pytest.raises(ValueError, match="^logit_scale: only used with loss='cross_entropy'"):
        lowrank.predict(source, y, agent, w4, 0.3, [0, 5], rank=r, logit_scale=2.0)
    with pytest.raises(ValueError, match="^logit_scale: "):
        lowrank.predict(source, y, agent, w4, 0.3, [0, 5], rank=r, loss="cross_entropy",
                        logit_scale=0.0)
    with pytest.raises(ValueError, match="^loss: expected one of"):
        lowrank.predict(source, y, agent, w4, 0.3, [0, 5], rank=r, loss="hinge")
    with pytest.raises(ValueError, match="^y_train: loss='cross_entropy' expects one-hot"):
        lowrank.predict(source, y * 0.5, agent, w4, 0.3, [0, 5], rank=r, loss="cross_entropy")


def test_predict_command_with_rank_and_cross_entropy(tmp_path):
    """TOML ``training.loss = "cross_entropy"`` with ``prediction.rank``: ``ntkdyn predict``
    runs the low-rank path; at rank N it equals the exact path's TOML run (1e-8)."""
    from ntkdyn import Trajectory
    from ntkdyn.cli import main

    base = TINY_TOML.replace('record_every = 10\n', 'record_every = 10\nloss = '
                             '"cross_entropy"\nlogit_scale = 2.0\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(base + '[prediction]\nrank = 60\nf0 = "mean"\n')
    assert main(["predict", str(cfg), "--out", str(tmp_path / "low"), "--quiet"]) == 0
    low = Trajectory.load(tmp_path / "low" / "trajectory.npz")
    summary = json.loads((tmp_path / "low" / "summary.json").read_text())
    assert summary["low_rank"]["rank"] == 60 and summary["low_rank"]["error_estimate"] is None
    assert low.metadata["loss"] == "cross_entropy" and low.metadata["logit_scale"] == 2.0
    exact_cfg = tmp_path / "e.toml"
    exact_cfg.write_text(base + '[prediction]\nf0 = "mean"\n')
    assert main(["predict", str(exact_cfg), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    exact = Trajectory.load(tmp_path / "e" / "trajectory.npz")
    _assert_same(exact, low, tol=1e-8, fields=("train_loss", "test_loss", "test_acc",
                                               "param_dist", "consensus_dist"))


def test_predict_command_random_network_with_rank_and_cross_entropy(tmp_path):
    """TOML ``training.loss = "cross_entropy"`` with ``prediction.rank`` and the default
    ``f0`` (one random network, analytic kernel): ``ntkdyn predict`` runs the low-rank path
    with ``prediction.samples`` networks (no longer refused) and reports the band."""
    from ntkdyn.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML.replace('record_every = 10\n', 'record_every = 10\nloss = '
                                     '"cross_entropy"\n') + "[prediction]\nrank = 30\n"
                   "samples = 3\n")
    assert main(["predict", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    text = (tmp_path / "o" / "summary.txt").read_text()
    assert "3 sampled networks" in text and "expected (5-95 %:" in text


def test_check_with_rank_auto_and_cross_entropy_says_why(tmp_path, capsys):
    """``ntkdyn check`` with an integer rank and cross-entropy now runs
    (tests/test_preflight_lowrank_ce.py; before, every rank was refused here);
    ``rank = "auto"`` stays refused, naming the field, as in nd.predict."""
    from ntkdyn.config import ConfigError
    from ntkdyn.preflight import check

    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML.replace('record_every = 10\n', 'record_every = 10\nloss = '
                                     '"cross_entropy"\n') + '[prediction]\nrank = "auto"\n')
    with pytest.raises(ConfigError, match="prediction.rank: 'auto' chooses the rank from the "
                                          "squared loss's a-priori error estimate.*integer"):
        check(str(cfg))
    # ntkdyn predict refuses it at the configuration too, naming the key (it said "rank:",
    # the library's argument, from inside the prediction)
    from ntkdyn.cli import main

    capsys.readouterr()
    assert main(["predict", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "config: prediction.rank: 'auto' chooses" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_memory_checked_before_allocating(monkeypatch):
    """The cross-entropy run's memory (:func:`ce_bytes`: padded rows, outputs of every slot
    at each record) is checked before anything is allocated, the refusal saying what."""
    from ntkdyn._utils import memory
    from ntkdyn.lowrank.cross_entropy import ce_bytes

    kern, kern_t, y, yt, agent, w, r = _problem(True)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    need = ce_bytes(48, 16, r, 4, 3, padded_rows=48, records=3)
    assert need > 8 * 3 * 6 * 48  # at least the outputs of the slots on the training rows
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: need // 2)
    with pytest.raises(memory.ProblemTooLargeError,
                       match="this low-rank cross-entropy prediction needs about"):
        predict_lowrank_ce(factor, y, agent, w, 0.3, [0, 5, 10], y_test=yt)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: need + 1)
    assert predict_lowrank_ce(factor, y, agent, w, 0.3, [0, 5, 10], y_test=yt).status == "ok"


# ------------------------------------------------------------- one random network (f0="random")
RANDOM_FIELDS = ("train_loss", "local_loss", "objective", "train_acc", "param_dist",
                 "consensus_dist", "central_dist", "central_train_loss", "mean_model_train_loss",
                 "test_loss", "test_acc", "central_test_loss", "mean_model_test_loss",
                 "train_outputs", "test_outputs")


def _draws(n, m, p, k, seed=5):
    from ntkdyn.dynamics.random_init import InitDraws

    rng = np.random.default_rng(seed)
    return InitDraws(train=rng.normal(size=(n, p * k)), test=rng.normal(size=(m, p * k)),
                     seed=seed, jitter=0.0, outputs=k)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking"])
def test_random_network_equals_exact_path_with_the_same_draws(algorithm):
    """One random network with cross-entropy, kernel of rank r and rank r, the **same**
    draws given to both paths (the low-rank path in the caller's order, the exact path's
    ``run_problem`` in its agent-sorted order): the expected losses (means over the P
    networks), every quantile band, each network's draws and the network from f0 = 0
    (``.mean_network``, outputs included) equal the exact path's to 1e-10 relative
    (measured ~3e-15); each network equals :func:`predict_lowrank_ce` from its own f0."""
    from ntkdyn.dynamics.random_init import InitDraws
    from ntkdyn.prediction import make_problem, run_problem
    from ntkdyn.trajectory import RandomNetworkTrajectory

    kern, kern_t, y, yt, agent, w, r = _problem(False, seed=3)
    lr, steps, p, k = [0.4, 0.5, 0.3, 0.45], range(0, 41, 5), 5, y.shape[1]
    draws = _draws(len(y), len(yt), p, k)
    call = dict(logit_scale=2.0, record_outputs=True)
    low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, w, lr, steps,
                          algorithm, rank=r, y_test=yt, init=draws, loss="cross_entropy",
                          **call)
    problem = make_problem(kern, y, agent, w, kernel_test_train=kern_t, y_test=yt,
                           loss="cross_entropy", logit_scale=2.0)
    sorted_draws = InitDraws(train=draws.train[problem.order], test=draws.test, seed=5,
                             jitter=0.0, outputs=k)
    exact = run_problem(problem, algorithm, [lr], steps, init=sorted_draws,
                        record_outputs=True, metadata={})[0]
    assert isinstance(low, RandomNetworkTrajectory) and isinstance(exact,
                                                                    RandomNetworkTrajectory)
    assert low.samples == exact.samples == p and low.metadata["samples"] == p
    _assert_same(exact, low, fields=RANDOM_FIELDS)
    _assert_same(exact.mean_network, low.mean_network, fields=FIELDS)
    for key in ("train_loss", "test_loss", "param_dist", "consensus_dist", "test_acc"):
        for lev in (0.05, 0.5, 0.95):
            a, b = exact.band(key, lev, lev)[0], low.band(key, lev, lev)[0]
            assert np.max(np.abs(a - b)) <= TOL * max(np.max(np.abs(a)), 1.0), (key, lev)
    for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
        err = np.max(np.abs(exact.draws[key] - low.draws[key]))
        assert err <= TOL * max(np.max(np.abs(exact.draws[key])), 1.0), key
    assert low.metadata["f0"] == "random" and low.metadata["band_over"] == "init"
    assert "not the expected network" in low.metadata["mean_network"]
    assert low.metadata["low_rank"]["f0_draws"]["outputs"] == k
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    for s in (0, p - 1):  # network s is one cross-entropy run from its own f0
        f0, f0t = draws.network_f0(s)
        one = predict_lowrank_ce(factor, y, agent, w, lr, steps, algorithm, f0_train=f0,
                                 y_test=yt, f0_test=f0t, logit_scale=2.0)
        for key in ("train_loss", "test_loss", "test_acc"):
            a = getattr(one, key)
            assert np.max(np.abs(a - low.draws[key][s])) <= TOL * np.max(np.abs(a)), (s, key)


def test_random_network_draws_from_the_nngp_factor():
    """``lowrank.predict(nngp=...)`` with cross-entropy draws ``P K`` columns from the
    low-rank NNGP factor (:func:`ntkdyn.lowrank.networks.nngp_draws`, the squared loss's
    draws with ``samples = P K``, same seed), ``K`` per network; network ``s`` equals
    :func:`predict_lowrank_ce` from those draws to 1e-10; a different seed gives other
    networks; ``samples`` defaults to the exact path's 16 independent networks."""
    from ntkdyn.lowrank.networks import nngp_draws

    kern, kern_t, y, yt, agent, w, r = _problem(True, seed=6)
    rng = np.random.default_rng(8)
    z = rng.normal(size=(len(y) + len(yt), 5))
    nngp = lowrank.kernel_columns(z @ z.T / 5 + 0.05 * np.eye(len(z)))
    source = lowrank.kernel_columns(kern, kern_t)
    call = dict(rank=r, y_test=yt, nngp=nngp, loss="cross_entropy", seed=3)
    p, k, steps = 4, y.shape[1], range(0, 31, 10)
    traj = lowrank.predict(source, y, agent, w, 0.5, steps, "atc", samples=p, **call)
    assert traj.samples == p and traj.draws["test_loss"].shape == (p, 4, 4)
    draws, _ = nngp_draws(nngp, len(y), p * k, 3, rank=r)
    factor = lowrank.factorize(source, r)
    for s in range(p):
        cols = slice(s * k, (s + 1) * k)
        one = predict_lowrank_ce(factor, y, agent, w, 0.5, steps, "atc", y_test=yt,
                                 f0_train=draws.train[:, cols], f0_test=draws.test[:, cols])
        for key in ("train_loss", "test_loss"):
            a = getattr(one, key)
            assert np.max(np.abs(a - traj.draws[key][s])) <= TOL * np.max(np.abs(a)), (s, key)
    info = traj.metadata["low_rank"]["f0_draws"]
    assert info["samples"] == p and info["seed"] == 3 and info["nngp_rank"] == r
    other = lowrank.predict(source, y, agent, w, 0.5, steps, "atc", samples=p,
                            **dict(call, seed=4))
    assert np.max(np.abs(other.draws["test_loss"] - traj.draws["test_loss"])) > 1e-3
    default = lowrank.predict(source, y, agent, w, 0.5, [0, 10], "atc", **call)
    assert default.samples == 16


def test_nd_predict_random_network_agrees_in_distribution(digits_problem):
    """``nd.predict(rank=N, loss="cross_entropy")`` with the default ``f0="random"``
    (analytic kernel) against the exact path: the exact path draws f0 ~ N(0, NNGP) by
    Cholesky, the low-rank path from the rank-N NNGP factor of the N + M pooled inputs plus
    the residual diagonal (every marginal variance exact; relative residual trace 2.1 %
    here), so the draws differ and the networks do too.  The expected losses (means over
    P = 48 independent networks) agree within 4 standard errors of their difference at
    every record (measured <= 0.55 standard errors), and so do the spreads: the log of the
    ratio of the final loss's standard deviations over the networks within 4 of its
    standard errors (``sqrt(2 / (2 (P - 1)))`` = 0.146; measured ratios 0.96-1.34 over
    seeds 1-3, i.e. <= 2.0 standard errors).  (The 5-95 % band width of 48 draws is too
    noisy for a fixed bound: its ratio ranged over 0.92-1.34 on the same seeds.)  The
    network from f0 = 0 (``.mean_network``) is the same on both paths (1e-8)."""
    data, parts, w, arch = digits_problem
    call = dict(lr=0.5, algorithm="dgd", steps=range(0, 41, 10), loss="cross_entropy",
                samples=48, seed=1)
    exact = nd.predict(arch, parts, w, **call)
    low = nd.predict(arch, parts, w, rank=data.num_train, **call)
    assert low.metadata["path"] == "low_rank" and low.samples == exact.samples == 48
    for key in ("train_loss", "test_loss"):
        a, b = exact.draws[key].mean(axis=2), low.draws[key].mean(axis=2)  # (P, T)
        se = np.sqrt(a.var(axis=0, ddof=1) / 48 + b.var(axis=0, ddof=1) / 48)
        diff = np.abs(a.mean(axis=0) - b.mean(axis=0))
        assert np.all(diff <= 4 * se), (key, diff, se)
        log_ratio = np.log(b[:, -1].std(ddof=1) / a[:, -1].std(ddof=1))
        assert abs(log_ratio) <= 4 * np.sqrt(2 / (2 * 47)), (key, np.exp(log_ratio))
    _assert_same(exact.mean_network, low.mean_network, tol=1e-8,
                 fields=("train_loss", "test_loss", "param_dist", "test_acc"))


def test_random_network_bad_draws_and_memory_are_refused(monkeypatch):
    """Draws without ``K`` columns per network are a ``ValueError`` naming ``draws``; the
    NNGP factor, draws and ``(P + 1) K``-column run are memory-checked before the draws."""
    from ntkdyn._utils import memory
    from ntkdyn.dynamics.random_init import InitDraws

    kern, kern_t, y, yt, agent, w, r = _problem(True)
    source = lowrank.kernel_columns(kern, kern_t)
    flat = InitDraws(train=np.zeros((48, 6)), test=np.zeros((16, 6)), seed=0, jitter=0.0)
    with pytest.raises(ValueError, match="^draws: expected \\(48, P K\\) training draws with "
                                         "K = 3"):
        lowrank.predict(source, y, agent, w, 0.3, [0, 5], rank=r, y_test=yt, init=flat,
                        loss="cross_entropy")
    nngp = lowrank.kernel_columns(np.eye(64))
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10_000_000)
    with pytest.raises(memory.ProblemTooLargeError,
                       match="one random network with cross-entropy on the low-rank path"):
        lowrank.predict(source, y, agent, w, 0.3, [0, 5], rank=r, y_test=yt, nngp=nngp,
                        samples=2000, loss="cross_entropy")


@pytest.mark.parametrize("mixing", ["static", "random"])
def test_sweep_with_final_training_records(mixing):
    """``train_records="final"``: the records from the training outputs (training loss,
    objective, local losses, training accuracy, the centralised reference's and the mean
    model's) are ``NaN`` before the last record and equal the full records there (1e-12);
    every other record (test losses and accuracies, distances) equals the full run at every
    record.  With random gossip, per sequence and for ``E[W]``; the check's sweep uses it.
    ``train_records`` other than 'all' / 'final' is refused naming the field."""
    from ntkdyn.lowrank.cross_entropy import TRAIN_RECORDS, predict_lowrank_ce_sweep

    kern, kern_t, y, yt, agent, w, r = _problem(False, seed=5)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    if mixing == "random":
        w = nd.graphs.random_edges(nd.graphs.topology("ring", 4), 0.5, seed=1)
    kw = dict(y_test=yt, logit_scale=2.0, samples=2 if mixing == "random" else None)
    lrs, steps = [0.2, np.array([0.3, 0.5, 0.4, 0.6])], range(0, 31, 6)
    full = predict_lowrank_ce_sweep(factor, y, agent, w, lrs, steps, "atc", **kw)
    last = predict_lowrank_ce_sweep(factor, y, agent, w, lrs, steps, "atc",
                                    train_records="final", **kw)
    train = {f for f in FIELDS if any(f.endswith(t.replace("mean_model_", ""))
                                      for t in TRAIN_RECORDS) and "test" not in f}
    assert {"train_loss", "central_objective", "local_loss", "mean_model_train_acc"} <= train
    for a, b in zip(full, last, strict=True):
        runs = [(a, b)] if mixing == "static" else \
            [(a.sequence(s), b.sequence(s)) for s in range(2)] + [(a.expected, b.expected)]
        for one, fin in runs:
            _assert_same(one, fin, tol=1e-12,
                         fields=[f for f in FIELDS if f not in train and "outputs" not in f])
            for f in sorted(train):
                x, z = getattr(one, f), getattr(fin, f)
                assert np.isnan(z[:-1]).all() and not np.isnan(z[-1]).any(), f
                assert np.max(np.abs(x[-1] - z[-1])) <= 1e-12 * np.max(np.abs(x[-1])), f
    with pytest.raises(ValueError, match="^train_records: expected 'all' or 'final'"):
        predict_lowrank_ce_sweep(factor, y, agent, w, lrs, steps, train_records="last", **kw)


@pytest.mark.parametrize("kind", ["periodic", "gossip"])
def test_random_network_with_a_mixing_sequence(digits_problem, kind):
    """One random network (the default ``f0``) with cross-entropy on the low-rank path and a
    periodic or random mixing sequence (it raised IndexError: the agents were counted from
    the shape of a static ``W``): its ``f_0 = 0`` run equals ``f0="mean"``'s prediction
    (1e-10; the same sequences with random gossip)."""
    data, parts, w, arch = digits_problem
    star = nd.graphs.mixing(nd.graphs.topology("star", 4))
    mixing = (nd.graphs.periodic([w, star]) if kind == "periodic" else
              nd.graphs.one_random_edge(nd.graphs.topology("ring", 4), seed=0))
    call = dict(lr=0.5, algorithm="dgd", steps=range(0, 21, 10), rank=20,
                loss="cross_entropy")
    one = nd.predict(arch, parts, mixing, samples=2, **call)
    # random gossip: the mean network over the networks' sequences 0 and 1
    mean = nd.predict(arch, parts, mixing, f0="mean", **call,
                      **({"samples": 2} if kind == "gossip" else {}))
    assert one.samples == 2
    np.testing.assert_allclose(one.mean_network.network_mean("test_loss"),
                               mean.network_mean("test_loss"), rtol=1e-10)
