"""The low-rank path (issue 17): exactness at full rank, error vs rank, memory, inputs."""

import warnings

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import lowrank, memory
from ntkdyn.kernels import analytic_ntk

FIELDS = ("train_loss", "local_loss", "objective", "train_acc", "param_dist", "consensus_dist",
          "central_dist", "central_train_loss", "central_param_dist", "mean_model_train_loss",
          "mean_model_train_acc", "test_loss", "test_acc", "mean_model_test_loss",
          "train_outputs", "test_outputs")


def _exact_rank_problem(equal: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, m, r, k, q = 48, 16, 6, 3, 4
    feats, feats_t = rng.normal(size=(n, r)), rng.normal(size=(m, r))
    kern, kern_t = feats @ feats.T / r, feats_t @ feats.T / r
    y, yt = np.eye(k)[rng.integers(0, k, n)], np.eye(k)[rng.integers(0, k, m)]
    agent = np.arange(n) % q if equal else rng.choice(q, size=n, p=[0.55, 0.15, 0.15, 0.15])
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    return kern, kern_t, y, yt, agent, w, r


@pytest.mark.parametrize("equal", [True, False], ids=["equal-shards", "unequal-shards"])
@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta", "gradient_tracking"])
def test_exact_rank_kernel_matches_exact_path(algorithm, equal):
    kern, kern_t, y, yt, agent, w, r = _exact_rank_problem(equal)
    steps = range(0, 61, 6)
    exact = nd.predict_from_kernels(kern, y, agent, w, 0.4, steps, algorithm,
                                    kernel_test_train=kern_t, y_test=yt, record_outputs=True)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    assert factor.rank == r
    low = lowrank.predict_lowrank(factor, y, agent, w, 0.4, steps, algorithm, y_test=yt,
                                  record_outputs=True)
    for f in FIELDS:
        a, b = getattr(exact, f), getattr(low, f)
        assert a.shape == b.shape, f
        assert np.max(np.abs(a - b)) <= 1e-10, (f, np.max(np.abs(a - b)))
    meta = low.metadata["low_rank"]
    assert meta["rank"] == r and meta["error_estimate"] <= 1e-8
    assert "mean network" in low.metadata["quantity"]


def test_per_agent_rates_and_phases_match_exact_path():
    kern, kern_t, y, yt, agent, w, r = _exact_rank_problem(False, seed=3)
    lr = np.array([0.2, 0.4, 0.3, 0.5])
    algo = nd.algorithms.p2pl(3, 2)
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, [0, 4, 9], algo)
    low = lowrank.predict(lowrank.kernel_columns(kern), y, agent, w, lr, [0, 4, 9], algo,
                          rank=r)
    assert low.phases == ["local", "consensus"]
    for f in ("train_loss", "local_loss", "param_dist", "consensus_dist", "central_dist"):
        assert np.max(np.abs(getattr(exact, f) - getattr(low, f))) <= 1e-10, f


def _spectrum_problem(decay: str, seed: int = 1):
    rng = np.random.default_rng(seed)
    n, k, q = 80, 3, 4
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    i = np.arange(n)
    lam = {"fast": 30 * 0.6 ** i, "slow": 30 / (1 + i), "flat": 30 / (1 + i) ** 0.3}[decay]
    kern = (u * lam) @ u.T
    y = np.eye(k)[rng.integers(0, k, n)]
    agent = rng.integers(0, q, n)
    lr = 0.9 * np.bincount(agent).min() / lam[0]
    return kern, y, agent, nd.graphs.mixing(nd.graphs.topology("ring", q)), lr


@pytest.mark.parametrize("decay", ["fast", "slow", "flat"])
@pytest.mark.parametrize("algorithm", ["dgd", "gradient_tracking"])
def test_error_falls_with_rank_and_estimate_bounds_it(decay, algorithm):
    kern, y, agent, w, lr = _spectrum_problem(decay)
    steps = range(0, 201, 20)
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, algorithm, record_outputs=True)
    errors = []
    for rank in (2, 8, 24, 80):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low = lowrank.predict(lowrank.kernel_columns(kern), y, agent, w, lr, steps,
                                  algorithm, rank=rank, record_outputs=True, tol=1.0)
        diff = (exact.train_outputs - low.train_outputs).reshape(len(steps), 4, -1)
        err = np.max(np.linalg.norm(diff, axis=-1)) / np.linalg.norm(y)
        est = low.metadata["low_rank"]["error_estimate"]
        assert err <= est + 1e-12, (rank, err, est)  # + round-off
        errors.append(err)
    assert errors[-1] <= 1e-9  # full rank: exact
    assert all(b <= a * 1.05 + 1e-12 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-2] < errors[0]


def test_auto_rank_meets_tolerance():
    kern, y, agent, w, lr = _spectrum_problem("fast")
    steps = range(0, 101, 10)
    low = lowrank.predict(lowrank.kernel_columns(kern), y, agent, w, lr, steps, "atc",
                          rank="auto", tol=1e-3, record_outputs=True)
    meta = low.metadata["low_rank"]
    assert meta["tol_reached"] and meta["error_estimate"] <= 1e-3
    assert meta["rank"] < 80
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, "atc", record_outputs=True)
    diff = (exact.train_outputs - low.train_outputs).reshape(len(steps), 4, -1)
    assert np.max(np.linalg.norm(diff, axis=-1)) / np.linalg.norm(y) <= 1e-3


