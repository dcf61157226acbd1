"""High-level API: architecture + partition + mixing -> trajectory."""

import jax
import numpy as np
import pytest
from conftest import rel_err

import ntkdyn as nd


@pytest.fixture(scope="module")
def setup():
    data = nd.data.digits(classes=[0, 1, 2, 3], n_train=80, n_test=40, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="dirichlet", alpha=1.0, seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(128, 128), out=4)
    return data, parts, w, arch


def _fake_stax(arch):
    """A neural-tangents-like (init_fn, apply_fn, kernel_fn) triple built from an MLP."""
    def init_fn(key, input_shape):
        return (input_shape[0], arch.out), arch.init(key, input_shape[-1], dtype=np.float64)

    def kernel_fn(x1, x2=None, get="ntk"):
        return arch.kernel(x1, x2) if get == "ntk" else arch.nngp(x1, x2)

    return init_fn, arch.apply, kernel_fn


def test_stax_triple_backend_matches_mlp(setup):
    _, parts, w, arch = setup
    steps = range(0, 101, 20)
    for kernel in ("analytic", "empirical"):
        a = nd.predict(arch, parts, w, 0.3, "atc", steps, kernel=kernel)
        b = nd.predict(_fake_stax(arch), parts, w, 0.3, "atc", steps, kernel=kernel)
        assert rel_err(b.test_loss, a.test_loss) < 1e-10, kernel
        assert rel_err(b.param_dist, a.param_dist) < 1e-10, kernel


def test_empirical_prediction_starts_at_the_network_outputs(setup):
    _, parts, w, arch = setup
    traj = nd.predict(arch, parts, w, 0.3, "dgd", [0, 10], kernel="empirical", seed=3,
                      record_outputs=True)
    params = nd.init_params(arch, parts.dataset.dim, seed=3)
    f0 = np.asarray(arch.apply(params, parts.dataset.x_train))
    for q in range(4):
        assert rel_err(traj.train_outputs[0, q], f0) < 1e-12
    assert traj.metadata["kernel"] == "empirical"


def test_analytic_prediction_of_the_mean_network_starts_from_zero_outputs(setup):
    _, parts, w, arch = setup
    traj = nd.predict(arch, parts, w, 0.3, "dgd", [0, 10], record_outputs=True, f0="mean")
    assert np.all(traj.train_outputs[0] == 0.0)
    k = parts.dataset.num_classes
    assert traj.train_loss[0, 0] == pytest.approx(0.5 * 1.0)  # ||0 - onehot||^2 / 2
    assert k == 4


def test_analytic_prediction_defaults_to_one_random_network(setup):
    """Default f0 with the analytic kernel: one random network (32 sampled f0 ~ NNGP);
    its mean network equals f0="mean" (and the old name "zero") to 1e-12; its expected
    test loss exceeds the mean network's at every step (the variance term); explicit
    "random" where it is not available names f0; cross-entropy now defaults to one random
    network too (each network with K columns of its own, 16 by default)."""
    _, parts, w, arch = setup
    steps = [0, 10, 40]
    one = nd.predict(arch, parts, w, 0.3, "dgd", steps)
    assert isinstance(one, nd.RandomNetworkTrajectory) and one.samples == 32
    for name in ("mean", "zero"):
        mean = nd.predict(arch, parts, w, 0.3, "dgd", steps, f0=name)
        assert type(mean) is nd.Trajectory
        assert rel_err(one.mean_network.test_loss, mean.test_loss) < 1e-12
    assert np.all(one.test_loss > one.mean_network.test_loss)
    lo, hi = one.band("test_loss")
    assert np.all(lo <= one.quantiles["test_loss"][2]) and np.all(hi > lo)
    five = nd.predict(arch, parts, w, 0.3, "dgd", steps, samples=5, seed=2)
    assert five.samples == 5 and five.metadata["init_seed"] == 2
    with pytest.raises(ValueError, match="f0"):
        nd.predict(arch, parts, w, 0.3, "dgd", steps, kernel="empirical", f0="random")
    with pytest.raises(ValueError, match="f0"):
        nd.predict(arch, parts, w, 0.3, "dgd", steps, f0="ones")
    ce = nd.predict(arch, parts, w, 0.3, "dgd", steps, loss="cross_entropy")
    assert ce.metadata["f0"] == "random" and isinstance(ce, nd.RandomNetworkTrajectory)
    assert ce.samples == 16 and ce.metadata["quantity"].startswith("one random network")


