"""The low-rank path (issue 17): exactness at full rank, error vs rank, memory, inputs."""

import warnings

import numpy as np
import pytest
from conftest import TINY_TOML

import ntkdyn as nd
from ntkdyn import lowrank, models
from ntkdyn._utils import memory
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


@pytest.mark.parametrize("algorithm", ["dgd", "gradient_tracking", "p2pl"])
def test_gram_form_equals_feature_form(algorithm):
    """The Gram form (r x r matrices per agent) and the feature form (the agents' rows) are
    the same recursion: every recorded quantity within 1e-12 (unequal shards, per-agent
    rates, centralised reference, a truncated factor)."""
    kern, y, agent, w, lr = _spectrum_problem("slow")
    factor = lowrank.factorize(lowrank.kernel_columns(kern), 12)
    algo = nd.algorithms.p2pl(3, 2) if algorithm == "p2pl" else algorithm
    lrs = lr * np.array([1.0, 0.8, 0.9, 0.7])
    runs = {form: lowrank.predict_lowrank(factor, y, agent, w, lrs, range(0, 41, 10), algo,
                                          record_outputs=True, form=form)
            for form in ("gram", "features")}
    assert runs["gram"].metadata["low_rank"]["form"] == "gram"
    assert runs["features"].metadata["low_rank"]["form"] == "features"
    for f in FIELDS:
        a, b = getattr(runs["gram"], f), getattr(runs["features"], f)
        if a is None:
            continue
        assert np.max(np.abs(a - b)) <= 1e-12 * max(1.0, np.abs(b).max()), f
    with pytest.raises(ValueError, match="^form: "):
        lowrank.predict_lowrank(factor, y, agent, w, lr, 10, form="dense")


def test_rate_sweep_with_float32_gram_products_stays_within_tolerance():
    """products="float32" (ntkdyn check's sweep): the Gram matrices in float32, the state
    float64.  On the digits analytic factor (rank 64, 600 steps, the losses falling) every
    loss is within 1e-5 of the float64 sweep for DGD at ten fractions of lr* and gradient
    tracking at two rates (measured on digits at rank 128 / 400 and 2,000 steps: 2.4e-7),
    the accuracies and statuses are equal; the feature form ignores it (stays float64:
    equal to round-off); a bad value names ``products``."""
    data = nd.data.digits(n_train=500, n_test=200)
    parts = nd.data.partition(data, 4, "iid", seed=0)
    arch = nd.models.MLP(hidden=(64, 64), out=10)
    source = lowrank.kernel_columns(arch.kernel(data.x_train),
                                    arch.kernel(data.x_test, data.x_train))
    factor = lowrank.factorize(source, 64)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    lr_star = lowrank.lowrank_stable_set(factor, parts.agent, w, "dgd").lr_star
    kw = dict(y_test=data.y_test, reference=False, accuracies="final")

    def sweep(algorithm, lrs, products, form="gram", steps=range(0, 601, 100)):
        return lowrank.predict_lowrank_sweep(factor, data.y_train, parts.agent, w, lrs,
                                             steps, algorithm, products=products, form=form,
                                             **kw)

    for algorithm, fractions in (("dgd", np.linspace(0.1, 0.95, 10)),
                                 ("gradient_tracking", [0.1, 0.3])):
        lrs = list(np.asarray(fractions) * lr_star)
        ref, low = sweep(algorithm, lrs, "float64"), sweep(algorithm, lrs, "float32")
        assert ref[-1].test_loss[-1].mean() < 0.5 * ref[-1].test_loss[0].mean()
        for a, b in zip(ref, low, strict=True):
            assert a.status == b.status == "ok"
            for f in ("train_loss", "test_loss", "mean_model_test_loss"):
                va, vb = getattr(a, f), getattr(b, f)
                assert 0 < np.max(np.abs(va - vb) / np.abs(va)) <= 1e-5, (algorithm, f)
            for f in ("train_acc", "test_acc"):
                assert np.array_equal(getattr(a, f)[-1], getattr(b, f)[-1]), (algorithm, f)
    feats = [sweep("dgd", [0.2 * lr_star], p, "features", [0, 50])[0]
             for p in ("float64", "float32")]
    assert np.max(np.abs(feats[0].test_loss - feats[1].test_loss)) <= 1e-12
    with pytest.raises(ValueError, match="^products: expected one of"):
        sweep("dgd", [0.2 * lr_star], "float16")


@pytest.mark.parametrize("algorithm", ["dgd", "gradient_tracking", "p2pl", "momentum"])
@pytest.mark.parametrize("form", ["gram", "features"])
def test_rate_sweep_in_one_run_equals_one_run_per_rate(algorithm, form):
    """predict_lowrank_sweep (the rates as column groups of one run, each step reading the
    Gram matrices or rows once for all of them) equals predict_lowrank at each rate: every
    recorded quantity within 1e-12, with per-agent rates, phases (P2PL), a schedule with
    memory, the centralised reference and a rate that diverges (same status, same step)
    while the others go on; the metadata is each rate's own."""
    kern, kern_t, y, yt, agent, w, r = _exact_rank_problem(False, seed=3)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    algo = {"p2pl": nd.algorithms.p2pl(3, 2),
            "momentum": nd.algorithms.momentum(0.5)}.get(algorithm, algorithm)
    lrs = [0.1, np.array([0.2, 0.4, 0.3, 0.5]), 40.0]  # the last diverges
    steps = range(0, 61, 6)
    kw = dict(y_test=yt, record_outputs=True, form=form)
    with warnings.catch_warnings():  # the diverging rate's estimates: capped, no overflow
        warnings.simplefilter("error", RuntimeWarning)  # warnings (P2PL had them before)
        sweep = lowrank.predict_lowrank_sweep(factor, y, agent, w, lrs, steps, algo, **kw)
    assert [t.status for t in sweep] == ["ok", "ok", "diverged"]
    assert sweep[2].metadata["low_rank"]["error_estimate"] <= 2.0
    for lr, low in zip(lrs, sweep, strict=True):
        one = lowrank.predict_lowrank(factor, y, agent, w, lr, steps, algo, **kw)
        assert low.status == one.status and low.diverged_at == one.diverged_at
        assert np.array_equal(low.steps, one.steps)
        assert low.metadata["low_rank"]["error_estimate"] == \
            one.metadata["low_rank"]["error_estimate"]
        for f in FIELDS:
            a, b = getattr(low, f), getattr(one, f)
            if b is None:
                assert a is None, f
                continue
            assert np.max(np.abs(a - b)) <= 1e-12 * max(1.0, np.abs(b).max()), f
    with pytest.raises(ValueError, match="^lrs: "):
        lowrank.predict_lowrank_sweep(factor, y, agent, w, [], steps)
    # accuracies="final": the losses at every record, the accuracies at the last one only
    kw["record_outputs"] = False
    final = lowrank.predict_lowrank_sweep(factor, y, agent, w, lrs[:2], steps, algo,
                                          accuracies="final", **kw)
    for low, ref in zip(final, sweep[:2], strict=True):
        for f in ("train_loss", "test_loss", "consensus_dist", "central_test_loss"):
            assert np.max(np.abs(getattr(low, f) - getattr(ref, f))) <= 1e-12, f
        for f in ("train_acc", "test_acc", "central_train_acc", "mean_model_test_acc"):
            a, b = getattr(low, f), getattr(ref, f)
            assert np.all(np.isnan(a[:-1])), f
            assert np.array_equal(a[-1], b[-1]), f
    for bad, match in [(dict(accuracies="every"), "^accuracies: "),
                       (dict(accuracies="final", record_outputs=True), "^accuracies: ")]:
        with pytest.raises(ValueError, match=match):
            lowrank.predict_lowrank_sweep(factor, y, agent, w, [0.1], steps, **bad)


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


def _spectrum_test_rows(decay: str, seed: int = 1, m: int = 120):
    """Test rows for :func:`_spectrum_problem`: features ``R Lambda^(1/2)`` in the
    eigenbasis of the training kernel, ``R`` Gaussian with rows of norm ~1 like those of
    ``U`` (the joint kernel is PSD), so ``Theta_TX = R Lambda U^T``; ``M = 120`` rows, of
    which the default 64 test probe rows are a sample."""
    rng = np.random.default_rng(seed)
    n = 80
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    i = np.arange(n)
    lam = {"fast": 30 * 0.6 ** i, "slow": 30 / (1 + i), "flat": 30 / (1 + i) ** 0.3}[decay]
    rt = np.random.default_rng(seed + 100)
    kern_t = (rt.normal(size=(m, n)) / np.sqrt(n) * lam) @ u.T
    return kern_t, np.eye(3)[rt.integers(0, 3, m)]


#: the test-output estimate over the measured test-output error, at most (errors > 1e-8).
#: Measured 1.84-10.6 (median 2.35) with the forcing and propagated terms alone; with the
#: retained-coordinate term added (theory/low_rank.md 3.1) 1.84-16.5 (median 3.6) over the
#: 72 cases of the three tests below: the largest, 16.5, is gradient tracking on the 1:8
#: shards (slow spectrum, rank 24), where the three terms are summed by the triangle
#: inequality (forcing 0.39, propagated 0.87, retained 0.44 after the margin, error 0.10);
#: DGD and ATC on the same case are 11.8 and 11.9.  Was 14 before the retained term.
TEST_ESTIMATE_RATIO = 20.0


