"""One random network on the low-rank path (f0 drawn from a low-rank NNGP factor)."""

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import lowrank
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.dynamics.random_init import InitDraws
from ntkdyn.dynamics.run import run_problem
from ntkdyn.kernels import analytic_kernels
from ntkdyn.lowrank import networks

NET_FIELDS = ("train_loss", "local_loss", "objective", "train_acc", "param_dist",
              "consensus_dist", "central_dist", "mean_model_train_loss",
              "mean_model_train_acc", "test_loss", "test_acc", "mean_model_test_loss",
              "mean_model_test_acc")
KW = dict(hidden_layers=2, activation="relu", W_std=1.4, b_std=0.1)


def _problem(seed=0, n=40, m=20, k=3, q=4):
    rng = np.random.default_rng(seed)
    x, xt = rng.normal(size=(n, 5)), rng.normal(size=(m, 5))
    y, yt = np.eye(k)[rng.integers(0, k, n)], np.eye(k)[rng.integers(0, k, m)]
    agent = rng.choice(q, size=n, p=[0.4, 0.2, 0.2, 0.2])
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    return x, xt, y, yt, agent, w


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking"])
def test_full_rank_random_network_equals_exact_path(algorithm):
    """rank = N and the same f0 draws (given explicitly to both paths): every metric of the
    mean over networks, the quantiles (band) and the mean network agree with the exact
    path's random-network prediction to <= 1e-8 (float64)."""
    x, xt, y, yt, agent, w = _problem()
    ntk = analytic_kernels(np.concatenate([x, xt]), **KW)[1]
    n, p = len(x), 7
    kern, kern_t = ntk[:n, :n], ntk[n:, :n]
    g = np.random.default_rng(1).normal(size=(n + len(xt), p))
    draws = InitDraws(train=g[:n], test=g[n:], seed=0, jitter=0.0)
    lr, steps = [0.03, 0.04, 0.05, 0.035], range(0, 41, 10)
    problem = make_problem(kern, y, agent, w, kernel_test_train=kern_t, y_test=yt)
    order = np.asarray(problem.order)
    sorted_draws = InitDraws(train=g[:n][order], test=g[n:], seed=0, jitter=0.0)
    exact = run_problem(problem, algorithm, [lr], steps, init=sorted_draws,
                        record_outputs=True)[0]
    low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, w, lr, steps,
                          algorithm, rank=n, y_test=yt, init=draws, record_outputs=True)
    for f in ("train_outputs", "test_outputs"):  # the mean network's outputs
        a, b = getattr(exact.mean_network, f), getattr(low.mean_network, f)
        assert a.shape == b.shape and np.max(np.abs(a - b)) <= 1e-8, f
    assert type(low).__name__ == "RandomNetworkTrajectory" and low.samples == p
    for f in NET_FIELDS:
        a, b = getattr(exact, f), getattr(low, f)
        assert a.shape == b.shape, f
        assert np.max(np.abs(a - b)) <= 1e-8, (f, np.max(np.abs(a - b)))
        a, b = getattr(exact.mean_network, f), getattr(low.mean_network, f)
        assert np.max(np.abs(a - b)) <= 1e-8, (f, np.max(np.abs(a - b)))
    for f in ("train_loss", "test_loss", "test_acc"):
        assert np.max(np.abs(exact.quantiles[f] - low.quantiles[f])) <= 1e-8, f
    lo, hi = low.band("test_loss", 0.05, 0.95, over="init")
    elo, ehi = exact.band("test_loss", 0.05, 0.95, over="init")
    assert np.max(np.abs(lo - elo)) <= 1e-8 and np.max(np.abs(hi - ehi)) <= 1e-8
    assert low.metadata["f0"] == "random" and low.metadata["band_over"] == "init"
    assert low.metadata["path"] == "low_rank"


