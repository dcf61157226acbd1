"""One random network: sampled initial outputs as extra columns (``ntkdyn.dynamics.random_init``).

References: the exact expected losses of the dense reference ``ntkdyn.initialisation``
(itself checked against neural-tangents' ``gradient_descent_mse_ensemble``), direct
``predict_from_kernels`` runs from each sampled network's own ``f_0``, and independent
networks (``P K`` columns) for the coverage of the band.
"""


import numpy as np
import pytest
from conftest import rel_err

from ntkdyn import algorithms, graphs
from ntkdyn.dynamics import random_init
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.prediction import predict_from_kernels
from ntkdyn.trajectory import RandomNetworkTrajectory, Trajectory


@pytest.fixture(scope="module")
def golden(golden_kernels):
    """The golden problem (12 train / 6 test, K = 3) with ntkdyn's analytic kernels, on a
    ring of 4 agents whose samples are interleaved (not sorted by agent)."""
    g = golden_kernels
    n = g["n"]
    return {**g,
            "agent": np.arange(n) % 4, "W": graphs.mixing(graphs.topology("ring", 4))}


def _predict(p, lr, steps, algorithm="dgd", **kw):
    return predict_from_kernels(p["k"], p["y"], p["agent"], p["W"], lr, steps, algorithm,
                                kernel_test_train=p["kt"], y_test=p["y_test"], **kw)


@pytest.mark.parametrize("algorithm, continuous", [("dgd", False), ("atc", False),
                                                   ("cta", True)])
def test_sampled_mean_equals_exact_expected_loss(golden, algorithm, continuous):
    """Mean over P = 3000 sampled networks = exact E[loss] within 4 standard errors.

    The networks share columns cyclically, so the standard error of the mean is bounded
    by ``sd(loss) sqrt(K / P)`` (``ntkdyn.dynamics.random_init``), the bound used here."""
    steps = [0.0, 2.5, 40.0] if continuous else [0, 5, 60]
    p = 3000
    traj = _predict(golden, 0.15, steps, algorithm, continuous=continuous,
                    nngp=golden["nngp"], samples=p, seed=3)
    assert isinstance(traj, RandomNetworkTrajectory) and traj.samples == p
    k_out = golden["y"].shape[1]
    for metric, exact in (("train_loss", traj.exact_train_loss),
                          ("test_loss", traj.exact_test_loss)):
        draws = traj.draws[metric]  # (P, T, Q)
        se = draws.std(axis=0, ddof=1) * np.sqrt(k_out / p)
        mc = getattr(traj, metric)
        assert np.all(np.abs(mc - exact) <= 4 * se), np.max(np.abs(mc - exact) / se)
        np.testing.assert_allclose(mc, draws.mean(axis=0), rtol=1e-12)
    # not vacuous: one network's expected test loss is many standard errors above the mean
    # network's (the variance term), at every step
    se = traj.draws["test_loss"].std(axis=0, ddof=1) * np.sqrt(k_out / p)
    assert np.all(traj.exact_test_loss - traj.mean_network.test_loss > 10 * se)


def test_band_contains_the_right_fraction_of_independent_networks(golden):
    """The 5-95 % band of the test loss from P = 2000 cyclic networks contains 90 % of
    2000 *independent* random networks (P K columns, f_0 fed through predict_from_kernels):
    within 0.04 at every step > 0 and agent, 0.02 on average (binomial sd 0.007)."""
    steps, s, k_out, n = [0, 5, 60], 2000, golden["y"].shape[1], golden["n"]
    traj = _predict(golden, 0.15, steps, nngp=golden["nngp"], samples=s, seed=1)
    lo, hi = traj.band("test_loss", 0.05, 0.95)
    rng = np.random.default_rng(11)
    nngp = golden["nngp"]
    f0 = np.linalg.cholesky(nngp + 1e-12 * np.eye(len(nngp))) @ rng.standard_normal(
        (len(nngp), s * k_out))
    indep = predict_from_kernels(golden["k"], np.tile(golden["y"], s), golden["agent"],
                                 golden["W"], 0.15, steps, f0_train=f0[:n],
                                 kernel_test_train=golden["kt"],
                                 y_test=np.tile(golden["y_test"], s), f0_test=f0[n:],
                                 record_outputs=True, reference=False)
    out = indep.test_outputs.reshape(*indep.test_outputs.shape[:3], s, k_out)
    losses = 0.5 * np.sum((out - golden["y_test"][:, None, :]) ** 2, axis=(2, 4)) / len(
        golden["y_test"])  # (T, Q, S)
    inside = ((losses >= lo[..., None]) & (losses <= hi[..., None])).mean(axis=-1)
    assert np.all(np.abs(inside[1:] - 0.9) <= 0.04), inside
    assert abs(inside[1:].mean() - 0.9) <= 0.02, inside
    # not vacuous: the band is wide (the spread over initialisations is large)
    assert np.all(hi[1:] > 2 * lo[1:])