def _test_output_error(exact, low, n_steps, agents, y_test):
    diff = (exact.test_outputs - low.test_outputs).reshape(n_steps, agents, -1)
    return np.max(np.linalg.norm(diff, axis=-1)) / np.linalg.norm(y_test)


def _check_test_estimate(exact, low, n_steps, y_test):
    """The test-output estimate is >= the measured test-output error (+ round-off) and at
    most TEST_ESTIMATE_RATIO times it where the error is above round-off."""
    meta = low.metadata["low_rank"]
    assert meta["error_estimate_test_kind"] == "test probe rows"
    assert meta["test_probe_columns"] == 64
    err, est = _test_output_error(exact, low, n_steps, 4, y_test), meta["error_estimate_test"]
    assert err <= est + 1e-12, (meta["rank"], err, meta)
    if err > 1e-8:
        assert est <= TEST_ESTIMATE_RATIO * err, (meta["rank"], err, meta)
    assert est == min(2.0, meta["error_estimate_test_uncapped"])
    parts = sum(meta[f"error_estimate_test_{k}"] for k in ("forcing", "propagated", "retained"))
    assert abs(parts - meta["error_estimate_test_uncapped"]) <= 1e-10 * max(parts, 1e-300)


@pytest.mark.parametrize("decay", ["fast", "slow", "flat"])
@pytest.mark.parametrize("algorithm", ["dgd", "gradient_tracking"])
def test_error_falls_with_rank_and_estimate_bounds_it(decay, algorithm):
    """... and the test-output estimate bounds the measured test-output error (120 test
    rows, 64 test probe rows)."""
    kern, y, agent, w, lr = _spectrum_problem(decay)
    kern_t, yt = _spectrum_test_rows(decay)
    steps = range(0, 201, 20)
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, algorithm, record_outputs=True,
                                    kernel_test_train=kern_t, y_test=yt)
    errors = []
    for rank in (2, 8, 24, 80):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, w, lr,
                                  steps, algorithm, rank=rank, record_outputs=True, tol=1.0,
                                  y_test=yt)
        _check_test_estimate(exact, low, len(steps), yt)
        diff = (exact.train_outputs - low.train_outputs).reshape(len(steps), 4, -1)
        err = np.max(np.linalg.norm(diff, axis=-1)) / np.linalg.norm(y)
        est = low.metadata["low_rank"]["error_estimate"]
        assert err <= est + 1e-12, (rank, err, est)  # + round-off
        if err > 1e-8:  # the probe-row estimate is tight (ratio measured <= 8.1)
            assert est <= ESTIMATE_RATIO * err, (rank, err, est)
        errors.append(err)
    assert errors[-1] <= 1e-9  # full rank: exact
    assert all(b <= a * 1.05 + 1e-12 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-2] < errors[0]


#: the probe-row estimate over the measured error, at most (errors > 1e-8); measured
#: 1.8-8.1 (median 2.4) on every case of the three tests here (theory/low_rank.md section 3)
ESTIMATE_RATIO = 12.0


def _max_output_error(exact, low, n_steps, agents, y):
    diff = (exact.train_outputs - low.train_outputs).reshape(n_steps, agents, -1)
    return np.max(np.linalg.norm(diff, axis=-1)) / np.linalg.norm(y)


@pytest.mark.parametrize("decay", ["fast", "slow", "flat"])
@pytest.mark.parametrize("algorithm", ["atc", "cta", "momentum"])
def test_probe_estimate_bounds_error_for_other_schedules(decay, algorithm):
    """ATC, CTA and heavy-ball momentum (a schedule with memory) on the three spectra of
    the test above, ranks 2, 8, 24: the probe-row estimate is >= the measured error of the
    training outputs and at most ESTIMATE_RATIO times it; likewise the test-output
    estimate on the test outputs (TEST_ESTIMATE_RATIO)."""
    kern, y, agent, w, lr = _spectrum_problem(decay)
    kern_t, yt = _spectrum_test_rows(decay)
    steps = range(0, 201, 20)
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, algorithm,
                                    record_outputs=True, kernel_test_train=kern_t, y_test=yt)
    for rank in (2, 8, 24):
        low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, w, lr, steps,
                              algorithm, rank=rank, record_outputs=True, y_test=yt)
        _check_test_estimate(exact, low, len(steps), yt)
        err = _max_output_error(exact, low, len(steps), 4, y)
        meta = low.metadata["low_rank"]
        assert meta["error_estimate_kind"] == "probe rows"
        assert err <= meta["error_estimate"] <= ESTIMATE_RATIO * err, (rank, err, meta)