@pytest.mark.parametrize("rank", [3, 12, 60])
def test_low_rank_draws_have_exact_marginal_variances(rank):
    """The draws' marginal variances rowsum(Psi^2) + d equal diag(K_nngp) to 1e-10 at every
    NNGP rank (the residual diagonal puts back what the factor discards); at full rank the
    residual vanishes and the empirical covariance of many draws matches K_nngp."""
    x, xt, *_ = _problem()
    z = np.concatenate([x, xt])
    src = lowrank.analytic_columns(z, kernel="nngp", **KW)
    nngp = analytic_kernels(z, **KW)[0]
    fac = lowrank.factorize(src, rank)
    diag = src.diagonal()
    np.testing.assert_allclose(diag, np.diag(nngp), rtol=1e-12)
    resid = np.maximum(diag - np.einsum("ij,ij->i", fac.phi, fac.phi), 0.0)
    var = networks.draw_variance(fac.phi, resid)
    assert np.max(np.abs(var - np.diag(nngp))) <= 1e-10 * np.max(np.diag(nngp))
    draws, info = networks.nngp_draws(src, len(x), 4000, 0, rank=rank)
    assert info["max_variance_error"] <= 1e-10 and info["nngp_rank"] == rank
    g = np.concatenate([draws.train, draws.test])
    emp = np.var(g, axis=1)
    assert np.max(np.abs(emp / np.diag(nngp) - 1)) <= 0.12  # Monte Carlo, 4000 draws
    if rank == len(z):
        assert info["relative_residual"] <= 1e-10
        cov = g @ g.T / g.shape[1]
        assert np.max(np.abs(cov - nngp)) <= 0.1 * np.max(np.diag(nngp))


def test_nd_predict_low_rank_random_network_default_and_band():
    """nd.predict(rank=...) with the analytic kernel defaults to one random network, as the
    exact path: a RandomNetworkTrajectory with band(over="init"), the mean network beside it,
    metadata saying what the draws are; at rank = N its expected test loss is within the
    Monte-Carlo error of the exact path's (different draws, same law)."""
    data = nd.data.digits(classes=[0, 1, 2, 3], n_train=60, n_test=30, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="iid", seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(64, 64), out=4)
    call = dict(lr=0.4, steps=range(0, 41, 20), samples=64)
    low = nd.predict(arch, parts, w, rank=data.num_train, **call)
    assert low.metadata["f0"] == "random" and "one random network" in low.metadata["quantity"]
    draws = low.metadata["low_rank"]["f0_draws"]
    assert draws["nngp_rank"] == 60 and draws["samples"] == 64
    assert "marginal variance" in draws["exact"]
    lo, hi = low.band("test_loss", 0.05, 0.95, over="init")
    assert np.all(lo <= low.test_loss + 1e-12) and np.all(low.test_loss <= hi + 1e-12)
    assert np.all(low.test_loss[-1] > low.mean_network.test_loss[-1])
    exact = nd.predict(arch, parts, w, kernel_dtype="float64", **call)
    mean_low = nd.predict(arch, parts, w, rank=data.num_train, f0="mean", lr=0.4,
                          steps=range(0, 41, 20))
    np.testing.assert_allclose(mean_low.test_loss, low.mean_network.test_loss, atol=1e-10)
    np.testing.assert_allclose(exact.mean_network.test_loss, low.mean_network.test_loss,
                               atol=1e-8)
    se = np.std(low.draws["test_loss"][:, -1], axis=0) * np.sqrt(4 / 64)  # sqrt(K / P)
    assert np.all(np.abs(low.test_loss[-1] - exact.test_loss[-1]) <= 4 * se + 1e-9)