def test_default_kernel_dtype_is_mixed_exactly_where_it_applies(setup):
    """Default ``kernel_dtype`` (issue 14, cost of the band): ``"mixed"`` for one random
    network sharing cyclic columns (squared loss, static mixing, full batch); there the mean
    network equals the float64 run to 1e-12 and every sampled network's kept metrics
    are within 1e-5 relative of its float64 run (float32 products of the response
    columns).  Elsewhere (mean network, cross-entropy, random gossip, mini-batch SGD, the
    flow) ``"float64"``; the metadata says which and whether it was the default."""
    from ntkdyn.dynamics.random_init import DRAW_METRICS

    _, parts, w, arch = setup
    steps = [0, 10, 60]
    one = nd.predict(arch, parts, w, 0.3, "dgd", steps, samples=8)
    ref = nd.predict(arch, parts, w, 0.3, "dgd", steps, samples=8, kernel_dtype="float64")
    assert one.metadata["kernel_dtype"] == "mixed"
    assert one.metadata["kernel_dtype_source"] == "default"
    assert ref.metadata["kernel_dtype"] == "float64"
    assert ref.metadata["kernel_dtype_source"] == "given"
    for metric in ("train_loss", "test_loss", "test_acc", "param_dist", "central_test_loss"):
        # not bit-identical: the float64 product runs over K columns instead of K + P,
        # which changes XLA's blocking (measured 1e-16 relative here)
        assert rel_err(getattr(one.mean_network, metric),
                       getattr(ref.mean_network, metric)) <= 1e-12, metric
    for metric in DRAW_METRICS:
        assert rel_err(one.draws[metric], ref.draws[metric]) <= 1e-5, metric
    assert rel_err(one.draws["test_loss"], ref.draws["test_loss"]) > 0  # float32 was used
    sweep = nd.predict_sweep(arch, parts, w, [0.3], "dgd", steps, samples=8)
    assert sweep[0].metadata["kernel_dtype"] == "mixed"
    assert np.array_equal(sweep[0].test_loss, one.test_loss)
    rnd = nd.graphs.random_edges(nd.graphs.topology("ring", 4), p=0.5, seed=0)
    for kw in ({"f0": "mean"}, {"loss": "cross_entropy", "samples": 2},
               {"mixing": rnd, "samples": 2}, {"batch_size": 4, "samples": 2},
               {"continuous": True, "samples": 2}):
        mixing = kw.pop("mixing", w)
        traj = nd.predict(arch, parts, mixing, 0.3, "dgd", [0, 2], **kw)
        assert traj.metadata["kernel_dtype"] == "float64", kw


def test_sweep_equals_individual_predictions(setup):
    _, parts, w, arch = setup
    rates = [0.1, 0.3]
    sweep = nd.predict_sweep(arch, parts, w, rates, "cta", range(0, 51, 10))
    for lr, traj in zip(rates, sweep, strict=True):
        one = nd.predict(arch, parts, w, lr, "cta", range(0, 51, 10))
        assert rel_err(traj.test_loss, one.test_loss) < 1e-12


def test_unstable_rate_is_reported_with_the_margin(setup):
    _, parts, w, arch = setup
    problem = nd.build_problem(arch, parts, w)
    lr_star = nd.stability(problem, "dgd", 0.1).lr_star
    traj = nd.predict(arch, parts, w, 1.2 * lr_star, "dgd", range(0, 201, 50))
    assert traj.status in ("unstable", "diverged")
    rep = traj.metadata["stability"]
    assert rep["lr_star"] == pytest.approx(lr_star, rel=1e-8)
    assert rep["margin"] == pytest.approx(1 - 1.2, abs=1e-9)
    assert not rep["stable"]
    for name in ("train_loss", "test_loss", "consensus_dist"):
        assert np.all(np.isfinite(getattr(traj, name)))
    assert "diverge" in traj.summary()


def test_continuous_prediction_through_high_level_api(setup):
    _, parts, w, arch = setup
    traj = nd.predict(arch, parts, w, 0.3, "dgd", np.array([0.0, 5.0, 10.0]), continuous=True,
                      f0="mean")
    disc = nd.predict(arch, parts, w, 0.3, "dgd", [0, 5, 10], f0="mean")
    assert traj.continuous
    # flow and iteration are close but not equal (first-order difference)
    assert 0 < np.max(np.abs(traj.train_loss - disc.train_loss)) < 0.05