def _bulk_problem(n: int = 400, seed: int = 2):
    """A fast-decaying head on a flat bulk (the NTK's shape): ``40 * 0.7^i + 1/(1+i)^0.5``."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    i = np.arange(n)
    lam = 40 * 0.7 ** i + 1.0 / (1 + i) ** 0.5
    kern = (u * lam) @ u.T
    y = np.eye(3)[rng.integers(0, 3, n)]
    agent = np.arange(n) % 4
    return kern, y, agent, nd.graphs.mixing(nd.graphs.topology("ring", 4)), 0.5 * 100 / lam[0]


@pytest.mark.parametrize("algorithm", ["dgd", "gradient_tracking"])
def test_probe_estimate_tight_where_trace_bound_is_loose(algorithm):
    """A slowly decaying bulk under a fast head (N = 400, 64 probe rows, 40 steps): the
    earlier estimate ``error_scale * (trace(E) + S_{r+1})`` is > 2 before its cap at
    every rank; the probe-row estimate bounds the measured error and is within
    ESTIMATE_RATIO of it, and rank="auto" with a tol it reaches stops below N."""
    kern, y, agent, w, lr = _bulk_problem()
    steps = range(0, 41, 4)
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, algorithm,
                                    record_outputs=True)
    src = lowrank.kernel_columns(kern)
    for rank in (4, 16, 64):
        low = lowrank.predict(src, y, agent, w, lr, steps, algorithm, rank=rank,
                              record_outputs=True)
        meta = low.metadata["low_rank"]
        assert meta["probe_columns"] == 64
        assert meta["error_scale"] * meta["discarded_norm_bound"] > 2.0
        err = _max_output_error(exact, low, len(steps), 4, y)
        assert err <= meta["error_estimate"] <= ESTIMATE_RATIO * err, (rank, err, meta)
    auto = lowrank.predict(src, y, agent, w, lr, steps, algorithm, rank="auto", tol=0.05,
                           record_outputs=True)
    meta = auto.metadata["low_rank"]
    assert meta["tol_reached"] and meta["rank"] < 200
    assert _max_output_error(exact, auto, len(steps), 4, y) <= 0.05


def _skewed_problem(decay: str, seed: int = 1):
    """:func:`_spectrum_problem`'s kernel (same eigenbasis, so :func:`_spectrum_test_rows`
    fits it) on strongly unequal shards, sizes 5, 10, 25, 40 (1:8), with per-agent rates
    ``(1, 0.5, 0.8, 0.3) * 0.9 * 5 / lambda_1``: the row rates ``D_ii = eta_q / (Q N_q)``
    span 27x.  ``f0`` puts the whole residual on the smallest shard (the largest row rate),
    where ``D E r~`` (the forcing before the fix) and ``E D r~`` (the true one) differ most."""
    rng = np.random.default_rng(seed)
    sizes, n = (5, 10, 25, 40), 80
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    i = np.arange(n)
    lam = {"fast": 30 * 0.6 ** i, "slow": 30 / (1 + i), "flat": 30 / (1 + i) ** 0.3}[decay]
    kern = (u * lam) @ u.T
    y = np.eye(3)[rng.integers(0, 3, n)]
    agent = rng.permutation(np.repeat(np.arange(4), sizes))
    f0 = np.where((agent == 0)[:, None], 0.0, y)
    lr = 0.9 * min(sizes) / lam[0] * np.array([1.0, 0.5, 0.8, 0.3])
    return kern, y, f0, agent, nd.graphs.mixing(nd.graphs.topology("ring", 4)), lr


@pytest.mark.parametrize("decay", ["fast", "slow", "flat"])
@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking"])
def test_probe_estimate_bounds_error_on_skewed_shards_and_rates(decay, algorithm):
    """Unequal shards (1:8) and per-agent rates, the residual on the smallest shard: the
    probe-row estimate is >= the measured training-output error and <= ESTIMATE_RATIO times
    it at ranks 2, 8, 24 (measured 1.8-9.2 after the fix; before it, with the forcing
    ``D E r~_s`` instead of ``E D r~_s``, the estimate was 0.67-0.97x the error on the fast
    spectrum at ranks 8 and 24); the test-output estimate bounds the test-output error."""
    kern, y, f0, agent, w, lr = _skewed_problem(decay)
    kern_t, yt = _spectrum_test_rows(decay)
    steps = range(0, 201, 20)
    ft = np.zeros_like(yt)  # the test rows start at 0 (given: both f0 of one network)
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, algorithm, f0_train=f0,
                                    record_outputs=True, kernel_test_train=kern_t, y_test=yt,
                                    f0_test=ft)
    for rank in (2, 8, 24):
        low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, w, lr, steps,
                              algorithm, rank=rank, f0_train=f0, record_outputs=True,
                              y_test=yt, f0_test=ft)
        _check_test_estimate(exact, low, len(steps), yt)
        diff = (exact.train_outputs - low.train_outputs).reshape(len(steps), 4, -1)
        err = np.max(np.linalg.norm(diff, axis=-1)) / np.linalg.norm(y - f0)
        meta = low.metadata["low_rank"]
        assert meta["error_estimate_kind"] == "probe rows"
        assert err <= meta["error_estimate"] <= ESTIMATE_RATIO * err, (rank, err, meta)
        # sqrt(max D / min D), D_ii = eta_q / (Q N_q): agents 0 (1/5) and 3 (0.3/40)
        assert abs(meta["rate_spread"] - np.sqrt((1.0 / 5) / (0.3 / 40))) <= 1e-12


def _dense_forcing_sum(kern, phi, residual, rates, t_eff):
    """``sum_{s < T} ||E D r~_s||_F`` with all rows, ``r~_s = (I - Phi Phi^T D)^s r_0`` and
    ``E = Theta - Phi Phi^T``: the sum the probe-row estimate samples (T an integer <= 500,
    so the Riemann sum is this sum)."""
    e, lowk = kern - phi @ phi.T, phi @ phi.T
    r, total = residual.copy(), 0.0
    for _ in range(int(t_eff)):
        total += float(np.linalg.norm(e @ (rates[:, None] * r)))
        r = r - lowk @ (rates[:, None] * r)
    return total


def test_probe_estimator_with_all_rows_is_the_true_forcing_sum():
    """With every row a probe row the estimate is ``margin * sum_s ||E D r~_s|| / ||r_0||``
    computed densely (to 1e-10 relative), for unequal row rates (27x spread) -- the true
    forcing of ``e_{s+1} = (I - Theta D) e_s - E D r~_s``; and for equal shards with one
    rate (``D = delta I``) the value is the one of the earlier formula ``D E r~_s``,
    ``r~_s = (I - D Phi Phi^T)^s r_0``, to round-off (1e-12 relative)."""
    kern, y, f0, agent, _, lr = _skewed_problem("slow")
    factor = lowrank.factorize(lowrank.kernel_columns(kern), 8)
    phi, rows, cols = factor.phi, np.arange(80), kern
    res = f0 - y
    for agents, rates_lr in ((agent, lr), (np.arange(80) % 4, np.full(4, lr[0]))):
        counts = np.bincount(agents, minlength=4)
        rates, _ = lowrank.mean_rates(rates_lr, agents, counts)
        est = lowrank.probe_estimator(phi, rows, cols, res, rates, 60)
        dense = _dense_forcing_sum(kern, phi, res, rates, 60)
        value = est(factor.rank)
        assert abs(value - 2.0 * dense / np.linalg.norm(res)) <= 1e-10 * value, (value, dense)
    # equal shards, one rate: the earlier formula D E (I - D Phi Phi^T)^s r_0 gives the same
    d = rates[0]
    assert np.all(rates == d)
    old = lowrank.ProbeEstimate(theta_r0=cols.T @ res, theta_dphi=cols.T @ (d * phi),
                                phi_p=phi, gram=d * phi.T @ phi, proj=phi.T @ res,
                                row_scale=np.full(80, d), norm_r0=float(np.linalg.norm(res)),
                                t_eff=60.0)
    for rank in (2, 5, 8):
        assert abs(old(rank) - est(rank)) <= 1e-12 * est(rank), (rank, old(rank), est(rank))


def _landmark_test_rows(decay: str, rank: int):
    """:func:`_spectrum_problem` with test rows that are copies of the ``rank`` landmarks of
    a Nystrom factor keeping every coordinate (``oversample=1``): the test-train residual
    ``E_TX = Theta[S, :] - Phi[S] Phi^T = E[S, :]`` is 0, so the forcing and propagated
    terms vanish and the whole test-output error is the training error carried through
    the retained coordinates, ``Phi_T Phi^T D sum_s Delta_s``."""
    kern, y, agent, w, lr = _spectrum_problem(decay)
    land = lowrank.factorize(lowrank.kernel_columns(kern), rank, oversample=1.0).landmarks
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern[land]), rank,
                               oversample=1.0)
    assert np.array_equal(factor.landmarks, land)
    return kern, y, agent, w, lr, factor, kern[land], y[land]


@pytest.mark.parametrize("decay", ["fast", "slow", "flat"])
@pytest.mark.parametrize("rank", [4, 8, 16])
def test_test_estimate_covers_the_retained_coordinates(decay, rank):
    """Test rows at the landmarks of a Nystrom factor (``E_TX = 0``, measured <= 2e-14):
    the test-output error (0.004-0.65 relative) is all retained-coordinate term.  The
    forcing and propagated parts are <= 1e-5 (round-off through ``sqrt`` of the residual
    cross Gram), so an estimate without the retained term fails ``err <= est`` here; with
    it the estimate is >= the error and <= TEST_ESTIMATE_RATIO times it (measured 2.4-11.6
    on these 18 cases, DGD and gradient tracking)."""
    kern, y, agent, w, lr, factor, kern_t, yt = _landmark_test_rows(decay, rank)
    assert np.max(np.abs(kern_t - factor.phi_test @ factor.phi.T)) <= 1e-12
    steps = range(0, 201, 20)
    for algorithm in ("dgd", "gradient_tracking"):
        exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, algorithm,
                                        record_outputs=True, kernel_test_train=kern_t,
                                        y_test=yt)
        low = lowrank.predict_lowrank(factor, y, agent, w, lr, steps, algorithm, y_test=yt,
                                      record_outputs=True)
        meta = low.metadata["low_rank"]
        err = _test_output_error(exact, low, len(steps), 4, yt)
        old = meta["error_estimate_test_forcing"] + meta["error_estimate_test_propagated"]
        assert err > 1e-3 and old <= 1e-3 * err, (err, meta)
        assert meta["error_estimate_test_retained"] >= err, (err, meta)
        est = meta["error_estimate_test"]
        assert err <= est <= TEST_ESTIMATE_RATIO * err, (err, meta)


def _dense_retained(kern, phi, phi_t, residual, rates, t_eff: int, first_order: bool):
    """``max_{t <= T} ||Phi_T Phi^T D sum_{s<t} Delta_s||`` with all rows: ``Delta_s`` the
    true training error ``r_s - r~_s`` (``first_order=False``), or the retained-coordinate
    recursion ``g_{s+1} = (I - Phi^T D Phi) g_s - Phi^T D E D r~_s`` that the estimate
    drives (``first_order=True``; ``g_s`` stands for ``Phi^T D Delta_s``)."""
    d = rates[:, None]
    e = kern - phi @ phi.T
    r, rl = residual.copy(), residual.copy()
    g = np.zeros((phi.shape[1], residual.shape[1]))
    big_g, best = np.zeros_like(g), 0.0
    for _ in range(t_eff):
        big_g = big_g + (g if first_order else phi.T @ (d * (r - rl)))
        g = g - phi.T @ (d * (phi @ g)) - phi.T @ (d * (e @ (d * rl)))
        best = max(best, float(np.linalg.norm(phi_t @ big_g)))
        r, rl = r - kern @ (d * r), rl - phi @ (phi.T @ (d * rl))
    return best


def test_retained_term_with_all_rows_is_the_dense_recursion():
    """With every training row a probe row, the retained part (before the margin) is the
    dense retained-coordinate recursion to 1e-10 relative, at T = 60 (one point per step)
    and at T = 1,500 (500 points, the recursion stepped exactly between them, its forcing
    held at the left point: within 5 %, measured 0.07 %); unequal row rates (27x).  Against the true
    retained term (with ``r_s``, not its first-order ``r~_s``) it is within a factor 2
    (measured 1.31 at T = 60)."""
    kern, y, f0, agent, _, lr = _skewed_problem("slow")
    kern_t, yt = _spectrum_test_rows("slow")
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), 8)
    res = f0 - y
    rates, _ = lowrank.mean_rates(lr, agent, np.bincount(agent, minlength=4))
    for t_eff, tol in ((60, 1e-10), (1500, 0.05)):
        est = lowrank.held_out_estimator(factor.phi, factor.phi_test, np.arange(80), kern,
                                         np.arange(120), kern_t.T, res, -yt, rates, t_eff)
        kept = est.parts(8)[2]
        dense = _dense_retained(kern, factor.phi, factor.phi_test, res, rates, t_eff, True)
        assert abs(kept - dense) <= tol * dense, (t_eff, kept, dense)
        if t_eff == 60:
            true = _dense_retained(kern, factor.phi, factor.phi_test, res, rates, t_eff,
                                   False)
            assert 0.5 * kept <= true <= 2.0 * kept, (kept, true)


def test_retained_step_is_w_single_steps():
    """``retained_step(sig, w)`` equals ``w`` single steps of ``g <- (1 - sig) g - u``,
    ``Gamma <- Gamma + g`` (1e-12), for ``sig`` from 0 through tiny to 1.9 (a negative
    ratio); and the closed form used above 4,096 steps agrees with the sum (1e-9)."""
    from ntkdyn.lowrank.evolve import retained_step

    sig = np.array([0.0, 1e-9, 1e-5, 0.01, 0.5, 1.0, 1.9])
    for w in (1, 2, 7, 40):
        q_w, h_w, s_w = retained_step(sig, w)
        g0, u = np.linspace(-1, 1, sig.size), np.linspace(0.5, 2, sig.size)
        g, big = g0.copy(), np.zeros_like(g0)
        for _ in range(w):
            big, g = big + g, (1 - sig) * g - u
        assert np.allclose(q_w * g0 - h_w * u, g, rtol=1e-12, atol=1e-12), w
        assert np.allclose(h_w * g0 - s_w * u, big, rtol=1e-12, atol=1e-12), w
    sig = np.array([0.0, 1e-12, 1e-9, 3e-7, 1e-5, 0.01, 0.5, 1.0, 1.9])
    summed = retained_step(sig, 4096)[2]
    # S_4097 = S_4096 + H_4096
    closed = retained_step(sig, 4097)[2] - retained_step(sig, 4096)[1]
    assert np.allclose(closed, summed, rtol=1e-9, atol=0), (closed, summed)


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


def _decay_problem(decay: str, n: int = 300, seed: int = 1):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    i = np.arange(n)
    lam = {"fast": 30 * 0.8 ** i, "slow": 30 / (1 + i) ** 1.5, "flat": 30 / (1 + i) ** 0.3}
    kern = (u * lam[decay]) @ u.T
    y = np.eye(3)[rng.integers(0, 3, n)]
    lr = 0.9 * (n // 4) / lam[decay][0]
    return kern, y, np.arange(n) % 4, nd.graphs.mixing(nd.graphs.topology("ring", 4)), lr


@pytest.mark.parametrize("tol", [1e-3, 1e-1])
@pytest.mark.parametrize("decay", ["fast", "slow", "flat"])
def test_unreachable_tol_reports_rank_needed(decay, tol):
    """When max_rank stops rank="auto" short of tol, the warning names tol, the estimate
    reached (and before its cap of 2) and a range of ranks that would meet tol; the rank
    rank="auto" picks without the cap lies in that range (N = 300, three spectra)."""
    kern, y, agent, w, lr = _decay_problem(decay)
    src = lowrank.kernel_columns(kern)
    with pytest.warns(RuntimeWarning, match=rf"tol={tol:g} not reached.*would need about "
                                            r"rank \d+ to \d+ of N = 300"):
        capped = lowrank.predict(src, y, agent, w, lr, 100, "dgd", rank="auto", tol=tol,
                                 max_rank=4, block=8)
    meta = capped.metadata["low_rank"]
    assert meta["rank"] == 4 and not meta["tol_reached"]
    assert meta["error_estimate_uncapped"] >= meta["error_estimate"] > tol
    free = lowrank.predict(src, y, agent, w, lr, 100, "dgd", rank="auto", tol=tol, block=8)
    assert free.metadata["low_rank"]["tol_reached"]
    rank = free.metadata["low_rank"]["rank"]
    assert 4 < meta["rank_needed_low"] <= rank <= meta["rank_needed_high"] <= 300
    if decay == "flat":  # the flat bulk: no rank much below N meets tol (checked on the
        assert rank >= 270  # rank picked: the probe-row rule has no trace-based low end)


def test_empirical_columns_match_empirical_ntk():
    """The empirical column source (layerwise, no Jacobian) gives the traced empirical NTK
    of the network: diagonal, columns and test columns to 1e-12, and the factor at full
    rank reproduces the kernel to 1e-9 relative (N = 50, width 16, depth 2)."""
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(50, 5)), rng.normal(size=(7, 5))
    model = nd.models.MLP(hidden=(16, 16), out=3)
    params = nd.models.init_params(model, 5, seed=0)
    kern = nd.kernels.empirical_ntk(model.apply, params, x)
    kern_t = nd.kernels.empirical_ntk(model.apply, params, xt, x)
    src = lowrank.empirical_columns(model, params, x, xt, batch_size=8)
    idx = np.array([3, 17, 40])
    assert np.max(np.abs(src.diagonal() - np.diag(kern))) <= 1e-12
    assert np.max(np.abs(src.columns(idx) - kern[:, idx])) <= 1e-12
    assert np.max(np.abs(src.test_columns(idx) - kern_t[:, idx])) <= 1e-12
    t_idx = np.array([0, 4, 6])  # the test probe columns: Theta[X, X_T[t_idx]]
    assert np.max(np.abs(src.test_probe_columns(t_idx) - kern_t[t_idx].T)) <= 1e-12
    fac = lowrank.factorize(src, 50)
    scale = np.max(np.abs(kern))
    assert np.max(np.abs(fac.phi @ fac.phi.T - kern)) <= 1e-9 * scale
    assert np.max(np.abs(fac.phi_test @ fac.phi.T - kern_t)) <= 1e-9 * scale


def _resnet_like():
    """A small non-MLP network: a residual tanh block with a multiplicative gate and a
    sine feature, ``(B, 4) -> (B, 3)``, and its parameters (a dict pytree)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    params = {"w1": rng.normal(size=(4, 6)) / 2, "w2": rng.normal(size=(6, 6)) / 2.5,
              "g": rng.normal(size=(4, 6)) / 2, "b": rng.normal(size=6) / 10,
              "out": rng.normal(size=(6, 3)) / 2.5}

    def apply_fn(p, x):
        h = jnp.tanh(x @ p["w1"] + p["b"])
        h = h + jnp.tanh(h @ p["w2"]) * jnp.sin(x @ p["g"])
        return h @ p["out"]

    return apply_fn, params