@pytest.mark.parametrize("algorithm", ["dgd", algorithms.p2pl(local_steps=2,
                                                               consensus_steps=1)])
def test_each_sampled_network_is_the_prediction_from_its_own_f0(golden, algorithm):
    """Network s (output k = mean column k + response column (s + k) mod P) equals a
    direct prediction from its own f_0, to 1e-10: the four kept metrics per network, and
    the means over networks of every other metric."""
    p, seed, steps = 5, 4, [0, 3, 20]
    # float64 explicitly: the default with sampled networks is kernel_dtype="mixed"
    traj = _predict(golden, 0.15, steps, algorithm, nngp=golden["nngp"], samples=p,
                    seed=seed, kernel_dtype="float64")
    problem = make_problem(golden["k"], golden["y"], golden["agent"], golden["W"],
                           kernel_test_train=golden["kt"], y_test=golden["y_test"])
    draws = random_init.draw(random_init.sorted_nngp(problem, golden["nngp"]), golden["n"],
                             p, seed)
    cols = (np.arange(p)[:, None] + np.arange(3)[None, :]) % p
    singles = []
    for s in range(p):
        f0_sorted = draws.train[:, cols[s]]
        f0_train = np.empty_like(f0_sorted)
        f0_train[problem.order] = f0_sorted
        singles.append(_predict(golden, 0.15, steps, algorithm, f0_train=f0_train,
                                f0_test=draws.test[:, cols[s]]))
        for metric in random_init.DRAW_METRICS:
            assert rel_err(traj.draws[metric][s], getattr(singles[-1], metric)) < 1e-10, metric
    for metric in ("param_dist", "consensus_dist", "objective", "central_test_loss",
                   "mean_model_test_loss", "local_loss"):
        mean = np.mean([getattr(t, metric) for t in singles], axis=0)
        assert rel_err(getattr(traj, metric), mean) < 1e-10, metric
    assert len(set(np.round(traj.draws["test_loss"][:, -1, 0], 8))) == p  # distinct networks


def test_mean_network_is_the_prediction_from_zero_outputs(golden):
    traj = _predict(golden, 0.15, [0, 5, 60], nngp=golden["nngp"], samples=8,
                    record_outputs=True)
    plain = _predict(golden, 0.15, [0, 5, 60], record_outputs=True)
    for metric in ("train_loss", "test_loss", "test_acc", "param_dist", "central_test_loss",
                   "train_outputs", "test_outputs"):
        assert rel_err(getattr(traj.mean_network, metric), getattr(plain, metric)) < 1e-12
    assert traj.train_outputs is None  # outputs are recorded for the mean network only
    assert traj.mean_network.metadata["quantity"].startswith("mean network")
    assert traj.metadata["quantity"].startswith("one random network")
    assert "one random network" in traj.summary() and "mean network (f0 = 0)" in traj.summary()
    # the same seed gives the same draws; another seed other ones
    again = _predict(golden, 0.15, [0, 5, 60], nngp=golden["nngp"], samples=8)
    other = _predict(golden, 0.15, [0, 5, 60], nngp=golden["nngp"], samples=8, seed=1)
    assert np.array_equal(again.test_loss, traj.test_loss)
    assert not np.allclose(other.test_loss, traj.test_loss)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking"])