def test_auto_rank_warns_when_capped():
    kern, y, agent, w, lr = _spectrum_problem("flat")
    with pytest.warns(RuntimeWarning, match="error estimate"):
        low = lowrank.predict(lowrank.kernel_columns(kern), y, agent, w, lr, 100, "dgd",
                              rank="auto", tol=1e-3, max_rank=10)
    assert low.metadata["low_rank"]["rank"] == 10
    assert not low.metadata["low_rank"]["tol_reached"]


@pytest.mark.parametrize("method", ["rpcholesky", "greedy", "uniform"])
def test_analytic_columns_full_rank_equal_exact_path(method):
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(40, 5)), rng.normal(size=(12, 5))
    y, yt = np.eye(3)[rng.integers(0, 3, 40)], np.eye(3)[rng.integers(0, 3, 12)]
    agent = np.arange(40) % 4
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    source = lowrank.analytic_columns(x, xt, hidden_layers=2)
    kern = analytic_ntk(x, hidden_layers=2)
    assert np.max(np.abs(source.diagonal() - np.diag(kern))) <= 1e-12
    factor = lowrank.factorize(source, 40, method=method, block=16)
    assert np.max(np.abs(factor.phi @ factor.phi.T - kern)) <= 1e-9
    assert np.max(np.abs(factor.phi_test @ factor.phi.T
                         - analytic_ntk(xt, x, hidden_layers=2))) <= 1e-9
    exact = nd.predict_from_kernels(kern, y, agent, w, 0.5, 50, "atc",
                                    kernel_test_train=analytic_ntk(xt, x, hidden_layers=2),
                                    y_test=yt)
    low = lowrank.predict_lowrank(factor, y, agent, w, 0.5, 50, "atc", y_test=yt)
    for f in ("train_loss", "test_loss", "param_dist", "consensus_dist"):
        assert np.max(np.abs(getattr(exact, f) - getattr(low, f))) <= 1e-9, f


def test_refusal_when_factor_does_not_fit(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    source = lowrank.analytic_columns(x, hidden_layers=1)
    need = lowrank.factor_bytes(500, 0, 400)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: need // 4)
    with pytest.raises(lowrank.LowRankTooLargeError, match=r"rank <= \d+ would fit") as err:
        lowrank.factorize(source, 200)
    assert isinstance(err.value, ValueError) and isinstance(err.value, MemoryError)
    fit = int(str(err.value).split("rank <= ")[1].split()[0])
    assert 0 < fit < 200
    assert lowrank.factor_bytes(500, 0, 2 * fit) <= need // 4
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
    with pytest.raises(ValueError, match="no rank fits"):
        lowrank.factorize(source, 10)


def test_bad_inputs_name_the_argument():
    kern, kern_t, y, yt, agent, w, r = _exact_rank_problem(True)
    src = lowrank.kernel_columns(kern)
    call = dict(y_train=y, agent=agent, mixing=w, lr=0.3, steps=10)
    with pytest.raises(ValueError, match="^rank: "):
        lowrank.predict(src, **call, rank=0)
    with pytest.raises(ValueError, match="^rank: "):
        lowrank.predict(src, **call, rank=-3)
    with pytest.raises(ValueError, match="^rank: .*at most 48"):
        lowrank.predict(src, **call, rank=49)
    with pytest.raises(ValueError, match="^rank: "):
        lowrank.predict(src, **call, rank="big")
    with pytest.raises(ValueError, match="^tol: "):
        lowrank.predict(src, **call, rank="auto", tol=0.0)
    with pytest.raises(ValueError, match="^tol: "):
        lowrank.predict(src, **call, rank="auto", tol=-1e-3)
    with pytest.raises(ValueError, match="^method: "):
        lowrank.factorize(src, 3, method="svd")
    with pytest.raises(ValueError, match="^rank: "):
        lowrank.factorize(src, 0)
    with pytest.raises(ValueError, match="^max_rank: "):
        lowrank.predict(src, **call, max_rank=0)
    factor = lowrank.factorize(src, 3)
    with pytest.raises(ValueError, match="^y_test: "):
        lowrank.predict_lowrank(factor, y, agent, w, 0.3, 10, y_test=yt)
    with pytest.raises(ValueError, match="^acc_rows: "):
        lowrank.predict_lowrank(factor, y, agent, w, 0.3, 10, acc_rows=0)
    with pytest.raises(ValueError, match="^mixing: "):
        lowrank.predict(src, y, agent, nd.graphs.random_edges(
            nd.graphs.topology("ring", 4), 0.5), 0.3, 10, rank=3)
    with pytest.raises(ValueError, match="^mixing: "):
        lowrank.predict_lowrank(factor, y, agent, nd.graphs.random_edges(
            nd.graphs.topology("ring", 4), 0.5), 0.3, 10)