def test_jacobian_columns_match_empirical_ntk_on_a_non_mlp():
    """The JVP column source (any apply_fn; J_B^T by one VJP per block, then batched JVPs
    over row chunks) gives the traced empirical NTK of a non-MLP network: diagonal,
    columns and test columns to 1e-10 (row chunks of 8 with a padded last chunk; landmark
    sub-blocks of 2 through a small budget), and the factor at full rank predicts the same
    trajectory as the exact path on that kernel (1e-9 relative)."""
    apply_fn, params = _resnet_like()
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(30, 4)), rng.normal(size=(7, 4))
    kern = nd.kernels.empirical_ntk(apply_fn, params, x)
    kern_t = nd.kernels.empirical_ntk(apply_fn, params, xt, x)
    src = lowrank.jacobian_columns(apply_fn, params, x, xt, row_batch=8)
    n_params = sum(np.size(v) for v in params.values())
    object.__setattr__(src, "budget_bytes", 8 * 3 * (2 * n_params + 8 * 4) * 2)  # 2 landmarks
    assert src._sub() == 2
    idx = np.array([3, 17, 29, 0, 11])
    assert np.max(np.abs(src.diagonal() - np.diag(kern))) <= 1e-10
    assert np.max(np.abs(src.columns(idx) - kern[:, idx])) <= 1e-10
    assert np.max(np.abs(src.test_columns(idx) - kern_t[:, idx])) <= 1e-10
    t_idx = np.array([6, 1, 2])  # the test probe columns: Theta[X, X_T[t_idx]]
    assert np.max(np.abs(src.test_probe_columns(t_idx) - kern_t[t_idx].T)) <= 1e-10
    fac = lowrank.factorize(src, 30, block=8)
    y, yt = np.eye(3)[rng.integers(0, 3, 30)], np.eye(3)[rng.integers(0, 3, 7)]
    agent, w = np.arange(30) % 3, nd.graphs.mixing(nd.graphs.topology("ring", 3))
    exact = nd.predict_from_kernels(kern, y, agent, w, 0.5, 40, "dgd", kernel_test_train=kern_t,
                                    y_test=yt)
    low = lowrank.predict_lowrank(fac, y, agent, w, 0.5, 40, "dgd", y_test=yt)
    for f in ("train_loss", "test_loss", "param_dist"):
        a, b = getattr(exact, f), getattr(low, f)
        assert np.max(np.abs(a - b)) <= 1e-9 * np.abs(a).max(), f
    with pytest.raises(ValueError, match="^row_batch: expected"):
        lowrank.jacobian_columns(apply_fn, params, x, row_batch=0)
    with pytest.raises(ValueError, match="^apply_fn: expected a callable"):
        lowrank.jacobian_columns(None, params, x)


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
    np.testing.assert_allclose(factor.test_probe_columns, analytic_ntk(
        x, xt[factor.test_probe_rows], hidden_layers=2), rtol=0, atol=1e-12)
    assert factor.test_probe_rows.size == 12  # all of M = 12 (probe_count: >= 64, <= M)
    exact = nd.predict_from_kernels(kern, y, agent, w, 0.5, 50, "atc",
                                    kernel_test_train=analytic_ntk(xt, x, hidden_layers=2),
                                    y_test=yt)
    low = lowrank.predict_lowrank(factor, y, agent, w, 0.5, 50, "atc", y_test=yt)
    for f in ("train_loss", "test_loss", "param_dist", "consensus_dist"):
        assert np.max(np.abs(getattr(exact, f) - getattr(low, f))) <= 1e-9, f


def test_factor_bytes_counts_the_test_probe_columns():
    """With M test samples the memory estimate adds the test probe columns (``N p_T``
    float64, ``p_T = probe_count(M, m)``) and ``probes=0`` removes both probe terms; the
    factor reads exactly that many test rows, whose columns are the test-train kernel's."""
    n, m_test, m = 500, 1_000, 100
    p, p_t = lowrank.probe_count(n, m), lowrank.probe_count(m_test, m)
    assert (lowrank.factor_bytes(n, m_test, m) - lowrank.factor_bytes(n, m_test, m, probes=0)
            == 8 * n * (p + p_t))
    assert lowrank.factor_bytes(n, m_test, m) - lowrank.factor_bytes(n, 0, m) > 8 * n * p_t
    kern, _, _, _, _ = _spectrum_problem("fast")
    kern_t, _ = _spectrum_test_rows("fast")
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), 8)
    assert factor.info["test_probe_columns"] == lowrank.probe_count(120, 16) == 64
    np.testing.assert_array_equal(factor.test_probe_columns, kern_t[factor.test_probe_rows].T)
    bare = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), 8, probes=0)
    assert bare.test_probe_columns is None and bare.info["test_probe_columns"] == 0