def test_mixed_kernel_dtype_keeps_the_mean_network_and_moves_draws_by_float32_error(golden,
                                                                                    algorithm):
    """``kernel_dtype="mixed"``: the mean network's columns stay float64 (equal to 1e-12),
    the sampled networks' response columns use float32 kernel products: every kept metric
    of every network within 1e-5 relative of the float64 run (float32 rounding, 6e-8 per
    product, accumulated over 60 steps; measured about 1e-7 here and 3e-6 absolute at
    digits size).  Without sampled networks ``"mixed"`` is a ValueError naming it."""
    kw = dict(nngp=golden["nngp"], samples=8, seed=2)
    ref = _predict(golden, 0.15, [0, 5, 60], algorithm, kernel_dtype="float64", **kw)
    mixed = _predict(golden, 0.15, [0, 5, 60], algorithm, kernel_dtype="mixed", **kw)
    default = _predict(golden, 0.15, [0, 5, 60], algorithm, **kw)  # the default: mixed
    assert default.metadata["kernel_dtype"] == "mixed"
    assert np.array_equal(default.test_loss, mixed.test_loss)
    assert mixed.metadata["kernel_dtype"] == "mixed"
    for metric in ("train_loss", "test_loss", "param_dist", "central_test_loss"):
        assert rel_err(getattr(mixed.mean_network, metric),
                       getattr(ref.mean_network, metric)) < 1e-12, metric
    for metric in random_init.DRAW_METRICS:
        err = rel_err(mixed.draws[metric], ref.draws[metric])
        assert err < 1e-5, (metric, err)
        if metric.endswith("loss"):
            assert err > 0, metric  # the float32 path was taken
    with pytest.raises(ValueError, match="kernel_dtype"):
        _predict(golden, 0.15, [0, 5], algorithm, kernel_dtype="mixed")


def test_save_load_and_phase_views(golden, tmp_path):
    p2pl = algorithms.p2pl(local_steps=2, consensus_steps=1)
    traj = _predict(golden, 0.15, [0, 3, 20], p2pl, nngp=golden["nngp"], samples=6)
    back = Trajectory.load(traj.save(tmp_path / "t.npz"))
    assert isinstance(back, RandomNetworkTrajectory) and back.samples == 6
    for a, b in ((traj.band("test_loss"), back.band("test_loss")),
                 ((traj.mean_network.test_loss,), (back.mean_network.test_loss,)),
                 ((traj.draws["test_acc"],), (back.draws["test_acc"],))):
        for u, v in zip(a, b, strict=True):
            assert np.array_equal(u, v)
    local = traj.at_phase("local")
    assert local.test_loss.shape == (3, 4) and local.band("test_loss")[0].shape == (3, 4)
    assert local.draws["test_loss"].shape == (6, 3, 4)
    assert local.mean_network.test_loss.shape == (3, 4)


def test_band_refused_without_samples(golden):
    plain = _predict(golden, 0.15, [0, 5])
    with pytest.raises(ValueError, match="metric"):
        plain.band("test_loss")
    traj = _predict(golden, 0.15, [0, 5], nngp=golden["nngp"], samples=4)
    with pytest.raises(ValueError, match="metric"):
        traj.band("no_such_metric")
    with pytest.raises(ValueError, match="low/high"):
        traj.band("test_loss", 0.1, 0.9)
    # reversed levels are refused (they returned the two curves swapped)
    with pytest.raises(ValueError, match="low/high: expected low <= high, got 0.95, 0.05"):
        traj.band("test_loss", 0.95, 0.05)
    for over in ("init", "width"):
        with pytest.raises(ValueError, match="low/high: expected low <= high"):
            traj.band("test_loss", 0.95, 0.5, over=over)
    lo, hi = traj.band("test_loss", 0.5, 0.5)  # one level: its quantile twice
    np.testing.assert_array_equal(lo, hi)