def test_jax_prng_seed_changes_empirical_kernel(setup):
    _, parts, w, arch = setup
    a = nd.predict(arch, parts, w, 0.3, "dgd", [0, 20], kernel="empirical", seed=0)
    b = nd.predict(arch, parts, w, 0.3, "dgd", [0, 20], kernel="empirical", seed=1)
    assert np.max(np.abs(a.test_loss - b.test_loss)) > 1e-6
    assert jax.config.jax_enable_x64


def test_every_prediction_says_which_network_it_describes(setup):
    """metadata["quantity"] and the summary name the mean network (f0 = 0) or the one
    network whose f0 was used (DESIGN.md section 8)."""
    _, parts, w, arch = setup
    steps = range(0, 11, 5)
    mean = nd.predict(arch, parts, w, lr=0.1, steps=steps, f0="mean")
    assert mean.metadata["quantity"].startswith("mean network over random initialisations")
    assert "describes: mean network" in mean.summary()
    assert mean.metadata["f0"] == "mean"
    one = nd.predict(arch, parts, w, lr=0.1, steps=steps)  # the default: one random network
    assert one.metadata["quantity"].startswith("one random network over initialisations")
    assert "describes: one random network" in one.summary() and one.metadata["f0"] == "random"
    assert one.mean_network.metadata["quantity"].startswith("mean network")
    own = nd.predict(arch, parts, w, lr=0.1, steps=steps, kernel="empirical", seed=3)
    assert own.metadata["quantity"].startswith("one network, initialised with seed 3")
    params = nd.init_params(arch, parts.dataset.dim, 5)
    given = nd.predict(arch, parts, w, lr=0.1, steps=steps, kernel="empirical", params=params)
    assert given.metadata["quantity"].startswith("the given network (params)")
    k, y = np.eye(8), np.ones((8, 1))
    user = nd.predict_from_kernels(k, y, np.arange(8) % 4, w, 0.1, [0, 5])
    assert user.metadata["quantity"].startswith("mean network")
    user_f0 = nd.predict_from_kernels(k, y, np.arange(8) % 4, w, 0.1, [0, 5],
                                      f0_train=np.ones((8, 1)))
    assert user_f0.metadata["quantity"].startswith("the network whose f0 was given")
    # cross-entropy: the f0 = 0 run is not the mean network (the dynamics are not affine
    # in f0), on every path that runs it
    ce_words = "the network started from f0 = 0 (cross-entropy: not the mean network"
    ce = dict(lr=0.1, steps=steps, f0="mean", loss="cross_entropy")
    runs = [nd.predict(arch, parts, w, **ce), nd.predict(arch, parts, w, rank=8, **ce),
            nd.predict_sweep(arch, parts, w, [0.1], f0="mean", loss="cross_entropy",
                             steps=steps)[0],
            nd.predict_from_kernels(k, np.eye(2)[np.arange(8) % 2], np.arange(8) % 4, w,
                                    0.1, [0, 5], loss="cross_entropy")]
    for traj in runs:
        assert traj.metadata["quantity"].startswith(ce_words), traj.metadata["quantity"]
    one_ce = nd.predict(arch, parts, w, lr=0.1, steps=steps, loss="cross_entropy", samples=2)
    assert "network from f0 = 0 (cross-entropy: not the mean network): test loss" \
        in one_ce.summary()


@pytest.mark.parametrize("call", [
    lambda p: nd.stability(p, "dgd", 0.1),
    lambda p: nd.fixed_point(p, "dgd", 0.1),
    lambda p: nd.prediction.init_draws(p, np.eye(8), "random", 4, 0),
], ids=["stability", "fixed_point", "init_draws"])
@pytest.mark.parametrize("problem", ["problem", None, {"loss": "mse"}])
def test_analysis_of_something_that_is_not_a_problem_names_problem(call, problem):
    """A string (or anything but a KernelProblem) raised AttributeError ('str' object has
    no attribute 'loss') from inside the analysis."""
    with pytest.raises(TypeError) as err:
        call(problem)
    msg = str(err.value)
    assert msg.startswith("problem: expected a KernelProblem (from nd.make_problem or "
                          f"nd.build_problem), got {type(problem).__name__}"), msg