def test_auto_rank_holds_tol_against_the_test_estimate_too():
    """rank="auto" with a test set keeps the fewest coordinates whose max(train, test)
    estimate is <= tol: test rows far from the training distribution (scaled up 3x) make
    the test estimate the larger, and the rank is larger than without y_test; both
    measured errors are then within tol."""
    kern, y, agent, w, lr = _spectrum_problem("fast")
    kern_t, yt = _spectrum_test_rows("fast")
    kern_t = 3.0 * kern_t
    steps = range(0, 101, 10)
    src = lowrank.kernel_columns(kern, kern_t)
    both = lowrank.predict(src, y, agent, w, lr, steps, "atc", rank="auto", tol=1e-3,
                           y_test=yt, record_outputs=True)
    train_only = lowrank.predict(lowrank.kernel_columns(kern), y, agent, w, lr, steps, "atc",
                                 rank="auto", tol=1e-3, record_outputs=True)
    meta = both.metadata["low_rank"]
    assert meta["tol_reached"] and meta["error_estimate_test"] <= 1e-3
    assert meta["error_estimate"] <= 1e-3
    assert meta["rank"] > train_only.metadata["low_rank"]["rank"]
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, "atc", record_outputs=True,
                                    kernel_test_train=kern_t, y_test=yt)
    assert _test_output_error(exact, both, len(steps), 4, yt) <= 1e-3
    assert _max_output_error(exact, both, len(steps), 4, y) <= 1e-3


def test_factor_bytes_counts_the_probe_columns():
    """The memory estimate of the factor includes the probe columns the error estimate reads
    (``N p`` float64, ``p = probe_count(N, m)``: 64 at 100 landmarks, 256 at 4,096), and
    ``probes=0`` removes exactly that term; the probe count is the one factorize uses."""
    for n, m in ((500, 100), (20_000, 4_096)):
        p = lowrank.probe_count(n, m)
        assert p == (64 if m == 100 else 256)
        assert (lowrank.factor_bytes(n, 0, m) - lowrank.factor_bytes(n, 0, m, probes=0)
                == 8 * n * p)
    rng = np.random.default_rng(0)
    source = lowrank.analytic_columns(rng.normal(size=(300, 4)), hidden_layers=1)
    factor = lowrank.factorize(source, 40)
    assert factor.info["probe_columns"] == lowrank.probe_count(300, 80)


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
    # a mixing process now runs on lowrank.predict (tests/test_lowrank_gossip.py);
    # predict_lowrank itself still takes a static matrix
    assert lowrank.predict(src, y, agent, nd.graphs.random_edges(
        nd.graphs.topology("ring", 4), 0.5), 0.3, 10, rank=3, samples=2).samples == 2
    with pytest.raises(ValueError, match="^mixing: "):
        lowrank.predict_lowrank(factor, y, agent, nd.graphs.random_edges(
            nd.graphs.topology("ring", 4), 0.5), 0.3, 10)


# ------------------------------------------------------------------ public API (nd.predict)
@pytest.fixture(scope="module")
def digits_problem():
    data = nd.data.digits(classes=[0, 1, 2, 3], n_train=60, n_test=30, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="dirichlet", alpha=1.0, seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(64, 64), out=4, activation="erf", W_std=1.2, b_std=0.3)
    return data, parts, w, arch


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking"])
def test_nd_predict_full_rank_equals_exact_path(digits_problem, algorithm):
    """rank = N: the analytic factor is exact up to round-off, so the trajectories agree
    (measured ~4e-15; asserted 1e-8), per-agent rates, outputs in the caller's order; the
    non-default activation / W_std / b_std reach the column source."""
    data, parts, w, arch = digits_problem
    call = dict(lr=[0.3, 0.4, 0.5, 0.35], algorithm=algorithm, steps=range(0, 61, 10),
                record_outputs=True)
    exact = nd.predict(arch, parts, w, f0="mean", **call)
    low = nd.predict(arch, parts, w, rank=data.num_train, f0="mean", **call)
    for f in FIELDS:
        a, b = getattr(exact, f), getattr(low, f)
        if a is None or b is None:
            continue
        assert a.shape == b.shape, f
        assert np.max(np.abs(a - b)) <= 1e-8, (f, np.max(np.abs(a - b)))
    meta = low.metadata["low_rank"]
    assert meta["rank"] == data.num_train and meta["error_estimate"] <= 1e-8
    assert low.metadata["path"] == "low_rank" and low.metadata["kernel"] == "analytic"
    assert low.metadata["architecture"]["activation"] == "erf"


def test_nd_predict_auto_rank_metadata_and_f0_network(digits_problem):
    data, parts, w, arch = digits_problem
    traj = nd.predict(arch, parts, w, lr=0.3, steps=range(0, 41, 10), rank="auto", tol=1e-2)
    meta = traj.metadata["low_rank"]
    for key in ("rank", "method", "error_estimate", "tol", "tol_reached"):
        assert key in meta, key
    assert meta["method"] == "rpcholesky" and meta["tol"] == 1e-2 and meta["tol_reached"]
    assert 1 <= meta["rank"] <= data.num_train and meta["error_estimate"] <= 1e-2
    # f0 = "network": same initial outputs as the exact path (empirical f0, analytic kernel)
    exact = nd.predict(arch, parts, w, lr=0.3, steps=[0, 20], f0="network",
                       record_outputs=True)
    low = nd.predict(arch, parts, w, lr=0.3, steps=[0, 20], f0="network",
                     record_outputs=True, rank=data.num_train)
    assert np.max(np.abs(exact.train_outputs - low.train_outputs)) <= 1e-8


@pytest.mark.parametrize("arch_kind", ["mlp", "triple"])
def test_nd_predict_empirical_rank_equals_exact_empirical_path(digits_problem, arch_kind):
    """kernel="empirical" with rank: the factor of the given network's empirical NTK (MLP:
    layerwise columns; a stax-style triple around a non-MLP apply_fn: JVP columns) and the
    network's own f_0.  At rank N it equals the exact empirical path to 1e-8 relative on
    losses, outputs and distances; rank="auto" reports its rank and estimate; the metadata
    say it is the given network (f0 'network', its seed)."""
    data, parts, w, arch = digits_problem
    if arch_kind == "triple":
        apply_fn, _ = _resnet_like()
        rng = np.random.default_rng(2)
        params = {"w1": rng.normal(size=(64, 6)) / 8, "w2": rng.normal(size=(6, 6)) / 2.5,
                  "g": rng.normal(size=(64, 6)) / 8, "b": rng.normal(size=6) / 10,
                  "out": rng.normal(size=(6, 4)) / 2.5}
        arch = (lambda key, shape: ((shape[0], 4), params), apply_fn, lambda *a: None)
    call = dict(lr=0.3, steps=range(0, 41, 10), kernel="empirical", seed=3,
                record_outputs=True)
    exact = nd.predict(arch, parts, w, **call)
    low = nd.predict(arch, parts, w, rank=data.num_train, **call)
    assert low.metadata["f0"] == "network" and low.metadata["seed"] == 3
    assert low.metadata["kernel"] == "empirical" and low.metadata["low_rank"]["rank"] == 60
    assert "given" in low.metadata["quantity"] or "seed" in low.metadata["quantity"]
    for f in ("train_loss", "test_loss", "param_dist", "train_outputs", "test_outputs"):
        a, b = getattr(exact, f), getattr(low, f)
        assert np.max(np.abs(a - b)) <= 1e-8 * np.abs(a).max(), f
    auto = nd.predict(arch, parts, w, rank="auto", tol=0.5, **call)
    meta = auto.metadata["low_rank"]
    assert 1 <= meta["rank"] <= 60 and meta["error_estimate"] <= 0.5


def test_nd_predict_empirical_rank_refused_before_allocating(digits_problem, monkeypatch):
    """The factor's memory is checked before any column is read: a clear refusal naming
    rank and the rank that would fit."""
    data, parts, w, arch = digits_problem
    # the network's parameters are checked first (models.ensure_params_fit, with its fixed
    # 30 MB for the compiled draws, tested in test_memory): let them through, so that the
    # factor's own check is what refuses here
    monkeypatch.setattr(models, "ensure_params_fit", lambda *a, **k: None)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 60_000)
    with pytest.raises(lowrank.LowRankTooLargeError, match="^rank: .*would fit|no rank fits"):
        nd.predict(arch, parts, w, lr=0.3, steps=[0, 10], kernel="empirical", rank=50)