@pytest.mark.parametrize("change, match", [
    ({"nngp": np.eye(5)}, "nngp"),
    ({"f0_train": np.zeros((12, 3))}, "nngp"),
    ({"loss": "cross_entropy", "kernel_dtype": "mixed"}, "kernel_dtype"),
    ({"samples": 0}, "samples"),
    ({"mixing": "random", "kernel_dtype": "mixed"}, "kernel_dtype"),
])
def test_invalid_random_network_calls_name_the_argument(golden, change, match):
    kw = {"nngp": golden["nngp"], "samples": 4}
    mixing = golden["W"]
    if change.pop("mixing", None) == "random":
        mixing = graphs.random_edges(graphs.topology("ring", 4), p=0.5, seed=0)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        predict_from_kernels(golden["k"], golden["y"], golden["agent"], mixing, 0.15, [0, 2],
                             kernel_test_train=golden["kt"], y_test=golden["y_test"], **kw)


def test_cholesky_jitter_grows_until_it_factorises():
    a = np.ones((4, 4))  # rank one: needs a jitter
    chol, jitter = random_init.cholesky_with_jitter(a)
    assert jitter > 0 and rel_err(chol @ chol.T, a) < 1e-4
    with pytest.raises(ValueError, match="nngp"):
        random_init.cholesky_with_jitter(-np.eye(3))


def test_check_prints_expected_test_loss_and_accuracy_with_band(tmp_path):
    """ntkdyn check: one random network's final test loss / accuracy as 'expected (5-95 %)'
    with the band from the samples, beside the mean network's; f0 = "mean" drops it."""
    from conftest import TINY_TOML

    import ntkdyn as nd

    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML + "[prediction]\ntarget_loss = 0.2\nsamples = 8\n")
    report = nd.check(str(path))
    one = report.prediction["one_random_network"]
    assert one["samples"] == 8
    lo, hi = one["final_test_loss_band"]
    assert lo <= one["final_test_loss_expected"] <= hi
    assert one["final_test_loss_expected"] > report.prediction["final_test_loss"]
    text = report.text()
    assert "test loss " in text and "expected (5-95 %: " in text and "mean network (f0 = 0)" in text
    path.write_text(TINY_TOML + "[prediction]\ntarget_loss = 0.2\nf0 = \"mean\"\n")
    assert nd.check(str(path)).prediction["one_random_network"] is None


def test_monte_carlo_error_of_the_expected_values(golden):
    """The squared loss's networks share their K = 3 draw columns cyclically: the
    error is the bound sd sqrt(min(2K - 1, P) / P) of the networks' agent-means; with
    cross-entropy each network has its own columns: sd / sqrt(P).  The summary states it."""
    from ntkdyn.bands import monte_carlo_error

    traj = _predict(golden, 0.15, [0, 5, 20], nngp=golden["nngp"], samples=8)
    for metric in ("test_loss", "test_acc", "train_loss"):
        sd = np.std(traj.draws[metric].mean(axis=-1), axis=0, ddof=1)
        np.testing.assert_allclose(traj.monte_carlo_error(metric), sd * np.sqrt(5 / 8),
                                   rtol=1e-14)
    assert "(a bound: the networks share draw columns)" in traj.summary()
    ce = _predict(golden, 0.15, [0, 5], nngp=golden["nngp"], samples=4, loss="cross_entropy")
    np.testing.assert_allclose(ce.monte_carlo_error("test_loss"),
                               monte_carlo_error(ce.draws["test_loss"].mean(axis=-1)),
                               rtol=1e-14)
    assert "(the samples are independent)" in ce.summary()
    with pytest.raises(ValueError, match="metric"):
        traj.monte_carlo_error("param_dist")
    # one sampled network: a single draw, not called an expected value with a band
    one = _predict(golden, 0.15, [0, 5], nngp=golden["nngp"], samples=1)
    assert "samples = 1: a single draw, not an expected value" in one.summary()
    assert "expected (5-95 %" not in one.summary() and "expected (5-95 %" in traj.summary()