def test_memory_of_the_random_network_terms_is_checked_before_allocating(monkeypatch):
    """With just the memory the mean network's factor needs, one random network (its NNGP
    factor on N + M rows reserved per coordinate, its P more columns) is refused before any
    column is read, naming rank and what would fit; f0='mean' runs in the same memory."""
    from ntkdyn._utils import memory

    data = nd.data.digits(classes=[0, 1, 2, 3], n_train=60, n_test=30, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="iid", seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(64,), out=4)
    n, m, r = 60, 30, 8
    avail = lowrank.factor_bytes(n, m, 2 * r) + 8 * (n + m) * 2 * r + 1
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: avail)
    mean = nd.predict(arch, parts, w, lr=0.3, steps=[0, 10], rank=r, f0="mean")
    assert mean.metadata["low_rank"]["rank"] == r

    def no_draws(*a, **k):
        raise AssertionError("the draws were allocated before the memory check")

    monkeypatch.setattr(networks, "nngp_draws", no_draws)
    with pytest.raises(lowrank.LowRankTooLargeError, match="^rank: .*would fit"):
        nd.predict(arch, parts, w, lr=0.3, steps=[0, 10], rank=r)
    need = networks.networks_bytes(n, m, r, 4, 4, 32, nngp_rank=r)
    assert need > networks.networks_bytes(n, m, r, 4, 4, 32) > networks.networks_bytes(
        n, m, r, 4, 4, 8)


@pytest.mark.parametrize(("k", "p"), [(10, 32), (3, 3), (4, 2), (1, 5)])
def test_network_argmax_equals_argmax_of_the_gathered_outputs(k, p):
    """networks.network_argmax (a running maximum over static column slices, used for the
    sampled networks' accuracies) equals jnp.argmax of the gathered (..., P, K) outputs
    out[..., :K] + out[..., K + network_columns] exactly: many ties (first maximum wins),
    NaN (the first NaN wins), +-inf and inf - inf."""
    import jax.numpy as jnp

    from ntkdyn.dynamics.solver import network_columns

    rng = np.random.default_rng(k * 100 + p)
    out = rng.integers(-2, 3, size=(3, 400, k + p)).astype(np.float64)
    special = rng.random(out.shape)
    out[special < 0.02] = np.nan
    out[(special >= 0.02) & (special < 0.04)] = np.inf
    out[(special >= 0.04) & (special < 0.06)] = -np.inf
    idx = network_columns(k, p)
    with np.errstate(invalid="ignore"):
        gathered = out[..., None, :k] + out[..., k + idx]
    want = np.asarray(jnp.argmax(gathered, axis=-1))
    got = np.asarray(networks.network_argmax(jnp.asarray(out), k))
    assert got.shape == want.shape == (3, 400, p)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("max_group", [1, 3, 4, 16])
def test_grouped_accuracies_equal_one_slot_at_a_time(monkeypatch, max_group):
    """networks._accs computes the outputs of G slots in one product (slot_group; the last
    group padded with zero slots): the mean network's and every sampled network's
    accuracies equal the per-slot outputs f0 + phi x_a with the gathered argmax, exactly,
    for 7 slots in groups of 1, 3 (3+3+1, padded), 4 (4+3, padded) and all 7."""
    import jax.numpy as jnp

    from ntkdyn.dynamics.solver import network_columns

    monkeypatch.setattr(networks, "MAX_GROUP", max_group)
    rng = np.random.default_rng(3)
    rows, r, a, k, p = 200, 6, 7, 3, 5
    phi, x = rng.normal(size=(rows, r)), rng.normal(size=(a, r, k + p))
    f0, labels = rng.normal(size=(1, rows, k + p)), rng.integers(0, k, rows)
    acc_m, acc_n = networks._accs(jnp.asarray(x), jnp.asarray(phi), jnp.asarray(f0),
                                  jnp.asarray(labels), k)
    idx = network_columns(k, p)
    for s in range(a):
        out = f0[0] + phi @ x[s]
        hits_m = np.sum(np.argmax(out[:, :k], -1) == labels)  # counts: mean = count / rows
        assert abs(float(acc_m[s]) * rows - hits_m) <= 1e-9
        nets = out[:, None, :k] + out[:, k + idx]
        want = np.sum(np.argmax(nets, -1) == labels[:, None], axis=0)
        assert np.max(np.abs(np.asarray(acc_n[s]) * rows - want)) <= 1e-9, (s, max_group)