def test_predict_and_check_commands_with_empirical_rank(tmp_path, capsys):
    """``[prediction] rank`` with ``kernel = "empirical"``: accepted by the schema, run by
    ``ntkdyn predict`` (the low-rank factor of the seeded network's empirical NTK) and by
    ``ntkdyn check`` (low-rank verdicts)."""
    import json

    from ntkdyn import Trajectory
    from ntkdyn.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML + '[prediction]\nkernel = "empirical"\nrank = 60\n')
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.metadata["low_rank"]["rank"] == 60 and traj.metadata["f0"] == "network"
    exact_cfg = tmp_path / "e.toml"
    exact_cfg.write_text(TINY_TOML + '[prediction]\nkernel = "empirical"\n')
    assert main(["predict", str(exact_cfg), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    # the exact CLI path takes check's layout, the full (N K)^2 kernel here, while the
    # rank-60 factor is of the traced kernel (N = 60: rank 60 is the whole kernel)
    assert Trajectory.load(tmp_path / "e" / "trajectory.npz").metadata["kernel_layout"] \
        == "full"
    # so the reference is the exact path with the traced layout, from the same config
    from ntkdyn.config.experiment import from_config
    from ntkdyn.config.schema import load_config

    c = load_config(exact_cfg)
    exp = from_config(c)
    exact = nd.predict(exp.arch, exp.parts, exp.mixing, c.training.lr, exp.algorithm,
                       c.steps, kernel="empirical", seed=c.seed, f0="network", traced=True)
    for key in ("train_loss", "test_loss", "test_acc", "param_dist", "consensus_dist"):
        got, want = getattr(traj, key), getattr(exact, key)
        assert np.max(np.abs(got - want)) <= 1e-8 * np.max(np.abs(want)), key
    capsys.readouterr()
    assert main(["check", str(cfg), "--json"]) in (0, 1)
    report = json.loads(capsys.readouterr().out)
    assert report["kernel"] == "empirical" and report["low_rank"]["rank"] == 60


def test_nd_predict_rank_refuses_what_the_low_rank_path_does_not_take(digits_problem):
    data, parts, w, arch = digits_problem
    call = dict(lr=0.3, steps=range(0, 21, 10))
    triple = (lambda key, shape: ((shape[0], 4), None), lambda p, x: x, lambda *a: None)
    with pytest.raises(ValueError, match="^rank: the low-rank path needs an ntkdyn.models.MLP "
                                         "for the analytic kernel"):
        nd.predict(triple, parts, w, kernel="analytic", rank=8, **call)
    gossip = nd.graphs.random_edges(nd.graphs.topology("ring", 4), 0.5, seed=0)
    # a sequence runs for every f0 and both losses (tests/test_lowrank_gossip.py); cross-
    # entropy with random gossip was refused before stop 28
    ce_gossip = nd.predict(arch, parts, gossip, rank=8, samples=4, f0="mean",
                           loss="cross_entropy", **call)
    assert ce_gossip.samples == 4 and ce_gossip.metadata["path"] == "low_rank"
    with pytest.raises(ValueError, match="^rank: .*discrete"):
        nd.predict(arch, parts, w, rank=8, continuous=True, **call)
    # cross-entropy runs on the low-rank path (tests/test_lowrank_ce.py), also with one
    # random network, the analytic kernel's default f0 (no longer refused naming f0)
    ce = nd.predict(arch, parts, w, rank=8, loss="cross_entropy", samples=2, **call)
    assert ce.samples == 2 and ce.metadata["path"] == "low_rank"
    with pytest.raises(ValueError, match="^rank: expected None"):
        nd.predict(arch, parts, w, rank="fast", **call)
    with pytest.raises(ValueError, match="^rank: "):
        nd.predict(arch, parts, w, rank=0, **call)
    with pytest.raises(ValueError, match="^tol: "):
        nd.predict(arch, parts, w, rank="auto", tol=0.0, **call)
    with pytest.raises(ValueError, match="^tol / max_rank: only used with the low-rank"):
        nd.predict(arch, parts, w, tol=1e-3, **call)


def test_too_large_exact_path_proposes_a_rank_that_fits(monkeypatch):
    """The exact path's refusal names the low-rank path and a rank; that rank then runs
    under the same memory limit."""
    import re

    from ntkdyn import prediction as pipeline

    data = nd.data.digits(n_train=600, n_test=200, seed=0)
    parts = nd.data.partition(data, agents=4, seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(64,), out=10)
    need = pipeline.prediction_estimate(arch, 600, 200, data.dim, 10, 4)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: need // 3)
    with pytest.raises(memory.ProblemTooLargeError) as err:
        nd.predict(arch, parts, w, lr=0.3, steps=range(0, 21, 10))
    msg = str(err.value)
    assert 'rank="auto"' in msg and '[prediction] rank = "auto"' in msg
    fit = int(re.search(r"fixed rank <= (\d+)", msg).group(1))
    assert 0 < fit <= 600
    traj = nd.predict(arch, parts, w, lr=0.3, steps=range(0, 21, 10), rank=fit)
    assert traj.metadata["low_rank"]["rank"] == fit and traj.status == "ok"
    # the empirical kernel: the low-rank path is proposed too (it takes that kernel now)
    with pytest.raises(memory.ProblemTooLargeError, match='rank="auto"'):
        nd.build_problem(arch, parts, w, kernel="empirical")


# --------------------------------------------------------------------------- TOML and CLI


@pytest.mark.parametrize("prediction, needle", [
    ({"rank": 0}, "prediction.rank: expected \"auto\" or a positive integer"),
    ({"rank": -2}, "prediction.rank: expected \"auto\" or a positive integer"),
    ({"rank": "fast"}, "prediction.rank: expected \"auto\" or a positive integer"),
    ({"rank": 1.5}, "prediction.rank: expected an integer or a string"),
    ({"rank": True}, "prediction.rank: expected an integer or a string"),
    ({"rank": "auto", "tol": 0.0}, "prediction.tol: expected a value > 0"),
    ({"rank": "auto", "tol": -1e-3}, "prediction.tol: expected a value > 0"),
    ({"tol": 1e-3}, "prediction.tol: only used with prediction.rank = 'auto'"),
    ({"rank": 8, "tol": 1e-3}, "prediction.tol: only used with prediction.rank = 'auto'"),
    ({"rank": 10_000}, "prediction.rank: expected at most data.n_train"),
])
def test_config_rank_errors_name_the_key(prediction, needle):
    from ntkdyn.config.schema import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"prediction": prediction})
    assert needle in str(err.value)


def test_config_rank_with_gossip_or_flow_is_refused():
    from ntkdyn.config.schema import ConfigError, config_from_dict

    # a sequence runs on the low-rank path for every f0, one random network included
    # (tests/test_lowrank_gossip.py)
    cfg = config_from_dict({"prediction": {"rank": "auto"}, "topology": {"gossip": "edges"}})
    assert cfg.prediction.rank == "auto" and cfg.topology.gossip == "edges"
    with pytest.raises(ConfigError, match="prediction.rank: .*discrete steps"):
        config_from_dict({"prediction": {"rank": 4}, "training": {"continuous": True}})
    cfg = config_from_dict({"prediction": {"rank": "auto", "tol": 1e-2}})
    assert cfg.prediction.rank == "auto" and cfg.prediction.tol == 1e-2
    assert config_from_dict({}).prediction.rank is None


def test_predict_command_with_rank(tmp_path):
    import json

    from ntkdyn import Trajectory
    from ntkdyn.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML + "[prediction]\nrank = 32\n")
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.train_loss.shape == (5, 3) and traj.metadata["low_rank"]["rank"] == 32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["low_rank"]["rank"] == 32 and "error_estimate" in summary["low_rank"]
    assert summary["low_rank"]["error_estimate_kind"] == "probe rows"
    assert "error_bound_trace" in summary["low_rank"]
    # the test-output estimate (theory/low_rank.md 3.1) beside the training one
    assert summary["low_rank"]["error_estimate_test_kind"] == "test probe rows"
    assert 0 <= summary["low_rank"]["error_estimate_test"] <= 2
    assert summary["config"]["prediction"]["rank"] == 32
    assert "tol" not in summary["config"]["prediction"]
    # the default on the low-rank path is one random network, as on the exact path
    assert traj.metadata["f0"] == "random" and "f0_draws" in traj.metadata["low_rank"]
    # the exact path on the same settings and the same quantity (the mean network, f0 =
    # "mean" on both paths): close at rank 32 of N = 60 (measured 1.3e-2)
    cfg.write_text(TINY_TOML + '[prediction]\nrank = 32\nf0 = "mean"\n')
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    exact_cfg = tmp_path / "e.toml"
    exact_cfg.write_text(TINY_TOML + '[prediction]\nf0 = "mean"\n')
    assert main(["predict", str(exact_cfg), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    exact = Trajectory.load(tmp_path / "e" / "trajectory.npz")
    assert "rank" not in json.loads((tmp_path / "e" / "summary.json").read_text())["config"][
        "prediction"]
    rel = np.max(np.abs(exact.test_loss - traj.test_loss) / exact.test_loss)
    assert rel <= 5e-2, rel


def test_check_with_rank_reports_the_low_rank_verdict(tmp_path, capsys):
    """``ntkdyn check`` with ``[prediction] rank`` no longer refuses (it exited 2 before the
    low-rank stability existed): it reports the truncated operator's verdicts, labelled
    low-rank; at full rank they are the exact check's lr*, truncated they bound it above."""
    import json

    from ntkdyn.cli import main
    from ntkdyn.config import ConfigError
    from ntkdyn.preflight import check

    exact_cfg = tmp_path / "e.toml"
    exact_cfg.write_text(TINY_TOML)
    exact = check(str(exact_cfg))
    lr_exact = {v.algorithm: v.lr_star for v in exact.stability}
    full_cfg = tmp_path / "f.toml"
    full_cfg.write_text(TINY_TOML + "[prediction]\nrank = 60\n")
    full = check(str(full_cfg))
    assert full.low_rank["rank"] == 60
    # the sweep (empty before): the exact check's rates and predictions (its kernel products
    # are float32, SWEEP_DTYPE: 1e-5), and the same recommended rate
    assert len(full.sweep) == len(exact.sweep) == 10
    for low, ex in zip(full.sweep, exact.sweep, strict=True):
        assert low["lr"] == pytest.approx(ex["lr"], rel=1e-6)
        assert low["status"] == ex["status"]
        for key in ("final_test_loss", "final_train_loss", "final_test_acc"):
            assert low[key] == pytest.approx(ex[key], rel=1e-4, abs=1e-9), key
    assert full.recommended["lr"] == pytest.approx(exact.recommended["lr"], rel=1e-6)
    for v in full.stability:
        assert abs(v.lr_star - lr_exact[v.algorithm]) <= 1e-6 * lr_exact[v.algorithm], v
        assert "low-rank (rank 60)" in v.method
    assert abs(full.prediction["final_test_loss"] - exact.prediction["final_test_loss"]) \
        <= 1e-6 * exact.prediction["final_test_loss"]
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML + "[prediction]\nrank = 8\n")
    assert main(["check", str(cfg), "--quiet"]) in (0, 1)
    out = capsys.readouterr().out
    assert "LOW-RANK verdict" in out and "upper bound" in out and "rank-8 coordinates" in out
    assert main(["check", str(cfg), "--json"]) in (0, 1)
    report = json.loads(capsys.readouterr().out)
    assert report["low_rank"]["rank"] == 8
    for v in report["stability"]:
        assert v["lr_star"] >= lr_exact[v["algorithm"]] * (1 - 1e-9), v
    with pytest.raises(ConfigError, match="prediction.rank: --topologies"):
        check(str(cfg), topologies=["complete"])


def test_check_with_rank_follows_predict_default_one_random_network(tmp_path, capsys):
    """``ntkdyn check`` with ``[prediction] rank`` predicts what ``nd.predict(rank=...)``
    predicts by default (analytic kernel): one random network.  Its expected final test
    loss / accuracy and 5-95 % bands equal ``nd.predict``'s with the same rank, seed and
    samples (same factor, same NNGP draws: 1e-9 relative), and so are its a-priori error
    estimates of the training and test outputs; the ``final_*`` fields are the
    mean network (f0 = 0), equal to the check with ``f0 = "mean"`` (1e-9), and the text
    labels both.  Before, check reported the mean network alone, unlabelled."""
    import json

    from ntkdyn.cli import main
    from ntkdyn.config.experiment import from_config
    from ntkdyn.config.schema import load_config
    from ntkdyn.preflight import check

    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML + "[prediction]\nrank = 12\nsamples = 6\n")
    rep = check(str(cfg))
    one = rep.prediction["one_random_network"]
    assert one is not None and one["samples"] == 6
    mean_cfg = tmp_path / "m.toml"
    mean_cfg.write_text(TINY_TOML + '[prediction]\nrank = 12\nf0 = "mean"\n')
    mean = check(str(mean_cfg))
    assert mean.prediction["one_random_network"] is None
    for key in ("final_test_loss", "final_train_loss", "final_test_acc"):
        assert rep.prediction[key] == pytest.approx(mean.prediction[key], rel=1e-9, abs=1e-12)
    c = load_config(str(cfg))
    exp = from_config(c)
    traj = nd.predict(exp.arch, exp.parts, exp.mixing, c.training.lr, exp.algorithm, c.steps,
                      rank=12, seed=c.seed, samples=6, reference=False)
    assert traj.metadata["quantity"].startswith("one random network")
    for metric in ("test_loss", "test_acc", "train_loss"):
        assert one[f"final_{metric}_expected"] == pytest.approx(
            float(traj.network_mean(metric)[-1]), rel=1e-9, abs=1e-12)
        assert one[f"final_{metric}_band"] == pytest.approx(
            [float(b[-1].mean()) for b in traj.band(metric)], rel=1e-9, abs=1e-12)
    lo, hi = one["final_test_loss_band"]
    assert lo < one["final_test_loss_expected"] < hi
    # the a-priori estimates of the training and the test outputs are nd.predict's
    for key in ("error_estimate", "error_estimate_test"):
        assert rep.low_rank[key] is not None and rep.low_rank[key] > 0, key
        assert rep.low_rank[key] == pytest.approx(traj.metadata["low_rank"][key], rel=1e-9)
    assert f", test {rep.low_rank['error_estimate_test']:.3g}" in rep.caveat
    assert main(["check", str(cfg), "--quiet"]) in (0, 1)
    text = capsys.readouterr().out
    assert "one random network (over 6 sampled initialisations, as ntkdyn predict):" in text
    assert "  mean network (f0 = 0): train loss" in text
    assert main(["check", str(cfg), "--json"]) in (0, 1)
    out = json.loads(capsys.readouterr().out)
    assert out["prediction"]["one_random_network"]["samples"] == 6


def test_factor_without_probe_columns_reports_the_trace_estimate():
    """``probes=0``: no probe columns, ``error_estimate`` falls back to the trace estimate
    (``error_estimate_kind == "trace"``); a bad ``probes`` is refused naming it."""
    kern, y, agent, w, lr = _spectrum_problem("fast")
    src = lowrank.kernel_columns(kern)
    bare = lowrank.factorize(src, 8, probes=0)
    assert bare.probe_columns is None and bare.info["probe_columns"] == 0
    meta = lowrank.predict_lowrank(bare, y, agent, w, lr, 50).metadata["low_rank"]
    assert meta["error_estimate_kind"] == "trace"
    assert meta["error_estimate"] == meta["error_bound_trace"]
    probed = lowrank.factorize(src, 8, probes=16)
    assert probed.probe_columns.shape == (80, 16)
    np.testing.assert_array_equal(probed.probe_columns, kern[:, probed.probe_rows])
    low = lowrank.predict_lowrank(probed, y, agent, w, lr, 50).metadata["low_rank"]
    assert low["error_estimate_kind"] == "probe rows"
    assert low["error_estimate"] < low["error_bound_trace"]
    with pytest.raises(ValueError, match="^probes: "):
        lowrank.factorize(src, 8, probes=-1)


def test_nd_predict_acc_rows_on_the_low_rank_path(digits_problem):
    """``nd.predict(..., rank=..., acc_rows=m)`` scores the training accuracies on ``m``
    training rows (``metadata["low_rank"]["acc_rows"] == m``) and leaves every loss and
    distance unchanged (1e-12); the mean network and one random network alike.  Without
    the low-rank path ``acc_rows`` is a ValueError naming it."""
    import ntkdyn as nd

    _, parts, w, arch = digits_problem
    for f0 in ("mean", "random"):
        kw = dict(kernel="analytic", rank=20, f0=f0)
        kw |= {"samples": 4} if f0 == "random" else {}
        full = nd.predict(arch, parts, w, 0.5, "dgd", [0, 5, 10], **kw)
        part = nd.predict(arch, parts, w, 0.5, "dgd", [0, 5, 10], acc_rows=17, **kw)
        assert part.metadata["low_rank"]["acc_rows"] == 17
        assert full.metadata["low_rank"]["acc_rows"] == parts.dataset.num_train
        for m in ("train_loss", "test_loss", "param_dist", "consensus_dist", "test_acc"):
            np.testing.assert_allclose(getattr(part, m), getattr(full, m), rtol=1e-12,
                                       atol=1e-14, err_msg=f"{f0} {m}")
    with pytest.raises(ValueError, match="acc_rows"):
        nd.predict(arch, parts, w, 0.5, "dgd", [0, 5], acc_rows=17)
    # a bad value is refused before the factor is read (no kernel column computed)
    import ntkdyn.lowrank as lr_mod

    def no_factor(*a, **k):
        raise AssertionError("factorised before checking acc_rows")

    for bad in (0, -3, 2.5, True, parts.dataset.num_train + 1):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(lr_mod, "choose_factor", no_factor)
            with pytest.raises(ValueError, match=r"acc_rows: expected an integer in \[1, "):
                nd.predict(arch, parts, w, 0.5, "dgd", [0, 5], rank=20, f0="mean",
                           acc_rows=bad)


# ------------------------------------------------------------------ sweeps (nd.predict_sweep)
SWEEP_LRS = [0.2, 0.5, [0.3, 0.4, 0.5, 0.35]]


def _trajectory_fields(traj) -> dict:
    out = {f: getattr(traj, f) for f in FIELDS if getattr(traj, f, None) is not None}
    out |= {f"draws/{k}": v for k, v in (getattr(traj, "draws", None) or {}).items()}
    return out


@pytest.mark.parametrize("f0", ["mean", "random"])
def test_predict_sweep_rank_equals_predict_at_each_rate(digits_problem, f0):
    """``nd.predict_sweep(..., rank=r)``: trajectory ``i`` equals ``nd.predict(...,
    lr=lrs[i], rank=r)`` on every recorded quantity (and, for one random network, every
    sampled network's draws) to 1e-10 -- scalar and per-agent rates -- and carries that
    rate's own error estimate."""
    _, parts, w, arch = digits_problem
    kw = dict(rank=20, steps=[0, 5, 10, 20]) | ({"f0": "mean", "record_outputs": True}
                                               if f0 == "mean" else {"samples": 4})
    sweep = nd.predict_sweep(arch, parts, w, SWEEP_LRS, "dgd", **kw)
    assert len(sweep) == len(SWEEP_LRS)
    ests = []
    for lr, got in zip(SWEEP_LRS, sweep, strict=True):
        ref = nd.predict(arch, parts, w, lr, "dgd", **kw)
        a, b = _trajectory_fields(ref), _trajectory_fields(got)
        assert a.keys() == b.keys() and len(a) >= 10
        for f in a:
            assert np.max(np.abs(a[f] - b[f])) <= 1e-10, (f, np.max(np.abs(a[f] - b[f])))
        low, low_ref = got.metadata["low_rank"], ref.metadata["low_rank"]
        assert low["rank"] == 20 and got.metadata["path"] == "low_rank"
        assert low["error_estimate"] == pytest.approx(low_ref["error_estimate"], rel=1e-12)
        assert low["error_estimate_test"] == pytest.approx(low_ref["error_estimate_test"],
                                                           rel=1e-12)
        ests.append(low["error_estimate"])
    assert ests[0] < ests[1]  # its own rate's estimate, not one shared number


def test_predict_sweep_computes_the_factor_and_draws_once(digits_problem, monkeypatch):
    """One factor (``choose_factor``, ``factorize``) and one set of NNGP draws for the
    whole sweep, however many rates."""
    import ntkdyn.lowrank as lr_mod
    from ntkdyn.lowrank import networks

    _, parts, w, arch = digits_problem
    calls = {"choose_factor": 0, "factorize": 0, "nngp_draws": 0}

    def counted(mod, name):
        orig = getattr(mod, name)

        def wrapper(*a, **k):
            calls[name] += 1
            return orig(*a, **k)
        monkeypatch.setattr(mod, name, wrapper)

    counted(lr_mod, "choose_factor")
    counted(lr_mod, "factorize")
    counted(networks, "nngp_draws")
    trajs = nd.predict_sweep(arch, parts, w, [0.1, 0.2, 0.3, 0.4], steps=[0, 10], rank=12,
                             samples=4)
    assert len(trajs) == 4 and all(t.metadata["low_rank"]["rank"] == 12 for t in trajs)
    assert calls == {"choose_factor": 1, "factorize": 1, "nngp_draws": 1}


def test_predict_sweep_auto_rank_holds_tol_at_every_rate(digits_problem):
    """``rank="auto"``: the rank is chosen once, holding ``tol`` against the maximum over
    the rates of the estimate: it is the largest of the ranks ``nd.predict`` chooses at each
    rate alone (not the rank at the elementwise-largest rate: a spread of per-agent rates
    needs more), and ``tol`` is reached at every rate."""
    _, parts, w, arch = digits_problem
    lrs, tol = [0.1, 0.3, [0.2, 0.5, 0.1, 0.1]], 1e-2
    call = dict(steps=range(0, 41, 10), rank="auto", tol=tol, f0="mean")
    sweep = nd.predict_sweep(arch, parts, w, lrs, **call)
    ranks = {t.metadata["low_rank"]["rank"] for t in sweep}
    assert len(ranks) == 1
    alone = [nd.predict(arch, parts, w, lr, **call).metadata["low_rank"]["rank"]
             for lr in lrs]
    assert ranks == {max(alone)} and alone[0] < max(alone)
    for t in sweep:
        low = t.metadata["low_rank"]
        assert low["tol_reached"] and lowrank.governing_estimate(low) <= tol
        assert low["tol"] == tol and low["requested_rank"] == "auto"
    # the elementwise-largest rate alone would choose fewer coordinates than the sweep
    # needs (measured 51 < 54): a rule "rank at the largest rate" would miss tol here
    top = nd.predict(arch, parts, w, [0.3, 0.5, 0.3, 0.3], **call)
    assert top.metadata["low_rank"]["rank"] < max(alone)


def test_predict_sweep_rank_refusals_name_rank(digits_problem):
    """What the low-rank path does not take is refused by ``predict_sweep`` as by
    ``predict``, naming ``rank`` (or ``acc_rows`` / ``tol`` for those alone)."""
    _, parts, w, arch = digits_problem
    call = dict(steps=[0, 10])
    gossip = nd.graphs.random_edges(nd.graphs.topology("ring", 4), p=0.5, seed=0)
    triple = nd.models.stax_triple(arch) if hasattr(nd.models, "stax_triple") else (
        None, lambda p, x: x, None)
    # cross-entropy runs on the low-rank path (tests/test_lowrank_ce.py), also with one
    # random network, the analytic kernel's default f0 (no longer refused naming f0)
    ce = nd.predict_sweep(arch, parts, w, [0.1, 0.2], rank=8, loss="cross_entropy",
                          samples=2, **call)
    assert [t.samples for t in ce] == [2, 2]
    for kw, mix in [(dict(batch_size=8), w),
                    (dict(width=64), w),
                    (dict(kernel_dtype="float32", f0="mean"), w)]:
        with pytest.raises(ValueError, match="^rank: "):
            nd.predict_sweep(arch, parts, mix, [0.1, 0.2], rank=8, **kw, **call)
    # cross-entropy with random gossip runs too (since stop 28): per rate, 4 sequences
    ce_gossip = nd.predict_sweep(arch, parts, gossip, [0.1, 0.2], rank=8, samples=4,
                                 f0="mean", loss="cross_entropy", **call)
    assert [t.samples for t in ce_gossip] == [4, 4]
    # random gossip with one random network (the default f0) now runs on the low-rank path
    # (tests/test_lowrank_gossip.py): one trajectory per rate, 4 networks on 4 sequences
    runs = nd.predict_sweep(arch, parts, gossip, [0.1, 0.2], rank=8, samples=4, **call)
    assert [t.samples for t in runs] == [4, 4] and runs[0].metadata["path"] == "low_rank"
    with pytest.raises(ValueError, match="^rank: "):
        nd.predict_sweep(triple, parts, w, [0.1, 0.2], rank=8, kernel="analytic", **call)
    with pytest.raises(ValueError, match="^rank: expected"):
        nd.predict_sweep(arch, parts, w, [0.1, 0.2], rank="fast", **call)
    with pytest.raises(ValueError, match="^tol / max_rank: "):
        nd.predict_sweep(arch, parts, w, [0.1, 0.2], tol=1e-3, **call)
    with pytest.raises(ValueError, match="^acc_rows: "):
        nd.predict_sweep(arch, parts, w, [0.1, 0.2], acc_rows=5, **call)
    with pytest.raises(ValueError, match="^lrs: "):
        nd.predict_sweep(arch, parts, w, [], rank=8, **call)


def test_quantity_of_a_low_level_run_does_not_claim_the_infinite_width_network():
    """lowrank.predict from f0 = 0 said "the expected outputs of the infinite-width network"
    whatever the factor's kernel (a finite network's Jacobian kernel too) and had no
    metadata["f0"]; it now says what f0 = 0 means for each kernel, and f0 is recorded;
    nd.predict's own words still take precedence."""
    from ntkdyn.lowrank.evolve import ZERO_F0_WORDS

    kern, y, agent, w, lr = _spectrum_problem("fast")
    src = lowrank.kernel_columns(kern)
    zero = lowrank.predict(src, y, agent, w, lr, range(0, 21, 10), rank=8)
    assert zero.metadata["quantity"] == ZERO_F0_WORDS and zero.metadata["f0"] == "zero"
    assert "infinite-width network" not in ZERO_F0_WORDS.split(";")[1]
    given = lowrank.predict(src, y, agent, w, lr, range(0, 21, 10), rank=8,
                            f0_train=0.1 * np.ones_like(y))
    assert given.metadata["quantity"] == "the network with the given f0"
    assert given.metadata["f0"] == "given"


def test_max_rank_above_the_samples_is_a_cap_that_binds_nowhere():
    """max_rank=512 on 80 samples was refused ('expected at most 80'), so the README's
    snippets failed on small data; a cap above N now equals no cap (same rank and
    trajectory); 0, a float or a bool are still refused naming max_rank."""
    kern, y, agent, w, lr = _spectrum_problem("fast")
    src = lowrank.kernel_columns(kern)
    args = (src, y, agent, w, lr, range(0, 21, 10))
    capped = lowrank.predict(*args, rank="auto", tol=1e-3, max_rank=512)
    free = lowrank.predict(*args, rank="auto", tol=1e-3)
    assert capped.metadata["low_rank"]["rank"] == free.metadata["low_rank"]["rank"]
    np.testing.assert_array_equal(capped.train_loss, free.train_loss)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="^max_rank: expected a positive integer"):
            lowrank.predict(*args, rank="auto", tol=1e-3, max_rank=bad)


def test_factorize_refuses_stopping_rules_it_would_ignore():
    """target_norm = -1 silently kept every coordinate, rank with target_norm ignored
    target_norm, tol without estimate said 'rank: give a rank or a target_norm'."""
    kern, y, agent, w, lr = _spectrum_problem("fast")
    src = lowrank.kernel_columns(kern)
    with pytest.raises(ValueError, match=r"^target_norm: expected a number > 0"):
        lowrank.factorize(src, None, target_norm=-1.0)
    with pytest.raises(ValueError, match=r"^target_norm: a stopping rule instead of rank, got "
                                         r"both rank=8 and target_norm=1.0$"):
        lowrank.factorize(src, 8, target_norm=1.0)
    with pytest.raises(ValueError, match=r"^tol: needs estimate="):
        lowrank.factorize(src, None, tol=1e-3)
    assert lowrank.factorize(src, None, target_norm=float("inf")).rank == 0  # allowed: all


def test_analytic_columns_are_checked_when_built():
    """hidden_layers = -1 was accepted and the diagonal computed; the error came at the
    first column read.  Now at construction, as analytic_kernels words it."""
    x = np.random.default_rng(0).normal(size=(10, 3))
    for kw, match in ((dict(hidden_layers=-1), "^hidden_layers: expected >= 0, got -1"),
                      (dict(hidden_layers=1, W_std=0.0), "^W_std: expected a finite value > 0"),
                      (dict(hidden_layers=1, activation="relux"), "activation")):
        with pytest.raises(ValueError, match=match):
            lowrank.analytic_columns(x, **kw)
